#!/usr/bin/env python3
"""PyTorch reference for bench_cpu_ops: the same transformer ops at the same shape on one
CPU thread, timed the way bench_cpu_ops times ddp's (3 untimed runs, then the median and
the best of the repetitions, in milliseconds).

  python3 bench/ops/torch_ops.py [B T C NH [reps]]

Forwards run with autograd recording, as in training; each backward is the autograd
backward of its forward's output given a fixed random gradient, with the inputs' .grad
cleared first so that it is written, not accumulated. Attention is GPT-2's explicit form:
q k^T / sqrt(hs), causal mask, softmax, times v.
"""
import math
import sys
import time

import torch
import torch.nn.functional as F


def time_op(name, fn, reps):
    times = []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        if i >= 3:
            times.append((t1 - t0) * 1e3)
    times.sort()
    print("%-20s median %8.3f ms   best %8.3f ms" % (name, times[len(times) // 2], times[0]))


def main():
    args = [int(a) for a in sys.argv[1:]]
    B, T, C, NH = args[:4] if len(args) >= 4 else (32, 128, 256, 4)
    reps = args[4] if len(args) >= 5 else 50
    V, hs = 256, C // NH
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    print("torch %s cpu ops, B=%d T=%d C=%d NH=%d V=%d, %d thread, %d repetitions"
          % (torch.__version__, B, T, C, NH, V, torch.get_num_threads(), reps))

    # Token and position embedding.
    tokens = torch.randint(0, V, (B, T))
    wte = (0.02 * torch.randn(V, C)).requires_grad_()
    wpe = (0.01 * torch.randn(T, C)).requires_grad_()
    dy = torch.randn(B, T, C)
    enc = {}

    def encoder_forward():
        enc["y"] = F.embedding(tokens, wte) + wpe[:T]

    def encoder_backward():
        wte.grad = wpe.grad = None
        enc["y"].backward(dy, retain_graph=True)

    time_op("encoder_forward", encoder_forward, reps)
    time_op("encoder_backward", encoder_backward, reps)

    # Layer normalization over C of (B, T, C).
    x = torch.randn(B, T, C).requires_grad_()
    w = torch.randn(C).requires_grad_()
    b = torch.randn(C).requires_grad_()
    ln = {}

    def layernorm_forward():
        ln["y"] = F.layer_norm(x, (C,), w, b, eps=1e-5)

    def layernorm_backward():
        x.grad = w.grad = b.grad = None
        ln["y"].backward(dy, retain_graph=True)

    time_op("layernorm_forward", layernorm_forward, reps)
    time_op("layernorm_backward", layernorm_backward, reps)

    # Causal self-attention on qkv (B, T, 3C).
    qkv = torch.randn(B, T, 3 * C).requires_grad_()
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    att = {}

    def attention_forward():
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, NH, hs).transpose(1, 2)  # (B, NH, T, hs)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, NH, T, T)
        p = F.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        att["y"] = (p @ v).transpose(1, 2).contiguous().view(B, T, C)

    def attention_backward():
        qkv.grad = None
        att["y"].backward(dy, retain_graph=True)

    time_op("attention_forward", attention_forward, reps)
    time_op("attention_backward", attention_backward, reps)


if __name__ == "__main__":
    main()
