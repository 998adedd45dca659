#!/usr/bin/python3
"""PyTorch DistributedDataParallel reference for `ddp-bench train --model gpt` on the CPU.

  OPENBLAS_NUM_THREADS=1 /usr/bin/python3 -m torch.distributed.run --standalone \\
      --nproc_per_node 2 --redirects 2 --tee 2 bench/gpt/torch_ddp_gpt.py --threads 1
  OPENBLAS_NUM_THREADS=2 /usr/bin/python3 bench/gpt/torch_ddp_gpt.py --threads 2  # 1 rank

(--redirects 2 --tee 2: the launcher's default of 0 fails with Debian's torch 1.13 on
Python 3.11; bench/vs-torch.sh says why.)

Trains the same GPT as ddp's defaults for --model gpt (4 blocks, width 256, 4 heads,
context 128, bytes as tokens; tests/model/torch_gpt.py) on the same text with the same
step: a global batch of 32 windows split over the ranks, the mean cross-entropy over all
positions, gradients averaged by DistributedDataParallel over gloo (25 MB buckets, as
ddp's), the global gradient norm clipped at 1.0, AdamW (betas 0.9, 0.99, eps 1e-8,
weight decay 0.1 on the matrices and the token embedding only) on a cosine schedule with
warm-up. Each step every rank draws its windows at random from the training part of the
text (the first 90%, as ddp). After --warmup-steps untimed steps, --bench-steps steps are
timed between barriers; tokens/s = timed steps x global batch x context / the slowest
rank's wall time. Prints one JSON object (rank 0).

PyTorch's float32 matrix products on the CPU go to the system BLAS (Debian: OpenBLAS, the
same library ddp uses), so OPENBLAS_NUM_THREADS and OPENBLAS_CORETYPE in the environment
apply to both programs; --threads sets PyTorch's own intra-op threads.
"""
import argparse
import contextlib
import math
import os
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "model"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import torch_common  # noqa: E402
import torch_gpt  # noqa: E402


def default_corpus():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ddp", "kjv.txt")


def val_bytes(n):
    """ddp's validation split (src/data/text.c): 10% rounded, at least 1, at most n - 1."""
    v = n // 10 + (1 if n % 10 >= 5 else 0)
    return min(max(v, 1), n - 1)


def cosine_lr(a, step, total):
    """ddp_schedule_lr: linear warm-up to lr, then cosine down to min_lr at total."""
    if a.warmup > 0 and step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    span = total - a.warmup
    if span <= 0:
        return a.lr
    progress = min((step - a.warmup) / span, 1.0)
    return a.min_lr + (a.lr - a.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def add_gpt_args(ap):
    """The model, data and optimizer options that torch_train_gpt.py shares."""
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32, help="global batch (windows)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per rank")
    ap.add_argument("--text", default=None, help="default: ddp's KJV corpus cache file")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.99)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--autocast", action="store_true",
                    help="the forward and the loss under torch.autocast('cpu', bfloat16): "
                         "mixed precision as PyTorch users write it")
    ap.add_argument("--json", default=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_gpt_args(ap)
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--bench-steps", type=int, default=20)
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--no-allreduce", action="store_true",
                    help="skip gradient averaging (DDP's no_sync): the ceiling of N ranks")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed steps, 5 more under torch.profiler; operators by "
                         "self CPU time per step go to stderr (rank 0)")
    a = ap.parse_args()

    distributed, rank, world, local = torch_common.start(a.threads, a.batch)

    path = a.text or default_corpus()
    if not os.path.exists(path):
        sys.exit("%s: no such text; run ddp-train --model gpt once (it writes the default "
                 "corpus there), or: bible -l 79 gen1:1-rev22:21 > %s" % (path, path))
    with open(path, "rb") as f:
        raw = f.read()
    n_train = len(raw) - val_bytes(len(raw))
    text = torch.from_numpy(np.frombuffer(raw[:n_train], dtype=np.uint8).astype(np.int64))

    # Same initial parameters on every rank from the seed (DDP also broadcasts rank 0's).
    torch.manual_seed(a.seed)
    model = torch_gpt.GPT(a.layers, a.dim, a.heads, a.ctx, 256)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.param_groups(a.weight_decay), lr=a.lr,
                            betas=(a.beta1, a.beta2), eps=a.eps)
    net = DistributedDataParallel(model, bucket_cap_mb=a.bucket_mb) if distributed else model
    gen = np.random.default_rng([a.seed, rank])
    arange = torch.arange(a.ctx + 1)
    total = a.warmup_steps + a.bench_steps + 1  # as ddp-bench train's schedule

    def step(i):
        t0 = time.perf_counter()
        offs = torch.from_numpy(gen.integers(0, n_train - a.ctx, size=local))
        win = text[offs[:, None] + arange]  # (local, ctx + 1)
        x, y = win[:, :-1], win[:, 1:]
        for g in opt.param_groups:
            g["lr"] = cosine_lr(a, i, total)
        opt.zero_grad(set_to_none=True)
        sync = net.no_sync() if distributed and a.no_allreduce else contextlib.nullcontext()
        cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast)
        with sync:
            with cast:
                logits = net(x)
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
            t1 = time.perf_counter()
            loss.backward()  # DDP's all-reduce of each bucket overlaps the rest of backward
        t2 = time.perf_counter()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        t3 = time.perf_counter()
        return np.array([t1 - t0, t2 - t1, t3 - t2, t3 - t0])

    w, phases = torch_common.timed_steps(step, a.warmup_steps, a.bench_steps, distributed, world)

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        n = 5
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(n):
                step(a.warmup_steps + a.bench_steps + i)
        if rank == 0:
            ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in ops) / n / 1e3
            print("operators by self CPU time, ms per step (%d steps profiled, %.1f ms per "
                  "step in all):" % (n, total), file=sys.stderr)
            for e in ops[:30]:
                print("  %8.2f ms  %6d calls  %s" % (e.self_cpu_time_total / n / 1e3,
                                                     e.count // n, e.key), file=sys.stderr)

    if rank == 0:
        sps = a.bench_steps * a.batch / w
        out = {
            "bench": "torch_ddp_gpt",
            "framework": "pytorch " + torch.__version__,
            "autocast": "bf16" if a.autocast else "none",
            "model": torch_gpt.describe(model.spec),
            "params": nparams,
            "data": path,
            "ranks": world,
            "threads": torch.get_num_threads(),
            "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "backend": "gloo" if distributed else "none",
            "allreduce": distributed and not a.no_allreduce,
            "global_batch": a.batch,
            "warmup_steps": a.warmup_steps,
            "bench_steps": a.bench_steps,
            "samples_per_s": sps,
            "tokens_per_s": sps * a.ctx,
            "t_forward": phases[0].item(),
            "t_backward": phases[1].item(),
            "t_optim": phases[2].item(),
            "t_step": phases[3].item(),
            "t_step_wall": w / a.bench_steps,
        }
        torch_common.report(out, a.json)
    torch_common.finish(distributed)


if __name__ == "__main__":
    main()
