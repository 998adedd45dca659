#!/usr/bin/env bash
# cluster/perfmodel against hand-computed alpha-beta figures: the ring all-reduce time,
# the exposed part with and without overlap, step time and efficiency; and its refusal
# of bad input. 1e6 parameters (4 MB of fp32 gradients), 100 samples of 100 us, 1 Gbit/s
# (1.25e8 B/s), alpha 50 us, one bucket:
#   N=2: T_ar = 2*1*50us + 2*(1/2)*4e6/1.25e8 = 0.0321 s;  N=4: 6*50us + 1.5*4e6/1.25e8 = 0.0483 s
# Sharded steps (--zero 1 and 2), same model, optimizer 10 ms for all the parameters, N=4:
#   reduce-scatter = all-gather = 3*50us + 0.75*4e6/1.25e8 = 0.02415 s; norm all-reduce
#   ceil(log2 4) * 50us = 0.0001 s; optimizer 10 ms / 4; memory per rank 4 + 4 + 8/4 bytes
#   per parameter at stage 1, 4 + 4/4 + 8/4 at stage 2.
set -u
PM="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/cluster/perfmodel"
fails=0
expect() { # NAME CSV-OUTPUT NODES COLUMN VALUE
    local got
    got=$(awk -F, -v n="$3" -v col="$4" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
                                        $1 == n { print $c[col] }' <<<"$2")
    if awk -v a="$got" -v b="$5" 'BEGIN { exit !(a != "" && (a - b < 1e-4 * (b < 0 ? -b : b) + 1e-6) && (b - a < 1e-4 * (b < 0 ? -b : b) + 1e-6)) }'; then
        echo "ok   $1: $4 = $got"
    else
        echo "FAIL $1: $4 = '$got', expected $5"; fails=$((fails + 1))
    fi
}
# shellcheck disable=SC2054 # the commas are --nodes' list
BASE=(predict --params 1000000 --sample-time 100us --batch 100 --bw 1gbit --latency 50us
      --buckets 1 --optim-time 0 --nodes 1,2,4)
out=$(python3 "$PM" "${BASE[@]}" --overlap 0) || { echo "FAIL predict exited $?"; exit 1; }
expect "one node has no all-reduce" "$out" 1 allreduce_s 0
expect "2 nodes, ring all-reduce" "$out" 2 allreduce_s 0.0321
expect "4 nodes, ring all-reduce" "$out" 4 allreduce_s 0.0483
expect "2 nodes, no overlap: all exposed" "$out" 2 exposed_s 0.0321
expect "2 nodes, step = compute + exposed" "$out" 2 step_s 0.0421
expect "2 nodes, efficiency = T1 / TN" "$out" 2 efficiency 0.2375
# Overlap 0.5 of a backward of 2/3 x 10 ms hides 3.333 ms.
out=$(python3 "$PM" "${BASE[@]}" --overlap 0.5)
expect "2 nodes, overlap hides half of backward" "$out" 2 exposed_s 0.028767
# A last bucket of all the bytes is never hidden.
out=$(python3 "$PM" "${BASE[@]}" --overlap 0.5 --last-bucket 1)
expect "a last bucket of everything cannot hide" "$out" 2 exposed_s 0.0321
# 10x the bandwidth: only the bandwidth term shrinks.
out=$(python3 "$PM" "${BASE[@]/1gbit/10gbit}" --overlap 0)
expect "10 Gbit/s, 2 nodes" "$out" 2 allreduce_s 0.0033

# ---- ZeRO-1 and ZeRO-2 --------------------------------------------------------------
col() { # CSV-OUTPUT NODES COLUMN: one value
    awk -F, -v n="$2" -v col="$3" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
                                   $1 == n { print $c[col] }' <<<"$1"
}
same() { # NAME GOT EXPECTED [TOL]: equal within 1e-4 relative + 1e-6 (the CSV's printed
          # digits), or within TOL (what a table's rounding allows)
    if awk -v a="$2" -v b="$3" -v tol="${4:-}" 'BEGIN { d = a - b; if (d < 0) d = -d
            t = tol != "" ? tol : 1e-4 * (b < 0 ? -b : b) + 1e-6
            exit !(a != "" && b != "" && d <= t) }'; then
        echo "ok   $1: $2 = $3"
    else
        echo "FAIL $1: got '$2', expected '$3'"; fails=$((fails + 1))
    fi
}
# shellcheck disable=SC2054 # the commas are --nodes' list
ZB=(predict --params 1000000 --sample-time 100us --batch 100 --bw 1gbit --latency 50us
    --buckets 1 --optim-time 10ms --overlap 0 --nodes 1,2,4,64)
z0=$(python3 "$PM" "${ZB[@]}" --zero 0) || { echo "FAIL predict --zero 0 exited $?"; exit 1; }
z1=$(python3 "$PM" "${ZB[@]}" --zero 1) || { echo "FAIL predict --zero 1 exited $?"; exit 1; }
z2=$(python3 "$PM" "${ZB[@]}" --zero 2) || { echo "FAIL predict --zero 2 exited $?"; exit 1; }
expect "zero 1: reduce-scatter, 4 nodes" "$z1" 4 reduce_scatter_s 0.02415
expect "zero 1: all-gather, 4 nodes" "$z1" 4 all_gather_s 0.02415
expect "zero 1: norm all-reduce, log2 4 hops" "$z1" 4 norm_s 0.0001
expect "zero 1: no gradient all-reduce" "$z1" 4 allreduce_s 0
expect "zero 1: step = compute + rs + norm + ag + optim/4" "$z1" 4 step_s 0.0609
expect "zero 1: one node is the DDP step" "$z1" 1 step_s "$(col "$z0" 1 step_s)"
for n in 2 4 64; do
    # Same bytes on the wire as the all-reduce, same hops per bucket: only the norm's
    # ceil(log2 N) latency terms are added.
    hops=$(awk -v n="$n" 'BEGIN { h = 0; while (2 ^ h < n) h++; print h }')
    same "zero 1 comm = all-reduce + norm latency, $n nodes" "$(col "$z1" "$n" comm_s)" \
        "$(awk -v a="$(col "$z0" "$n" allreduce_s)" -v h="$hops" 'BEGIN { print a + h * 50e-6 }')"
    same "zero 1 optimizer = 1/N of DDP's, $n nodes" \
        "$(awk -v a="$(col "$z1" "$n" optim_s)" -v n="$n" 'BEGIN { print a * n }')" \
        "$(col "$z0" "$n" optim_s)"
    same "zero 2 with 1 micro-batch takes zero 1's time, $n nodes" \
        "$(col "$z2" "$n" step_s)" "$(col "$z1" "$n" step_s)"
done
# Without latency the sharded step moves exactly the all-reduce's bytes.
zl0=$(python3 "$PM" "${ZB[@]}" --zero 0 --latency 0)
zl1=$(python3 "$PM" "${ZB[@]}" --zero 1 --latency 0)
same "zero 1 comm = all-reduce at alpha 0, 64 nodes" "$(col "$zl1" 64 comm_s)" "$(col "$zl0" 64 allreduce_s)"
# Memory per rank: 16 bytes per parameter at stage 0; optimizer state / N at 1; gradients / N too at 2.
expect "zero 0: 16 bytes per parameter" "$z0" 4 mem_gb 0.016
expect "zero 1: optimizer state / 4" "$z1" 4 optim_state_gb 0.002
expect "zero 1: 4 + 4 + 8/4 bytes per parameter" "$z1" 4 mem_gb 0.010
expect "zero 2: gradients / 4" "$z2" 4 grads_gb 0.001
expect "zero 2: 4 + 4/4 + 8/4 bytes per parameter" "$z2" 4 mem_gb 0.007
expect "zero 2: 64 nodes, 4 + 12/64 bytes per parameter" "$z2" 64 mem_gb 0.0041875
# A shard is ceil(P/N): 1,000,001 parameters on 4 ranks are 250,001 each (8 bytes of state).
zp=$(python3 "$PM" "${ZB[@]/1000000/1000001}" --zero 1)
# (2,000,008 bytes against 2,000,002 for P/N: compared to the byte.)
same "zero 1: padded shard, ceil(P/N)" "$(col "$zp" 4 optim_state_gb)" 0.002000008 1e-10
# Accumulation over 4 micro-batches: stage 2 reduce-scatters after each, stage 1 once.
za1=$(python3 "$PM" "${ZB[@]}" --zero 1 --accum 4)
za2=$(python3 "$PM" "${ZB[@]}" --zero 2 --accum 4)
expect "zero 1, 4 micro-batches: one reduce-scatter" "$za1" 4 reduce_scatter_s 0.02415
expect "zero 2, 4 micro-batches: four reduce-scatters" "$za2" 4 reduce_scatter_s 0.0966
expect "zero 2, 4 micro-batches: one all-gather" "$za2" 4 all_gather_s 0.02415
expect "zero 2, 4 micro-batches: step" "$za2" 4 step_s 0.13335
# Overlap of a micro-batch's backward: 0.5 x 6.667 ms / 4 hides 0.833 ms of each of the
# four reduce-scatters.
zo=$(python3 "$PM" "${ZB[@]}" --zero 2 --accum 4 --overlap 0.5)
expect "zero 2, each reduce-scatter hides behind its own micro-batch" "$zo" 4 exposed_s 0.117517
# The all-gather hidden behind the next forward (1/3 of 10 ms) when asked to, never more.
zg=$(python3 "$PM" "${ZB[@]}" --zero 1 --gather-overlap 1)
expect "zero 1: all-gather overlapped with the next forward" "$zg" 4 exposed_s 0.045067
zg=$(python3 "$PM" "${ZB[@]}" --zero 1 --gather-overlap 1 --last-bucket 1)
expect "zero 1: the all-gather's last bucket is never hidden" "$zg" 4 exposed_s 0.0484

# The side-by-side table: its cells are predict's figures, rounded to 0.1 ms, 0.1% and 4
# significant digits of GB.
tab=$(python3 "$PM" zero "${ZB[@]:1:${#ZB[@]}-3}" --nodes 4,64) || { echo "FAIL zero exited $?"; exit 1; }
row=$(awk -F'|' '$2 + 0 == 64' <<<"$tab")
same "zero table: DDP step at 64 nodes" "$(awk -F'|' '{ print $3 }' <<<"$row")" \
    "$(awk -v t="$(col "$z0" 64 step_s)" 'BEGIN { print t * 1000 }')" 0.05
same "zero table: ZeRO-1 step at 64 nodes" "$(awk -F'|' '{ print $6 }' <<<"$row")" \
    "$(awk -v t="$(col "$z1" 64 step_s)" 'BEGIN { print t * 1000 }')" 0.05
same "zero table: ZeRO-2 memory at 64 nodes" "$(awk -F'|' '{ print $11 }' <<<"$row")" "$(col "$z2" 64 mem_gb)" 0.0000005
same "zero table: ZeRO-2 efficiency at 64 nodes" "$(awk -F'|' '{ gsub(/%/, "", $10); print $10 }' <<<"$row")" \
    "$(awk -v e="$(col "$z2" 64 efficiency)" 'BEGIN { print e * 100 }')" 0.05

# check: a measured row's own stage and micro-batches (columns zero, accum), its measured
# sharded optimizer time taken as it is, and the link factor fitted to reduce-scatters:
# rows whose t_allreduce is 3*50us + 2 x 0.024 s (f = 0.5) per reduce-scatter.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/z.csv" <<'CSV'
nodes,link_bw,zero,accum,t_forward,t_backward,t_optim,t_step,t_allreduce
4,1gbit,1,1,0.0033333333,0.0066666667,0.0025,0.0609,0.04815
4,1gbit,2,4,0.0033333333,0.0066666667,0.0025,0.13335,0.1926
CSV
if out=$(python3 "$PM" check --csv "$tmp/z.csv" --params 1000000 --latency 50us --buckets 1 \
        --overlap 0 --calibrate bw); then
    same "check: zero 1 row predicted" "$(awk -F, '$1 == "1gbit 1 1" { print $10 }' <<<"$out")" 0.0609
    same "check: zero 2 row, 4 reduce-scatters" "$(awk -F, '$1 == "1gbit 2 4" { print $9 }' <<<"$out")" 0.0966
    same "check: zero 2 row predicted" "$(awk -F, '$1 == "1gbit 2 4" { print $10 }' <<<"$out")" 0.13335
    same "check: f fitted to reduce-scatters" \
        "$(sed -n 's/^# calibrated.*bandwidth factor f \([0-9.]*\).*/\1/p' <<<"$out")" 0.5
else
    echo "FAIL check on zero rows exited: $(tail -1 <<<"$out")"; fails=$((fails + 1))
fi
printf 'nodes,link_bw,zero,t_forward,t_backward,t_step\n4,1gbit,3,0.01,0.02,0.05\n' >"$tmp/bad.csv"
if msg=$(python3 "$PM" check --csv "$tmp/bad.csv" --params 1e6 2>&1) || ! grep -q "column zero" <<<"$msg"; then
    echo "FAIL check accepted zero = 3: $(tail -1 <<<"$msg")"; fails=$((fails + 1))
else
    echo "ok   check refuses zero = 3: $msg"
fi

# calibrate and grid: collectives measured as t = 1 ms + s / 1e8 (all-reduce) and
# 0.5 ms + s / 2e8 (reduce-scatter, all-gather) per buffer of s bytes, 2 nodes at 1 Gbit; a
# one-node run of 2 ranks (forward 10 ms, backward 20 ms, optimizer 2 ms) predicts 4 ranks
# on the 2 cores at twice those times, with no overlap, plus the step's collectives:
#   --zero 0: 2 all-reduces of 512 KiB = 2 x 6.24288 ms; step 76.48576 ms
#   --zero 1: 2 reduce-scatters and 2 all-gathers of 512 KiB (2 x 3.12144 ms each) and the
#   norm's all-reduce of 8 bytes, at the smallest measured size's 1.04096 ms; step
#   77.52672 ms, -9.09% of the 85.279392 ms the row says was measured. With --fit the
#   norm costs 1.00008 ms on calibrate's line (the line through exact points is the line
#   itself): step 77.48584 ms, -9.14%.
python3 - "$tmp/coll.csv" <<'PY'
import sys
with open(sys.argv[1], "w") as fh:
    fh.write("collective,hierarchical,nodes,link,ranks,bytes,seconds\n")
    for op, a, b in [("all-reduce", 1e-3, 1e-8), ("reduce-scatter", 5e-4, 5e-9), ("all-gather", 5e-4, 5e-9)]:
        for k in range(13):
            size = 4096 << k
            fh.write("%s,off,2,1gbit,4,%d,%.12g\n" % (op, size, a + b * size))
PY
cols=model,zero,scheme,nodes,link,ranks,hierarchical,compressing,grad_wire_bytes,grad_collectives,t_forward,t_backward,t_allreduce,t_allgather,t_exposed,t_optim,t_step
{
    echo "$cols"
    echo "mlp,0,flat,1,local,2,False,False,1048576,2,0.01,0.02,0.001,0,0.001,0.002,0.033"
    echo "mlp,1,flat,1,local,2,False,False,1048576,2,0.01,0.02,0.001,0,0.001,0.002,0.033"
    echo "mlp,0,flat,2,1gbit,4,False,False,1048576,2,0.02,0.04,0.01,0,0.01,0.004,0.07648576"
    echo "mlp,1,flat,2,1gbit,4,False,False,1048576,2,0.02,0.04,0.01,0.005,0.01,0.004,0.085279392"
} >"$tmp/grid.csv"
if ! python3 "$PM" calibrate --collectives "$tmp/coll.csv" --out "$tmp/machine.json" >/dev/null; then
    echo "FAIL calibrate exited $?"; fails=$((fails + 1))
fi
out=$(python3 "$PM" grid --machine "$tmp/machine.json" --csv "$tmp/grid.csv" 2>&1)
for want in "| mlp | 0 | flat | 2 | 1gbit | 76.5 | 76.5 | +0.0% |" \
            "| mlp | 1 | flat | 2 | 1gbit | 85.3 | 77.5 | -9.1% |" \
            "multi-node rows: 2; absolute error of the step: median 4.5%, worst 9.1%"; do
    if grep -qF -- "$want" <<<"$out"; then echo "ok   grid: $want"
    else echo "FAIL grid: no '$want' in:"; echo "$out"; fails=$((fails + 1)); fi
done
out=$(python3 "$PM" grid --fit --machine "$tmp/machine.json" --csv "$tmp/grid.csv" 2>&1)
want="multi-node rows: 2; absolute error of the step: median 4.6%, worst 9.1%"
if grep -qF -- "$want" <<<"$out"; then echo "ok   grid --fit: $want"
else echo "FAIL grid --fit: no '$want' in:"; echo "$out"; fails=$((fails + 1)); fi
# A cluster shape the machine file lacks: named, no traceback.
grep -v reduce-scatter "$tmp/coll.csv" >"$tmp/coll-rs.csv"
python3 "$PM" calibrate --collectives "$tmp/coll-rs.csv" --out "$tmp/machine-rs.json" >/dev/null
if msg=$(python3 "$PM" grid --machine "$tmp/machine-rs.json" --csv "$tmp/grid.csv" 2>&1) ||
    grep -q Traceback <<<"$msg" || ! grep -q "no reduce-scatter/2/1gbit/off" <<<"$msg"; then
    echo "FAIL grid without the reduce-scatter's curve: $(tail -1 <<<"$msg")"; fails=$((fails + 1))
else
    echo "ok   grid names the missing curve: $msg"
fi

for bad in "--bw fast" "--bw 1bps" "--bw 0gbit" "--params -5" "--overlap 2" "--latency=-1us" "--batch 0" "--nodes 1,x" "--nodes 0" \
           "--zero 3" "--zero x" "--accum 0" "--accum 3" "--gather-overlap 2" "--optim-state-bytes -1"; do
    # shellcheck disable=SC2086 # split on purpose
    if msg=$(python3 "$PM" predict --params 1e6 --sample-time 1ms --batch 1 --bw 1gbit $bad 2>&1); then
        echo "FAIL '$bad' was accepted"; fails=$((fails + 1))
    elif grep -q Traceback <<<"$msg"; then
        echo "FAIL '$bad' crashed: $(tail -1 <<<"$msg")"; fails=$((fails + 1))
    else
        echo "ok   '$bad' refused: $(tail -1 <<<"$msg")"
    fi
done
[ "$fails" -eq 0 ]
