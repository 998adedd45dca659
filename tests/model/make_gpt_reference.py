#!/usr/bin/python3
"""Writes tests/model/gpt_reference.safetensors: what PyTorch computes for ddp's GPT.

  /usr/bin/python3 tests/model/make_gpt_reference.py [--init-export build/tests/model/gpt_init_export]

Runs gpt_init_export (built with the tests) for ddp's initial weights of a small GPT,
loads them into the PyTorch twin (torch_gpt.py), and trains 10 steps of AdamW on fixed
batches: B windows of T + 1 bytes (inputs, and targets one byte later) at offsets drawn
from numpy with a fixed seed from the text below. The loss is the mean cross-entropy over
all B*T positions; AdamW at a constant learning rate with ddp's decay groups (matrices
and the token embedding decay; biases, LayerNorm parameters and the position embedding
do not); no gradient clipping. The file holds:

  batch.tokens, batch.targets  (steps, B, T) F32 (bytes, exact in F32)
  loss                         (steps) F32: each step's loss, before its update
  loss_bf16                    (steps) F32: the same run under torch.autocast("cpu",
                               dtype=torch.bfloat16) around the forward (mixed precision:
                               fp32 weights and AdamW, the products in bf16)
  grad.<tensor name>           the gradient of step 1 of every tensor
  __metadata__                 model, seed, optimizer settings, and the CRC-32 of the
                               initial weights (ddp's flat buffer, as in the export)

tests/model/test_gpt_reference.c replays the same steps with ddp and compares. Needs
Debian's PyTorch (/usr/bin/python3 with python3-torch). Also prints how far the same run
in float64 lands from the float32 one: the size of float32 rounding alone, which the C
test's tolerance must clear.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_gpt  # noqa: E402

MODEL = "gpt L2 C32 H4 T16 V256"
SEED = 1234  # ddp_model_init_params
DATA_SEED = 7  # the window offsets
B, STEPS = 4, 10
LR, BETAS, EPS, WD = 2e-3, (0.9, 0.99), 1e-8, 0.1  # ddp-train's GPT defaults, constant lr

TEXT = (
    b"In the beginning God created the heaven and the earth. And the earth was without "
    b"form, and void; and darkness was upon the face of the deep. And the Spirit of God "
    b"moved upon the face of the waters. And God said, Let there be light: and there was "
    b"light. And God saw the light, that it was good: and God divided the light from the "
    b"darkness. And God called the light Day, and the darkness he called Night. And the "
    b"evening and the morning were the first day. 0123456789 {}[]<>|~^`@#$%&*_+=\\/\"'\n"
)


def batches(T):
    rng = np.random.RandomState(DATA_SEED)
    starts = rng.randint(0, len(TEXT) - T, size=(STEPS, B))
    text = np.frombuffer(TEXT, dtype=np.uint8)
    tok = np.stack([[text[s : s + T] for s in row] for row in starts]).astype(np.int64)
    tgt = np.stack([[text[s + 1 : s + T + 1] for s in row] for row in starts]).astype(np.int64)
    return tok, tgt


def train(model, tok, tgt, autocast=False):
    """STEPS steps of AdamW; the losses and step 1's gradients. With autocast, the forward
    runs under CPU autocast to bf16, as a user of mixed precision in PyTorch writes it."""
    opt = torch.optim.AdamW(model.param_groups(WD), lr=LR, betas=BETAS, eps=EPS, foreach=False)
    losses, grads = [], None
    for s in range(STEPS):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(torch.from_numpy(tok[s]), torch.from_numpy(tgt[s]))
        loss.backward()
        losses.append(loss.item())
        if s == 0:
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
    return np.array(losses), grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(HERE))
    ap.add_argument("--init-export", default=os.path.join(root, "build/tests/model/gpt_init_export"))
    ap.add_argument("--out", default=os.path.join(HERE, "gpt_reference.safetensors"))
    a = ap.parse_args()

    spec = torch_gpt.parse_spec(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init.safetensors")
        subprocess.run([a.init_export, MODEL, str(SEED), init], check=True)
        weights, meta = torch_gpt.read_safetensors(init)
        if meta.get("model") != MODEL:
            sys.exit("gpt_init_export wrote model %r, asked for %r" % (meta.get("model"), MODEL))
        models = {}
        for dtype in (torch.float32, torch.float64, "bf16"):
            m = torch_gpt.GPT(**spec)
            torch_gpt.load_ddp_export(m, init)
            models[dtype] = m.to(torch.float32 if dtype == "bf16" else dtype)
    # The export's data are ddp's flat buffer in order: its CRC is the one the C test
    # computes over ddp_model_params after ddp_model_init_params.
    order = [n for n, _ in models[torch.float32].named_parameters()]
    crc = zlib.crc32(b"".join(weights[n].astype("<f4").tobytes() for n in order))

    torch.set_num_threads(1)
    tok, tgt = batches(spec["ctx"])
    losses, grads = train(models[torch.float32], tok, tgt)
    losses64, grads64 = train(models[torch.float64], tok, tgt)
    losses_bf16, _ = train(models["bf16"], tok, tgt, autocast=True)
    bf16_rel = np.max(np.abs(losses_bf16 - losses) / losses)
    loss_rel = np.max(np.abs(losses - losses64) / losses64)
    grad_rel = max(
        (torch.linalg.norm(grads[n].double() - grads64[n]) / torch.linalg.norm(grads64[n])).item()
        for n in grads
    )
    print("losses (float32):", " ".join("%.6f" % x for x in losses))
    print("float32 vs float64: largest loss error %.2e, largest step-1 gradient error %.2e" % (loss_rel, grad_rel))
    print("losses (autocast bf16):", " ".join("%.6f" % x for x in losses_bf16))
    print("autocast bf16 vs float32: largest loss difference %.2e" % bf16_rel)

    tensors = {
        "batch.tokens": tok.astype(np.float32),
        "batch.targets": tgt.astype(np.float32),
        "loss": losses.astype(np.float32),
        "loss_bf16": losses_bf16.astype(np.float32),
    }
    for n in order:
        tensors["grad." + n] = grads[n].numpy()
    meta = {
        "model": MODEL,
        "seed": SEED,
        "init_crc32": "%08x" % crc,
        "steps": STEPS,
        "batch": B,
        "optimizer": "adamw",
        "lr": repr(LR),
        "beta1": repr(BETAS[0]),
        "beta2": repr(BETAS[1]),
        "eps": repr(EPS),
        "weight_decay": repr(WD),
        "decay": "2-D matrices and transformer.wte.weight; not biases, LayerNorm, transformer.wpe.weight",
        "clip": "none",
        "loss": "mean cross-entropy over all batch*ctx positions",
        "lr_schedule": "constant",
        "data": "make_gpt_reference.py TEXT, numpy RandomState(%d) window offsets" % DATA_SEED,
        "torch": torch.__version__,
        "f32_vs_f64_loss_rel": "%.3e" % loss_rel,
        "f32_vs_f64_grad_rel": "%.3e" % grad_rel,
        "bf16_vs_f32_loss_rel": "%.3e" % bf16_rel,
    }
    torch_gpt.write_safetensors(a.out, tensors, meta)
    print("wrote %s (%d bytes), initial weights CRC-32 %08x" % (a.out, os.path.getsize(a.out), crc))


if __name__ == "__main__":
    main()
