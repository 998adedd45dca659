#!/usr/bin/env bash
# Time to accuracy with and without PowerSGD on 2 emulated nodes x 1 rank at BW
# (cluster/emu up 2 --bw BW): cluster/tta trains the MLP 1024x1024 on Fashion-MNIST at
# global batch 512 to test accuracy TARGET for each seed, once as it is and once with
# --compress powersgd --compress-rank R; prints each run's row (steps, samples and
# training seconds to the target) and keeps the CSVs in OUT. Needs root.
#
#   bench/powersgd/tta.sh   BW (default 1gbit), R (default 4), TARGET (default 0.88),
#                           SEEDS (default 1,2), OUT, BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BW=${BW:-1gbit}
R=${R:-4}
TARGET=${TARGET:-0.88}
SEEDS=${SEEDS:-1,2}
OUT=${OUT:-$(mktemp -d /tmp/ddp-psgd-tta.XXXXXX)}
PREFIX=ddptt$$
EMU_DIR=$OUT/emu
trap '"$ROOT/cluster/emu" down --dir "$EMU_DIR" --prefix "$PREFIX" >/dev/null 2>&1 || true' EXIT
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 emulated nodes x 1 rank at $BW; out $OUT"
"$ROOT/cluster/emu" up 2 --bw "$BW" --dir "$EMU_DIR" --prefix "$PREFIX" >/dev/null
launcher="$ROOT/cluster/emu run --dir $EMU_DIR -- mpirun --oversubscribe -np {n} -H 10.77.0.1:1,10.77.0.2:1"
for mode in none powersgd; do
    TRAIN=${BUILD_DIR:-$ROOT/build}/ddp-train "$ROOT/cluster/tta" --batches 512 --seeds "$SEEDS" \
        --ranks 2 --target "$TARGET" --out "$OUT/$mode" --launcher "$launcher" \
        --train "${BUILD_DIR:-$ROOT/build}/ddp-train" -- --hidden 1024,1024 \
        --compress "$mode" --compress-rank "$R" >"$OUT/$mode.log" 2>&1 ||
        { tail -20 "$OUT/$mode.log" >&2; exit 1; }
    echo "== $mode"
    cat "$OUT/$mode/tta.csv"
done
