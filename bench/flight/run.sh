#!/usr/bin/env bash
# The cost of the flight recorder and of --check-collectives: ddp-bench train on the
# default MLP and the default GPT, 2 ranks of one BLAS thread each, with the recorder off
# (--flight-ring 0), on (the default ring of 256) and on with --check-collectives, in turn,
# ROUNDS times (default 5; the order rotates every round). Prints each run's step time
# (wall clock, and the training thread's CPU time, which other processes on a shared
# machine inflate less), then per model the medians and the median of the per-round
# ratios to the run without the recorder. Then the recorder's own cost per collective,
# measured alone (record_cost.c), and the collectives a step makes. BUILD_DIR (default
# build/), MPIEXEC, MLP_STEPS (default 3000), GPT_STEPS (default 12), DUMP_S (seconds of
# each run whose ring is counted, default 20).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
MPIEXEC=${MPIEXEC:-mpirun}
ROUNDS=${ROUNDS:-5}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A MODEL=([mlp]="" [gpt]="--model gpt")
declare -A STEPS=([mlp]="--warmup-steps 200 --bench-steps ${MLP_STEPS:-3000}"
                  [gpt]="--warmup-steps 2 --bench-steps ${GPT_STEPS:-12}")
declare -A VARIANT=([off]="--flight-ring 0" [on]="" [check]="--check-collectives")
ORDER=(off on check)
for round in $(seq "$ROUNDS"); do
    for model in mlp gpt; do
        for k in 0 1 2; do
            v=${ORDER[$(((k + round) % 3))]}
            # shellcheck disable=SC2086
            $MPIEXEC -np 2 --oversubscribe "$BUILD/ddp-bench" train ${MODEL[$model]} \
                ${STEPS[$model]} ${VARIANT[$v]} --json "$OUT/$model-$v-$round.json" >/dev/null
            python3 - "$OUT/$model-$v-$round.json" "$model" "$v" "$round" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"round {sys.argv[4]} {sys.argv[2]:3} {sys.argv[3]:5}: step {1e3 * d['t_step_wall']:.3f} ms wall, "
      f"{1e3 * d['t_step_cpu']:.3f} ms CPU")
EOF
        done
    done
done
python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for model in ("mlp", "gpt"):
    t = {v: [json.load(open(f"{out}/{model}-{v}-{r}.json")) for r in range(1, rounds + 1)]
         for v in ("off", "on", "check")}
    for key, what in (("t_step_wall", "wall"), ("t_step_cpu", "CPU")):
        med = {v: statistics.median(d[key] for d in t[v]) for v in t}
        ratio = {v: statistics.median(a[key] / b[key] for a, b in zip(t[v], t["off"]))
                 for v in ("on", "check")}
        print(f"{model} {what}: median step off {1e3 * med['off']:.3f} ms, on {1e3 * med['on']:.3f} ms, "
              f"check {1e3 * med['check']:.3f} ms; median ratio on/off {ratio['on']:.4f}, "
              f"check/off {ratio['check']:.4f}")
EOF
# The recorder alone: nanoseconds per collective on one thread and on two at once.
cc -O2 -I"$ROOT/include" "$ROOT/bench/flight/record_cost.c" "$BUILD/libddp.a" -lz -lm -lpthread \
    -o "$OUT/record_cost"
"$OUT/record_cost"
# Collectives per step: mpirun's SIGTERM makes every rank write its ring, whose records
# of one whole step are counted. Sent with kill, not timeout: timeout's SIGCONT after it
# cuts mpirun's grace period short (Open MPI 4.1 sends SIGKILL when a signal interrupts
# its wait), and a rank killed before its handler runs writes nothing.
for model in mlp gpt; do
    mkdir -p "$OUT/dump-$model"
    # shellcheck disable=SC2086
    $MPIEXEC -np 2 --oversubscribe "$BUILD/ddp-train" ${MODEL[$model]} --steps 1000000 \
        --log-every 1000 --quiet --flight-dir "$OUT/dump-$model" >/dev/null 2>&1 &
    pid=$!
    sleep "${DUMP_S:-20}"
    kill -TERM "$pid"
    wait "$pid" || true
    python3 - "$OUT/dump-$model/flight-rank0.json" "$model" <<'EOF'
import collections, json, sys
d = json.load(open(sys.argv[1]))
steps = collections.Counter(e["step"] for e in d["entries"] if e["step"] > 0)
whole = [n for s, n in sorted(steps.items())[1:-1]]
typical = collections.Counter(whole).most_common(1)[0][0]
print(f"{sys.argv[2]}: {typical} collective(s) in most steps, {max(whole)} at most (over "
      f"{len(whole)} steps of rank 0's ring, written on {d['reason']})")
EOF
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
