"""What the PyTorch side of ddp's benchmarks shares (bench/gpt/*.py, bench/cnn/*.py): the
process set-up, under torch.distributed.run or alone, the JSON result, and the exit."""
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def start(threads, batch):
    """Sets the intra-op threads and joins the gloo group when launched by
    torch.distributed.run. Returns (distributed, rank, world, this rank's share of the
    global batch)."""
    torch.set_num_threads(threads)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if batch % world:
        sys.exit("--batch %d does not split over %d ranks" % (batch, world))
    return distributed, rank, world, batch // world


def timed_steps(step, warmup, n, distributed, world):
    """Runs step(i) for i < warmup untimed, then n timed steps between barriers; step returns
    its phases in seconds (a numpy array). Returns the slowest rank's wall time and the
    phases per step averaged over the steps and the ranks (a float64 tensor)."""
    for i in range(warmup):
        step(i)
    if distributed:
        dist.barrier()
    t0 = time.perf_counter()
    phases = step(warmup)
    for i in range(warmup + 1, warmup + n):
        phases = phases + step(i)
    if distributed:
        dist.barrier()
    wall = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    phases = torch.from_numpy(phases / n)
    if distributed:
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        dist.all_reduce(phases)
        phases /= world
    return wall.item(), phases


def report(out, path):
    """Prints the result (rank 0 calls it) and writes it to path when given."""
    print(json.dumps(out, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2)


def finish(distributed):
    """Every rank is done with collectives here. Then exit without destroy_process_group:
    in Debian's torch 1.13 it sometimes never returns on a rank whose peer has already
    exited (the gloo group's destructor joins a thread that waits forever, while the store
    client's thread spins on the closed socket at 100% of a core)."""
    if distributed:
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
