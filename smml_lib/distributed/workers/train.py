"""Train a Llama with one process, DDP or FSDP2, and report throughput, memory, MFU and the loss curve.

Run it under torchrun (the launcher does this for you; ``TrainConfig`` in ``smml_lib.distributed.train_config``
defines every flag once)::

    torchrun --standalone --nproc-per-node 4 -m smml_lib.distributed.workers.train --model preset:Llama-3.2-1B \\
        --strategy fsdp --precision bf16 --seq-len 1024 --global-batch 16 --max-steps 20
    python -m smml_lib.distributed.workers.train --model tiny --strategy single       # one process, no torchrun

Strategies (``--strategy``, a comma-separated list runs each in turn in the same processes):

- ``single``: one process holds and updates the whole model (the baseline; world size 1);
- ``ddp``: every rank holds a full replica; gradients are all-reduced in buckets during backward;
- ``ddp_nosync``: DDP that never all-reduces gradients (``no_sync``): the ranks drift apart, so it is
  only for timing: its step time minus DDP's is the communication DDP could not hide;
- ``fsdp``: FSDP2 ``fully_shard`` per decoder layer: parameters, gradients and Adam states are sharded
  over the ranks (ZeRO-3); ``--no-reshard-after-forward`` keeps the gathered parameters from forward
  to backward (less communication, more memory: ZeRO-2-like at the peak).

Every strategy trains on the same global batch at the same step (``smml_lib.distributed.batches.StepData``): rank r
takes rows r*B/W..(r+1)*B/W of it, so losses and parameters match the single-process run up to
floating-point reduction order. ``--precision bf16`` is mixed precision (fp32 master weights, bf16
compute: autocast for single/DDP, ``MixedPrecisionPolicy`` for FSDP); ``--activation-checkpointing``
recomputes each decoder layer in backward instead of storing its activations. ``--micro-batch M`` splits
each rank's share into forwards of M sequences and accumulates gradients: DDP all-reduces once per step
(``no_sync`` before), FSDP reduce-scatters after every micro-batch (keeping unsharded gradients until the
last one would cost a full model's worth of memory).

Checkpoints (``--checkpoint-dir D --checkpoint-every N``, ``--resume``) and the cooperative stop
(SIGTERM/SIGUSR1, ``--notice-url URL --notice-poll-s S``) are described in ``smml_lib.checkpoint.stop``.
On a stop the worker finishes the step, saves, writes ``stopped_early=true`` and exits 75.
With several strategies and a checkpoint dir, each strategy uses ``D/<strategy>``.

Result (one JSON row per rank and strategy, collected by the launcher): ``strategy, world_size,
tokens_per_s`` (whole job), ``step_time_s`` (median over timed steps), ``mfu`` (model FLOPs
utilisation vs the dense datasheet peak; ``None`` on a CPU), ``peak_memory_bytes`` with
``memory_method`` (``cuda_max_memory_allocated`` on GPUs, ``cpu_tensor_bytes``: parameters + gradients
+ optimizer states + saved activations, counted tensor by tensor), ``losses`` (one per step),
checkpoint sizes/times, ``stopped_early, last_step, steps_since_checkpoint``.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from smml_lib.checkpoint import sharded as ckpt
from smml_lib.checkpoint.stop import EXIT_STOPPED, StopRequest
from smml_lib.common.device import device_name, synchronize
from smml_lib.distributed.batches import StepData, token_stream
from smml_lib.distributed.runtime import (
    DistEnv,
    add_common_args,
    barrier,
    init_distributed,
    maybe_inject_fault,
    print0,
    run_dir,
    run_worker,
    write_result,
)
from smml_lib.distributed.strategies import build_model, wrap
from smml_lib.distributed.train_config import TrainConfig
from smml_lib.models.scaling import train_flops_per_token
from smml_lib.perf import memtrack
from smml_lib.perf.hardware import lookup_spec


def parse_args(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    """The run's ``TrainConfig`` and the flags every worker takes (run folder, backend, fault injection)."""
    p = argparse.ArgumentParser(prog="smml_lib.distributed.workers.train", description=__doc__.splitlines()[0])
    TrainConfig.add_arguments(p)
    add_common_args(p)
    args = p.parse_args(argv)
    try:
        return TrainConfig.from_args(args), args
    except ValueError as exc:
        p.error(str(exc))


def lr_at(step: int, run: TrainConfig) -> float:
    """Learning rate as a pure function of the step (linear warm-up over 10 steps): nothing to checkpoint."""
    return run.lr * min(1.0, step / 10)


def peak_tflops(env: DistEnv, precision: str) -> float | None:
    """Dense datasheet peak of this rank's GPU for the compute dtype, ``None`` on a CPU / unlisted GPU."""
    if env.device.type != "cuda":
        return None
    spec = lookup_spec(device_name(env.device)).spec
    return spec.peak_tflops("bf16" if precision == "bf16" else "fp32") if spec else None


@dataclass
class Loop:
    """One strategy's training run: what it trains, where it checkpoints, and what it has measured so far."""

    strategy: str
    model: Any  # wrapped by the strategy (DDP or FSDP)
    config: Any  # the model's config (a DDP wrapper hides the model's attributes)
    opt: Any
    data: StepData
    root: Path | None  # checkpoint folder of this strategy (None: no checkpoints)
    micro: int  # sequences per forward
    accum: int  # forwards per optimizer step
    start: int = 0  # the step it resumed after (0: from scratch)
    resumed: dict[str, Any] = field(default_factory=lambda: {"resumed_from_step": None, "load_s": None})
    losses: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    mem: dict[str, Any] = field(default_factory=dict)
    saves: list[Any] = field(default_factory=list)
    last_saved: int = 0
    step: int = 0
    stopped: bool = False


def setup(run: TrainConfig, env: DistEnv, strategy: str) -> Loop:
    """Build and wrap the model, its optimizer and data; resume from the latest checkpoint when asked."""
    gc.collect()  # the previous strategy's model and optimizer (DDP holds reference cycles) go before this one's
    if env.device.type == "cuda":  # peak memory is measured: nothing of theirs may still be allocated
        torch.cuda.empty_cache()
    model, tokenizer = build_model(run.model, env.device, layers=run.layers, seed=run.seed)
    data = StepData(token_stream(run.data, tokenizer, model.config.vocab_size, seed=run.seed), run.seq_len,
                    run.global_batch, run.seed)
    config = model.config
    model = wrap(model, strategy, run, env)
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=env.device.type == "cuda")
    root = Path(run.checkpoint_dir) / (strategy if len(run.strategies) > 1 else "") if run.checkpoint_dir else None
    per_rank = run.global_batch // env.world_size
    micro = run.micro_batch or per_rank
    if per_rank % micro:
        raise ValueError(f"micro batch {micro} does not divide this rank's {per_rank} sequences")
    loop = Loop(strategy, model, config, opt, data, root, micro, per_rank // micro)
    if run.resume:
        latest = ckpt.latest_checkpoint(root) if root else None
        if latest is None:
            print0(f"--resume: no checkpoint under {root}; starting from step 0", env=env)
        else:
            t0 = time.perf_counter()
            meta = ckpt.load_checkpoint(latest, model, opt, env)
            loop.start = meta["step"]
            loop.resumed = {"resumed_from_step": meta["step"], "load_s": time.perf_counter() - t0}
            print0(f"resumed {strategy} from {latest} (step {loop.start}) in {loop.resumed['load_s']:.2f} s", env=env)
    loop.last_saved = loop.step = loop.start
    return loop


def train_step(loop: Loop, run: TrainConfig, env: DistEnv, step: int) -> float:
    """One optimizer step over this rank's share of the global batch; returns the loss averaged over ranks.

    DDP all-reduces only with the last micro-batch (``no_sync`` before it). FSDP reduce-scatters after every
    micro-batch: skipping it would keep unsharded gradients (a full model's worth) until the last one. On a
    CPU the first step also counts the bytes held (``memtrack``): GPUs report their peak instead.
    """
    model, cuda = loop.model, env.device.type == "cuda"
    first = step == loop.start + 1
    amp = torch.autocast(env.device.type, dtype=torch.bfloat16) \
        if run.precision == "bf16" and loop.strategy != "fsdp" else nullcontext()
    for group in loop.opt.param_groups:
        group["lr"] = lr_at(step, run)
    x_all, y_all = loop.data.local_batch(step, env.rank, env.world_size)
    total = torch.zeros((), device=env.device)
    for m in range(loop.accum):
        x = x_all[m * loop.micro:(m + 1) * loop.micro].to(env.device)
        y = y_all[m * loop.micro:(m + 1) * loop.micro].to(env.device)
        no_sync = loop.strategy == "ddp_nosync" or (loop.strategy == "ddp" and m < loop.accum - 1)
        measure = run.measure_memory and not cuda and first and m == 0
        held: list = []
        with model.no_sync() if no_sync else nullcontext():
            with memtrack.saved_activations(model, held) if measure else nullcontext() as acts:
                with amp:
                    logits = model(input_ids=x).logits
                loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1)) / loop.accum
                held.append(logits)
            loss.backward()
        if measure:
            loop.mem["activation_bytes"] = acts.bytes
        total += loss.detach()
        del logits, loss, held
    loop.opt.step()
    if first and not cuda:
        sb = memtrack.state_bytes(model, loop.opt)
        loop.mem.update(param_bytes=sb.params, grad_bytes=sb.grads, optimizer_bytes=sb.optimizer)
    loop.opt.zero_grad(set_to_none=True)
    if env.distributed:
        dist.all_reduce(total, op=dist.ReduceOp.AVG if env.backend == "nccl" else dist.ReduceOp.SUM)
        if env.backend != "nccl":
            total /= env.world_size  # gloo has no AVG
    return float(total.item())  # .item() waits for the device: the step is really done


def maybe_checkpoint(loop: Loop, run: TrainConfig, env: DistEnv, step: int) -> None:
    """Save when one is due: every ``checkpoint_every`` steps, at the last step, and after a stop request."""
    every = run.checkpoint_every and step % run.checkpoint_every == 0
    if loop.root is None or not (loop.stopped or step == run.max_steps or every):
        return
    info = ckpt.save_checkpoint(loop.root, step, loop.model, loop.opt, env, keep_last=run.keep_last, meta={
        "strategy": loop.strategy, "next_step": step + 1, "data": run.data, "seed": run.seed,
        "seq_len": run.seq_len, "global_batch": run.global_batch, "model": run.model})
    loop.saves.append(info)
    loop.last_saved = step
    print0(f"[{loop.strategy}] checkpoint {info.path.name}: {info.size_bytes / 1e6:.1f} MB in {info.seconds:.2f} s",
           env=env)


def memory_fields(loop: Loop, env: DistEnv) -> dict[str, Any]:
    """The peak on a GPU (``max_memory_allocated``); on a CPU the tensors counted on the first step."""
    mem = dict(loop.mem)
    if env.device.type == "cuda":
        mem.update(peak_memory_bytes=memtrack.cuda_peak_bytes(env.device), memory_method="cuda_max_memory_allocated")
    elif "param_bytes" in mem:
        parts = ("param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes")
        mem.update(peak_memory_bytes=sum(mem.get(k, 0) for k in parts), memory_method="cpu_tensor_bytes")
    return mem


def speed_fields(loop: Loop, run: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """Step time (median over the timed steps), tokens/s of the whole job, model TFLOP/s per GPU, MFU."""
    timed = loop.times[run.warmup_steps:] or loop.times
    step_s = float(np.median(timed)) if timed else float("nan")
    tokens_per_s = loop.data.tokens_per_step() / step_s if timed else float("nan")
    fpt = train_flops_per_token(loop.config, run.seq_len)
    peak = peak_tflops(env, run.precision)
    per_gpu = fpt * tokens_per_s / env.world_size / 1e12
    return dict(steps_run=len(loop.times), timed_steps=len(timed), step_time_s=step_s,
                step_time_p10_s=float(np.percentile(timed, 10)) if timed else None,
                step_time_p90_s=float(np.percentile(timed, 90)) if timed else None,
                tokens_per_step=loop.data.tokens_per_step(), tokens_per_s=tokens_per_s, flops_per_token=fpt,
                model_tflops_per_gpu=per_gpu, peak_tflops=peak, mfu=per_gpu / peak if peak else None)


def result_row(loop: Loop, run: TrainConfig, env: DistEnv, stop: StopRequest) -> dict[str, Any]:
    """This rank's result: the run's shape, speed, memory, losses and checkpoints (one JSON row)."""
    ran = bool(loop.times)
    saves = loop.saves
    return dict(
        strategy=loop.strategy, **loop.resumed, world_size=env.world_size, num_nodes=env.num_nodes,
        backend=env.backend, device_name=device_name(env.device), model=run.model,
        num_layers=loop.config.num_hidden_layers, params=sum(p.numel() for p in loop.model.parameters()),
        precision=run.precision, activation_checkpointing=run.activation_checkpointing,
        reshard_after_forward=run.reshard_after_forward if loop.strategy == "fsdp" else None,
        seq_len=run.seq_len, global_batch=run.global_batch, micro_batch=loop.micro, grad_accum=loop.accum,
        grad_sync=loop.strategy != "ddp_nosync", **speed_fields(loop, run, env),
        losses=loop.losses, step_times_s=loop.times, first_step=loop.start + 1,
        last_step=loop.step if ran else loop.start, stopped_early=loop.stopped,
        stop_reason=stop.reason if loop.stopped else "",
        steps_since_checkpoint=(loop.step - loop.last_saved) if ran else 0,
        checkpoint_path=str(saves[-1].path) if saves else None,
        checkpoint_bytes=saves[-1].size_bytes if saves else None,
        save_s=float(np.median([s.seconds for s in saves])) if saves else None, **memory_fields(loop, env))


def dump_params(loop: Loop, folder: Path, env: DistEnv) -> None:
    """Rank 0 saves the full (unsharded) final parameters: tests compare strategies bit for bit."""
    full = get_model_state_dict(loop.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if env.rank == 0:
        torch.save({k: v.detach().cpu() for k, v in full.items()}, folder / f"params-{loop.strategy}.pt")
    barrier(env)


def run_strategy(run: TrainConfig, common: argparse.Namespace, env: DistEnv, strategy: str,
                 stop: StopRequest) -> dict[str, Any]:
    """Train one strategy from its start step to ``max_steps`` (or a stop request); return this rank's row."""
    loop = setup(run, env, strategy)
    memtrack.reset_peak(env.device)
    for step in range(loop.start + 1, run.max_steps + 1):
        maybe_inject_fault(common, env, step)
        synchronize(env.device)
        t0 = time.perf_counter()
        loss = train_step(loop, run, env, step)
        loop.times.append(time.perf_counter() - t0)
        loop.losses.append(loss)
        loop.step = step
        print0(f"[{strategy}] step {step:>4}/{run.max_steps}  loss {loss:.4f}  {loop.times[-1] * 1e3:8.1f} ms", env=env)
        loop.stopped = stop.check(env)
        maybe_checkpoint(loop, run, env, step)
        if loop.stopped:
            break
    if run.dump_params:
        dump_params(loop, run_dir(common.run_dir), env)
    return result_row(loop, run, env, stop)


def main(argv: list[str]) -> int:
    run, common = parse_args(argv)
    env = init_distributed(common.backend, common.pg_timeout_s)
    if run.precision == "auto":
        run = run.replace(precision=run.resolved_precision(env.device.type))
        print0(f"precision auto -> {run.precision} on {env.device.type}", env=env)
    stop = StopRequest().install_signal_handlers()
    if run.notice_url and env.local_rank == 0:  # one poller per node; check() shares the flag with all ranks
        stop.watch_notice_url(run.notice_url, run.notice_poll_s, imdsv2=run.notice_imdsv2)
    print0(f"train worker: {env.world_size} process(es), backend {env.backend}, strategies {run.strategies}", env=env)
    for strategy in run.strategies:
        row = run_strategy(run, common, env, strategy, stop)
        row.update(pid=os.getpid(), exit_code=EXIT_STOPPED if row["stopped_early"] else 0)
        write_result(row, env, tag=f"train-{strategy}", folder=common.run_dir)
        if row["stopped_early"]:
            barrier(env)  # every rank has written its result before any exits
            print0(f"stopped early after step {row['last_step']} ({row['stop_reason']}); "
                   f"exit code {EXIT_STOPPED}: rerun with --resume to continue", env=env)
            return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    run_worker(main)
