#!/usr/bin/env bash
# PowerSGD against the uncompressed all-reduce on an emulated cluster of 2 nodes x RPN
# ranks (cluster/emu up 2 --bw BW): ddp-bench train on the MLP 1024x1024, batch 512, one
# BLAS thread per rank, in ROUNDS rounds (the order of the modes rotating) of four modes:
#   none        the defaults (buckets of 25 MB after a 1 MB first one, --progress auto)
#   none-1b     one bucket (--first-bucket-mb 100 --bucket-mb 100), whose single
#               all-reduce is the uncompressed run's best on oversubscribed cores
#   powersgd    --compress powersgd --compress-rank R, otherwise the defaults
#   powersgd-1b one bucket and --progress test (the compressed collectives run on the
#               main thread: no hand-over to a communication thread that competes for
#               the cores)
# then once each the same without communication (--no-allreduce: the ceiling) and, with
# RPN > 1, --hierarchical off. Prints samples/s per run and the median per-round ratios
# of each mode to the uncompressed best. Needs root.
#
#   bench/powersgd/run.sh [ROUNDS (default 3)]
#       BW (default 1gbit), RPN ranks per node (default 2), R (default 4), BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
ROUNDS=${1:-3}
BW=${BW:-1gbit}
R=${R:-4}
RPN=${RPN:-2}
DIR=$(mktemp -d /tmp/ddp-psgd-bench.XXXXXX)
PREFIX=ddppb$$
trap '"$ROOT/cluster/emu" down --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 emulated nodes x $RPN ranks at $BW"
"$ROOT/cluster/emu" up 2 --bw "$BW" --dir "$DIR/emu" --prefix "$PREFIX" >/dev/null
place=(-np $((2 * RPN)) --oversubscribe --map-by slot -H "10.77.0.1:$RPN,10.77.0.2:$RPN"
    -x OPENBLAS_NUM_THREADS=1)
emu() { "$ROOT/cluster/emu" run --dir "$DIR/emu" -- mpirun "${place[@]}" "$@"; }
run() { # name, extra options...
    local name=$1
    shift
    emu "$BUILD/ddp-bench" train --hidden 1024,1024 --batch 512 --threads 1 \
        --warmup-steps 3 --bench-steps 20 "$@" --json "$DIR/$name.json" >/dev/null 2>"$DIR/$name.err" ||
        { cat "$DIR/$name.err" >&2; exit 1; }
    python3 -c "import json; d=json.load(open('$DIR/$name.json')); print(f\"$name: {d['samples_per_s']:.0f} samples/s (hierarchical {d['hierarchical']}, compress {d['compress']})\")"
}
ONE=(--first-bucket-mb 100 --bucket-mb 100)
declare -A MODE=([none]="--compress none" [none-1b]="--compress none ${ONE[*]}"
    [powersgd]="--compress powersgd --compress-rank $R"
    [powersgd-1b]="--compress powersgd --compress-rank $R ${ONE[*]} --progress test")
modes=(powersgd none powersgd-1b none-1b)
for r in $(seq "$ROUNDS"); do
    for k in 0 1 2 3; do
        mode=${modes[$(((k + r) % 4))]}
        # shellcheck disable=SC2086
        run "$mode-$r" ${MODE[$mode]}
    done
done
run ceiling --no-allreduce
((RPN > 1)) && run flat --hierarchical off
python3 - "$DIR" "$ROUNDS" <<'PY'
import json, os, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
sps = lambda name: json.load(open(f"{d}/{name}.json"))["samples_per_s"]
modes = ["none", "none-1b", "powersgd", "powersgd-1b"]
runs = {m: [sps(f"{m}-{r}") for r in range(1, n + 1)] for m in modes}
best = [max(runs["none"][i], runs["none-1b"][i]) for i in range(n)]
for m in modes:
    ratios = [a / b for a, b in zip(runs[m], best)]
    print(f"{m}: median {statistics.median(runs[m]):.0f} samples/s, median ratio to the "
          f"uncompressed best {statistics.median(ratios):.3f} (rounds: "
          f"{' '.join(f'{x:.3f}' for x in ratios)})")
print(f"no communication: {sps('ceiling'):.0f} samples/s"
      + (f"; flat all-reduce: {sps('flat'):.0f}" if os.path.exists(f"{d}/flat.json") else ""))
PY
