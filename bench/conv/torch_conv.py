#!/usr/bin/env python3
"""PyTorch reference for bench_conv: the layers of the Fashion-MNIST CNN on one CPU thread,
forward and backward: the two convolutions (3x3, padding 1: 28x28, 1 -> 32 channels, then
14x14, 32 -> 64), the batch norms after them (training mode) and the 2x2 max poolings,
timed the way bench_conv times ddp's (3 untimed runs, then the median and the best of the
repetitions, in milliseconds).

  python3 bench/conv/torch_conv.py [reps [batch ...]]   (default 30, batches 16 64 128)

Each op runs twice: in PyTorch's default layout (NCHW, "torch") and channels-last
("torch-cl", ddp's layout). Forwards record autograd, as in training; a backward is the
autograd backward of its forward's output given a fixed random gradient, with .grad
cleared first (written, not added). The first layer's input needs no gradient, as in the
network, so its backward computes only the weight and bias gradients.
"""
import os
import sys

import torch
import torch.nn.functional as F

# The timing of bench/ops/torch_ops.py, so that both report alike.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ops"))
from torch_ops import time_op as time_named  # noqa: E402


def time_op(impl, op, layer, n, fn, reps):
    time_named("%-8s %-8s %-5s N=%-4d" % (impl, op, layer, n), fn, reps)


def bench_layer(name, n, hw, cin, cout, want_dx, reps):
    for impl, fmt in (("torch", torch.contiguous_format), ("torch-cl", torch.channels_last)):
        x = torch.randn(n, cin, hw, hw).contiguous(memory_format=fmt).requires_grad_(want_dx)
        w = (0.1 * torch.randn(cout, cin, 3, 3)).contiguous(memory_format=fmt).requires_grad_()
        b = (0.1 * torch.randn(cout)).requires_grad_()
        dy = torch.randn(n, cout, hw, hw).contiguous(memory_format=fmt)
        st = {}

        def forward():
            st["y"] = F.conv2d(x, w, b, padding=1)

        def backward():
            x.grad = w.grad = b.grad = None
            st["y"].backward(dy, retain_graph=True)

        time_op(impl, "forward", name, n, forward, reps)
        time_op(impl, "backward", name, n, backward, reps)


def bench_norm_pool(n, hw, c, bn_name, pool_name, reps):
    for impl, fmt in (("torch", torch.contiguous_format), ("torch-cl", torch.channels_last)):
        x = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt).requires_grad_()
        g = torch.randn(c).requires_grad_()
        b = torch.randn(c).requires_grad_()
        rm, rv = torch.zeros(c), torch.ones(c)
        dy = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt)
        xp = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt).requires_grad_()
        dyp = torch.randn(n, c, hw // 2, hw // 2).contiguous(memory_format=fmt)
        st = {}

        def bn_forward():
            st["y"] = F.batch_norm(x, rm, rv, g, b, training=True, momentum=0.1, eps=1e-5)

        def bn_backward():
            x.grad = g.grad = b.grad = None
            st["y"].backward(dy, retain_graph=True)

        def pool_forward():
            st["p"] = F.max_pool2d(xp, 2)

        def pool_backward():
            xp.grad = None
            st["p"].backward(dyp, retain_graph=True)

        time_op(impl, "forward", bn_name, n, bn_forward, reps)
        time_op(impl, "backward", bn_name, n, bn_backward, reps)
        time_op(impl, "forward", pool_name, n, pool_forward, reps)
        time_op(impl, "backward", pool_name, n, pool_backward, reps)


def main():
    args = [int(a) for a in sys.argv[1:]]
    reps = args[0] if args else 30
    batches = args[1:] or [16, 64, 128]
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    print("torch %s conv, %d thread, %d repetitions, mkldnn %s"
          % (torch.__version__, torch.get_num_threads(), reps,
             torch.backends.mkldnn.is_available()))
    for n in batches:
        bench_layer("conv1", n, 28, 1, 32, False, reps)
        bench_layer("conv2", n, 14, 32, 64, True, reps)
        bench_norm_pool(n, 28, 32, "bn1", "pool1", reps)
        bench_norm_pool(n, 14, 64, "bn2", "pool2", reps)


if __name__ == "__main__":
    main()
