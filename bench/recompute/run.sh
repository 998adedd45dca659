#!/usr/bin/env bash
# The cost of --recompute: ddp-bench train on the GPT with and without it, in turn, ROUNDS
# times (default 5; the order swapped every round), 2 ranks of one BLAS thread each, for
# the default configuration (L4 C256 H4 T128, batch 32 = 16 per rank) and a larger one
# (8 blocks, context 256). Prints each run's step time, activation bytes and peak
# resident memory (the largest rank's), then per configuration the medians and the
# median of the per-round ratios of the step's wall-clock time and of the training
# thread's CPU time (which other processes on a shared machine inflate less). BUILD_DIR (default build/), MPIEXEC.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
MPIEXEC=${MPIEXEC:-mpirun}
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A CONFIGS=(
    [default]="--model gpt"
    [large]="--model gpt --layers 8 --ctx 256"
)
for round in $(seq "$ROUNDS"); do
    for name in default large; do
        order=("" "--recompute")
        [ $((round % 2)) -eq 0 ] && order=("--recompute" "")
        for rc in "${order[@]}"; do
            tag=$name${rc:+-rc}
            # shellcheck disable=SC2086
            $MPIEXEC -np 2 --oversubscribe "$BUILD/ddp-bench" train ${CONFIGS[$name]} $rc \
                --threads 1 --warmup-steps 1 --bench-steps "$STEPS" \
                --json "$OUT/$tag.$round.json" >/dev/null
            python3 - "$OUT/$tag.$round.json" "$tag" "$round" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
print(f"round {sys.argv[3]} {sys.argv[2]:11s} {o['model']:26s} micro {o['micro_batch']:3d} "
      f"step {o['t_step_wall']:.3f} s (cpu {o['t_step_cpu']:.3f} s)  fwd {o['t_forward']:.3f} bwd {o['t_backward']:.3f}  "
      f"activations {o['activation_bytes'] / 1e6:7.1f} MB  peak RSS {o['peak_rss_mb']:7.1f} MiB")
PY
        done
    done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for name in ("default", "large"):
    runs = {v: [json.load(open(f"{out}/{name}{v}.{r}.json")) for r in range(1, rounds + 1)]
            for v in ("", "-rc")}
    med = lambda v, k: statistics.median(o[k] for o in runs[v])
    ratio = lambda k: statistics.median(b[k] / a[k] for a, b in zip(runs[""], runs["-rc"]))
    a0, b0 = runs[""][0], runs["-rc"][0]
    print(f"{name}: {a0['model']}, micro-batch {a0['micro_batch']} per rank | step "
          f"{med('', 't_step_wall'):.3f} s -> {med('-rc', 't_step_wall'):.3f} s with "
          f"--recompute (x{ratio('t_step_wall'):.3f}, median of per-round ratios), training "
          f"thread's CPU {med('', 't_step_cpu'):.3f} s -> {med('-rc', 't_step_cpu'):.3f} s "
          f"(x{ratio('t_step_cpu'):.3f}) | activations "
          f"{a0['activation_bytes'] / 1e6:.1f} -> {b0['activation_bytes'] / 1e6:.1f} MB | "
          f"peak RSS {med('', 'peak_rss_mb'):.1f} -> {med('-rc', 'peak_rss_mb'):.1f} MiB")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
