#!/usr/bin/env bash
# Memory per rank of each --zero stage at 1, 2 and 4 ranks: the bytes the trainer reports
# (rank 0's "memory per rank" line) beside the peak resident memory of every rank, measured
# by GNU time (apt-get install time) around each process.
#
#   bench/zero/memory.sh [-n "1 2 4"] [-- TRAIN OPTIONS]
#
# Default model: a GPT whose optimizer state outweighs its activations (4 blocks, width 768,
# context 64, 4 windows per rank, AdamW), 3 steps, gradient buckets of 4 MB so that stage 2
# has buckets to give back, on the first 200 kB of the default text (so that the final
# evaluation of the validation split is short). Prints a Markdown table.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRAIN=${DDP_TRAIN:-$ROOT/build/ddp-train}
ranks="1 2 4"
while getopts "n:" o; do
    case $o in
    n) ranks=$OPTARG ;;
    *) sed -n 2,10p "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
opts=(--model gpt --layers 4 --dim 768 --heads 12 --ctx 64 --steps 3 --bucket-mb 4
      --first-bucket-mb 1 --threads 1 "$@")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
corpus=${XDG_CACHE_HOME:-$HOME/.cache}/ddp/kjv.txt
[ -s "$corpus" ] || "$TRAIN" --model gpt --steps 1 --layers 1 --dim 16 --heads 1 --ctx 8 \
    --batch 1 --quiet >/dev/null 2>&1 || true
head -c 200000 "$corpus" >"$tmp/text.txt"
echo "| ranks | --zero | optimizer state per rank (reported) | gradients (reported) | peak RSS per rank, MB (measured) |"
echo "|---:|---:|---|---|---|"
for n in $ranks; do
    for zero in 0 1 2; do
        log="$tmp/run.log"
        mpirun --oversubscribe -np "$n" /usr/bin/time -f "peak-rss-kb %M" "$TRAIN" "${opts[@]}" \
            --text "$tmp/text.txt" \
            --batch $((4 * n)) --zero "$zero" >"$log" 2>&1 || { cat "$log"; exit 1; }
        line=$(grep "memory per rank" "$log" | head -1)
        optim=$(sed -E 's/.*optimizer state ([^,]*), activations.*/\1/' <<<"$line")
        grads=$(sed -E 's/.*gradients (.*), optimizer state.*/\1/' <<<"$line")
        rss=$(grep -o "peak-rss-kb [0-9]*" "$log" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $2 / 1024}')
        echo "| $n | $zero | $optim | $grads | $rss |"
    done
done
