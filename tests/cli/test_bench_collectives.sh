#!/usr/bin/env bash
# ddp-bench allreduce --collective: each collective it times is checked, on 3 ranks (blocks
# of unequal sizes where the size does not divide by 3, empty ones at 4 bytes), in ordinary
# and in node-shared memory: every element right, exit 0, the collective named in the
# JSON. --reducer with another collective is refused with a message naming both.
# Usage: test_bench_collectives.sh PATH-TO-ddp-bench
set -u
BENCH=${1:?usage: test_bench_collectives.sh PATH-TO-ddp-bench}
MPIEXEC=${MPIEXEC:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d /tmp/ddp-bench-coll.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

for op in allreduce reduce-scatter allgather; do
    for shared in "" --shared; do
        name="$op${shared:+ $shared}"
        log=$TMP/$op$shared.log
        timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 3 "$BENCH" allreduce --collective "$op" \
            $shared --min-bytes 4 --max-bytes 256K --iters 2 --warmup-iters 1 \
            --json "$TMP/$op$shared.json" >"$log" 2>&1
        rc=$?
        [ "$rc" -eq 0 ] || { bad "$name: exit status $rc"; tail -5 "$log"; continue; }
        grep -q "^# wrong elements in all: 0$" "$log" || bad "$name: wrong elements: $(grep wrong "$log")"
        want=$(case $op in allreduce) echo all-reduce ;; *) echo "${op/allgather/all-gather}" ;; esac)
        python3 - "$TMP/$op$shared.json" "$want" <<'PY' || bad "$name: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["collective"] == sys.argv[2], d["collective"]
assert d["wrong"] == 0 and len(d["sizes"]) == 17, (d["wrong"], len(d["sizes"]))
PY
        echo "ok: $name"
    done
done

# --gap-ms: compute before each collective, the time what the collective adds (not
# negative), the results still checked.
timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" allreduce --gap-ms 1 --min-bytes 4K \
    --max-bytes 64K --iters 3 --warmup-iters 1 --json "$TMP/gap.json" >"$TMP/gap.log" 2>&1 ||
    bad "--gap-ms 1: exit status $?"
python3 - "$TMP/gap.json" <<'PY' || bad "--gap-ms 1: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["gap_ms"] == 1 and d["wrong"] == 0, d
assert all(s["time_us"] >= 0 for s in d["sizes"]) and len(d["sizes"]) == 5, d["sizes"]
PY

# A refusal on every rank, not a hang.
timeout -k 5 60 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" allreduce --collective allgather \
    --reducer --max-bytes 1K >"$TMP/refused.log" 2>&1
rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || bad "--reducer --collective allgather: exit status $rc"
grep -q -- "--reducer.*--collective allreduce" "$TMP/refused.log" ||
    bad "--reducer --collective allgather: no message naming both: $(tail -3 "$TMP/refused.log")"

[ "$fails" -eq 0 ] && echo "all ok"
exit $((fails > 0))
