/* Helpers shared by the CMocka unit tests: include after <cmocka.h>. */
#ifndef DDP_TEST_UTIL_H
#define DDP_TEST_UTIL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/backend.h"
#include "ddp/comm.h"
#include "ddp/train.h"

/* The last error message contains s. */
#define assert_msg_has(s) assert_non_null(strstr(ddp_error_message(), (s)))
/* expr, a ddp call, succeeds; otherwise the test fails printing the error trace. */
#define OK(expr)                                                                                   \
    do {                                                                                           \
        ddp_status ok_s_ = (expr);                                                                 \
        if (ok_s_ != DDP_OK) print_error("%s\n%s\n", #expr, ddp_error_trace_str());                \
        assert_int_equal(ok_s_, DDP_OK);                                                           \
    } while (0)
#define assert_near(got, want, tol)                                                                \
    assert_near_at((double)(got), (double)(want), (tol), #got, __FILE__, __LINE__)

/* Fails, printing both values, unless |got - want| <= tol (NaN never passes). */
static inline void assert_near_at(double got, double want, double tol, const char *what,
                                  const char *file, int line) {
    if (!(fabs(got - want) <= tol)) {
        print_error("%s = %.9g, expected %.9g (tolerance %g)\n", what, got, want, tol);
        _fail(file, line);
    }
}

/* ||a - b|| / ||b|| over n floats, in double. */
static inline double rel_error(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num / den);
}

/* The data of a trainer (ddp_trainer_create): labelled samples or a text, as compound
 * literals that live to the end of the enclosing block (the trainer copies the struct). */
#define SAMPLES_DATA(tr, te) (&(ddp_train_data){.train = *(tr), .test = *(te)})
#define TEXT_DATA(x)         (&(ddp_train_data){.text = *(x)})

/* Everything a training run in a test can report besides its parameters. */
typedef struct {
    uint64_t perturb_seed; /* nonzero: move every initial parameter by one ulp, up or down
                            * at random from this seed (rounding_spread) */
    const ddp_text *text;  /* the text of a language model (a GPT) */
    int grads_shared;      /* out: ddp_trainer_grads_shared */
} train_extra;

/* Trains cfg to the end and returns the final parameters (malloc'd) and their number;
 * fails the test with the library's message if anything fails. extra may be NULL. */
static inline float *train_params_ex(ddp_train_config cfg, ddp_backend *b, ddp_comm *comm,
                                     ddp_comm *control, const ddp_dataset *train,
                                     const ddp_dataset *test, train_extra *extra, size_t *n) {
    ddp_trainer *t = NULL;
    ddp_train_data data = {0};
    if (train) data.train = *train;
    if (test) data.test = *test;
    if (extra && extra->text) data.text = *extra->text;
    ddp_status s = ddp_trainer_create(&cfg, b, comm, control, &data, &t);
    if (s != DDP_OK) fail_msg("trainer_create: %s", ddp_error_trace_str());
    *n = ddp_model_num_params(ddp_trainer_model(t));
    float *p = malloc(*n * sizeof(float));
    assert_non_null(p);
    if (extra && extra->perturb_seed) {
        float *dev = ddp_model_params(ddp_trainer_model(t));
        assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
        ddp_rng rng;
        ddp_rng_seed(&rng, extra->perturb_seed, 0x5eed);
        for (size_t i = 0; i < *n; i++)
            p[i] = nextafterf(p[i], (ddp_rng_u64(&rng) & 1) ? INFINITY : -INFINITY);
        assert_int_equal(ddp_backend_copy(b, dev, p, *n * sizeof(float), DDP_COPY_H2D), DDP_OK);
        assert_int_equal(ddp_backend_sync(b), DDP_OK);
    }
    if (ddp_trainer_run(t, NULL) != DDP_OK) fail_msg("run: %s", ddp_error_trace_str());
    if (extra) extra->grads_shared = ddp_trainer_grads_shared(t);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    ddp_trainer_free(t);
    return p;
}

static inline float *train_params(ddp_train_config cfg, ddp_backend *b, ddp_comm *comm,
                                  ddp_comm *control, const ddp_dataset *train,
                                  const ddp_dataset *test, size_t *n) {
    return train_params_ex(cfg, b, comm, control, train, test, NULL, n);
}

/* How far float rounding alone moves this training run on this machine: the largest
 * relative distance, over three tries, between `reference` (the final parameters of cfg
 * trained by one process over `local`) and the same run started from initial parameters
 * each moved by one ulp. The dynamics of training amplify any rounding difference the
 * same way, whether it comes from the start or from summing a gradient in another order
 * (N ranks, K micro-batches, another BLAS kernel), so a correct run in another order lands
 * within a small multiple of this (measured: at most ~1x on the OpenBLAS Haswell,
 * SkylakeX and Prescott kernels), while a wrong scale or a lost sum lands orders of
 * magnitude further. Deriving tolerances from it makes them hold on any CPU without being
 * loose. */
static inline double rounding_spread(ddp_train_config cfg, ddp_backend *b, ddp_comm *local,
                                     const ddp_dataset *train, const ddp_dataset *test,
                                     const ddp_text *text, const float *reference) {
    double spread = 0.0;
    for (uint64_t k = 1; k <= 3; k++) {
        size_t n;
        train_extra x = {.perturb_seed = k, .text = text};
        float *p = train_params_ex(cfg, b, local, local, train, test, &x, &n);
        double e = rel_error(p, reference, n);
        if (e > spread) spread = e;
        free(p);
    }
    return spread;
}

/* The tolerance of a comparison of two correct runs that differ in rounding only: a margin
 * over the measured spread (see rounding_spread). */
#define SPREAD_MARGIN 8.0

/* Fails the test on every rank unless p (n floats) holds the same bits on every rank of
 * comm (their CRCs compared). COLLECTIVE over comm. */
static inline void assert_same_on_all_ranks(ddp_comm *comm, const float *p, size_t n) {
    int world = ddp_comm_size(comm);
    uint32_t crc = ddp_crc32(0, p, n * sizeof(float));
    uint32_t *all = calloc((size_t)world, sizeof *all);
    assert_non_null(all);
    assert_int_equal(ddp_comm_allgather(comm, &crc, all, 1, DDP_U32), DDP_OK);
    for (int r = 1; r < world; r++)
        if (all[r] != all[0]) fail_msg("rank %d holds other bits than rank 0", r);
    free(all);
}

/* A log of a backward's ready reports (a ddp_grad_ready_fn: ready_log_record with the log
 * as ctx): the ranges in order; with grads, each reported range as it was at its report
 * (snapshot) and how often each element was reported (seen); fail_at makes that call
 * (1-based) fail. */
enum { READY_LOG_MAX = 512 };
typedef struct {
    int calls;
    size_t offset[READY_LOG_MAX], count[READY_LOG_MAX];
    const float *grads;  /* the model's gradients; NULL: ranges only */
    size_t np;           /* floats of grads, snapshot and seen */
    float *snapshot;     /* (np) or NULL */
    unsigned char *seen; /* (np) or NULL */
    int fail_at;         /* 0: never */
} ready_log;

static inline ddp_status ready_log_record(void *ctx, size_t offset, size_t count) {
    ready_log *r = ctx;
    if (r->calls < READY_LOG_MAX) {
        r->offset[r->calls] = offset;
        r->count[r->calls] = count;
    }
    r->calls++;
    for (size_t i = offset; r->grads && i < offset + count && i < r->np; i++) {
        if (r->seen) r->seen[i]++;
        if (r->snapshot) r->snapshot[i] = r->grads[i];
    }
    if (r->calls == r->fail_at) return DDP_FAIL(DDP_ERR_COMM, "injected failure");
    return DDP_OK;
}

/* The small MLP of the training tests (hidden 24, 12; batch 32; SGD at 0.1 after 5 warm-up
 * steps), `steps` steps, logging every `every`. */
static inline ddp_train_config small_mlp_config(int64_t steps, int every) {
    ddp_train_config c;
    ddp_train_config_defaults(&c);
    c.model.hidden.n = 2;
    c.model.hidden.v[0] = 24;
    c.model.hidden.v[1] = 12;
    c.global_batch = 32;
    c.max_steps = steps;
    c.sched.warmup_steps = 5;
    c.sched.base_lr = 0.1f;
    c.log_every = every;
    c.quiet = 1;
    return c;
}

/* A tiny GPT (2 blocks, width 16, 2 heads, context 8, batch 8 windows) that trains in
 * milliseconds, with the GPT's defaults otherwise: `steps` steps, logging and evaluating
 * every `every` steps. */
static inline ddp_train_config tiny_gpt_config(int64_t steps, int every) {
    ddp_train_config c;
    ddp_train_config_defaults_for(&c, DDP_MODEL_GPT);
    c.model.layers = 2;
    c.model.dim = 16;
    c.model.heads = 2;
    c.model.ctx = 8;
    c.global_batch = 8;
    c.max_steps = steps;
    c.sched.warmup_steps = 2;
    c.sched.base_lr = 3e-3f;
    c.sched.min_lr = 3e-4f;
    c.log_every = every;
    c.eval_every = every;
    c.quiet = 1;
    return c;
}

/* A tiny CNN (convolution stages of 4 and 6 channels, a dense head of 8; batch 16) on 6 x 6
 * images, SGD at 0.05 after 2 warm-up steps: `steps` steps, logging every `every`. */
static inline ddp_train_config tiny_cnn_config(int64_t steps, int every) {
    ddp_train_config c;
    ddp_train_config_defaults_for(&c, DDP_MODEL_CNN);
    c.model.conv.n = 2;
    c.model.conv.v[0] = 4;
    c.model.conv.v[1] = 6;
    c.model.hidden.v[0] = 8;
    c.global_batch = 16;
    c.max_steps = steps;
    c.sched.warmup_steps = 2;
    c.sched.base_lr = 0.05f;
    c.log_every = every;
    c.quiet = 1;
    return c;
}

/* Group setup and teardown: *state is a CPU backend. */
static inline int cpu_backend_setup(void **state) {
    ddp_backend_options opt = {.device = DDP_DEVICE_CPU};
    ddp_backend *b = NULL;
    if (ddp_backend_create(&opt, &b) != DDP_OK) return -1;
    *state = b;
    return 0;
}

static inline int cpu_backend_teardown(void **state) {
    ddp_backend_free(*state);
    return 0;
}

/* MPI tests: MPI, a CPU backend with one BLAS thread, the MPI comm over all ranks, and
 * rank-prefixed warnings. */
static inline void mpi_test_init(int *argc, char ***argv, ddp_backend **b, ddp_comm **world_comm,
                                 int *rank, int *world) {
    assert_int_equal(ddp_mpi_init(argc, argv), DDP_OK);
    ddp_backend_options bo = {.device = DDP_DEVICE_CPU, .threads = 1};
    assert_int_equal(ddp_backend_create(&bo, b), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, *b, world_comm), DDP_OK);
    *rank = ddp_comm_rank(*world_comm);
    *world = ddp_comm_size(*world_comm);
    ddp_log_init(*rank, *world, DDP_LOG_WARN);
}

/* The exit status of an MPI test: nonzero on every rank when cmocka failed on any (a
 * test that failed on one rank only must fail the job, not hang the others). Frees the
 * comm and backend and finalizes MPI. */
static inline int mpi_test_finish(int failed, ddp_backend *b, ddp_comm *world_comm) {
    int any = failed;
    ddp_comm_allreduce(world_comm, &any, 1, DDP_I32, DDP_MAX);
    ddp_comm_free(world_comm);
    ddp_backend_free(b);
    ddp_mpi_finalize();
    return any ? 1 : 0;
}

#endif
