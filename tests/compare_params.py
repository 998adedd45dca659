#!/usr/bin/env python3
"""compare_params.py A B: the float32 parameters in file A (ddp-train --dump-params) against
the reference B. Prints "bitwise identical", or the relative L2 error of A from B; exits 0
when they are bitwise equal or the error is under 1e-5 (--tol), else 1. Shared by the
script tests that compare a run with its reference run."""
import argparse
import array
import math
import sys


def load(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        sys.exit(f"cannot read {path}: {e.strerror}")
    if not raw or len(raw) % 4:
        sys.exit(f"{path}: {len(raw)} bytes is not a whole number of float32")
    x = array.array("f")
    x.frombytes(raw)
    if sys.byteorder != "little":
        x.byteswap()
    return raw, x


p = argparse.ArgumentParser(description=__doc__)
p.add_argument("a")
p.add_argument("b")
p.add_argument("--tol", type=float, default=1e-5)
args = p.parse_args()
raw_a, a = load(args.a)
raw_b, b = load(args.b)
if raw_a == raw_b:
    print("bitwise identical")
    sys.exit(0)
if len(a) != len(b):
    sys.exit(f"{len(a)} parameters, the reference has {len(b)}")
if not all(math.isfinite(v) for v in a):
    sys.exit("non-finite parameters")
num = sum((x - y) * (x - y) for x, y in zip(a, b))
den = sum(y * y for y in b)
err = math.sqrt(num / den) if den > 0 else math.inf
print(f"relative error {err:.3g} over {len(a)} parameters")
sys.exit(0 if err < args.tol else 1)
