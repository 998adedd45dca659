#!/usr/bin/env bash
# ZeRO-3's gathers under failure: a rank stopped (SIGSTOP) or killed (SIGKILL) while the
# others wait for it in a gather of the parameters ends the whole job within --timeout,
# the watchdog naming the all-gather and the step; a gather that fails on one rank
# (DDP_INJECT_FAULT) ends it promptly, naming the gather. To land the fault in a gather,
# rank 1 sleeps before each of its all-gathers (DDP_INJECT_DELAY), so the others spend
# most of the run waiting there.
# Needs: DDP_TRAIN (path to ddp-train), MPIEXEC; Fashion-MNIST in DATA (default below).
set -u
TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
MPIEXEC=${MPIEXEC:-mpirun}
DATA=${DDP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
WD=5
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d /tmp/ddp-gather-failures.XXXXXX)
MPI="$MPIEXEC --oversubscribe"
fails=0 passes=0

ours() { pgrep -f "^$TRAIN .*$TMP" || true; }
kill_ours() {
    local p
    for p in $(ours); do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
}
cleanup() {
    kill_ours
    rm -rf "$TMP"
}
trap cleanup EXIT

if [ ! -d "$DATA" ]; then
    echo "Fashion-MNIST not found in $DATA (apt-get install dataset-fashion-mnist)"; exit 1
fi
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

# Each rank its own name for the data (links to the same files), so pgrep finds one rank.
for r in 0 1; do ln -s "$DATA" "$TMP/data.r$r"; done
ZERO3=(--zero 3 --hidden 256,128,64 --batch 64 --accum 2 --steps 1000000 --log-every 1
    --timeout "$WD")
args_for() {
    echo -np 1 "$TRAIN" --data "$TMP/data.r0" "${ZERO3[@]}" : -np 1 "$TRAIN" --data \
        "$TMP/data.r1" "${ZERO3[@]}"
}

fail() {
    echo "FAIL $1: $2"
    sed 's/^/     | /' "$3" | tail -25
    fails=$((fails + 1))
}

# fault NAME SIGNAL: rank 1 gets SIGNAL once step 3 is logged.
fault() {
    local name=$1 sig=$2 log="$TMP/$1.log" pid t0 rc dt
    # shellcheck disable=SC2046
    DDP_INJECT_DELAY="allgather:1:200" timeout -k 5 240 $MPI $(args_for) >"$log" 2>&1 &
    local job=$!
    for _ in $(seq 1 900); do
        grep -q "step 3/" "$log" && break
        kill -0 $job 2>/dev/null || break
        sleep 0.2
    done
    pid=$(pgrep -f "^$TRAIN --data $TMP/data.r1( |\$)")
    if ! grep -q "step 3/" "$log" || [ -z "$pid" ]; then
        kill_ours; wait $job
        fail "$name" "training did not get going" "$log"
        return
    fi
    sleep 0.3 # inside rank 1's sleep before a gather, most likely
    t0=$(now)
    kill -"$sig" "$pid"
    wait $job
    rc=$?
    dt=$(elapsed "$t0" "$(now)")
    local why=""
    if [ "$sig" = STOP ]; then
        kill -CONT "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
    fi
    if [ "$rc" -eq 0 ]; then
        why="exit status 0"
    elif [ "$sig" = KILL ] && ! le "$dt" "$WD"; then
        why="took $dt s to end after rank 1 died, more than --timeout $WD"
    elif [ "$sig" = STOP ] && { ! le "$WD" "$dt" || ! le "$dt" "$((WD + 10))"; }; then
        why="ended $dt s after rank 1 hung: not by the watchdog within --timeout $WD + 10 s"
    elif [ "$sig" = STOP ] && [ "$rc" -ne 3 ]; then
        why="exit status $rc after the watchdog, expected 3"
    elif [ "$sig" = STOP ] &&
        ! grep -Eq "rank 0: all-gather of the parameters at step [0-9]+ did not complete within $WD s" "$log"; then
        why="no watchdog message naming the all-gather of the parameters and the step"
    fi
    if [ -n "$(ours)" ]; then
        why="${why:+$why; }processes left behind"
        kill_ours
    fi
    if [ -z "$why" ]; then
        echo "ok   $name: rank 1 got SIG$sig in a gather; job ended in $dt s, exit $rc"
        grep -E "did not complete within|exited on signal" "$log" | sed 's/^/     > /'
        passes=$((passes + 1))
    else
        fail "$name" "$why" "$log"
    fi
}

fault stopped_in_a_gather STOP
fault killed_in_a_gather KILL

# A gather that fails on rank 1 (its 20th all-gather call): every rank ends promptly,
# non-zero, the failing rank naming the gather.
log="$TMP/injected.log"
t0=$(now)
# shellcheck disable=SC2046
DDP_INJECT_FAULT="allgather:1:20" timeout -k 5 120 $MPI $(args_for) >"$log" 2>&1
rc=$?
dt=$(elapsed "$t0" "$(now)")
if [ "$rc" -eq 0 ]; then
    fail injected_gather_fault "exit status 0" "$log"
elif ! le "$dt" 60; then
    fail injected_gather_fault "took $dt s" "$log"
elif ! grep -q "allgather: injected fault on rank 1" "$log"; then
    fail injected_gather_fault "no message naming the failed gather" "$log"
elif [ -n "$(ours)" ]; then
    fail injected_gather_fault "processes left behind" "$log"
    kill_ours
else
    echo "ok   injected_gather_fault: exit $rc after $dt s"
    grep -m1 "injected fault" "$log" | sed 's/^/     > /'
    passes=$((passes + 1))
fi

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
