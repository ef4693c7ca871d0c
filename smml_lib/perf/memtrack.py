"""Measure training memory honestly, on a GPU and on a CPU.

On a GPU the CUDA caching allocator counts every byte it hands out: ``torch.cuda.max_memory_allocated``
is the peak of live tensors since the last reset (it leaves out the CUDA context and the allocator's
cached-but-free blocks, which ``nvidia-smi`` includes).

A CPU has no such counter (process RSS mixes in Python, libraries and the allocator's own caching,
so it cannot check a 50 MB prediction). On a CPU we therefore *count the tensors themselves*:

- **state**: the unique storages of parameters, gradients and optimizer states this rank holds
  (a sharded FSDP parameter counts only its local shard);
- **activations**: the unique storages autograd saves for the backward pass during one forward,
  captured with ``torch.autograd.graph.saved_tensors_hooks`` and sized at the end of the forward
  (the logits the forward returns are added: they stay alive until the loss is computed).

That is an exact measurement of those tensors, not of the allocator: transient buffers that live
only inside one operation are not in it. The planner predicts the same components.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch


def _local(t: Any) -> Any:
    """The local shard of a DTensor (FSDP2 / tensor parallel), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def unique_storage_bytes(tensors: Iterable[Any], exclude: set[int] | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tensors counted once)."""
    seen: set[int] = set(exclude or ())
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = _local(t)
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr == 0 or ptr in seen:  # ptr 0: storage freed/resized to zero (a resharded FSDP parameter)
            continue
        seen.add(ptr)
        total += st.nbytes()
    return total


def param_storage_ptrs(model: Any) -> set[int]:
    return {_local(p).untyped_storage().data_ptr() for p in model.parameters()}


@dataclass
class StateBytes:
    """Bytes this rank holds for the model's parameters, their gradients and the optimizer states."""

    params: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer


def state_bytes(model: Any, optimizer: Any = None) -> StateBytes:
    """Measure parameter, gradient and optimizer-state bytes held by this rank (call after a step,
    before ``zero_grad``, so the gradients still exist)."""
    params = list(model.parameters())
    opt_tensors = []
    if optimizer is not None:
        for st in optimizer.state.values():
            opt_tensors += [v for v in st.values() if hasattr(v, "untyped_storage")]
    return StateBytes(unique_storage_bytes(params), unique_storage_bytes(p.grad for p in params),
                      unique_storage_bytes(opt_tensors))


@dataclass
class SavedActivations:
    """Result of ``saved_activations``: bytes autograd kept for backward (parameters excluded)."""

    bytes: int = 0
    num_tensors: int = 0
    _refs: list = field(default_factory=list, repr=False)


@contextmanager
def saved_activations(model: Any, extra: list | None = None) -> Iterator[SavedActivations]:
    """Count the activations saved for backward inside the ``with`` block (wrap one forward).

    ``extra``: tensors created in the block that stay alive until backward (e.g. the logits),
    appended by the caller before the block ends.
    """
    out = SavedActivations()
    exclude = param_storage_ptrs(model)

    def pack(t: Any) -> Any:
        out._refs.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out
    tensors = out._refs + list(extra or [])
    out.bytes = unique_storage_bytes(tensors, exclude)
    out.num_tensors = len(tensors)
    out._refs = []


def reset_peak(device: Any) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_bytes(device: Any) -> int | None:
    """``max_memory_allocated`` on a CUDA device, ``None`` elsewhere."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))
