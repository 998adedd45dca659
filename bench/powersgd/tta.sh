#!/usr/bin/env bash
# Time to accuracy of the ways to cross nodes on 2 emulated nodes x RPN ranks at BW
# (cluster/emu up 2 --bw BW), ranks placed by MAP (mpirun --map-by: slot puts a node's
# ranks together, node deals them round-robin): cluster/tta trains the MLP 1024x1024 on
# Fashion-MNIST at global batch 512 to test accuracy TARGET for each seed, once per mode of
# MODES: none (the uncompressed all-reduce, --hierarchical auto), flat (--hierarchical
# off), hier (--hierarchical on), powersgd (--compress powersgd --compress-rank R); prints
# each run's row (steps, samples and training seconds to the target) and keeps the CSVs in
# OUT. Needs root.
#
#   bench/powersgd/tta.sh   BW (default 1gbit), RPN (default 1), MAP (default slot),
#                           MODES (default "none powersgd"), R (default 4),
#                           TARGET (default 0.88), SEEDS (default 1,2), OUT, BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BW=${BW:-1gbit}
R=${R:-4}
RPN=${RPN:-1}
MAP=${MAP:-slot}
MODES=${MODES:-none powersgd}
TARGET=${TARGET:-0.88}
SEEDS=${SEEDS:-1,2}
OUT=${OUT:-$(mktemp -d /tmp/ddp-psgd-tta.XXXXXX)}
PREFIX=ddptt$$
EMU_DIR=$OUT/emu
trap '"$ROOT/cluster/emu" down --dir "$EMU_DIR" --prefix "$PREFIX" >/dev/null 2>&1 || true' EXIT
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 emulated nodes x $RPN rank(s) at $BW, --map-by $MAP; out $OUT"
"$ROOT/cluster/emu" up 2 --bw "$BW" --dir "$EMU_DIR" --prefix "$PREFIX" >/dev/null
launcher="$ROOT/cluster/emu run --dir $EMU_DIR -- mpirun --oversubscribe --map-by $MAP -np {n} -H 10.77.0.1:$RPN,10.77.0.2:$RPN"
declare -A OPTS=([none]="--compress none" [flat]="--compress none --hierarchical off"
    [hier]="--compress none --hierarchical on" [powersgd]="--compress powersgd --compress-rank $R")
for mode in $MODES; do
    [[ -n ${OPTS[$mode]:-} ]] || { echo "unknown mode $mode (none, flat, hier, powersgd)" >&2; exit 2; }
    # shellcheck disable=SC2086 # OPTS holds a list of options
    TRAIN=${BUILD_DIR:-$ROOT/build}/ddp-train "$ROOT/cluster/tta" --batches 512 --seeds "$SEEDS" \
        --ranks $((2 * RPN)) --target "$TARGET" --out "$OUT/$mode" --launcher "$launcher" \
        --train "${BUILD_DIR:-$ROOT/build}/ddp-train" -- --hidden 1024,1024 \
        ${OPTS[$mode]} >"$OUT/$mode.log" 2>&1 ||
        { tail -20 "$OUT/$mode.log" >&2; exit 1; }
    echo "== $mode"
    cat "$OUT/$mode/tta.csv"
done
