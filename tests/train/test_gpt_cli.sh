#!/usr/bin/env bash
# The GPT end to end with the real programs under mpirun, on a small text file: training
# on 2 ranks writes the language-model metrics and, with accumulation, a trace of every
# layer; resuming from its half-way checkpoint
# ends bitwise equal to the uninterrupted run (other rank counts: tests/checkpoint); the
# export and the checkpoint give ddp-generate the same
# model (the same text for the same seed), also at --zero 3 (the export gathered and
# streamed), greedy sampling is deterministic; a rank that
# hangs ends the job through the watchdog (exit 3); and bad
# input fails on every rank with a message: a text too short for the context, heads that
# do not divide the width, a text that is missing, ddp-generate on an MLP or on nothing.
# Needs DDP_TRAIN and DDP_GENERATE (paths of the programs) and MPIEXEC.
set -u
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-gpt-cli generate

# A text with structure worth learning: the same few sentences in shuffled order, 40 KB.
python3 - "$TMP/text.txt" <<'EOF'
import random, sys
random.seed(5)
s = ["the cat sat on the mat. ", "a dog ran in the park. ", "we eat bread and fish. ",
     "the sun is warm today. ", "birds sing in the trees. "]
with open(sys.argv[1], "w") as f:
    f.write("".join(random.choice(s) for _ in range(1700)))
EOF
printf 'too short' >"$TMP/short.txt"
SMALL=(--model gpt --text "$TMP/text.txt" --layers 2 --dim 32 --heads 4 --ctx 32 --batch 8
       --lr 3e-3 --warmup 5 --log-every 10 --eval-every 20 --eval-tokens 2048)

run train_two_ranks 0 "final validation loss" -- \
    $MPI -np 2 "$TRAIN" "${SMALL[@]}" --steps 40 --metrics "$TMP/m.jsonl" \
    --checkpoint-dir "$TMP/ckpt" --checkpoint-every 20 --export "$TMP/gpt.safetensors" \
    --dump-params "$TMP/full.bin"
# The records of a language model: throughput in tokens, MFU, validation loss in nats
# and bits per byte, and a loss that went down from log(256) = 5.55.
if python3 - "$TMP/m.jsonl" <<'EOF'
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
last = recs[-1]
for k in ("tokens_per_s", "mfu", "val_loss", "val_bpb", "val_accuracy", "loss"):
    assert k in last and last[k] is not None, k
assert abs(last["val_bpb"] - last["val_loss"] / math.log(2)) < 1e-6
assert last["tokens_per_s"] > 0
# MFU against a peak measured at the model's largest product, raised to any step's rate
# that beats it: never above 1.
assert all(0 < r["mfu"] <= 1.0 for r in recs), [r["mfu"] for r in recs]
assert last["val_loss"] < 3.0, last["val_loss"]
assert sum(1 for r in recs if "val_loss" in r) == 2
EOF
then
    echo "ok   metrics_of_a_language_model"; passes=$((passes + 1))
else
    echo "FAIL metrics_of_a_language_model"; cat "$TMP/m.jsonl"; fails=$((fails + 1))
fi

# --trace with accumulation: every layer of the GPT (the embedding, each block, the final
# norm, the tied head) in backward twice a step, in forward also in the evaluation, and the
# buckets' all-reduces
# on the communication thread.
run trace_with_accumulation 0 "final validation loss" -- \
    $MPI -np 2 "$TRAIN" "${SMALL[@]}" --steps 3 --accum 2 --trace "$TMP/tr"
if python3 - "$TMP/tr.rank0.json" "$TMP/tr.rank1.json" <<'EOF'
import json, sys
for path in sys.argv[1:]:
    d = json.load(open(path))
    ev = d["traceEvents"] if isinstance(d, dict) else d
    spans = [e for e in ev if e.get("ph") == "X"]
    for layer in ("embedding", "h0", "h1", "ln_f", "lm_head"):
        n = {c: sum(1 for e in spans if e["name"] == layer and e.get("cat") == c)
             for c in ("forward", "backward")}
        # 3 steps x 2 micro-batches; forward also in the final evaluation
        assert n["backward"] == 6 and n["forward"] > 6, (path, layer, n)
    buckets = [e for e in spans if e["name"] == "allreduce bucket"]
    assert len(buckets) >= 3 and all(e["tid"] != 0 for e in buckets), buckets
EOF
then
    echo "ok   trace_of_every_layer"; passes=$((passes + 1))
else
    echo "FAIL trace_of_every_layer"; fails=$((fails + 1))
fi

# Resume from the step-20 checkpoint on 2 ranks: bitwise the uninterrupted run.
mkdir -p "$TMP/half" && cp "$TMP/ckpt/ckpt-00000020.ddp" "$TMP/half/"
run resume_two_ranks 0 "resumed from .* step 20" -- \
    $MPI -np 2 "$TRAIN" "${SMALL[@]}" --steps 40 --checkpoint-dir "$TMP/half" --resume \
    --dump-params "$TMP/resumed.bin"
if cmp -s "$TMP/full.bin" "$TMP/resumed.bin"; then
    echo "ok   resumed_run_is_bitwise_the_uninterrupted_one"; passes=$((passes + 1))
else
    echo "FAIL resumed_run_is_bitwise_the_uninterrupted_one"; fails=$((fails + 1))
fi

# ddp-generate: the export and the last checkpoint hold the same model, so the same seed
# gives the same text; greedy sampling twice gives the same text.
run generate_from_export 0 "." -- \
    "$GENERATE" --safetensors "$TMP/gpt.safetensors" --prompt "the " --tokens 60 --seed 3
run generate_from_checkpoint 0 "." -- \
    "$GENERATE" --checkpoint-dir "$TMP/ckpt" --prompt "the " --tokens 60 --seed 3
if cmp -s "$TMP/generate_from_export.log" "$TMP/generate_from_checkpoint.log" &&
    [ "$(head -c 4 "$TMP/generate_from_export.log")" = "the " ] &&
    [ "$(wc -c <"$TMP/generate_from_export.log")" -ge 64 ]; then
    echo "ok   export_and_checkpoint_generate_the_same_text"; passes=$((passes + 1))
else
    echo "FAIL export_and_checkpoint_generate_the_same_text"; fails=$((fails + 1))
    head -c 200 "$TMP/generate_from_export.log"; echo; head -c 200 "$TMP/generate_from_checkpoint.log"; echo
fi
run greedy_a 0 "." -- "$GENERATE" --safetensors "$TMP/gpt.safetensors" --prompt "a dog" \
    --tokens 40 --temperature 0 --seed 1
run greedy_b 0 "." -- "$GENERATE" --safetensors "$TMP/gpt.safetensors" --prompt "a dog" \
    --tokens 40 --temperature 0 --seed 2
if cmp -s "$TMP/greedy_a.log" "$TMP/greedy_b.log"; then
    echo "ok   greedy_sampling_ignores_the_seed"; passes=$((passes + 1))
else
    echo "FAIL greedy_sampling_ignores_the_seed"; fails=$((fails + 1))
fi

# Stage 3 (each rank holds its shard of the parameters): the export, gathered a unit at a
# time and streamed by rank 0, holds the parameters the run ends with, and it and the
# sharded checkpoint give ddp-generate the same text.
run train_stage3 0 "final validation loss" -- \
    $MPI -np 2 "$TRAIN" "${SMALL[@]}" --zero 3 --steps 20 --checkpoint-dir "$TMP/ckpt3" \
    --checkpoint-every 20 --export "$TMP/gpt3.safetensors" --dump-params "$TMP/full3.bin"
if python3 - "$TMP/gpt3.safetensors" "$TMP/full3.bin" <<'EOF'
import struct, sys
st = open(sys.argv[1], "rb").read()
full = open(sys.argv[2], "rb").read()
(n,) = struct.unpack("<Q", st[:8])
assert len(full) > 0 and st[8 + n:8 + n + len(full)] == full
EOF
then
    echo "ok   stage3_export_holds_the_trained_parameters"; passes=$((passes + 1))
else
    echo "FAIL stage3_export_holds_the_trained_parameters"; fails=$((fails + 1))
fi
run generate_from_stage3_export 0 "." -- \
    "$GENERATE" --safetensors "$TMP/gpt3.safetensors" --prompt "the " --tokens 60 --seed 3
run generate_from_stage3_checkpoint 0 "." -- \
    "$GENERATE" --checkpoint-dir "$TMP/ckpt3" --prompt "the " --tokens 60 --seed 3
if cmp -s "$TMP/generate_from_stage3_export.log" "$TMP/generate_from_stage3_checkpoint.log" &&
    [ "$(wc -c <"$TMP/generate_from_stage3_export.log")" -ge 64 ]; then
    echo "ok   stage3_export_and_checkpoint_generate_the_same_text"; passes=$((passes + 1))
else
    echo "FAIL stage3_export_and_checkpoint_generate_the_same_text"; fails=$((fails + 1))
fi

# A rank that hangs mid-training (SIGSTOP) ends the GPT's job through the watchdog:
# exit status 3 within --timeout and a few seconds, the message naming the operation. Each
# rank reads its own link to the text, so that pgrep finds rank 1 alone.
ln -s "$TMP/text.txt" "$TMP/text.r0"
ln -s "$TMP/text.txt" "$TMP/text.r1"
SMALLER=(--model gpt --layers 2 --dim 32 --heads 4 --ctx 32 --batch 8 --log-every 5
         --eval-every 1000000 --steps 100000 --timeout 4)
timeout -k 5 120 $MPI -np 1 "$TRAIN" --text "$TMP/text.r0" "${SMALLER[@]}" : \
    -np 1 "$TRAIN" --text "$TMP/text.r1" "${SMALLER[@]}" >"$TMP/stop.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do
    grep -q "step 20/" "$TMP/stop.log" && break
    sleep 0.2
done
victim=$(pgrep -f "^$TRAIN --text $TMP/text.r1( |\$)")
if [ -z "$victim" ] || ! grep -q "step 20/" "$TMP/stop.log"; then
    echo "FAIL watchdog_ends_a_hung_gpt_job: training did not get going"; fails=$((fails + 1))
    pkill -9 -f "$TMP"; wait $job
else
    t0=$(date +%s)
    kill -STOP "$victim"
    wait $job
    rc=$? dt=$(($(date +%s) - t0))
    kill -CONT "$victim" 2>/dev/null; kill -KILL "$victim" 2>/dev/null
    if [ $rc -eq 3 ] && [ $dt -le 15 ] && grep -q "did not complete within" "$TMP/stop.log"; then
        echo "ok   watchdog_ends_a_hung_gpt_job (exit 3, $dt s)"; passes=$((passes + 1))
    else
        echo "FAIL watchdog_ends_a_hung_gpt_job: exit $rc after $dt s"
        tail -5 "$TMP/stop.log"; fails=$((fails + 1))
    fi
fi
pkill -9 -f "$TMP" 2>/dev/null

# Bad input: every rank exits non-zero with a message naming the problem.
run text_too_short nonzero "short.txt.*(too short|at least)" -- \
    $MPI -np 2 "$TRAIN" "${SMALL[@]}" --steps 2 --text "$TMP/short.txt"
run text_missing nonzero "nowhere.txt" -- \
    $MPI -np 2 "$TRAIN" "${SMALL[@]}" --steps 2 --text "$TMP/nowhere.txt"
run heads_do_not_divide 2 "heads" -- \
    $MPI -np 2 "$TRAIN" "${SMALL[@]}" --steps 2 --heads 3
run text_for_an_mlp 2 "model gpt" -- \
    $MPI -np 2 "$TRAIN" --model mlp --text "$TMP/text.txt" --steps 1
$MPI -np 1 "$TRAIN" --steps 2 --batch 8 --export "$TMP/mlp.safetensors" >/dev/null 2>&1
run generate_from_an_mlp 1 "GPT" -- "$GENERATE" --safetensors "$TMP/mlp.safetensors"
run generate_from_nothing 2 "exactly one" -- "$GENERATE" --prompt x
run generate_from_a_missing_file 1 "missing.safetensors" -- \
    "$GENERATE" --safetensors "$TMP/missing.safetensors"

script_finish
