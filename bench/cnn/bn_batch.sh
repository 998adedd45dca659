#!/usr/bin/env bash
# Batch normalization on small per-rank batches, measured: the CNN (--model cnn defaults)
# on Fashion-MNIST with 4 ranks, per-rank batches of 2, 4, 8 and 16, each with and without
# --sync-bn, same seed and epochs. The learning rate scales with the global batch from the
# default (0.05 at 128, Goyal et al.'s linear rule), so that runs differ in how batch norm
# sees its batch, not in step size per sample.
#
#   bench/cnn/bn_batch.sh [-e EPOCHS] [-b "2 4 8 16"] [-n RANKS] [-s SEED] [-o DIR]
#
# Prints per run the test accuracy and test loss after each epoch (the loss curve) and the
# wall time; DIR (default: a temporary folder) keeps each run's log and --metrics JSONL.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
epochs=2
batches="2 4 8 16"
ranks=4
out=""
seed=1
while getopts "e:b:n:s:o:" opt; do
    case $opt in
    e) epochs=$OPTARG ;;
    b) batches=$OPTARG ;;
    n) ranks=$OPTARG ;;
    s) seed=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
if [ -z "$out" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
threads=$(($(nproc) / ranks > 0 ? $(nproc) / ranks : 1))
echo "$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; $ranks ranks x $threads thread(s), $epochs epoch(s), seed $seed"
printf "%-9s %-8s %6s %9s  %s\n" "per-rank" "sync-bn" "global" "lr" "test accuracy / test loss after each epoch; wall"
for b in $batches; do
    global=$((b * ranks))
    lr=$(awk -v g="$global" 'BEGIN { printf "%.6g", 0.05 * g / 128 }')
    for sync in off on; do
        name="b$b-sync-$sync"
        flags=()
        [ "$sync" = on ] && flags=(--sync-bn)
        start=$(date +%s.%N)
        mpirun -np "$ranks" --oversubscribe "$BUILD/ddp-train" --model cnn --threads "$threads" \
            --batch "$global" --lr "$lr" --epochs "$epochs" --seed "$seed" --log-every 500 \
            --metrics "$out/$name.jsonl" "${flags[@]}" >"$out/$name.log" 2>&1 ||
            { echo "$0: $name failed:" >&2; tail -20 "$out/$name.log" >&2; exit 1; }
        wall=$(echo "$(date +%s.%N) - $start" | bc)
        curve=$(sed -n 's/.*eval step [0-9]* epoch \([0-9.]*\): test accuracy \([0-9.]*\), test loss \([0-9.]*\).*/\2\/\3/p' \
            "$out/$name.log" | tr '\n' ' ')
        printf "%-9s %-8s %6d %9s  %s; %.0f s\n" "$b" "$sync" "$global" "$lr" "$curve" "$wall"
    done
done
