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

/* Floats of workspace of conv2d_forward and conv2d_backward: the image patches of the
 * whole batch as rows, (N Ho Wo, Cin KH KW). */
#define DDP_CONV_WORK(s)                                                                           \
    ((size_t)(s)->N * (size_t)ddp_conv_out((s)->H, (s)->KH, (s)->stride, (s)->pad) *               \
     (size_t)ddp_conv_out((s)->W, (s)->KW, (s)->stride, (s)->pad) * (size_t)(s)->Cin *             \
     (size_t)(s)->KH * (size_t)(s)->KW)

/* Floats of workspace that attention_forward and attention_backward need for a batch
 * of B sequences of T positions, C channels and NH heads. */
#define DDP_ATTENTION_WORK(B, T, C, NH)                                                            \
    (4 * (size_t)(B) * (size_t)(T) * (size_t)(C) +                                                 \
     (size_t)(B) * (size_t)(NH) * (size_t)(T) * (size_t)(T))

/* clang-format off */
#define DDP_BACKEND_OPS(X)                                                                         \
    /* C (M, N) = alpha * op(A) op(B) + beta * C; op(A) is (M, K), op(B) (K, N); lda, ldb,         \
     * ldc are the row strides of A, B, C as stored. With beta 0, C is never read, so it may   \
     * hold NaN (K = 0 computes C = beta * C, zeros when beta is 0). */                          \
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
    /* y (batch, cols, rows) = each x (batch, rows, cols) transposed, written; y != x. (The      \
     * flatten of channels-last images into PyTorch's channel-major order, and back.) Empty     \
     * matrices (rows or cols 0) are nothing to do. */                                             \
    X(transpose, (ddp_backend * b, float *y, const float *x, int batch, int rows, int cols),       \
      (b, y, x, batch, rows, cols), check_counts3(batch, rows, cols),                              \
      batch == 0 || rows == 0 || cols == 0)                                                        \
    /* y = a + c, n elements; y may equal a or c (a residual connection, or y += c). */           \
    X(add, (ddp_backend * b, float *y, const float *a, const float *c, size_t n),                  \
      (b, y, a, c, n), DDP_OK, n == 0)                                                             \
    /* Round fp32 to bf16 (nearest even; NaN stays NaN) and back, n elements: for                  \
     * reduced-precision gradient communication. */                                                \
    X(f32_to_bf16, (ddp_backend * b, const float *x, uint16_t *y, size_t n), (b, x, y, n),         \
      DDP_OK, n == 0)                                                                              \
    X(bf16_to_f32, (ddp_backend * b, const uint16_t *x, float *y, size_t n), (b, x, y, n),         \
      DDP_OK, n == 0)                                                                              \
    /* *out = sum of squares of x (n), a host double; synchronizes. NaN and inf propagate.      \
     * The CPU's is the same bits on every CPU (the clip coefficient every rank computes).   \
     */                                                                                         \
    X(sumsq, (ddp_backend * b, const float *x, size_t n, double *out), (b, x, n, out),            \
      zero_double(out), n == 0)                                                                    \
    /* *acc (one device double) += the sum of squares of x (n), the same bits as sumsq's,         \
     * queued like any op: no host wait (sums over ranges of a buffer as they become final,       \
     * read once at the end). */                                                                  \
    X(sumsq_add, (ddp_backend * b, const float *x, size_t n, double *acc), (b, x, n, acc),        \
      DDP_OK, n == 0)                                                                              \
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
    /* RMS normalization over the last dimension: for each row of inp (N, C), rstd = 1 /           \
     * sqrt(mean(x^2) + 1e-5), out = x rstd weight: no mean removed, no bias (Zhang and            \
     * Sennrich 2019; PyTorch's RMSNorm with eps 1e-5). rstd (N) is written for the backward. */   \
    X(rmsnorm_forward,                                                                             \
      (ddp_backend * b, float *out, float *rstd, const float *inp, const float *weight, int N,     \
       int C),                                                                                     \
      (b, out, rstd, inp, weight, N, C), check_dims2(N, C), N == 0)                                \
    /* Its backward: dinp (N, C) += and dweight (C) += the gradients of the loss given dout        \
     * (N, C), from the forward's inp, weight and rstd. dinp adds, as layernorm_backward's. */     \
    X(rmsnorm_backward,                                                                            \
      (ddp_backend * b, float *dinp, float *dweight, const float *dout, const float *inp,          \
       const float *weight, const float *rstd, int N, int C),                                      \
      (b, dinp, dweight, dout, inp, weight, rstd, N, C), check_dims2(N, C), N == 0)                \
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
      (b, dqkv, dout, qkv, att, work, B, T, C, NH), check_heads(B, T, C, NH), B == 0)            \
    /* 2-D convolution of images in channels-last layout: x (N, H, W, Cin) with weight             \
     * (Cout, Cin, KH, KW) (PyTorch's layout) and bias (Cout) at stride s and zero padding p       \
     * gives y (N, Ho, Wo, Cout), Ho = (H + 2p - KH) / s + 1 (likewise Wo), written. work          \
     * holds DDP_CONV_WORK(shape) floats of scratch. Shapes whose kernel does not fit the          \
     * padded input are refused. */                                                                \
    X(conv2d_forward,                                                                              \
      (ddp_backend * b, float *y, const float *x, const float *w, const float *bias,               \
       float *work, const ddp_conv_shape *s),                                                      \
      (b, y, x, w, bias, work, s), check_conv(s), s->N == 0)                                       \
    /* Its backward from dy (N, Ho, Wo, Cout): dw (Cout, Cin, KH, KW) +=, dbias (Cout) +=, and     \
     * dx (N, H, W, Cin) written when not NULL. */                                                 \
    X(conv2d_backward,                                                                             \
      (ddp_backend * b, float *dx, float *dw, float *dbias, const float *dy, const float *x,       \
       const float *w, float *work, const ddp_conv_shape *s),                                      \
      (b, dx, dw, dbias, dy, x, w, work, s), check_conv(s), s->N == 0)                             \
    /* Max pooling of x (N, H, W, C) over K x K windows at the given stride, no padding:           \
     * y (N, Ho, Wo, C), Ho = (H - K) / stride + 1; arg (N, Ho, Wo, C) receives the index in x     \
     * of each maximum (the first, on ties; a NaN counts as the largest), for the backward; x      \
     * must have fewer than 2^31 elements. */                                                      \
    X(maxpool_forward,                                                                             \
      (ddp_backend * b, float *y, int32_t *arg, const float *x, const ddp_pool_shape *s),          \
      (b, y, arg, x, s), check_pool(s), s->N == 0)                                                 \
    /* Its backward: dx (N, H, W, C) written: each element the sum of the dy of the windows        \
     * whose maximum it was (0 for the others). */                                                 \
    X(maxpool_backward,                                                                            \
      (ddp_backend * b, float *dx, const float *dy, const int32_t *arg, const ddp_pool_shape *s),  \
      (b, dx, dy, arg, s), check_pool(s), s->N == 0)                                               \
    /* Batch normalization, per channel over the rows of x (rows, C) (rows = N H W). First the     \
     * sums: sums (2, C) doubles = (sum of x, sum of x^2) over the rows, written; a synchronized   \
     * batch norm adds them up over ranks before the statistics. */                                \
    X(bn_sums, (ddp_backend * b, double *sums, const float *x, int rows, int C),                   \
      (b, sums, x, rows, C), check_dims2(rows, C), 0)                                              \
    /* The statistics of the batch from sums over `count` rows: mean (C) and rstd (C) = 1 /        \
     * sqrt(biased variance + eps), and running (2, C) = (mean, variance) moved towards the        \
     * batch's: running = (1 - momentum) running + momentum (mean, unbiased variance), as          \
     * PyTorch does. With count 0 (evaluation) mean and rstd come from running instead, which      \
     * stays as it is, and sums is not read (it may be NULL); any other count must be at least     \
     * 2. */                                                                                       \
    X(bn_stats,                                                                                    \
      (ddp_backend * b, float *mean, float *rstd, float *running, const double *sums,              \
       double count, float eps, float momentum, int C),                                            \
      (b, mean, rstd, running, sums, count, eps, momentum, C), check_bn_stats(count, C), 0)        \
    /* y (rows, C) = (x - mean) rstd gamma + beta, written; y may equal x. */                      \
    X(bn_normalize,                                                                                \
      (ddp_backend * b, float *y, const float *x, const float *mean, const float *rstd,            \
       const float *gamma, const float *beta, int rows, int C),                                    \
      (b, y, x, mean, rstd, gamma, beta, rows, C), check_dims2(rows, C), rows == 0)                \
    /* The backward's sums: sums (2, C) doubles = (sum of dy, sum of dy xhat) over the rows,       \
     * xhat = (x - mean) rstd, written; and this batch's parameter gradients from them, dgamma     \
     * (C) += sum of dy xhat and dbeta (C) += sum of dy (local: the gradient all-reduce sums       \
     * them over ranks). */                                                                        \
    X(bn_backward_sums,                                                                            \
      (ddp_backend * b, double *sums, float *dgamma, float *dbeta, const float *dy,                \
       const float *x, const float *mean, const float *rstd, int rows, int C),                     \
      (b, sums, dgamma, dbeta, dy, x, mean, rstd, rows, C), check_dims2(rows, C), 0)               \
    /* dx (rows, C) = gamma rstd (dy - sums[0] / count - xhat sums[1] / count), written, with      \
     * the sums of bn_backward_sums over `count` rows (added up over ranks when synchronized).     \
     * dx may equal dy. */                                                                         \
    X(bn_backward_input,                                                                           \
      (ddp_backend * b, float *dx, const float *dy, const float *x, const float *mean,             \
       const float *rstd, const float *gamma, const double *sums, double count, int rows, int C),  \
      (b, dx, dy, x, mean, rstd, gamma, sums, count, rows, C), check_bn_input(rows, C, count),     \
      rows == 0)
/* clang-format on */

#endif
