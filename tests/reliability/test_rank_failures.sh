#!/usr/bin/env bash
# A rank that dies (SIGKILL) or hangs (SIGSTOP) in the middle of training ends the whole
# job with a non-zero exit in bounded time and leaves no process behind; a rank that is
# slow but alive does not set the watchdog off. Drives the real ddp-train under mpirun
# and prints the time from the fault to the end of the job (the time to detect).
# Needs: DDP_TRAIN (path to ddp-train), MPIEXEC; Fashion-MNIST in DATA (default below).
# Optional: DDP_FAULT_TIMEOUT, the --timeout given to ddp-train (default 5 s).
set -u
TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
MPIEXEC=${MPIEXEC:-mpirun}
DATA=${DDP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
WD=${DDP_FAULT_TIMEOUT:-5}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d /tmp/ddp-reliability.XXXXXX)
MPI="$MPIEXEC --oversubscribe"
fails=0 passes=0

# Our processes only: every rank's command line starts with the binary and names TMP.
ours() { pgrep -f "^$TRAIN .*$TMP" || true; }
# alive PID: the process exists and is not a zombie (a rank that mpirun killed stays a
# zombie until its new parent reaps it, which some init processes never do).
alive() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}
# A stopped rank ignores everything but SIGCONT and SIGKILL.
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
# le A B: A <= B for decimals.
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

# Every rank gets its own name for the data directory, so that pgrep finds one rank
# exactly; the names are links to the same files, and the path is not part of the
# configuration that ranks compare.
for r in 0 1 2 3; do ln -s "$DATA" "$TMP/data.r$r"; done

# mpmd NP ARGS...: the MPMD command line that gives rank r --data TMP/data.r<r>.
mpmd() {
    local np=$1 r cmd=()
    shift
    for ((r = 0; r < np; r++)); do
        [ $r -gt 0 ] && cmd+=(:)
        cmd+=(-np 1 "$TRAIN" --data "$TMP/data.r$r" "$@")
    done
    printf '%s\n' "${cmd[@]}"
}

fail() {
    echo "FAIL $1: $2"
    sed 's/^/     | /' "$3" | tail -25
    fails=$((fails + 1))
}

# fault NAME NP RANK SIGNAL: trains on NP ranks, sends SIGNAL to RANK once a few steps
# are logged, and checks how and how fast the job ends.
fault() {
    local name=$1 np=$2 victim=$3 sig=$4
    local log="$TMP/$name.log" args=() pid t0 t1 rc dt
    mapfile -t args < <(mpmd "$np" --steps 1000000 --log-every 10 --timeout "$WD")
    timeout -k 5 240 $MPI "${args[@]}" >"$log" 2>&1 &
    local job=$!
    for _ in $(seq 1 600); do
        grep -q "step 30/" "$log" && break
        kill -0 $job 2>/dev/null || break
        sleep 0.2
    done
    pid=$(pgrep -f "^$TRAIN --data $TMP/data.r$victim( |\$)")
    if ! grep -q "step 30/" "$log" || [ -z "$pid" ]; then
        kill_ours; wait $job
        fail "$name" "training did not get going (no step 30, or rank $victim not found)" "$log"
        return
    fi
    t0=$(now)
    kill -"$sig" "$pid"
    wait $job
    rc=$?
    t1=$(now)
    dt=$(elapsed "$t0" "$t1")
    local ok=1 why="" left=""
    # A stopped rank that the job's end did not reach is the one thing expected to stay.
    if [ "$sig" = STOP ] && alive "$pid"; then
        left=" (stopped rank $victim outlived mpirun; killed it)"
        kill -CONT "$pid"; kill -KILL "$pid"; sleep 0.5
    fi
    # timeout(1) says 124, or 137 after its KILL; mpirun itself says 137 when a rank died
    # of SIGKILL, so the time tells which.
    if le 200 "$dt"; then
        ok=0 why="job still running $dt s after SIG$sig (it hung)"
    elif [ "$rc" -eq 0 ]; then
        ok=0 why="exit status 0 after a rank was killed"
    elif [ "$sig" = KILL ] && ! le "$dt" "$WD"; then
        ok=0 why="took $dt s to end after rank $victim died, more than --timeout $WD"
    elif [ "$sig" = STOP ] && ! le "$dt" "$((WD + 10))"; then
        ok=0 why="took $dt s to end after rank $victim hung, more than --timeout $WD + 10 s"
    elif [ "$sig" = STOP ] && [ "$rc" -ne 3 ]; then
        ok=0 why="exit status $rc after the watchdog, expected 3"
    elif [ "$sig" = STOP ] && ! le "$WD" "$dt"; then
        ok=0 why="ended after $dt s, sooner than --timeout $WD: not by the watchdog"
    elif [ "$sig" = STOP ] &&
        ! grep -Eq "rank [0-9]+: .* at step [0-9]+ did not complete within $WD s: another rank died or stopped responding" "$log"; then
        ok=0 why="no watchdog message naming the step"
    fi
    if [ -n "$(ours)" ]; then
        ok=0 why="${why:+$why; }processes left behind: $(ours | tr '\n' ' ')"
        kill_ours
    fi
    if [ $ok -eq 1 ]; then
        echo "ok   $name: rank $victim of $np got SIG$sig after step 30; job ended in $dt s, exit $rc$left"
        grep -E "did not complete within|did not run for|exited on signal" "$log" | sed 's/^/     > /'
        passes=$((passes + 1))
    else
        fail "$name" "$why" "$log"
    fi
}

fault sigkill_np2 2 1 KILL
fault sigkill_np4 4 2 KILL
fault sigstop_np2 2 1 STOP
fault sigstop_np4 4 0 STOP

# A rank that is slow but alive: rank 1 sleeps half the timeout before every all-reduce
# (one or more per step with --log-every 1), so the others wait in each one for half the
# timeout, and the run as a whole lasts several timeouts. It must finish normally.
slow_log="$TMP/slow.log"
slow_wd=3 slow_ms=1500
mapfile -t args < <(mpmd 2 --steps 3 --log-every 1 --timeout $slow_wd)
t0=$(now)
DDP_INJECT_DELAY="allreduce:1:$slow_ms" timeout -k 5 240 $MPI "${args[@]}" >"$slow_log" 2>&1
rc=$?
dt=$(elapsed "$t0" "$(now)")
if [ "$rc" -ne 0 ]; then
    fail slow_rank_is_not_a_failure "exit status $rc" "$slow_log"
elif grep -q "did not complete within" "$slow_log"; then
    fail slow_rank_is_not_a_failure "the watchdog fired on a live rank" "$slow_log"
elif ! le "$((slow_wd * 2))" "$dt"; then
    fail slow_rank_is_not_a_failure "the run took $dt s, not several timeouts: no test" "$slow_log"
elif [ -n "$(ours)" ]; then
    fail slow_rank_is_not_a_failure "processes left behind" "$slow_log"
    kill_ours
else
    echo "ok   slow_rank_is_not_a_failure: rank 1 $slow_ms ms late to every all-reduce, $dt s run with --timeout $slow_wd"
    passes=$((passes + 1))
fi

# Killed, then resumed: rank 1 is SIGKILLed once a checkpoint exists; every rank exits
# non-zero within the timeout, and the job resumed from the last checkpoint ends with the
# parameters of an uninterrupted run, bit for bit. Rank 0 is slowed (a sleep before each
# all-reduce) so that the kill lands in the middle of the run, not after its end.
KR=(--steps 60 --log-every 10 --checkpoint-every 10 --timeout "$WD")
mapfile -t args < <(mpmd 2 "${KR[@]}" --checkpoint-dir "$TMP/ref" --dump-params "$TMP/ref.bin")
timeout -k 5 240 $MPI "${args[@]}" >"$TMP/ref.log" 2>&1
ref_rc=$?
mapfile -t args < <(mpmd 2 "${KR[@]}" --checkpoint-dir "$TMP/killed" --dump-params "$TMP/killed.bin")
DDP_INJECT_DELAY="allreduce:0:40" timeout -k 5 240 $MPI "${args[@]}" >"$TMP/killed.log" 2>&1 &
job=$!
for _ in $(seq 1 600); do
    ls "$TMP/killed"/ckpt-00000030* >/dev/null 2>&1 && break
    kill -0 $job 2>/dev/null || break
    sleep 0.1
done
pid=$(pgrep -f "^$TRAIN --data $TMP/data.r1( |\$)")
t0=$(now)
[ -n "$pid" ] && kill -KILL "$pid"
wait $job
kill_rc=$?
dt=$(elapsed "$t0" "$(now)")
mapfile -t args < <(mpmd 2 "${KR[@]}" --checkpoint-dir "$TMP/killed" --resume --dump-params "$TMP/resumed.bin")
timeout -k 5 240 $MPI "${args[@]}" >"$TMP/resumed.log" 2>&1
res_rc=$?
if [ $ref_rc -ne 0 ]; then
    fail sigkill_then_resume "the uninterrupted run failed (exit $ref_rc)" "$TMP/ref.log"
elif [ -z "$pid" ] || [ $kill_rc -eq 0 ] || [ -e "$TMP/killed.bin" ]; then
    fail sigkill_then_resume "the kill did not land mid-run (pid '${pid}', exit $kill_rc)" "$TMP/killed.log"
elif ! le "$dt" "$WD"; then
    fail sigkill_then_resume "took $dt s to end after the kill, more than --timeout $WD" "$TMP/killed.log"
elif [ $res_rc -ne 0 ] || ! grep -q "resumed from" "$TMP/resumed.log"; then
    fail sigkill_then_resume "the resumed run failed (exit $res_rc) or did not resume" "$TMP/resumed.log"
elif ! cmp -s "$TMP/ref.bin" "$TMP/resumed.bin"; then
    fail sigkill_then_resume "resumed parameters differ from the uninterrupted run's" "$TMP/resumed.log"
else
    echo "ok   sigkill_then_resume: job ended $dt s after the kill (exit $kill_rc); $(grep -o 'resumed from [^:]*: step [0-9]*' "$TMP/resumed.log" | head -1 | sed "s|$TMP/||"); final parameters equal the uninterrupted run's bitwise"
    passes=$((passes + 1))
fi
[ -n "$(ours)" ] && { fail sigkill_then_resume "processes left behind" "$TMP/killed.log"; kill_ours; }

# Every collective of a run fails once, in turn: set-up, resuming from a checkpoint,
# training and writing checkpoints. Whichever call fails on rank 1, every rank must exit
# non-zero promptly through an abort, not by waiting for the watchdog (--timeout 60 here,
# so a run that needed it would take a minute).
mapfile -t args < <(mpmd 2 --steps 2 --checkpoint-every 1 --checkpoint-dir "$TMP/sweep0")
timeout -k 5 120 $MPI "${args[@]}" >"$TMP/sweep0.log" 2>&1 || fail fault_sweep "no checkpoint to resume" "$TMP/sweep0.log"
sweep_bad=0 sweep_runs=0 sweep_max=0 sweep_injected=0
# (ddp-train makes no barrier: agreement is an all-reduce.)
for spec in allreduce:1..14 broadcast:1..4 allgather:1..3; do
    op=${spec%%:*} range=${spec#*:}
    for ((n = ${range%%..*}; n <= ${range##*..}; n++)); do
        rm -rf "$TMP/sweep" && cp -r "$TMP/sweep0" "$TMP/sweep"
        mapfile -t args < <(mpmd 2 --steps 4 --checkpoint-every 1 --checkpoint-dir "$TMP/sweep" --resume --timeout 60)
        t0=$(now)
        DDP_INJECT_FAULT="$op:1:$n" timeout -k 5 120 $MPI "${args[@]}" >"$TMP/sweep.log" 2>&1
        rc=$?
        dt=$(elapsed "$t0" "$(now)")
        sweep_runs=$((sweep_runs + 1))
        le "$dt" "$sweep_max" || sweep_max=$dt
        # A call number beyond what the run makes injects nothing: then it must succeed.
        if grep -q "injected fault" "$TMP/sweep.log"; then
            sweep_injected=$((sweep_injected + 1))
            if [ $rc -eq 0 ] || ! le "$dt" 30; then
                fail "fault_sweep $op:1:$n" "exit $rc after $dt s" "$TMP/sweep.log"
                sweep_bad=1
            fi
        elif [ $rc -ne 0 ]; then
            fail "fault_sweep $op:1:$n" "no fault injected, yet exit $rc" "$TMP/sweep.log"
            sweep_bad=1
        elif [ "$n" -eq 1 ]; then
            # Every run makes at least one call of each operation: the first must fail.
            fail "fault_sweep $op:1:$n" "the first $op was not injected: the sweep tests nothing" "$TMP/sweep.log"
            sweep_bad=1
        fi
        [ -n "$(ours)" ] && { fail "fault_sweep $op:1:$n" "processes left behind" "$TMP/sweep.log"; kill_ours; sweep_bad=1; }
    done
done
# Most calls of the sweep must really fail (the ranges are sized to the calls a run
# makes); a change that made the injection miss would otherwise pass unseen.
if [ $sweep_bad -eq 0 ] && [ $sweep_injected -lt $((sweep_runs * 3 / 4)) ]; then
    fail fault_sweep "only $sweep_injected of $sweep_runs runs had a fault injected" "$TMP/sweep.log"
    sweep_bad=1
fi
if [ $sweep_bad -eq 0 ]; then
    echo "ok   fault_sweep: $sweep_runs runs ($sweep_injected with a fault injected), each collective of set-up, resume, training and checkpointing failing in turn on rank 1: every job ended non-zero (or, past the last call, normally), the slowest in $sweep_max s"
    passes=$((passes + 1))
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
