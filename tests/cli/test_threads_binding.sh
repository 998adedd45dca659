#!/usr/bin/env bash
# --threads beyond the CPUs a rank may run on: ddp-train warns, naming the binding and the
# way out, where taskset (or a launcher) bound it to fewer; it does not where they fit.
# Needs DDP_TRAIN and MPIEXEC, taskset; Fashion-MNIST in DATA (default below).
set -u
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-threads data
if ! command -v taskset >/dev/null; then
    echo "skip: no taskset (util-linux)"
    exit 77
fi
ln -s "$DATA" "$TMP/data"
ONE_STEP=(--data "$TMP/data" --hidden 16 --batch 32 --steps 1 --quiet)
WARNING='--threads 2 is more than the 1 CPU this rank may run on.*mpirun --bind-to none.*launch/ddp-run'

run bound_to_one_cpu 0 "$WARNING" -- taskset -c 0 "$TRAIN" "${ONE_STEP[@]}" --threads 2
run one_thread_on_one_cpu 0 "" -- taskset -c 0 "$TRAIN" "${ONE_STEP[@]}" --threads 1
check one_thread_is_not_warned_about \
    bash -c "! grep -q 'more than the' '$TMP/one_thread_on_one_cpu.log'"
# The case of the issue: mpirun binds a single rank to one core.
if [ "$(nproc)" -ge 2 ]; then
    run mpirun_binds_one_rank 0 "$WARNING" -- \
        $MPI -np 1 --bind-to core "$TRAIN" "${ONE_STEP[@]}" --threads 2
    run mpirun_unbound 0 "" -- $MPI -np 1 --bind-to none "$TRAIN" "${ONE_STEP[@]}" --threads 2
    check unbound_is_not_warned_about bash -c "! grep -q 'more than the' '$TMP/mpirun_unbound.log'"
fi
script_finish
