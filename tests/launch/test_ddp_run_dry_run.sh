#!/usr/bin/env bash
# launch/ddp-run builds the mpirun command line that the ranks of a run need: the rank
# count, the nodes, one share of the node's cores as BLAS threads per rank, binding or
# --oversubscribe as the slots allow, the environment that must reach the ranks and the
# run-as-root consent; it prints that line so that a shell can run it as it is, exits with
# mpirun's status, and refuses bad usage with a message. No cluster needed: --dry-run
# prints, a stand-in mpirun shows what would be run, and the real mpirun starts a
# trivial program on this node.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=$HERE/../../launch/ddp-run
TMP=$(mktemp -d /tmp/ddp-run-test.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# The answers below must not depend on the environment the test runs in.
unset OMPI_MCA_hwloc_base_binding_policy OMPI_MCA_orte_default_hostfile DDP_CORES_PER_NODE
unset NCCL_DEBUG DDP_DEMO_FLAG OMPI_MCA_btl NOT_PASSED
REAL_MPIRUN=${MPIEXEC:-$(command -v mpirun || true)}
export MPIEXEC=$TMP/no-mpirun # dry runs must not need one

fails=0
ok() { echo "ok   $1"; }
bad() {
    echo "FAIL $1"
    fails=$((fails + 1))
}

# dry ARGS...: runs ddp-run --dry-run ARGS, sets OUT (all it printed), LINE (the command
# line without its "+ ") and WORDS (LINE split as a shell would split it).
dry() {
    OUT=$("$RUN" --dry-run "$@" 2>&1) || {
        echo "ddp-run --dry-run $* failed:"
        while IFS= read -r l; do echo "     | $l"; done <<<"$OUT"
        return 1
    }
    LINE=$(grep '^+ ' <<<"$OUT" | sed 's/^+ //') || true
    WORDS=()
    eval "WORDS=($LINE)"
}

# has NAME WORD...: the command line holds these words one after another.
has() {
    local name=$1
    shift
    local -a want=("$@")
    local i j n=${#want[@]}
    for ((i = 0; i + n <= ${#WORDS[@]}; i++)); do
        for ((j = 0; j < n; j++)); do
            [[ ${WORDS[i + j]} == "${want[j]}" ]] || continue 2
        done
        ok "$name"
        return
    done
    bad "$name: no '${want[*]}' in: $LINE"
}

# lacks NAME WORD: the command line does not hold WORD.
lacks() {
    local w
    for w in "${WORDS[@]}"; do
        if [[ $w == "$2" ]]; then
            bad "$1: unexpected '$2' in: $LINE"
            return
        fi
    done
    ok "$1"
}

# refuses NAME PATTERN ARGS...: ddp-run ARGS exits non-zero with a message matching
# PATTERN (extended regex) and starts nothing.
refuses() {
    local name=$1 pattern=$2 out rc=0
    shift 2
    out=$("$RUN" "$@" 2>&1) || rc=$?
    if ((rc == 0)); then
        bad "$name: exit status 0 for: ddp-run $*"
    elif ! grep -Eq -e "$pattern" <<<"$out"; then
        bad "$name: message does not match /$pattern/: $out"
    elif grep -q '^+ ' <<<"$out"; then
        bad "$name: printed a command line although the usage was bad"
    else
        ok "$name (exit $rc: $(head -n 1 <<<"$out"))"
    fi
}

# ---- the command line ------------------------------------------------------------------

dry -n 4 --cores-per-node 8 --bin /opt/ddp/ddp-train -- --epochs 1 --name "a b"
has "-np is the rank count" -np 4
has "4 ranks on 8 cores get 2 BLAS threads each" -x OPENBLAS_NUM_THREADS=2
has "and 2 OpenMP threads" -x OMP_NUM_THREADS=2
has "a rank with 2 threads is bound to 2 cores" --map-by slot:PE=2 --bind-to core
lacks "4 ranks fit 8 slots: no --oversubscribe" --oversubscribe
has "the program and its arguments come last, quoted" /opt/ddp/ddp-train --epochs 1 --name "a b"
[[ $(grep -c '^+ ' <<<"$OUT") -eq 1 ]] && ok "one command line" || bad "one command line: $OUT"
if [[ $(id -u) -eq 0 ]]; then
    [[ $LINE == "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "* ]] &&
        ok "root gets Open MPI's consent" || bad "root gets Open MPI's consent: $LINE"
else
    [[ $LINE != *OMPI_ALLOW_RUN_AS_ROOT* ]] &&
        ok "no run-as-root consent without root" || bad "no run-as-root consent without root: $LINE"
fi

dry -n 8 --cores-per-node 4 --bin /bin/true
has "8 ranks on 4 cores: oversubscribed" --oversubscribe
has "oversubscribed ranks are not bound" --bind-to none
has "at least one thread per rank" -x OPENBLAS_NUM_THREADS=1

printf '# two nodes\nnode1 slots=4\nnode2 slots=4 # second\n\n' >"$TMP/hosts"
pushd "$TMP" >/dev/null
dry -n 8 --hostfile hosts --cores-per-node 8 --bin /bin/true
popd >/dev/null
has "the hostfile is passed by its full path" --hostfile "$TMP/hosts"
has "4 ranks per node of 8 cores: 2 threads" -x OPENBLAS_NUM_THREADS=2
lacks "8 ranks in 8 slots: no --oversubscribe" --oversubscribe
grep -q "on 2 nodes" <<<"$OUT" && ok "the plan names 2 nodes" || bad "the plan names 2 nodes: $OUT"

dry -n 10 --hostfile "$TMP/hosts" --cores-per-node 8 --bin /bin/true
has "10 ranks in 8 slots: oversubscribed" --oversubscribe
has "5 ranks on a node of 8 cores: 1 thread" -x OPENBLAS_NUM_THREADS=1

dry -n 6 --hosts a:2,b:2 --cores-per-node 6 --bin /bin/true
has "--hosts goes to --host" --host a:2,b:2
has "6 ranks in 4 slots: oversubscribed" --oversubscribe
has "3 ranks on a node of 6 cores: 2 threads" -x OPENBLAS_NUM_THREADS=2

dry -n 8 --hosts gpu1:4,gpu2:4 --gpus-per-node 4 --cores-per-node 32 --bin /bin/true
has "one rank per GPU, 8 cores each" --map-by ppr:4:node:PE=8 --bind-to core
has "32 cores / 4 ranks: 8 threads" -x OPENBLAS_NUM_THREADS=8

dry -n 2 --cores-per-node 16 --cpus-per-rank 3 --bin /bin/true
has "--cpus-per-rank sets the threads" -x OPENBLAS_NUM_THREADS=3
has "and the cores bound to each rank" --map-by slot:PE=3

dry -n 2 --cores-per-node 16 --bind-to socket --bin /bin/true
has "--bind-to overrides the binding" --bind-to socket

OMPI_MCA_hwloc_base_binding_policy=none dry -n 2 --cores-per-node 16 --bin /bin/true
lacks "a binding policy from the environment is left alone" --bind-to

NCCL_DEBUG=INFO DDP_DEMO_FLAG=1 OMPI_MCA_btl=self,tcp NOT_PASSED=1 \
    dry -n 2 --cores-per-node 2 --env "EXTRA=x y" --rsh-agent "/x/agent -v" \
    --mpi-arg --tag-output --bin /bin/true
has "NCCL_* reaches the ranks" -x NCCL_DEBUG
has "DDP_* reaches the ranks" -x DDP_DEMO_FLAG
has "OMPI_MCA_* reaches the ranks" -x OMPI_MCA_btl
lacks "other variables do not" NOT_PASSED
has "--env NAME=VALUE" -x "EXTRA=x y"
has "--rsh-agent" --mca plm_rsh_agent "/x/agent -v"
has "--mpi-arg goes before the program" --tag-output /bin/true

OMPI_MCA_orte_default_hostfile=$TMP/hosts dry -n 2 --cores-per-node 8 --bin /bin/true
has "the environment's default hostfile is used" --hostfile "$TMP/hosts"

DDP_CORES_PER_NODE=6 dry -n 3 --bin /bin/true
has "\$DDP_CORES_PER_NODE gives the cores" -x OPENBLAS_NUM_THREADS=2

# ---- bad usage -------------------------------------------------------------------------

refuses "no -n" "-n N" --bin /bin/true
refuses "-n 0" "positive number of ranks" -n 0 --bin /bin/true
refuses "-n x" "positive number of ranks" -n x --bin /bin/true
refuses "-n without a value" "needs a value" -n
refuses "missing hostfile" "hostfile '/nonexistent/hosts' does not exist" -n 2 --hostfile /nonexistent/hosts
: >"$TMP/empty"
refuses "empty hostfile" "lists no hosts" -n 2 --hostfile "$TMP/empty" --bin /bin/true
printf 'node1 slots=4 cpus=9\n' >"$TMP/badhosts"
refuses "unreadable hostfile line" "badhosts:1: cannot read 'cpus=9'" -n 2 --hostfile "$TMP/badhosts" --bin /bin/true
refuses "--hostfile and --hosts" "either --hostfile or --hosts" -n 2 --hostfile "$TMP/hosts" --hosts a:1
refuses "bad --hosts" "cannot read 'a:b'" -n 2 --hosts a:b --bin /bin/true
refuses "too few nodes for the GPUs" "need 3 nodes, but only 2" -n 9 --hosts a:4,b:4 --gpus-per-node 4 --bin /bin/true
refuses "--gpus-per-node 0" "positive" -n 2 --gpus-per-node 0 --bin /bin/true
refuses "unknown option" "unknown option '--steps'.*after --" -n 2 --steps 5
refuses "stray argument" "after --" -n 2 ddp-train
refuses "--env of an unset variable" "NOT_PASSED is not set" -n 2 --env NOT_PASSED --bin /bin/true
refuses "--restarts without --checkpoint-dir" "needs ddp-train.s --checkpoint-dir" -n 2 --restarts 3 -- --steps 5
refuses "--restarts that is not a number" "must be a number" -n 2 --restarts x -- --checkpoint-dir d
refuses "missing program" "not an executable file" -n 1 --bin "$TMP/none" --mpirun /bin/true
DDP_TRAIN=$TMP/none refuses "\$DDP_TRAIN that does not exist" "not an executable file" -n 1 --mpirun /bin/true

"$RUN" --help | grep -q '^usage: ddp-run -n N' && ok "--help" || bad "--help"

# ---- running ---------------------------------------------------------------------------

# A stand-in mpirun records its arguments and environment and exits with status 7.
cat >"$TMP/fake-mpirun" <<EOF
#!/bin/sh
printf '%s\n' "\$@" >"$TMP/fake.args"
echo "\${OMPI_ALLOW_RUN_AS_ROOT:-unset}" >"$TMP/fake.root"
exit 7
EOF
chmod +x "$TMP/fake-mpirun"
rc=0
out=$("$RUN" -n 3 --cores-per-node 6 --mpirun "$TMP/fake-mpirun" --bin /bin/echo -- "x y" 2>&1) || rc=$?
((rc == 7)) && ok "the exit status is mpirun's" || bad "the exit status is mpirun's: got $rc; $out"
LINE=$(grep '^+ ' <<<"$out" | sed 's/^+ //')
WORDS=()
eval "WORDS=($LINE)"
printed=("${WORDS[@]}")
while [[ ${printed[0]} == *=* ]]; do printed=("${printed[@]:1}"); done
mapfile -t ran <"$TMP/fake.args"
[[ "$(printf '%s\n' "${printed[@]:1}")" == "$(printf '%s\n' "${ran[@]}")" ]] &&
    ok "the printed line is the one that ran" ||
    bad "the printed line is the one that ran: printed '${printed[*]:1}', ran '${ran[*]}'"
if [[ $(id -u) -eq 0 ]]; then
    [[ $(cat "$TMP/fake.root") == 1 ]] && ok "root's consent reaches mpirun" || bad "root's consent reaches mpirun"
fi
touch "$TMP/marker"
"$RUN" -n 1 --dry-run --mpirun "$TMP/fake-mpirun" --bin /bin/true >/dev/null 2>&1
[[ ! -e $TMP/fake.args || $TMP/fake.args -ot $TMP/marker ]] && ok "--dry-run runs nothing" ||
    bad "--dry-run runs nothing"

# The real mpirun accepts the line: 2 ranks on this node, each told its thread count.
if [[ -n $REAL_MPIRUN && -x $REAL_MPIRUN ]]; then
    cores=$(nproc)
    rc=0
    # shellcheck disable=SC2016 # expanded by the ranks
    out=$(timeout -k 5 60 "$RUN" -n 2 --mpirun "$REAL_MPIRUN" --bin /bin/sh -- \
        -c 'echo "rank threads=$OPENBLAS_NUM_THREADS"' 2>&1) || rc=$?
    n=$(grep -c '^rank threads=[1-9]' <<<"$out" || true)
    ((rc == 0 && n == 2)) && ok "mpirun runs 2 ranks on $cores cores with the line" ||
        bad "mpirun runs 2 ranks on $cores cores with the line (exit $rc): $out"
    rc=0
    out=$(timeout -k 5 60 "$RUN" -n $((cores + 1)) --mpirun "$REAL_MPIRUN" --bin /bin/true 2>&1) || rc=$?
    ((rc == 0)) && ok "mpirun runs $((cores + 1)) ranks on $cores cores (oversubscribed)" ||
        bad "mpirun runs $((cores + 1)) ranks on $cores cores (exit $rc): $out"
    rc=0
    out=$(timeout -k 5 60 "$RUN" -n 1 --mpirun "$REAL_MPIRUN" --bin /bin/sh -- -c 'exit 3' 2>&1) || rc=$?
    ((rc == 3)) && ok "a failing rank's status comes back through mpirun" ||
        bad "a failing rank's status comes back through mpirun: got $rc: $out"
else
    echo "skip running: no mpirun"
fi

if ((fails)); then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all checks passed"
