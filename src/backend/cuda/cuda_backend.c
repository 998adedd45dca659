/*
 * The CUDA backend: device selection, the compute stream and cuBLAS handle, memory and
 * copies, and the ops table. The ops themselves live in one file per family
 * (cuda_gemm.cu, cuda_elementwise.cu, ...). Every op is queued on one non-blocking
 * stream, so calls run in order and the host only waits where the API says it does
 * (device-to-host copies, sumsq, sync).
 */
#include <stdlib.h>
#include <time.h>

#include "backend/cuda/cuda_internal.h"
#include "ddp/watchdog.h"

/* ---- errors ------------------------------------------------------------------------- */

ddp_status ddp_cuda_error(cudaError_t e, const char *call, const char *file, int line) {
    /* The error is reported here, as a status: take it out of the runtime's "last error",
     * or the next kernel launch check would report it again under that kernel's name. (A
     * sticky error, a fault inside a kernel, stays: every later call returns it.) */
    (void)cudaGetLastError();
    const char *hint;
    ddp_status s = DDP_ERR_BACKEND;
    switch (e) {
    case cudaErrorMemoryAllocation:
        s = DDP_ERR_NOMEM;
        hint = "reduce the batch size or the model, or check with nvidia-smi that no other "
               "process holds the GPU's memory";
        break;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
        s = DDP_ERR_UNSUPPORTED;
        hint = "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or run with --device cpu";
        break;
    case cudaErrorInvalidDevice:
        hint = "the device ordinal is not visible; check CUDA_VISIBLE_DEVICES";
        break;
    default:
        hint = "a fault in an earlier kernel makes every later call fail: rerun with "
               "CUDA_LAUNCH_BLOCKING=1 to find the kernel that caused it";
        break;
    }
    return ddp_error_set(s, file, line, "%s failed: %s (%s); %s", call, cudaGetErrorString(e),
                         cudaGetErrorName(e), hint);
}

ddp_status ddp_cublas_error(cublasStatus_t st, const char *call, const char *file, int line) {
    ddp_status s = st == CUBLAS_STATUS_ALLOC_FAILED ? DDP_ERR_NOMEM : DDP_ERR_BACKEND;
    const char *hint = st == CUBLAS_STATUS_ALLOC_FAILED
                           ? "free GPU memory (smaller batch or model) and retry"
                       : st == CUBLAS_STATUS_INVALID_VALUE
                           ? "a matrix size or leading dimension is invalid: please report "
                             "this as a bug in ddp"
                           : "check the CUDA driver and toolkit versions";
    return ddp_error_set(s, file, line, "%s failed: %s (cuBLAS status %d); %s", call,
                         cublasGetStatusString(st), (int)st, hint);
}

unsigned int ddp_cuda_blocks(size_t n, unsigned int threads) {
    /* Enough blocks to fill an H100 several times over; grid-stride loops do the rest. */
    const size_t cap = 8192;
    size_t blocks = (n + threads - 1) / threads;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    return (unsigned int)blocks;
}

ddp_status ddp_cuda_use(ddp_cuda_backend *cb) {
    DDP_CUDA_CHECK(cudaSetDevice(cb->device));
    return DDP_OK;
}

/* Polls cb->waited until it completes, a wait check fails, or the watchdog fires. */
static ddp_status poll_waited(ddp_cuda_backend *cb) {
    const struct timespec pause = {0, 20 * 1000}; /* 20 us: cheap, and quick to notice */
    for (int polls = 0;; polls++) {
        cudaError_t e = cudaEventQuery(cb->waited);
        if (e == cudaSuccess) return DDP_OK;
        if (e != cudaErrorNotReady) return ddp_cuda_error(e, "cudaEventQuery", __FILE__, __LINE__);
        (void)cudaGetLastError(); /* "not ready" is an answer, not an error to keep */
        DDP_CHECK(ddp_backend_run_wait_checks(&cb->base));
        if (ddp_watchdog_fired())
            return DDP_FAIL(DDP_ERR_TIMEOUT,
                            "waiting for GPU %d: work queued behind a collective did not "
                            "complete within the watchdog's timeout (a rank died or stopped)",
                            cb->device);
        /* Spin briefly first: most waits end within microseconds. */
        if (polls >= 64) nanosleep(&pause, NULL);
    }
}

ddp_status ddp_cuda_host_wait(ddp_cuda_backend *cb) {
    if (!ddp_backend_has_wait_checks(&cb->base)) {
        DDP_CUDA_CHECK(cudaStreamSynchronize(cb->stream));
        return DDP_OK;
    }
    DDP_CUDA_CHECK(cudaEventRecord(cb->waited, cb->stream));
    int wd = ddp_watchdog_arm("waiting for the GPU (work queued behind a collective)");
    ddp_status s = poll_waited(cb);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

/* ---- devices ------------------------------------------------------------------------ */

int ddp_backend_cuda_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        /* No driver or no device is an answer (zero), not an error; clear it so the
         * next launch check does not report it. */
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

cudaStream_t ddp_cuda_stream(ddp_backend *b) { return ((ddp_cuda_backend *)b)->stream; }

int ddp_cuda_device(ddp_backend *b) { return ((ddp_cuda_backend *)b)->device; }

/* ---- memory ------------------------------------------------------------------------- */

static ddp_status cuda_alloc(ddp_backend *b, size_t bytes, void **ptr) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    *ptr = NULL;
    if (bytes == 0) return DDP_OK;
    DDP_CHECK(ddp_cuda_use(cb));
    cudaError_t e = cudaMalloc(ptr, bytes);
    if (e != cudaSuccess) {
        *ptr = NULL;
        (void)cudaGetLastError();
        return ddp_error_set(e == cudaErrorMemoryAllocation ? DDP_ERR_NOMEM : DDP_ERR_BACKEND,
                             __FILE__, __LINE__,
                             "cudaMalloc of %zu bytes on GPU %d failed: %s; reduce the batch "
                             "size or the model, or check with nvidia-smi that no other "
                             "process holds the GPU's memory",
                             bytes, cb->device, cudaGetErrorString(e));
    }
    return DDP_OK;
}

static void cuda_dealloc(ddp_backend *b, void *ptr) {
    if (!ptr) return;
    cudaError_t e = cudaFree(ptr);
    if (e != cudaSuccess)
        ddp_log_warn("cudaFree on GPU %d failed: %s", ((ddp_cuda_backend *)b)->device,
                     cudaGetErrorString(e));
}

static ddp_status cuda_host_alloc(ddp_backend *b, size_t bytes, void **ptr) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    *ptr = NULL;
    if (bytes == 0) return DDP_OK;
    DDP_CHECK(ddp_cuda_use(cb));
    cudaError_t e = cudaMallocHost(ptr, bytes);
    if (e != cudaSuccess) {
        *ptr = NULL;
        (void)cudaGetLastError();
        return ddp_error_set(DDP_ERR_NOMEM, __FILE__, __LINE__,
                             "cudaMallocHost of %zu bytes of pinned host memory failed: %s; "
                             "pinned memory is limited by the system (ulimit -l, container "
                             "limits): use smaller staging buffers",
                             bytes, cudaGetErrorString(e));
    }
    return DDP_OK;
}

static void cuda_host_dealloc(ddp_backend *b, void *ptr) {
    if (!ptr) return;
    cudaError_t e = cudaFreeHost(ptr);
    if (e != cudaSuccess) ddp_log_warn("cudaFreeHost failed: %s", cudaGetErrorString(e));
}

static ddp_status cuda_copy(ddp_backend *b, void *dst, const void *src, size_t bytes,
                            ddp_copy_kind kind) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (bytes == 0) return DDP_OK;
    /* D2D between any two buffers the process can address: device memory, or host memory
     * where a caller that cannot tell (the local comm used as a control comm) passes it;
     * unified addressing lets the driver tell. */
    enum cudaMemcpyKind k = kind == DDP_COPY_H2D   ? cudaMemcpyHostToDevice
                            : kind == DDP_COPY_D2H ? cudaMemcpyDeviceToHost
                                                   : cudaMemcpyDefault;
    DDP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, k, cb->stream));
    /* The API promises that device-to-host data is there when the call returns. */
    if (kind == DDP_COPY_D2H) DDP_CHECK(ddp_cuda_host_wait(cb));
    return DDP_OK;
}

static ddp_status cuda_zero(ddp_backend *b, void *ptr, size_t bytes) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (bytes == 0) return DDP_OK;
    DDP_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, cb->stream));
    return DDP_OK;
}

static ddp_status cuda_sync(ddp_backend *b) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    DDP_CHECK(ddp_cuda_host_wait(cb));
    return DDP_OK;
}

/* ---- lifetime ----------------------------------------------------------------------- */

static void cuda_destroy(ddp_backend *b) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    if (!cb) return;
    /* Best effort: the backend is going away, so errors are only reported. */
    if (cudaSetDevice(cb->device) != cudaSuccess) (void)cudaGetLastError();
    if (cb->stream) {
        cudaError_t e = cudaStreamSynchronize(cb->stream);
        if (e != cudaSuccess)
            ddp_log_warn("CUDA backend on GPU %d: pending work failed at shutdown: %s", cb->device,
                         cudaGetErrorString(e));
    }
    ddp_cuda_gemm_release(cb);
    if (cb->cublas) cublasDestroy(cb->cublas);
    if (cb->partials) cudaFree(cb->partials);
    if (cb->host_result) cudaFreeHost(cb->host_result);
    if (cb->waited) cudaEventDestroy(cb->waited);
    if (cb->stream) cudaStreamDestroy(cb->stream);
    (void)cudaGetLastError();
    free(cb);
}

static ddp_status cuda_init(ddp_cuda_backend *cb) {
    DDP_CUDA_CHECK(cudaSetDevice(cb->device));
    DDP_CUDA_CHECK(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking));
    DDP_CUBLAS_CHECK(cublasCreate(&cb->cublas));
    DDP_CUBLAS_CHECK(cublasSetStream(cb->cublas, cb->stream));
    /* FP32 products stay true FP32; TF32 and BF16 are asked for per call (cuda_gemm.cu). */
    DDP_CUBLAS_CHECK(cublasSetMathMode(cb->cublas, CUBLAS_DEFAULT_MATH));
    DDP_CUDA_CHECK(
        cudaMalloc((void **)&cb->partials, (DDP_CUDA_REDUCE_BLOCKS + 1) * sizeof(double)));
    DDP_CUDA_CHECK(cudaMallocHost((void **)&cb->host_result, sizeof(double)));
    DDP_CUDA_CHECK(cudaEventCreateWithFlags(&cb->waited, cudaEventDisableTiming));
    int pools = 0;
    DDP_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, cb->device));
    cb->mem_pools = pools;
    return DDP_OK;
}

static const ddp_backend_ops cuda_ops = {.name = "cuda",
                                         .device = DDP_DEVICE_CUDA,
                                         .is_host = 0,
                                         .destroy = cuda_destroy,
                                         .alloc = cuda_alloc,
                                         .dealloc = cuda_dealloc,
                                         .host_alloc = cuda_host_alloc,
                                         .host_dealloc = cuda_host_dealloc,
                                         .copy = cuda_copy,
                                         .zero = cuda_zero,
                                         .sync = cuda_sync,
#define DDP_CUDA_ENTRY(name, params, args, check, noop) .name = ddp_cuda_##name,
                                         DDP_BACKEND_OPS(DDP_CUDA_ENTRY)
#undef DDP_CUDA_ENTRY
};

ddp_status ddp_backend_cuda_create(const ddp_backend_options *opt, ddp_backend **out) {
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "no CUDA device is visible (cudaGetDeviceCount: %s); check the NVIDIA "
                        "driver and CUDA_VISIBLE_DEVICES, or run with --device cpu",
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    if (opt->device_index < 0 || opt->device_index >= count)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "CUDA device index %d is out of range: %d device(s) are visible; "
                        "choose an index in [0, %d) (usually local rank modulo GPU count)",
                        opt->device_index, count, count);
    if (opt->math != DDP_MATH_FP32 && opt->math != DDP_MATH_TF32 && opt->math != DDP_MATH_BF16)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "unknown math mode %d for the CUDA backend; use fp32, tf32 or bf16",
                        (int)opt->math);

    ddp_cuda_backend *cb = calloc(1, sizeof *cb);
    if (!cb) return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory creating the CUDA backend");
    cb->base.ops = &cuda_ops;
    cb->base.opt = *opt;
    cb->base.opt.device = DDP_DEVICE_CUDA;
    cb->device = opt->device_index;
    ddp_status s = cuda_init(cb);
    if (s != DDP_OK) {
        ddp_error_trace(__FILE__, __LINE__);
        cuda_destroy(&cb->base);
        return s;
    }
    *out = &cb->base;
    return DDP_OK;
}
