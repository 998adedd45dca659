#!/usr/bin/env bash
# ddp-train with checkpoints, end to end on Fashion-MNIST: 60 steps in one run equal 40
# steps plus a resumed 20 bit for bit (2 ranks); a 2-rank checkpoint resumes on 1 rank;
# a damaged newest checkpoint falls back to the previous one; the same with sharded
# optimizer state (--zero 1), where a damaged shard is refused naming it; other settings, a missing
# --checkpoint-dir, an unusable directory and another run's directory are refused with a
# message, in bounded time, on every rank; --export writes safetensors.
# Needs: DDP_TRAIN (path to ddp-train), MPIEXEC; Fashion-MNIST in DATA (default below).
set -u
# run NAME EXPECTED_EXIT PATTERN -- command...: see tests/script_lib.sh.
RUN_TIMEOUT=180
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-ckpt-cli data
# check NAME CONDITION...: a plain assertion between runs.

# A private copy of the data path, so pgrep can find exactly this test's processes.
mkdir -p "$TMP/data" && cp "$DATA"/*.gz "$TMP/data/"

# A constant schedule: the learning rate of a step must not depend on --steps, since the
# interrupted run is told --steps 40 and the resumed one --steps 60.
COMMON=(--data "$TMP/data" --hidden 64 --batch 64 --schedule constant --warmup 5 --lr 0.05
        --log-every 20 --eval-every 1000)

run whole_run 0 "checkpoint of step 60 written" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 60 --checkpoint-every 20 \
    --checkpoint-dir "$TMP/whole" --dump-params "$TMP/A.bin"
run first_40_steps 0 "checkpoint of step 40 written" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 40 --checkpoint-every 20 \
    --checkpoint-dir "$TMP/split"
cp -r "$TMP/split" "$TMP/split1"
cp -r "$TMP/split" "$TMP/damaged"
run resumed_to_60 0 "resumed from .*ckpt-00000040.ddp: step 40" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 60 --checkpoint-every 20 \
    --checkpoint-dir "$TMP/split" --resume --dump-params "$TMP/B.bin" --export "$TMP/B.safetensors"
check resumed_params_equal_uninterrupted_bitwise cmp "$TMP/A.bin" "$TMP/B.bin"

run resumed_on_one_rank 0 "written by 2 rank\(s\), now 1" -- \
    $MPI -np 1 "$TRAIN" "${COMMON[@]}" --steps 60 --checkpoint-dir "$TMP/split1" --resume \
    --dump-params "$TMP/C.bin"

# The newest checkpoint cut short (as storage failure would): the one of step 20 is used.
head -c 1000 "$TMP/split/ckpt-00000040.ddp" >"$TMP/damaged/ckpt-00000040.ddp"
run damaged_newest_falls_back 0 "skipping a damaged checkpoint.*ckpt-00000040.ddp.*truncated" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 60 --checkpoint-dir "$TMP/damaged" --resume
check fallback_resumed_from_step_20 grep -q "resumed from .*ckpt-00000020.ddp" "$TMP/damaged_newest_falls_back.log"

if command -v python3 >/dev/null; then
    # One rank sums in another order than two, so only closeness is expected.
    check one_rank_resume_close_to_two_ranks python3 - "$TMP/A.bin" "$TMP/C.bin" <<'PY'
import array, math, sys
a, c = (array.array("f", open(p, "rb").read()) for p in sys.argv[1:3])
err = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, c)) / sum(x * x for x in a))
print("relative error", err)
sys.exit(0 if len(a) == len(c) and err < 1e-4 else 1)
PY
    check export_is_valid_safetensors python3 - "$TMP/B.safetensors" "$TMP/B.bin" <<'PY'
import array, json, struct, sys
blob = open(sys.argv[1], "rb").read()
params = open(sys.argv[2], "rb").read()
(n,) = struct.unpack("<Q", blob[:8])
header = json.loads(blob[8:8 + n])
assert n % 8 == 0
assert header.pop("__metadata__")["model"].startswith("mlp 784-64-10")
assert sorted(header) == ["fc0.bias", "fc0.weight", "fc1.bias", "fc1.weight"], sorted(header)
assert header["fc0.weight"]["shape"] == [64, 784] and header["fc1.bias"]["shape"] == [10]
data = blob[8 + n:]
assert len(data) == len(params) == sum(t["data_offsets"][1] - t["data_offsets"][0] for t in header.values())
assert all(t["dtype"] == "F32" for t in header.values())
b, e = header["fc0.weight"]["data_offsets"]
assert data[b:e] == params[:e - b]
PY
else
    echo "skip python checks (no python3)"
fi

# A write interrupted for real: rank 0 is SIGKILLed when 3000 bytes of the step-40
# checkpoint are on disk. The job ends; only the partial temporary file and the intact
# step-20 checkpoint are there; resuming loads step 20 and ends bit for bit where the
# uninterrupted run did.
t0=$(date +%s)
DDP_INJECT_CKPT_CRASH=40:3000 timeout -k 5 180 $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 60 \
    --checkpoint-every 20 --checkpoint-dir "$TMP/crash" >"$TMP/crash.log" 2>&1
rc=$?
dt=$(($(date +%s) - t0))
check "killed_mid_write_ends_the_job (exit $rc in $dt s)" \
    bash -c "[ $rc -ne 0 ] && [ $dt -lt 120 ] && grep -q 'injected crash after 3000 bytes' '$TMP/crash.log'"
check killed_mid_write_leaves_previous_checkpoint_and_partial_tmp \
    bash -c "[ -s '$TMP/crash/ckpt-00000020.ddp' ] && [ ! -e '$TMP/crash/ckpt-00000040.ddp' ] &&
             [ \$(stat -c %s '$TMP/crash/.ckpt-00000040.ddp.tmp') -eq 3000 ]"
run resumed_after_killed_write 0 "resumed from .*ckpt-00000020.ddp: step 20" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 60 --checkpoint-every 20 \
    --checkpoint-dir "$TMP/crash" --resume --dump-params "$TMP/crash.bin"
check resumed_after_killed_write_equals_uninterrupted_bitwise cmp "$TMP/A.bin" "$TMP/crash.bin"
check stale_tmp_removed_by_the_next_save bash -c "! ls -A '$TMP/crash' | grep -q tmp"

run resume_empty_dir_starts_fresh 0 "no checkpoint in .*starting from step 0" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 5 --checkpoint-dir "$TMP/empty" --resume
run other_hidden_refused nonzero "'hidden' \(--hidden\) differs: 64 in the checkpoint, 32 in this run" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --hidden 32 --steps 60 --checkpoint-dir "$TMP/split1" --resume
run other_batch_refused nonzero "global batch 64 but this run has --batch 128" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --batch 128 --steps 60 --checkpoint-dir "$TMP/split1" --resume
run fresh_run_into_used_dir_refused nonzero "already holds .*pass --resume" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 5 --checkpoint-dir "$TMP/split1"
touch "$TMP/a-file"
run unusable_dir_refused nonzero "a-file/ckpt" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 5 --checkpoint-dir "$TMP/a-file/ckpt"
run every_without_dir_refused 2 "need --checkpoint-dir" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --steps 5 --checkpoint-every 2

# Sharded state (--zero 1): each rank writes its shard of the optimizer state and rank 0
# the manifest last. The same bit-exact resume; a damaged shard stops every rank with a
# message naming it; a save killed while the shards are written leaves no manifest, so the
# previous checkpoint is resumed, again bit for bit.
run zero_whole_run 0 "one shard file per rank" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --optim adamw --lr 1e-3 --zero 1 --steps 60 \
    --checkpoint-every 20 --checkpoint-dir "$TMP/zwhole" --dump-params "$TMP/ZA.bin"
run zero_first_40_steps 0 "checkpoint of step 40 written" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --optim adamw --lr 1e-3 --zero 1 --steps 40 \
    --checkpoint-every 20 --checkpoint-dir "$TMP/zsplit"
check zero_shards_written bash -c "[ -s '$TMP/zsplit/ckpt-00000040.shard-0-of-2.ddp' ] &&
                                   [ -s '$TMP/zsplit/ckpt-00000040.shard-1-of-2.ddp' ]"
cp -r "$TMP/zsplit" "$TMP/zdamaged"
run zero_resumed_to_60 0 "resumed from .*ckpt-00000040.ddp: step 40" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --optim adamw --lr 1e-3 --zero 1 --steps 60 \
    --checkpoint-every 20 --checkpoint-dir "$TMP/zsplit" --resume --dump-params "$TMP/ZB.bin"
check zero_resumed_params_equal_uninterrupted_bitwise cmp "$TMP/ZA.bin" "$TMP/ZB.bin"
printf '\x55' | dd of="$TMP/zdamaged/ckpt-00000040.shard-1-of-2.ddp" bs=1 seek=5000 conv=notrunc \
    2>/dev/null
run zero_damaged_shard_refused nonzero "ckpt-00000040.shard-1-of-2.ddp is damaged" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --optim adamw --lr 1e-3 --zero 1 --steps 60 \
    --checkpoint-dir "$TMP/zdamaged" --resume
DDP_INJECT_CKPT_CRASH=40:3000 timeout -k 5 180 $MPI -np 2 "$TRAIN" "${COMMON[@]}" --optim adamw \
    --lr 1e-3 --zero 1 --steps 60 --checkpoint-every 20 --checkpoint-dir "$TMP/zcrash" \
    >"$TMP/zcrash.log" 2>&1
check zero_killed_mid_shard_write_leaves_no_manifest \
    bash -c "[ -s '$TMP/zcrash/ckpt-00000020.ddp' ] && [ ! -e '$TMP/zcrash/ckpt-00000040.ddp' ]"
run zero_resumed_after_killed_write 0 "resumed from .*ckpt-00000020.ddp: step 20" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --optim adamw --lr 1e-3 --zero 1 --steps 60 \
    --checkpoint-every 20 --checkpoint-dir "$TMP/zcrash" --resume --dump-params "$TMP/ZC.bin"
check zero_resumed_after_killed_write_equals_uninterrupted_bitwise cmp "$TMP/ZA.bin" "$TMP/ZC.bin"
run zero_stage_4_refused nonzero "--zero" -- $MPI -np 2 "$TRAIN" "${COMMON[@]}" --zero 4 --steps 5
# Sharded gradients travel in bf16 too: reduce-scattered as bf16, widened into the shard.
run zero3_grad_bf16_trains 0 "final test accuracy" -- \
    $MPI -np 2 "$TRAIN" "${COMMON[@]}" --zero 3 --grad-dtype bf16 --steps 5

script_finish
