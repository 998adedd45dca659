#!/usr/bin/env bash
# The performance model's grid, measured: `ddp-bench train` on 1, 2 and 4 emulated nodes
# (cluster/emu) x 2 ranks of 1 thread, at 1 and 10 Gbit/s, for the MLP 784-1024-1024-10,
# the GPT and the CNN (their defaults), at --zero 0 and 1, with the flat all-reduce
# (--hierarchical off), the hierarchical one (on) and PowerSGD (--compress powersgd, rank 4,
# hierarchical auto), a fixed batch per rank (weak scaling). Then the micro-benchmarks of
# `cluster/perfmodel calibrate`: `ddp-bench allreduce --collective C` for the all-reduce
# and --zero's reduce-scatter and all-gather, 4 KiB to 16 MiB, 20 timed iterations, on the
# same clusters, flat and hierarchical. One JSON per run in OUT (a run whose JSON exists is
# not run again, so an interrupted sweep resumes), and OUT/grid.csv, OUT/collectives.csv,
# which `cluster/perfmodel calibrate` and `cluster/perfmodel grid` read. Needs root.
#
#   bench/perfmodel-grid/run.sh [OUT]   (default bench/perfmodel-grid/out)
#       env NODES ("1 2 4"), BWS ("1gbit 10gbit"), MODELS ("mlp gpt cnn"),
#           PARTS ("grid micro": the training runs, the micro-benchmarks), BUILD_DIR
#
# At one node the link is not used and the flat and hierarchical schemes are the same (the
# node's shared memory): one run each of flat and powersgd per model and stage, the same
# for both bandwidths.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
OUT=$(mkdir -p "${1:-$ROOT/bench/perfmodel-grid/out}" && cd "${1:-$ROOT/bench/perfmodel-grid/out}" && pwd)
NODES=${NODES:-1 2 4}
BWS=${BWS:-1gbit 10gbit}
MODELS=${MODELS:-mlp gpt cnn}
PARTS=${PARTS:-grid micro}
RPN=2
PREFIX=ddpgr$$
EMU=$OUT/emu
trap '"$ROOT/cluster/emu" down --dir "$EMU" --prefix "$PREFIX" >/dev/null 2>&1 || true' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; out $OUT"

# Batch per rank and steps of each model (a step of the 8-rank GPT takes seconds here).
declare -A BATCH=([mlp]=128 [gpt]=8 [cnn]=32) STEPS=([mlp]=40 [gpt]=5 [cnn]=30)
declare -A SHAPE=([mlp]="--hidden 1024,1024" [gpt]="" [cnn]="")
declare -A SCHEME=([flat]="--hierarchical off" [hier]="--hierarchical on"
    [powersgd]="--compress powersgd --compress-rank 4")

hosts() { # nodes -> mpirun -H list
    local h="" i
    for ((i = 1; i <= $1; i++)); do h+="${h:+,}10.77.0.$i:$RPN"; done
    echo "$h"
}

for n in $NODES; do
    for bw in $BWS; do
        if [ "$n" -eq 1 ] && [ "$bw" != "${BWS%% *}" ]; then continue; fi
        "$ROOT/cluster/emu" up "$n" --bw "$bw" --dir "$EMU" --prefix "$PREFIX" >/dev/null
        place=(-np $((n * RPN)) --oversubscribe --map-by slot -H "$(hosts "$n")"
            -x OPENBLAS_NUM_THREADS=1)
        emu() { "$ROOT/cluster/emu" run --dir "$EMU" -- mpirun "${place[@]}" "$@"; }
        tag=$n-$([ "$n" -eq 1 ] && echo local || echo "$bw")
        for model in $MODELS; do
            [[ " $PARTS " == *" grid "* ]] || break
            for zero in 0 1; do
                for scheme in flat hier powersgd; do
                    [ "$n" -eq 1 ] && [ "$scheme" = hier ] && continue
                    name=$model-z$zero-$scheme-$tag
                    [ -s "$OUT/$name.json" ] && continue
                    # shellcheck disable=SC2086
                    emu "$BUILD/ddp-bench" train --model "$model" ${SHAPE[$model]} --batch $((BATCH[$model] * n * RPN)) \
                        --threads 1 --zero "$zero" ${SCHEME[$scheme]} --warmup-steps 2 \
                        --bench-steps "${STEPS[$model]}" --json "$OUT/$name.json" \
                        >/dev/null 2>"$OUT/$name.err" || { tail -5 "$OUT/$name.err" >&2; exit 1; }
                    python3 -c "import json; d=json.load(open('$OUT/$name.json')); print(f\"$name: step {d['t_step']*1e3:.1f} ms\")"
                done
            done
        done
        # The micro-benchmarks of the link and of the node's memory.
        if [ "$n" -gt 1 ] && [[ " $PARTS " == *" micro "* ]]; then
            for op in allreduce reduce-scatter allgather; do
                for h in off on; do
                    name=coll-$op-$h-$tag
                    [ -s "$OUT/$name.json" ] && continue
                    # As the trainer keeps its gradients: in the node's shared memory where
                    # the hierarchical scheme sums them there, in each rank's own memory
                    # otherwise.
                    shared=()
                    [ "$h" = on ] && shared=(--shared)
                    emu "$BUILD/ddp-bench" allreduce --collective "$op" "${shared[@]}" \
                        --hierarchical "$h" --min-bytes 4096 --max-bytes 16777216 --iters 20 \
                        --warmup-iters 3 --json "$OUT/$name.json" \
                        >/dev/null 2>"$OUT/$name.err" || { tail -5 "$OUT/$name.err" >&2; exit 1; }
                    echo "$name: done"
                done
            done
        fi
        "$ROOT/cluster/emu" down --dir "$EMU" --prefix "$PREFIX" >/dev/null
    done
done
python3 - "$OUT" <<'PY'
import csv, glob, json, os, sys
out = sys.argv[1]
cols = ["model", "zero", "scheme", "nodes", "link", "ranks", "params", "global_batch",
        "hierarchical", "compressing", "grad_wire_bytes", "grad_collectives", "buckets", "t_forward", "t_backward", "t_allreduce",
        "t_allgather", "t_exposed", "t_optim", "t_step", "t_comm_cpu", "t_step_cpu",
        "samples_per_s"]
rows = []
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(f)[:-5]
    if name.startswith(("allreduce-", "coll-")) or name == "machine":
        continue
    model, zero, scheme, nodes, link = name.split("-", 4)
    d = json.load(open(f))
    r = {"model": model, "zero": zero[1:], "scheme": scheme, "nodes": nodes, "link": link}
    r.update({k: d.get(k, "") for k in cols if k not in r})
    rows.append(r)
# Runs whose JSON is gone (a sweep of some models only) keep their row of the CSV.
key = lambda r: (r["model"], r["zero"], r["scheme"], r["nodes"], r["link"])
path = os.path.join(out, "grid.csv")
if rows and os.path.exists(path):
    with open(path) as fh:
        have = {key(r): r for r in csv.DictReader(fh)}
    have.update({key(r): r for r in rows})
    rows = sorted(have.values(), key=key)
if rows:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}/grid.csv ({len(rows)} runs)")
ar = []
for f in sorted(glob.glob(os.path.join(out, "coll-*.json"))):
    _, h, nodes, link = os.path.basename(f)[:-5].rsplit("-", 3)  # coll-OP-H-NODES-LINK
    d = json.load(open(f))
    for s in d["sizes"]:
        ar.append({"collective": d["collective"], "hierarchical": h, "nodes": nodes, "link": link,
                   "ranks": d.get("ranks", ""), "bytes": s.get("bytes"),
                   "seconds": s["time_us"] * 1e-6})
if ar:
    with open(os.path.join(out, "collectives.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["collective", "hierarchical", "nodes", "link", "ranks",
                                           "bytes", "seconds"])
        w.writeheader()
        w.writerows(ar)
    print(f"wrote {out}/collectives.csv ({len(ar)} sizes)")
PY
