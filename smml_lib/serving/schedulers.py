"""The two batch schedulers behind the inference server: static batching and continuous batching.

A decode step reads every weight once, whatever the batch size, so a server earns its throughput by
decoding many sequences together. *How* it forms batches is the scheduler's job:

- **Static batching** (``StaticBatching``): wait for up to ``max_batch`` requests (or ``max_wait_ms``
  after the first one arrived), prefill them together, decode until the *last* of them is done, and only
  then look at the queue again. A short request that finished early leaves its slot idle; a request that
  arrives just after a batch started waits for the whole batch. With ``max_batch=1`` this is plain
  one-request-at-a-time serving, the baseline.
- **Continuous (iteration-level) batching** (``ContinuousBatching``): before *every* decode step, retire
  the sequences that finished and admit waiting ones into the free slots. Slots never idle while work
  waits; this is what vLLM, TGI and TensorRT-LLM do.

Both run the model in **one background thread** and talk to the outside through two thread-safe doors:
``submit`` (a bounded queue: it refuses when full, the server answers 429) and an ``on_events`` callback
that receives, after every prefill and decode step, the list of ``(sequence, token_id, finish_reason)``
produced by that step. ``cancel`` marks a sequence so it leaves the batch before the next step: that is
how a client that hangs up frees its slot.

The batched KV cache and its padding live in ``smml_lib.serving.kvbatch``; this module only decides *who* runs.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

import torch

from smml_lib.serving.config import BatchingConfig
from smml_lib.serving.kvbatch import Batch, Sequence, eos_token_ids

Event = tuple[Sequence, "int | None", "str | None"]  # (sequence, new token id or None, finish reason or None)
class Scheduler:
    """Owns the model, a bounded waiting queue and the thread that runs batches. Subclasses pick the policy.

    Args:
        model, tokenizer: from ``smml_lib.models.loading.load_llama``.
        batching: ``max_batch`` sequences decoded together (the "slots"), at most ``max_queue`` waiting for a
            slot (``submit`` refuses beyond it), and for static batching ``max_wait_ms``.
        on_events: called from the model thread with each step's events (keep it cheap and thread-safe).
    """

    name = "base"

    def __init__(self, model: Any, tokenizer: Any, batching: BatchingConfig,
                 on_events: Callable[[list[Event]], None] | None = None) -> None:
        self.model, self.tokenizer, self.batching = model, tokenizer, batching
        self.max_batch, self.max_queue = batching.max_batch, batching.max_queue
        self.on_events = on_events
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.batch: Batch | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._abort_running = False
        self.counters = collections.Counter()  # submitted, rejected, finished_<reason>, steps, tokens...
        self.busy_s = 0.0  # seconds spent inside model forward passes
        self.started_s = time.perf_counter()

    # ---- the two doors, called from any thread -------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> bool:
        """Queue sequences (all or none). False when the queue cannot take them all: answer 429."""
        with self._cond:
            if self._stop.is_set() or len(self.waiting) + len(seqs) > self.max_queue:
                self.counters["rejected"] += len(seqs)
                return False
            self.waiting.extend(seqs)
            self.counters["submitted"] += len(seqs)
            self._cond.notify()
        return True

    def cancel(self, seq: Sequence, reason: str = "cancelled") -> None:
        """Stop generating for ``seq`` (client gone, or a stop string matched): its slot frees before the next step."""
        if seq.finish_reason is None and not seq.cancelled:
            seq.cancel_reason = reason
            seq.cancelled = True
            with self._cond:
                self._cond.notify()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"smml-{self.name}-batching", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the model thread; sequences still queued or running end with finish_reason ``"abort"``."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        leftover = list(self.waiting) + (self.batch.seqs if self.batch else [])
        self.waiting.clear()
        self.batch = None
        self._emit([self._finish(s, "abort") for s in leftover if s.finish_reason is None])

    def abort_waiting(self) -> None:
        """End every queued sequence now with finish_reason ``"abort"`` (a draining server starts nothing new)."""
        with self._cond:
            leftover = [s for s in self.waiting if s.finish_reason is None and not s.cancelled]
            self.waiting.clear()
        self._emit([self._finish(s, "abort") for s in leftover])

    def abort_running(self) -> None:
        """End the running batch with ``"abort"`` before the next step (the drain timeout is over)."""
        self._abort_running = True
        with self._cond:
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """Counters for /health and the load tests: queue and batch now, totals since start."""
        steps = self.counters["decode_steps"]
        up_s = time.perf_counter() - self.started_s
        return {"scheduler": self.name, "max_batch": self.max_batch, "max_queue": self.max_queue,
                "waiting": len(self.waiting), "running": len(self.batch) if self.batch else 0,
                **dict(self.counters), "mean_decode_batch": self.counters["decode_rows"] / steps if steps else 0.0,
                "busy_s": self.busy_s, "busy_fraction": self.busy_s / up_s if up_s > 0 else 0.0}

    # ---- the model thread --------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    self._iterate()
                except Exception as exc:  # e.g. CUDA out of memory: fail this batch, keep serving
                    failed = self.batch.seqs if self.batch else []
                    self.batch = None
                    self.counters["errors"] += 1
                    events = []
                    for s in failed:
                        if s.finish_reason is None:
                            s.error = f"{type(exc).__name__}: {exc}"
                            events.append(self._finish(s, "error"))
                    self._emit(events)

    def _iterate(self) -> None:
        raise NotImplementedError

    def _take(self, n: int) -> list[Sequence]:
        """Pop up to ``n`` live sequences from the queue (call with the lock held)."""
        out: list[Sequence] = []
        while self.waiting and len(out) < n:
            seq = self.waiting.popleft()
            if seq.cancelled:
                self.counters[f"finished_{seq.cancel_reason}"] += 1
                seq.done.set()
            else:
                out.append(seq)
        return out

    @staticmethod
    def _finish(seq: Sequence, reason: str) -> Event:
        seq.finish_reason = reason
        return (seq, None, reason)

    def _timed(self, fn: Callable[[], list[Event]]) -> list[Event]:
        t0 = time.perf_counter()
        events = fn()
        self.busy_s += time.perf_counter() - t0
        return events

    def _prefill(self, seqs: list[Sequence]) -> Batch:
        holder: list[Batch] = []

        def run() -> list[Event]:
            batch, events = Batch.prefill(self.model, seqs, self.eos_ids)
            holder.append(batch)
            return events

        self._emit(self._timed(run))
        self.counters["prefills"] += 1
        self.counters["prefill_rows"] += len(seqs)
        return holder[0]

    def _decode(self) -> None:
        assert self.batch is not None
        self.counters["decode_steps"] += 1
        self.counters["decode_rows"] += len(self.batch)
        self._emit(self._timed(self.batch.step))

    def _retire(self) -> None:
        """Drop finished and cancelled sequences from the running batch (their KV cache goes with them)."""
        if self.batch is None:
            return
        if self._abort_running:
            seqs, self.batch = self.batch.seqs, None
            self._emit([self._finish(s, "abort") for s in seqs if s.finish_reason is None and not s.cancelled])
            return
        for seq in self.batch.seqs:
            if seq.cancelled and seq.finish_reason is None:
                self.counters[f"finished_{seq.cancel_reason}"] += 1
                seq.done.set()
        self.batch = self.batch.without_done()

    def _emit(self, events: list[Event]) -> None:
        if events:
            for seq, tok, reason in events:
                if tok is not None:
                    self.counters["tokens"] += 1
                if reason is not None:
                    self.counters[f"finished_{reason}"] += 1
                    seq.done.set()
            if self.on_events is not None:
                self.on_events(events)


class StaticBatching(Scheduler):
    """Form a batch (up to ``max_batch`` requests, or ``max_wait_ms`` after the first arrived), run it to the end.

    No request joins a running batch: new arrivals wait until every sequence of the current batch is done.
    """

    name = "static"

    def __init__(self, model: Any, tokenizer: Any, batching: BatchingConfig, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, batching, **kwargs)
        self.max_wait_s = batching.max_wait_ms / 1e3

    def _iterate(self) -> None:
        with self._cond:
            if not self.waiting:
                self._cond.wait(0.1)
                return
            deadline = self.waiting[0].t_submit_s + self.max_wait_s
            while len(self.waiting) < self.max_batch and not self._stop.is_set():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            seqs = self._take(self.max_batch)
        if not seqs:
            return
        self.batch = self._prefill(seqs)  # all prompts in one left-padded forward pass
        self._retire()
        while self.batch is not None and not self._stop.is_set():
            self._decode()
            self._retire()


class ContinuousBatching(Scheduler):
    """Iteration-level scheduling: before every decode step, retire finished sequences and admit new ones.

    The newcomers of an iteration are prefilled together (one left-padded forward pass), then their KV cache
    is merged into the running batch. Padding is masked out, so greedy outputs match solo runs token for
    token (tested). A prefill stalls the running sequences for one forward pass: the price of admitting.
    """

    name = "continuous"

    def _iterate(self) -> None:
        self._retire()
        with self._cond:
            if self.batch is None and not self.waiting:
                self._cond.wait(0.1)
                return
            free = self.max_batch - (len(self.batch) if self.batch else 0)
            newcomers = self._take(free)
        if newcomers:  # one left-padded prefill for all of them, then one merge into the running batch
            joined = self._prefill(newcomers).without_done()
            if joined is not None:
                self.batch = joined if self.batch is None else self.batch.merge(joined)
        self._retire()
        if self.batch is not None:
            self._decode()


def make_scheduler(batching: BatchingConfig, model: Any, tokenizer: Any, **kwargs: Any) -> Scheduler:
    """The scheduler ``batching.scheduler`` names (``"static"`` or ``"continuous"``), not started yet."""
    kind = {"static": StaticBatching, "continuous": ContinuousBatching}[batching.scheduler]
    return kind(model, tokenizer, batching, **kwargs)


def generate(scheduler: Scheduler, prompts: list[list[int]], *, max_tokens: int = 16, timeout_s: float = 120.0,
             **sampling: Any) -> list[Sequence]:
    """Submit token-id prompts to a running scheduler and wait for all of them (no HTTP; for tests and notebooks)."""
    seqs = [Sequence(list(p), max_tokens, **sampling) for p in prompts]
    for seq in seqs:  # one by one, so a small queue is not refused at once
        deadline = time.perf_counter() + timeout_s
        while not scheduler.submit([seq]):
            if time.perf_counter() > deadline:
                raise TimeoutError("the scheduler's queue stayed full")
            time.sleep(0.005)
    for seq in seqs:
        if not seq.done.wait(timeout_s):
            raise TimeoutError(f"a sequence did not finish within {timeout_s} s")
    return seqs
