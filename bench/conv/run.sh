#!/usr/bin/env bash
# Times the CPU backend's convolutions (bench_conv: ddp's ops on oneDNN, and im2col +
# OpenBLAS, the alternative not taken) against PyTorch's (torch_conv.py) on the layers of
# the Fashion-MNIST CNN, one thread each, the two programs alternating
# ROUNDS times (default 3) so that both see the same machine state; batch norms and max
# poolings are timed too. Prints a markdown table of the median over the rounds of each
# op's median time, then per batch the two convolutions together (forward + backward),
# and all the layers timed together.
#
#   OPENBLAS_CORETYPE=SkylakeX PYTHON=/usr/bin/python3 bash bench/conv/run.sh [reps [batch ...]]
#
# Where OpenBLAS does not recognise the CPU it falls back to its slowest kernels, for ddp's
# im2col and PyTorch alike: set OPENBLAS_CORETYPE to the CPU's family then. PYTHON names
# an interpreter with torch (default python3); BUILD_DIR the build (default build/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../alternate.sh"
alternate bench_conv bench/conv/torch_conv.py "$@"

"$PYTHON" - "$OUT" <<'PY'
import os, statistics, sys
out = sys.argv[1]
times = {}
for name in ("ddp.txt", "torch.txt"):
    for line in open(os.path.join(out, name)):
        f = line.split()
        if len(f) == 10 and f[4] == "median":
            times.setdefault((f[0], f[1], f[2], int(f[3][2:])), []).append(float(f[5]))
med = {k: statistics.median(v) for k, v in times.items()}
impls = ["ddp", "im2col", "torch", "torch-cl"]
rows = sorted({k[1:] for k in med}, key=lambda k: (k[2], k[1], k[0] != "forward"))
print()
print("| layer | N | op | ddp ms | im2col ms | PyTorch ms | PyTorch cl ms | im2col / ddp | PyTorch best / ddp |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
for op, layer, n in rows:
    t = [med.get((i, op, layer, n), float("nan")) for i in impls]
    cell = lambda v: "%.3f" % v if v == v else "-"
    ratio = lambda v: "%.2fx" % v if v == v else "-"
    print("| %s | %d | %s | %s | %s | %s | %s | %s | %s |"
          % (layer, n, op, cell(t[0]), cell(t[1]), cell(t[2]), cell(t[3]), ratio(t[1] / t[0]),
             ratio(min(t[2], t[3]) / t[0])))
print()
print("Both convolutions, forward + backward:")
print()
print("| N | ddp ms | im2col ms | PyTorch ms | PyTorch cl ms | im2col / ddp | PyTorch best / ddp |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for n in sorted({k[3] for k in med}):
    t = [sum(v for k, v in med.items() if k[0] == i and k[3] == n and k[2].startswith("conv"))
         for i in impls]
    print("| %d | %.3f | %.3f | %.3f | %.3f | %.2fx | %.2fx |"
          % (n, t[0], t[1], t[2], t[3], t[1] / t[0], min(t[2], t[3]) / t[0]))
print()
print("All the layers timed (convolutions, batch norms, poolings), forward + backward:")
print()
print("| N | ddp ms | PyTorch ms | PyTorch cl ms | PyTorch best / ddp |")
print("|---:|---:|---:|---:|---:|")
for n in sorted({k[3] for k in med}):
    t = [sum(v for k, v in med.items() if k[0] == i and k[3] == n) for i in impls]
    print("| %d | %.3f | %.3f | %.3f | %.2fx |" % (n, t[0], t[2], t[3], min(t[2], t[3]) / t[0]))
PY
