#!/usr/bin/env bash
# The flight recorder, desync detection and the straggler report with the real ddp-train
# under mpirun (docs/failures.md):
#  - a desync (rank 1 skips a collective; rank 1 calls one with half the count, in the
#    node-shared sum of the gradients and in an MPI all-reduce) and a stopped rank
#    (SIGSTOP) each end the job within --timeout (plus the recorder's bounded gathering)
#    with rank 0's verdict naming the ranks, the collective and its site; every live rank's
#    dump is there and parses; cluster/ddp-flight merges them into valid JSON;
#  - --check-collectives stops the skip and both count desyncs before anything hangs, and
#    raises nothing on even runs (ZeRO-2 on 4 ranks, synchronized batch norm);
#  - a rank slowed in its data loading (DDP_INJECT_DELAY=data) is named by the straggler
#    report within 4 logging steps, and an even run names nobody.
# Needs: DDP_TRAIN, MPIEXEC; Fashion-MNIST (DDP_FASHION_MNIST).
set -u
. "$(dirname "$0")/../script_lib.sh"
script_setup ddp-flight data
FLIGHT="$(dirname "$0")/../../cluster/ddp-flight"
WD=5
# Our processes only: every rank's command line starts with the binary and names TMP.
ours() { pgrep -f "^$TRAIN .*$TMP" || true; }
kill_ours() {
    local p
    for p in $(ours); do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
}
trap 'kill_ours; rm -rf "$TMP"' EXIT
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

fail() {
    echo "FAIL $1: $2"
    [ -f "${3:-}" ] && sed 's/^/     | /' "$3" | tail -25
    fails=$((fails + 1))
}

# dumps_ok NAME DIR RANKS...: each rank's dump in DIR parses and is that rank's, and
# ddp-flight merges DIR's dumps into a valid Chrome trace.
dumps_ok() {
    local name=$1 dir=$2 r
    shift 2
    for r in "$@"; do
        if ! python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['rank'] == int(sys.argv[2]) and d['entries']" \
            "$dir/flight-rank$r.json" "$r" 2>"$TMP/$name.py"; then
            fail "$name" "rank $r's dump is missing or does not parse" "$TMP/$name.py"
            return 1
        fi
    done
    if ! "$FLIGHT" "$dir" -o "$dir/timeline.json" >"$TMP/$name.merge" 2>&1 ||
        ! python3 -c "import json,sys; ev=json.load(open(sys.argv[1]))['traceEvents']; assert len({e['pid'] for e in ev if e['ph'] == 'X'}) == int(sys.argv[2])" \
            "$dir/timeline.json" "$#" 2>>"$TMP/$name.merge"; then
        fail "$name" "cluster/ddp-flight did not merge the dumps into a valid timeline" "$TMP/$name.merge"
        return 1
    fi
}

# failed_job NAME EXPECTED_EXIT MAX_SECONDS PATTERN [VAR=VALUE...] -- ARGS...: a 2-rank job
# with the environment given, its flight dumps in TMP/NAME; checks the exit status, that it
# ended within MAX_SECONDS, and that its output matches PATTERN.
failed_job() {
    local name=$1 want=$2 max=$3 pattern=$4 envs=() t0 rc dt
    shift 4
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    mkdir -p "$TMP/$name"
    t0=$(now)
    env "${envs[@]}" timeout -k 5 120 $MPI -np 2 "$TRAIN" --data "$DATA" --flight-dir "$TMP/$name" \
        "$@" >"$TMP/$name.log" 2>&1
    rc=$?
    dt=$(elapsed "$t0" "$(now)")
    if [ "$rc" -ne "$want" ]; then
        fail "$name" "exit status $rc, expected $want" "$TMP/$name.log"
    elif ! le "$dt" "$max"; then
        fail "$name" "took $dt s, more than $max" "$TMP/$name.log"
    elif ! grep -Eq -e "$pattern" "$TMP/$name.log"; then
        fail "$name" "no line matches /$pattern/" "$TMP/$name.log"
    elif [ -n "$(ours)" ]; then
        fail "$name" "processes left behind" "$TMP/$name.log"
        kill_ours
    else
        return 0
    fi
    return 1
}

# ok NAME LOG PATTERN: passes, showing the lines that matched.
ok() {
    echo "ok   $1"
    grep -E -e "$3" "$2" | sed 's/^/     > /' | cut -c1-400
    passes=$((passes + 1))
}

RUN_ARGS=(--steps 100 --log-every 10 --timeout "$WD")

# Rank 1 skips the all-reduce of the losses at step 10 (its 26th all-reduce: 15 in set-up,
# then one of the gradients per step), so it calls the next collective, the all-gather of
# the step's statistics, while rank 0 calls the all-reduce: both hang.
V='flight recorder: rank 0 in allreduce #[0-9]+ on control \(src/train/trainer.c:[0-9]+\) of 4 f64, rank 1 in allgather #[0-9]+ on control \(src/train/run.c:[0-9]+\) of 5 f64: desync'
if failed_job desync_skip 3 $((WD + 10)) "$V" DDP_INJECT_FAULT=skip_allreduce:1:26 -- "${RUN_ARGS[@]}" &&
    dumps_ok desync_skip "$TMP/desync_skip" 0 1; then
    if grep -q "first difference: #" "$TMP/desync_skip.merge"; then
        ok desync_skip "$TMP/desync_skip.log" "flight recorder|skipped"
    else
        fail desync_skip "cluster/ddp-flight did not find the first difference" "$TMP/desync_skip.merge"
    fi
fi

# Rank 1's 21st all-reduce, the gradients of step 6, with half the count: the node-shared
# sum sees the counts differ at its gate and every rank fails at once.
V='flight recorder: rank 0 in allreduce #[0-9]+ on gradients \(reducer bucket 0\) of 235,146 f32, rank 1 in allreduce #[0-9]+ on gradients \(reducer bucket 0\) of 117,573 f32: desync'
failed_job desync_count_shared 1 "$WD" "$V" DDP_INJECT_FAULT=count_allreduce:1:21 -- "${RUN_ARGS[@]}" &&
    dumps_ok desync_count_shared "$TMP/desync_count_shared" 0 1 &&
    ok desync_count_shared "$TMP/desync_count_shared.log" "flight recorder|instead of|node-shared"

# The losses' all-reduce with half the count: MPI reports a truncation on one rank.
V='flight recorder: rank 0 in allreduce #[0-9]+ on control \(src/train/trainer.c:[0-9]+\) of 4 f64, rank 1 in allreduce #[0-9]+ on control \(src/train/trainer.c:[0-9]+\) of 2 f64: desync'
failed_job desync_count_mpi 1 $((WD + 10)) "$V" DDP_INJECT_FAULT=count_allreduce:1:26 -- "${RUN_ARGS[@]}" &&
    dumps_ok desync_count_mpi "$TMP/desync_count_mpi" 0 1 &&
    ok desync_count_mpi "$TMP/desync_count_mpi.log" "flight recorder|instead of|MPI_"

# --check-collectives: the same three desyncs end the job before anything hangs (a hang
# would last the 60 s of --timeout).
CHECK_ARGS=(--steps 100 --log-every 10 --timeout 60 --check-collectives)
C='--check-collectives: rank 0 calls allreduce #[0-9]+ on control of 4 f64 at src/train/trainer.c:[0-9]+, rank 1 calls allgather #[0-9]+ on control of 5 f64 at src/train/run.c:[0-9]+: a desync'
failed_job check_skip 1 20 "$C" DDP_INJECT_FAULT=skip_allreduce:1:26 -- "${CHECK_ARGS[@]}" &&
    ok check_skip "$TMP/check_skip.log" "rank 0.*--check-collectives"
C='--check-collectives: rank 0 calls allreduce #[0-9]+ on gradients of 235,146 f32 at reducer bucket 0, rank 1 calls allreduce #[0-9]+ on gradients of 117,573 f32 at reducer bucket 0: a desync'
failed_job check_count_shared 1 20 "$C" DDP_INJECT_FAULT=count_allreduce:1:21 -- "${CHECK_ARGS[@]}" &&
    ok check_count_shared "$TMP/check_count_shared.log" "rank 0.*--check-collectives"
C='--check-collectives: rank 0 calls allreduce #[0-9]+ on control of 4 f64 at src/train/trainer.c:[0-9]+, rank 1 calls allreduce #[0-9]+ on control of 2 f64 at src/train/trainer.c:[0-9]+: a desync \(the same call with other arguments'
failed_job check_count_mpi 1 20 "$C" DDP_INJECT_FAULT=count_allreduce:1:26 -- "${CHECK_ARGS[@]}" &&
    ok check_count_mpi "$TMP/check_count_mpi.log" "rank 0.*--check-collectives"

# ... and nothing on even runs.
run check_even_zero2_np4 0 "final test accuracy" -- $MPI -np 4 "$TRAIN" --data "$DATA" --steps 12 \
    --log-every 4 --zero 2 --accum 2 --check-collectives --flight-dir "$TMP"
run check_even_sync_bn 0 "final test accuracy" -- $MPI -np 2 "$TRAIN" --data "$DATA" --model cnn \
    --sync-bn --steps 4 --log-every 2 --check-collectives --flight-dir "$TMP"
run check_one_rank_only 2 "is given to rank 0 but not to rank 1" -- $MPI -np 1 "$TRAIN" \
    --data "$DATA" --steps 2 --check-collectives --flight-dir "$TMP" : -np 1 "$TRAIN" --data "$DATA" \
    --steps 2 --flight-dir "$TMP"

# A stopped rank: 4 ranks, each with a flight directory of its own (a per-rank option), so
# that the stopped one can be found; rank 2 gets SIGSTOP once step 30 is logged.
stop_log="$TMP/stopped.log" args=()
for r in 0 1 2 3; do
    [ $r -gt 0 ] && args+=(:)
    mkdir -p "$TMP/stopped.r$r"
    args+=(-np 1 "$TRAIN" --data "$DATA" --flight-dir "$TMP/stopped.r$r" --steps 1000000 --log-every 10 --timeout "$WD")
done
timeout -k 5 120 $MPI "${args[@]}" >"$stop_log" 2>&1 &
job=$!
for _ in $(seq 1 600); do
    grep -q "step 30/" "$stop_log" && break
    kill -0 $job 2>/dev/null || break
    sleep 0.2
done
pid=$(pgrep -f "^$TRAIN .*$TMP/stopped.r2( |\$)")
if [ -z "$pid" ] || ! grep -q "step 30/" "$stop_log"; then
    kill_ours; wait $job
    fail stopped_rank "training did not get going (no step 30, or rank 2 not found)" "$stop_log"
else
    t0=$(now)
    kill -STOP "$pid"
    wait $job
    rc=$?
    dt=$(elapsed "$t0" "$(now)")
    kill -CONT "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
    # Which collective the others wait in depends on where SIGSTOP caught rank 2: a
    # gradient bucket's all-reduce mostly, the step's control all-gather at a logging step.
    # A collective can also complete on some ranks and not others (those that needed
    # nothing more from rank 2 go on to the next one): the verdict names them, and it must
    # not call that a desync.
    # A rank that never entered it may wait in an earlier one that a waiting rank
    # completed (behind, not a desync either).
    C='(allreduce|allgather) #[0-9]+ on [a-z]+ \([^)]*\)'
    L='ranks? [0-9, -]+'
    AHEAD="$L completed #[0-9]+ and waits? in the later $C"
    BEHIND="$L never entered #[0-9]+ and waits? in $C, which $L completed"
    V="flight recorder: $L in $C for [0-9.]+ s(; ($AHEAD|$BEHIND))*; rank 2 did not answer within [0-9.]+ s: stopped or dead\$"
    if [ "$rc" -ne 3 ]; then
        fail stopped_rank "exit status $rc, expected 3" "$stop_log"
    elif ! le "$dt" $((WD + 10)); then
        fail stopped_rank "took $dt s after SIGSTOP, more than --timeout $WD + 10 s" "$stop_log"
    elif ! grep -Eq -e "$V" "$stop_log"; then
        fail stopped_rank "no verdict naming rank 2 alone" "$stop_log"
    else
        mkdir -p "$TMP/stopped.all"
        for r in 0 1 3; do cp "$TMP/stopped.r$r/flight-rank$r.json" "$TMP/stopped.all/" 2>/dev/null; done
        dumps_ok stopped_rank "$TMP/stopped.all" 0 1 3 &&
            ok stopped_rank "$stop_log" "flight recorder"
        echo "     (the job ended $dt s after SIGSTOP)"
    fi
fi
kill_ours

# A straggler: rank 1 sleeps 20 ms before loading each batch; the report names it at its
# third logging step in a row, so by step 20 with a logging step every 5 (the first
# logging step may fall short of it: 4 at most).
run straggler 0 "straggler: rank 1, data" -- env DDP_INJECT_DELAY=data:1:20 $MPI -np 2 "$TRAIN" \
    --data "$DATA" --steps 40 --log-every 5 --metrics "$TMP/straggler.jsonl" --flight-dir "$TMP"
first=$(grep -m1 -o "step [0-9]*/40 .*straggler: rank 1, data" "$TMP/straggler.log" | grep -o "^step [0-9]*" | grep -o "[0-9]*")
if [ -z "$first" ] || [ "$first" -gt 20 ]; then
    fail straggler_soon "rank 1 named first at step '${first}', not by step 20" "$TMP/straggler.log"
elif ! python3 -c "
import json, sys
last = [json.loads(l) for l in open(sys.argv[1])][-1]
assert last['straggler']['rank'] == 1 and last['straggler']['phase'] == 'data', last
d = last['t_data_ranks']
assert len(d) == 2 and d[1] > 0.018 and d[0] < 0.005, d
assert len(last['t_forward_ranks']) == 2 and len(last['t_backward_ranks']) == 2
" "$TMP/straggler.jsonl" 2>"$TMP/straggler.py"; then
    fail straggler_soon "the metrics do not carry the report and the ranks' data times" "$TMP/straggler.py"
else
    echo "ok   straggler_soon: named first at step $first; the metrics carry it"
    passes=$((passes + 1))
fi
# An even run names nobody: 2 and 4 ranks, 20 logging steps each.
for np in 2 4; do
    run "even_np$np" 0 "final test accuracy" -- $MPI -np $np "$TRAIN" --data "$DATA" --steps 400 \
        --log-every 20 --metrics "$TMP/even$np.jsonl" --flight-dir "$TMP"
    if grep -q "straggler" "$TMP/even_np$np.log" || grep -q '"straggler"' "$TMP/even$np.jsonl"; then
        fail "even_np${np}_names_nobody" "a straggler was named on an even run" "$TMP/even_np$np.log"
    else
        echo "ok   even_np${np}_names_nobody"
        passes=$((passes + 1))
    fi
done

script_finish
