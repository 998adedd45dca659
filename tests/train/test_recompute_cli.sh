#!/usr/bin/env bash
# --recompute end to end with the real ddp-train under mpirun on 2 ranks: the MLP and the
# CNN (with --sync-bn) on Fashion-MNIST and the GPT on a text train to the same bits with
# and without it (the exported parameters and running statistics, the logged losses and
# gradient norms), also when only one rank recomputes; a GPT run resumed with it from a
# checkpoint written without it ends on the same bits; its trace shows each block
# recomputed before each backward; the metrics records carry every rank's peak resident
# memory ("peak_rss_mb"), at least what the training images take as floats and never
# falling.
# Needs DDP_TRAIN and MPIEXEC; Fashion-MNIST in DATA (default below).
set -u
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-recompute-cli data
ln -s "$DATA" "$TMP/data"
# A real text: this project's README, every byte a token.
cp "$(dirname "${BASH_SOURCE[0]}")/../../README.md" "$TMP/text.txt"

MLP=(--model mlp --data "$TMP/data" --hidden 64,32 --batch 64 --steps 12 --log-every 4
     --eval-every 12)
CNN=(--model cnn --data "$TMP/data" --channels 4,8 --hidden 16 --batch 32 --steps 6
     --log-every 2 --eval-every 6 --sync-bn)
GPT=(--model gpt --text "$TMP/text.txt" --layers 2 --dim 32 --heads 4 --ctx 32 --batch 8
     --steps 8 --log-every 2 --eval-every 8 --eval-tokens 2048)

# The logged losses and gradient norms of two metrics files are the same numbers.
same_losses() {
    python3 - "$1" "$2" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(a) == len(b) > 0, (len(a), len(b))
for x, y in zip(a, b):
    for k in ("step", "loss", "grad_norm"):
        assert x[k] == y[k], (k, x[k], y[k])
PY
}

# The GPT's plain run also leaves a checkpoint half-way (resumed below with --recompute)
# and the final parameters; its run with --recompute a trace.
GPT_PLAIN=(--checkpoint-dir "$TMP/ckpt" --checkpoint-every 4 --dump-params "$TMP/GPT.plain.bin")
GPT_RC=(--trace "$TMP/gpt.trace.json")
MLP_PLAIN=() MLP_RC=() CNN_PLAIN=() CNN_RC=()
for model in MLP CNN GPT; do
    declare -n args=$model plain_extra=${model}_PLAIN rc_extra=${model}_RC
    run "${model,,}_plain" 0 "final" -- \
        $MPI -np 2 "$TRAIN" "${args[@]}" --metrics "$TMP/$model.plain.jsonl" \
        --export "$TMP/$model.plain.safetensors" "${plain_extra[@]}"
    run "${model,,}_recompute" 0 "final" -- \
        $MPI -np 2 "$TRAIN" "${args[@]}" --recompute --metrics "$TMP/$model.rc.jsonl" \
        --export "$TMP/$model.rc.safetensors" "${rc_extra[@]}"
    if cmp -s "$TMP/$model.plain.safetensors" "$TMP/$model.rc.safetensors" &&
        same_losses "$TMP/$model.plain.jsonl" "$TMP/$model.rc.jsonl"; then
        echo "ok   ${model,,}_recompute_trains_to_the_same_bits"; passes=$((passes + 1))
    else
        echo "FAIL ${model,,}_recompute_trains_to_the_same_bits"; fails=$((fails + 1))
    fi
    unset -n args plain_extra rc_extra
done

# Nor in the configuration the ranks compare: rank 0 recomputes, rank 1 does not (an MPMD
# launch), with --sync-bn, and they train to the bits of the run where neither does.
run cnn_recompute_on_one_rank 0 "final" -- \
    $MPI -np 1 "$TRAIN" "${CNN[@]}" --recompute --export "$TMP/CNN.mixed.safetensors" : \
    -np 1 "$TRAIN" "${CNN[@]}" --export "$TMP/CNN.mixed.safetensors"
if cmp -s "$TMP/CNN.plain.safetensors" "$TMP/CNN.mixed.safetensors"; then
    echo "ok   recompute_on_one_rank_trains_to_the_same_bits"; passes=$((passes + 1))
else
    echo "FAIL recompute_on_one_rank_trains_to_the_same_bits"; fails=$((fails + 1))
fi

# --recompute is not in the settings a checkpoint must match: a run resumed with it from
# a checkpoint written without it ends on the uninterrupted run's bits.
mkdir -p "$TMP/half" && cp "$TMP/ckpt/ckpt-00000004.ddp" "$TMP/half/"
run gpt_resume_with_recompute 0 "resumed from .* step 4" -- \
    $MPI -np 2 "$TRAIN" "${GPT[@]}" --recompute --checkpoint-dir "$TMP/half" --resume \
    --dump-params "$TMP/GPT.resumed.bin"
if cmp -s "$TMP/GPT.plain.bin" "$TMP/GPT.resumed.bin"; then
    echo "ok   resumed_with_recompute_is_bitwise_the_run_without"; passes=$((passes + 1))
else
    echo "FAIL resumed_with_recompute_is_bitwise_the_run_without"; fails=$((fails + 1))
fi

# The trace shows each transformer block recomputed once before each of its backwards,
# and the embedding and the output projection (nothing to recompute) never.
if python3 - "$TMP"/gpt.trace.json.rank*.json <<'PY'
import json, sys
for path in sys.argv[1:]:
    ev = json.load(open(path))
    ev = ev["traceEvents"] if isinstance(ev, dict) else ev
    n = {}
    for e in ev:
        if e.get("ph") == "X" and e.get("cat") in ("forward", "backward", "recompute"):
            k = (e["name"], e["cat"])
            n[k] = n.get(k, 0) + 1
    for block in ("h0", "h1"):
        assert n.get((block, "recompute"), 0) == n[(block, "backward")] == 8, (path, n)
    for layer in ("embedding", "lm_head"):
        assert (layer, "recompute") not in n, (path, n)
PY
then
    echo "ok   trace_shows_each_block_recomputed_before_its_backward"; passes=$((passes + 1))
else
    echo "FAIL trace_shows_each_block_recomputed_before_its_backward"; fails=$((fails + 1))
fi

# Every record: one figure per rank, at least the training images as floats (each rank
# holds all of them) and at most the machine's memory, never falling from one record to
# the next.
if python3 - "$TMP/MLP.plain.jsonl" "$TMP/MLP.rc.jsonl" "$TMP/CNN.rc.jsonl" <<'PY'
import json, os, sys
ram_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
images_mib = 60000 * 784 * 4 / 2**20
for path in sys.argv[1:]:
    recs = [json.loads(l) for l in open(path)]
    assert len(recs) >= 3, (path, len(recs))
    prev = [0.0, 0.0]
    for r in recs:
        rss = r["peak_rss_mb"]
        assert isinstance(rss, list) and len(rss) == 2, (path, rss)
        for i, v in enumerate(rss):
            assert images_mib <= v <= ram_mib, (path, r["step"], rss, images_mib, ram_mib)
            assert v >= prev[i], (path, r["step"], rss, prev)
        prev = rss
        # MFU can never pass 100% (run.c: the peak is raised to any step's rate above it).
        assert 0 < r["mfu"] <= 1.0, (path, r["step"], r["mfu"])
PY
then
    echo "ok   metrics_carry_every_ranks_peak_rss"; passes=$((passes + 1))
else
    echo "FAIL metrics_carry_every_ranks_peak_rss"; head -3 "$TMP/MLP.plain.jsonl"
    fails=$((fails + 1))
fi

script_finish
