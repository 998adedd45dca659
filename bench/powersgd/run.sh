#!/usr/bin/env bash
# PowerSGD against the uncompressed all-reduce on an emulated cluster of 2 nodes x 2 ranks
# (cluster/emu up 2 --bw BW): ddp-bench train on the MLP 1024x1024, batch 512, one BLAS
# thread per rank, --compress none and powersgd (rank R) in turn, the order alternating,
# for ROUNDS rounds; both with the default --hierarchical auto (on here: 2 ranks per node).
# Then once each: the same without communication (--no-allreduce: the ceiling) and with
# --hierarchical off (the flat all-reduce). Prints samples/s per run and the median of the
# per-round ratios. Needs root.
#
#   bench/powersgd/run.sh [ROUNDS (default 3)]      BW (default 1gbit), R (default 4), BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
ROUNDS=${1:-3}
BW=${BW:-1gbit}
R=${R:-4}
DIR=$(mktemp -d /tmp/ddp-psgd-bench.XXXXXX)
PREFIX=ddppb$$
trap '"$ROOT/cluster/emu" down --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 emulated nodes x 2 ranks at $BW"
"$ROOT/cluster/emu" up 2 --bw "$BW" --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null
place=(-np 4 --oversubscribe --map-by slot -H 10.77.0.1:2,10.77.0.2:2 -x OPENBLAS_NUM_THREADS=1)
emu() { "$ROOT/cluster/emu" run --dir "$DIR/emu" -- mpirun "${place[@]}" "$@"; }
run() { # name, extra options...
    local name=$1
    shift
    emu "$BUILD/ddp-bench" train --hidden 1024,1024 --batch 512 --threads 1 \
        --warmup-steps 3 --bench-steps 20 "$@" --json "$DIR/$name.json" >/dev/null 2>"$DIR/$name.err" ||
        { cat "$DIR/$name.err" >&2; exit 1; }
    python3 -c "import json; d=json.load(open('$DIR/$name.json')); print(f\"$name: {d['samples_per_s']:.0f} samples/s (hierarchical {d['hierarchical']}, compress {d['compress']})\")"
}
for r in $(seq "$ROUNDS"); do
    order=(powersgd none)
    ((r % 2 == 0)) && order=(none powersgd)
    for mode in "${order[@]}"; do
        run "$mode-$r" --compress "$mode" --compress-rank "$R"
    done
done
run ceiling --no-allreduce
run flat --hierarchical off
python3 - "$DIR" "$ROUNDS" <<'PY'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
ps = [json.load(open(f"{d}/powersgd-{r}.json"))["samples_per_s"] for r in range(1, n + 1)]
no = [json.load(open(f"{d}/none-{r}.json"))["samples_per_s"] for r in range(1, n + 1)]
ratios = [a / b for a, b in zip(ps, no)]
flat = json.load(open(f"{d}/flat.json"))["samples_per_s"]
ceil = json.load(open(f"{d}/ceiling.json"))["samples_per_s"]
print(f"median samples/s: powersgd {statistics.median(ps):.0f}, uncompressed {statistics.median(no):.0f}; "
      f"median ratio {statistics.median(ratios):.3f} (rounds: {' '.join(f'{x:.3f}' for x in ratios)}); "
      f"powersgd / flat all-reduce {statistics.median(ps) / flat:.3f}; powersgd / no communication "
      f"{statistics.median(ps) / ceil:.3f}")
PY
