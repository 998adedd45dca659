#!/usr/bin/env bash
# What PowerSGD costs in accuracy: the README's default runs of the MLP, the CNN and the
# GPT on 2 ranks of this machine, without compression and with --compress powersgd
# --compress-rank R (the same steps, seed and data; compression changes the arithmetic,
# not the schedule, so one machine answers it for any network). Prints each run's final
# test accuracy (MLP, CNN) or validation loss (GPT) and the differences. Logs in OUT.
#
#   bench/powersgd/accuracy.sh [MODELS (default "mlp cnn gpt")]   R (default 4), OUT, BUILD_DIR
#
# ARGS is added to every run (e.g. ARGS="--steps 3900 --compress-start 1000": a longer run,
# with --compress-start taking effect in the compressed one only); MODES (default
# "none powersgd") picks the runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
R=${R:-4}
OUT=${OUT:-$(mktemp -d /tmp/ddp-psgd-acc.XXXXXX)}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; logs in $OUT"
for model in ${1:-mlp cnn gpt}; do
    for mode in ${MODES:-none powersgd}; do
        start=$(date +%s)
        mpirun -np 2 --oversubscribe "$BUILD/ddp-train" --model "$model" --compress "$mode" \
            --compress-rank "$R" ${ARGS:-} >"$OUT/$model-$mode.log" 2>&1
        final=$(grep -E "\] final " "$OUT/$model-$mode.log" | tail -1 |
            sed 's/^\[rank 0\] //')
        echo "$model $mode: $final ($(($(date +%s) - start)) s)"
    done
done
