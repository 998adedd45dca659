# Shared by the shell tests that drive the real binaries under mpirun; source it after
# setting TMP (a fresh temporary directory that every process of the test names on its
# command line) and passes=0 fails=0.
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
