#!/usr/bin/env bash
# What a user sees when something fails: by default the one-line reason, without the
# trace of source locations; with --verbose or DDP_DEBUG=1 the trace too, its frames
# named relative to the source tree (src/...), not by where the build happened to be.
# Both programs. Usage: test_error_output.sh PATH-TO-ddp-bench (DDP_TRAIN, MPIEXEC from
# the environment).
set -u
BENCH=${1:?usage: test_error_output.sh PATH-TO-ddp-bench}
unset DDP_DEBUG
# run NAME EXPECTED_EXIT PATTERN -- command...: see tests/script_lib.sh.
# shellcheck source=../script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../script_lib.sh"
script_setup ddp-error-output

FRAME='^ +at [^ ]+:[0-9]+$'
# no_frames NAME: the log of NAME has its reason but no "at file:line" line.
no_frames() {
    if grep -Eq "$FRAME" "$TMP/$1.log"; then
        echo "FAIL $1: a trace frame in the default output"; sed 's/^/     | /' "$TMP/$1.log"
        fails=$((fails + 1))
    fi
}
# relative_frames NAME FILE: the log has frames, one in FILE (relative), none absolute.
relative_frames() {
    if ! grep -Eq "^ +at $2:[0-9]+$" "$TMP/$1.log" || grep -Eq '^ +at /' "$TMP/$1.log"; then
        echo "FAIL $1: no frame 'at $2:N', or an absolute one"; sed 's/^/     | /' "$TMP/$1.log"
        fails=$((fails + 1))
    fi
}

# errors NAME PATTERN FILE -- command...: the command fails with PATTERN in its output;
# by default without a frame, with --verbose and with DDP_DEBUG=1 with one in FILE.
errors() {
    local name=$1 pattern=$2 file=$3
    shift 4
    run "${name}_default" nonzero "$pattern" -- "$@"
    no_frames "${name}_default"
    run "${name}_verbose" nonzero "$pattern" -- "$@" --verbose
    relative_frames "${name}_verbose" "$file"
    DDP_DEBUG=1 run "${name}_ddp_debug" nonzero "$pattern" -- "$@"
    relative_frames "${name}_ddp_debug" "$file"
}

# ddp-train with a data directory that does not exist: found in src/data/dataset.c.
errors train "error: loading the data: cannot find the train images" src/data/dataset.c -- \
    $MPI -np 2 "$TRAIN" --data "$TMP/nowhere" --steps 1
# ddp-bench allreduce --shared on one rank: no node-shared memory, found in the bench.
errors bench "error: allocating shared memory: --shared: no node-shared memory" \
    src/cli/bench_allreduce.c -- \
    $MPI -np 1 "$BENCH" allreduce --shared --max-bytes 1K --json "$TMP/ar.json"

script_finish
