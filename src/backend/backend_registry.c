/*
 * The backend registry: the one place that knows which backends were built. Everything
 * else chooses at run time through ddp_backend_create.
 */
#include "backend/backend_impl.h"

int ddp_backend_cuda_device_count(void) {
#ifdef DDP_HAVE_CUDA
    return ddp_backend_cuda_count();
#else
    return 0;
#endif
}

ddp_status ddp_backend_create(const ddp_backend_options *opt, ddp_backend **out) {
    *out = NULL;
    ddp_backend_options o = *opt;
    if (o.device == DDP_DEVICE_AUTO) {
        if (ddp_backend_cuda_device_count() > 0) {
            o.device = DDP_DEVICE_CUDA;
        } else {
            o.device = DDP_DEVICE_CPU;
#ifdef DDP_HAVE_CUDA
            ddp_log_info("no GPU found: running on the CPU");
#endif
        }
    }
    if (o.device == DDP_DEVICE_CUDA) {
#ifdef DDP_HAVE_CUDA
        DDP_CHECK(ddp_backend_cuda_create(&o, out));
        return DDP_OK;
#else
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "--device cuda: this ddp was built without CUDA; rebuild with "
                        "-DDDP_CUDA=ON on a machine with the CUDA toolkit, or use --device cpu");
#endif
    }
    if (o.math == DDP_MATH_TF32)
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "--precision tf32 needs the CUDA backend (tensor cores); on the CPU use "
                        "--precision bf16 or fp32");
    DDP_CHECK(ddp_backend_cpu_create(&o, out));
    return DDP_OK;
}
