#!/usr/bin/env bash
# NCCL under the watchdog, on one GPU: collectives return once queued, so a dead or
# stopped peer shows only as GPU work that never completes. Staged with fault injection
# (one rank: NCCL refuses two ranks on one GPU):
#  - nccl_hang: a collective never completes (a stopped peer); the host's next wait for
#    the GPU polls under the watchdog, which ends the job within --timeout (exit status
#    3), naming the rank and the step;
#  - nccl_async: NCCL reports an asynchronous error (a dead peer) while the host waits;
#    the communicator is aborted and the job ends with NCCL's error, naming the rank.
# Skips (77) without a GPU or without the NCCL comm; with -DDDP_REQUIRE_GPU=ON a skip
# fails.
set -u
TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
MPIEXEC=${MPIEXEC:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d /tmp/ddp-nccl-faults.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0 passes=0
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "no GPU: skipped"; exit 77
fi
cp "$(dirname "${BASH_SOURCE[0]}")/../../README.md" "$TMP/text.txt"
GPT=(--model gpt --text "$TMP/text.txt" --layers 1 --dim 32 --heads 2 --ctx 16 --batch 8
     --log-every 1 --device cuda --comm nccl --timeout 3)
if ! $MPIEXEC -np 1 "$TRAIN" "${GPT[@]}" --steps 1 >"$TMP/probe.log" 2>&1; then
    if grep -q "NCCL" "$TMP/probe.log"; then
        echo "FAIL: the NCCL comm is unavailable on a machine with a GPU:"; cat "$TMP/probe.log"
        exit 1
    fi
    cat "$TMP/probe.log"; exit 1
fi

RUN_TIMEOUT=60 run nccl_hang_ends_within_timeout 3 \
    'rank 0: waiting for the GPU .* at step [0-9]+ did not complete within 3 s' -- \
    env DDP_INJECT_FAULT=nccl_hang:0:8 $MPIEXEC -np 1 "$TRAIN" "${GPT[@]}" --steps 200 \
    --checkpoint-dir "$TMP/ck" --checkpoint-every 100
RUN_TIMEOUT=60 run nccl_async_error_aborts nonzero \
    'NCCL failed asynchronously on rank 0: .*communicator was aborted' -- \
    env DDP_INJECT_FAULT=nccl_async:0:20 $MPIEXEC -np 1 "$TRAIN" "${GPT[@]}" --steps 200
# The hang ended the job before its first checkpoint: none was written, not even in part.
if [ -n "$(ls -A "$TMP/ck" 2>/dev/null)" ]; then
    echo "FAIL: the stopped job left files in its checkpoint directory:"; ls -la "$TMP/ck"
    fails=$((fails + 1))
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
