#!/usr/bin/env bash
# ddp against PyTorch DistributedDataParallel on the CPU, training the same model (the
# defaults of --model gpt, or of --model cnn with -m cnn) side by side, in interleaved rounds.
#
#   bench/vs-torch.sh [-m gpt|cnn|mlp] [-p "DDP OPTIONS"] [-b "DDP OPTIONS"] [-t "PYTORCH OPTIONS"]
#                     [-r ROUNDS] [-n "1 2"] [-c] [-d] [-q SECONDS] [-o CSV] [-- OPTIONS]
#
# Every round runs, for each number of ranks N, ddp (mpirun -np N ddp-bench train --model
# MODEL) and PyTorch (bench/MODEL/torch_ddp_MODEL.py: under torch.distributed.run with gloo
# for N > 1, a plain model for N = 1), alternating which goes first from round to round, so
# that slow spells of a shared machine hit both alike. Both get the same threads per rank:
# the machine's CPUs shared among the ranks (2 cores: 1 rank x 2 threads, 2 ranks x 1),
# through OPENBLAS_NUM_THREADS (PyTorch's float32 matrix products go to the same system
# OpenBLAS), ddp's --threads and torch.set_num_threads. OPTIONS after -- go to both
# programs (they share the names: --layers --dim --heads --ctx --batch --warmup-steps
# --bench-steps --lr --clip --text ... for the GPT; --batch --channels --hidden --kernel
# --warmup-steps --bench-steps --lr for the CNN). Rates are tokens/s for the GPT, images/s
# for the CNN. -t gives options to PyTorch's script only (-t --channels-last: the CNN in
# PyTorch's channels-last memory format, ddp's layout; -t --autocast: the forward under
# CPU autocast to bf16), -p to ddp only (-p "--precision bf16"); -b "DDP OPTIONS" adds a
# second ddp in every round, "ddpbase" (-b "--precision fp32": ddp's own baseline), and
# the summary its ratios too. -m mlp is the MLP (ddp's --model mlp; PyTorch's script of
# the CNN without convolution stages: the same Linear and ReLU layers; give --hidden).
#
# OPENBLAS_CORETYPE=SkylakeX is set for both (change with BENCH_CORETYPE): Debian's
# OpenBLAS 0.3.21 does not recognise newer CPUs and falls back to slow generic kernels;
# ddp's programs detect that and restart themselves with the kernels the CPU supports,
# PyTorch does not, so without it the comparison would be of the kernels, not of the
# frameworks. -d runs in the default environment instead (no OPENBLAS_CORETYPE).
# -c adds, for N > 1, both programs without gradient averaging (ddp-bench train
# --no-allreduce, DDP's no_sync): the ceiling of N ranks if communication were free.
#
# On a shared machine, other jobs skew single runs by 2x and more. Before each run the
# script waits (up to -q SECONDS, default 600; 0: not at all) until the CPUs are idle, and
# for each run it measures how much CPU other processes took meanwhile ("others", in
# cores: the machine's busy time minus the run's own user and system time, over its wall
# time). Rounds in which every run had others below 0.1 core are "clean".
#
# Prints each run (its rate, per-step phases in ms, ddp's exposed communication, others),
# and per N the median rate of each, the median of the per-round ratios ddp/PyTorch
# and the speed-ups over 1 rank, over all rounds and over the clean rounds
# (summarize_rounds.py).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
PYTHON=${PYTHON:-/usr/bin/python3} # Debian's, which has torch
model=gpt
rounds=5
ranks="1 2"
ceiling=0
default_env=0
quiet_max=600
csv=""
torch_only=()
ddp_only=()
base_only=()
base=0
while getopts "m:p:b:t:r:n:cdq:o:" opt; do
    case $opt in
    m) model=$OPTARG ;;
    p) read -r -a ddp_only <<<"$OPTARG" ;;
    b) read -r -a base_only <<<"$OPTARG"; base=1 ;;
    t) read -r -a torch_only <<<"$OPTARG" ;;
    r) rounds=$OPTARG ;;
    n) ranks=$OPTARG ;;
    c) ceiling=1 ;;
    d) default_env=1 ;;
    q) quiet_max=$OPTARG ;;
    o) csv=$OPTARG ;;
    *) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
torch_model=()
case $model in
gpt) unit=tokens/s; script=$HERE/gpt/torch_ddp_gpt.py ;;
cnn) unit=images/s; script=$HERE/cnn/torch_ddp_cnn.py ;;
mlp) unit=images/s; script=$HERE/cnn/torch_ddp_cnn.py; torch_model=(--channels none) ;;
*) echo "$0: -m $model: the models compared are gpt, cnn and mlp" >&2; exit 2 ;;
esac
[ "${1:-}" = "--" ] && shift
common=("$@")

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "$default_env" = 1 ]; then
    unset OPENBLAS_CORETYPE
else
    export OPENBLAS_CORETYPE=${BENCH_CORETYPE:-SkylakeX}
fi
cpus=$(nproc)
hz=$(getconf CLK_TCK)
[ -x "$BUILD_DIR/ddp-bench" ] || { echo "$0: no $BUILD_DIR/ddp-bench: build first (launch/build)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows="$tmp/rows.csv"
echo "round,variant,framework,ranks,threads,allreduce,others_cores,rate,t_forward_ms,t_backward_ms,t_optim_ms,t_step_ms,t_exposed_ms" >"$rows"

# Busy and total jiffies of all CPUs since boot (busy: user, nice, system, irq, softirq,
# steal).
cpu_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

# Waits until the CPUs were at most 10% busy over 2 s, or quiet_max seconds have passed.
wait_quiet() {
    local start=$SECONDS b0 t0 b1 t1
    while [ "$quiet_max" -gt 0 ]; do
        read -r b0 t0 < <(cpu_jiffies)
        sleep 2
        read -r b1 t1 < <(cpu_jiffies)
        [ $((10 * (b1 - b0))) -le $((t1 - t0)) ] && return
        if [ $((SECONDS - start)) -ge "$quiet_max" ]; then
            echo "(the CPUs are still busy after $quiet_max s: running anyway)"
            return
        fi
        sleep 5
    done
}

# run ROUND FRAMEWORK N ALLREDUCE(0|1)
run() {
    local r=$1 fw=$2 n=$3 ar=$4 threads=$((cpus / $3 > 0 ? cpus / $3 : 1))
    local name="$fw-$n" extra=()
    [ "$ar" = 0 ] && { name="$name-noar"; extra=(--no-allreduce); }
    local json="$tmp/r$r-$name.json" log="$tmp/r$r-$name.log"
    local cmd
    if [ "$fw" = ddp ] || [ "$fw" = ddpbase ]; then
        local own=("${ddp_only[@]}")
        [ "$fw" = ddpbase ] && own=("${base_only[@]}")
        # No binding: PyTorch's launcher binds nothing either, and one rank of 2 threads
        # needs both cores (mpirun binds a rank to one core by default).
        cmd=(mpirun -np "$n" --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS="$threads"
             "$BUILD_DIR/ddp-bench" train --model "$model" --threads "$threads" "${extra[@]}"
             "${common[@]}" "${own[@]}" --json "$json")
    elif [ "$n" = 1 ]; then
        cmd=("$PYTHON" "$script" --threads "$threads" "${extra[@]}"
             "${common[@]}" "${torch_model[@]}" "${torch_only[@]}" --json "$json")
    else
        # --redirects/--tee 2 (stderr to a log file and the console): their default, 0,
        # fails in Debian's torch 1.13 under Python 3.11, whose IntFlag no longer lists the
        # zero member that torch.distributed.run looks it up by ('NoneType' object has no
        # attribute 'get').
        cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$n"
             --redirects 2 --tee 2 "$script" --threads "$threads" "${extra[@]}"
             "${common[@]}" "${torch_model[@]}" "${torch_only[@]}" --json "$json")
    fi
    wait_quiet
    local b0 t0 b1 t1 w0 w1 others
    read -r b0 t0 < <(cpu_jiffies)
    w0=$(date +%s.%N)
    # A run that hangs (see torch_ddp_gpt.py on PyTorch's exit) fails the round, not the night.
    if ! OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads /usr/bin/time -f "%U %S" \
        -o "$tmp/cpu" timeout 900 "${cmd[@]}" >"$log" 2>&1; then
        echo "$0: round $r, $name failed: ${cmd[*]}" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    w1=$(date +%s.%N)
    read -r b1 t1 < <(cpu_jiffies)
    # The run's own CPU time (its whole process tree, as /usr/bin/time counts it) taken
    # from the machine's busy time leaves what other processes took.
    others=$(awk -v b=$((b1 - b0)) -v hz="$hz" -v w="$(echo "$w1 - $w0" | bc)" \
        '{o = (b / hz - $1 - $2) / w; printf "%.2f", (o > 0 ? o : 0)}' "$tmp/cpu")
    "$PYTHON" "$HERE/summarize_rounds.py" --row "$json" "$r" "$name" "$fw" "$n" "$threads" \
        "$ar" "$others" >>"$rows"
    tail -1 "$rows" | awk -F, -v unit="$unit" '{printf "round %s %-12s %s x %s threads %8s %s  fwd %6s bwd %6s optim %5s step %6s exposed %5s ms  others %s\n", $1, $2, $4, $5, $8, unit, $9, $10, $11, $12, ($13 == "" ? "-" : $13), $7}'
}

echo "$(lscpu | sed -n 's/^Model name: *//p'), $cpus CPUs; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}; options: ${common[*]:-(defaults)}; ddp only: ${ddp_only[*]:-(none)}; ddp baseline: ${base_only[*]:-(none)}; PyTorch only: ${torch_only[*]:-(none)}"
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="ddp torch"; else order="torch ddp"; fi
    [ "$base" = 1 ] && order="$order ddpbase"
    for n in $ranks; do
        for fw in $order; do
            run "$r" "$fw" "$n" 1
            if [ "$ceiling" = 1 ] && [ "$n" -gt 1 ]; then run "$r" "$fw" "$n" 0; fi
        done
    done
done
"$PYTHON" "$HERE/summarize_rounds.py" --unit "$unit" "$rows"
if [ -n "$csv" ]; then cp "$rows" "$csv"; fi
