/*
 * The CPU backend's transformer ops: token and position embedding, layer normalization
 * and causal multi-head self-attention (ddp/backend_ops.h says what each computes).
 */
#include "backend/backend_impl.h"

#define NOT_YET(op) DDP_FAIL(DDP_ERR_UNSUPPORTED, op ": not written yet for the CPU backend")

ddp_status ddp_cpu_encoder_forward(ddp_backend *b, float *out, const int32_t *tokens,
                                   const float *wte, const float *wpe, int B, int T, int C) {
    return NOT_YET("encoder_forward");
}

ddp_status ddp_cpu_encoder_backward(ddp_backend *b, float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, int B, int T, int C) {
    return NOT_YET("encoder_backward");
}

ddp_status ddp_cpu_layernorm_forward(ddp_backend *b, float *out, float *mean, float *rstd,
                                     const float *inp, const float *weight, const float *bias,
                                     int N, int C) {
    return NOT_YET("layernorm_forward");
}

ddp_status ddp_cpu_layernorm_backward(ddp_backend *b, float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp, const float *weight,
                                      const float *mean, const float *rstd, int N, int C) {
    return NOT_YET("layernorm_backward");
}

ddp_status ddp_cpu_attention_forward(ddp_backend *b, float *out, float *att, const float *qkv,
                                     float *work, int B, int T, int C, int NH) {
    return NOT_YET("attention_forward");
}

ddp_status ddp_cpu_attention_backward(ddp_backend *b, float *dqkv, const float *dout,
                                      const float *qkv, const float *att, float *work, int B, int T,
                                      int C, int NH) {
    return NOT_YET("attention_backward");
}
