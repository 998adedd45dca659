# Shared by the shell tests that drive the real binaries under mpirun. Source it, then
# call script_setup; end with script_finish.
#
# script_setup NAME [generate] [data]: the preamble every such test shares. TRAIN from
# DDP_TRAIN (and GENERATE from DDP_GENERATE with "generate"), MPIEXEC (default mpirun) and
# MPI, Open MPI's consent to run as root, one BLAS thread per rank, a fresh TMP named after
# NAME (that every process of the test names on its command line, removed on exit), the
# counters passes and fails; with "data", Fashion-MNIST in DATA (DDP_FASHION_MNIST), or the
# test exits naming the package.
script_setup() {
    local name=$1 need
    shift
    TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
    MPIEXEC=${MPIEXEC:-mpirun}
    MPI="$MPIEXEC --oversubscribe"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
    TMP=$(mktemp -d "/tmp/$name.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    passes=0 fails=0
    for need in "$@"; do
        case $need in
        generate) GENERATE=${DDP_GENERATE:?DDP_GENERATE must point at ddp-generate} ;;
        data)
            DATA=${DDP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
            if [ ! -d "$DATA" ]; then
                echo "Fashion-MNIST not found in $DATA (apt-get install dataset-fashion-mnist)"
                exit 1
            fi ;;
        *) echo "script_setup: unknown need '$need'" >&2; exit 1 ;;
        esac
    done
}

# check NAME command...: passes when the command succeeds.
check() {
    local name=$1
    shift
    if "$@"; then
        echo "ok   $name"; passes=$((passes + 1))
    else
        echo "FAIL $name"; fails=$((fails + 1))
    fi
}

# The counts; the test's exit status: nonzero when a check failed.
script_finish() {
    echo "$passes passed, $fails failed"
    [ "$fails" -eq 0 ]
}

#
# run NAME EXPECTED_EXIT(nonzero|0|N) PATTERN -- command...: runs the command with a time
# limit (RUN_TIMEOUT seconds, default 90) and checks its exit status, that its output
# matches PATTERN (extended regex), and that no process of the test outlived it.
run() {
    local name=$1 want=$2 pattern=$3
    shift 4
    local out="$TMP/$name.log" start end rc ok=1
    start=$(date +%s)
    timeout -k 5 "${RUN_TIMEOUT:-90}" "$@" >"$out" 2>&1
    rc=$?
    end=$(date +%s)
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "FAIL $name: timed out (a rank hung)"; ok=0
    elif [ "$want" = nonzero ] && [ "$rc" -eq 0 ]; then
        echo "FAIL $name: exit status 0, expected failure"; ok=0
    elif [ "$want" != nonzero ] && [ "$rc" -ne "$want" ]; then
        echo "FAIL $name: exit status $rc, expected $want"; ok=0
    elif ! grep -Eq -e "$pattern" "$out"; then
        echo "FAIL $name: output does not match /$pattern/"; ok=0
    fi
    # No rank may outlive the job.
    if pgrep -f "$TMP" >/dev/null; then
        echo "FAIL $name: processes left behind"; pkill -9 -f "$TMP"; ok=0
    fi
    if [ $ok -eq 1 ]; then
        echo "ok   $name (exit $rc, $((end - start)) s)"; passes=$((passes + 1))
    else
        sed 's/^/     | /' "$out" | tail -25; fails=$((fails + 1))
    fi
}

# script_need_netns: exits 77 (skipped, naming why) unless this process may create network
# namespaces (root, iproute2, and a kernel and container that allow them): what the
# emulated cluster (cluster/emu) needs.
script_need_netns() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "skip: the emulated cluster needs root (network namespaces)"
        exit 77
    fi
    command -v ip >/dev/null || { echo "skip: iproute2 is not installed"; exit 77; }
    if ! ip netns add "ddp-probe$$" 2>/dev/null; then
        echo "skip: this machine refuses network namespaces (no CAP_SYS_ADMIN/NET_ADMIN)"
        exit 77
    fi
    ip netns del "ddp-probe$$"
}
