#!/usr/bin/env bash
# PowerSGD across nodes, on an emulated cluster of 2 nodes x 2 ranks (cluster/emu):
#  - at 100 Mbit/s, --compress auto measures plain and compressed steps and keeps
#    compressing the MLP 1024x1024 (the wire decides), and the run's replicas stay bitwise
#    equal across the nodes (--check-sync 1);
#  - at 10 Gbit/s it goes back to the plain all-reduce (replicas equal again, the error
#    feedback sent with the first plain step);
#  - --compress powersgd --zero 1 checkpoints on 2 x 2 ranks and resumes on 2 x 1 (the
#    error feedback resharded across nodes) to the end.
# The cluster is always removed at the end.
#
# Needs root (network namespaces), iproute2; DDP_TRAIN (ddp-train), MPIEXEC (default
# mpirun) and Fashion-MNIST (DDP_FASHION_MNIST). Exits 77 (skipped) without root or
# namespaces.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=../script_lib.sh
. "$HERE/../script_lib.sh"
script_need_netns
script_setup ddp-psgd-nodes data
EMU=$ROOT/cluster/emu
PREFIX=ddpp$$
trap '"$EMU" down --dir "$TMP/emu" --prefix "$PREFIX" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
H="-H 10.77.0.1:2,10.77.0.2:2 --map-by slot"
EMURUN=("$EMU" run --dir "$TMP/emu" -- "$MPIEXEC" --oversubscribe)
COMMON=(--data "$DATA" --threads 1 --seed 3 --log-every 1 --timeout 60)
RUN_TIMEOUT=240

"$EMU" up 2 --bw 100mbit --dir "$TMP/emu" --prefix "$PREFIX" >/dev/null
# shellcheck disable=SC2086
run auto-compresses-at-100mbit 0 "compress auto: compressing from here on" -- \
    "${EMURUN[@]}" -np 4 $H "$TRAIN" "${COMMON[@]}" --hidden 1024,1024 --batch 512 --steps 14 \
    --compress auto --check-sync 1
check "the compressed steps ran (--check-sync held on each)" \
    grep -q "step 14/14" "$TMP/auto-compresses-at-100mbit.log"

# At 10 Gbit/s the same run's collectives cost less than PowerSGD's work and its two
# synchronizations per bucket on these shared cores: it goes back to the plain all-reduce.
"$EMU" up 2 --bw 10gbit --dir "$TMP/emu" --prefix "$PREFIX" >/dev/null
# shellcheck disable=SC2086
run auto-declines-at-10gbit 0 "compress auto: not compressing" -- \
    "${EMURUN[@]}" -np 4 $H "$TRAIN" "${COMMON[@]}" --hidden 1024,1024 --batch 512 --steps 14 \
    --compress auto --check-sync 1

# Checkpointed on 2 x 2 ranks, resumed on 2 x 1.
CK=$TMP/ckpt
# shellcheck disable=SC2086
run checkpoint-2x2 0 "checkpoint of step 6" -- \
    "${EMURUN[@]}" -np 4 $H "$TRAIN" "${COMMON[@]}" --batch 128 --steps 6 --compress powersgd \
    --compress-rank 2 --zero 1 --checkpoint-dir "$CK"
run resume-2x1 0 "resumed from .*step 6 of 12.*written by 4 rank" -- \
    "${EMURUN[@]}" -np 2 -H 10.77.0.1:1,10.77.0.2:1 "$TRAIN" "${COMMON[@]}" --batch 128 --steps 12 \
    --compress powersgd --compress-rank 2 --zero 1 --checkpoint-dir "$CK" --resume --check-sync 1
check "the resumed run did not warm its compressor up again" \
    bash -c "! grep -q 'start afresh' '$TMP/resume-2x1.log'"
script_finish
