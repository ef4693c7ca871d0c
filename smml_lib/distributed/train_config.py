"""One training run's arguments as a typed record: the flags of the training worker, defined once.

A notebook, a Slurm job and the spot drill all start the same worker
(``python -m smml_lib.distributed.workers.train``). Instead of each building its own list of flags, they
build a ``TrainConfig`` and pass ``config.argv()``; the worker parses its command line back into the same
dataclass (``TrainConfig.parser`` is generated from the fields, so a default lives in one place only)::

    run = TrainConfig(model="tiny", strategy="ddp", seq_len=64, global_batch=8, max_steps=4)
    launch("train", run.argv(), nproc=2)                       # -> --model tiny --seq-len 64 ...
    run.replace(strategy="fsdp", resume=True).argv()            # the same run, resumed under FSDP

``argv()`` writes only the fields that differ from the defaults, so the command a learner reads is short.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

STRATEGIES = ("single", "ddp", "fsdp", "ddp_nosync")


def _help(text: str) -> Any:
    return field(default=None, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    """The flags of ``smml_lib.distributed.workers.train`` (see its docstring for what each strategy does)."""

    model: str = field(default="tiny", metadata={"help": "'tiny', a checkpoint folder or hub id, or preset:<name> "
                                                         "(random weights in a published shape, no download)"})
    layers: int | None = _help("override the number of decoder layers (presets)")
    strategy: str = field(default="ddp", metadata={"help": "single | ddp | fsdp | ddp_nosync, or a comma-separated "
                                                           "list run one after another"})
    reshard_after_forward: bool = field(default=True, metadata={
        "help": "FSDP: free gathered parameters after forward (ZeRO-3) or keep them (ZeRO-2-like)"})
    precision: str = field(default="fp32", metadata={
        "help": "fp32 | bf16 (mixed precision: fp32 master weights) | auto (bf16 on GPUs, fp32 on a CPU)"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute each layer in backward"})
    seq_len: int = field(default=128, metadata={"help": "tokens per sequence"})
    global_batch: int = field(default=8, metadata={"help": "sequences per optimizer step, all ranks together"})
    micro_batch: int | None = _help("sequences per forward on one rank (default: the rank's whole share)")
    max_steps: int = field(default=5, metadata={"help": "train until this global step"})
    warmup_steps: int = field(default=1, metadata={"help": "first steps of this process left out of the timing"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (linear warm-up over 10 steps)"})
    seed: int = field(default=0, metadata={"help": "same seed on every rank: identical initial weights"})
    data: str = field(default="corpus", metadata={"help": "corpus | random | path to a text file"})
    bucket_cap_mib: float = field(default=25.0, metadata={
        "help": "DDP gradient bucket size in MiB (PyTorch's bucket_cap_mb, which counts MiB)"})
    checkpoint_dir: str | None = _help("folder for sharded checkpoints (each strategy in its own subfolder)")
    checkpoint_every: int = field(default=0, metadata={"help": "save every N steps (0: only at a stop or the end)"})
    keep_last: int = field(default=2, metadata={"help": "complete checkpoints kept"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in checkpoint_dir"})
    notice_url: str | None = _help("poll this URL; HTTP 200 = an interruption notice")
    notice_poll_s: float = field(default=5.0, metadata={"help": "seconds between polls of notice_url"})
    notice_imdsv2: bool = field(default=False, metadata={"help": "fetch an IMDSv2 token before polling"})
    measure_memory: bool = field(default=True, metadata={
        "help": "count saved activations on the first step (the CPU memory measurement)"})
    dump_params: bool = field(default=False, metadata={"help": "rank 0 writes the final full parameters (tests)"})

    @property
    def strategies(self) -> list[str]:
        """The strategies run, in order (``strategy`` may list several)."""
        return [s.strip() for s in self.strategy.split(",") if s.strip()]

    def __post_init__(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(f"unknown strategy {bad or self.strategy!r}; use {', '.join(STRATEGIES)}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision={self.precision!r}: use fp32, bf16 or auto")

    def resolved_precision(self, device_type: str) -> str:
        """``auto`` made concrete for a device: bf16 mixed precision on GPUs, fp32 on a CPU.

        A CPU without bf16 units (no AVX512-BF16 / AMX) multiplies bf16 matrices through a slow fallback:
        0.3 GFLOP/s against fp32's 62 on the course's 2-core CI machine, so a bf16 training step that takes
        seconds in fp32 takes minutes. Real mode on a CPU (the rehearsal) therefore trains in fp32.
        """
        if self.precision != "auto":
            return self.precision
        return "bf16" if device_type == "cuda" else "fp32"

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (the dataclass stays frozen: one run, one record)."""
        return dataclasses.replace(self, **changes)

    def argv(self) -> list[str]:
        """The worker's command-line flags for every field that differs from its default."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                out += [flag, str(value)]
        return out

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one flag per field to ``parser`` (``--seq-len`` for ``seq_len``; booleans get ``--no-...``)."""
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            help_ = f.metadata.get("help", "")
            if f.type in ("bool", bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            else:
                kind = {"int": int, "int | None": int, "float": float}.get(str(f.type), str)
                parser.add_argument(flag, type=kind, default=f.default, help=help_)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The config a parsed command line describes (extra attributes, such as the common flags, ignored)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
