#!/usr/bin/env bash
# One call on a GPU machine that has no package access: build what the GPU needs, run
# every GPU test (a skip counts as a failure), smoke-train the GPT and the CNN in bf16
# over NCCL, benchmark the MLP 784-4096x3-10 against PyTorch in tf32 and bf16 in the same
# call, and print a summary table last. Sized for one device call of at most 9 minutes.
#
#   # here, once: the Debian packages the GPU machine lacks, and the text for the GPT
#   sh ../shared/device/fetch-debs.sh && bash bench/gpu/first-run.sh --prepare
#   # there, from the project root, with .deps carried:
#   OUT=/some/dir bash bench/gpu/first-run.sh
#
# Everything goes under $OUT (default bench/gpu/out): summary.md, ctest-cuda.log and
# logs.tar.gz (every other log and JSON), at most 8 files. Each stage has a time limit of
# its own, so a hang costs that stage, not the call.
#
# DDP_FIRST_RUN_QUICK=1 stops after the GPU tests (a rerun after a fix).
#
# DDP_FIRST_RUN_STUB=1 rehearses the script on a machine without a GPU: the GPU steps
# run on the CPU (--device cpu --comm mpi, small sizes), PyTorch's side is replaced by a
# stub, and the GPU tests are expected to skip; everything else (unpacking, configure
# with CUDA and NCCL required, the build, parsing, the table) runs for real.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
STUB=${DDP_FIRST_RUN_STUB:-0}
OUT=${OUT:-$ROOT/bench/gpu/out}
LOGS=$OUT/logs
BUILD=${BUILD_DIR:-$ROOT/build-gpu}
TEXT=$ROOT/.deps/kjv.txt.gz
mkdir -p "$LOGS"
T0=$(date +%s)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1

# --prepare (here, where packages can be fetched): the GPT's text, compressed, beside
# the carried packages.
if [ "${1:-}" = "--prepare" ]; then
    [ -d .deps/debs ] || { echo "run sh ../shared/device/fetch-debs.sh first" >&2; exit 1; }
    command -v bible >/dev/null || { echo "bible (Debian's bible-kjv) is missing" >&2; exit 1; }
    # As src/data/text_corpus.c runs it: in "/", so that no stray bible.data is read.
    (cd / && bible -l 79 gen1:1-rev22:21) | gzip -9 >"$TEXT"
    ls -l "$TEXT"
    du -sh .deps
    exit 0
fi

declare -A RESULT # stage -> ok | FAIL (reason)
ORDER=()
stage() { ORDER+=("$1"); RESULT[$1]=$2; echo "[$(( $(date +%s) - T0 )) s] $1: $2"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
# A stage's time limit: what it asks for, cut to what is left of DDP_FIRST_RUN_SECONDS
# (default 500), keeping 15 s for the summary.
DEADLINE=${DDP_FIRST_RUN_SECONDS:-500}
budget() {
    local left=$(( DEADLINE - $(elapsed) - 15 ))
    if [ "$left" -lt 5 ]; then left=5; fi
    if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# ---- 1. preflight (about 10 s) --------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)  stub: $STUB"
    echo "host: $(uname -srm), $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB"
    grep -m1 'model name' /proc/cpuinfo
    echo "cpu bf16: $(grep -o -w 'amx_bf16\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    if [ "$STUB" = 1 ]; then echo "gpu: stub (no GPU used)"; else
        timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
            --format=csv,noheader || echo "nvidia-smi failed"; fi
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -n1)"
    echo "cc: $(cc --version 2>/dev/null | head -n1)"
    echo "cmake: $(cmake --version 2>/dev/null | head -n1)  ninja: $(ninja --version 2>/dev/null)"
    echo "python: $(timeout 20 python3 -c 'import torch; print(torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -n1)"
    echo "carried packages: $(ls .deps/debs 2>/dev/null | wc -l), text: $([ -f "$TEXT" ] && echo yes || echo no)"
} 2>&1 | tee "$LOGS/preflight.txt"
GPU_NAME=$(grep '^gpu\|NVIDIA' "$LOGS/preflight.txt" | head -n1 | cut -d, -f1)

# ---- 2. the carried packages ------------------------------------------------------------
if [ -f .deps/unpack.sh ]; then
    # shellcheck source=/dev/null
    . .deps/unpack.sh >"$LOGS/unpack.log" 2>&1 && stage unpack ok || stage unpack "FAIL (see unpack.log)"
else
    stage unpack "skipped (no .deps/unpack.sh: using the system's packages)"
fi

# ---- 3. configure: CUDA and NCCL required, warnings not fatal ---------------------------
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
if timeout "$(budget 120)" cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DDDP_CUDA=ON -DDDP_NCCL=ON -DDDP_REQUIRE_GPU="$([ "$STUB" = 1 ] && echo OFF || echo ON)" \
    -DDDP_WERROR=OFF -DCMAKE_CUDA_ARCHITECTURES=90 >"$LOGS/configure.log" 2>&1; then
    stage configure "ok ($(grep -o 'CUDA backend [A-Z]*, NCCL comm [A-Z]*' "$LOGS/configure.log"))"
else
    stage configure "FAIL: $(grep -m1 -A2 'CMake Error' "$LOGS/configure.log" | tr '\n' ' ' | cut -c1-200)"
fi

# ---- 4. build only what the GPU run needs -----------------------------------------------
B0=$(date +%s)
if [ "${RESULT[configure]:0:2}" = ok ] &&
    timeout "$(budget 300)" cmake --build "$BUILD" -j "$(nproc)" --target gpu-tests ddp-bench \
        >"$LOGS/build.log" 2>&1; then
    stage build "ok ($(( $(date +%s) - B0 )) s, $(grep -c 'warning:' "$LOGS/build.log") warnings)"
else
    stage build "FAIL: $(grep -m1 -E 'error|Error' "$LOGS/build.log" | cut -c1-200)"
fi
BUILT=0
[ "${RESULT[build]:0:2}" = ok ] && BUILT=1

# ---- 5. every GPU test: a skip is a failure ---------------------------------------------
if [ "$BUILT" = 1 ]; then
    # Verbose: the tests' own figures (errors against their bounds) are part of the record.
    timeout "$(budget 240)" ctest --test-dir "$BUILD" -L cuda -V --timeout "$(budget 180)" \
        >"$OUT/ctest-cuda.log" 2>&1
    summary=$(grep -E 'tests passed|tests failed' "$OUT/ctest-cuda.log" | tail -n1)
    failed=$(grep -E '\*\*\*Failed|\*\*\*Timeout|\*\*\*Exception|Not Run|\*\*\*Skipped' \
        "$OUT/ctest-cuda.log" | sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: //' | awk '{print $1}' | tr '\n' ' ')
    # cmocka's own skips inside a passing program count too.
    skips=$(grep -cE '^([0-9]+: )?\[  SKIPPED \]' "$OUT/ctest-cuda.log")
    if [ -n "$summary" ] && [ -z "$failed" ] && [ "$skips" = 0 ]; then
        stage gpu-tests "ok ($summary)"
    else
        stage gpu-tests "FAIL (${summary:-no summary}; failed: ${failed:-none}; cmocka skips: $skips)"
    fi
else
    stage gpu-tests "not run (no build)"
fi

[ "${DDP_FIRST_RUN_QUICK:-0}" = 1 ] && BUILT=0 # the rest needs a build; skip it

# ---- 6. smoke runs: GPT and CNN in bf16 over NCCL ---------------------------------------
# prec P: the precision flag of a GPU run; the CPU of a stub computes in fp32 only.
DEV=(--device cuda --comm nccl)
prec() { if [ "$STUB" = 1 ]; then echo "--precision fp32"; else echo "--precision $1"; fi; }
[ "$STUB" = 1 ] && DEV=(--device cpu --comm mpi)
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(str(d.get(k,"?")) for k in sys.argv[2:]))' "$@" 2>/dev/null; }
if [ "$BUILT" = 1 ]; then
    if [ -f "$TEXT" ]; then gunzip -c "$TEXT" >"$LOGS/kjv.txt"; else
        cat README.md docs/*.md >"$LOGS/kjv.txt"; fi
    GPT=(--model gpt --text "$LOGS/kjv.txt" $(prec bf16) --optim adamw --lr 1e-3 --warmup 20)
    [ "$STUB" = 1 ] && GPT+=(--layers 2 --dim 64 --heads 2 --ctx 64 --batch 16)
    steps=300; [ "$STUB" = 1 ] && steps=30
    if timeout "$(budget 120)" mpirun -np 1 "$BUILD/ddp-train" "${GPT[@]}" "${DEV[@]}" --steps "$steps" \
        --log-every 50 --eval-every "$steps" --eval-tokens 65536 --timeout 60 \
        --metrics "$LOGS/gpt-train.jsonl" >"$LOGS/gpt-train.log" 2>&1; then
        first=$(head -n1 "$LOGS/gpt-train.jsonl" | python3 -c 'import json,sys; print("%.3f" % json.loads(sys.stdin.read())["loss"])' 2>/dev/null)
        last=$(tail -n1 "$LOGS/gpt-train.jsonl" | python3 -c 'import json,sys; print("%.3f" % json.loads(sys.stdin.read())["loss"])' 2>/dev/null)
        stage gpt-train "ok (loss ${first:-?} -> ${last:-?} in $steps steps; $(grep -o 'val[^,]*loss[^,]*' "$LOGS/gpt-train.log" | tail -n1))"
    else
        stage gpt-train "FAIL: $(grep -m1 -iE 'error|failed' "$LOGS/gpt-train.log" | cut -c1-200)"
    fi
    BENCH=(--warmup-steps 5 --bench-steps 20)
    [ "$STUB" = 1 ] && BENCH=(--warmup-steps 1 --bench-steps 3)
    if timeout "$(budget 90)" mpirun -np 1 "$BUILD/ddp-bench" train "${GPT[@]}" "${DEV[@]}" "${BENCH[@]}" \
        --json "$LOGS/gpt-bench.json" >"$LOGS/gpt-bench.log" 2>&1; then
        stage gpt-bench "ok ($(json_get "$LOGS/gpt-bench.json" tokens_per_s) tokens/s)"
    else
        stage gpt-bench "FAIL: $(grep -m1 -iE 'error|failed' "$LOGS/gpt-bench.log" | cut -c1-200)"
    fi
    # RMSNorm's kernels in a training step.
    if timeout "$(budget 60)" mpirun -np 1 "$BUILD/ddp-bench" train "${GPT[@]}" "${DEV[@]}" "${BENCH[@]}" \
        --norm rmsnorm --json "$LOGS/gpt-bench-rmsnorm.json" >"$LOGS/gpt-bench-rmsnorm.log" 2>&1; then
        stage gpt-bench-rmsnorm "ok ($(json_get "$LOGS/gpt-bench-rmsnorm.json" tokens_per_s) tokens/s)"
    else
        stage gpt-bench-rmsnorm "FAIL: $(grep -m1 -iE 'error|failed' "$LOGS/gpt-bench-rmsnorm.log" | cut -c1-200)"
    fi
    # ZeRO-1 over NCCL: the queued reduce-scatters and gathers, against the line above.
    if timeout "$(budget 90)" mpirun -np 1 "$BUILD/ddp-bench" train "${GPT[@]}" "${DEV[@]}" "${BENCH[@]}" \
        --zero 1 --json "$LOGS/gpt-bench-zero1.json" >"$LOGS/gpt-bench-zero1.log" 2>&1; then
        stage gpt-bench-zero1 "ok ($(json_get "$LOGS/gpt-bench-zero1.json" tokens_per_s) tokens/s)"
    else
        stage gpt-bench-zero1 "FAIL: $(grep -m1 -iE 'error|failed' "$LOGS/gpt-bench-zero1.log" | cut -c1-200)"
    fi
    CNN=(--model cnn $(prec bf16) --sync-bn --batch 256)
    [ "$STUB" = 1 ] && CNN+=(--channels 4,8 --hidden 16 --batch 32)
    if timeout "$(budget 90)" mpirun -np 1 "$BUILD/ddp-bench" train "${CNN[@]}" "${DEV[@]}" "${BENCH[@]}" \
        --json "$LOGS/cnn-bench.json" >"$LOGS/cnn-bench.log" 2>&1; then
        stage cnn-bench "ok ($(json_get "$LOGS/cnn-bench.json" samples_per_s) samples/s)"
    else
        stage cnn-bench "FAIL: $(grep -m1 -iE 'error|failed' "$LOGS/cnn-bench.log" | cut -c1-200)"
    fi
fi

# ---- 7. the MLP 784-4096x3-10 against PyTorch, tf32 and bf16 ----------------------------
HIDDEN=4096,4096,4096 BATCH=4096
[ "$STUB" = 1 ] && HIDDEN=128,128 BATCH=256
if [ "$BUILT" = 1 ]; then
    for prec in tf32 bf16; do
        timeout "$(budget 90)" mpirun -np 1 "$BUILD/ddp-bench" train --hidden "$HIDDEN" --batch "$BATCH" \
            "${DEV[@]}" $(prec "$prec") "${BENCH[@]}" --json "$LOGS/ddp-mlp-$prec.json" \
            >"$LOGS/ddp-mlp-$prec.log" 2>&1 || echo "ddp $prec failed" >>"$LOGS/ddp-mlp-$prec.log"
        if [ "$STUB" = 1 ]; then
            echo '{"samples_per_s": 1.0, "peak_tflops_measured": 1.0, "mfu": 0.0, "stub": true}' \
                >"$LOGS/torch-mlp-$prec.json"
        else
            timeout "$(budget 120)" python3 bench/gpu/torch_mlp.py --hidden "$HIDDEN" --batch "$BATCH" \
                --precision "$prec" >"$LOGS/torch-mlp-$prec.json" 2>"$LOGS/torch-mlp-$prec.log"
        fi
    done
fi
MLP_TABLE=$(python3 - "$LOGS" <<'PY'
import json, os, sys
logs = sys.argv[1]
print("| precision | ddp samples/s | PyTorch samples/s | ddp / PyTorch | ddp TFLOP/s | measured peak TFLOP/s | ddp % of peak |")
print("|---|---:|---:|---:|---:|---:|---:|")
for p in ("tf32", "bf16"):
    try:
        d = json.load(open(os.path.join(logs, "ddp-mlp-%s.json" % p)))
        t = json.load(open(os.path.join(logs, "torch-mlp-%s.json" % p)))
    except Exception as e:
        print("| %s | missing (%s) | | | | | |" % (p, type(e).__name__))
        continue
    tf = d["model_flops_per_s"] / 1e12
    peak = t["peak_tflops_measured"]
    print("| %s | %.0f | %.0f | %.2f | %.1f | %.0f | %.0f%% |" % (
        p, d["samples_per_s"], t["samples_per_s"], d["samples_per_s"] / t["samples_per_s"],
        tf, peak, 100 * tf / peak))
PY
)

# ---- 8. the host's CPU in bf16, where it has AMX: ddp against PyTorch's autocast -----------
# The GPT on 2 of the host's cores (1 process x 2 threads), as on the 2-core machines the
# CPU figures come from: ddp fp32 and bf16, PyTorch fp32 and autocast bf16, 2 rounds in
# alternating order.
CPU_TABLE=""
if [ "$BUILT" = 1 ] && [ "$STUB" != 1 ] && grep -q -w amx_bf16 /proc/cpuinfo; then
    CPU_GPT=(--text "$LOGS/kjv.txt" --warmup-steps 3 --bench-steps 8)
    for r in 1 2; do
        order="ddp-fp32 ddp-bf16 torch-fp32 torch-bf16"
        [ "$r" = 2 ] && order="torch-bf16 torch-fp32 ddp-bf16 ddp-fp32"
        for v in $order; do
            json="$LOGS/cpu-$v-$r.json"
            case $v in
            ddp-*) OPENBLAS_NUM_THREADS=2 timeout "$(budget 60)" taskset -c 0,1 mpirun -np 1 \
                --bind-to none "$BUILD/ddp-bench" train --model gpt --device cpu --threads 2 \
                --precision "${v#ddp-}" "${CPU_GPT[@]}" --json "$json" >"$LOGS/cpu-$v-$r.log" 2>&1 ;;
            torch-fp32) OMP_NUM_THREADS=2 timeout "$(budget 60)" taskset -c 0,1 python3 \
                bench/gpt/torch_ddp_gpt.py --threads 2 "${CPU_GPT[@]}" --json "$json" \
                >"$LOGS/cpu-$v-$r.log" 2>&1 ;;
            torch-bf16) OMP_NUM_THREADS=2 timeout "$(budget 60)" taskset -c 0,1 python3 \
                bench/gpt/torch_ddp_gpt.py --threads 2 --autocast "${CPU_GPT[@]}" --json "$json" \
                >"$LOGS/cpu-$v-$r.log" 2>&1 ;;
            esac
        done
    done
    CPU_TABLE=$(python3 - "$LOGS" <<'PY'
import glob, json, os, statistics, sys
logs = sys.argv[1]
rate = {}
for v in ("ddp-fp32", "ddp-bf16", "torch-fp32", "torch-bf16"):
    xs = []
    for f in sorted(glob.glob(os.path.join(logs, "cpu-%s-*.json" % v))):
        try:
            xs.append(json.load(open(f))["tokens_per_s"])
        except Exception:
            pass
    rate[v] = statistics.median(xs) if xs else None
def r(a, b):
    return "%.2f" % (rate[a] / rate[b]) if rate[a] and rate[b] else "-"
print("| GPT on 2 host cores (AMX), tokens/s | ddp fp32 | ddp bf16 | PyTorch fp32 | PyTorch autocast bf16 | ddp bf16 / PyTorch bf16 | ddp bf16 / ddp fp32 |")
print("|---|---:|---:|---:|---:|---:|---:|")
print("| median of 2 rounds | %s | %s | %s | %s | %s | %s |" % tuple(
    ["%.0f" % rate[v] if rate[v] else "missing" for v in ("ddp-fp32", "ddp-bf16", "torch-fp32", "torch-bf16")]
    + [r("ddp-bf16", "torch-bf16"), r("ddp-bf16", "ddp-fp32")]))
PY
)
    stage cpu-bf16 "$( [ -n "$CPU_TABLE" ] && echo ok || echo FAIL)"
fi

# ---- 9. the summary, last ---------------------------------------------------------------
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"
{
    echo "## bench/gpu/first-run.sh: ${GPU_NAME:-?}, $(elapsed) s"
    echo
    echo "| stage | result |"
    echo "|---|---|"
    for s in "${ORDER[@]}"; do echo "| $s | ${RESULT[$s]} |"; done
    echo
    echo "$MLP_TABLE"
    [ -n "$CPU_TABLE" ] && printf '\n%s\n' "$CPU_TABLE"
} | tee "$OUT/summary.md"
for s in "${ORDER[@]}"; do
    case "${RESULT[$s]}" in FAIL*) exit 1 ;; esac
done
exit 0
