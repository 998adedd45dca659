#!/usr/bin/env bash
# Bad input and failures end every rank with a clear message and a non-zero exit, in
# bounded time, with no process left behind. Drives the real ddp-train under mpirun.
# Needs: DDP_TRAIN (path to ddp-train), MPIEXEC; Fashion-MNIST in DATA (default below).
set -u
# run NAME EXPECTED_EXIT PATTERN -- command...: see tests/script_lib.sh.
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-failures data

# A private copy of the data path, so pgrep can find exactly this test's processes.
mkdir -p "$TMP/good" "$TMP/corrupt"
cp "$DATA"/*.gz "$TMP/good/"
cp "$DATA"/*.gz "$TMP/corrupt/"
# Truncate the training images: valid gzip header, stream cut short.
head -c 100000 "$DATA/train-images-idx3-ubyte.gz" >"$TMP/corrupt/train-images-idx3-ubyte.gz"
# Labels that do not match the images in number.
mkdir -p "$TMP/mismatch" && cp "$DATA"/*.gz "$TMP/mismatch/"
cp "$DATA/t10k-labels-idx1-ubyte.gz" "$TMP/mismatch/train-labels-idx1-ubyte.gz"

COMMON=(--steps 30 --log-every 10 --quiet)

run missing_data_on_one_rank nonzero "rank 1.*($TMP/nowhere|loading the data)" -- \
    $MPI -np 1 "$TRAIN" --data "$TMP/good" "${COMMON[@]}" : -np 1 "$TRAIN" --data "$TMP/nowhere" "${COMMON[@]}"
run corrupt_data_on_one_rank nonzero "train-images-idx3-ubyte.gz" -- \
    $MPI -np 1 "$TRAIN" --data "$TMP/good" "${COMMON[@]}" : -np 1 "$TRAIN" --data "$TMP/corrupt" "${COMMON[@]}"
run label_count_mismatch nonzero "60000|10000" -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/mismatch" "${COMMON[@]}"
run config_differs_on_one_rank nonzero "rank 1.*different configuration" -- \
    $MPI -np 1 "$TRAIN" --data "$TMP/good" "${COMMON[@]}" : -np 1 "$TRAIN" --data "$TMP/good" --hidden 64 "${COMMON[@]}"
run batch_not_divisible 2 "multiple of 3" -- \
    $MPI -np 3 "$TRAIN" --data "$TMP/good" --batch 100 "${COMMON[@]}"
run accum_not_dividing 2 "--accum 5 does not divide" -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/good" --batch 128 --accum 5 "${COMMON[@]}"
run unknown_option 2 "unknown option '--bogus'" -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/good" --bogus "${COMMON[@]}"
run bad_number 2 "--lr 'fast'" -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/good" --lr fast "${COMMON[@]}"
run bad_option_on_one_rank 2 "rank 1" -- \
    $MPI -np 1 "$TRAIN" --data "$TMP/good" "${COMMON[@]}" : -np 1 "$TRAIN" --data "$TMP/good" --batch 0 "${COMMON[@]}"
run comm_failure_mid_training nonzero "injected fault.*|aborting all" -- \
    env DDP_INJECT_FAULT=allreduce:1:40 $MPI -np 2 "$TRAIN" --data "$TMP/good" --steps 2000 --quiet
# PowerSGD's all-reduces of factors go through the same wrappers: a fault in one ends the job.
run comm_failure_in_compressed_allreduce nonzero "injected fault.*|aborting all" -- \
    env DDP_INJECT_FAULT=allreduce:1:40 $MPI -np 2 "$TRAIN" --data "$TMP/good" --steps 2000 \
    --compress powersgd --quiet
run compress_with_zero3 nonzero "compress powersgd needs the CPU backend and --zero 0 or 1" -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/good" --compress powersgd --zero 3 "${COMMON[@]}"
# Only meaningful where there is no GPU: with one, --device cuda is expected to work.
if nvidia-smi -L >/dev/null 2>&1; then
    echo "skip cuda_without_gpu_or_build: a GPU is present"
else
    run cuda_without_gpu_or_build nonzero "cuda|CUDA|GPU" -- \
        $MPI -np 1 "$TRAIN" --data "$TMP/good" --device cuda "${COMMON[@]}"
fi
run metrics_to_unwritable_path nonzero "metrics" -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/good" --metrics /nonexistent-dir/m.json "${COMMON[@]}"
run help_exits_zero 0 "--micro-batch" -- "$TRAIN" --help
# A diverging run that skips its non-finite updates keeps its metrics: JSON has no NaN,
# so the gradient norm is recorded as null (it used to vanish from the records).
run diverging_run_keeps_its_metrics 0 "non-finite gradients, update skipped" -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/good" --lr 1000 --momentum 0.99 --warmup 0 \
    --schedule constant --on-nonfinite skip --metrics "$TMP/diverging.jsonl" "${COMMON[@]}"
if [ "$(grep -c '"grad_norm":null' "$TMP/diverging.jsonl" 2>/dev/null)" != 3 ]; then
    echo "FAIL diverging_run_keeps_its_metrics: expected 3 records with \"grad_norm\":null"
    cat "$TMP/diverging.jsonl" 2>/dev/null | cut -c1-200; fails=$((fails + 1))
fi

script_finish
