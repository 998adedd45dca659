#!/usr/bin/python3
"""PyTorch's side of the README's language-model run: the same GPT, data, step and
schedule rules as `ddp-train --model gpt`, trained for a wall-clock budget, then its
validation loss over the whole validation split, as ddp-train reports it.

  OPENBLAS_NUM_THREADS=2 /usr/bin/python3 bench/gpt/torch_train_gpt.py --threads 2 --seconds 540
  OPENBLAS_NUM_THREADS=1 /usr/bin/python3 -m torch.distributed.run --standalone \\
      --nproc_per_node 2 --redirects 2 --tee 2 bench/gpt/torch_train_gpt.py --seconds 540

The model, optimizer, sampling and clipping are torch_ddp_gpt.py's (its docstring says how
each matches ddp). The schedule is sized to the budget, which is the best PyTorch can do
with it: after 10 steps the script measures its step time and fixes the total number of
steps so that training ends at --seconds (measured from the first step; loading and
start-up are not counted); warm-up and the cosine decay to --min-lr then run over that
total, as ddp's over --steps. With --steps N instead, it runs N steps.

Validation: the last 10% of the text, cut into consecutive windows of --ctx positions
(the last one shorter) so that every byte after the first is predicted exactly once, the
mean cross-entropy in nats over all of them, and bits per byte (nats / ln 2): what
ddp-train's final evaluation computes (src/data/text.c, ddp_val_windows_*). Prints one
JSON object (rank 0).
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "model"))
import torch_common  # noqa: E402
import torch_ddp_gpt  # noqa: E402
import torch_gpt  # noqa: E402


def evaluate(model, val, ctx, rank, world):
    """Mean cross-entropy (nats) over every predicted byte of the validation split."""
    predicted = len(val) - 1
    n_windows = (predicted + ctx - 1) // ctx
    total = torch.zeros(2, dtype=torch.float64)  # sum of losses, count
    model.eval()
    with torch.no_grad():
        for w0 in range(rank * 32, n_windows, 32 * world):
            rows_x, rows_y = [], []
            for w in range(w0, min(w0 + 32, n_windows)):
                s = w * ctx
                n = min(ctx, predicted - s)
                x = torch.zeros(ctx, dtype=torch.int64)
                y = torch.full((ctx,), -1, dtype=torch.int64)
                x[:n] = val[s:s + n]
                y[:n] = val[s + 1:s + n + 1]
                rows_x.append(x)
                rows_y.append(y)
            logits = model(torch.stack(rows_x))
            y = torch.stack(rows_y).reshape(-1)
            total[0] += torch.nn.functional.cross_entropy(
                logits.reshape(-1, 256), y, ignore_index=-1, reduction="sum").double()
            total[1] += (y >= 0).sum()
    model.train()
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    torch_ddp_gpt.add_gpt_args(ap)
    ap.add_argument("--seconds", type=float, default=0, help="training budget (wall time)")
    ap.add_argument("--steps", type=int, default=0, help="or a fixed number of steps")
    a = ap.parse_args()
    if (a.seconds > 0) == (a.steps > 0):
        sys.exit("give one of --seconds and --steps")

    distributed, rank, world, local = torch_common.start(a.threads, a.batch)

    path = a.text or torch_ddp_gpt.default_corpus()
    with open(path, "rb") as f:
        raw = f.read()
    n_train = len(raw) - torch_ddp_gpt.val_bytes(len(raw))
    data = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))
    text, val = data[:n_train], data[n_train:]

    torch.manual_seed(a.seed)
    model = torch_gpt.GPT(a.layers, a.dim, a.heads, a.ctx, 256)
    opt = torch.optim.AdamW(model.param_groups(a.weight_decay), lr=a.lr,
                            betas=(a.beta1, a.beta2), eps=a.eps)
    net = DistributedDataParallel(model, bucket_cap_mb=25) if distributed else model
    gen = np.random.default_rng([a.seed, rank])
    arange = torch.arange(a.ctx + 1)

    total = a.steps if a.steps > 0 else None
    probe = 10
    step = 0
    if distributed:
        dist.barrier()
    t0 = time.perf_counter()
    losses = []
    while total is None or step < total:
        if total is None and step == probe:
            # Every rank must agree on the total: take the slowest rank's step time.
            per = torch.tensor([(time.perf_counter() - t0) / probe], dtype=torch.float64)
            if distributed:
                dist.all_reduce(per, op=dist.ReduceOp.MAX)
            total = max(probe + 1, probe + int((a.seconds - per.item() * probe) / per.item()))
        offs = torch.from_numpy(gen.integers(0, n_train - a.ctx, size=local))
        win = text[offs[:, None] + arange]
        x, y = win[:, :-1], win[:, 1:]
        # Before the total is known the schedule is still in warm-up (probe < --warmup).
        lr = torch_ddp_gpt.cosine_lr(a, step, total if total else 10**9)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, 256), y.reshape(-1))
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        losses.append(loss.item())
        step += 1
    if distributed:
        dist.barrier()
    train_s = time.perf_counter() - t0
    val_loss = evaluate(model, val, a.ctx, rank, world)
    if rank == 0:
        out = {
            "bench": "torch_train_gpt",
            "framework": "pytorch " + torch.__version__,
            "model": torch_gpt.describe(model.spec),
            "ranks": world,
            "threads": torch.get_num_threads(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "steps": step,
            "train_seconds": train_s,
            "tokens_per_s": step * a.batch * a.ctx / train_s,
            "train_loss_last50": float(np.mean(losses[-50:])),
            "val_loss": val_loss,
            "val_bpb": val_loss / math.log(2),
        }
        torch_common.report(out, a.json)
    torch_common.finish(distributed)


if __name__ == "__main__":
    main()
