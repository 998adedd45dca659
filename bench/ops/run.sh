#!/usr/bin/env bash
# Times the CPU backend's transformer ops (bench_cpu_ops, built with the project) against
# PyTorch's (torch_ops.py) at the same shape on one thread, the two alternating ROUNDS
# times (default 3) so that both see the same machine state, and prints a markdown table
# of the median over the rounds of each op's median time.
#
#   OPENBLAS_CORETYPE=SkylakeX bash bench/ops/run.sh [B T C NH [reps]]
#
# Both link the same libopenblas. Where OpenBLAS does not recognise the CPU it falls back
# to its slowest kernels, for ddp and PyTorch alike: set OPENBLAS_CORETYPE to the CPU's
# family then. PYTHON names an interpreter with torch (default python3); BUILD_DIR the
# build (default build/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
for r in $(seq "$ROUNDS"); do
    "$BUILD/bench_cpu_ops" "$@" | tee -a "$OUT/ddp.txt"
    "$PYTHON" "$ROOT/bench/ops/torch_ops.py" "$@" | tee -a "$OUT/torch.txt"
done

"$PYTHON" - "$OUT" <<'PY'
import os, statistics, sys
out = sys.argv[1]
def medians(name):
    times = {}
    for line in open(os.path.join(out, name)):
        f = line.split()
        if len(f) == 7 and f[1] == "median":
            times.setdefault(f[0], []).append(float(f[2]))
    return {op: statistics.median(t) for op, t in times.items()}
d, t = medians("ddp.txt"), medians("torch.txt")
print("| op | ddp ms | PyTorch ms | PyTorch / ddp |")
print("|---|---:|---:|---:|")
for op in d:
    print("| %s | %.3f | %.3f | %.2fx |" % (op, d[op], t[op], t[op] / d[op]))
PY
