#!/usr/bin/env python3
"""PyTorch reference for ddp's GPU benchmark: the same MLP, batch, optimizer and precision,
timed with CUDA events after a warm-up. Prints one JSON object.

  python3 bench/gpu/torch_mlp.py --hidden 4096,4096,4096 --batch 4096 --precision bf16

bf16 follows ddp's semantics: fp32 master weights and optimizer state, matrix products in
bf16 (autocast). tf32 enables TF32 tensor-core matrix products on fp32 data. Also measures
the GPU's peak matrix-product rate in that precision (8192^3, the --peak-n size), so model
FLOP utilization can be given against a measured, not a datasheet, peak.
"""
import argparse
import json

import torch


def peak_tflops(precision, n, iters=20):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (start.elapsed_time(end) / 1e3) / 1e12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", default="4096,4096,4096")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="tf32")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--peak-n", type=int, default=8192)
    a = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    dims = [784] + [int(h) for h in a.hidden.split(",")] + [10]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i + 2 < len(dims):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.rand(a.batch, 784, device="cuda")
    y = torch.randint(0, 10, (a.batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(a.steps):
        step()
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / a.steps
    params = sum(p.numel() for p in model.parameters())
    fwd_flops = sum(2 * dims[i] * dims[i + 1] for i in range(len(dims) - 1))
    sps = a.batch / seconds
    peak = peak_tflops(a.precision, a.peak_n)
    achieved = 3 * fwd_flops * sps / 1e12
    print(json.dumps({
        "framework": "pytorch " + torch.__version__, "gpu": torch.cuda.get_device_name(),
        "model": "mlp " + "-".join(map(str, dims)), "params": params, "batch": a.batch,
        "precision": a.precision, "step_ms": seconds * 1e3, "samples_per_s": sps,
        "model_tflops": achieved, "peak_tflops_measured": peak, "mfu": achieved / peak,
    }))


if __name__ == "__main__":
    main()
