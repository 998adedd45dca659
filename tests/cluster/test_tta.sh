#!/usr/bin/env bash
# cluster/tta end to end on a tiny grid (Fashion-MNIST, 1 rank, one epoch at most): every
# run gets a row in tta.csv with reached=1 when the target is within reach and reached=0
# (with the accuracy it got) when it is not, the noise scale over training lands in
# gns.csv, the summary fits the critical batch, the figure is drawn; the GPT runs to a
# validation loss; bad options are refused. Needs DDP_TRAIN; Fashion-MNIST in DATA.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../script_lib.sh
source "$ROOT/tests/script_lib.sh"
script_setup ddp-tta data

check reachable_grid "$ROOT/cluster/tta" --train "$TRAIN" --batches 512,1024 --seeds 1 \
    --max-epochs 1 --target 0.7 --adaptive 256 --max-batch 1024 --out "$TMP/a" -- --data "$DATA" \
    >"$TMP/a.log" 2>&1
check rows_say_reached python3 - "$TMP/a/tta.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [(r["schedule"], r["batch"]) for r in rows] == [
    ("fixed", "512"), ("fixed", "1024"), ("adaptive", "256")], rows
for r in rows:
    assert r["reached"] == "1" and float(r["accuracy"]) >= 0.7, r
    assert int(r["samples"]) == int(r["steps"]) * int(r["batch"]) or r["schedule"] == "adaptive", r
    assert float(r["b_simple"]) > 0, r
PY
check noise_scale_over_training bash -c "[ \$(grep -c '^fixed,1,512,1,' '$TMP/a/gns.csv') -ge 2 ]"
check summary_fits_the_critical_batch grep -q "fit S(B) = S_min (1 + B_crit / B)" "$TMP/a/summary.txt"
if command -v gnuplot >/dev/null; then check figure_drawn test -s "$TMP/a/tta.png"; fi

check unreachable_target "$ROOT/cluster/tta" --train "$TRAIN" --batches 2048 --seeds 1 \
    --max-epochs 1 --target 0.99 --out "$TMP/b" -- --data "$DATA" >"$TMP/b.log" 2>&1
check row_says_not_reached bash -c "grep -q '^fixed,1,2048,1,[^,]*,0,' '$TMP/b/tta.csv' &&
    grep -q 'no run reached the target' '$TMP/b.log'"

# The GPT to a validation loss, on this repository's README as text.
check gpt_grid "$ROOT/cluster/tta" --train "$TRAIN" --model gpt --batches 8,16 --seeds 1 \
    --max-steps 40 --eval-every 10 --target 4.0 --lr 0.02 --warmup-samples 40 --out "$TMP/g" \
    -- --text "$ROOT/README.md" --layers 1 --dim 32 --heads 2 --ctx 16 >"$TMP/g.log" 2>&1
check gpt_rows_say_reached python3 - "$TMP/g/tta.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [(r["schedule"], r["batch"]) for r in rows] == [("fixed", "8"), ("fixed", "16")], rows
for r in rows:
    assert r["reached"] == "1" and float(r["val_loss"]) <= 4.0, r
    assert int(r["steps"]) % 10 == 0 and int(r["steps"]) <= 40, r
PY
check gpt_adaptive_refused bash -c "! '$ROOT/cluster/tta' --model gpt --adaptive 8 2>'$TMP/d.log' &&
    grep -q 'runs fixed batches' '$TMP/d.log'"

check bad_rule_refused bash -c "! '$ROOT/cluster/tta' --lr-rule cubic 2>'$TMP/c.log' &&
    grep -q 'lr-rule must be sqrt or linear' '$TMP/c.log'"

script_finish
