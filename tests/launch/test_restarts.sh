#!/usr/bin/env bash
# ddp-run --restarts: a job whose rank fails mid-training is started again with --resume
# and ends with the parameters of an uninterrupted run (bitwise); a job that keeps
# failing stops after N restarts with its exit status; a usage error is not retried.
set -u
TRAIN=${DDP_TRAIN:?DDP_TRAIN must point at ddp-train}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN="$HERE/../../launch/ddp-run"
DATA=${DDP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
TMP=$(mktemp -d /tmp/ddp-restarts.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
[ -d "$DATA" ] || { echo "no Fashion-MNIST in $DATA"; exit 1; }
fails=0 passes=0
check() {
    if eval "$2"; then echo "ok   $1"; passes=$((passes + 1)); else echo "FAIL $1"; fails=$((fails + 1)); fi
}

# Rank 1 fails at its 70th all-reduce (about step 30) on the first attempt only.
cat >"$TMP/flaky" <<EOW
#!/usr/bin/env bash
mark="$TMP/failed-once.\${OMPI_COMM_WORLD_RANK:-0}"
if [ ! -e "\$mark" ]; then touch "\$mark"; export DDP_INJECT_FAULT=allreduce:1:70; fi
exec "$TRAIN" "\$@"
EOW
# Always fails the same way, in its sixth step: before any checkpoint, so no progress.
cat >"$TMP/broken" <<EOW
#!/usr/bin/env bash
export DDP_INJECT_FAULT=allreduce:1:20
exec "$TRAIN" "\$@"
EOW
chmod +x "$TMP/flaky" "$TMP/broken"

ARGS=(--data "$DATA" --steps 60 --log-every 10 --quiet --threads 1 --timeout 30)
"$RUN" -n 2 --bin "$TRAIN" -- "${ARGS[@]}" --dump-params "$TMP/straight.bin" >"$TMP/straight.log" 2>&1
check "uninterrupted reference run" '[ -s "$TMP/straight.bin" ]'

timeout -k 5 300 "$RUN" -n 2 --restarts 2 --bin "$TMP/flaky" -- "${ARGS[@]}" \
    --checkpoint-dir "$TMP/ck" --checkpoint-every 10 --dump-params "$TMP/restarted.bin" >"$TMP/flaky.log" 2>&1
rc=$?
check "flaky job succeeds after a restart (exit $rc)" '[ $rc -eq 0 ]'
check "the launcher says it restarted" 'grep -q "restart 1 of 2" "$TMP/flaky.log"'
# The trainer's own line, with a step past 0 (ddp-run's echoed command says --resume too).
check "the restart resumed from a checkpoint" \
    'grep -Eq "resumed from .*ckpt-[0-9]+\.ddp: step [1-9]" "$TMP/flaky.log"'
check "restarted parameters equal the uninterrupted run bitwise" 'cmp -s "$TMP/straight.bin" "$TMP/restarted.bin"'

timeout -k 5 300 "$RUN" -n 2 --restarts 1 --bin "$TMP/broken" -- "${ARGS[@]}" \
    --checkpoint-dir "$TMP/ck2" --checkpoint-every 10 >"$TMP/broken.log" 2>&1
rc=$?
check "a job that keeps failing ends non-zero (exit $rc)" '[ $rc -ne 0 ]'
check "after its restarts are used up" 'grep -q "restart(s) are used up" "$TMP/broken.log"'

timeout -k 5 120 "$RUN" -n 2 --restarts 3 --bin "$TRAIN" -- "${ARGS[@]}" --checkpoint-dir "$TMP/ck3" --bogus >"$TMP/usage.log" 2>&1
rc=$?
check "a usage error is not retried (exit $rc)" '[ $rc -eq 2 ] && ! grep -q "restart 1" "$TMP/usage.log"'
"$RUN" -n 2 --restarts 1 --dry-run -- --steps 5 >"$TMP/nock.log" 2>&1
rc=$?
check "--restarts without --checkpoint-dir is refused (exit $rc)" '[ $rc -eq 2 ] && grep -q "checkpoint-dir" "$TMP/nock.log"'
if pgrep -f "$TMP" >/dev/null; then echo "FAIL processes left behind"; fails=$((fails + 1)); pkill -9 -f "$TMP"; fi
[ $fails -eq 0 ] || { for f in "$TMP"/*.log; do echo "== $f"; tail -15 "$f"; done; }
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
