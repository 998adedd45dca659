#!/usr/bin/env bash
# The estimator's own time, measured inside the step (the t_gns of --metrics: the seconds
# its sums of squares took) against the step's time, in the same run: a ratio that the
# noise of a shared machine moves far less than two runs' throughputs. Same four set-ups
# as cost.sh; every step logged (--log-every 1).
#   bench/gns/overhead.sh [STEPS]      (default 400, the first 50 left out)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRAIN=${DDP_TRAIN:-$ROOT/build/ddp-train}
STEPS=${1:-400}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
for cfg in "ready|2|--batch 128|256,128" "micro0|1|--batch 128 --accum 2|256,128" \
    "ready|2|--batch 256|1024,1024" "micro0|1|--batch 256 --accum 2|1024,1024"; do
    IFS='|' read -r how np batch hidden <<<"$cfg"
    # shellcheck disable=SC2086
    mpirun --oversubscribe -np "$np" "$TRAIN" --hidden "$hidden" $batch --steps "$STEPS" \
        --log-every 1 --quiet --metrics "$TMP/m.jsonl" >/dev/null 2>&1
    python3 - "$TMP/m.jsonl" "$how" "$np" "$batch" "$hidden" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])][50:]
gns = [r["t_gns"] for r in recs]
step = [r["t_step"] for r in recs]
print("%-6s %s rank(s), %-22s hidden %-9s: estimator %.3f ms of a %.2f ms step (medians), "
      "%.2f%% of the steps' summed time" % (sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
      1e3 * statistics.median(gns), 1e3 * statistics.median(step), 100 * sum(gns) / sum(step)))
PY
done
