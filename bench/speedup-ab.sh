#!/usr/bin/env bash
# Interleaved A/B rounds of ddp-bench train variants on one machine, for speed-ups that
# are smaller than the machine's run-to-run noise.
#
#   bench/speedup-ab.sh [-r ROUNDS] [-o CSV] NAME='mpirun ... ddp-bench train ...' ...
#
# Every round runs each variant once, in the order given, so slow spells of a shared
# machine hit all variants alike. Prints each run (samples/s and per-step phases in ms)
# and, per variant, the median samples/s over rounds and the median of the per-round
# ratios to the first variant (paired: each ratio divides runs taken minutes apart at
# most). --json is added to every command. The CSV holds one row per run.
set -euo pipefail

rounds=5
csv=""
while getopts "r:o:" opt; do
    case $opt in
    r) rounds=$OPTARG ;;
    o) csv=$OPTARG ;;
    *) echo "usage: $0 [-r ROUNDS] [-o CSV] NAME='command' ..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -lt 2 ]; then
    echo "$0: give at least two variants, NAME='command' (the first is the baseline)" >&2
    exit 2
fi
names=() cmds=()
for v in "$@"; do
    case $v in
    *=*) names+=("${v%%=*}"); cmds+=("${v#*=}") ;;
    *) echo "$0: '$v' is not NAME='command'" >&2; exit 2 ;;
    esac
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows="$tmp/rows.csv"
echo "round,variant,samples_per_s,t_forward_ms,t_backward_ms,t_allreduce_ms,t_exposed_ms,t_optim_ms,t_step_ms,t_comm_cpu_ms" >"$rows"

for r in $(seq 1 "$rounds"); do
    for i in "${!names[@]}"; do
        json="$tmp/r$r-$i.json"
        if ! bash -c "${cmds[$i]} --json $json" >"$tmp/r$r-$i.log" 2>&1; then
            echo "$0: round $r, ${names[$i]} failed:" >&2
            tail -20 "$tmp/r$r-$i.log" >&2
            exit 1
        fi
        python3 - "$json" "$r" "${names[$i]}" >>"$rows" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ms = [d[k] * 1e3 for k in ("t_forward", "t_backward", "t_allreduce", "t_exposed", "t_optim", "t_step", "t_comm_cpu")]
print(",".join([sys.argv[2], sys.argv[3], "%.1f" % d["samples_per_s"]] + ["%.3f" % x for x in ms]))
EOF
        tail -1 "$rows" | awk -F, '{printf "round %s %-12s %9s samples/s  fwd %6.2f bwd %6.2f comm %6.2f exposed %5.2f optim %5.2f step %6.2f, comm CPU %5.2f ms\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
    done
done

python3 - "$rows" "${names[@]}" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
names = sys.argv[2:]
by = {(r["round"], r["variant"]): r for r in rows}
rounds = sorted({r["round"] for r in rows}, key=int)
base = names[0]
print("\nvariant       median samples/s   median ratio to %s (per round)" % base)
for n in names:
    sps = [float(by[(r, n)]["samples_per_s"]) for r in rounds]
    ratios = [float(by[(r, n)]["samples_per_s"]) / float(by[(r, base)]["samples_per_s"]) for r in rounds]
    step = statistics.median(float(by[(r, n)]["t_step_ms"]) for r in rounds)
    exposed = statistics.median(float(by[(r, n)]["t_exposed_ms"]) for r in rounds)
    cpu = statistics.median(float(by[(r, n)]["t_comm_cpu_ms"]) for r in rounds)
    print("%-12s %10.0f   %6.3f (%s)   step %.1f ms, exposed %.2f ms (%.1f%%), comm CPU %.2f ms" % (
        n, statistics.median(sps), statistics.median(ratios),
        " ".join("%.2f" % x for x in ratios), step, exposed, 100 * exposed / step, cpu))
EOF
if [ -n "$csv" ]; then cp "$rows" "$csv"; fi
