/*
 * The backend's compute operations, as one list. Everything else is generated from it:
 * the public functions ddp_backend_<op> (declared in ddp/backend.h, defined in
 * src/backend/backend.c: argument check, then dispatch), the slots of the backend's table
 * (src/backend/backend_impl.h), the CPU backend's table (cpu_<op>, src/backend/
 * backend_cpu*.c) and the CUDA backend's declarations and table (ddp_cuda_<op>,
 * src/backend/cuda/). Adding an op is: an entry here, its CPU and its CUDA
 * implementation, and an entry in the table of the op tests (tests/backend/op_cases.c).
 *
 * DDP_BACKEND_OPS(X) calls X(name, params, args, check, noop) for every op:
 *   params  the parameter list in parentheses, starting with ddp_backend *b;
 *   args    the same names as an argument list;
 *   check   an expression of type ddp_status, evaluated first: DDP_OK, or a failure
 *           recorded with DDP_FAIL (backend.c defines the helpers used here);
 *   noop    an expression that is true when the call has nothing to do: the wrapper
 *           then returns DDP_OK without calling the backend.
 *
 * Conventions: pointers are device memory of the backend (host memory on the CPU);
 * matrices are row-major; shapes are given in comments as (rows, columns) or (B, T, C)
 * with the last index fastest. Every op is queued on the backend's compute stream,
 * asynchronous unless it says otherwise. Gradient outputs named "+=" are ADDED to (so
 * callers accumulate, and zero a buffer themselves before its first contribution);
 * outputs named "=" are written. Deterministic: the same inputs give the same bits on
 * every call (no atomics whose order varies), so that checkpoints resume bit-exactly; the
 * one exception is softmax_xent's stats on CUDA (metrics, summed with atomics).
 *
 * This header is included only by ddp/backend.h and the backend's own sources.
 */
#ifndef DDP_BACKEND_OPS_H
#define DDP_BACKEND_OPS_H

/* Floats of workspace that attention_forward and attention_backward need for a batch
 * of B sequences of T positions, C channels and NH heads. */
#define DDP_ATTENTION_WORK(B, T, C, NH)                                                            \
    (4 * (size_t)(B) * (size_t)(T) * (size_t)(C) +                                                 \
     (size_t)(B) * (size_t)(NH) * (size_t)(T) * (size_t)(T))

/* clang-format off */
#define DDP_BACKEND_OPS(X)                                                                         \
    /* C (M, N) = alpha * op(A) op(B) + beta * C; op(A) is (M, K), op(B) (K, N); lda, ldb,         \
     * ldc are the row strides of A, B, C as stored. With beta 0 and K > 0, C is never read    \
     * (K = 0 computes C *= beta). */             \
    X(gemm,                                                                                        \
      (ddp_backend * b, int trans_a, int trans_b, int M, int N, int K, float alpha,                \
       const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc),           \
      (b, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc),                         \
      check_gemm(trans_a, trans_b, M, N, K, lda, ldb, ldc), M == 0 || N == 0)                      \
    /* y (N, C) += bias (C) broadcast over rows. */                                                \
    X(bias_add, (ddp_backend * b, float *y, const float *bias, int N, int C),                      \
      (b, y, bias, N, C), DDP_OK, N <= 0 || C <= 0)                                                \
    /* dbias (C) += sum over rows of dy (N, C). */                                                 \
    X(bias_grad, (ddp_backend * b, float *dbias, const float *dy, int N, int C),                   \
      (b, dbias, dy, N, C), DDP_OK, N <= 0 || C <= 0)                                              \
    /* y = act(x), n elements; y may equal x. GELU is the tanh approximation (GPT-2,               \
     * PyTorch's approximate="tanh"). */                                                           \
    X(act_forward, (ddp_backend * b, ddp_act act, const float *x, float *y, size_t n),             \
      (b, act, x, y, n), check_act(act), n == 0)                                                   \
    /* dx = dy * act'(x), n elements; dx may equal dy. */                                          \
    X(act_backward,                                                                                \
      (ddp_backend * b, ddp_act act, const float *x, const float *dy, float *dx, size_t n),        \
      (b, act, x, dy, dx, n), check_act(act), n == 0)                                              \
    /* Softmax cross-entropy over logits (N, C) with integer labels (N). stats (2 floats):         \
     * stats[0] += sum of per-row losses, stats[1] += rows whose arg-max equals the label.         \
     * When dlogits is not NULL it receives grad_scale * (softmax - onehot), so grad_scale         \
     * = 1/rows-in-the-global-batch gives the gradient of the mean loss. A label outside           \
     * [0, C) fails on the CPU; a CUDA kernel cannot fail, so there it makes the loss NaN. */                               \
    X(softmax_xent,                                                                                \
      (ddp_backend * b, const float *logits, const int32_t *labels, int N, int C,                  \
       float grad_scale, float *dlogits, float *stats),                                            \
      (b, logits, labels, N, C, grad_scale, dlogits, stats), check_positive("classes", C),         \
      N <= 0)                                                                                      \
    /* dst[i, :] = src[idx[i], :] for i < n, rows of row_bytes bytes; idx is device memory. */    \
    X(gather_rows,                                                                                 \
      (ddp_backend * b, void *dst, const void *src, const int32_t *idx, size_t n,                  \
       size_t row_bytes),                                                                          \
      (b, dst, src, idx, n, row_bytes), DDP_OK, n == 0 || row_bytes == 0)                          \
    /* x *= alpha, n elements. */                                                                  \
    X(scale, (ddp_backend * b, float *x, size_t n, float alpha), (b, x, n, alpha), DDP_OK,         \
      n == 0)                                                                                      \
    /* y = a + c, n elements; y may equal a or c (a residual connection, or y += c). */           \
    X(add, (ddp_backend * b, float *y, const float *a, const float *c, size_t n),                  \
      (b, y, a, c, n), DDP_OK, n == 0)                                                             \
    /* Round fp32 to bf16 (nearest even; NaN stays NaN) and back, n elements: for                  \
     * reduced-precision gradient communication. */                                                \
    X(f32_to_bf16, (ddp_backend * b, const float *x, uint16_t *y, size_t n), (b, x, y, n),         \
      DDP_OK, n == 0)                                                                              \
    X(bf16_to_f32, (ddp_backend * b, const uint16_t *x, float *y, size_t n), (b, x, y, n),         \
      DDP_OK, n == 0)                                                                              \
    /* *out = sum of squares of x (n), a host double; synchronizes. NaN and inf propagate. */     \
    X(sumsq, (ddp_backend * b, const float *x, size_t n, double *out), (b, x, n, out),            \
      zero_double(out), n == 0)                                                                    \
    /* SGD with momentum over n elements (PyTorch semantics), the gradient first multiplied       \
     * by gscale (the clipping coefficient; 1 when not clipping, and then exact):                 \
     *   g = gscale * grad + wd * p;  buf = momentum * buf + g (buf = g on the first step);        \
     *   p -= lr * (nesterov ? g + momentum * buf : buf). */                                       \
    X(sgd_step,                                                                                    \
      (ddp_backend * b, float *p, const float *grad, float *buf, size_t n, float lr,               \
       float momentum, float wd, int nesterov, int first_step, float gscale),                      \
      (b, p, grad, buf, n, lr, momentum, wd, nesterov, first_step, gscale), DDP_OK, n == 0)        \
    /* AdamW (decoupled weight decay) over n elements; t is the 1-based step; g = gscale *         \
     * grad:  p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;                      \
     *        p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps). */                            \
    X(adamw_step,                                                                                  \
      (ddp_backend * b, float *p, const float *grad, float *m, float *v, size_t n, float lr,       \
       float beta1, float beta2, float eps, float wd, int64_t t, float gscale),                    \
      (b, p, grad, m, v, n, lr, beta1, beta2, eps, wd, t, gscale), check_adam_step(t), n == 0)     \
    /* Token and position embedding: out (B, T, C) [b, t, :] = wte[tokens[b, t], :] +             \
     * wpe[t, :]; tokens (B, T) in [0, V); wte (V, C); wpe (>= T, C). */                          \
    X(encoder_forward,                                                                             \
      (ddp_backend * b, float *out, const int32_t *tokens, const float *wte, const float *wpe,     \
       int B, int T, int C),                                                                       \
      (b, out, tokens, wte, wpe, B, T, C), check_dims3(B, T, C), B == 0)                           \
    /* Its backward: dwte[tokens[b, t], :] += dout[b, t, :] and dwpe[t, :] += dout[b, t, :]        \
     * for every (b, t), summed in (b, t) order. Either gradient may be NULL (not wanted). */     \
    X(encoder_backward,                                                                            \
      (ddp_backend * b, float *dwte, float *dwpe, const float *dout, const int32_t *tokens,        \
       int B, int T, int C),                                                                       \
      (b, dwte, dwpe, dout, tokens, B, T, C), check_dims3(B, T, C), B == 0)                        \
    /* Layer normalization over the last dimension: for each row of inp (N, C),                    \
     * mean = avg(x), rstd = 1 / sqrt(var(x) + 1e-5) (biased variance), out = (x - mean) *         \
     * rstd * weight + bias. mean and rstd (N) are written for the backward. */                   \
    X(layernorm_forward,                                                                           \
      (ddp_backend * b, float *out, float *mean, float *rstd, const float *inp,                    \
       const float *weight, const float *bias, int N, int C),                                      \
      (b, out, mean, rstd, inp, weight, bias, N, C), check_dims2(N, C), N == 0)                    \
    /* Its backward: dinp (N, C) +=, dweight (C) +=, dbias (C) += the gradients of the loss        \
     * given dout (N, C), from the forward's inp, weight, mean and rstd. dinp adds so that a       \
     * residual stream's gradient accumulates in place. */                                         \
    X(layernorm_backward,                                                                          \
      (ddp_backend * b, float *dinp, float *dweight, float *dbias, const float *dout,              \
       const float *inp, const float *weight, const float *mean, const float *rstd, int N,         \
       int C),                                                                                     \
      (b, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C), check_dims2(N, C), N == 0)   \
    /* Causal multi-head self-attention: qkv (B, T, 3C) holds per position the query, key         \
     * and value vectors [q | k | v], each C = NH heads x hs channels (head h at channels          \
     * [h hs, (h+1) hs)). att (B, NH, T, T) = softmax over t2 <= t of q_t . k_t2 / sqrt(hs),       \
     * 0 for t2 > t; out (B, T, C) [b, t, h hs + i] = sum_t2 att[b, h, t, t2] v_t2[h hs + i].      \
     * Writes out and att (kept for the backward); work holds DDP_ATTENTION_WORK(B, T, C,          \
     * NH) floats of scratch. */                                                                   \
    X(attention_forward,                                                                           \
      (ddp_backend * b, float *out, float *att, const float *qkv, float *work, int B, int T,       \
       int C, int NH),                                                                             \
      (b, out, att, qkv, work, B, T, C, NH), check_heads(B, T, C, NH), B == 0)                     \
    /* Its backward: dqkv (B, T, 3C) = the gradient of the loss given dout (B, T, C), from        \
     * the forward's qkv and att (written, not added). work as for the forward. */                \
    X(attention_backward,                                                                          \
      (ddp_backend * b, float *dqkv, const float *dout, const float *qkv, const float *att,        \
       float *work, int B, int T, int C, int NH),                                                  \
      (b, dqkv, dout, qkv, att, work, B, T, C, NH), check_heads(B, T, C, NH), B == 0)
/* clang-format on */

#endif
