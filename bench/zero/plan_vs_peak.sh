#!/usr/bin/env bash
# The memory plan against the memory a run takes: for each rank count, the per-rank peak
# that `ddp-train --memory-plan N` predicts (one process, before anything runs) beside the
# peak resident memory (peak_rss_mb of the metrics) of every rank of a real run of a few
# steps, and their ratio.
#
#   bench/zero/plan_vs_peak.sh [-n "2 4 8"] [-z ZERO] [-- TRAIN OPTIONS]
#
# Default model: the GPT of memory.sh (4 blocks, width 768, context 64, 4 windows per rank,
# AdamW, 28.6 M parameters) on the first 200 kB of the default text, 3 steps and the
# final evaluation, one BLAS thread per rank, --zero 3. Prints a Markdown table (MiB).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRAIN=${DDP_TRAIN:-$ROOT/build/ddp-train}
ranks="2 4 8" zero=3
while getopts "n:z:" o; do
    case $o in
    n) ranks=$OPTARG ;;
    z) zero=$OPTARG ;;
    *) sed -n 2,11p "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
opts=(--model gpt --layers 4 --dim 768 --heads 12 --ctx 64 --optim adamw --threads 1
      --zero "$zero" "$@")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
corpus=${XDG_CACHE_HOME:-$HOME/.cache}/ddp/kjv.txt
[ -s "$corpus" ] || "$TRAIN" --model gpt --steps 1 --layers 1 --dim 16 --heads 1 --ctx 8 \
    --batch 1 --quiet >/dev/null 2>&1 || true
head -c 200000 "$corpus" >"$tmp/text.txt"
mib() { python3 -c "import json,sys; print('%.1f' % (json.loads(sys.stdin.read())['$1'] / 2**20))"; }
echo "| ranks | planned peak | of which: training state, comm buffers, runtime | measured peak_rss_mb per rank | measured / planned (max) |"
echo "|---:|---:|---|---|---:|"
for n in $ranks; do
    plan=$("$TRAIN" "${opts[@]}" --text "$tmp/text.txt" --batch 4 --memory-plan "$n" --quiet \
        2>/dev/null | tail -1)
    peak=$(mib peak <<<"$plan")
    parts="$(mib total <<<"$plan"), $(mib comm <<<"$plan"), $(mib runtime <<<"$plan")"
    mpirun --oversubscribe -np "$n" "$TRAIN" "${opts[@]}" --text "$tmp/text.txt" \
        --batch $((4 * n)) --steps 3 --log-every 1 --metrics "$tmp/m.jsonl" --quiet \
        >"$tmp/run.log" 2>&1 || { cat "$tmp/run.log"; exit 1; }
    measured=$(tail -1 "$tmp/m.jsonl" | python3 -c \
        "import json,sys; print(', '.join('%.0f' % x for x in json.loads(sys.stdin.read())['peak_rss_mb']))")
    ratio=$(tail -1 "$tmp/m.jsonl" | python3 -c \
        "import json,sys; print('%.3f' % (max(json.loads(sys.stdin.read())['peak_rss_mb']) / $peak))")
    echo "| $n | $peak | $parts | $measured | $ratio |"
done
