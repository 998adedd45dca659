#!/usr/bin/env bash
# ddp-bench runs under mpirun, checks its all-reduce results (0 wrong, exit 0), and its
# train subcommand writes JSON with every key the scaling harness and RESULTS rely on.
# Usage: test_bench.sh PATH-TO-ddp-bench (MPIEXEC from the environment, default mpirun).
set -u
BENCH=${1:?usage: test_bench.sh PATH-TO-ddp-bench}
MPIEXEC=${MPIEXEC:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d /tmp/ddp-bench-test.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

# all-reduce: plain and through the reducer, 2 ranks, every size checked.
if timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" allreduce --max-bytes 1M \
    --iters 3 --warmup 1 --reducer --tensor-mb 0.25 --json "$TMP/ar.json" >"$TMP/ar.log" 2>&1; then
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
    --max-bytes 1M --iters 3 --warmup 1 --shared --json "$TMP/sh.json" >"$TMP/sh.log" 2>&1; then
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
        "sleeping_wait", "allreduce"]
missing = [k for k in keys if k not in d]
assert not missing, missing
assert d["ranks"] == 2 and d["global_batch"] == 64 and d["bench_steps"] == 3, d
assert d["samples_per_s"] > 0 and d["t_step"] > 0 and d["model_flops_per_s"] > 0, d
assert 0 < d["t_comm_cpu"] < d["t_step"], d
PY
    grep -q '"samples_per_s"' "$TMP/train.log" || fail "train: no JSON on stdout"
else
    fail "train: exit status $?"
    cat "$TMP/train.log"
fi

# --no-allreduce: the compute-only ceiling; no bucket is ever reduced.
if timeout -k 5 120 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" train --hidden 64 --batch 64 \
    --threads 1 --warmup-steps 1 --steps 3 --no-allreduce --json "$TMP/noar.json" \
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

# A bad option fails with a usage status and a message, on every rank, without hanging.
timeout -k 5 60 "$MPIEXEC" --oversubscribe -np 2 "$BENCH" allreduce --max-bytes banana \
    >"$TMP/bad.log" 2>&1
rc=$?
{ [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "invalid value" "$TMP/bad.log"; } ||
    fail "bad option: exit status $rc"

if [ $fails -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all ddp-bench checks passed"
