/*
 * The CUDA backend's transformer ops: token and position embedding, layer and RMS
 * normalization and causal multi-head self-attention (ddp/backend_ops.h says what each computes).
 *
 * Every result is the same bits on every call: sums run in a fixed order (one thread
 * owns each output element and adds in a fixed sequence, or a warp adds in its fixed
 * butterfly), never through atomics. The embedding gradients go further and add in
 * the (b, t) order that backend_ops.h specifies, so a CPU loop in that order gives the
 * same bits.
 *
 * Row-wise work (layer norm, softmax) gives each row to one warp: rows are short (C up
 * to a few thousand, T up to a few thousand) and many, and a warp needs no barriers.
 */
#include <math.h>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_block.cuh"
#include "backend/cuda/cuda_internal.h"

/* Threads per block of the one-warp-per-row kernels: 8 rows in flight per block. */
#define ROW_THREADS 256
#define ROW_WARPS   (ROW_THREADS / 32)

/* Blocks for a grid-stride loop that gives one warp to each of `rows` rows. */
static unsigned int row_blocks(size_t rows) { return ddp_cuda_blocks(rows * 32, ROW_THREADS); }

/* ---- encoder ---------------------------------------------------------------------------- */

/* out (B, T, C) = wte[tokens[b, t], :] + wpe[t, :]. */
__global__ static void encoder_forward_kernel(float *out, const int32_t *tokens, const float *wte,
                                              const float *wpe, size_t total, int T, int C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t bt = i / (size_t)C;
        size_t c = i - bt * (size_t)C;
        size_t t = bt % (size_t)T;
        out[i] = wte[(size_t)tokens[bt] * C + c] + wpe[t * C + c];
    }
}

/* dwpe (T, C) += sum over b of dout[b] (B, T, C). Each thread owns one (t, c) and adds
 * the batch in order b = 0, 1, ..., as the CPU's (b, t) loop does. */
__global__ static void encoder_dwpe_kernel(float *dwpe, const float *dout, int B, size_t TC) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < TC;
         i += (size_t)gridDim.x * blockDim.x) {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++)
            acc += dout[(size_t)b * TC + i];
        dwpe[i] = acc;
    }
}

#define ENC_THREADS 256

/* dwte[tokens[p], :] += dout[p, :] for the n = B T positions p, in order of p.
 *
 * A token can occur at many positions, so several positions add to one row of dwte. To
 * do that without atomics, the first position at which a token occurs owns its row: the
 * block that takes position p first checks, chunk by chunk backwards, whether any
 * earlier position holds the same token, and stops there if one does. The owner then
 * walks the positions from p to the end in chunks of ENC_THREADS: each thread tests one
 * position, the block lists the matches in order (warp ballots and a prefix over the
 * warps), and every thread adds, for its channels, the listed rows of dout in that order.
 * One thread owns each channel of the row throughout, so each dwte element receives its
 * additions one by one in order of p, the (b, t) order of backend_ops.h.
 *
 * Cost: a token's first position scans all n positions once (n / ENC_THREADS steps), a
 * repeated one usually stops after one step, as repeats are near; plus one read of dout.
 * Every loop condition below is the same for the whole block, as the barriers need. */
__global__ static void encoder_dwte_kernel(float *dwte, const float *dout, const int32_t *tokens,
                                           long long n, int C) {
    __shared__ long long list[ENC_THREADS]; /* positions matching in the current chunk */
    __shared__ int warp_hits[ENC_THREADS / 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (long long p = blockIdx.x; p < n; p += gridDim.x) {
        const int32_t tok = tokens[p];

        /* Is there an earlier position with this token? */
        int earlier = 0;
        for (long long end = p; end > 0 && !earlier; end -= ENC_THREADS) {
            long long j = end - 1 - tid;
            earlier = __syncthreads_or(j >= 0 && tokens[j] == tok);
        }
        if (earlier) continue;

        float *row = dwte + (size_t)tok * C;
        for (long long j0 = p; j0 < n; j0 += ENC_THREADS) {
            long long j = j0 + tid;
            int hit = j < n && tokens[j] == tok;
            unsigned int mask = __ballot_sync(0xffffffffu, hit);
            if (lane == 0) warp_hits[warp] = __popc(mask);
            __syncthreads();
            int before = 0, total = 0;
            for (int w = 0; w < ENC_THREADS / 32; w++) {
                if (w < warp) before += warp_hits[w];
                total += warp_hits[w];
            }
            if (hit) list[before + __popc(mask & ((1u << lane) - 1u))] = j;
            __syncthreads();
            if (total > 0)
                for (int c = tid; c < C; c += ENC_THREADS) {
                    float acc = row[c];
                    for (int k = 0; k < total; k++)
                        acc += dout[(size_t)list[k] * C + c];
                    row[c] = acc;
                }
            /* The next chunk rewrites list and warp_hits. */
            __syncthreads();
        }
    }
}

extern "C" ddp_status ddp_cuda_encoder_forward(ddp_backend *b, float *out, const int32_t *tokens,
                                               const float *wte, const float *wpe, int B, int T,
                                               int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    size_t total = (size_t)B * (size_t)T * (size_t)C;
    if (total == 0) return DDP_OK;
    /* Tokens are not checked on the device: the caller keeps them in [0, V). */
    encoder_forward_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                             cb->stream>>>(out, tokens, wte, wpe, total, T, C);
    DDP_CUDA_CHECK_LAUNCH("encoder_forward_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_encoder_backward(ddp_backend *b, float *dwte, float *dwpe,
                                                const float *dout, const int32_t *tokens, int B,
                                                int T, int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (B <= 0 || T <= 0 || C <= 0) return DDP_OK;
    if (dwte) {
        long long n = (long long)B * T;
        encoder_dwte_kernel<<<ddp_cuda_blocks((size_t)n * ENC_THREADS, ENC_THREADS), ENC_THREADS, 0,
                              cb->stream>>>(dwte, dout, tokens, n, C);
        DDP_CUDA_CHECK_LAUNCH("encoder_dwte_kernel");
    }
    if (dwpe) {
        size_t TC = (size_t)T * (size_t)C;
        encoder_dwpe_kernel<<<ddp_cuda_blocks(TC, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                              cb->stream>>>(dwpe, dout, B, TC);
        DDP_CUDA_CHECK_LAUNCH("encoder_dwpe_kernel");
    }
    return DDP_OK;
}

/* ---- layer normalization -------------------------------------------------------------- */

/* One warp per row of inp (N, C). The variance is the mean of squared deviations from
 * the mean (a second pass over the row, which is in cache), not E[x^2] - mean^2, which
 * loses the variance to cancellation when the mean is large. */
__global__ static void layernorm_forward_kernel(float *out, float *mean, float *rstd,
                                                const float *inp, const float *weight,
                                                const float *bias, size_t N, int C) {
    const int lane = threadIdx.x & 31;
    for (size_t r = blockIdx.x * (size_t)ROW_WARPS + (threadIdx.x >> 5); r < N;
         r += (size_t)gridDim.x * ROW_WARPS) {
        const float *x = inp + r * C;
        float s = 0.0f;
        for (int c = lane; c < C; c += 32)
            s += x[c];
        const float m = warp_sum(s) / (float)C;
        float v = 0.0f;
        for (int c = lane; c < C; c += 32) {
            float d = x[c] - m;
            v += d * d;
        }
        const float rs = 1.0f / sqrtf(warp_sum(v) / (float)C + 1e-5f);
        float *o = out + r * C;
        for (int c = lane; c < C; c += 32)
            o[c] = (x[c] - m) * rs * weight[c] + bias[c];
        if (lane == 0) {
            mean[r] = m;
            rstd[r] = rs;
        }
    }
}

/* dinp (N, C) += the input gradient, one warp per row. With n = (x - mean) rstd and
 * g = dout * weight (the gradient reaching n):
 *   dx = rstd (g - avg(g) - n avg(g n)). */
__global__ static void layernorm_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                             const float *weight, const float *mean,
                                             const float *rstd, size_t N, int C) {
    const int lane = threadIdx.x & 31;
    for (size_t r = blockIdx.x * (size_t)ROW_WARPS + (threadIdx.x >> 5); r < N;
         r += (size_t)gridDim.x * ROW_WARPS) {
        const float *dy = dout + r * C, *x = inp + r * C;
        const float m = mean[r], rs = rstd[r];
        float g_sum = 0.0f, gn_sum = 0.0f;
        /* g rounded on its own (no multiply-add contraction) in both loops, so that g -
         * avg(g) is exactly 0 where the row's g are equal: rstd may be 1/sqrt(eps), ~316,
         * and would blow a contracted product's rounding residue up to a visible error. */
        for (int c = lane; c < C; c += 32) {
            float g = __fmul_rn(dy[c], weight[c]);
            g_sum += g;
            gn_sum += g * ((x[c] - m) * rs);
        }
        const float g_avg = warp_sum(g_sum) / (float)C;
        const float gn_avg = warp_sum(gn_sum) / (float)C;
        float *dx = dinp + r * C;
        for (int c = lane; c < C; c += 32) {
            float g = __fmul_rn(dy[c], weight[c]);
            float n = (x[c] - m) * rs;
            dx[c] += rs * (g - g_avg - n * gn_avg);
        }
    }
}

#define LN_COLS 32 /* columns per block: a warp reads 32 neighbours of a row, coalesced */
#define LN_ROWS 32 /* rows read at once per block */

/* part_w[chunk C + c], part_b[chunk C + c] = the sums of dout n and of dout over the rows
 * of chunk blockIdx.y, column c (ddp_cuda_col_chunks): thread (x, y) sums rows y,
 * y + LN_ROWS, ... of its chunk, then one thread per column adds the LN_ROWS partial sums
 * in order of y. The partition depends only on N and C, so the sums are the same on every
 * call. */
__global__ static void layernorm_param_grad_kernel(float *part_w, float *part_b, const float *dout,
                                                   const float *inp, const float *mean,
                                                   const float *rstd, int N, int C,
                                                   int rows_per_chunk) {
    __shared__ float sh_w[LN_ROWS][LN_COLS + 1];
    __shared__ float sh_b[LN_ROWS][LN_COLS + 1];
    const int c = blockIdx.x * LN_COLS + threadIdx.x;
    const int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
    float dw = 0.0f, db = 0.0f;
    if (c < C)
        for (int r = r0 + threadIdx.y; r < r1; r += LN_ROWS) {
            size_t i = (size_t)r * C + c;
            float g = dout[i];
            dw += g * ((inp[i] - mean[r]) * rstd[r]);
            db += g;
        }
    sh_w[threadIdx.y][threadIdx.x] = dw;
    sh_b[threadIdx.y][threadIdx.x] = db;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float sw = 0.0f, sb = 0.0f;
        for (int k = 0; k < LN_ROWS; k++) {
            sw += sh_w[k][threadIdx.x];
            sb += sh_b[k][threadIdx.x];
        }
        part_w[(size_t)blockIdx.y * C + c] = sw;
        part_b[(size_t)blockIdx.y * C + c] = sb;
    }
}

extern "C" ddp_status ddp_cuda_layernorm_forward(ddp_backend *b, float *out, float *mean,
                                                 float *rstd, const float *inp, const float *weight,
                                                 const float *bias, int N, int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (N <= 0 || C <= 0) return DDP_OK;
    layernorm_forward_kernel<<<row_blocks((size_t)N), ROW_THREADS, 0, cb->stream>>>(
        out, mean, rstd, inp, weight, bias, (size_t)N, C);
    DDP_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_layernorm_backward(ddp_backend *b, float *dinp, float *dweight,
                                                  float *dbias, const float *dout, const float *inp,
                                                  const float *weight, const float *mean,
                                                  const float *rstd, int N, int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (N <= 0 || C <= 0) return DDP_OK;
    layernorm_dinp_kernel<<<row_blocks((size_t)N), ROW_THREADS, 0, cb->stream>>>(
        dinp, dout, inp, weight, mean, rstd, (size_t)N, C);
    DDP_CUDA_CHECK_LAUNCH("layernorm_dinp_kernel");
    int chunks = ddp_cuda_col_chunks(N, C), rows = (N + chunks - 1) / chunks;
    void *ws = NULL;
    DDP_CHECK(
        ddp_cuda_workspace(cb, DDP_CUDA_WS_SUMS, 2 * (size_t)chunks * C * sizeof(float), &ws));
    float *part_w = (float *)ws, *part_b = part_w + (size_t)chunks * C;
    dim3 block(LN_COLS, LN_ROWS);
    dim3 grid((unsigned int)((C + LN_COLS - 1) / LN_COLS), (unsigned int)chunks);
    layernorm_param_grad_kernel<<<grid, block, 0, cb->stream>>>(part_w, part_b, dout, inp, mean,
                                                                rstd, N, C, rows);
    DDP_CUDA_CHECK_LAUNCH("layernorm_param_grad_kernel");
    DDP_CHECK(ddp_cuda_col_chunks_add(cb, dweight, part_w, chunks, C));
    DDP_CHECK(ddp_cuda_col_chunks_add(cb, dbias, part_b, chunks, C));
    return DDP_OK;
}

/* ---- RMS normalization ------------------------------------------------------------------ */

/* One warp per row of inp (N, C): rstd = 1 / sqrt(mean(x^2) + eps), out = x rstd weight. */
__global__ static void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp,
                                              const float *weight, size_t N, int C) {
    const int lane = threadIdx.x & 31;
    for (size_t r = blockIdx.x * (size_t)ROW_WARPS + (threadIdx.x >> 5); r < N;
         r += (size_t)gridDim.x * ROW_WARPS) {
        const float *x = inp + r * C;
        float ss = 0.0f;
        for (int c = lane; c < C; c += 32)
            ss += x[c] * x[c];
        const float rs = 1.0f / sqrtf(warp_sum(ss) / (float)C + 1e-5f);
        float *o = out + r * C;
        for (int c = lane; c < C; c += 32)
            o[c] = x[c] * rs * weight[c];
        if (lane == 0) rstd[r] = rs;
    }
}

/* dinp (N, C) += the input gradient, one warp per row. With n = x rstd and g = dout weight:
 *   dx = rstd (g - n avg(g n)), layer norm's without the mean. */
__global__ static void rmsnorm_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                           const float *weight, const float *rstd, size_t N,
                                           int C) {
    const int lane = threadIdx.x & 31;
    for (size_t r = blockIdx.x * (size_t)ROW_WARPS + (threadIdx.x >> 5); r < N;
         r += (size_t)gridDim.x * ROW_WARPS) {
        const float *dy = dout + r * C, *x = inp + r * C;
        const float rs = rstd[r];
        float gn_sum = 0.0f;
        for (int c = lane; c < C; c += 32)
            gn_sum += dy[c] * weight[c] * (x[c] * rs);
        const float gn_avg = warp_sum(gn_sum) / (float)C;
        float *dx = dinp + r * C;
        for (int c = lane; c < C; c += 32)
            dx[c] += rs * (dy[c] * weight[c] - x[c] * rs * gn_avg);
    }
}

/* dweight (C) += sum over rows of dout n: blocks of LN_COLS columns, as layer norm's
 * parameter gradients, in the same fixed order. */
__global__ static void rmsnorm_weight_grad_kernel(float *dweight, const float *dout,
                                                  const float *inp, const float *rstd, int N,
                                                  int C) {
    __shared__ float part[LN_ROWS][LN_COLS + 1];
    const int c = blockIdx.x * LN_COLS + threadIdx.x;
    float dw = 0.0f;
    if (c < C)
        for (int r = threadIdx.y; r < N; r += LN_ROWS) {
            size_t i = (size_t)r * C + c;
            dw += dout[i] * (inp[i] * rstd[r]);
        }
    part[threadIdx.y][threadIdx.x] = dw;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float s = 0.0f;
        for (int k = 0; k < LN_ROWS; k++)
            s += part[k][threadIdx.x];
        dweight[c] += s;
    }
}

extern "C" ddp_status ddp_cuda_rmsnorm_forward(ddp_backend *b, float *out, float *rstd,
                                               const float *inp, const float *weight, int N,
                                               int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (N <= 0 || C <= 0) return DDP_OK;
    rmsnorm_forward_kernel<<<row_blocks((size_t)N), ROW_THREADS, 0, cb->stream>>>(
        out, rstd, inp, weight, (size_t)N, C);
    DDP_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_rmsnorm_backward(ddp_backend *b, float *dinp, float *dweight,
                                                const float *dout, const float *inp,
                                                const float *weight, const float *rstd, int N,
                                                int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (N <= 0 || C <= 0) return DDP_OK;
    rmsnorm_dinp_kernel<<<row_blocks((size_t)N), ROW_THREADS, 0, cb->stream>>>(
        dinp, dout, inp, weight, rstd, (size_t)N, C);
    DDP_CUDA_CHECK_LAUNCH("rmsnorm_dinp_kernel");
    dim3 block(LN_COLS, LN_ROWS);
    dim3 grid((unsigned int)((C + LN_COLS - 1) / LN_COLS));
    rmsnorm_weight_grad_kernel<<<grid, block, 0, cb->stream>>>(dweight, dout, inp, rstd, N, C);
    DDP_CUDA_CHECK_LAUNCH("rmsnorm_weight_grad_kernel");
    return DDP_OK;
}

/* ---- attention -------------------------------------------------------------------------- */

/*
 * Attention runs per (batch, head) pair as batches of B NH matrix products (cuBLAS
 * strided batches, through ddp_cuda_gemm_batched, which also applies the backend's math
 * mode), so the heads are first split out of qkv into compact (B, NH, T, hs) arrays.
 * All products below are row-major, per (b, h), with Q, K, V, Y, dY, dQ, dK, dV (T, hs)
 * and S, P, dP, dS (T, T):
 *
 *   forward   S = Q K^T                  gemm_batched(ta 0, tb 1, M T, N T,  K hs)
 *             P = causal softmax(scale S)  (kernel; P is att)
 *             Y = P V                    gemm_batched(ta 0, tb 0, M T, N hs, K T)
 *   backward  dP = dY V^T                gemm_batched(ta 0, tb 1, M T, N T,  K hs)
 *             dV = P^T dY                gemm_batched(ta 1, tb 0, M T, N hs, K T)
 *             dS = scale P (dP - rowsum(P dP))  (kernel; 0 above the diagonal)
 *             dQ = dS K                  gemm_batched(ta 0, tb 0, M T, N hs, K T)
 *             dK = dS^T Q                gemm_batched(ta 1, tb 0, M T, N hs, K T)
 *
 * In cuBLAS's column-major terms (cuda_gemm.cu's swap: it computes C^T = op(B)^T op(A)^T
 * on the stored arrays, each of which it reads as its transpose), S = Q K^T becomes
 * cublas(op T, op N, m T, n T, k hs, K ld hs, Q ld hs, S ld T): element (m, n) of the
 * column-major result, at S + m + n T, is sum_i K[m][i] Q[n][i] = q_n . k_m = S[n][m].
 * Likewise Y = P V is cublas(op N, op N, m hs, n T, k T, V ld hs, P ld T, Y ld hs), and
 * dV = P^T dY is cublas(op N, op T, m hs, n T, k T, dY ld hs, P ld T, dV ld hs): element
 * (m, n) = sum_k dY[k][m] P[k][n] = (P^T dY)[n][m]. The upper triangles of P and dS are
 * zeros, so the full products are the causal ones.
 *
 * Softmax backward: with z = scale S and P = softmax(z) over t2 <= t, dz_t2 = P_t2
 * (dP_t2 - sum_j P_j dP_j), and dS = scale dz.
 *
 * The workspace (DDP_ATTENTION_WORK = 4 B T C + B NH T T floats) in float offsets, with
 * BTC = B T C; every region is dead before it is reused, and the stream orders it all:
 *
 *   region          forward     backward
 *   [0, BTC)        Q           Q
 *   [BTC, 2BTC)     K           K, then dK (written after dQ, K's last use)
 *   [2BTC, 3BTC)    V           V, then dV (written after dP, V's last use)
 *   [3BTC, 4BTC)    Y           dY, then dQ (written after dP and dV, dY's last uses)
 *   [4BTC, +BNHTT)  unused      dP, then dS in place
 *
 * The forward needs no T x T scratch: S is computed into att and normalized in place.
 */

/* dst (B, NH, T, hs) = the heads of src (B, T, ld) [b, t, h hs + i]; src points at the
 * q, k or v third of qkv (ld 3C), or at dout (ld C). */
__global__ static void split_heads_kernel(float *dst, const float *src, size_t ld, size_t total,
                                          int T, int NH, int hs) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t rest = idx / (size_t)hs;
        size_t i = idx - rest * (size_t)hs;
        size_t t = rest % (size_t)T;
        rest /= (size_t)T;
        size_t h = rest % (size_t)NH;
        size_t bb = rest / (size_t)NH;
        dst[idx] = src[(bb * T + t) * ld + h * hs + i];
    }
}

/* dst (B, T, ld) [b, t, h hs + i] = src (B, NH, T, hs): the inverse of split_heads, into
 * out (ld C) or into the q, k or v third of dqkv (ld 3C). */
__global__ static void merge_heads_kernel(float *dst, size_t ld, const float *src, size_t total,
                                          int T, int C, int NH) {
    const int hs = C / NH;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t bt = idx / (size_t)C;
        int c = (int)(idx - bt * (size_t)C);
        size_t t = bt % (size_t)T, bb = bt / (size_t)T;
        int h = c / hs, i = c - h * hs;
        dst[bt * ld + c] = src[((bb * NH + h) * T + t) * hs + i];
    }
}

/* att (rows, T), rows = B NH T, in place: each row t (row index mod T) holds S and
 * becomes softmax over t2 <= t of scale S[t2], max-subtracted so that exp cannot
 * overflow, and 0 for t2 > t. One warp per row; each lane keeps to the columns
 * lane, lane + 32, ... in all three passes, so storing exp in place is race-free. */
__global__ static void causal_softmax_kernel(float *att, size_t rows, int T, float scale) {
    const int lane = threadIdx.x & 31;
    for (size_t r = blockIdx.x * (size_t)ROW_WARPS + (threadIdx.x >> 5); r < rows;
         r += (size_t)gridDim.x * ROW_WARPS) {
        const int t = (int)(r % (size_t)T);
        float *row = att + r * T;
        /* __fmul_rn keeps the product from being fused into the subtraction below, so
         * both passes see the same scaled values and the maximum's term is exp(0) = 1. */
        float m = -INFINITY;
        for (int j = lane; j <= t; j += 32)
            m = fmaxf(m, __fmul_rn(scale, row[j]));
        m = warp_max(m);
        float s = 0.0f;
        for (int j = lane; j <= t; j += 32) {
            float e = expf(__fmul_rn(scale, row[j]) - m);
            row[j] = e;
            s += e;
        }
        s = warp_sum(s);
        for (int j = lane; j < T; j += 32)
            row[j] = j <= t ? row[j] / s : 0.0f;
    }
}

/* datt (rows, T) in place: dP becomes dS = scale P (dP - sum_{t2 <= t} P dP) for
 * t2 <= t and 0 above the diagonal. One warp per row. */
__global__ static void causal_softmax_backward_kernel(float *datt, const float *att, size_t rows,
                                                      int T, float scale) {
    const int lane = threadIdx.x & 31;
    for (size_t r = blockIdx.x * (size_t)ROW_WARPS + (threadIdx.x >> 5); r < rows;
         r += (size_t)gridDim.x * ROW_WARPS) {
        const int t = (int)(r % (size_t)T);
        const float *p = att + r * T;
        float *d = datt + r * T;
        float dot = 0.0f;
        for (int j = lane; j <= t; j += 32)
            dot += p[j] * d[j];
        dot = warp_sum(dot);
        for (int j = lane; j < T; j += 32)
            d[j] = j <= t ? scale * p[j] * (d[j] - dot) : 0.0f;
    }
}

static ddp_status split_heads(ddp_cuda_backend *cb, float *dst, const float *src, size_t ld, int B,
                              int T, int C, int NH) {
    size_t total = (size_t)B * (size_t)T * (size_t)C;
    split_heads_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                         cb->stream>>>(dst, src, ld, total, T, NH, C / NH);
    DDP_CUDA_CHECK_LAUNCH("split_heads_kernel");
    return DDP_OK;
}

static ddp_status merge_heads(ddp_cuda_backend *cb, float *dst, size_t ld, const float *src, int B,
                              int T, int C, int NH) {
    size_t total = (size_t)B * (size_t)T * (size_t)C;
    merge_heads_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                         cb->stream>>>(dst, ld, src, total, T, C, NH);
    DDP_CUDA_CHECK_LAUNCH("merge_heads_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_attention_forward(ddp_backend *b, float *out, float *att,
                                                 const float *qkv, float *work, int B, int T, int C,
                                                 int NH) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (B <= 0 || T <= 0 || C <= 0 || NH <= 0) return DDP_OK;
    const int hs = C / NH, BNH = B * NH;
    const size_t btc = (size_t)B * (size_t)T * (size_t)C, rows = (size_t)BNH * (size_t)T;
    const size_t C3 = 3 * (size_t)C;
    const float scale = 1.0f / sqrtf((float)hs);
    /* The regions of the table above, each (B, NH, T, hs). */
    float *q = work, *k = work + btc, *v = work + 2 * btc, *y = work + 3 * btc;

    DDP_CHECK(split_heads(cb, q, qkv, C3, B, T, C, NH));
    DDP_CHECK(split_heads(cb, k, qkv + C, C3, B, T, C, NH));
    DDP_CHECK(split_heads(cb, v, qkv + 2 * (size_t)C, C3, B, T, C, NH));
    /* S = Q K^T into att, then P = softmax(scale S) in place. */
    DDP_CHECK(ddp_cuda_gemm_batched(cb, 0, 1, T, T, hs, 1.0f, q, k, 0.0f, att, BNH));
    causal_softmax_kernel<<<row_blocks(rows), ROW_THREADS, 0, cb->stream>>>(att, rows, T, scale);
    DDP_CUDA_CHECK_LAUNCH("causal_softmax_kernel");
    /* Y = P V, then the heads back into (B, T, C). */
    DDP_CHECK(ddp_cuda_gemm_batched(cb, 0, 0, T, hs, T, 1.0f, att, v, 0.0f, y, BNH));
    DDP_CHECK(merge_heads(cb, out, (size_t)C, y, B, T, C, NH));
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_attention_backward(ddp_backend *b, float *dqkv, const float *dout,
                                                  const float *qkv, const float *att, float *work,
                                                  int B, int T, int C, int NH) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (B <= 0 || T <= 0 || C <= 0 || NH <= 0) return DDP_OK;
    const int hs = C / NH, BNH = B * NH;
    const size_t btc = (size_t)B * (size_t)T * (size_t)C, rows = (size_t)BNH * (size_t)T;
    const size_t C3 = 3 * (size_t)C;
    const float scale = 1.0f / sqrtf((float)hs);
    /* The regions of the table above: q, k, v, dy (B, NH, T, hs) and datt (B, NH, T, T);
     * dq, dk and dv (B, NH, T, hs) reuse dy, k and v once those are dead. */
    float *q = work, *k = work + btc, *v = work + 2 * btc, *dy = work + 3 * btc;
    float *datt = work + 4 * btc;
    float *dq = dy, *dk = k, *dv = v;

    DDP_CHECK(split_heads(cb, q, qkv, C3, B, T, C, NH));
    DDP_CHECK(split_heads(cb, k, qkv + C, C3, B, T, C, NH));
    DDP_CHECK(split_heads(cb, v, qkv + 2 * (size_t)C, C3, B, T, C, NH));
    DDP_CHECK(split_heads(cb, dy, dout, (size_t)C, B, T, C, NH));
    /* dP = dY V^T: V's last use. */
    DDP_CHECK(ddp_cuda_gemm_batched(cb, 0, 1, T, T, hs, 1.0f, dy, v, 0.0f, datt, BNH));
    /* dV = P^T dY over V: dY's last use, so dQ may replace it. */
    DDP_CHECK(ddp_cuda_gemm_batched(cb, 1, 0, T, hs, T, 1.0f, att, dy, 0.0f, dv, BNH));
    causal_softmax_backward_kernel<<<row_blocks(rows), ROW_THREADS, 0, cb->stream>>>(
        datt, att, rows, T, scale);
    DDP_CUDA_CHECK_LAUNCH("causal_softmax_backward_kernel");
    /* dQ = dS K over dY: K's last use. */
    DDP_CHECK(ddp_cuda_gemm_batched(cb, 0, 0, T, hs, T, 1.0f, datt, k, 0.0f, dq, BNH));
    /* dK = dS^T Q over K. */
    DDP_CHECK(ddp_cuda_gemm_batched(cb, 1, 0, T, hs, T, 1.0f, datt, q, 0.0f, dk, BNH));
    /* dqkv = [dq | dk | dv] per position: every element written. */
    DDP_CHECK(merge_heads(cb, dqkv, C3, dq, B, T, C, NH));
    DDP_CHECK(merge_heads(cb, dqkv + C, C3, dk, B, T, C, NH));
    DDP_CHECK(merge_heads(cb, dqkv + 2 * (size_t)C, C3, dv, B, T, C, NH));
    return DDP_OK;
}
