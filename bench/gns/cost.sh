#!/usr/bin/env bash
# What the gradient noise scale costs per step: ddp-bench train with --no-gns, with the
# estimator on every step (the default) and on every 10th (--gns-every 10), in
# interleaved rounds (bench/speedup-ab.sh), for its two ways of measuring the small-batch
# gradient:
#   ready  2 ranks, no accumulation: each range summed as backward hands it to the reducer
#   micro0 1 rank, 2 micro-batches: one pass over the buffer after micro-batch 0
# on the README's MLP (784-256-128-10, 235 k parameters, batch 128) and on the scaling
# harness's wider one (784-1024-1024-10, 1.86 M parameters, batch 256).
#   bench/gns/cost.sh [ROUNDS] [STEPS]     (defaults 7 rounds of 300 timed steps)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=${DDP_BENCH:-$ROOT/build/ddp-bench}
ROUNDS=${1:-7}
STEPS=${2:-300}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
MPI="mpirun --oversubscribe"
for cfg in "ready|-np 2|--batch 128|256,128" "micro0|-np 1|--batch 128 --accum 2|256,128" \
    "ready|-np 2|--batch 256|1024,1024" "micro0|-np 1|--batch 256 --accum 2|1024,1024"; do
    IFS='|' read -r how np batch hidden <<<"$cfg"
    echo
    echo "== $how: $np, $batch, hidden $hidden"
    base="$MPI $np $BENCH train --hidden $hidden $batch --bench-steps $STEPS --warmup-steps 20"
    "$ROOT/bench/speedup-ab.sh" -r "$ROUNDS" off="$base --no-gns" on="$base" \
        every10="$base --gns-every 10"
done
