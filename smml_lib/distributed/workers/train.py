"""Train a Llama with one process, DDP or FSDP2, and report throughput, memory, MFU and the loss curve.

Run it under torchrun (the launcher does this for you)::

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
(SIGTERM/SIGUSR1, ``--notice-url URL --notice-poll-s S``) are described in ``smml_lib.checkpoint.sharded``.
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
from pathlib import Path
from typing import Any

from smml_lib.checkpoint import sharded as ckpt
from smml_lib.distributed.batches import StepData, token_stream
from smml_lib.distributed.runtime import DistEnv, add_common_args, barrier, init_distributed, maybe_inject_fault, print0, \
    run_dir, run_worker, write_result

STRATEGIES = ("single", "ddp", "fsdp", "ddp_nosync")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="smml_lib.distributed.workers.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="'tiny', a checkpoint folder or hub id, or preset:<name> "
                                                   "(random weights from a published config, no download)")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers (presets)")
    p.add_argument("--strategy", default="ddp", help="single | ddp | fsdp | ddp_nosync, or a comma-separated list")
    p.add_argument("--reshard-after-forward", action=argparse.BooleanOptionalAction, default=True,
                   help="FSDP: free gathered parameters after forward (ZeRO-3) or keep them (ZeRO-2-like)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 = mixed precision")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step, all ranks together")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per forward on one rank "
                                                                 "(default: all of this rank's share, no accumulation)")
    p.add_argument("--max-steps", type=int, default=5, help="train until this global step")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps of this process left out of the timing")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="corpus", help="corpus | random | path to a text file")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP gradient bucket size")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=0, help="save every N steps (0: only at stop/end)")
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --checkpoint-dir")
    p.add_argument("--notice-url", default=None, help="poll this URL; HTTP 200 = interruption notice")
    p.add_argument("--notice-poll-s", type=float, default=5.0)
    p.add_argument("--notice-imdsv2", action="store_true", help="fetch an IMDSv2 token before polling")
    p.add_argument("--measure-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="count saved activations on the first step (CPU memory measurement)")
    p.add_argument("--dump-params", action="store_true", help="rank 0 writes the final full parameters (tests)")
    add_common_args(p)
    args = p.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    bad = [s for s in args.strategies if s not in STRATEGIES]
    if bad:
        p.error(f"unknown strategy {bad}; use {', '.join(STRATEGIES)}")
    return args


def build_model(args: argparse.Namespace, env: DistEnv) -> tuple[Any, Any]:
    """The model in fp32 on this rank's device, identical on every rank, plus a tokenizer for the data."""
    import torch

    from smml_lib.models.loading import load_llama

    if args.model.startswith("preset:"):
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from smml_lib.models.anatomy import preset_config
        from smml_lib.models.tiny import tiny_llama_path

        cfg = {k: v for k, v in preset_config(args.model.split(":", 1)[1]).items() if not k.startswith("_")}
        if args.layers:
            cfg["num_hidden_layers"] = args.layers
        torch.manual_seed(args.seed)  # same seed on every rank -> identical random weights
        with torch.device(env.device):
            model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa"))
        tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path())  # corpus ids < 1024 are valid in any vocab
    else:
        model, tokenizer = load_llama(args.model, dtype="fp32", device=env.device, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    return model, tokenizer


def wrap(model: Any, strategy: str, args: argparse.Namespace, env: DistEnv) -> Any:
    """Apply the parallel strategy (and activation checkpointing) to a freshly built model."""
    import torch

    if args.activation_checkpointing:
        kwargs = {"use_reentrant": False}  # non-reentrant checkpointing works with DDP and FSDP2
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if strategy == "single":
        if env.world_size > 1:
            raise ValueError("strategy 'single' runs in one process: launch it with nproc=1")
        return model
    if not env.distributed:
        raise ValueError(f"strategy {strategy!r} needs torchrun (the launcher) to start the processes")
    if strategy in ("ddp", "ddp_nosync"):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.local_rank] if env.device.type == "cuda" else None
        return DDP(model, device_ids=ids, gradient_as_bucket_view=True, bucket_cap_mb=args.bucket_mb)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if args.precision == "bf16" else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=args.reshard_after_forward, mp_policy=mp)
    # the root group (embeddings, final norm, head) is needed again right at the start of backward: with the
    # default (None) FSDP keeps it gathered after forward instead of freeing and re-gathering it at once
    fully_shard(model, mesh=mesh, reshard_after_forward=None if args.reshard_after_forward else False, mp_policy=mp)
    return model


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Learning rate as a pure function of the step (linear warm-up over 10 steps): nothing to checkpoint."""
    return args.lr * min(1.0, step / 10)


def peak_tflops(env: DistEnv, precision: str) -> float | None:
    """Dense datasheet peak of this rank's GPU for the compute dtype, ``None`` on a CPU / unlisted GPU."""
    if env.device.type != "cuda":
        return None
    from smml_lib.perf.environment import device_name
    from smml_lib.perf.hardware import lookup_spec

    spec = lookup_spec(device_name(env.device)).spec
    return spec.peak_tflops("bf16" if precision == "bf16" else "fp32") if spec else None


def run_strategy(args: argparse.Namespace, env: DistEnv, strategy: str, stop: ckpt.StopRequest) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from smml_lib.perf import memtrack

    gc.collect()  # the previous strategy's model and optimizer (DDP holds reference cycles) go before this one's
    if env.device.type == "cuda":  # peak is measured: nothing of theirs may still be allocated
        torch.cuda.empty_cache()
    model, tokenizer = build_model(args, env)
    cfg = model.config
    data = StepData(token_stream(args.data, tokenizer, cfg.vocab_size, seed=args.seed), args.seq_len,
                    args.global_batch, args.seed)
    model = wrap(model, strategy, args, env)
    fused = env.device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    root = None
    if args.checkpoint_dir:
        root = Path(args.checkpoint_dir) / (strategy if len(args.strategies) > 1 else "")
    row: dict[str, Any] = {"strategy": strategy, "resumed_from_step": None, "load_s": None}
    start = 0
    if args.resume:
        latest = ckpt.latest_checkpoint(root) if root else None
        if latest is None:
            print0(f"--resume: no checkpoint under {root}; starting from step 0", env=env)
        else:
            t0 = time.perf_counter()
            meta = ckpt.load_checkpoint(latest, model, opt, env)
            start, row["resumed_from_step"], row["load_s"] = meta["step"], meta["step"], time.perf_counter() - t0
            print0(f"resumed {strategy} from {latest} (step {start}) in {row['load_s']:.2f} s", env=env)
    per_rank = args.global_batch // env.world_size
    micro = args.micro_batch or per_rank
    if per_rank % micro:
        raise ValueError(f"micro batch {micro} does not divide this rank's {per_rank} sequences")
    accum = per_rank // micro
    amp = torch.autocast(env.device.type, dtype=torch.bfloat16) \
        if args.precision == "bf16" and strategy != "fsdp" else nullcontext()
    cuda = env.device.type == "cuda"
    losses, times, mem, saves = [], [], {}, []
    last_saved, stopped, step = start, False, start
    memtrack.reset_peak(env.device)
    for step in range(start + 1, args.max_steps + 1):
        maybe_inject_fault(args, env, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        if cuda:
            torch.cuda.synchronize(env.device)
        t0 = time.perf_counter()
        x_all, y_all = data.local_batch(step, env.rank, env.world_size)
        total = torch.zeros((), device=env.device)
        for m in range(accum):
            x = x_all[m * micro:(m + 1) * micro].to(env.device)
            y = y_all[m * micro:(m + 1) * micro].to(env.device)
            last = m == accum - 1
            sync = nullcontext()
            if strategy == "ddp_nosync" or (strategy == "ddp" and not last):
                sync = model.no_sync()  # accumulate locally; all-reduce only with the last micro-batch
            # FSDP reduce-scatters after every micro-batch: skipping it would keep unsharded gradients
            # (a full model's worth) until the last one, undoing the memory FSDP is for
            measure = args.measure_memory and not cuda and step == start + 1 and m == 0
            held: list = []
            with sync:
                with memtrack.saved_activations(model, held) if measure else nullcontext() as acts:
                    with amp:
                        logits = model(input_ids=x).logits
                    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1)) / accum
                    held.append(logits)
                loss.backward()
            if measure:
                mem["activation_bytes"] = acts.bytes
            total += loss.detach()
            del logits, loss, held
        opt.step()
        if step == start + 1 and not cuda:
            sb = memtrack.state_bytes(model, opt)
            mem.update(param_bytes=sb.params, grad_bytes=sb.grads, optimizer_bytes=sb.optimizer)
        opt.zero_grad(set_to_none=True)
        if env.distributed:
            dist.all_reduce(total, op=dist.ReduceOp.AVG if env.backend == "nccl" else dist.ReduceOp.SUM)
            if env.backend != "nccl":
                total /= env.world_size  # gloo has no AVG
        loss_value = float(total.item())  # .item() waits for the GPU: the step is really done
        times.append(time.perf_counter() - t0)
        losses.append(loss_value)
        print0(f"[{strategy}] step {step:>4}/{args.max_steps}  loss {loss_value:.4f}  {times[-1] * 1e3:8.1f} ms",
               env=env)
        stopped = stop.check(env)
        due = root is not None and (stopped or step == args.max_steps or
                                    (args.checkpoint_every and step % args.checkpoint_every == 0))
        if due:
            info = ckpt.save_checkpoint(root, step, model, opt, env, keep_last=args.keep_last, meta={
                "strategy": strategy, "next_step": step + 1, "data": args.data, "seed": args.seed,
                "seq_len": args.seq_len, "global_batch": args.global_batch, "model": args.model})
            saves.append(info)
            last_saved = step
            print0(f"[{strategy}] checkpoint {info.path.name}: {info.size_bytes / 1e6:.1f} MB in {info.seconds:.2f} s",
                   env=env)
        if stopped:
            break
    timed = times[args.warmup_steps:] or times
    step_s = float(np.median(timed)) if timed else float("nan")
    tokens_per_s = data.tokens_per_step() / step_s if timed else float("nan")
    from smml_lib.models.scaling import train_flops_per_token

    fpt = train_flops_per_token(cfg, args.seq_len)
    peak = peak_tflops(env, args.precision)
    if cuda:
        mem.update(peak_memory_bytes=memtrack.cuda_peak_bytes(env.device), memory_method="cuda_max_memory_allocated")
    elif "param_bytes" in mem:
        mem.update(peak_memory_bytes=sum(mem.get(k, 0) for k in ("param_bytes", "grad_bytes", "optimizer_bytes",
                                                                  "activation_bytes")),
                   memory_method="cpu_tensor_bytes")
    if args.dump_params:
        _dump_params(model, strategy, args, env)
    from smml_lib.perf.environment import device_name

    row.update(
        world_size=env.world_size, num_nodes=env.num_nodes, backend=env.backend, device_name=device_name(env.device),
        model=args.model, num_layers=cfg.num_hidden_layers, params=sum(p.numel() for p in _full_params(model)),
        precision=args.precision, activation_checkpointing=args.activation_checkpointing,
        reshard_after_forward=args.reshard_after_forward if strategy == "fsdp" else None,
        seq_len=args.seq_len, global_batch=args.global_batch, micro_batch=micro, grad_accum=accum,
        grad_sync=strategy != "ddp_nosync", steps_run=len(times), timed_steps=len(timed),
        step_time_s=step_s, step_time_p10_s=float(np.percentile(timed, 10)) if timed else None,
        step_time_p90_s=float(np.percentile(timed, 90)) if timed else None,
        tokens_per_step=data.tokens_per_step(), tokens_per_s=tokens_per_s, flops_per_token=fpt,
        model_tflops_per_gpu=fpt * tokens_per_s / env.world_size / 1e12, peak_tflops=peak,
        mfu=(fpt * tokens_per_s / env.world_size / 1e12 / peak) if peak else None,
        losses=losses, step_times_s=times, first_step=start + 1, last_step=step if times else start,
        stopped_early=stopped, stop_reason=stop.reason if stopped else "",
        steps_since_checkpoint=(step - last_saved) if times else 0,
        checkpoint_path=str(saves[-1].path) if saves else None,
        checkpoint_bytes=saves[-1].size_bytes if saves else None,
        save_s=float(np.median([s.seconds for s in saves])) if saves else None, **mem)
    return row


def _full_params(model: Any) -> list:
    return [p for p in model.parameters()]


def _dump_params(model: Any, strategy: str, args: argparse.Namespace, env: DistEnv) -> None:
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if env.rank == 0:
        torch.save({k: v.detach().cpu() for k, v in full.items()}, run_dir(args.run_dir) / f"params-{strategy}.pt")
    barrier(env)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    env = init_distributed(args.backend, args.pg_timeout_s)
    stop = ckpt.StopRequest().install_signal_handlers()
    if args.notice_url and env.local_rank == 0:  # one poller per node; check() shares the flag with all ranks
        stop.watch_notice_url(args.notice_url, args.notice_poll_s, imdsv2=args.notice_imdsv2)
    print0(f"worker_train: {env.world_size} process(es), backend {env.backend}, strategies {args.strategies}",
           env=env)
    for strategy in args.strategies:
        row = run_strategy(args, env, strategy, stop)
        row.update(pid=os.getpid(), exit_code=ckpt.EXIT_STOPPED if row["stopped_early"] else 0)
        write_result(row, env, tag=f"train-{strategy}", folder=args.run_dir)
        if row["stopped_early"]:
            barrier(env)  # every rank has written its result before any exits
            print0(f"stopped early after step {row['last_step']} ({row['stop_reason']}); "
                   f"exit code {ckpt.EXIT_STOPPED}: rerun with --resume to continue", env=env)
            return ckpt.EXIT_STOPPED
    return 0


if __name__ == "__main__":
    run_worker(main)
