#!/usr/bin/env bash
# Where a GPT training step's CPU time goes, in ddp and in PyTorch, at 1 rank: GEMM
# (OpenBLAS) against everything else, and the largest of the rest, in ms per step.
#
#   bench/gpt/profile_vs_torch.sh [-t THREADS] [-n RANKS] [-- OPTIONS for both programs]
#
# Each program runs twice under `perf record -g` (5 and 20 steps); perf_breakdown.py takes
# the difference, so start-up, loading and importing cancel out. Then PyTorch runs once
# more under torch.profiler for its operators by name (libtorch_cpu has no symbols for
# perf). One thread by default (-t 1): with more, OpenBLAS's idle threads spin inside
# OpenBLAS and would count as GEMM. With -n RANKS (default 1), ddp runs under mpirun and
# PyTorch under torch.distributed.run, and the times are per rank (the mean of the ranks).
# OPENBLAS_CORETYPE=SkylakeX for both (as
# bench/vs-torch.sh, which says why; BENCH_CORETYPE changes it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
PYTHON=${PYTHON:-/usr/bin/python3}
threads=1
ranks=1
while getopts "t:n:" opt; do
    case $opt in
    t) threads=$OPTARG ;;
    n) ranks=$OPTARG ;;
    *) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
common=("$@")
export OPENBLAS_CORETYPE=${BENCH_CORETYPE:-SkylakeX} OPENBLAS_NUM_THREADS=$threads
export OMP_NUM_THREADS=$threads OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
freq=999
warm=2 short=3 long=18

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$(lscpu | sed -n 's/^Model name: *//p'), $ranks rank(s) x $threads thread(s), OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE; options: ${common[*]:-(defaults)}"
for prog in ddp torch; do
    for n in $short $long; do
        if [ $prog = ddp ]; then
            cmd=(mpirun -np "$ranks" --oversubscribe --bind-to none "$BUILD_DIR/ddp-bench" train
                 --model gpt --threads "$threads")
        elif [ "$ranks" = 1 ]; then
            cmd=("$PYTHON" "$ROOT/bench/gpt/torch_ddp_gpt.py" --threads "$threads")
        else
            # --redirects/--tee 2: see bench/vs-torch.sh.
            cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$ranks"
                 --redirects 2 --tee 2 "$ROOT/bench/gpt/torch_ddp_gpt.py" --threads "$threads")
        fi
        perf record -q -F $freq -g -o "$tmp/$prog-$n.perf" -- "${cmd[@]}" "${common[@]}" \
            --warmup-steps $warm --bench-steps "$n" --json "$tmp/$prog-$n.json" >"$tmp/$prog-$n.log" 2>&1 ||
            { echo "$0: $prog failed:" >&2; tail -20 "$tmp/$prog-$n.log" >&2; exit 1; }
    done
    "$PYTHON" - "$tmp/$prog-$long.json" "$prog" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print("\n%s: %.0f tokens/s; wall ms per step: forward %.1f, backward %.1f, optimizer %.1f, step %.1f" % (
    sys.argv[2], d["tokens_per_s"], d["t_forward"] * 1e3, d["t_backward"] * 1e3, d["t_optim"] * 1e3, d["t_step"] * 1e3))
EOF
    "$PYTHON" "$ROOT/bench/gpt/perf_breakdown.py" --freq $freq --ranks "$ranks" "$tmp/$prog-$short.perf" \
        $((warm + short)) "$tmp/$prog-$long.perf" $((warm + long))
done
echo
# Rank 0's operators, launched as above.
if [ "$ranks" = 1 ]; then
    cmd=("$PYTHON" "$ROOT/bench/gpt/torch_ddp_gpt.py")
else
    cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$ranks" --redirects 2
         --tee 2 "$ROOT/bench/gpt/torch_ddp_gpt.py")
fi
"${cmd[@]}" --threads "$threads" "${common[@]}" --warmup-steps $warm --bench-steps 3 --profile 2>&1 \
    >/dev/null | grep -A 25 "operators by self CPU time"
