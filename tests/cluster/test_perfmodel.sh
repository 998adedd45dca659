#!/usr/bin/env bash
# cluster/perfmodel against hand-computed alpha-beta figures: the ring all-reduce time,
# the exposed part with and without overlap, step time and efficiency; and its refusal
# of bad input. 1e6 parameters (4 MB of fp32 gradients), 100 samples of 100 us, 1 Gbit/s
# (1.25e8 B/s), alpha 50 us, one bucket:
#   N=2: T_ar = 2*1*50us + 2*(1/2)*4e6/1.25e8 = 0.0321 s;  N=4: 6*50us + 1.5*4e6/1.25e8 = 0.0483 s
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

for bad in "--bw fast" "--bw 1bps" "--bw 0gbit" "--params -5" "--overlap 2" "--latency=-1us" "--batch 0" "--nodes 1,x" "--nodes 0"; do
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
