/*
 * The gradient reducer: buckets over the flat gradient buffer, launched as they become
 * ready during backward, with real progress for MPI (a communication thread, or tests
 * between layers) and timing of the communication that backward did not hide.
 *
 * When is a bucket ready? Each bucket counts the elements not yet reported final in this
 * backward pass and starts when its count reaches zero, whatever order the reports come
 * in: a model with branches, tied weights (whose gradient is added to at both ends of
 * backward and reported once, at the end) or layers reported out of order never gets a
 * bucket all-reduced before all of its gradients are final. A range reported twice is an
 * error (the model would be telling the truth about neither report). Buckets start in the
 * order they complete, which every rank shares, since every rank reports the same ranges
 * in the same order.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/flight.h"
#include "ddp/powersgd.h"
#include "ddp/reducer.h"

const char *const ddp_progress_names[] = {DDP_PROGRESS_MODES(DDP_X_NAME) NULL};
const char *const ddp_compress_names[] = {DDP_COMPRESS_KINDS(DDP_X_NAME) NULL};

typedef struct {
    size_t begin, end; /* elements */
    size_t pending;    /* elements not yet reported final in this pass */
    int launched;      /* started in this pass */
    int sent;          /* sharded: its reduce-scatter is complete in this pass */
    ddp_comm_req *req; /* DDP_PROGRESS_TEST: the request (NULL if complete at once) */
    int in_flight;     /* DDP_PROGRESS_TEST: started, not yet completed */
    double t_start, t_end;
    /* The flight recorder's calling sites of its collectives ("reducer bucket 3",
     * "parameter gather bucket 3"): which bucket a hang or a desync is in. */
    const char *site, *gather_site;
    const char *q_site; /* PowerSGD's second all-reduce (site: its first) */
} bucket;

/* A range of elements reported final in this pass. */
typedef struct {
    size_t begin, end;
} range;

struct ddp_reducer {
    ddp_comm *comm;
    ddp_backend *backend;
    float *grads;
    size_t n;
    ddp_reducer_options opt;
    int n_buckets;
    bucket *buckets;
    uint16_t *wire;      /* (n) bf16 copy of the gradients (device), when grad_dtype is BF16 */
    uint16_t *wire_recv; /* sharded bf16: this rank's sums before they are widened, per
                          * bucket at dst[i] (shard_size in all) */
    /* sharded (ddp_reducer_set_shard): bucket i sends counts[i * world + q] elements to
     * rank q; this rank's land at shard + dst[i] */
    int world, rank;
    float *shard;    /* (shard_size) device */
    float *scratch;  /* device: a bucket's sums before they are added; per bucket (at dst[i],
                      * shard_size in all) where the comm queues them on the device */
    int queued_comm; /* the comm queues on the device (NCCL): sends complete in wait() */
    size_t *counts;  /* (n_buckets, world) */
    size_t *dst;     /* (n_buckets) */
    size_t shard_begin, shard_size, shard_len;
    int add; /* this pass adds to the shard */
    /* the parameters' all-gather (ddp_reducer_start_gather): a pass of its own, its
     * buckets in order[] from the start of the buffer */
    float *params;      /* non-NULL while a gather is in flight */
    double gather_wait; /* seconds waited for it so far */
    int release;        /* give a sent bucket's pages back to the system */
    ddp_powersgd *psgd; /* compressor of every bucket's sum (not owned), or NULL */
    /* per backward pass */
    int *order;      /* (n_buckets) bucket indices in the order they were started */
    int launched;    /* buckets order[0, launched) have been started */
    range *reported; /* (cap_reported) ranges reported final, sorted, disjoint */
    int n_reported, cap_reported;
    /* communication thread (DDP_PROGRESS_THREAD) */
    pthread_t thread;
    int thread_running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int queued; /* buckets order[0, queued) handed to the thread */
    int done;   /* buckets order[0, done) complete */
    int stop;
    double thread_cpu; /* CPU seconds of this backward pass's buckets on the thread */
    ddp_status thread_status;
    ddp_error_saved thread_error; /* the thread's first error, for finish() */
};

/* ---- one bucket's all-reduce ------------------------------------------------------- */

/* Sharded: where bucket i's sums land before they are added to the shard. */
static float *scratch_of(const ddp_reducer *r, int i) {
    return r->queued_comm ? r->scratch + r->dst[i] : r->scratch;
}

/* Sharded: starts the reduce-scatter of bucket i into the shard (see
 * ddp_reducer_set_shard), in bf16 where asked; queued on the device with a request where
 * the comm can, else complete on return (*req NULL). */
static ddp_status scatter_start(ddp_reducer *r, int i, ddp_comm_req **req) {
    bucket *bk = &r->buckets[i];
    const size_t *counts = r->counts + (size_t)i * (size_t)r->world;
    if (r->opt.grad_dtype == DDP_BF16) {
        uint16_t *w = r->wire + bk->begin;
        DDP_CHECK(
            ddp_backend_f32_to_bf16(r->backend, r->grads + bk->begin, w, bk->end - bk->begin));
        DDP_CHECK(ddp_comm_ireduce_scatterv(r->comm, w, r->wire_recv + r->dst[i], counts, DDP_BF16,
                                            DDP_SUM, req));
        return DDP_OK;
    }
    float *recv = r->add ? scratch_of(r, i) : r->shard + r->dst[i];
    DDP_CHECK(ddp_comm_ireduce_scatterv_at(r->comm, bk->site, r->grads + bk->begin, recv, counts,
                                           DDP_F32, DDP_SUM, req));
    return DDP_OK;
}

/* Gives back the pages of [begin, end) of buf (r->n elements of esize bytes, n_buckets'
 * ranges over it) that no bucket still to be sent in this pass shares: a page at an edge
 * goes with the last of the buckets it holds, so that after a pass none stays. In whole
 * huge pages where the buffer has them, so that none is split. */
static ddp_status release_sent(ddp_reducer *r, void *buf, size_t esize, size_t begin, size_t end) {
    size_t bytes = r->n * esize, page = ddp_backend_release_granule(r->backend, buf, bytes);
    uintptr_t base = (uintptr_t)buf, lo = (base + begin * esize) / page * page;
    uintptr_t hi = (base + end * esize + page - 1) / page * page;
    /* Does the page at p hold an element of a bucket not yet sent? */
    for (int edge = 0; edge < 2 && hi > lo; edge++) {
        uintptr_t p = edge == 0 ? lo : hi - page;
        for (int j = 0; j < r->n_buckets; j++) {
            const bucket *b = &r->buckets[j];
            if (b->sent || b->end == b->begin) continue;
            uintptr_t a = base + b->begin * esize, e = base + b->end * esize;
            if (a < p + page && e > p) {
                if (edge == 0)
                    lo += page;
                else
                    hi -= page;
                break;
            }
        }
    }
    /* Not past the buffer's last page (its mapping ends there). */
    uintptr_t last = (base + bytes + page - 1) / page * page;
    if (hi > last) hi = last;
    if (hi > lo) DDP_CHECK(ddp_backend_release_pages(r->backend, (void *)lo, hi - lo, NULL));
    return DDP_OK;
}

/* Sharded, once bucket i's reduce-scatter is complete (or ordered before the backend's
 * later work): widens or adds what it received into the shard, and gives the bucket's
 * pages back. */
static ddp_status scatter_finish(ddp_reducer *r, int i) {
    bucket *bk = &r->buckets[i];
    size_t mine = r->counts[(size_t)i * (size_t)r->world + (size_t)r->rank];
    float *into = r->add ? scratch_of(r, i) : r->shard + r->dst[i];
    if (r->opt.grad_dtype == DDP_BF16 && mine > 0)
        DDP_CHECK(ddp_backend_bf16_to_f32(r->backend, r->wire_recv + r->dst[i], into, mine));
    if (r->add && mine > 0)
        DDP_CHECK(ddp_backend_add(r->backend, r->shard + r->dst[i], r->shard + r->dst[i],
                                  scratch_of(r, i), mine));
    bk->sent = 1;
    if (r->release) {
        /* The next backward overwrites the gradients: their pages come back zero-filled. */
        DDP_CHECK(release_sent(r, r->grads, sizeof(float), bk->begin, bk->end));
        if (r->wire) DDP_CHECK(release_sent(r, r->wire, sizeof(uint16_t), bk->begin, bk->end));
    }
    return DDP_OK;
}

/* Sharded, blocking: the reduce-scatter of bucket i, complete on return. */
static ddp_status scatter_bucket(ddp_reducer *r, int i) {
    ddp_comm_req *req = NULL;
    DDP_CHECK(scatter_start(r, i, &req));
    DDP_CHECK(ddp_comm_wait(r->comm, req));
    DDP_CHECK(scatter_finish(r, i));
    return DDP_OK;
}

/* PowerSGD: bucket i summed over the ranks in place (compressed where the step
 * compresses), blocking; sharded, this rank's part of the sum then goes into the shard. */
static ddp_status compressed_bucket(ddp_reducer *r, int i) {
    bucket *bk = &r->buckets[i];
    const char *const sites[2] = {bk->site, bk->q_site};
    DDP_CHECK(ddp_powersgd_allreduce(r->psgd, r->comm, r->grads, bk->begin, bk->end, sites));
    if (!r->shard) return DDP_OK;
    size_t mine = r->counts[(size_t)i * (size_t)r->world + (size_t)r->rank];
    size_t from = bk->begin > r->shard_begin ? bk->begin : r->shard_begin;
    if (mine > 0) memcpy(r->shard + r->dst[i], r->grads + from, mine * sizeof(float));
    bk->sent = 1;
    return DDP_OK;
}

/* Sharded: all-gather of bucket i of the parameters, in place. The bucket's blocks in
 * rank order are contiguous: rank q's is its part of shard q. Queued with a request where
 * the comm can (req non-NULL), else complete on return. */
static ddp_status gather_start(ddp_reducer *r, int i, ddp_comm_req **req) {
    DDP_CHECK(ddp_comm_iallgatherv_at(r->comm, r->buckets[i].gather_site,
                                      r->params + r->buckets[i].begin,
                                      r->counts + (size_t)i * (size_t)r->world, DDP_F32, req));
    return DDP_OK;
}

static ddp_status gather_bucket(ddp_reducer *r, int i) {
    ddp_comm_req *req = NULL;
    DDP_CHECK(gather_start(r, i, &req));
    DDP_CHECK(ddp_comm_wait(r->comm, req));
    return DDP_OK;
}

/* Blocking all-reduce of gradients [begin, end), converting to and from bf16 when
 * asked; `site` names it in the flight recorder. Called by the communication thread, or
 * by finish() without overlap. */
static ddp_status reduce_blocking(ddp_reducer *r, size_t begin, size_t end, const char *site) {
    size_t count = end - begin;
    float *g = r->grads + begin;
    if (r->opt.grad_dtype == DDP_BF16) {
        uint16_t *w = r->wire + begin;
        DDP_CHECK(ddp_backend_f32_to_bf16(r->backend, g, w, count));
        DDP_CHECK(ddp_comm_allreduce_at(r->comm, site, w, count, DDP_BF16, DDP_SUM));
        DDP_CHECK(ddp_backend_bf16_to_f32(r->backend, w, g, count));
    } else {
        DDP_CHECK(ddp_comm_allreduce_at(r->comm, site, g, count, DDP_F32, DDP_SUM));
    }
    return DDP_OK;
}

static ddp_status start_bucket_nonblocking(ddp_reducer *r, int i) {
    bucket *bk = &r->buckets[i];
    size_t count = bk->end - bk->begin;
    bk->t_start = ddp_time_now();
    bk->t_end = bk->t_start - 1.0; /* not yet seen complete */
    if (r->psgd) {
        /* Two all-reduces with the products between them: blocking, here. */
        bk->req = NULL;
        bk->in_flight = 0;
        DDP_CHECK(compressed_bucket(r, i));
        bk->t_end = ddp_time_now();
        return DDP_OK;
    }
    if (r->shard) {
        /* Queued on the device where the comm can (NCCL): backward goes on while it runs,
         * and finish() orders the addition into the shard after it. On the host there is
         * no non-blocking reduce-scatter of uneven blocks: it runs here, without overlap. */
        DDP_CHECK(scatter_start(r, i, &bk->req));
        bk->in_flight = 1;
        if (!r->queued_comm) {
            DDP_CHECK(scatter_finish(r, i)); /* before the next bucket reuses the scratch */
            bk->t_end = ddp_time_now();
        }
        return DDP_OK;
    }
    if (r->opt.grad_dtype == DDP_BF16) {
        uint16_t *w = r->wire + bk->begin;
        DDP_CHECK(ddp_backend_f32_to_bf16(r->backend, r->grads + bk->begin, w, count));
        DDP_CHECK(ddp_comm_iallreduce_at(r->comm, bk->site, w, count, DDP_BF16, DDP_SUM, &bk->req));
    } else {
        DDP_CHECK(ddp_comm_iallreduce_at(r->comm, bk->site, r->grads + bk->begin, count, DDP_F32,
                                         DDP_SUM, &bk->req));
    }
    bk->in_flight = 1;
    return DDP_OK;
}

static ddp_status complete_bucket_nonblocking(ddp_reducer *r, int i) {
    bucket *bk = &r->buckets[i];
    ddp_comm_req *req = bk->req;
    bk->req = NULL;
    bk->in_flight = 0;
    DDP_CHECK(ddp_comm_wait(r->comm, req));
    if (r->shard && r->queued_comm && !r->params) DDP_CHECK(scatter_finish(r, i));
    if (r->opt.grad_dtype == DDP_BF16 && !r->shard)
        DDP_CHECK(ddp_backend_bf16_to_f32(r->backend, r->wire + bk->begin, r->grads + bk->begin,
                                          bk->end - bk->begin));
    bk->t_end = ddp_time_now();
    return DDP_OK;
}

/* ---- the communication thread ------------------------------------------------------ */

static void *comm_thread(void *arg) {
    ddp_reducer *r = arg;
    ddp_trace_thread(1, "comm");
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && r->done == r->queued)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop) break;
        int i = r->order[r->done];
        pthread_mutex_unlock(&r->mu);
        r->buckets[i].t_start = ddp_time_now();
        double cpu0 = ddp_thread_cpu_time();
        ddp_status s = DDP_OK;
        if (r->thread_status == DDP_OK)
            s = r->params  ? gather_bucket(r, i)
                : r->psgd  ? compressed_bucket(r, i)
                : r->shard ? scatter_bucket(r, i)
                           : reduce_blocking(r, r->buckets[i].begin, r->buckets[i].end,
                                             r->buckets[i].site);
        r->buckets[i].t_end = ddp_time_now();
        double cpu = ddp_thread_cpu_time() - cpu0;
        ddp_trace_span(r->params ? "allgather bucket" : "allreduce bucket", "comm",
                       r->buckets[i].t_start, r->buckets[i].t_end, 1);
        pthread_mutex_lock(&r->mu);
        if (s != DDP_OK && r->thread_status == DDP_OK) {
            /* The error state is per thread: carry the message over to finish(). */
            r->thread_status = s;
            ddp_error_save(&r->thread_error);
        }
        r->thread_cpu += cpu;
        r->done++;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* ---- set-up ---------------------------------------------------------------------- */

static ddp_status make_buckets(ddp_reducer *r, const size_t *bounds, int nb) {
    r->buckets = calloc((size_t)nb + 1, sizeof *r->buckets);
    r->order = calloc((size_t)nb + 1, sizeof *r->order);
    if (!r->buckets || !r->order) return DDP_FAIL(DDP_ERR_NOMEM, "reducer: out of memory");
    size_t first = r->opt.first_bucket_bytes / sizeof(float);
    size_t cap = r->opt.bucket_bytes / sizeof(float);
    if (first == 0) first = 1;
    if (cap == 0) cap = 1;
    /* Walk tensor boundaries from the end; close a bucket once it holds at least its
     * capacity (a tensor larger than the capacity gets a bucket of its own). */
    size_t end = r->n;
    for (int i = nb - 1; i >= 0; i--) {
        size_t begin = bounds[i];
        size_t want = r->n_buckets == 0 || begin < r->opt.tail_elems ? first : cap;
        if (end - begin >= want || i == 0) {
            r->buckets[r->n_buckets++] = (bucket){.begin = begin, .end = end};
            end = begin;
        }
    }
    if (end != 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "reducer: boundaries do not start at 0");
    for (int i = 0; i < r->n_buckets; i++) {
        r->buckets[i].site = ddp_flight_site("reducer bucket", "reducer bucket %d", i);
        r->buckets[i].gather_site =
            ddp_flight_site("parameter gather bucket", "parameter gather bucket %d", i);
        r->buckets[i].q_site =
            ddp_flight_site("reducer bucket Q", "reducer bucket %d (PowerSGD Q)", i);
    }
    return DDP_OK;
}

ddp_status ddp_reducer_create(ddp_comm *comm, ddp_backend *b, float *grads, size_t n,
                              const size_t *boundaries, int n_boundaries,
                              const ddp_reducer_options *opt, ddp_reducer **out) {
    *out = NULL;
    if (n == 0 || n_boundaries < 1 || boundaries[0] != 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "reducer: %zu gradients, %d tensor boundaries", n,
                        n_boundaries);
    for (int i = 1; i < n_boundaries; i++)
        if (boundaries[i] <= boundaries[i - 1] || boundaries[i] >= n)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "reducer: tensor boundaries must ascend in [0, %zu)", n);
    if (opt->grad_dtype != DDP_F32 && opt->grad_dtype != DDP_BF16)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--grad-dtype: only fp32 and bf16 are supported");
    ddp_reducer *r = calloc(1, sizeof *r);
    if (!r) return DDP_FAIL(DDP_ERR_NOMEM, "reducer: out of memory");
    r->comm = comm;
    r->backend = b;
    r->grads = grads;
    r->n = n;
    r->opt = *opt;
    r->queued_comm = (ddp_comm_caps(comm) & DDP_COMM_CAP_DEVICE_QUEUE) != 0;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    ddp_status s = make_buckets(r, boundaries, n_boundaries);
    if (s == DDP_OK && opt->grad_dtype == DDP_BF16)
        s = ddp_backend_alloc_pages(b, n * sizeof(uint16_t), (void **)&r->wire);
    if (s == DDP_OK && r->opt.progress == DDP_PROGRESS_AUTO) {
        /* Device buffers (NCCL) progress on the GPU; MPI on the host needs a thread
         * inside MPI, which needs MPI_THREAD_MULTIPLE. */
        unsigned caps = ddp_comm_caps(comm);
        r->opt.progress = DDP_PROGRESS_TEST;
        if ((caps & DDP_COMM_CAP_HOST_PROGRESS) && (caps & DDP_COMM_CAP_THREADS))
            r->opt.progress = DDP_PROGRESS_THREAD;
    }
    if (s == DDP_OK && r->opt.progress == DDP_PROGRESS_THREAD &&
        !(ddp_comm_caps(comm) & DDP_COMM_CAP_THREADS))
        s = DDP_FAIL(DDP_ERR_UNSUPPORTED,
                     r->queued_comm
                         ? "--progress thread is for MPI, whose transfers move only while a "
                           "thread is inside the library; NCCL runs on the GPU and needs no "
                           "thread: use --progress auto"
                         : "--progress thread needs a communicator that a second thread may "
                           "call (for MPI: MPI_THREAD_MULTIPLE, which this MPI library did not "
                           "provide); use --progress test");
    if (s == DDP_OK && r->opt.overlap && r->opt.progress == DDP_PROGRESS_THREAD) {
        if (pthread_create(&r->thread, NULL, comm_thread, r) != 0)
            s = DDP_FAIL(DDP_ERR_INTERNAL, "reducer: could not start the communication thread");
        else
            r->thread_running = 1;
    }
    if (s != DDP_OK) {
        ddp_reducer_free(r);
        DDP_CHECK(s);
    }
    *out = r;
    return DDP_OK;
}

void ddp_reducer_free(ddp_reducer *r) {
    if (!r) return;
    if (r->thread_running) {
        pthread_mutex_lock(&r->mu);
        r->stop = 1;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
    }
    for (int i = 0; i < r->n_buckets; i++)
        if (r->buckets[i].in_flight) ddp_comm_wait(r->comm, r->buckets[i].req);
    ddp_backend_free_pages(r->backend, r->wire, r->n * sizeof(uint16_t));
    ddp_backend_dealloc(r->backend, r->wire_recv);
    ddp_backend_dealloc(r->backend, r->scratch);
    free(r->counts);
    free(r->dst);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->buckets);
    free(r->order);
    free(r->reported);
    free(r);
}

int ddp_reducer_num_buckets(const ddp_reducer *r) { return r->n_buckets; }

void ddp_reducer_bucket(const ddp_reducer *r, int i, size_t *begin, size_t *end) {
    *begin = r->buckets[i].begin;
    *end = r->buckets[i].end;
}

ddp_status ddp_reducer_set_shard(ddp_reducer *r, float *shard, const ddp_shard_layout *l,
                                 int release_grads) {
    int world = ddp_comm_size(r->comm), rank = ddp_comm_rank(r->comm);
    if (l->ranks != world || l->n != r->n)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "reducer: shards of %zu elements over %d ranks for %zu gradients on %d",
                        l->n, l->ranks, r->n, world);
    size_t shard_begin, shard_len;
    ddp_shard_of(l, rank, &shard_begin, &shard_len);
    r->counts = calloc((size_t)r->n_buckets * (size_t)world, sizeof *r->counts);
    r->dst = calloc((size_t)r->n_buckets, sizeof *r->dst);
    if (!r->counts || !r->dst) return DDP_FAIL(DDP_ERR_NOMEM, "reducer: out of memory");
    size_t scratch = 0;
    for (int i = 0; i < r->n_buckets; i++) {
        const bucket *bk = &r->buckets[i];
        size_t *counts = r->counts + (size_t)i * (size_t)world;
        ddp_shard_counts(l, bk->begin, bk->end, counts);
        size_t mine = counts[rank];
        /* Where this rank's part of the bucket sits in its shard. */
        r->dst[i] =
            mine > 0 ? (bk->begin > shard_begin ? bk->begin : shard_begin) - shard_begin : 0;
        if (mine > scratch) scratch = mine;
    }
    /* Queued sends are in flight together: each needs its own place (at dst[i]). */
    if (r->queued_comm) scratch = l->size;
    if (scratch > 0)
        DDP_CHECK(ddp_backend_alloc(r->backend, scratch * sizeof(float), (void **)&r->scratch));
    /* bf16 sums land at dst[i] of a shard-sized array: buckets never share a place. */
    if (r->opt.grad_dtype == DDP_BF16)
        DDP_CHECK(
            ddp_backend_alloc(r->backend, l->size * sizeof(uint16_t), (void **)&r->wire_recv));
    r->world = world;
    r->rank = rank;
    r->shard = shard;
    r->shard_size = l->size;
    r->shard_begin = shard_begin;
    r->shard_len = shard_len;
    r->release = release_grads;
    return DDP_OK;
}

ddp_status ddp_reducer_set_compressor(ddp_reducer *r, ddp_powersgd *p) {
    if (r->release || (r->shard && r->queued_comm) || !ddp_backend_is_host(r->backend))
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "--compress powersgd: the compressor works on whole buckets in host "
                        "memory (the CPU backend, --zero 0 or 1)");
    r->psgd = p;
    return DDP_OK;
}

/* ---- one backward pass ------------------------------------------------------------ */

ddp_status ddp_reducer_begin_sharded(ddp_reducer *r, int add) {
    if (!r->shard) return DDP_FAIL(DDP_ERR_INTERNAL, "reducer: not sharded");
    r->add = add;
    DDP_CHECK(ddp_reducer_begin(r));
    return DDP_OK;
}

ddp_status ddp_reducer_begin(ddp_reducer *r) {
    /* The communicator is the gather's until it is finished. */
    DDP_CHECK(ddp_reducer_finish_gather(r, NULL));
    r->launched = 0;
    r->n_reported = 0;
    for (int i = 0; i < r->n_buckets; i++) {
        r->buckets[i].pending = r->buckets[i].end - r->buckets[i].begin;
        r->buckets[i].launched = 0;
        r->buckets[i].sent = 0;
    }
    if (r->thread_running) {
        pthread_mutex_lock(&r->mu);
        r->queued = r->done = 0;
        r->thread_cpu = 0.0;
        r->thread_status = DDP_OK;
        pthread_mutex_unlock(&r->mu);
    }
    return DDP_OK;
}

/* Starts bucket i: hands it to the thread, or starts a non-blocking all-reduce. */
static ddp_status launch(ddp_reducer *r, int i) {
    r->buckets[i].launched = 1;
    r->order[r->launched++] = i;
    if (r->thread_running) {
        pthread_mutex_lock(&r->mu);
        r->queued = r->launched;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        return DDP_OK;
    }
    DDP_CHECK(start_bucket_nonblocking(r, i));
    return DDP_OK;
}

/* Records [begin, end) as reported in this pass; a range that overlaps an earlier report
 * is an error. The list stays sorted, so the check is a binary search. */
static ddp_status record_report(ddp_reducer *r, size_t begin, size_t end) {
    int lo = 0, hi = r->n_reported; /* first index whose range ends after begin */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (r->reported[mid].end <= begin)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < r->n_reported && r->reported[lo].begin < end)
        return DDP_FAIL(DDP_ERR_INTERNAL,
                        "reducer: gradients [%zu, %zu) reported final twice in one backward pass "
                        "(they overlap [%zu, %zu), reported before): a model reports each "
                        "range once, after its last contribution",
                        begin, end, r->reported[lo].begin, r->reported[lo].end);
    if (r->n_reported == r->cap_reported) {
        int cap = r->cap_reported ? 2 * r->cap_reported : 64;
        range *grown = realloc(r->reported, (size_t)cap * sizeof *grown);
        if (!grown) return DDP_FAIL(DDP_ERR_NOMEM, "reducer: out of memory");
        r->reported = grown;
        r->cap_reported = cap;
    }
    memmove(&r->reported[lo + 1], &r->reported[lo],
            (size_t)(r->n_reported - lo) * sizeof *r->reported);
    r->reported[lo] = (range){begin, end};
    r->n_reported++;
    return DDP_OK;
}

ddp_status ddp_reducer_ready(void *reducer, size_t offset, size_t count) {
    ddp_reducer *r = reducer;
    if (!r->opt.overlap || r->opt.skip || count == 0) return DDP_OK;
    if (offset > r->n || count > r->n - offset)
        return DDP_FAIL(DDP_ERR_INTERNAL,
                        "reducer: gradients [%zu, %zu) reported final lie outside the buffer "
                        "of %zu",
                        offset, offset + count, r->n);
    size_t end = offset + count;
    DDP_CHECK(record_report(r, offset, end));
    /* Buckets run from the end of the buffer (index 0) to its start; those that this
     * range completes start in that order, the same on every rank. */
    for (int i = 0; i < r->n_buckets; i++) {
        bucket *bk = &r->buckets[i];
        size_t lo = bk->begin > offset ? bk->begin : offset;
        size_t hi = bk->end < end ? bk->end : end;
        if (lo >= hi) continue;
        bk->pending -= hi - lo;
        if (bk->pending == 0) DDP_CHECK(launch(r, i));
    }
    if (!r->thread_running) {
        /* Give MPI a chance to move the buckets already in flight. */
        for (int k = 0; k < r->launched; k++) {
            bucket *bk = &r->buckets[r->order[k]];
            int done = 1;
            if (bk->req && bk->t_end < bk->t_start) {
                DDP_CHECK(ddp_comm_test(r->comm, bk->req, &done));
                if (done) bk->t_end = ddp_time_now(); /* first seen complete */
            }
        }
    }
    return DDP_OK;
}

int ddp_reducer_num_launched(const ddp_reducer *r) { return r->launched; }

ddp_status ddp_reducer_finish(ddp_reducer *r, ddp_reducer_stats *stats) {
    double t0 = ddp_time_now(), cpu0 = ddp_thread_cpu_time(), thread_cpu = 0.0;
    ddp_status s = DDP_OK;
    if (r->opt.skip) {
        /* Sharded: the shard takes this rank's own gradients, as if it were alone. */
        if (r->shard && r->shard_len > 0)
            DDP_CHECK(ddp_backend_copy(r->backend, r->shard, r->grads + r->shard_begin,
                                       r->shard_len * sizeof(float), DDP_COPY_D2D));
        if (stats) *stats = (ddp_reducer_stats){.n_buckets = r->n_buckets};
        return DDP_OK;
    }
    if (!r->opt.overlap) {
        /* The unbucketed path: one all-reduce of the whole buffer after backward (sharded:
         * the buckets' reduce-scatters one after another). */
        if (r->psgd)
            for (int i = 0; i < r->n_buckets; i++)
                DDP_CHECK(compressed_bucket(r, i));
        else if (r->shard)
            for (int i = 0; i < r->n_buckets; i++)
                DDP_CHECK(scatter_bucket(r, i));
        else
            DDP_CHECK(reduce_blocking(r, 0, r->n, "reducer (all buckets, no overlap)"));
        double t = ddp_time_now() - t0;
        if (stats)
            *stats = (ddp_reducer_stats){.t_comm = t,
                                         .t_exposed = t,
                                         .t_comm_cpu = ddp_thread_cpu_time() - cpu0,
                                         .n_buckets = 1};
        return DDP_OK;
    }
    /* Buckets whose gradients were not all reported (a model that reports nothing, or
     * parameters without gradients): the caller's call to finish says they are final. */
    for (int i = 0; s == DDP_OK && i < r->n_buckets; i++)
        if (!r->buckets[i].launched) s = launch(r, i);
    if (r->thread_running) {
        pthread_mutex_lock(&r->mu);
        while (r->done < r->launched)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->thread_status != DDP_OK && s == DDP_OK)
            s = ddp_error_restore(&r->thread_error, __FILE__, __LINE__);
        thread_cpu = r->thread_cpu;
        pthread_mutex_unlock(&r->mu);
    } else {
        /* Wait for every bucket even after a failure, so none is left in flight. */
        for (int k = 0; k < r->launched; k++) {
            int i = r->order[k];
            bucket *bk = &r->buckets[i];
            if (!bk->in_flight) continue;
            int seen_done = bk->t_end >= bk->t_start;
            double t_seen = bk->t_end;
            ddp_status w = complete_bucket_nonblocking(r, i);
            if (seen_done) bk->t_end = t_seen;
            if (w == DDP_OK)
                w = ddp_trace_span("allreduce bucket", "comm", bk->t_start, bk->t_end, 1);
            if (s == DDP_OK) s = w;
        }
    }
    DDP_CHECK(s);
    if (stats) {
        stats->t_exposed = ddp_time_now() - t0;
        /* The thread's CPU, or (test mode) what the waits here cost; finish() only
         * sleeps on a condition variable in thread mode. */
        stats->t_comm_cpu = r->thread_running ? thread_cpu : ddp_thread_cpu_time() - cpu0;
        stats->t_comm = 0.0;
        for (int i = 0; i < r->n_buckets; i++)
            stats->t_comm += r->buckets[i].t_end - r->buckets[i].t_start;
        stats->n_buckets = r->n_buckets;
    }
    return DDP_OK;
}

/* ---- the parameters' all-gather ------------------------------------------------------ */

/* Completes the queued gathers of the first `need` buckets of the gather order: the
 * backend's later work waits for them (the host does not). */
static ddp_status gather_wait_first(ddp_reducer *r, int need) {
    ddp_status s = DDP_OK;
    for (int k = 0; k < need; k++) {
        bucket *bk = &r->buckets[r->order[k]];
        if (!bk->in_flight) continue;
        ddp_comm_req *req = bk->req;
        bk->req = NULL;
        bk->in_flight = 0;
        ddp_status w = ddp_comm_wait(r->comm, req);
        if (s == DDP_OK) s = w;
    }
    return s;
}

static ddp_status gather_wait_all(ddp_reducer *r) { return gather_wait_first(r, r->n_buckets); }

ddp_status ddp_reducer_start_gather(ddp_reducer *r, float *params) {
    if (!r->shard) return DDP_FAIL(DDP_ERR_INTERNAL, "reducer: a gather needs shards");
    DDP_CHECK(ddp_reducer_finish_gather(r, NULL));
    r->gather_wait = 0.0;
    /* Bucket 0 is at the end of the buffer: forward wants the last one first. */
    for (int k = 0; k < r->n_buckets; k++)
        r->order[k] = r->n_buckets - 1 - k;
    r->launched = r->n_buckets;
    if (r->thread_running) {
        pthread_mutex_lock(&r->mu);
        r->params = params;
        r->done = 0;
        r->thread_cpu = 0.0;
        r->thread_status = DDP_OK;
        r->queued = r->n_buckets;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        return DDP_OK;
    }
    r->params = params;
    ddp_status s = DDP_OK;
    /* Queued on the device where the comm can (NCCL): each layer of the next forward waits
     * for its own buckets only (ddp_reducer_wait_params). On the host they run here. */
    for (int k = 0; k < r->n_buckets; k++) {
        bucket *bk = &r->buckets[r->order[k]];
        bk->t_start = ddp_time_now();
        if (s == DDP_OK) s = gather_start(r, r->order[k], &bk->req);
        bk->in_flight = s == DDP_OK && bk->req != NULL;
        bk->t_end = ddp_time_now();
    }
    if (s != DDP_OK) {
        ddp_status w = gather_wait_all(r);
        r->params = NULL;
        (void)w; /* the first error is the one to report */
    }
    DDP_CHECK(s);
    return DDP_OK;
}

/* Buckets of the gather order that hold parameters before `end`: they come first. */
static int gather_needed(const ddp_reducer *r, size_t end) {
    int k = 0;
    while (k < r->n_buckets && r->buckets[r->order[k]].begin < end)
        k++;
    return k;
}

ddp_status ddp_reducer_wait_params(void *reducer, size_t end) {
    ddp_reducer *r = reducer;
    if (!r->params) return DDP_OK;
    int need = gather_needed(r, end);
    if (!r->thread_running) {
        /* Queued gathers: order this layer's work after its buckets' (no host wait). */
        DDP_CHECK(gather_wait_first(r, need));
        return DDP_OK;
    }
    double t0 = ddp_time_now();
    pthread_mutex_lock(&r->mu);
    /* A failed bucket stops the wait; finish_gather, which every path reaches before the
     * next collective, reports it. */
    while (r->done < need && r->thread_status == DDP_OK)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    r->gather_wait += ddp_time_now() - t0;
    return DDP_OK;
}

ddp_status ddp_reducer_finish_gather(ddp_reducer *r, ddp_reducer_stats *stats) {
    if (stats) *stats = (ddp_reducer_stats){.n_buckets = r->n_buckets};
    if (!r->params) return DDP_OK;
    double t0 = ddp_time_now();
    ddp_status s = DDP_OK;
    if (r->thread_running) {
        pthread_mutex_lock(&r->mu);
        while (r->done < r->launched)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->thread_status != DDP_OK) s = ddp_error_restore(&r->thread_error, __FILE__, __LINE__);
        if (stats) stats->t_comm_cpu = r->thread_cpu;
        pthread_mutex_unlock(&r->mu);
    } else {
        s = gather_wait_all(r);
    }
    r->params = NULL;
    DDP_CHECK(s);
    if (stats) {
        stats->t_exposed = r->gather_wait + (ddp_time_now() - t0);
        for (int i = 0; i < r->n_buckets; i++)
            stats->t_comm += r->buckets[i].t_end - r->buckets[i].t_start;
    }
    return DDP_OK;
}
