#!/usr/bin/env bash
# Weak and strong scaling of ddp-bench train on 1, 2 and 4 emulated nodes (one rank per
# node) at several link bandwidths, through cluster/scaling on a cluster/emu cluster.
# Needs root. Writes RAW/<bw>-<algo>-rep<k>/ (each a cluster/scaling output directory;
# RAW defaults to bench/scaling-emu/raw);
# bench/scaling-emu/merge.py then takes the medians and draws the plots.
#
#   bench/scaling-emu/run.sh [REPS]            (default 3 repetitions of every config)
#
# Configs: "BW ALGO" with ALGO default (Open MPI's own choice of all-reduce algorithm),
# ring (coll_tuned_allreduce_algorithm 4) or rd (recursive doubling, 3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
reps=${1:-3}
configs=${CONFIGS:-"1gbit:default 10gbit:default unshaped:default 1gbit:ring 1gbit:rd"}
steps=${STEPS:-20}
raw=${RAW:-bench/scaling-emu/raw}
warmup=${WARMUP:-3}
trap '"$root/cluster/emu" down >/dev/null 2>&1 || true' EXIT INT TERM
cd "$root"
for ((k = 1; k <= reps; k++)); do
    for c in $configs; do
        bw=${c%%:*} algo=${c##*:}
        out=$raw/$bw-$algo-rep$k
        if [ -f "$out/scaling.csv" ]; then continue; fi
        bwopt=()
        [ "$bw" = unshaped ] || bwopt=(--bw "$bw")
        cluster/emu up 4 "${bwopt[@]+"${bwopt[@]}"}" >/dev/null
        launcher="mpirun --map-by node"
        case $algo in
        default) ;;
        ring) launcher+=" --mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4" ;;
        rd) launcher+=" --mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 3" ;;
        *) echo "unknown algorithm $algo" >&2; exit 2 ;;
        esac
        launcher+=" -np {n}"
        echo "== rep $k, $bw, $algo: $(date +%T)" >&2
        rm -rf "$out.tmp"
        cluster/emu run -- cluster/scaling --ranks 1,2,4 --mode both --per-rank-batch 128 \
            --global-batch 512 --steps "$steps" --warmup-steps "$warmup" --hidden 1024,1024 \
            --bench "$root/build/ddp-bench" --launcher "$launcher" --out "$out.tmp" >/dev/null
        mv "$out.tmp" "$out"
        cluster/emu down >/dev/null
    done
done
