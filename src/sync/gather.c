/*
 * ZeRO-3's gathers: each rank keeps its shard of the flat parameter buffer, and a unit of
 * the model (ddp_model_num_units) is all-gathered into the buffer, in place, just before
 * its forward and again before its backward, and its pages are given back after, so that
 * a rank holds its shard and a few units, never the whole model.
 *
 * Pieces. A unit's parameters are its own contiguous range and tensors of earlier units it
 * uses (the GPT's output projection reads the token embedding of the first unit). They are
 * cut into pieces, disjoint ranges that every unit's parameters are a union of; a piece is
 * gathered once while any unit that holds it is held (a reference count), so a tied
 * tensor is never gathered twice at once, and given back when the last lets go.
 *
 * The plan. The trainer says what comes (K micro-batches of forward and backward, or an
 * evaluation's forward), so the sequence of unit uses is known (ddp_model_unit_uses: 0..U-1
 * forward, U-1..0 backward with the parts of a recomputed block used forward again just
 * before their backward, and again). At most `window` units are held at once (the one computing
 * included): when a unit's use begins, the units among the next `window` distinct ones of
 * the sequence are acquired (their gathers start, in sequence order, the same on every
 * rank) and the others let go; when it ends, it is let go unless it is among the next
 * `window` (the last unit of forward is the first of backward). With keep, a unit stays
 * held until its last use in the plan.
 *
 * Progress. MPI moves a collective only while a thread is inside it: the gathers run on a
 * thread of their own, over a communicator of their own (collectives of two threads never
 * share one), in the order they were started; a unit's use waits for its pieces. NCCL
 * queues them on its stream and a wait orders the compute stream after them. Without
 * either (--progress test) a gather runs when it is started.
 *
 * Mixed precision: with the weights' bf16 copy (w16) the pieces travel as that copy (half
 * the bytes), and only the tensors that something other than a matrix product reads in
 * fp32 (biases, norms, embeddings, convolutions) travel in fp32 as well.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sync/sync_impl.h"

typedef struct {
    void *buf; /* the piece's (or run's) first element, gathered in place */
    ddp_dtype dtype;
    size_t *counts; /* (world) rank q's elements, in rank order */
} transfer;

typedef struct {
    size_t begin, end; /* elements of the flat buffer */
    int refs;          /* held units that hold it */
    int gathering;     /* started and not yet waited for */
    long long ticket;  /* thread: its place in the queue */
    int n_xfer;
    transfer *xfer;
    ddp_comm_req **reqs; /* (n_xfer) queued comm: the requests */
} piece;

typedef struct {
    int n;       /* pieces */
    int *pieces; /* ids, ascending */
    int held;
    size_t fp32, bf16; /* elements its gathers bring (the whole unit's) */
} unit;

struct ddp_gather {
    ddp_backend *b;
    ddp_comm *comm;
    ddp_model *m;
    float *params;
    uint16_t *w16;
    ddp_shard_layout layout;
    size_t keep_begin, keep_end; /* this rank's shard: never given back */
    int rank, world;
    int n_units, n_pieces;
    unit *units;
    piece *pieces;
    int window, keep, queued_comm;
    /* the plan: unit uses in order, the next one at cursor */
    int *seq, n_seq, cap_seq, cursor;
    int *mark; /* (n_units) scratch */
    /* the thread */
    pthread_t thread;
    int thread_running, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *queue, cap_queue; /* a ring of piece ids */
    long long queued, done;
    ddp_status thread_status;
    ddp_error_saved thread_error;
    /* statistics since ddp_gather_take_stats */
    double t_gather, cpu, fwd_wait, bwd_wait;
};

/* ---- pieces ------------------------------------------------------------------------------ */

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* The ranges of unit u (its own, then its shared tensors') into r (up to max). */
static int unit_ranges(const ddp_model *m, int u, size_t (*r)[2], int max) {
    int shared[16];
    size_t b, e;
    int ns = ddp_model_unit_params(m, u, &b, &e, shared, 16);
    int n = 0;
    if (e > b && n < max) {
        r[n][0] = b;
        r[n][1] = e;
        n++;
    }
    for (int i = 0; i < ns && i < 16 && n < max; i++) {
        const ddp_param_view *v = ddp_model_view(m, shared[i]);
        r[n][0] = v->offset;
        r[n][1] = v->offset + v->count;
        n++;
    }
    return n;
}

/* The transfers that bring piece p: one in place in fp32, or the bf16 copy and the runs of
 * tensors read in fp32. */
static ddp_status make_transfers(ddp_gather *g, piece *p) {
    int nv = ddp_model_num_views(g->m);
    p->xfer = calloc((size_t)nv + 1, sizeof *p->xfer);
    p->reqs = calloc((size_t)nv + 1, sizeof *p->reqs);
    if (!p->xfer || !p->reqs) return DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
    /* Runs of [begin, end) to gather in fp32: all of it, or the tensors not read as bf16. */
    size_t runs[2 * 256 + 2];
    int nr = 0;
    if (!g->w16) {
        runs[0] = p->begin;
        runs[1] = p->end;
        nr = 1;
    } else {
        for (int i = 0; i < nv; i++) {
            const ddp_param_view *v = ddp_model_view(g->m, i);
            size_t a = v->offset > p->begin ? v->offset : p->begin;
            size_t e = v->offset + v->count < p->end ? v->offset + v->count : p->end;
            if (e <= a || v->products_only) continue;
            if (nr > 0 && runs[2 * nr - 1] == a)
                runs[2 * nr - 1] = e;
            else if (nr < 256) {
                runs[2 * nr] = a;
                runs[2 * nr + 1] = e;
                nr++;
            } else {
                return DDP_FAIL(DDP_ERR_INTERNAL, "gather: a unit of more than 256 fp32 runs");
            }
        }
    }
    int n = 0;
    for (int k = -1; k < nr; k++) {
        size_t a = k < 0 ? p->begin : runs[2 * k], e = k < 0 ? p->end : runs[2 * k + 1];
        if (k < 0 && !g->w16) continue; /* the bf16 copy's transfer, in bf16 mode only */
        transfer *t = &p->xfer[n];
        t->counts = calloc((size_t)g->world, sizeof *t->counts);
        if (!t->counts) return DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
        ddp_shard_counts(&g->layout, a, e, t->counts);
        t->dtype = k < 0 ? DDP_BF16 : DDP_F32;
        t->buf = k < 0 ? (void *)(g->w16 + a) : (void *)(g->params + a);
        n++;
    }
    p->n_xfer = n;
    return DDP_OK;
}

/* Cuts the units' ranges into pieces and lists each unit's. */
static ddp_status make_pieces(ddp_gather *g) {
    size_t(*r)[2] = malloc(17 * sizeof *r);
    size_t *cuts = malloc(((size_t)g->n_units * 34 + 2) * sizeof *cuts);
    if (!r || !cuts) {
        free(r);
        free(cuts);
        return DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
    }
    size_t nc = 0;
    for (int u = 0; u < g->n_units; u++) {
        int n = unit_ranges(g->m, u, r, 17);
        for (int i = 0; i < n; i++) {
            cuts[nc++] = r[i][0];
            cuts[nc++] = r[i][1];
        }
    }
    qsort(cuts, nc, sizeof *cuts, cmp_size);
    size_t uniq = 0;
    for (size_t i = 0; i < nc; i++)
        if (uniq == 0 || cuts[i] != cuts[uniq - 1]) cuts[uniq++] = cuts[i];
    g->pieces = calloc(uniq > 0 ? uniq : 1, sizeof *g->pieces);
    ddp_status s = g->pieces ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
    /* Every interval between cuts that some unit covers is a piece. */
    for (size_t i = 0; s == DDP_OK && i + 1 < uniq; i++) {
        int covered = 0;
        for (int u = 0; !covered && u < g->n_units; u++) {
            int n = unit_ranges(g->m, u, r, 17);
            for (int k = 0; k < n; k++)
                if (r[k][0] <= cuts[i] && cuts[i + 1] <= r[k][1]) covered = 1;
        }
        if (!covered) continue;
        piece *p = &g->pieces[g->n_pieces++];
        p->begin = cuts[i];
        p->end = cuts[i + 1];
        s = make_transfers(g, p);
    }
    for (int u = 0; s == DDP_OK && u < g->n_units; u++) {
        unit *un = &g->units[u];
        int n = unit_ranges(g->m, u, r, 17);
        un->pieces = calloc((size_t)g->n_pieces + 1, sizeof *un->pieces);
        if (!un->pieces) {
            s = DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
            break;
        }
        for (int j = 0; j < g->n_pieces; j++) {
            const piece *p = &g->pieces[j];
            for (int k = 0; k < n; k++)
                if (r[k][0] <= p->begin && p->end <= r[k][1]) {
                    un->pieces[un->n++] = j;
                    for (int x = 0; x < p->n_xfer; x++) {
                        size_t all = 0;
                        for (int q = 0; q < g->world; q++)
                            all += p->xfer[x].counts[q];
                        if (p->xfer[x].dtype == DDP_BF16)
                            un->bf16 += all;
                        else
                            un->fp32 += all;
                    }
                    break;
                }
        }
    }
    free(r);
    free(cuts);
    DDP_CHECK(s);
    return DDP_OK;
}

/* ---- one piece's gather -------------------------------------------------------------------- */

/* Blocking: every transfer of piece p, complete on return. The thread's, or the caller's
 * without one. */
static ddp_status gather_blocking(ddp_gather *g, piece *p) {
    for (int x = 0; x < p->n_xfer; x++) {
        const transfer *t = &p->xfer[x];
        /* COLLECTIVE: every rank gathers the same pieces in the same order. */
        DDP_CHECK(ddp_comm_allgatherv(g->comm, t->buf, t->counts, t->dtype));
    }
    return DDP_OK;
}

static void *gather_thread(void *arg) {
    ddp_gather *g = arg;
    ddp_trace_thread(2, "gather");
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->stop && g->done == g->queued)
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->stop) break;
        int id = g->queue[g->done % g->cap_queue];
        int failed = g->thread_status != DDP_OK;
        pthread_mutex_unlock(&g->mu);
        double t0 = ddp_time_now(), cpu0 = ddp_thread_cpu_time();
        /* After a failure the others are skipped: their waiters get the first error. */
        ddp_status s = failed ? DDP_OK : gather_blocking(g, &g->pieces[id]);
        double t1 = ddp_time_now(), cpu = ddp_thread_cpu_time() - cpu0;
        ddp_trace_span("allgather unit", "comm", t0, t1, 2);
        pthread_mutex_lock(&g->mu);
        if (s != DDP_OK && g->thread_status == DDP_OK) {
            g->thread_status = s;
            ddp_error_save(&g->thread_error);
        }
        g->t_gather += t1 - t0;
        g->cpu += cpu;
        g->done++;
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

/* Starts piece p's gather: queued for the thread or on the device, else run here. */
static ddp_status piece_start(ddp_gather *g, piece *p) {
    p->gathering = 1;
    if (g->thread_running) {
        pthread_mutex_lock(&g->mu);
        p->ticket = g->queued;
        g->queue[g->queued % g->cap_queue] = (int)(p - g->pieces);
        g->queued++;
        pthread_cond_signal(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return DDP_OK;
    }
    if (g->queued_comm) {
        for (int x = 0; x < p->n_xfer; x++) {
            const transfer *t = &p->xfer[x];
            /* COLLECTIVE: every rank queues the same pieces in the same order. */
            DDP_CHECK(ddp_comm_iallgatherv(g->comm, t->buf, t->counts, t->dtype, &p->reqs[x]));
        }
        return DDP_OK;
    }
    double t0 = ddp_time_now();
    ddp_status s = gather_blocking(g, p);
    g->t_gather += ddp_time_now() - t0;
    p->gathering = 0;
    DDP_CHECK(s);
    return DDP_OK;
}

/* Waits for piece p's gather (on the device: orders the compute stream after it). */
static ddp_status piece_wait(ddp_gather *g, piece *p) {
    if (!p->gathering) return DDP_OK;
    p->gathering = 0;
    if (g->thread_running) {
        ddp_status s = DDP_OK;
        pthread_mutex_lock(&g->mu);
        while (g->done <= p->ticket && g->thread_status == DDP_OK)
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->thread_status != DDP_OK) s = ddp_error_restore(&g->thread_error, __FILE__, __LINE__);
        pthread_mutex_unlock(&g->mu);
        DDP_CHECK(s);
        return DDP_OK;
    }
    ddp_status s = DDP_OK;
    for (int x = 0; x < p->n_xfer; x++) {
        ddp_comm_req *req = p->reqs[x];
        p->reqs[x] = NULL;
        ddp_status w = ddp_comm_wait(g->comm, req);
        if (s == DDP_OK) s = w;
    }
    DDP_CHECK(s);
    return DDP_OK;
}

/* Gives back the pages of [a, e) of an array of esize-byte elements at base that neither
 * this rank's shard nor a piece held by a unit (other than `self`) shares; in whole huge
 * pages where the array has them (none is split, so they fault back once per 2 MB). */
static ddp_status give_back(ddp_gather *g, void *base, size_t esize, size_t a, size_t e, int self) {
    size_t bytes = g->layout.n * esize, page = ddp_backend_release_granule(g->b, base, bytes);
    uintptr_t at = (uintptr_t)base, last = (at + bytes + page - 1) / page * page;
    size_t cut[2][2] = {{a, e < g->keep_begin ? e : g->keep_begin},
                        {a > g->keep_end ? a : g->keep_end, e}};
    for (int c = 0; c < 2; c++) {
        if (cut[c][1] <= cut[c][0]) continue;
        uintptr_t lo = (at + cut[c][0] * esize) / page * page;
        uintptr_t hi = (at + cut[c][1] * esize + page - 1) / page * page;
        for (int edge = 0; edge < 2 && hi > lo; edge++) {
            uintptr_t pg = edge == 0 ? lo : hi - page;
            /* The page's elements, rounded outward. */
            size_t x = (size_t)((pg > at ? pg - at : 0) / esize);
            size_t y = (size_t)((pg + page - at + esize - 1) / esize);
            int busy = g->keep_end > g->keep_begin && x < g->keep_end && y > g->keep_begin;
            for (int j = 0; !busy && j < g->n_pieces; j++) {
                const piece *p = &g->pieces[j];
                busy = j != self && p->refs > 0 && p->begin < y && p->end > x;
            }
            if (!busy) continue;
            if (edge == 0)
                lo += page;
            else
                hi -= page;
        }
        if (hi > last) hi = last; /* the mapping ends there */
        if (hi > lo) DDP_CHECK(ddp_backend_release_pages(g->b, (void *)lo, hi - lo, NULL));
    }
    return DDP_OK;
}

/* ---- units --------------------------------------------------------------------------------- */

static ddp_status acquire(ddp_gather *g, int u) {
    unit *un = &g->units[u];
    if (un->held) return DDP_OK;
    un->held = 1;
    for (int i = 0; i < un->n; i++) {
        piece *p = &g->pieces[un->pieces[i]];
        if (p->refs++ == 0) DDP_CHECK(piece_start(g, p));
    }
    return DDP_OK;
}

static ddp_status unit_wait(ddp_gather *g, int u) {
    const unit *un = &g->units[u];
    for (int i = 0; i < un->n; i++)
        DDP_CHECK(piece_wait(g, &g->pieces[un->pieces[i]]));
    return DDP_OK;
}

/* Lets unit u go: its pieces that no other held unit holds go back (after their gathers,
 * which must not write into pages given back). */
static ddp_status let_go(ddp_gather *g, int u) {
    unit *un = &g->units[u];
    if (!un->held) return DDP_OK;
    un->held = 0;
    ddp_status s = DDP_OK;
    for (int i = 0; i < un->n; i++) {
        int id = un->pieces[i];
        piece *p = &g->pieces[id];
        if (--p->refs > 0) continue;
        ddp_status w = piece_wait(g, p);
        if (s == DDP_OK) s = w;
        if (s == DDP_OK) s = give_back(g, g->params, sizeof(float), p->begin, p->end, id);
        if (s == DDP_OK && g->w16) s = give_back(g, g->w16, sizeof(uint16_t), p->begin, p->end, id);
    }
    DDP_CHECK(s);
    return DDP_OK;
}

/* Marks the units of the next `window` distinct uses from seq[from] (those with
 * parameters). */
static void mark_window(ddp_gather *g, int from) {
    memset(g->mark, 0, (size_t)g->n_units * sizeof *g->mark);
    int n = 0;
    for (int i = from; i < g->n_seq && n < g->window; i++) {
        int u = g->seq[i];
        if (g->units[u].n == 0 || g->mark[u]) continue;
        g->mark[u] = 1;
        n++;
    }
}

/* Whether unit u is used again in the plan from seq[from] on. */
static int used_from(const ddp_gather *g, int u, int from) {
    for (int i = from; i < g->n_seq; i++)
        if (g->seq[i] == u) return 1;
    return 0;
}

/* Acquires the marked units, in the order of their next use (the same on every rank). */
static ddp_status acquire_marked(ddp_gather *g, int from) {
    for (int i = from; i < g->n_seq; i++) {
        int u = g->seq[i];
        if (!g->mark[u]) continue;
        g->mark[u] = 0;
        DDP_CHECK(acquire(g, u));
    }
    return DDP_OK;
}

ddp_status ddp_gather_unit_event(void *ctx, int u, ddp_unit_event ev) {
    ddp_gather *g = ctx;
    if (ev == DDP_UNIT_FORWARD_BEGIN || ev == DDP_UNIT_BACKWARD_BEGIN) {
        if (g->cursor >= g->n_seq || g->seq[g->cursor] != u)
            return DDP_FAIL(DDP_ERR_INTERNAL,
                            "ZeRO-3: unit %s's %s outside the planned passes (a forward or "
                            "backward that the trainer did not announce): every rank must "
                            "gather the same units in the same order",
                            ddp_model_unit_name(g->m, u),
                            ev == DDP_UNIT_FORWARD_BEGIN ? "forward" : "backward");
        mark_window(g, g->cursor);
        for (int v = 0; v < g->n_units; v++)
            if (g->units[v].held && !g->mark[v] && v != u &&
                !(g->keep && used_from(g, v, g->cursor)))
                DDP_CHECK(let_go(g, v));
        DDP_CHECK(acquire_marked(g, g->cursor));
        double t0 = ddp_time_now();
        DDP_CHECK(unit_wait(g, u));
        double waited = ddp_time_now() - t0;
        if (ev == DDP_UNIT_FORWARD_BEGIN)
            g->fwd_wait += waited;
        else
            g->bwd_wait += waited;
        g->cursor++;
        return DDP_OK;
    }
    /* The use ended: let it go unless it comes again soon (or, with keep, at all). */
    mark_window(g, g->cursor);
    if (!g->mark[u] && !(g->keep && used_from(g, u, g->cursor))) DDP_CHECK(let_go(g, u));
    DDP_CHECK(acquire_marked(g, g->cursor));
    return DDP_OK;
}

ddp_status ddp_gather_plan(ddp_gather *g, int micro_batches, int backward) {
    int per = ddp_model_unit_uses(g->m, backward, NULL, 0), n = micro_batches * per;
    if (n > g->cap_seq) {
        int *grown = realloc(g->seq, (size_t)n * sizeof *grown);
        if (!grown) return DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
        g->seq = grown;
        g->cap_seq = n;
    }
    for (int k = 0; k < micro_batches; k++)
        ddp_model_unit_uses(g->m, backward, g->seq + (size_t)k * per, per);
    g->n_seq = n;
    g->cursor = 0;
    return DDP_OK;
}

ddp_status ddp_gather_prefetch(ddp_gather *g) {
    mark_window(g, g->cursor);
    DDP_CHECK(acquire_marked(g, g->cursor));
    return DDP_OK;
}

ddp_status ddp_gather_idle_forward(ddp_gather *g) {
    for (int u = 0; u < g->n_units; u++) {
        DDP_CHECK(ddp_gather_unit_event(g, u, DDP_UNIT_FORWARD_BEGIN));
        DDP_CHECK(ddp_gather_unit_event(g, u, DDP_UNIT_FORWARD_END));
    }
    return DDP_OK;
}

ddp_status ddp_gather_settle(ddp_gather *g) {
    ddp_status s = DDP_OK;
    for (int u = 0; u < g->n_units; u++) {
        ddp_status w = let_go(g, u);
        if (s == DDP_OK) s = w;
    }
    g->n_seq = g->cursor = 0;
    DDP_CHECK(s);
    return DDP_OK;
}

void ddp_gather_take_stats(ddp_gather *g, double *fwd_wait, double *bwd_wait, double *gather,
                           double *cpu) {
    if (g->thread_running) pthread_mutex_lock(&g->mu);
    *gather = g->t_gather;
    *cpu = g->cpu;
    g->t_gather = g->cpu = 0.0;
    if (g->thread_running) pthread_mutex_unlock(&g->mu);
    *fwd_wait = g->fwd_wait;
    *bwd_wait = g->bwd_wait;
    g->fwd_wait = g->bwd_wait = 0.0;
}

void ddp_gather_largest(const ddp_gather *g, int units, size_t *fp32, size_t *bf16) {
    /* The `units` largest by bytes, without repeats: an upper bound of any window's. */
    char *taken = calloc((size_t)g->n_units + 1, 1);
    *fp32 = *bf16 = 0;
    for (int k = 0; taken && k < units; k++) {
        int best = -1;
        for (int u = 0; u < g->n_units; u++) {
            const unit *x = &g->units[u];
            if (taken[u]) continue;
            if (best < 0 || 2 * x->fp32 + x->bf16 > 2 * g->units[best].fp32 + g->units[best].bf16)
                best = u;
        }
        if (best < 0) break;
        taken[best] = 1;
        *fp32 += g->units[best].fp32;
        *bf16 += g->units[best].bf16;
    }
    free(taken);
}

size_t ddp_gather_largest_unit(const ddp_gather *g) {
    size_t big = 0;
    for (int u = 0; u < g->n_units; u++) {
        size_t b, e;
        ddp_model_unit_params(g->m, u, &b, &e, NULL, 0);
        if (e - b > big) big = e - b;
    }
    return big;
}

/* ---- set-up -------------------------------------------------------------------------------- */

ddp_status ddp_gather_create(ddp_backend *b, ddp_comm *comm, ddp_model *m,
                             const ddp_shard_layout *l, const ddp_gather_options *o,
                             ddp_gather **out) {
    *out = NULL;
    ddp_gather *g = calloc(1, sizeof *g);
    if (!g) return DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
    g->b = b;
    g->comm = comm;
    g->m = m;
    g->params = ddp_model_params(m);
    g->w16 = o->w16;
    g->layout = *l;
    g->rank = ddp_comm_rank(comm);
    g->world = ddp_comm_size(comm);
    size_t begin, len;
    ddp_shard_of(l, g->rank, &begin, &len);
    g->keep_begin = begin;
    g->keep_end = begin + len;
    g->window = o->window > 0 ? o->window : 1;
    g->keep = o->keep;
    g->queued_comm = (ddp_comm_caps(comm) & DDP_COMM_CAP_DEVICE_QUEUE) != 0;
    g->n_units = ddp_model_num_units(m);
    g->thread_status = DDP_OK;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->units = calloc((size_t)g->n_units, sizeof *g->units);
    g->mark = calloc((size_t)g->n_units, sizeof *g->mark);
    ddp_status s =
        g->units && g->mark ? make_pieces(g) : DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
    if (s == DDP_OK) {
        g->cap_queue = g->n_pieces + 1;
        g->queue = calloc((size_t)g->cap_queue, sizeof *g->queue);
        if (!g->queue) s = DDP_FAIL(DDP_ERR_NOMEM, "gather: out of memory");
    }
    if (s != DDP_OK) {
        ddp_gather_free(g);
        DDP_CHECK(s);
    }
    *out = g;
    return DDP_OK;
}

ddp_status ddp_gather_start(ddp_gather *g, ddp_progress progress) {
    unsigned caps = ddp_comm_caps(g->comm);
    if (g->queued_comm || progress == DDP_PROGRESS_TEST) return DDP_OK;
    /* MPI on the host: a thread inside MPI moves the gathers while forward computes. */
    if (!(caps & DDP_COMM_CAP_HOST_PROGRESS) || !(caps & DDP_COMM_CAP_THREADS)) return DDP_OK;
    if (pthread_create(&g->thread, NULL, gather_thread, g) != 0)
        return DDP_FAIL(DDP_ERR_INTERNAL, "ZeRO-3: could not start the gathers' thread");
    g->thread_running = 1;
    return DDP_OK;
}

void ddp_gather_free(ddp_gather *g) {
    if (!g) return;
    if (g->thread_running) {
        pthread_mutex_lock(&g->mu);
        g->stop = 1;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL);
    }
    for (int j = 0; j < g->n_pieces; j++) {
        piece *p = &g->pieces[j];
        for (int x = 0; x < p->n_xfer; x++) {
            if (p->reqs && p->reqs[x]) ddp_comm_wait(g->comm, p->reqs[x]);
            free(p->xfer[x].counts);
        }
        free(p->xfer);
        free(p->reqs);
    }
    for (int u = 0; g->units && u < g->n_units; u++)
        free(g->units[u].pieces);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g->pieces);
    free(g->units);
    free(g->mark);
    free(g->seq);
    free(g->queue);
    free(g);
}
