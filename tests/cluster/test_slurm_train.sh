#!/usr/bin/env bash
# launch/ddp.sbatch under a real Slurm on 2 emulated nodes (cluster/slurm: slurmctld and
# munged on the bridge, one slurmd per network namespace). Submitted with sbatch as 2
# nodes x 2 ranks (srun --mpi=pmix, task/affinity binding), the job:
#   - runs its ranks on both nodes (each node's link carries at least one gradient's
#     bytes per step) and ends with the parameters of the same run under mpirun
#     (launch/ddp-run on the same emulated nodes), bitwise or to a relative 1e-5;
#   - ends, every rank of it on every node, when scancel'd mid-run;
#   - when a rank is SIGKILLed, ends its step within --timeout with srun naming the
#     task, and with DDP_RESTARTS=1 resumes from the last checkpoint to the parameters
#     of the uninterrupted run (bitwise);
#   - when a node's slurmd is SIGKILLed, is ended by Slurm (node failure, naming the
#     node), the ranks left on that node end within --timeout, and with sbatch
#     --requeue the job runs again once the node is back, resumes from the last
#     checkpoint and ends with the uninterrupted run's parameters (bitwise).
# The cluster is always removed at the end: no daemon, namespace, process or file left.
#
# Needs root (network namespaces), iproute2, util-linux, python3, slurm-wlm and munge
# (launch/install-deps installs them); DDP_TRAIN (path to ddp-train), Fashion-MNIST in
# DDP_FASHION_MNIST (default below). Exits 77 (skipped) when any of these is missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SLURM=$ROOT/cluster/slurm
EMU=$ROOT/cluster/emu
RUN=$ROOT/launch/ddp-run
SBATCH_SCRIPT=$ROOT/launch/ddp.sbatch
TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
DATA=${DDP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
STEPS=80
TIMEOUT=10 # ddp-train's --timeout (the watchdog)

if [[ $(id -u) -ne 0 ]]; then
    echo "skip: the Slurm cluster on emulated nodes needs root (network namespaces, daemons)"
    exit 77
fi
for tool in ip:iproute2 unshare:util-linux nsenter:util-linux runuser:util-linux python3:python3 \
    slurmctld:slurm-wlm slurmd:slurm-wlm sbatch:slurm-wlm srun:slurm-wlm munged:munge; do
    command -v "${tool%%:*}" >/dev/null || {
        echo "skip: ${tool%%:*} is not installed (Debian package ${tool#*:}; launch/install-deps installs it)"
        exit 77
    }
done
[[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/mpi_pmix.so || -n $(find /usr/lib -name mpi_pmix.so -print -quit 2>/dev/null) ]] || {
    echo "skip: Slurm's PMIx plugin (mpi_pmix.so) is not installed"
    exit 77
}
if ! ip netns add "ddps-probe$$" 2>/dev/null; then
    echo "skip: this machine refuses network namespaces (no CAP_SYS_ADMIN/NET_ADMIN)"
    exit 77
fi
ip netns del "ddps-probe$$"
[[ -x $TRAIN && -f $TRAIN ]] || {
    echo "FAIL: DDP_TRAIN='$TRAIN' is not an executable file: build ddp-train first"
    exit 1
}
[[ -d $DATA ]] || {
    echo "FAIL: Fashion-MNIST not found in $DATA (apt-get install dataset-fashion-mnist)"
    exit 1
}

# A cluster of its own (prefix and directory, both named after this process), so that
# a cluster someone has up stays, and a run killed by CTest can be cleaned up later.
# munged (as the munge user) must reach its socket through the directory.
TMP=$(mktemp -d "/tmp/ddp-slurm-test.$$.XXXXXX")
chmod 755 "$TMP"
PREFIX=ddps$$
DIR=$TMP/slurm
N0=${PREFIX}0 N1=${PREFIX}1
cleanup() {
    "$SLURM" down --dir "$DIR" >/dev/null 2>&1 || true
    "$EMU" down --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ns in $(ip netns list | awk '{print $1}' | sed -n 's/^ddps\([0-9][0-9]*\)-sw$/\1/p'); do
    if ! kill -0 "$ns" 2>/dev/null; then
        echo "== removing the cluster of an earlier run that was killed: ddps$ns"
        "$EMU" down --dir "$TMP/stale" --prefix "ddps$ns" || true
        rm -rf /tmp/ddp-slurm-test."$ns".*
    fi
done

fails=0
ok() { echo "ok   $1"; }
bad() {
    echo "FAIL $1"
    fails=$((fails + 1))
}
show() { sed 's/^/     | /' "$1" | tail -n "${2:-25}"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# compare A B: B is the reference; bitwise equal, or relative L2 error under 1e-5.
compare() { python3 "$ROOT/tests/compare_params.py" "$1" "$2"; }

sl() { "$SLURM" run --dir "$DIR" -- "$@"; }
state() { sl scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
restarts() { sl scontrol show job -o "$1" 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2; }

# wait_state JOB SECONDS STATE...: until the job is in one of the states; 1 on time-out.
wait_state() {
    local job=$1 limit=$2 t0 s w
    shift 2
    t0=$(date +%s)
    while :; do
        s=$(state "$job")
        for w in "$@"; do [[ $s != "$w" ]] || return 0; done
        (($(date +%s) - t0 < limit)) || return 1
        sleep 0.3
    done
}

# wait_log FILE ERE SECONDS: until FILE has a line matching ERE; 1 on time-out.
wait_log() {
    local t0
    t0=$(date +%s)
    until grep -Eq -e "$2" "$1" 2>/dev/null; do
        (($(date +%s) - t0 < $3)) || return 1
        sleep 0.2
    done
}

# The job's processes on node i: all in its namespace but slurmd.
job_pids() {
    local ns=$PREFIX$1 p
    for p in $(ip netns pids "$ns" 2>/dev/null); do
        [[ $(cat "/proc/$p/comm" 2>/dev/null) == slurmd ]] || echo "$p"
    done
}
# wait_no_job_pids SECONDS NODE...: until no job process is left on those nodes.
wait_no_job_pids() {
    local limit=$1 t0 i left
    shift
    t0=$(date +%s)
    while :; do
        left=""
        for i in "$@"; do left+=$(job_pids "$i" | tr '\n' ' '); done
        [[ -n ${left// /} ]] || return 0
        (($(date +%s) - t0 < limit)) || {
            echo "$left"
            return 1
        }
        sleep 0.3
    done
}
# rank_pid NODE RANK: the process of that rank (SLURM_PROCID) on that node.
rank_pid() {
    local p
    for p in $(job_pids "$1"); do
        [[ $(cat "/proc/$p/comm" 2>/dev/null) != slurmstepd ]] || continue
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_PROCID=$2" && echo "$p" && return 0
    done
    return 1
}

sent() { # bytes sent by each node's eth0: "node0 node1"
    echo "$(ip netns exec "$N0" cat /sys/class/net/eth0/statistics/tx_bytes)" \
        "$(ip netns exec "$N1" cat /sys/class/net/eth0/statistics/tx_bytes)"
}

# The job's program: ddp-train, paced while the file $TMP/pace exists (every rank sleeps
# that many milliseconds before each all-reduce: the same arithmetic, slower), so that
# a failure can be injected while the job still runs; a restarted step, started after
# the test removed the file, runs at full speed.
cat >"$TMP/train" <<EOW
#!/bin/sh
if [ -e "$TMP/pace" ]; then export DDP_INJECT_DELAY=allreduce:\${SLURM_PROCID:-0}:\$(cat "$TMP/pace"); fi
exec "$TRAIN" "\$@"
EOW
chmod +x "$TMP/train"

# Constant learning rate: the parameters move enough in a few steps that a wrong
# gradient would show. fp32 gradients: the traffic check counts 4 bytes per parameter.
ARGS=(--data "$DATA" --steps "$STEPS" --hidden 32 --batch 128 --schedule constant --warmup 0
    --lr 0.05 --seed 7 --threads 1 --grad-dtype fp32 --log-every 10 --timeout "$TIMEOUT")
# 2 nodes x 2 ranks, no GPUs (ddp.sbatch asks for 4 per node by default).
LAYOUT=(--nodes 2 --ntasks-per-node 2 --cpus-per-task 1 --gpus-per-node 0 --time 5)

# submit NAME [SBATCH-OPTION...] -- [DDP-TRAIN-ARG...]: prints the job id.
submit() {
    local name=$1
    shift
    local -a opts=()
    while (($#)) && [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
    sl env DDP_TRAIN="$TMP/train" sbatch --parsable --job-name "$name" -o "$TMP/$name.out" \
        "${LAYOUT[@]}" "${opts[@]}" "$SBATCH_SCRIPT" "${ARGS[@]}" "$@"
}

T_ALL=$(now)
echo "== bringing up a Slurm cluster on 2 emulated nodes ($PREFIX)"
t=$(now)
if ! "$SLURM" up 2 --dir "$DIR" --prefix "$PREFIX" >"$TMP/up.log" 2>&1; then
    show "$TMP/up.log"
    echo "FAIL cluster/slurm up failed"
    exit 1
fi
ok "cluster up in $(since "$t") s: $(grep -o 'TaskPlugin=[a-z/]*' "$TMP/up.log")"
idle=$(sl sinfo -h -N -t idle -o '%N' | sort -u | paste -sd ' ')
[[ $idle == "$N0 $N1" ]] && ok "both nodes idle: $idle" || bad "nodes idle: '$idle', expected '$N0 $N1'"

echo "== reference: the same run under mpirun on the same nodes (launch/ddp-run)"
t=$(now)
if ! timeout -k 5 180 "$EMU" run --dir "$DIR/emu" -- "$RUN" -n 4 --hosts 10.77.0.1:2,10.77.0.2:2 \
    --bin "$TRAIN" -- "${ARGS[@]}" --dump-params "$TMP/ref.bin" >"$TMP/ref.log" 2>&1; then
    show "$TMP/ref.log"
    echo "FAIL the mpirun reference run failed; nothing to compare with"
    exit 1
fi
grad_bytes=$(stat -c %s "$TMP/ref.bin")
echo "   $((grad_bytes / 4)) parameters, $grad_bytes gradient bytes per step, $(since "$t") s"

echo "== sbatch launch/ddp.sbatch: 2 nodes x 2 ranks"
read -r -a before <<<"$(sent)"
t=$(now)
job=$(submit plain -- --dump-params "$TMP/plain.bin")
if wait_state "$job" 180 COMPLETED FAILED CANCELLED NODE_FAIL TIMEOUT && [[ $(state "$job") == COMPLETED ]]; then
    ok "plain: job $job completed in $(since "$t") s"
else
    bad "plain: job $job ended as '$(state "$job")', not COMPLETED"
    show "$TMP/plain.out"
    sl scancel "$job" 2>/dev/null || true
fi
read -r -a after <<<"$(sent)"
nodes=$(sed -n 's/^ddp.sbatch: job [0-9]*, 4 ranks on 2 nodes (\(.*\)),.*/\1/p' "$TMP/plain.out")
[[ -n $nodes && $(sl scontrol show hostnames "$nodes" | paste -sd ' ') == "$N0 $N1" ]] &&
    ok "plain: Slurm ran the 4 ranks on both nodes ($nodes)" ||
    bad "plain: not 4 ranks on $N0 and $N1: $(grep '^ddp.sbatch:' "$TMP/plain.out" || true)"
! grep -q "lacks support for cpu binding" "$TMP/plain.out" &&
    ok "plain: srun bound the ranks (no 'lacks support for cpu binding')" ||
    bad "plain: srun could not bind: $(grep 'cpu binding' "$TMP/plain.out")"
need=$((STEPS * grad_bytes))
for h in 0 1; do
    d=$((after[h] - before[h]))
    ((d >= need)) && ok "plain: node $h sent $d bytes over its link (at least $STEPS x $grad_bytes)" ||
        bad "plain: node $h sent only $d bytes over its link, expected at least $need"
done
if msg=$(compare "$TMP/plain.bin" "$TMP/ref.bin" 2>&1); then
    ok "plain: parameters equal the mpirun run's ($msg)"
else
    bad "plain: parameters differ from the mpirun run's: $msg"
fi
left=$(wait_no_job_pids 10 0 1) && ok "plain: no process left on the nodes" ||
    bad "plain: processes left on the nodes: $left"

echo "== scancel mid-run"
echo 100 >"$TMP/pace"
job=$(submit cancel --)
if wait_log "$TMP/cancel.out" 'step 10/' 60; then
    t=$(now)
    sl scancel "$job"
    wait_state "$job" 30 CANCELLED && ok "cancel: job $job cancelled at step 10+, ended in $(since "$t") s" ||
        bad "cancel: job $job is '$(state "$job")' 30 s after scancel"
    left=$(wait_no_job_pids 15 0 1) && ok "cancel: every rank ended on both nodes ($(since "$t") s after scancel)" ||
        bad "cancel: processes left on the nodes 15 s after scancel: $left"
else
    bad "cancel: the job did not reach step 10 within 60 s"
    show "$TMP/cancel.out"
    sl scancel "$job" 2>/dev/null || true
fi

echo "== a rank SIGKILLed; DDP_RESTARTS=1 restarts the step in the allocation"
echo 100 >"$TMP/pace"
job=$(submit rankkill --export=ALL,DDP_RESTARTS=1 -- --checkpoint-dir "$TMP/ck1" --checkpoint-every 10 \
    --dump-params "$TMP/rankkill.bin")
if wait_log "$TMP/rankkill.out" 'checkpoint of step 10 ' 60 && pid=$(rank_pid 1 3); then
    rm -f "$TMP/pace"
    t=$(now)
    kill -KILL "$pid"
    if wait_log "$TMP/rankkill.out" 'restart 1 of 1' $((TIMEOUT + 5)); then
        el=$(since "$t")
        awk -v e="$el" -v l="$TIMEOUT" 'BEGIN { exit !(e <= l) }' &&
            ok "rankkill: the step ended ${el} s after rank 3 was killed (--timeout $TIMEOUT)" ||
            bad "rankkill: the step ended ${el} s after the kill, later than --timeout $TIMEOUT"
    else
        bad "rankkill: no restart within $((TIMEOUT + 5)) s of killing rank 3"
    fi
    grep -Eq 'task 3: Killed' "$TMP/rankkill.out" && ok "rankkill: srun names the rank: $(grep -m1 'task 3: Killed' "$TMP/rankkill.out")" ||
        bad "rankkill: no message names task 3"
    if wait_state "$job" 120 COMPLETED FAILED CANCELLED NODE_FAIL TIMEOUT && [[ $(state "$job") == COMPLETED ]]; then
        ok "rankkill: job $job completed after the restart"
    else
        bad "rankkill: job $job ended as '$(state "$job")'"
        show "$TMP/rankkill.out"
    fi
    grep -Eq 'resumed from .*ckpt-[0-9]+\.ddp: step [1-9]' "$TMP/rankkill.out" &&
        ok "rankkill: $(grep -Eo 'resumed from .*ckpt-[0-9]+\.ddp: step [0-9]+' "$TMP/rankkill.out" | head -n 1)" ||
        bad "rankkill: the restarted step did not resume from a checkpoint"
    if msg=$(compare "$TMP/rankkill.bin" "$TMP/ref.bin" 2>&1) && [[ $msg == bitwise* ]]; then
        ok "rankkill: parameters equal the uninterrupted run's ($msg)"
    else
        bad "rankkill: parameters differ from the uninterrupted run's: $msg"
    fi
else
    bad "rankkill: no checkpoint of step 10 or no rank 3 on $N1 within 60 s"
    show "$TMP/rankkill.out"
    sl scancel "$job" 2>/dev/null || true
fi
left=$(wait_no_job_pids 15 0 1) && ok "rankkill: no process left on the nodes" ||
    bad "rankkill: processes left on the nodes: $left"

echo "== $N1's slurmd SIGKILLed; sbatch --requeue runs the job again when the node is back"
# Slurm notices a lost node some pings after SlurmdTimeout (6 s in cluster/slurm's
# slurm.conf): 20-30 s here; paced to 0.8 s a step, the job's 70 steps after the kill
# last twice that.
echo 800 >"$TMP/pace"
job=$(submit nodekill --requeue --open-mode=append -- --checkpoint-dir "$TMP/ck2" \
    --checkpoint-every 10 --dump-params "$TMP/nodekill.bin")
if wait_log "$TMP/nodekill.out" 'checkpoint of step 10 ' 60; then
    rm -f "$TMP/pace"
    t=$(now)
    kill -KILL "$("$SLURM" pid --dir "$DIR" slurmd "$N1")"
    if wait_log "$TMP/nodekill.out" "Node failure on $N1" 60 &&
        wait_state "$job" 30 PENDING REQUEUED && [[ $(restarts "$job") -ge 1 ]]; then
        ok "nodekill: Slurm ended the job $(since "$t") s after the kill: $(grep -m1 'Node failure' "$TMP/nodekill.out"); requeued"
    else
        bad "nodekill: the job was not ended and requeued within 90 s (state '$(state "$job")')"
        show "$TMP/nodekill.out"
    fi
    # The ranks left on N1 end through ddp's watchdog (--timeout), then the flight
    # recorder's bounded verdict (at most 15 s, rank 0 being gone: ddp_flight_conclude)
    # and the abort (at most 10 s: src/cli/failure.c).
    t=$(now)
    left=$(wait_no_job_pids $((TIMEOUT + 35)) 1) &&
        ok "nodekill: the ranks left on $N1 ended $(since "$t") s after the job (ddp's watchdog, --timeout $TIMEOUT, and the flight recorder)" ||
        bad "nodekill: processes left on $N1 $((TIMEOUT + 35)) s after the job ended: $left"
    "$SLURM" start-slurmd --dir "$DIR" "$N1" >/dev/null
    # Slurm holds a requeued job for 120 s (its BeginTime); no need to wait here.
    sl scontrol update JobId="$job" StartTime=now
    if wait_state "$job" 120 COMPLETED FAILED CANCELLED NODE_FAIL TIMEOUT && [[ $(state "$job") == COMPLETED ]]; then
        ok "nodekill: job $job completed once $N1 was back"
    else
        bad "nodekill: job $job ended as '$(state "$job")'"
        show "$TMP/nodekill.out"
    fi
    grep -q 'requeued (restart 1); resuming' "$TMP/nodekill.out" &&
        grep -Eq 'resumed from .*ckpt-[0-9]+\.ddp: step [1-9]' "$TMP/nodekill.out" &&
        ok "nodekill: $(grep -Eo 'resumed from .*ckpt-[0-9]+\.ddp: step [0-9]+' "$TMP/nodekill.out" | head -n 1)" ||
        bad "nodekill: the requeued job did not resume from a checkpoint"
    if msg=$(compare "$TMP/nodekill.bin" "$TMP/ref.bin" 2>&1) && [[ $msg == bitwise* ]]; then
        ok "nodekill: parameters equal the uninterrupted run's ($msg)"
    else
        bad "nodekill: parameters differ from the uninterrupted run's: $msg"
    fi
else
    bad "nodekill: no checkpoint of step 10 within 60 s"
    show "$TMP/nodekill.out"
    sl scancel "$job" 2>/dev/null || true
fi

echo "== down"
"$SLURM" down --dir "$DIR" >"$TMP/down.log" 2>&1 || bad "cluster/slurm down failed: $(cat "$TMP/down.log")"
[[ -z $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX([0-9]+|-sw)$") ]] &&
    ok "down: no namespace of the cluster left" || bad "down: namespaces left: $(ip netns list | grep "$PREFIX")"
pgrep -f "$DIR" >/dev/null && bad "down: processes left: $(pgrep -af "$DIR")" || ok "down: no daemon left"
[[ ! -e $DIR ]] && ok "down: no file of the cluster left" || bad "down: files left in $DIR: $(ls -A "$DIR")"

echo "   whole test: $(since "$T_ALL") s"
if ((fails)); then
    echo "$fails check(s) failed"
    for f in "$DIR"/log/*.log; do [[ -f $f ]] && { echo "== $f"; show "$f" 10; }; done
    exit 1
fi
echo "all checks passed"
