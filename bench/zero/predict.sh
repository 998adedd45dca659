#!/usr/bin/env bash
# Predicted (not measured) step time, efficiency and memory per rank of DDP, ZeRO-1 and
# ZeRO-2 on 64 .. 1024 nodes, from cluster/perfmodel zero, for two models. Every input is
# stated below; the ones for the 1.5B-parameter model are assumptions about a GPU node,
# not measurements of ours. Prints Markdown (bench/results/zero.md, "Predicted step time
# and memory").
#
#   bench/zero/predict.sh
set -eu
PM="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/cluster/perfmodel"

# The GPT of --model gpt (3,257,856 parameters), one rank of one core per node, 16 windows
# per rank: forward 126 ms, backward 218 ms and AdamW 11 ms per step, as measured at
# 2 ranks x 1 thread (bench/results/gpt.md). 13 MB of fp32
# gradients. Assumed: 2 buckets (a first of 1 MB, then the rest), link 10 Gbit/s, alpha
# 50 us, overlap 0.5 of backward (generic), no last-bucket limit.
GPT=(--params 3257856 --sample-time 21.5ms --backward-share 0.634 --batch 16
     --optim-time 11ms --buckets 2 --overlap 0.5 --bw 10gbit --latency 50us)

# A GPT-2 XL-sized model (48 blocks, width 1600, 25 heads, context 1024, vocabulary 50,257,
# tied embeddings: 1,557,611,200 parameters), trained in fp32 as ddp trains. One GPU per
# node, 8 sequences of 1024 tokens per rank. Assumed: 100 TFLOP/s sustained, so with
# ddp's count of 6 x parameters + 12 L T C FLOP per token (1.029e10) 105 ms per sequence;
# AdamW moving 28 bytes per parameter at 2 TB/s, 22 ms; 100 Gbit/s per node, alpha 10 us;
# 6.23 GB of gradients in 32 buckets (about 200 MB each, --bucket-mb 200); overlap 0.5.
XL=(--params 1557611200 --sample-time 105ms --batch 8 --optim-time 22ms --buckets 32
    --overlap 0.5 --bw 100gbit --latency 10us)

table() { # TITLE ARGS...
    echo "**$1**"
    echo
    shift
    echo '```'
    echo "cluster/perfmodel zero $*"
    echo '```'
    echo
    python3 "$PM" zero "$@"
    echo
}
table "The project's GPT, 10 Gbit/s" "${GPT[@]}"
table "The project's GPT, 10 Gbit/s, all-gather half hidden by the next forward" \
    "${GPT[@]}" --gather-overlap 0.5
table "GPT-2 XL size, 100 Gbit/s, all-gather exposed" "${XL[@]}"
table "GPT-2 XL size, 100 Gbit/s, all-gather half hidden by the next forward" \
    "${XL[@]}" --gather-overlap 0.5
table "GPT-2 XL size, 100 Gbit/s, 4 micro-batches of 2 (ZeRO-2 reduce-scatters 4 times)" \
    "${XL[@]}" --accum 4
