/*
 * PowerSGD (ddp/powersgd.h): the matrices' products, the orthogonalization, and the two
 * all-reduces of a bucket. Compiled without fused multiply-adds (CMakeLists.txt), and the
 * loops' order is fixed, so that every CPU computes the same bits from the same sums.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu_math.h"
#include "ddp/powersgd.h"

struct ddp_powersgd {
    ddp_powersgd_options opt;
    size_t n;
    int n_mats;
    ddp_psgd_matrix *mats; /* (n_mats) ascending */
    size_t *q_at;          /* (n_mats) where matrix i's Q starts in q */
    float *errors;         /* (n) */
    float *q;              /* (q_elems): per matrix (R, cols), i.e. Q transposed */
    size_t q_elems;
    int q_warm;      /* q holds a step's result */
    int compressing; /* this step */
    int flush;       /* this (uncompressed) step adds the error feedback in and clears it */
    /* the wire: a bucket's P's and vectors, then its Q's (grown to the largest bucket) */
    float *pack;
    uint16_t *pack16;
    size_t pack_cap;
};

/* ---- which tensors ------------------------------------------------------------------- */

int ddp_powersgd_matrices_of(const ddp_model *m, int rank, ddp_psgd_matrix *out, int cap) {
    int k = 0;
    for (int i = 0; i < ddp_model_num_views(m); i++) {
        const ddp_param_view *v = ddp_model_view(m, i);
        if (v->ndim < 2 || v->shape[0] == 0) continue;
        size_t rows = v->shape[0], cols = v->count / rows;
        /* Worth it where the factors are at most half the matrix (PyTorch's default
         * minimum compression rate, 2). */
        if ((rows + cols) * (size_t)rank * 2 > rows * cols) continue;
        if (out && k < cap) out[k] = (ddp_psgd_matrix){v->offset, rows, cols};
        k++;
    }
    return k;
}

/* ---- set-up -------------------------------------------------------------------------- */

static void init_q(ddp_powersgd *p) {
    ddp_rng rng;
    ddp_rng_seed(&rng, p->opt.seed, 0x9051d);
    for (size_t i = 0; i < p->q_elems; i++)
        p->q[i] = ddp_rng_normal(&rng);
    p->q_warm = 0;
}

ddp_status ddp_powersgd_create(const ddp_powersgd_options *o, size_t n, const ddp_psgd_matrix *mats,
                               int n_mats, ddp_powersgd **out) {
    *out = NULL;
    if (o->rank < 1 || o->rank > DDP_PSGD_MAX_RANK)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--compress-rank %d: 1 to %d", o->rank,
                        DDP_PSGD_MAX_RANK);
    if (o->wire != DDP_F32 && o->wire != DDP_BF16)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "PowerSGD: the wire is fp32 or bf16");
    for (int i = 0; i < n_mats; i++) {
        const ddp_psgd_matrix *a = &mats[i];
        if (a->rows == 0 || a->cols == 0 || a->offset + a->rows * a->cols > n ||
            (i > 0 && a->offset < mats[i - 1].offset + mats[i - 1].rows * mats[i - 1].cols))
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "PowerSGD: matrix %d (%zu x %zu at %zu) is empty, overlaps the one "
                            "before or lies outside the %zu gradients",
                            i, a->rows, a->cols, a->offset, n);
    }
    ddp_powersgd *p = calloc(1, sizeof *p);
    if (!p) return DDP_FAIL(DDP_ERR_NOMEM, "PowerSGD: out of memory");
    p->opt = *o;
    p->n = n;
    p->n_mats = n_mats;
    p->mats = malloc((size_t)(n_mats > 0 ? n_mats : 1) * sizeof *p->mats);
    p->q_at = malloc((size_t)(n_mats > 0 ? n_mats : 1) * sizeof *p->q_at);
    p->errors = calloc(n > 0 ? n : 1, sizeof *p->errors);
    if (p->mats && p->q_at) {
        for (int i = 0; i < n_mats; i++) {
            p->mats[i] = mats[i];
            p->q_at[i] = p->q_elems;
            p->q_elems += mats[i].cols * (size_t)o->rank;
        }
        p->q = malloc((p->q_elems > 0 ? p->q_elems : 1) * sizeof *p->q);
    }
    if (!p->mats || !p->q_at || !p->errors || !p->q) {
        ddp_powersgd_free(p);
        return DDP_FAIL(DDP_ERR_NOMEM,
                        "PowerSGD: out of memory for the error feedback of %zu "
                        "gradients",
                        n);
    }
    init_q(p);
    *out = p;
    return DDP_OK;
}

void ddp_powersgd_free(ddp_powersgd *p) {
    if (!p) return;
    free(p->mats);
    free(p->q_at);
    free(p->errors);
    free(p->q);
    free(p->pack);
    free(p->pack16);
    free(p);
}

void ddp_powersgd_set_step(ddp_powersgd *p, int64_t step) {
    int now = step >= p->opt.start;
    /* The first uncompressed step after compressed ones sends what they left. */
    p->flush = !now && p->compressing;
    p->compressing = now;
}
void ddp_powersgd_set_start(ddp_powersgd *p, int64_t start) { p->opt.start = start; }
int ddp_powersgd_compressing(const ddp_powersgd *p) { return p->compressing; }

void ddp_powersgd_reset(ddp_powersgd *p) {
    memset(p->errors, 0, p->n * sizeof *p->errors);
    init_q(p);
}

float *ddp_powersgd_errors(ddp_powersgd *p) { return p->errors; }
float *ddp_powersgd_q(ddp_powersgd *p) { return p->q; }
size_t ddp_powersgd_q_elems(const ddp_powersgd *p) { return p->q_elems; }
int ddp_powersgd_q_warm(const ddp_powersgd *p) { return p->q_warm; }
void ddp_powersgd_set_q_warm(ddp_powersgd *p, int warm) { p->q_warm = warm != 0; }

size_t ddp_powersgd_bytes(const ddp_powersgd *p) {
    return (p->n + p->q_elems + p->pack_cap) * sizeof(float) +
           (p->opt.wire == DDP_BF16 ? p->pack_cap * sizeof(uint16_t) : 0);
}

/* ---- the kernels ----------------------------------------------------------------------- */

/* P (rows, R) = M (rows, cols) Q, with Q stored as Qt (R, cols): one dot product per element,
 * in 8 partial sums of a fixed order. */
DDP_CPU_CLONES static void mul_mq(const float *M, size_t rows, size_t cols, const float *Qt, int R,
                                  float *P) {
    for (size_t i = 0; i < rows; i++) {
        const float *m = M + i * cols;
        for (int k = 0; k < R; k++) {
            const float *q = Qt + (size_t)k * cols;
            float acc[8] = {0};
            size_t j = 0;
            for (; j + 8 <= cols; j += 8)
                for (int u = 0; u < 8; u++)
                    acc[u] += m[j + u] * q[j + u];
            for (; j < cols; j++)
                acc[j % 8] += m[j] * q[j];
            P[i * (size_t)R + (size_t)k] =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        }
    }
}

/* Qt (R, cols) = (M^T P)^T: row by row of M, each column of P scaling it into Qt's rows. */
DDP_CPU_CLONES static void mul_mtp(const float *M, size_t rows, size_t cols, const float *P, int R,
                                   float *Qt) {
    memset(Qt, 0, (size_t)R * cols * sizeof *Qt);
    for (size_t i = 0; i < rows; i++) {
        const float *m = M + i * cols;
        for (int k = 0; k < R; k++) {
            float s = P[i * (size_t)R + (size_t)k];
            float *q = Qt + (size_t)k * cols;
            for (size_t j = 0; j < cols; j++)
                q[j] += s * m[j];
        }
    }
}

/* Row i of P Q^T (Q as Qt) into out (cols). */
DDP_CPU_CLONES static void row_pqt(const float *P, size_t i, const float *Qt, int R, size_t cols,
                                   float *out) {
    for (size_t j = 0; j < cols; j++)
        out[j] = 0.0f;
    for (int k = 0; k < R; k++) {
        float s = P[i * (size_t)R + (size_t)k];
        const float *q = Qt + (size_t)k * cols;
        for (size_t j = 0; j < cols; j++)
            out[j] += s * q[j];
    }
}

/* Gram-Schmidt on the columns of P (rows, R), in place: dot products and norms in double,
 * the columns kept in fp32, each column's projections taken off twice ("twice is enough":
 * once leaves what fp32 rounding put back along the earlier columns, which a column that
 * was almost dependent on them would keep after normalizing, and P^ P^^T would be no
 * projection). A zero column stays zero and contributes nothing. */
static void orthonormalize(float *P, size_t rows, int R) {
    for (int k = 0; k < R; k++) {
        for (int pass = 0; pass < 2; pass++)
            for (int j = 0; j < k; j++) {
                double d = 0.0;
                for (size_t i = 0; i < rows; i++)
                    d += (double)P[i * R + j] * (double)P[i * R + k];
                float df = (float)d;
                for (size_t i = 0; i < rows; i++)
                    P[i * R + k] -= df * P[i * R + j];
            }
        double nn = 0.0;
        for (size_t i = 0; i < rows; i++)
            nn += (double)P[i * R + k] * (double)P[i * R + k];
        /* Non-finite gradients stay visibly so (NaN). */
        float inv = !isfinite(nn) ? NAN : nn > 0.0 ? (float)(1.0 / sqrt(nn)) : 0.0f;
        for (size_t i = 0; i < rows; i++)
            P[i * R + k] *= inv;
    }
}

/* The next step's Q (R, cols) from this step's sum Qs: a column that came back zero (the
 * matrix's gradients were zero) keeps its last value, so that the power iteration does
 * not stay at zero. The same on every rank: Qs is. */
static void keep_q(float *q, const float *Qs, int R, size_t cols) {
    for (int k = 0; k < R; k++) {
        const float *src = Qs + (size_t)k * cols;
        int zero = 1;
        for (size_t j = 0; j < cols && zero; j++)
            zero = src[j] == 0.0f;
        if (!zero) memcpy(q + (size_t)k * cols, src, cols * sizeof *q);
    }
}

/* ---- a bucket -------------------------------------------------------------------------- */

static ddp_status grow_pack(ddp_powersgd *p, size_t need) {
    if (need <= p->pack_cap) return DDP_OK;
    float *f = realloc(p->pack, need * sizeof *f);
    if (!f) return DDP_FAIL(DDP_ERR_NOMEM, "PowerSGD: out of memory for %zu wire floats", need);
    p->pack = f;
    if (p->opt.wire == DDP_BF16) {
        uint16_t *h = realloc(p->pack16, need * sizeof *h);
        if (!h) return DDP_FAIL(DDP_ERR_NOMEM, "PowerSGD: out of memory for %zu wire values", need);
        p->pack16 = h;
    }
    p->pack_cap = need;
    return DDP_OK;
}

/* The all-reduce of buf (count floats) in the wire's dtype; w (count) holds the bf16 values
 * on the way. */
static ddp_status wire_sum(ddp_powersgd *p, ddp_comm *c, const char *site, float *buf, size_t count,
                           uint16_t *w) {
    if (count == 0) return DDP_OK;
    if (p->opt.wire == DDP_F32) {
        DDP_CHECK(ddp_comm_allreduce_at(c, site, buf, count, DDP_F32, DDP_SUM));
        return DDP_OK;
    }
    for (size_t i = 0; i < count; i++)
        w[i] = ddp_bf16_bits(buf[i]);
    DDP_CHECK(ddp_comm_allreduce_at(c, site, w, count, DDP_BF16, DDP_SUM));
    for (size_t i = 0; i < count; i++) {
        uint32_t u = (uint32_t)w[i] << 16;
        memcpy(&buf[i], &u, 4);
    }
    return DDP_OK;
}

/* The matrices wholly inside [begin, end): [*first, *last). */
static void matrices_in(const ddp_powersgd *p, size_t begin, size_t end, int *first, int *last) {
    int a = 0;
    while (a < p->n_mats && p->mats[a].offset < begin)
        a++;
    int b = a;
    while (b < p->n_mats && p->mats[b].offset + p->mats[b].rows * p->mats[b].cols <= end)
        b++;
    *first = a;
    *last = b;
}

ddp_status ddp_powersgd_allreduce(ddp_powersgd *p, ddp_comm *c, float *grads, size_t begin,
                                  size_t end, const char *const sites[2]) {
    if (end > p->n || begin > end)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "PowerSGD: gradients [%zu, %zu) of %zu", begin, end,
                        p->n);
    int a, b;
    matrices_in(p, begin, end, &a, &b);
    if (!p->compressing || a == b) {
        /* Warm-up, or nothing to compress: the bucket as it is (with what compressed
         * steps before it did not send). */
        if (p->flush) {
            float *e = p->errors;
            for (size_t i = begin; i < end; i++) {
                grads[i] += e[i];
                e[i] = 0.0f;
            }
        }
        if (p->opt.wire == DDP_BF16) DDP_CHECK(grow_pack(p, end - begin));
        DDP_CHECK(wire_sum(p, c, sites[0], grads + begin, end - begin, p->pack16));
        return DDP_OK;
    }
    const int R = p->opt.rank;
    /* The wire: every matrix's P, then the elements outside the matrices; then the Q's. */
    size_t np = 0, nv = end - begin, nq = 0;
    for (int i = a; i < b; i++) {
        np += p->mats[i].rows * (size_t)R;
        nv -= p->mats[i].rows * p->mats[i].cols;
        nq += p->mats[i].cols * (size_t)R;
    }
    DDP_CHECK(grow_pack(p, (np + nv > nq ? np + nv : nq)));
    float *pk = p->pack;
    /* M = g + error; P = M Q. */
    size_t at = 0, v = np, cur = begin;
    for (int i = a; i < b; i++) {
        const ddp_psgd_matrix *mt = &p->mats[i];
        for (; cur < mt->offset; cur++)
            pk[v++] = grads[cur];
        size_t len = mt->rows * mt->cols;
        float *M = grads + mt->offset;
        const float *e = p->errors + mt->offset;
        for (size_t j = 0; j < len; j++)
            M[j] += e[j];
        mul_mq(M, mt->rows, mt->cols, p->q + p->q_at[i], R, pk + at);
        at += mt->rows * (size_t)R;
        cur = mt->offset + len;
    }
    for (; cur < end; cur++)
        pk[v++] = grads[cur];
    DDP_CHECK(wire_sum(p, c, sites[0], pk, np + nv, p->pack16));
    /* The vectors are summed: back into place. */
    v = np;
    cur = begin;
    for (int i = a; i < b; i++) {
        for (; cur < p->mats[i].offset; cur++)
            grads[cur] = pk[v++];
        cur = p->mats[i].offset + p->mats[i].rows * p->mats[i].cols;
    }
    for (; cur < end; cur++)
        grads[cur] = pk[v++];
    /* P^ (the same bits on every rank), this rank's Q = M^T P^ into Q's place, and what
     * its projection P^ Q^T leaves of M into the error. P^ stays in the pack's front,
     * the Q's go after it. */
    DDP_CHECK(grow_pack(p, np + nq));
    pk = p->pack;
    float *qs = pk + np;
    at = 0;
    size_t qa = 0;
    for (int i = a; i < b; i++) {
        const ddp_psgd_matrix *mt = &p->mats[i];
        float *Pi = pk + at, *Qi = qs + qa, *M = grads + mt->offset;
        float *e = p->errors + mt->offset;
        orthonormalize(Pi, mt->rows, R);
        mul_mtp(M, mt->rows, mt->cols, Pi, R, Qi);
        for (size_t r = 0; r < mt->rows; r++) {
            row_pqt(Pi, r, Qi, R, mt->cols, e + r * mt->cols);
            for (size_t j = 0; j < mt->cols; j++)
                e[r * mt->cols + j] = M[r * mt->cols + j] - e[r * mt->cols + j];
        }
        at += mt->rows * (size_t)R;
        qa += mt->cols * (size_t)R;
    }
    DDP_CHECK(wire_sum(p, c, sites[1], qs, nq, p->pack16 + np));
    /* The sum over ranks of every projection: P^ (sum of Q)^T; the sum is the next step's
     * Q (warm start). */
    at = 0;
    qa = 0;
    for (int i = a; i < b; i++) {
        const ddp_psgd_matrix *mt = &p->mats[i];
        float *Pi = pk + at, *Qi = qs + qa, *M = grads + mt->offset;
        for (size_t r = 0; r < mt->rows; r++)
            row_pqt(Pi, r, Qi, R, mt->cols, M + r * mt->cols);
        keep_q(p->q + p->q_at[i], Qi, R, mt->cols);
        at += mt->rows * (size_t)R;
        qa += mt->cols * (size_t)R;
    }
    p->q_warm = 1;
    return DDP_OK;
}

/* ---- what it costs ------------------------------------------------------------------- */

void ddp_powersgd_wire(const ddp_powersgd *p, size_t begin, size_t end, size_t *elems, int *calls) {
    int a, b;
    matrices_in(p, begin, end, &a, &b);
    *elems = end - begin;
    *calls = end > begin ? 1 : 0;
    if (a == b) return;
    *calls = 2;
    for (int i = a; i < b; i++) {
        const ddp_psgd_matrix *m = &p->mats[i];
        *elems -= m->rows * m->cols;
        *elems += (m->rows + m->cols) * (size_t)p->opt.rank;
    }
}

ddp_status ddp_powersgd_time_work(const ddp_powersgd *p, ddp_comm *local, const float *grads,
                                  const size_t *bounds, int n_buckets, double *seconds) {
    *seconds = 0.0;
    ddp_powersgd_options o = p->opt;
    o.start = 0;
    ddp_powersgd *w = NULL;
    DDP_CHECK(ddp_powersgd_create(&o, p->n, p->mats, p->n_mats, &w));
    float *g = malloc((p->n > 0 ? p->n : 1) * sizeof *g);
    ddp_status s = g ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "PowerSGD: out of memory");
    static const char *const sites[2] = {"PowerSGD timing P", "PowerSGD timing Q"};
    ddp_powersgd_set_step(w, 0);
    /* Twice: the first touches the error feedback's pages and the wire's. */
    for (int rep = 0; s == DDP_OK && rep < 2; rep++) {
        memcpy(g, grads, p->n * sizeof *g);
        double t0 = ddp_time_now();
        for (int i = 0; s == DDP_OK && i < n_buckets; i++)
            s = ddp_powersgd_allreduce(w, local, g, bounds[2 * i], bounds[2 * i + 1], sites);
        *seconds = ddp_time_now() - t0;
    }
    free(g);
    ddp_powersgd_free(w);
    DDP_CHECK(s);
    return DDP_OK;
}
