#!/usr/bin/env bash
# Training across nodes gives the parameters of training in one process: ddp-train runs
# for a few steps on an emulated 2-node cluster (cluster/emu: network namespaces joined by
# a bridge), started through launch/ddp-run, as 2 nodes x 1 rank and 2 nodes x 2 ranks;
# its final parameters match a single-process run to a relative error under 1e-5, the
# gradients really crossed the emulated links (each node sent at least one gradient's
# bytes per step), no process is left behind on any node, and the ranks of every node yield
# while they wait (the nodes share the machine's cores). The cluster is always removed at
# the end.
#
# Needs root (network namespaces), iproute2, python3; DDP_TRAIN (path to ddp-train),
# MPIEXEC (default mpirun) and Fashion-MNIST in DDP_FASHION_MNIST (default below).
# Exits 77 (skipped) without root or iproute2.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EMU=$ROOT/cluster/emu
RUN=$ROOT/launch/ddp-run
TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
MPIEXEC=${MPIEXEC:-mpirun}
DATA=${DDP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
STEPS=5

if [[ $(id -u) -ne 0 ]]; then
    echo "skip: the emulated cluster needs root (network namespaces)"
    exit 77
fi
for tool in ip unshare python3; do
    command -v "$tool" >/dev/null || {
        echo "skip: $tool is not installed"
        exit 77
    }
done
# Root in a container may still lack the capability for network namespaces.
if ! ip netns add "ddpt-probe$$" 2>/dev/null; then
    echo "skip: this machine refuses network namespaces (no CAP_SYS_ADMIN/NET_ADMIN)"
    exit 77
fi
ip netns del "ddpt-probe$$"
[[ -x $TRAIN && -f $TRAIN ]] || {
    echo "FAIL: DDP_TRAIN='$TRAIN' is not an executable file: build ddp-train first"
    exit 1
}
[[ -d $DATA ]] || {
    echo "FAIL: Fashion-MNIST not found in $DATA (apt-get install dataset-fashion-mnist)"
    exit 1
}

# A cluster of its own (prefix and directory), so that a cluster someone has up stays.
TMP=$(mktemp -d /tmp/ddp-cluster-test.XXXXXX)
PREFIX=ddpt$$
EMU_DIR=$TMP/emu
cleanup() {
    "$EMU" down --dir "$EMU_DIR" --prefix "$PREFIX" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Constant learning rate, no warm-up: the parameters move enough in a few steps that a
# wrong gradient would show. --check-sync 1: ddp-train itself checks after every step
# that all ranks hold identical parameters.
# fp32 gradients: the traffic check below counts 4 bytes per parameter.
ARGS=(--data "$DATA" --steps "$STEPS" --batch 64 --schedule constant --warmup 0 --lr 0.05
    --seed 7 --check-sync 1 --grad-dtype fp32 --quiet)

fails=0
ok() { echo "ok   $1"; }
bad() {
    echo "FAIL $1"
    fails=$((fails + 1))
}
show() { while IFS= read -r l; do echo "     | $l"; done <"$1" | tail -n 30; }

# compare A B: B is the reference; bitwise equal, or relative L2 error under 1e-5.
compare() { python3 "$ROOT/tests/compare_params.py" "$1" "$2"; }

# Bytes sent by the eth0 of each host: "host0_tx host1_tx".
sent() {
    local h out=""
    for h in 0 1; do
        out+="$(ip netns exec "$PREFIX$h" cat /sys/class/net/eth0/statistics/tx_bytes) "
    done
    echo "$out"
}

leftovers() {
    local h n=0
    for h in 0 1; do
        n=$((n + $(ip netns pids "$PREFIX$h" | wc -l)))
    done
    echo "$n"
}

# A run of this test that was killed (a CTest timeout) could not remove its cluster.
for ns in $(ip netns list | awk '{print $1}' | sed -n 's/^ddpt\([0-9][0-9]*\)-sw$/\1/p'); do
    if ! kill -0 "$ns" 2>/dev/null; then
        echo "== removing the cluster of an earlier run that was killed: ddpt$ns"
        "$EMU" down --dir "$TMP/stale" --prefix "ddpt$ns" || true
    fi
done

echo "== bringing up 2 emulated nodes ($PREFIX)"
"$EMU" up 2 --dir "$EMU_DIR" --prefix "$PREFIX"

echo "== reference: one process"
if ! OPENBLAS_NUM_THREADS=1 timeout -k 5 180 "$MPIEXEC" -np 1 "$TRAIN" "${ARGS[@]}" \
    --dump-params "$TMP/ref.bin" >"$TMP/ref.log" 2>&1; then
    show "$TMP/ref.log"
    echo "FAIL the single-process reference run failed; nothing to compare with"
    exit 1
fi
grad_bytes=$(stat -c %s "$TMP/ref.bin")
echo "   $((grad_bytes / 4)) parameters, $grad_bytes gradient bytes per step"

# on_cluster NAME NP: NP ranks over the 2 nodes through the launcher, then the checks.
on_cluster() {
    local name=$1 np=$2 before after rc=0
    echo "== $name: $np ranks on 2 nodes"
    read -r -a before <<<"$(sent)"
    timeout -k 10 240 "$EMU" run --dir "$EMU_DIR" -- "$RUN" -n "$np" --bin "$TRAIN" -- \
        "${ARGS[@]}" --dump-params "$TMP/$name.bin" >"$TMP/$name.log" 2>&1 || rc=$?
    read -r -a after <<<"$(sent)"
    if ((rc != 0)); then
        show "$TMP/$name.log"
        bad "$name: the run failed with exit status $rc"
        return
    fi
    ok "$name: the run finished"
    grep -q "on 2 nodes" "$TMP/$name.log" && ok "$name: the launcher placed the ranks on 2 nodes" ||
        bad "$name: the launcher did not place the ranks on 2 nodes: $(grep '^ddp-run:' "$TMP/$name.log")"
    local msg
    if msg=$(compare "$TMP/$name.bin" "$TMP/ref.bin" 2>&1); then
        ok "$name: parameters match one process ($msg)"
    else
        bad "$name: parameters differ from one process: $msg"
    fi
    # With two nodes each must send the other at least one gradient's bytes per step,
    # whatever the all-reduce algorithm: the other node needs this node's contribution
    # to every element.
    local h d need=$((STEPS * grad_bytes))
    for h in 0 1; do
        d=$((after[h] - before[h]))
        if ((d >= need)); then
            ok "$name: node $h sent $d bytes over its link (at least $STEPS x $grad_bytes)"
        else
            bad "$name: node $h sent only $d bytes over its link, expected at least $need"
        fi
    done
    local left
    left=$(leftovers)
    ((left == 0)) && ok "$name: no process left on the nodes" ||
        bad "$name: $left process(es) left on the nodes"
}

on_cluster 2x1 2
on_cluster 2x2 4

# Every host's ranks share this machine's cores, which Open MPI cannot see: emu run makes
# waiting ranks yield on every host (Open MPI forwards its MCA variables to the ranks),
# unless the environment chose already.
yield_of() { # what each of 2 ranks, one per host, sees of OMPI_MCA_mpi_yield_when_idle
    timeout -k 5 60 "$EMU" run --dir "$EMU_DIR" -- "$MPIEXEC" -np 2 --map-by node \
        -H 10.77.0.1,10.77.0.2 sh -c 'echo "rank$OMPI_COMM_WORLD_RANK=${OMPI_MCA_mpi_yield_when_idle:-unset}"' |
        sort | tr '\n' ' '
}
got=$(yield_of) || true
[[ $got == "rank0=1 rank1=1 " ]] && ok "waiting ranks yield on both hosts ($got)" ||
    bad "emu run should set OMPI_MCA_mpi_yield_when_idle=1 on both hosts, the ranks saw: $got"
got=$(OMPI_MCA_mpi_yield_when_idle=0 yield_of) || true
[[ $got == "rank0=0 rank1=0 " ]] && ok "the environment's choice is kept ($got)" ||
    bad "emu run should keep OMPI_MCA_mpi_yield_when_idle=0 from the environment, the ranks saw: $got"

if ((fails)); then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all checks passed"
