#!/usr/bin/env bash
# --threads beyond the CPUs a rank may run on: ddp-train warns, naming the binding and the
# way out, where taskset (or a launcher) bound it to fewer; it does not where they fit.
# More ranks on a node than its CPUs, waiting by spinning in MPI: warned about once, with
# the way out; not where the ranks yield (set in the environment, or by Open MPI itself on
# a node it counts oversubscribed), and every such run trains to its end.
# A rank whose MPI gives it a lower thread level than the others': the job runs at the
# lowest, warned about, and does not hang.
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
# mpirun -H localhost:N promises N slots, so Open MPI does not count the node
# oversubscribed and its waiting ranks spin (on a machine of at most 4 CPUs: one rank per
# CPU and one more).
cpus=$(nproc)
if [ "$cpus" -le 4 ]; then
    n=$((cpus + 1))
    STEPS=(--data "$TMP/data" --hidden 16 --batch $((8 * n)) --steps 2 --quiet)
    SPIN="$n ranks share this node's [0-9]+ CPUs? and wait in MPI by spinning.*OMPI_MCA_mpi_yield_when_idle=1"
    run ranks_outnumber_cpus 0 "$SPIN" -- $MPI -np "$n" -H "localhost:$n" "$TRAIN" "${STEPS[@]}"
    check spinning_is_warned_about_once \
        bash -c "[ \$(grep -c 'wait in MPI by spinning' '$TMP/ranks_outnumber_cpus.log') -eq 1 ]"
    # Reading whether the ranks yield must leave MPI's thread level alone: it once turned
    # rank 0's communication thread off and the job hung.
    run ranks_that_yield 0 "" -- $MPI -np "$n" -H "localhost:$n" \
        -x OMPI_MCA_mpi_yield_when_idle=1 "$TRAIN" "${STEPS[@]}"
    check yielding_ranks_are_not_warned_about \
        bash -c "! grep -q 'by spinning' '$TMP/ranks_that_yield.log'"
    run ranks_oversubscribed 0 "" -- $MPI -np "$n" "$TRAIN" "${STEPS[@]}"
    check open_mpi_yields_where_it_counts_oversubscription \
        bash -c "! grep -q 'by spinning' '$TMP/ranks_oversubscribed.log'"
fi
# A rank that MPI gives a lower thread level than the others (a library installed apart):
# every rank runs at the lowest level, rank 0 names the rank, and the job trains to its
# end. Ranks at different levels once progressed their all-reduces differently (blocking
# calls on a thread against non-blocking ones), which never match: the job hung until the
# watchdog's --timeout.
run one_rank_without_thread_multiple 0 \
    "MPI gave rank 1 only MPI_THREAD_SINGLE .*every rank runs at MPI_THREAD_SINGLE" -- \
    $MPI -np 2 -x DDP_INJECT_FAULT=thread_single:1:1 "$TRAIN" --data "$TMP/data" --hidden 16 \
    --batch 32 --steps 3 --quiet --timeout 20
# The same where rank 0, which warns, is the one with less.
run rank_0_without_thread_multiple 0 \
    "MPI gave rank 0 only MPI_THREAD_SINGLE and other ranks up to MPI_THREAD_MULTIPLE" -- \
    $MPI -np 2 -x DDP_INJECT_FAULT=thread_single:0:1 "$TRAIN" --data "$TMP/data" --hidden 16 \
    --batch 32 --steps 3 --quiet --timeout 20
script_finish
