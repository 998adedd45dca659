#!/usr/bin/env bash
# The gradient noise scale and the adaptive batch schedule end to end, with the real
# ddp-train under mpirun on Fashion-MNIST: B_simple is in the progress lines and the
# metrics wherever a smaller batch than the global one exists (2 ranks, or 1 rank with
# accumulation) and absent otherwise or with --no-gns; --batch-schedule adaptive doubles
# the batch when B_simple exceeds it, only to doublings of the starting batch up to
# --max-batch, uses every sample at most once per epoch (the samples of an epoch add up),
# and a run resumed from a checkpoint taken after the batch grew ends with bitwise the
# same parameters and final checkpoint as the uninterrupted run; options that cannot work
# fail on every rank with a message. Needs DDP_TRAIN and MPIEXEC; Fashion-MNIST in DATA.
set -u
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-batch-cli data
ln -s "$DATA" "$TMP/data"
MLP=(--data "$TMP/data" --hidden 64 --schedule constant --warmup 50 --lr 0.0125)

# The noise scale where it can be measured, and not where it cannot.
run gns_on_two_ranks 0 "B_simple [0-9]" -- \
    $MPI -np 2 "$TRAIN" "${MLP[@]}" --batch 64 --steps 40 --log-every 20 --metrics "$TMP/g2.jsonl"
run gns_on_one_rank_with_accumulation 0 "B_simple [0-9]" -- \
    $MPI -np 1 "$TRAIN" "${MLP[@]}" --batch 64 --accum 2 --steps 40 --log-every 20
run no_gns_on_one_rank_without_accumulation 0 "final test accuracy" -- \
    $MPI -np 1 "$TRAIN" "${MLP[@]}" --batch 64 --steps 40 --log-every 20 --metrics "$TMP/g1.jsonl"
run no_gns_when_switched_off 0 "final test accuracy" -- \
    $MPI -np 2 "$TRAIN" "${MLP[@]}" --batch 64 --steps 40 --log-every 20 --no-gns
check gns_is_absent_without_a_smaller_batch_or_with_no_gns \
    bash -c "! grep -q B_simple '$TMP/no_gns_on_one_rank_without_accumulation.log' &&
             ! grep -q B_simple '$TMP/no_gns_when_switched_off.log' &&
             ! grep -q gns_b_simple '$TMP/g1.jsonl' && grep -q '\"gns_b_simple\":[0-9]' '$TMP/g2.jsonl'"

# The adaptive schedule: 2 ranks from batch 32 (16 per rank), at most 256, one epoch,
# checkpoints every 50 steps.
AD=("${MLP[@]}" --batch 32 --batch-schedule adaptive --max-batch 256 --epochs 1 --log-every 10
    --gns-ema 0.9 --checkpoint-every 50 --keep 0)
run adaptive_grows_the_batch 0 "batch 32 -> 64 \(2 micro-batches of 16 per rank\)" -- \
    $MPI -np 2 "$TRAIN" "${AD[@]}" --checkpoint-dir "$TMP/ckA" --metrics "$TMP/ad.jsonl" \
    --dump-params "$TMP/pA.bin"
check batches_are_doublings_and_samples_add_up python3 - "$TMP/ad.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
batches = [r["batch"] for r in recs]
assert all(b in (32, 64, 128, 256) for b in batches), batches
assert batches == sorted(batches) and batches[-1] > 32, batches
# One epoch: every full batch of the epoch's order once, only a tail shorter than the
# last batch left over.
last = recs[-1]
assert last["epoch"] == 0 and 60000 - last["batch"] < last["samples"] <= 60000, last
assert all(r.get("gns_b_simple") is not None for r in recs)
PY
# Resume from the first checkpoint written after the batch first grew.
changed=$(grep -oE "step [0-9]+: B_simple" "$TMP/adaptive_grows_the_batch.log" | head -1 | grep -oE "[0-9]+")
ck=$(ls "$TMP/ckA" | sort | awk -F'[-.]' -v c="${changed:-0}" '$2 + 0 > c + 0 { print; exit }')
mkdir -p "$TMP/ckB"
[ -n "$ck" ] && cp "$TMP/ckA/$ck" "$TMP/ckB/"
last=$(ls "$TMP/ckA" | sort | tail -1)
run adaptive_resumes 0 "resumed from .*$ck" -- \
    $MPI -np 2 "$TRAIN" "${AD[@]}" --checkpoint-dir "$TMP/ckB" --resume --dump-params "$TMP/pB.bin"
check resumed_run_is_bitwise_the_uninterrupted_one \
    bash -c "[ -n '$ck' ] && [ '$ck' != '$last' ] && cmp '$TMP/pA.bin' '$TMP/pB.bin' &&
             cmp '$TMP/ckA/$last' '$TMP/ckB/$last'"

# What cannot work says so, on every rank.
run adaptive_needs_a_smaller_batch nonzero "needs the gradient noise scale.*--accum 2" -- \
    $MPI -np 1 "$TRAIN" "${MLP[@]}" --batch 32 --batch-schedule adaptive --max-batch 64 --epochs 1
run adaptive_without_gns nonzero "without --no-gns" -- \
    $MPI -np 2 "$TRAIN" "${MLP[@]}" --batch 32 --batch-schedule adaptive --max-batch 64 \
    --epochs 1 --no-gns
run adaptive_runs_for_epochs nonzero "runs for --epochs, not --steps" -- \
    $MPI -np 2 "$TRAIN" "${MLP[@]}" --batch 32 --batch-schedule adaptive --max-batch 64 --steps 5
run max_batch_below_the_batch nonzero "--max-batch 16 must lie between --batch 32" -- \
    $MPI -np 2 "$TRAIN" "${MLP[@]}" --batch 32 --batch-schedule adaptive --max-batch 16 --epochs 1
run gns_ema_out_of_range nonzero "gns-ema" -- $MPI -np 1 "$TRAIN" --gns-ema 1 --steps 1

script_finish
