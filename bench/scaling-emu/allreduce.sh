#!/usr/bin/env bash
# Plain MPI_Allreduce of 8 MB (about the MLP's 7.45 MB of gradients) on 2 and 4 emulated
# nodes (one rank each) at one link bandwidth, Open MPI's default algorithm against
# forced ring (4) and recursive doubling (3). Needs root. Output: allreduce-<bw>.txt
#   bench/scaling-emu/allreduce.sh [BW] [REPS]     (default 1gbit, 3)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bw=${1:-1gbit}
reps=${2:-3}
cd "$root"
trap 'cluster/emu down >/dev/null 2>&1 || true' EXIT INT TERM
out=$here/allreduce-$bw.txt
echo "# nodes algo rep time_s busbw_GBps (8 MiB, link $bw; busbw = 2 (n-1)/n x bytes / time)" >"$out"
cluster/emu up 4 --bw "$bw" >/dev/null
for ((k = 1; k <= reps; k++)); do
    for n in 2 4; do
        for algo in default ring rd; do
            mca=()
            case $algo in
            ring) mca=(--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4) ;;
            rd) mca=(--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 3) ;;
            esac
            cluster/emu mpirun --map-by node "${mca[@]+"${mca[@]}"}" -np "$n" build/ddp-bench allreduce \
                --min-bytes 8M --max-bytes 8M --iters 10 --warmup-iters 3 --json /tmp/ar-$$.json >/dev/null 2>&1
            python3 - "$n" "$algo" "$k" /tmp/ar-$$.json >>"$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[4]))
rows = next(v for v in (d.values() if isinstance(d, dict) else [d]) if isinstance(v, list)) if isinstance(d, dict) else d
r = rows[-1]
print(sys.argv[1], sys.argv[2], sys.argv[3], "%.6f" % (r["time_us"] / 1e6), "%.4f" % r["busbw_gbs"])
PY
        done
    done
done
cat "$out"
