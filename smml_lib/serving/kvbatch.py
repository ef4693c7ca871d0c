"""A batch of sequences decoding together, each with its own length, sharing one padded KV cache.

Sequences in a serving batch started at different times, so their KV caches have different lengths.
``Batch`` keeps them in one Hugging Face ``DynamicCache`` of shape (batch, kv_heads, T, head_dim) per
layer, **left-padded** to a common length T, plus what makes the padding invisible to the model:

- an ``attention_mask`` of shape (batch, T): 1 for real tokens, 0 for padding, so no query attends to a
  padded key;
- per-sequence ``position_ids``: the next token of a sequence with 7 real tokens gets position 7 however
  much padding sits in front of it (rotary embeddings encode the position into the cached keys).

Three operations keep the batch dense as sequences come and go:

- ``Batch.prefill(model, seqs)``: one forward pass over the (left-padded) prompts; yields each first token;
- ``merge(other)``: pad the shorter cache on the left and stack the two batches (a newcomer joins);
- ``without_done()``: keep only live rows, then cut padding columns that no row needs any more.

With greedy decoding a sequence produces the same tokens here as alone: masked keys get exactly zero
attention weight. (Results can differ in the last bits, since a batched matmul may sum in a different
order; a near-tie between the two best tokens would then flip. The tests check token-for-token equality.)
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from smml_lib.models.inference import cache_kwarg, output_cache

_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One prompt being completed. The scheduler's model thread appends to ``out_ids`` and sets ``finish_reason``."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # keep going after the end-of-text token (fixed-length load tests)
    tag: Any = None  # the owner's handle, e.g. the server's per-request stream
    out_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "length", "stop", "error", "abort" (server stopping)
    cancelled: bool = False
    cancel_reason: str = "cancelled"
    error: str | None = None
    seq_id: int = field(default_factory=lambda: next(_ids))
    t_submit_s: float = field(default_factory=time.perf_counter)
    t_first_token_s: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    _generator: Any = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    def sample(self, logits: Any) -> int:
        """Draw the next token from one row of logits with this sequence's temperature/top_p/seed."""
        if self._generator is None:
            self._generator = torch.Generator(device=logits.device)
            self._generator.manual_seed(self.seed if self.seed is not None else torch.seed())
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # smallest set whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self._generator))


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """All end-of-text ids (Llama 3 instruct models have several), from the generation config and tokenizer."""
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _left_pad_time(x: Any, n: int) -> Any:
    """Pad a cache tensor (batch, heads, T, head_dim) with ``n`` zero columns on the left of T."""
    return x if n == 0 else torch.cat([x.new_zeros(*x.shape[:2], n, x.shape[3]), x], dim=2)


class Batch:
    """Sequences decoding together: their padded KV cache, attention mask, next positions and last tokens."""

    def __init__(self, model: Any, seqs: list[Sequence], cache: Any, mask: Any, next_pos: Any, last: Any,
                 eos_ids: frozenset[int]) -> None:
        self.model, self.seqs, self.cache = model, seqs, cache
        self.mask = mask  # (B, T) long: 1 = real token, 0 = left padding
        self.next_pos = next_pos  # (B,) position id of the token fed at the next step
        self.last = last  # (B, 1) the token each sequence feeds next
        self.eos_ids = eos_ids

    def __len__(self) -> int:
        return len(self.seqs)

    @classmethod
    def prefill(cls, model: Any, seqs: list[Sequence], eos_ids: frozenset[int]) -> tuple["Batch", list]:
        """One forward pass over the prompts (left-padded to the longest); returns the batch and first-token events."""
        dev = model.get_input_embeddings().weight.device
        width = max(len(s.prompt_ids) for s in seqs)
        pad = 0  # any id: padded positions are masked out
        ids = torch.tensor([[pad] * (width - len(s.prompt_ids)) + s.prompt_ids for s in seqs], device=dev)
        mask = torch.tensor([[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in seqs], device=dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask if width * len(seqs) != int(mask.sum()) else None,
                    position_ids=positions, use_cache=True)
        batch = cls(model, list(seqs), output_cache(out), mask, mask.sum(-1), None, eos_ids)
        return batch, batch._choose(out.logits[:, -1, :])

    def step(self) -> list:
        """One decode step for every sequence: feed each its last token, append the next one. Returns events."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        out = self.model(input_ids=self.last, attention_mask=self.mask, position_ids=self.next_pos[:, None],
                         use_cache=True, **{cache_kwarg(self.model): self.cache})
        self.cache = output_cache(out)
        self.next_pos = self.next_pos + 1
        return self._choose(out.logits[:, -1, :])

    def _choose(self, logits: Any) -> list:
        """Pick each row's next token (argmax, or a sample), append it, decide whether the sequence is done."""
        nxt = logits.argmax(dim=-1)
        for i, seq in enumerate(self.seqs):
            if seq.temperature > 0:
                nxt[i] = seq.sample(logits[i])
        self.last = nxt[:, None]
        now = time.perf_counter()
        events = []
        for seq, tok in zip(self.seqs, nxt.tolist()):
            if seq.finished:  # cancelled meanwhile: the scheduler drops it before the next step
                continue
            seq.out_ids.append(tok)
            if seq.t_first_token_s is None:
                seq.t_first_token_s = now
            if tok in self.eos_ids and not seq.ignore_eos:
                seq.finish_reason = "stop"
            elif len(seq.out_ids) >= seq.max_tokens:
                seq.finish_reason = "length"
            events.append((seq, tok, seq.finish_reason))
        return events

    def merge(self, other: "Batch") -> "Batch":
        """Stack ``other``'s sequences under ours; the shorter cache is padded on the left. Returns self."""
        t_self, t_other = self.mask.shape[1], other.mask.shape[1]
        width = max(t_self, t_other)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad_time(mine.keys, width - t_self),
                                   _left_pad_time(theirs.keys, width - t_other)], dim=0)
            mine.values = torch.cat([_left_pad_time(mine.values, width - t_self),
                                     _left_pad_time(theirs.values, width - t_other)], dim=0)
        pad = lambda m, n: torch.cat([m.new_zeros(m.shape[0], n), m], dim=1)
        self.mask = torch.cat([pad(self.mask, width - t_self), pad(other.mask, width - t_other)], dim=0)
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.last = torch.cat([self.last, other.last])
        self.seqs = self.seqs + other.seqs
        return self

    def without_done(self) -> "Batch | None":
        """Keep only live sequences (None if none is left) and trim padding columns no live row needs."""
        keep = [i for i, s in enumerate(self.seqs) if not s.finished]
        if not keep:
            return None
        if len(keep) == len(self.seqs):
            return self
        idx = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        lead = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns that are padding in every row
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, lead:]
            layer.values = layer.values.index_select(0, idx)[:, :, lead:]
        self.mask = mask[:, lead:]
        self.next_pos = self.next_pos.index_select(0, idx)
        self.last = self.last.index_select(0, idx)
        self.seqs = [self.seqs[i] for i in keep]
        return self
