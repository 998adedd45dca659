#!/usr/bin/env bash
# The CNN end to end with the real ddp-train under mpirun on Fashion-MNIST: 2 ranks with
# --sync-bn train with bitwise identical parameters and running statistics (--check-sync)
# and export the running statistics with the parameters; a rank that hangs inside a
# synchronized batch norm's all-reduce ends the job through the watchdog (exit 3, the
# message naming the batch-norm statistics); bad shapes fail on every rank with a
# message. Needs DDP_TRAIN and MPIEXEC; Fashion-MNIST in DATA (default below).
set -u
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-cnn-cli data
ln -s "$DATA" "$TMP/data"
CNN=(--model cnn --data "$TMP/data" --channels 8,16 --hidden 32 --batch 64 --log-every 10)

run sync_bn_two_ranks 0 "final test accuracy" -- \
    $MPI -np 2 "$TRAIN" "${CNN[@]}" --sync-bn --steps 20 --eval-every 20 --check-sync 5 \
    --export "$TMP/cnn.safetensors"
if python3 - "$TMP/cnn.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
for k in ("conv0.weight", "bn0.weight", "bn0.running_mean", "bn1.running_var", "fc1.bias"):
    assert k in h, k
assert h["conv0.weight"]["shape"] == [8, 1, 3, 3], h["conv0.weight"]["shape"]
assert h["__metadata__"]["model"].startswith("cnn 28x28x1 conv8,16 k3")
PY
then
    echo "ok   export_holds_the_running_statistics"; passes=$((passes + 1))
else
    echo "FAIL export_holds_the_running_statistics"; fails=$((fails + 1))
fi

# Rank 1 sleeps a minute before each batch-norm all-reduce; rank 0 waits inside one.
DDP_INJECT_DELAY=bn_allreduce:1:60000 \
    run hang_in_a_batch_norm_collective 3 "allreduce of the batch-norm statistics.*did not complete" -- \
    $MPI -np 2 -x DDP_INJECT_DELAY "$TRAIN" "${CNN[@]}" --sync-bn --steps 5 --timeout 3

run even_kernel nonzero "odd" -- $MPI -np 2 "$TRAIN" "${CNN[@]}" --steps 1 --kernel 4
run too_many_stages nonzero "too small" -- \
    $MPI -np 2 "$TRAIN" "${CNN[@]}" --steps 1 --channels 4,4,4,4,4
run sync_bn_without_batch_norm 2 "sync-bn" -- $MPI -np 2 "$TRAIN" --model mlp --sync-bn --steps 1

script_finish
