#!/usr/bin/env bash
# The hierarchical collectives across nodes (--hierarchical), on an emulated cluster of 3
# nodes (cluster/emu): test_comm under mpirun with 2x2 ranks, uneven nodes (2+1, 1+3,
# 2+2+1) and ranks placed round-robin (not consecutive per node) checks that the scheme is
# on exactly where it should be and that its all-reduce, reduce-scatter and all-gather
# equal the flat ones (exact on integers, within the rounding bound of the two orders on
# random values, the same bits on every rank); on 2x1 it must be off. Then the bytes each
# node sends for a hierarchical all-reduce, read from its link's counter, are 2(N-1)/N of
# the buffer per all-reduce (plus TCP/IP's headers; the flat all-reduce's bytes are shown
# beside them: what MPI's own algorithm sends depends on the size); and
# a rank failing inside a hierarchical all-reduce ends the job on every node in bounded
# time. The cluster is always removed at the end.
#
#   test_hierarchical.sh TEST_COMM DDP_BENCH   (the built tests/comm/test_comm and ddp-bench)
# Needs root (network namespaces), iproute2, python3; MPIEXEC (default mpirun). Exits 77
# (skipped) without root or namespaces.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EMU=$ROOT/cluster/emu
TEST_COMM=${1:?usage: test_hierarchical.sh TEST_COMM DDP_BENCH}
BENCH=${2:?usage: test_hierarchical.sh TEST_COMM DDP_BENCH}
MPIEXEC=${MPIEXEC:-mpirun}

if [[ $(id -u) -ne 0 ]]; then
    echo "skip: the emulated cluster needs root (network namespaces)"
    exit 77
fi
command -v ip >/dev/null || {
    echo "skip: iproute2 is not installed"
    exit 77
}
if ! ip netns add "ddph-probe$$" 2>/dev/null; then
    echo "skip: this machine refuses network namespaces (no CAP_SYS_ADMIN/NET_ADMIN)"
    exit 77
fi
ip netns del "ddph-probe$$"

TMP=$(mktemp -d /tmp/ddp-hier-test.XXXXXX)
PREFIX=ddph$$
EMU_DIR=$TMP/emu
cleanup() {
    "$EMU" down --dir "$EMU_DIR" --prefix "$PREFIX" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1

fails=0
ok() { echo "ok   $1"; }
bad() {
    echo "FAIL $1"
    fails=$((fails + 1))
}
show() { tail -n 25 "$1" | sed 's/^/     | /'; }

echo "== bringing up 3 emulated nodes ($PREFIX)"
"$EMU" up 3 --dir "$EMU_DIR" --prefix "$PREFIX" >/dev/null
H0=10.77.0.1 H1=10.77.0.2 H2=10.77.0.3

# mpi NAME EXPECT MPIRUN-ARGS...: test_comm on the cluster, the scheme expected on or off.
mpi() {
    local name=$1 expect=$2 rc=0
    shift 2
    timeout -k 10 120 "$EMU" run --dir "$EMU_DIR" -- "$MPIEXEC" --oversubscribe \
        -x DDP_TEST_EXPECT_HIERARCHICAL="$expect" "$@" "$TEST_COMM" >"$TMP/$name.log" 2>&1 ||
        rc=$?
    if ((rc == 0)); then
        ok "$name: test_comm passed (hierarchical expected $expect)"
    else
        show "$TMP/$name.log"
        bad "$name: test_comm failed with exit status $rc"
    fi
}
mpi 2x2 1 -np 4 -H $H0:2,$H1:2 --map-by slot
mpi 2+1 1 -np 3 -H $H0:2,$H1:1 --map-by slot
mpi 1+3 1 -np 4 -H $H0:1,$H1:3 --map-by slot
mpi 2+2+1 1 -np 5 -H $H0:2,$H1:2,$H2:1 --map-by slot
mpi 2x2-round-robin 1 -np 4 -H $H0:2,$H1:2 --map-by node
mpi 2x1 0 -np 2 -H $H0:1,$H1:1 --map-by slot

# Bytes sent by each node's link: "host0_tx host1_tx".
sent() {
    local h out=""
    for h in 0 1; do
        out+="$(ip netns exec "$PREFIX$h" cat /sys/class/net/eth0/statistics/tx_bytes) "
    done
    echo "$out"
}
# wire NAME ARGS...: ddp-bench allreduce of 16 MiB, 1 check + 1 warm-up + 4 timed, on 2x2;
# prints each node's bytes sent per all-reduce, in units of the buffer.
MB=16
wire() {
    local name=$1 before after rc=0
    shift
    read -r -a before <<<"$(sent)"
    timeout -k 10 120 "$EMU" run --dir "$EMU_DIR" -- "$MPIEXEC" --oversubscribe -np 4 \
        -H $H0:2,$H1:2 --map-by slot "$BENCH" allreduce --min-bytes ${MB}M --max-bytes ${MB}M \
        --iters 4 --warmup-iters 1 "$@" >"$TMP/$name.log" 2>&1 || rc=$?
    read -r -a after <<<"$(sent)"
    if ((rc != 0)); then
        show "$TMP/$name.log"
        bad "$name: ddp-bench allreduce failed with exit status $rc"
        echo "0 0"
        return
    fi
    python3 -c "import sys; b=$MB*2**20*6; print(' '.join(f'{(int(a)-int(c))/b:.3f}' for a, c in zip(sys.argv[1].split(), sys.argv[2].split())))" \
        "${after[*]}" "${before[*]}"
}
read -r h0 h1 <<<"$(wire hier --shared --hierarchical on)"
read -r f0 f1 <<<"$(wire flat --hierarchical off)"
echo "   per all-reduce, in buffers: hierarchical node 0 $h0, node 1 $h1; flat $f0, $f1"
# 2(N-1)/N = 1 buffer per node for N = 2, plus headers and the acknowledgements of what
# the node receives (about 7% at an MTU of 1500), plus the benchmark's small collectives.
for v in $h0 $h1; do
    if python3 -c "import sys; sys.exit(not 1.0 <= $v <= 1.15)"; then
        ok "hierarchical: a node sent $v buffers per all-reduce (2(N-1)/N = 1, plus headers)"
    else
        bad "hierarchical: a node sent $v buffers per all-reduce, not 1.0-1.15"
    fi
done
# A rank whose 3rd hierarchical all-reduce fails: every rank ends, in bounded time.
start=$(date +%s)
rc=0
timeout -k 10 120 "$EMU" run --dir "$EMU_DIR" -- "$MPIEXEC" --oversubscribe -np 4 \
    -H $H0:2,$H1:2 --map-by slot -x DDP_INJECT_FAULT=allreduce:3:3 "$BENCH" allreduce \
    --shared --min-bytes 1M --max-bytes 1M --iters 4 --warmup-iters 1 --timeout 10 \
    >"$TMP/fault.log" 2>&1 || rc=$?
took=$(($(date +%s) - start))
if ((rc != 0 && rc != 124 && rc != 137 && took < 60)) && grep -q "injected" "$TMP/fault.log"; then
    ok "a failed hierarchical all-reduce ended the job in $took s (exit $rc), naming the fault"
else
    show "$TMP/fault.log"
    bad "a failed hierarchical all-reduce: exit $rc after $took s"
fi
left=0
for h in 0 1 2; do left=$((left + $(ip netns pids "$PREFIX$h" | wc -l))); done
((left == 0)) && ok "no process left on the nodes" || bad "$left process(es) left on the nodes"

if ((fails)); then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all checks passed"
