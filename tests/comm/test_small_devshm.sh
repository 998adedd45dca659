#!/usr/bin/env bash
# Gradients go to node-shared memory only where /dev/shm has room for them: with a
# /dev/shm too small (a container's, say), training on 2 ranks must fall back to MPI
# with a warning and finish, not hang or die of SIGBUS; with room, no warning. The JSON's
# shared_gradients says which one the trainer used.
# Usage: test_small_devshm.sh PATH-TO-ddp-bench. Needs root and unshare(1) for a
# private /dev/shm; exits 77 (skipped) without them.
set -u
BENCH=${1:?usage: test_small_devshm.sh PATH-TO-ddp-bench}
MPIEXEC=${MPIEXEC:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null; then
    echo "skip: a private /dev/shm needs root and unshare"
    exit 77
fi
if ! unshare -m true 2>/dev/null; then
    echo "skip: this machine refuses new mount namespaces"
    exit 77
fi
TMP=$(mktemp -d /tmp/ddp-devshm-test.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

# run SIZE LOG: 2 ranks, 7.5 MB of gradients each, in a mount namespace whose /dev/shm
# holds SIZE; the results go to LOG.json.
run() {
    timeout -k 5 120 unshare -m bash -c "mount -t tmpfs -o size=$1 tmpfs /dev/shm &&
        exec $MPIEXEC --oversubscribe -np 2 $BENCH train --hidden 1024,1024 --batch 256 \
            --threads 1 --warmup-steps 1 --steps 2 --json $2.json" >"$2" 2>&1
}
# shared_gradients LOG: the value of shared_gradients in LOG.json (true or false).
shared_gradients() {
    python3 -c 'import json, sys; print(str(json.load(open(sys.argv[1]))["shared_gradients"]).lower())' \
        "$1.json" 2>/dev/null
}

run 12m "$TMP/small.log"
rc=$?
if [ $rc -ne 0 ]; then
    echo "FAIL small /dev/shm: exit status $rc (124: it hung)"; tail -20 "$TMP/small.log"; fails=$((fails + 1))
elif ! grep -q "/dev/shm has too little room" "$TMP/small.log"; then
    echo "FAIL small /dev/shm: no warning that it fell back to MPI"; fails=$((fails + 1))
elif ! grep -q '"samples_per_s"' "$TMP/small.log"; then
    echo "FAIL small /dev/shm: no results"; fails=$((fails + 1))
elif [ "$(shared_gradients "$TMP/small.log")" != false ]; then
    echo "FAIL small /dev/shm: shared_gradients is '$(shared_gradients "$TMP/small.log")', not false"
    fails=$((fails + 1))
else
    echo "ok   /dev/shm of 12 MB: fell back to MPI with a warning and finished (shared_gradients false)"
fi

run 96m "$TMP/room.log"
rc=$?
if [ $rc -ne 0 ] || grep -q "too little room" "$TMP/room.log"; then
    echo "FAIL /dev/shm with room: exit status $rc, or a needless warning"
    tail -20 "$TMP/room.log"; fails=$((fails + 1))
elif [ "$(shared_gradients "$TMP/room.log")" != true ]; then
    echo "FAIL /dev/shm with room: shared_gradients is '$(shared_gradients "$TMP/room.log")', not true"
    fails=$((fails + 1))
else
    echo "ok   /dev/shm of 96 MB: gradients in shared memory (shared_gradients true), no warning"
fi
[ $fails -eq 0 ] || exit 1
