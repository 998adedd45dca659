#!/usr/bin/env bash
# Builds ddp with CUDA, runs the GPU tests, and benchmarks MLP 784-4096-4096-4096-10 at
# batch 4096 in tf32 and bf16 against PyTorch on the same GPU, in one run. Writes logs and
# a summary table under OUT_DIR (default bench/gpu/out). Needs Open MPI, CMocka, OpenBLAS,
# jansson and zlib (on a machine without package access, unpack them first).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/bench/gpu/out}
BUILD=${BUILD_DIR:-$ROOT/build-gpu}
mkdir -p "$OUT_DIR"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"

cmake -S "$ROOT" -B "$BUILD" -DDDP_CUDA=ON -DDDP_WERROR=ON >"$OUT_DIR/build.log" 2>&1 &&
    cmake --build "$BUILD" -j "$(nproc)" >>"$OUT_DIR/build.log" 2>&1 || {
    tail -40 "$OUT_DIR/build.log"; exit 1; }

# GPU tests (op-by-op backend check, training equivalence) and the CPU suite.
ctest --test-dir "$BUILD" -L cuda --output-on-failure 2>&1 | tee "$OUT_DIR/ctest-cuda.log"
ctest --test-dir "$BUILD" -LE cluster --output-on-failure >"$OUT_DIR/ctest-all.log" 2>&1
tail -5 "$OUT_DIR/ctest-all.log"

MODEL=(--hidden 4096,4096,4096 --batch 4096 --device cuda --comm nccl --warmup-steps 10 --bench-steps 50)
for prec in tf32 bf16; do
    mpirun -np 1 "$BUILD/ddp-bench" train "${MODEL[@]}" --precision "$prec" \
        --json "$OUT_DIR/ddp-$prec.json" >"$OUT_DIR/ddp-$prec.log" 2>&1
    python3 "$ROOT/bench/gpu/torch_mlp.py" --precision "$prec" >"$OUT_DIR/torch-$prec.json" \
        2>"$OUT_DIR/torch-$prec.log"
done

python3 - "$OUT_DIR" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| precision | ddp samples/s | PyTorch samples/s | ddp / PyTorch | ddp MFU | PyTorch MFU | measured peak TFLOP/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for p in ("tf32", "bf16"):
    try:
        d = json.load(open(os.path.join(out, "ddp-%s.json" % p)))
        t = json.load(open(os.path.join(out, "torch-%s.json" % p)))
    except Exception as e:
        print("| %s | missing (%s) |" % (p, e)); continue
    peak = t["peak_tflops_measured"]
    ddp_tflops = d["model_flops_per_s"] / 1e12
    print("| %s | %.0f | %.0f | %.2f | %.1f%% | %.1f%% | %.0f |" % (
        p, d["samples_per_s"], t["samples_per_s"], d["samples_per_s"] / t["samples_per_s"],
        100 * ddp_tflops / peak, 100 * t["mfu"], peak))
PY
