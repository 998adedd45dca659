#!/usr/bin/python3
"""PyTorch DistributedDataParallel reference for `ddp-bench train --model cnn` on the CPU.

  OPENBLAS_NUM_THREADS=2 /usr/bin/python3 bench/cnn/torch_ddp_cnn.py --threads 2   # 1 rank
  OPENBLAS_NUM_THREADS=1 /usr/bin/python3 -m torch.distributed.run --standalone \\
      --nproc_per_node 2 --redirects 2 --tee 2 bench/cnn/torch_ddp_cnn.py --threads 1

(--redirects 2 --tee 2: bench/vs-torch.sh says why.)

The same network as ddp's defaults for --model cnn (src/model/cnn.c): per stage a 3x3
convolution with padding 1 and a bias, BatchNorm2d, ReLU and 2x2 max pooling (channels
32, 64), flattened, then Linear(64*7*7, 128), ReLU, Linear(128, 10); the same step: a
global batch of --batch Fashion-MNIST images split over the ranks, pixels / 255, mean
cross-entropy, gradients averaged by DistributedDataParallel over gloo (25 MB buckets),
SGD with momentum 0.9 and weight decay 2e-3 (ddp's CNN defaults; PyTorch's SGD decays
every tensor, ddp only the weights, which changes nothing in the time of a step). Batch norm is plain
per-rank BatchNorm2d (PyTorch 1.13's SyncBatchNorm runs only on GPUs). --channels-last
runs the network in torch.channels_last memory format (ddp's layout); the default is
PyTorch's NCHW. After --warmup-steps untimed steps, --bench-steps steps are timed between
barriers; samples/s = timed steps x global batch / the slowest rank's wall time. Prints
one JSON object (rank 0).
"""
import argparse
import contextlib
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_common  # noqa: E402


def load_images(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, h, w)


def load_labels(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=8)


def make_cnn(channels, hidden, kernel, hw):
    layers, cin = [], 1
    for c in channels:
        layers += [nn.Conv2d(cin, c, kernel, padding=kernel // 2), nn.BatchNorm2d(c),
                   nn.ReLU(), nn.MaxPool2d(2)]
        cin, hw = c, hw // 2
    layers.append(nn.Flatten())
    width = cin * hw * hw
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", default="32,64")
    ap.add_argument("--hidden", default="128")
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128, help="global batch (images)")
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--bench-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per rank")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--no-allreduce", action="store_true",
                    help="skip gradient averaging (DDP's no_sync): the ceiling of N ranks")
    ap.add_argument("--autocast", action="store_true",
                    help="the forward and the loss under torch.autocast('cpu', bfloat16): "
                         "mixed precision as PyTorch users write it")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    distributed, rank, world, local = torch_common.start(a.threads, a.batch)

    images = torch.from_numpy(load_images(os.path.join(a.data, "train-images-idx3-ubyte.gz"))
                              .astype(np.float32) / 255.0)
    labels = torch.from_numpy(load_labels(os.path.join(a.data, "train-labels-idx1-ubyte.gz"))
                              .astype(np.int64))
    torch.manual_seed(a.seed)
    model = make_cnn([int(c) for c in a.channels.split(",") if c not in ("", "none")],
                     [int(h) for h in a.hidden.split(",") if h], a.kernel, images.shape[2])
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum,
                          weight_decay=a.weight_decay)
    net = DistributedDataParallel(model, bucket_cap_mb=a.bucket_mb) if distributed else model
    gen = np.random.default_rng([a.seed, rank])

    def step(i):
        t0 = time.perf_counter()
        idx = torch.from_numpy(gen.integers(0, images.shape[0], size=local))
        x = images[idx].contiguous(memory_format=fmt)
        y = labels[idx]
        opt.zero_grad(set_to_none=True)
        sync = net.no_sync() if distributed and a.no_allreduce else contextlib.nullcontext()
        cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast)
        with sync:
            with cast:
                loss = nn.functional.cross_entropy(net(x), y)
            t1 = time.perf_counter()
            loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return np.array([t1 - t0, t2 - t1, t3 - t2, t3 - t0])

    w, phases = torch_common.timed_steps(step, a.warmup_steps, a.bench_steps, distributed, world)

    if rank == 0:
        out = {
            "bench": "torch_ddp_cnn",
            "framework": "pytorch " + torch.__version__,
            "autocast": "bf16" if a.autocast else "none",
            "params": nparams,
            "ranks": world,
            "threads": torch.get_num_threads(),
            "memory_format": "channels_last" if a.channels_last else "nchw",
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "backend": "gloo" if distributed else "none",
            "allreduce": distributed and not a.no_allreduce,
            "global_batch": a.batch,
            "bench_steps": a.bench_steps,
            "samples_per_s": a.bench_steps * a.batch / w,
            "t_forward": phases[0].item(),
            "t_backward": phases[1].item(),
            "t_optim": phases[2].item(),
            "t_step": phases[3].item(),
        }
        torch_common.report(out, a.json)
    torch_common.finish(distributed)


if __name__ == "__main__":
    main()
