#!/usr/bin/env bash
# --compress auto's verdict on an emulated cluster of 2 nodes x RPN ranks at each link of
# BWS: ddp-bench train on the MLP 1024x1024, batch 512, one BLAS thread per rank, with
# --compress auto --compress-rank R and enough steps for its measurements (1 + 4
# uncompressed, 1 + 4 compressed) and 10 timed steps after them. Prints its log lines (the
# prediction with its inputs, the measured steps, the verdict) and the JSON's compressing
# and samples/s. Needs root.
#
#   bench/powersgd/auto.sh    BWS (default "1gbit 10gbit"), RPN (default 1), R (default 4),
#                             BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
BWS=${BWS:-1gbit 10gbit}
RPN=${RPN:-1}
R=${R:-4}
DIR=$(mktemp -d /tmp/ddp-psgd-auto.XXXXXX)
PREFIX=ddppa$$
trap '"$ROOT/cluster/emu" down --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 emulated nodes x $RPN ranks"
for bw in $BWS; do
    "$ROOT/cluster/emu" up 2 --bw "$bw" --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null
    "$ROOT/cluster/emu" run --dir "$DIR/emu" -- mpirun -np $((2 * RPN)) --oversubscribe \
        --map-by slot -H "10.77.0.1:$RPN,10.77.0.2:$RPN" -x OPENBLAS_NUM_THREADS=1 \
        "$BUILD/ddp-bench" train --hidden 1024,1024 --batch 512 --threads 1 --compress auto \
        --compress-rank "$R" --warmup-steps 12 --bench-steps 10 --json "$DIR/$bw.json" \
        >"$DIR/$bw.log" 2>&1 || { tail -5 "$DIR/$bw.log" >&2; exit 1; }
    echo "== $bw"
    grep -- "--compress auto" "$DIR/$bw.log" | sed 's/^\[rank 0\] //'
    python3 -c "import json; d=json.load(open('$DIR/$bw.json')); print(f\"compressing {d['compressing']}, {d['samples_per_s']:.0f} samples/s\")"
    "$ROOT/cluster/emu" down --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null
done
