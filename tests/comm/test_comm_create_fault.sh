#!/usr/bin/env bash
# One rank's local failure while creating a communicator (DDP_INJECT_FAULT=comm_create:
# RANK:N, as a failed allocation would be) ends every rank of the real programs promptly,
# with a non-zero status and a message naming the rank, and leaves no process behind:
# the control communicator, created first, and the gradient communicator, created after
# set-up. Before the creation agreed first, the other ranks waited in MPI_Comm_dup.
# Usage: test_comm_create_fault.sh PATH-TO-ddp-bench (DDP_TRAIN and MPIEXEC from the
# environment).
set -u
BENCH=${1:?usage: test_comm_create_fault.sh PATH-TO-ddp-bench}
# Promptly: a rank left waiting would be ended by this limit, not by the job.
RUN_TIMEOUT=30
# run NAME EXPECTED_EXIT PATTERN -- command...: see tests/script_lib.sh.
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-comm-create

# The first communicator of ddp-train (control), on rank 1 of 2 and of 3.
for np in 2 3; do
    DDP_INJECT_FAULT=comm_create:1:1 run "control_comm_np$np" nonzero \
        "injected local failure on rank 1.*" -- \
        $MPI -np $np "$TRAIN" --steps 1 --metrics "$TMP/m.jsonl"
    grep -q "creating the MPI communicator failed on rank 1" "$TMP/control_comm_np$np.log" ||
        { echo "FAIL control_comm_np$np: the other ranks do not name rank 1"; fails=$((fails + 1)); }
done
# The gradient communicator, after the data and backend (ddp-bench train: synthetic data).
DDP_INJECT_FAULT=comm_create:1:2 run gradient_comm nonzero \
    "rank 0\\] error: creating the communicator: creating the MPI communicator failed on rank 1" -- \
    $MPI -np 2 "$BENCH" train --hidden 32 --batch 32 --threads 1 --steps 1 --json "$TMP/b.json"
DDP_INJECT_FAULT=comm_create:1:2 run allreduce_comm nonzero \
    "rank 1\\] error: creating the communicator: creating a communicator: injected local failure" -- \
    $MPI -np 2 "$BENCH" allreduce --max-bytes 1K --json "$TMP/a.json"

script_finish
