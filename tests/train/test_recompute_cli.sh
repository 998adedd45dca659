#!/usr/bin/env bash
# --recompute end to end with the real ddp-train under mpirun on 2 ranks: the MLP and the
# CNN (with --sync-bn) on Fashion-MNIST and the GPT on a text train to the same bits with
# and without it (the exported parameters and running statistics, the logged losses and
# gradient norms); the metrics records carry every rank's peak resident memory
# ("peak_rss_mb"), at least what the training images take as floats and never falling.
# Needs DDP_TRAIN and MPIEXEC; Fashion-MNIST in DATA (default below).
set -u
TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
MPIEXEC=${MPIEXEC:-mpirun}
DATA=${DDP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d /tmp/ddp-recompute-cli.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
MPI="$MPIEXEC --oversubscribe"
fails=0 passes=0
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
if [ ! -d "$DATA" ]; then
    echo "Fashion-MNIST not found in $DATA (apt-get install dataset-fashion-mnist)"; exit 1
fi
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

for model in MLP CNN GPT; do
    declare -n args=$model
    run "${model,,}_plain" 0 "final" -- \
        $MPI -np 2 "$TRAIN" "${args[@]}" --metrics "$TMP/$model.plain.jsonl" \
        --export "$TMP/$model.plain.safetensors"
    run "${model,,}_recompute" 0 "final" -- \
        $MPI -np 2 "$TRAIN" "${args[@]}" --recompute --metrics "$TMP/$model.rc.jsonl" \
        --export "$TMP/$model.rc.safetensors"
    if cmp -s "$TMP/$model.plain.safetensors" "$TMP/$model.rc.safetensors" &&
        same_losses "$TMP/$model.plain.jsonl" "$TMP/$model.rc.jsonl"; then
        echo "ok   ${model,,}_recompute_trains_to_the_same_bits"; passes=$((passes + 1))
    else
        echo "FAIL ${model,,}_recompute_trains_to_the_same_bits"; fails=$((fails + 1))
    fi
    unset -n args
done

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
PY
then
    echo "ok   metrics_carry_every_ranks_peak_rss"; passes=$((passes + 1))
else
    echo "FAIL metrics_carry_every_ranks_peak_rss"; head -3 "$TMP/MLP.plain.jsonl"
    fails=$((fails + 1))
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
