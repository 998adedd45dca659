#!/usr/bin/env bash
# ddp against PyTorch DistributedDataParallel on the CPU, training the same GPT (the
# defaults of --model gpt) side by side, in interleaved rounds.
#
#   bench/gpt/bench_vs_torch.sh [-r ROUNDS] [-n "1 2"] [-c] [-d] [-o CSV] [-- OPTIONS]
#
# Every round runs, for each number of ranks N, ddp (mpirun -np N ddp-bench train --model
# gpt) and PyTorch (bench/gpt/torch_ddp_gpt.py: under torch.distributed.run with gloo for
# N > 1, a plain model for N = 1), alternating which goes first from round to round, so
# that slow spells of a shared machine hit both alike. Both get the same threads per rank:
# the machine's CPUs shared among the ranks (2 cores: 1 rank x 2 threads, 2 ranks x 1),
# through OPENBLAS_NUM_THREADS (PyTorch's float32 matrix products go to the same system
# OpenBLAS), ddp's --threads and torch.set_num_threads. OPTIONS after -- go to both
# programs (they share the names: --layers --dim --heads --ctx --batch --warmup-steps
# --bench-steps --lr --clip --text ...).
#
# OPENBLAS_CORETYPE=SkylakeX is set for both (change with BENCH_CORETYPE): Debian's
# OpenBLAS 0.3.21 does not recognise newer CPUs and falls back to slow generic kernels;
# ddp's programs detect that and restart themselves with the kernels the CPU supports,
# PyTorch does not, so without it the comparison would be of the kernels, not of the
# frameworks. -d runs in the default environment instead (no OPENBLAS_CORETYPE).
# -c adds, for N > 1, both programs without gradient averaging (ddp-bench train
# --no-allreduce, DDP's no_sync): the ceiling of N ranks if communication were free.
#
# Prints each run (tokens/s and per-step phases in ms) and per N the median tokens/s of
# each, the median of the per-round ratios ddp/PyTorch, and the speed-ups over 1 rank.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
PYTHON=${PYTHON:-/usr/bin/python3} # Debian's, which has torch
rounds=5
ranks="1 2"
ceiling=0
default_env=0
csv=""
while getopts "r:n:cdo:" opt; do
    case $opt in
    r) rounds=$OPTARG ;;
    n) ranks=$OPTARG ;;
    c) ceiling=1 ;;
    d) default_env=1 ;;
    o) csv=$OPTARG ;;
    *) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
common=("$@")

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "$default_env" = 1 ]; then
    unset OPENBLAS_CORETYPE
else
    export OPENBLAS_CORETYPE=${BENCH_CORETYPE:-SkylakeX}
fi
cpus=$(nproc)
[ -x "$BUILD_DIR/ddp-bench" ] || { echo "$0: no $BUILD_DIR/ddp-bench: build first (launch/build)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows="$tmp/rows.csv"
echo "round,variant,framework,ranks,threads,allreduce,tokens_per_s,t_forward_ms,t_backward_ms,t_optim_ms,t_step_ms" >"$rows"

# run ROUND FRAMEWORK N ALLREDUCE(0|1)
run() {
    local r=$1 fw=$2 n=$3 ar=$4 threads=$((cpus / $3 > 0 ? cpus / $3 : 1))
    local name="$fw-$n" extra=()
    [ "$ar" = 0 ] && { name="$name-noar"; extra=(--no-allreduce); }
    local json="$tmp/r$r-$name.json" log="$tmp/r$r-$name.log"
    local cmd
    if [ "$fw" = ddp ]; then
        # No binding: PyTorch's launcher binds nothing either, and one rank of 2 threads
        # needs both cores (mpirun binds a rank to one core by default).
        cmd=(mpirun -np "$n" --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS="$threads"
             "$BUILD_DIR/ddp-bench" train --model gpt --threads "$threads" "${extra[@]}"
             "${common[@]}" --json "$json")
    elif [ "$n" = 1 ]; then
        cmd=("$PYTHON" "$ROOT/bench/gpt/torch_ddp_gpt.py" --threads "$threads" "${extra[@]}"
             "${common[@]}" --json "$json")
    else
        cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$n"
             "$ROOT/bench/gpt/torch_ddp_gpt.py" --threads "$threads" "${extra[@]}"
             "${common[@]}" --json "$json")
    fi
    if ! OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads "${cmd[@]}" >"$log" 2>&1; then
        echo "$0: round $r, $name failed: ${cmd[*]}" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    "$PYTHON" - "$json" "$r" "$name" "$fw" "$n" "$threads" "$ar" >>"$rows" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ms = ["%.1f" % (d[k] * 1e3) for k in ("t_forward", "t_backward", "t_optim", "t_step")]
print(",".join(sys.argv[2:8] + ["%.1f" % d["tokens_per_s"]] + ms))
EOF
    tail -1 "$rows" | awk -F, '{printf "round %s %-11s %3s x %s threads %8s tokens/s  fwd %7s bwd %7s optim %6s step %7s ms\n", $1, $2, $4, $5, $7, $8, $9, $10, $11}'
}

echo "$(lscpu | sed -n 's/^Model name: *//p'), $cpus CPUs; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}; options: ${common[*]:-(defaults)}"
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="ddp torch"; else order="torch ddp"; fi
    for n in $ranks; do
        for fw in $order; do
            run "$r" "$fw" "$n" 1
            if [ "$ceiling" = 1 ] && [ "$n" -gt 1 ]; then run "$r" "$fw" "$n" 0; fi
        done
    done
done

"$PYTHON" - "$rows" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by = {(r["round"], r["variant"]): float(r["tokens_per_s"]) for r in rows}
rounds = sorted({r["round"] for r in rows}, key=int)
variants = list(dict.fromkeys(r["variant"] for r in rows))
def med(v):
    return st.median(by[(r, v)] for r in rounds)
def ratio(a, b):
    xs = [by[(r, a)] / by[(r, b)] for r in rounds]
    return st.median(xs), " ".join("%.2f" % x for x in xs)
print("\nvariant       median tokens/s")
for v in variants:
    print("%-12s %10.0f   (%s)" % (v, med(v), " ".join("%.0f" % by[(r, v)] for r in rounds)))
print("\nddp / PyTorch, median of per-round ratios (rounds)")
for v in variants:
    if v.startswith("ddp-") and "torch" + v[3:] in variants:
        m, xs = ratio(v, "torch" + v[3:])
        print("%-12s %6.3f   (%s)" % (v[4:] + " rank(s)" if "noar" not in v else v[4:], m, xs))
print("\nspeed-up over 1 rank, median of per-round ratios")
for fw in ("ddp", "torch"):
    for v in variants:
        if v.startswith(fw + "-") and v != fw + "-1" and fw + "-1" in variants:
            m, xs = ratio(v, fw + "-1")
            print("%-12s %6.3f   (%s)" % (v, m, xs))
EOF
if [ -n "$csv" ]; then cp "$rows" "$csv"; fi
