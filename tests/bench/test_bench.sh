#!/usr/bin/env bash
# ddp-bench runs under mpirun, checks its all-reduce results (0 wrong, exit 0), and its
# train subcommand writes JSON with every key the scaling harness and RESULTS rely on.
# Ranks given different all-reduce sizes (an MPMD launch) stop with a message naming the
# rank, and a rank that hangs ends either subcommand through the watchdog (exit 3).
# Usage: test_bench.sh PATH-TO-ddp-bench (MPIEXEC from the environment, default mpirun).
set -u
BENCH=${1:?usage: test_bench.sh PATH-TO-ddp-bench}
MPIEXEC=${MPIEXEC:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d /tmp/ddp-bench-test.XXXXXX)
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
# Our processes only: every rank's command line starts with the binary and names TMP. A
# stopped rank ignores everything but SIGCONT and SIGKILL.
ours() { pgrep -f "^$BENCH .*$TMP" || true; }
kill_ours() {
    local p
    for p in $(ours); do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
}
trap 'kill_ours; rm -rf "$TMP"' EXIT
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

# all-reduce: plain and through the reducer, 2 ranks, every size checked.
if timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" allreduce --max-bytes 1M \
    --iters 3 --warmup-iters 1 --reducer --tensor-mb 0.25 --json "$TMP/ar.json" >"$TMP/ar.log" 2>&1; then
    grep -q '^# wrong elements in all: 0$' "$TMP/ar.log" || fail "allreduce: wrong count is not 0"
    python3 - "$TMP/ar.json" <<'PY' || fail "allreduce: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["wrong"] == 0 and d["ranks"] == 2
sizes = [r["bytes"] for r in d["sizes"]]
assert sizes[0] == 8 and sizes[-1] == 1 << 20, sizes
for r in d["sizes"]:
    assert r["wrong"] == 0 and r["busbw_gbs"] > 0 and r["reducer_busbw_gbs"] > 0, r
PY
else
    fail "allreduce: exit status $?"
fi
[ $fails -eq 0 ] || cat "$TMP/ar.log"

# all-reduce in node-shared memory (2 ranks on this machine): sizes across the 64 KiB
# where the shared path starts, every element checked.
if timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" allreduce --min-bytes 16K \
    --max-bytes 1M --iters 3 --warmup-iters 1 --shared --json="$TMP/sh.json" >"$TMP/sh.log" 2>&1; then
    grep -q '^# wrong elements in all: 0$' "$TMP/sh.log" || fail "allreduce --shared: wrong sums"
    python3 - "$TMP/sh.json" <<'PY' || fail "allreduce --shared: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["shared"] is True and d["wrong"] == 0, d
PY
else
    fail "allreduce --shared: exit status $?"
    cat "$TMP/sh.log"
fi

# train: a few steps on the synthetic data, 2 ranks.
if timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" train --hidden 64 --batch 64 \
    --threads 1 --warmup-steps 1 --steps 3 --json "$TMP/train.json" >"$TMP/train.log" 2>&1; then
    python3 - "$TMP/train.json" <<'PY' || fail "train: JSON keys"
import json, sys
d = json.load(open(sys.argv[1]))
keys = ["samples_per_s", "t_forward", "t_backward", "t_allreduce", "t_exposed", "t_optim",
        "t_step", "t_comm_cpu", "model_flops_per_s", "ranks", "global_batch", "bench_steps",
        "sleeping_wait", "allreduce", "shared_gradients", "threads", "recompute",
        "activation_bytes", "peak_rss_mb"]
missing = [k for k in keys if k not in d]
assert not missing, missing
assert d["ranks"] == 2 and d["global_batch"] == 64 and d["bench_steps"] == 3, d
assert d["threads"] == 1 and isinstance(d["shared_gradients"], bool), d
assert d["samples_per_s"] > 0 and d["t_step"] > 0 and d["model_flops_per_s"] > 0, d
assert 0 < d["t_comm_cpu"] < d["t_step"], d
# MLP 784-64-10, sized for the evaluation's chunks of 1000 samples (more than the
# micro-batch of 32): outputs 64 + 64 + 10, two backward buffers of 784, the logits'
# gradient 10, in floats.
assert d["recompute"] is False and d["activation_bytes"] == 1000 * (138 + 2 * 784 + 10) * 4, d
assert d["peak_rss_mb"] > 0, d
PY
    grep -q '"samples_per_s"' "$TMP/train.log" || fail "train: no JSON on stdout"
else
    fail "train: exit status $?"
    cat "$TMP/train.log"
fi

# --no-allreduce: the compute-only ceiling; no bucket is ever reduced.
if timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" train --hidden 64 --batch 64 \
    --threads 1 --warmup-steps 1 --steps 3 --no-allreduce --json="$TMP/noar.json" \
    >"$TMP/noar.log" 2>&1; then
    python3 - "$TMP/noar.json" <<'PY' || fail "--no-allreduce: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["allreduce"] is False and d["t_allreduce"] == 0 and d["t_exposed"] == 0, d
assert d["t_comm_cpu"] == 0, d
assert d["samples_per_s"] > 0, d
PY
else
    fail "--no-allreduce: exit status $?"
    cat "$TMP/noar.log"
fi

# --trace: one Chrome trace per rank with the timed steps' phases, layers and buckets.
if timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" train --hidden 64,32 --batch 64 \
    --threads 1 --warmup-steps 1 --steps 3 --trace "$TMP/tr" >"$TMP/trace.log" 2>&1; then
    for r in 0 1; do
        python3 - "$TMP/tr.rank$r.json" <<'PY' || fail "trace: rank $r's file"
import json, sys
d = json.load(open(sys.argv[1]))
ev = d["traceEvents"] if isinstance(d, dict) else d
spans = [e for e in ev if e.get("ph") == "X"]
for e in spans:
    assert {"name", "ts", "dur", "pid", "tid"} <= e.keys() and e["dur"] >= 0, e
names = [e["name"] for e in spans]
# Three timed steps: each has a forward, a backward, an optimizer step, and at least one
# bucket all-reduce on the communication thread; every layer shows up in both passes.
for n in ("forward", "backward", "optimizer"):
    assert names.count(n) == 3, (n, names.count(n))
buckets = [e for e in spans if e["name"] == "allreduce bucket"]
assert len(buckets) >= 3 and all(e["tid"] != 0 for e in buckets), buckets
for layer in ("fc0", "fc1", "fc2"):
    cats = {e.get("cat") for e in spans if e["name"] == layer}
    assert {"forward", "backward"} <= cats, (layer, cats)
PY
    done
else
    fail "trace: exit status $?"
    cat "$TMP/trace.log"
fi

# Ranks started with different sizes would pair all-reduces of different lengths: they
# compare their options first, and every rank stops (usage status 2) naming rank 1.
# Options that may differ (--json, --timeout) do not count: the watchdog check below
# gives each rank its own --json.
timeout -k 5 60 "$MPIEXEC" --oversubscribe -np 1 "$BENCH" allreduce --max-bytes 1M --iters 1 : \
    -np 1 "$BENCH" allreduce --max-bytes 2M --iters 1 >"$TMP/mpmd.log" 2>&1
rc=$?
if [ $rc -ne 2 ] ||
    ! grep -q "rank 1 (and 1 rank(s) in all) was given other options than rank 0" "$TMP/mpmd.log" ||
    ! grep -q "^\[rank 1\] error: my options: .*max-bytes=2097152" "$TMP/mpmd.log" ||
    [ "$(grep -c "was given other options" "$TMP/mpmd.log")" -ne 2 ]; then
    fail "MPMD with different --max-bytes: exit status $rc (expected 2 and both ranks naming rank 1)"
    cat "$TMP/mpmd.log"
fi

# A hung rank (SIGSTOP) in the middle of the all-reduces: the other one's watchdog ends the
# job after --timeout 3 s with exit status 3 and a message naming its rank, as in ddp-train.
AR=(allreduce --min-bytes 1M --max-bytes 1M --iters 1000000000 --timeout 3)
timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 1 "$BENCH" "${AR[@]}" --json "$TMP/stop.r0" : \
    -np 1 "$BENCH" "${AR[@]}" --json "$TMP/stop.r1" >"$TMP/stop.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do
    grep -q "^ *size " "$TMP/stop.log" && break
    kill -0 $job 2>/dev/null || break
    sleep 0.1
done
sleep 1 # into the timed all-reduces
pid=$(pgrep -f "^$BENCH allreduce .*$TMP/stop.r1")
if [ -z "$pid" ]; then
    kill_ours; wait $job
    fail "watchdog (allreduce): the benchmark did not get going"; cat "$TMP/stop.log"
else
    t0=$(now)
    kill -STOP "$pid"
    wait $job
    rc=$?
    dt=$(elapsed "$t0" "$(now)")
    kill_ours # the stopped rank, should mpirun's end not have reached it
    if [ $rc -ne 3 ] || ! le 3 "$dt" || ! le "$dt" 13 ||
        ! grep -Eq "rank 0: allreduce .*in the all-reduces of [0-9]+ bytes did not complete within 3 s" "$TMP/stop.log"; then
        fail "watchdog (allreduce): exit status $rc after $dt s (expected 3, after 3 to 13 s, with the watchdog's message)"
        cat "$TMP/stop.log"
    else
        echo "ok   watchdog (allreduce): rank 1 stopped, job ended in $dt s with exit status 3"
    fi
fi

# ddp-bench train under the watchdog too: rank 1 comes 2.5 s late to every all-reduce,
# more than --timeout 1, so rank 0's watchdog ends the job once it runs.
DDP_INJECT_DELAY=allreduce:1:2500 timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" \
    train --hidden 64 --batch 64 --threads 1 --warmup-steps 1 --steps 3 --timeout 1 \
    >"$TMP/late.log" 2>&1
rc=$?
if [ $rc -ne 3 ] || ! grep -Eq "rank 0: allreduce .*did not complete within 1 s" "$TMP/late.log"; then
    fail "watchdog (train): exit status $rc (expected 3, with the watchdog's message)"
    cat "$TMP/late.log"
fi
[ -n "$(ours)" ] && { fail "processes left behind: $(ours | tr '\n' ' ')"; kill_ours; }

# A bad option fails with a usage status and a message, on every rank, without hanging.
timeout -k 5 60 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" allreduce --max-bytes banana \
    >"$TMP/bad.log" 2>&1
rc=$?
{ [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "max-bytes .banana.: expected" "$TMP/bad.log"; } ||
    fail "bad option: exit status $rc"

if [ $fails -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all ddp-bench checks passed"
