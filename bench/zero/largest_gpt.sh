#!/usr/bin/env bash
# The widest GPT of a family that fits a memory budget per rank, for each ZeRO stage, with
# and without --recompute (when this build has it).
#
#   bench/zero/largest_gpt.sh [-b BUDGET_MIB] [-n RANKS] [-l LAYERS] [-t CTX] [-m MICRO] [-r]
#                             [-s "STAGES"] [-p] [-- TRAIN OPTIONS]
#
# (-r: the rows with --recompute only; -s: the stages, default "0 1 2 3"; -p: fit the
# predicted peak instead of the training state; options after -- go to every probe, e.g.
# --gathers 1 or --bucket-mb 8.)
#
# The family: LAYERS blocks, width C a multiple of 64, C/64 heads, context CTX, MICRO
# windows per rank and micro-batch. For each setting the width is found by bisection;
# every probe is `ddp-train --memory-plan RANKS` (one process builds the model and reports
# the bytes per rank that RANKS ranks would hold: parameters, gradients, the gradient
# shard, optimizer state and the activation arena, as the trainer allocates them: the
# "total" that must fit the budget). With -p the budget must hold the plan's "peak"
# instead: that and the communication buffers and the runtime (what the process held
# before the trainer: libraries, MPI, the data). Not counted either way: the pages of
# /dev/shm that the node's ranks share. Prints a Markdown table.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRAIN=${DDP_TRAIN:-$ROOT/build/ddp-train}
budget_mib=2048 ranks=8 layers=12 ctx=256 micro=4 only_recompute="" stages="0 1 2 3" fit=total
while getopts "b:n:l:t:m:rs:p" o; do
    case $o in
    b) budget_mib=$OPTARG ;;
    n) ranks=$OPTARG ;;
    l) layers=$OPTARG ;;
    t) ctx=$OPTARG ;;
    m) micro=$OPTARG ;;
    r) only_recompute=1 ;;
    s) stages=$OPTARG ;;
    p) fit=peak ;;
    *) sed -n 2,23p "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
extra=("$@")
budget=$((budget_mib * 1024 * 1024))
recompute_flags=("")
# (Not `--help | grep -q`: grep leaving early fails the pipe under pipefail.)
help=$("$TRAIN" --help 2>&1 || true)
if [[ $help == *--recompute* ]]; then recompute_flags+=("--recompute"); fi
[ -n "$only_recompute" ] && recompute_flags=("--recompute")

# plan ZERO RECOMPUTE WIDTH -> the JSON line of --memory-plan
plan() {
    local dim=$3
    # shellcheck disable=SC2086
    "$TRAIN" --model gpt --layers "$layers" --dim "$dim" --heads $((dim / 64)) --ctx "$ctx" \
        --batch "$micro" --zero "$1" $2 ${extra[@]+"${extra[@]}"} --memory-plan "$ranks" \
        --quiet 2>/dev/null | tail -1
}
total() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())[\"$fit\"])"; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())[\"$1\"])"; }

echo "Budget $budget_mib MiB per rank ($fit), $ranks ranks; GPT of $layers blocks, context $ctx," \
    "$micro windows per rank, width C (C/64 heads)${extra[*]:+; ${extra[*]}}."
echo
echo "| --zero | recompute | widest C | parameters | params MB | grads MB | shard MB | optimizer MB | activations MB | total MB | peak MB |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for rc in "${recompute_flags[@]}"; do
    for zero in $stages; do
        lo=0 hi=64
        # Grow until it does not fit, then bisect in steps of 64.
        while [ "$(plan $zero "$rc" $hi | total)" -le "$budget" ]; do
            lo=$hi
            hi=$((hi * 2))
        done
        while [ $((hi - lo)) -gt 64 ]; do
            mid=$(((lo + hi) / 2 / 64 * 64))
            if [ "$(plan $zero "$rc" $mid | total)" -le "$budget" ]; then lo=$mid; else hi=$mid; fi
        done
        label=no
        [ -n "$rc" ] && label=yes
        if [ "$lo" -eq 0 ]; then
            echo "| $zero | $label | none fits | | | | | | | | |"
            continue
        fi
        j=$(plan $zero "$rc" $lo)
        mb() { echo "$j" | field "$1" | awk '{printf "%.0f", $1 / 1e6}'; }
        echo "| $zero | $label | $lo | $(echo "$j" | field num_params) | $(mb params) |" \
            "$(mb grads) | $(mb grad_shard) | $(mb optim) | $(mb activations) | $(mb total) |" \
            "$(mb peak) |"
    done
done
