"""Deterministic training batches, indexed by global step.

Distributed training is only comparable (and resumable) if every run sees *exactly* the same data:

- the single-process baseline, DDP on 2 ranks and FSDP on 4 ranks must train on the same **global
  batch** at step ``k``, each rank taking its own slice of it;
- a run resumed from the checkpoint of step ``k`` must continue with the batch of step ``k + 1``,
  not with the first batch again.

So a batch is a pure function of ``(seed, step)``: ``StepData.global_batch(step)`` draws the
window offsets from a generator seeded with the step, and ``local_batch(step, rank, world_size)``
takes rows ``rank * B/W .. (rank + 1) * B/W`` of it. No iterator state, nothing to save but the step.

Sources: ``"corpus"`` (the bundled text, tokenized with the model's tokenizer and repeated as needed:
learnable, so the loss falls and shows that training works), ``"random"`` (uniform token ids: nothing
to learn, loss stays near ln(vocab)), or a path to a UTF-8 text file.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

_STEP_STRIDE = 1_000_003  # a prime: seeds of different (seed, step) pairs do not collide for any realistic run


def corpus_text() -> str:
    """The small English text bundled with smml_lib (the same one the tiny tokenizer was trained on)."""
    return resources.files("smml_lib").joinpath("data/tiny_corpus.txt").read_text()


def token_stream(source: str, tokenizer: Any = None, vocab_size: int | None = None, *, seed: int = 0,
                 num_tokens: int = 1 << 16) -> Any:
    """A 1-D int64 tensor of token ids to cut training windows from.

    Args:
        source: ``"corpus"``, ``"random"`` or a path to a text file.
        tokenizer: a Hugging Face tokenizer (needed for ``"corpus"`` and text files).
        vocab_size: the model's vocabulary size (needed for ``"random"``).
        seed: seed of the random tokens.
        num_tokens: length of the random stream.
    """
    if source == "random":
        if not vocab_size:
            raise ValueError("source='random' needs vocab_size")
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab_size, (num_tokens,), generator=g, dtype=torch.int64)
    if tokenizer is None:
        raise ValueError(f"source={source!r} needs the model's tokenizer")
    if source == "corpus":
        text = corpus_text()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data source {source!r}: no such text file (use 'corpus', 'random' or a path)")
        text = path.read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError(f"data source {source!r} has fewer than 2 tokens")
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class StepData:
    """Windows of ``seq_len + 1`` tokens cut from ``tokens`` at offsets that depend only on ``(seed, step)``.

    Short streams are used cyclically, so any ``seq_len`` works with any source.
    """

    tokens: Any  # 1-D int64 tensor
    seq_len: int
    global_batch_size: int
    seed: int = 0

    def global_batch(self, step: int) -> Any:
        """The whole batch of global step ``step`` (1-based): int64 tensor ``(global_batch_size, seq_len + 1)``."""
        g = torch.Generator().manual_seed(self.seed * _STEP_STRIDE + step)
        n = self.tokens.numel()
        starts = torch.randint(0, n, (self.global_batch_size, 1), generator=g)
        idx = (starts + torch.arange(self.seq_len + 1)) % n  # wrap around a short stream
        return self.tokens[idx]

    def local_batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[Any, Any]:
        """This rank's slice of step ``step``: ``(inputs, targets)``.

        Each is a ``(global_batch_size / world_size, seq_len)`` tensor. Targets are the inputs shifted by one
        token: position ``t`` learns to predict token ``t + 1``.
        """
        if self.global_batch_size % world_size:
            raise ValueError(f"global batch {self.global_batch_size} does not split evenly over {world_size} ranks; "
                             "choose a global batch size that is a multiple of the number of processes")
        per = self.global_batch_size // world_size
        rows = self.global_batch(step)[rank * per:(rank + 1) * per]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def tokens_per_step(self) -> int:
        """Tokens the whole job trains on per optimizer step (all ranks together)."""
        return self.global_batch_size * self.seq_len
