# What bench/ops/run.sh and bench/conv/run.sh share, sourced by both: a ddp timing program
# and its PyTorch counterpart run in turn, ROUNDS times (default 3), so that both see the
# same machine state, one thread each. Sets ROOT, BUILD (BUILD_DIR, default build/), PYTHON
# (an interpreter with torch, default python3) and OUT, a temporary folder removed on exit;
#   alternate PROGRAM SCRIPT [ARGS...]
# prints the CPU, then runs $BUILD/PROGRAM ARGS and $PYTHON $ROOT/SCRIPT ARGS in turn,
# their output also collected in $OUT/ddp.txt and $OUT/torch.txt.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

alternate() {
    local program=$1 script=$2
    shift 2
    echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
    for _ in $(seq "$ROUNDS"); do
        "$BUILD/$program" "$@" | tee -a "$OUT/ddp.txt"
        "$PYTHON" "$ROOT/$script" "$@" | tee -a "$OUT/torch.txt"
    done
}
