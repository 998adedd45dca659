#!/usr/bin/env bash
# The hierarchical collectives against the flat all-reduce on an emulated cluster of 2
# nodes x 2 ranks (cluster/emu up 2 --bw BW), for each placement of the ranks in MAPS:
# `slot` (ranks 0,1 on node 1, ranks 2,3 on node 2, mpirun's default) and `node`
# (round-robin: 0,2 on node 1, 1,3 on node 2, as Slurm's cyclic distribution places
# them). ddp-bench train on the MLP 1024x1024, batch 512, one BLAS thread per rank,
# --hierarchical on and off in turn (the order alternating) for ROUNDS rounds; then
# ddp-bench allreduce of 4-16 MiB both ways. Prints samples/s per run, the median of the
# per-round ratios, and the all-reduce tables. Needs root.
#
#   bench/hierarchical/run.sh [ROUNDS (default 3)]
#       BW (default 1gbit), MAPS (default "slot node"), BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
ROUNDS=${1:-3}
BW=${BW:-1gbit}
MAPS=${MAPS:-slot node}
DIR=$(mktemp -d /tmp/ddp-hier-bench.XXXXXX)
PREFIX=ddphb$$
trap '"$ROOT/cluster/emu" down --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 emulated nodes x 2 ranks at $BW"
"$ROOT/cluster/emu" up 2 --bw "$BW" --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null
for map in $MAPS; do
    echo "== placement --map-by $map"
    place=(-np 4 --oversubscribe --map-by "$map" -H 10.77.0.1:2,10.77.0.2:2 -x OPENBLAS_NUM_THREADS=1)
    emu() { "$ROOT/cluster/emu" run --dir "$DIR/emu" -- mpirun "${place[@]}" "$@"; }
    for r in $(seq "$ROUNDS"); do
        order=(on off)
        ((r % 2 == 0)) && order=(off on)
        for mode in "${order[@]}"; do
            emu "$BUILD/ddp-bench" train --hidden 1024,1024 --batch 512 --threads 1 \
                --warmup-steps 3 --bench-steps 20 --hierarchical "$mode" \
                --json "$DIR/$mode-$r.json" >/dev/null 2>"$DIR/$mode-$r.err"
            python3 -c "import json; d=json.load(open('$DIR/$mode-$r.json')); print(f\"round $r $mode: {d['samples_per_s']:.0f} samples/s (hierarchical {d['hierarchical']}, shared gradients {d['shared_gradients']})\")"
        done
    done
    python3 - "$DIR" "$ROUNDS" <<'PY'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
on = [json.load(open(f"{d}/on-{r}.json"))["samples_per_s"] for r in range(1, n + 1)]
off = [json.load(open(f"{d}/off-{r}.json"))["samples_per_s"] for r in range(1, n + 1)]
ratios = [a / b for a, b in zip(on, off)]
print(f"median samples/s: hierarchical {statistics.median(on):.0f}, flat {statistics.median(off):.0f}; "
      f"median ratio {statistics.median(ratios):.3f} (rounds: {' '.join(f'{x:.3f}' for x in ratios)})")
PY
    for mode in on off; do
        shared=()
        [[ $mode == on ]] && shared=(--shared)
        emu "$BUILD/ddp-bench" allreduce --min-bytes 4M --max-bytes 16M --iters 5 --warmup-iters 2 \
            ${shared[@]+"${shared[@]}"} --hierarchical "$mode" 2>&1 | grep -v '^# time'
    done
done
