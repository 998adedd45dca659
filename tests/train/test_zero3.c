/*
 * Sharded parameters (--zero 3), under mpirun with 1, 2, 3 and 4 ranks (3: shards that do
 * not divide the parameters):
 *  - stage 3 reaches the parameters of --zero 0 on the same ranks and of one process with
 *    the whole batch, with AdamW, weight decay, clipping and 2 micro-batches, for the MLP,
 *    the GPT (its token embedding tied to the output projection: a piece of the first and
 *    the last unit) and the CNN (batch norm: the running statistics too); bitwise the same
 *    whatever the gathers held at once (--gathers 1, 2, 3) and with --keep-gathered, since
 *    the schedule of gathers changes no sum;
 *  - the GPT in parts: with --recompute and buckets small enough that each of a block's
 *    linear maps is cut into row chunks (a unit and a bucket boundary each), the same;
 *  - residency: a rank holds no pages of other ranks' parameters except those of the units
 *    it is using or has prefetched (checked at every unit's forward and backward through a
 *    wrapped unit hook, with mincore), and none at all once settled; the units' uses come
 *    in the order the model announces (ddp_model_unit_uses), recomputation included;
 *  - the export: gathered a unit at a time and streamed to the file by rank 0, the trained
 *    floats bit for bit, and no page outside the shard resident after it;
 *  - memory accounting: the parameters of the shard and of the largest units at most;
 *  - non-finite gradients are skipped alike on every rank.
 *
 * Tolerances as in test_zero.c: SPREAD_MARGIN times the one-process run's rounding spread.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "ddp/checkpoint.h"
#include "ddp/shard.h"
#include "ddp/train.h"
#include "synthetic.h"

static ddp_backend *backend;
static ddp_comm *world_comm, *local_comm;
static ddp_dataset train_set, test_set, img_train, img_test;
static ddp_text text;
static int rank, world;

/* AdamW with weight decay, clipping that binds, 2 micro-batches, a batch 1 to 4 ranks
 * divide. */
static ddp_train_config adamw(ddp_train_config c) {
    c.accum = 2;
    c.optim.kind = DDP_OPTIM_ADAMW;
    c.optim.weight_decay = 0.01f;
    c.clip_norm = 0.5f;
    return c;
}

static ddp_train_config mlp_config(void) {
    ddp_train_config c = small_mlp_config(25, 5);
    c.global_batch = 48;
    c.sched.base_lr = 3e-3f;
    return adamw(c);
}

static ddp_train_config gpt_config(void) {
    ddp_train_config c = tiny_gpt_config(6, 3);
    c.global_batch = 24;
    return adamw(c);
}

static ddp_train_config cnn_config(void) {
    ddp_train_config c = tiny_cnn_config(6, 3);
    c.global_batch = 24;
    c.sched.base_lr = 3e-3f;
    return adamw(c);
}

static ddp_train_data data_of(const ddp_train_config *c) {
    int img = c->model.kind == DDP_MODEL_CNN;
    return (ddp_train_data){
        .train = img ? img_train : train_set, .test = img ? img_test : test_set, .text = text};
}

/* Trains cfg over comm to the end; returns its parameters, then its buffers (malloc'd, n
 * floats in all, np of them parameters: np may be NULL). skipped (may be NULL) gets the steps
 * skipped for non-finite gradients. */
static float *train_np(ddp_train_config cfg, ddp_comm *comm, size_t *n, size_t *np_out,
                       int64_t *skipped) {
    ddp_trainer *t = NULL;
    ddp_train_data data = data_of(&cfg);
    if (ddp_trainer_create(&cfg, backend, comm, comm, &data, &t) != DDP_OK)
        fail_msg("trainer_create: %s", ddp_error_trace_str());
    ddp_model *m = ddp_trainer_model(t);
    size_t np = ddp_model_num_params(m), nb = ddp_model_num_buffer_elems(m);
    ddp_step_stats st;
    if (skipped) *skipped = 0;
    for (int64_t i = 0; i < ddp_trainer_total_steps(t); i++) {
        if (ddp_trainer_step(t, &st) != DDP_OK) fail_msg("step: %s", ddp_error_trace_str());
        if (skipped) *skipped += st.skipped;
    }
    double accuracy, loss;
    /* An evaluation too: every rank runs as many forward passes, gathering alike. */
    if (ddp_trainer_evaluate(t, &accuracy, &loss) != DDP_OK)
        fail_msg("evaluate: %s", ddp_error_trace_str());
    float *p = malloc((np + nb) * sizeof *p);
    assert_non_null(p);
    OK(ddp_trainer_get_params(t, p));
    OK(ddp_backend_copy(backend, p + np, ddp_model_buffers(m), nb * sizeof *p, DDP_COPY_D2H));
    *n = np + nb;
    if (np_out) *np_out = np;
    ddp_trainer_free(t);
    return p;
}

static float *train(ddp_train_config cfg, ddp_comm *comm, size_t *n, int64_t *skipped) {
    return train_np(cfg, comm, n, NULL, skipped);
}

/* Stage 3 of c on all ranks against stage 0 on all ranks and against `one` on one process
 * (their first `compared` floats: the parameters, and the buffers where they match); the
 * gathers' schedules against each other, bitwise. */
static void reaches(ddp_train_config c, ddp_train_config one, int with_buffers, const char *what) {
    size_t n, n1, np;
    float *single = train_np(one, local_comm, &n, &np, NULL);
    ddp_train_data data = data_of(&c);
    double spread =
        rounding_spread(one, backend, local_comm, &data.train, &data.test, &text, single);
    assert_true(spread > 0.0 && spread < 1e-3);
    double tol = SPREAD_MARGIN * spread;
    float *replicated = train(c, world_comm, &n1, NULL);
    ddp_train_config z = c;
    z.zero = 3;
    float *p = train(z, world_comm, &n1, NULL);
    assert_int_equal(n1, n);
    double err = rel_error(p, single, with_buffers ? n : np), err0 = rel_error(p, replicated, n);
    if (rank == 0)
        print_message("%s --zero 3 on %d rank(s): relative error %.3g vs one process, %.3g vs "
                      "--zero 0 (tolerance %.3g)\n",
                      what, world, err, err0, tol);
    assert_true(err <= tol);
    assert_true(err0 <= tol);
    assert_same_on_all_ranks(world_comm, p, n);
    /* Other schedules of the same gathers: the same sums, so the same bits. */
    for (int g = 1; g <= 4; g++) {
        ddp_train_config y = z;
        y.gathers = g <= 3 ? g : 2;
        y.keep_gathered = g == 4;
        float *q = train(y, world_comm, &n1, NULL);
        if (memcmp(p, q, n * sizeof *p) != 0)
            fail_msg("%s: --gathers %d%s gives other bits than --gathers 2", what, y.gathers,
                     y.keep_gathered ? " --keep-gathered" : "");
        free(q);
    }
    free(p);
    free(replicated);
    free(single);
}

static void mlp_stage3_reaches_the_replicated_parameters(void **state) {
    reaches(mlp_config(), mlp_config(), 1, "mlp");
}

static void gpt_stage3_reaches_the_replicated_parameters(void **state) {
    reaches(gpt_config(), gpt_config(), 1, "gpt");
}

/* Buckets of 64 floats: every linear map of the blocks in chunks of 2 rows (32 floats), a
 * unit each, with the blocks recomputed (each chunk gathered for the recomputation too). */
static ddp_train_config gpt_parts_config(void) {
    ddp_train_config c = gpt_config();
    c.model.recompute = 1;
    c.reducer.bucket_bytes = 64 * sizeof(float);
    return c;
}

static void gpt_in_parts_reaches_the_replicated_parameters(void **state) {
    reaches(gpt_parts_config(), gpt_config(), 1, "gpt in parts");
}

static void cnn_stage3_reaches_the_replicated_parameters(void **state) {
    /* Batch norm normalizes each micro-batch on its own: W ranks of 2 micro-batches see the
     * samples that one process of 2 W micro-batches does (test_equivalence.c), and reach its
     * parameters; the running statistics (one momentum step per micro-batch in a row there,
     * averaged over ranks here) are compared with stage 0 on the same ranks. */
    ddp_train_config one = cnn_config();
    one.accum = 2 * world;
    reaches(cnn_config(), one, 0, "cnn");
    /* With --sync-bn the statistics and their all-reduces in forward and backward run on
     * the model's communicator beside the gathers' and the reducer's. */
    ddp_train_config sync = cnn_config();
    sync.model.sync_bn = 1;
    size_t n, n3;
    float *replicated = train(sync, world_comm, &n, NULL);
    sync.zero = 3;
    float *p = train(sync, world_comm, &n3, NULL);
    ddp_train_data data = data_of(&one);
    double tol = SPREAD_MARGIN * rounding_spread(cnn_config(), backend, local_comm, &data.train,
                                                 &data.test, &text, replicated);
    double err = rel_error(p, replicated, n);
    if (rank == 0)
        print_message("cnn --sync-bn --zero 3 on %d rank(s): %.3g from --zero 0, parameters and "
                      "running statistics\n",
                      world, err);
    assert_true(err <= tol);
    free(p);
    free(replicated);
}

/* ---- residency ---------------------------------------------------------------------------- */

typedef struct {
    ddp_unit_fn inner;
    void *inner_ctx;
    ddp_model *m;
    size_t shard_begin, shard_end;
    int window;
    int *uses, n_uses, at; /* a micro-batch's unit uses; the next one's place */
    int checks, violations, out_of_order;
} watch;

/* Whether the page at byte address pg of the parameters overlaps [a, b) (elements). */
static int page_overlaps(const float *base, uintptr_t pg, size_t page, size_t a, size_t b) {
    uintptr_t lo = (uintptr_t)(base + a), hi = (uintptr_t)(base + b);
    return a < b && lo < pg + page && hi > pg;
}

/* Whether the page overlaps unit u's parameters (its own range and its shared tensors). */
static int page_of_unit(ddp_model *m, int u, uintptr_t pg, size_t page) {
    const float *base = ddp_model_params(m);
    size_t b, e;
    int shared[8];
    int ns = ddp_model_unit_params(m, u, &b, &e, shared, 8);
    if (page_overlaps(base, pg, page, b, e)) return 1;
    for (int i = 0; i < ns && i < 8; i++) {
        const ddp_param_view *v = ddp_model_view(m, shared[i]);
        if (page_overlaps(base, pg, page, v->offset, v->offset + v->count)) return 1;
    }
    return 0;
}

/* Counts the resident pages of the parameters that lie outside this rank's shard and
 * outside the units allowed[0..n_allowed). */
static int stray_pages(watch *w, const int *allowed, int n_allowed) {
    const float *base = ddp_model_params(w->m);
    size_t np = ddp_model_num_params(w->m), page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)base / page * page;
    uintptr_t hi = ((uintptr_t)(base + np) + page - 1) / page * page;
    size_t pages = (hi - lo) / page;
    unsigned char *vec = malloc(pages);
    assert_non_null(vec);
    assert_int_equal(mincore((void *)lo, hi - lo, vec), 0);
    int stray = 0;
    for (size_t i = 0; i < pages; i++) {
        if (!(vec[i] & 1)) continue;
        uintptr_t pg = lo + i * page;
        if (page_overlaps(base, pg, page, w->shard_begin, w->shard_end)) continue;
        int ok = 0;
        for (int k = 0; !ok && k < n_allowed; k++)
            ok = page_of_unit(w->m, allowed[k], pg, page);
        stray += !ok;
    }
    free(vec);
    return stray;
}

/* The wrapped hook: after the sync's own handling of a unit's use beginning, the pages
 * outside the shard belong to that unit or to the next ones the pass will use (as many as
 * the window holds), and nothing else. The uses follow the model's order, micro-batch after
 * micro-batch. */
static ddp_status watching_hook(void *ctx, int unit, ddp_unit_event ev) {
    watch *w = ctx;
    DDP_CHECK(w->inner(w->inner_ctx, unit, ev));
    if (ev != DDP_UNIT_FORWARD_BEGIN && ev != DDP_UNIT_BACKWARD_BEGIN) return DDP_OK;
    int here = w->at % w->n_uses, allowed[4], na = 0;
    if (w->uses[here] != unit) w->out_of_order++;
    allowed[na++] = unit;
    for (int k = 1; k < w->n_uses && na < w->window; k++) {
        int v = w->uses[(here + k) % w->n_uses], seen = 0;
        for (int j = 0; j < na; j++)
            seen |= allowed[j] == v;
        if (!seen) allowed[na++] = v;
    }
    w->at++;
    w->checks++;
    if (stray_pages(w, allowed, na) > 0) w->violations++;
    return DDP_OK;
}

/* Trains c (stage 3) for its steps under the watching hook with a window of `window`. */
static void watch_residency(ddp_train_config c, int window, const char *what) {
    c.zero = 3;
    c.gathers = window;
    ddp_trainer *t = NULL;
    ddp_train_data data = data_of(&c);
    OK(ddp_trainer_create(&c, backend, world_comm, world_comm, &data, &t));
    ddp_model *m = ddp_trainer_model(t);
    size_t np = ddp_model_num_params(m);
    ddp_shard_layout l = ddp_shard_layout_of(np, world);
    size_t b, len;
    ddp_shard_of(&l, rank, &b, &len);
    watch w = {.m = m, .shard_begin = b, .shard_end = b + len, .window = window};
    w.n_uses = ddp_model_unit_uses(m, 1, NULL, 0);
    w.uses = malloc((size_t)w.n_uses * sizeof *w.uses);
    assert_non_null(w.uses);
    ddp_model_unit_uses(m, 1, w.uses, w.n_uses);
    ddp_model_unit_hook(m, &w.inner, &w.inner_ctx);
    assert_non_null(w.inner);
    ddp_model_set_unit_hook(m, watching_hook, &w);
    ddp_step_stats st;
    for (int64_t i = 0; i < c.max_steps; i++)
        OK(ddp_trainer_step(t, &st));
    /* Settled (as before a checkpoint or an export): the shard's pages alone. */
    float *p = malloc(np * sizeof *p);
    OK(ddp_trainer_get_params(t, p));
    int stray = stray_pages(&w, NULL, 0);
    ddp_model_set_unit_hook(m, w.inner, w.inner_ctx);
    if (rank == 0)
        print_message("%s, --gathers %d, %d rank(s): %d units, %d unit uses checked, %d out of "
                      "order, %d with pages of units not in use; %d pages outside the shard "
                      "once settled\n",
                      what, window, world, ddp_model_num_units(m), w.checks, w.out_of_order,
                      w.violations, stray);
    assert_int_equal(w.checks, (int)c.max_steps * c.accum * w.n_uses);
    assert_true(w.n_uses >= 2 * ddp_model_num_units(m));
    assert_int_equal(w.out_of_order, 0);
    assert_int_equal(w.violations, 0);
    assert_int_equal(stray, 0);
    free(p);
    free(w.uses);
    ddp_trainer_free(t);
}

static void only_the_units_in_use_are_resident(void **state) {
    for (int window = 1; window <= 2; window++) {
        /* 4 dense layers of 64 to 128 (tens of KB each): many pages per unit. */
        ddp_train_config c = mlp_config();
        c.model.hidden.n = 3;
        c.model.hidden.v[0] = 128;
        c.model.hidden.v[1] = 96;
        c.model.hidden.v[2] = 64;
        c.max_steps = 4;
        watch_residency(c, window, "mlp");
        /* A GPT of width 128 in parts of 16 rows (8 KB, two pages), recomputed. */
        ddp_train_config g = gpt_parts_config();
        g.model.dim = 128;
        g.model.heads = 2;
        g.reducer.bucket_bytes = 2 * 2048 * sizeof(float);
        g.max_steps = 2;
        watch_residency(g, window, "gpt in parts");
    }
}

/* The export at stage 3: every rank takes part in gathering the parameters a unit at a time
 * and rank 0 streams them to the file, which holds the trained floats bit for bit; the
 * parameter buffer then holds no page outside the rank's shard (the pieces are gathered
 * into a buffer of one unit, not into the model's). */
static void export_streams_the_sharded_parameters(void **state) {
    ddp_train_config c = gpt_config();
    c.max_steps = 2;
    c.zero = 3;
    ddp_trainer *t = NULL;
    ddp_train_data data = data_of(&c);
    OK(ddp_trainer_create(&c, backend, world_comm, world_comm, &data, &t));
    ddp_step_stats st;
    for (int64_t i = 0; i < c.max_steps; i++)
        OK(ddp_trainer_step(t, &st));
    ddp_model *m = ddp_trainer_model(t);
    size_t np = ddp_model_num_params(m), nb = ddp_model_num_buffer_elems(m);
    /* Rank 0's name: only rank 0 writes and reads the file. */
    char path[96];
    snprintf(path, sizeof path, "/tmp/ddp-test-zero3-%ld.safetensors", (long)getpid());
    OK(ddp_trainer_export(t, path));
    ddp_shard_layout l = ddp_shard_layout_of(np, world);
    size_t b, len;
    ddp_shard_of(&l, rank, &b, &len);
    watch w = {.m = m, .shard_begin = b, .shard_end = b + len, .window = 1};
    int stray = stray_pages(&w, NULL, 0);
    float *p = malloc(np * sizeof *p), *q = malloc(np * sizeof *q);
    float *bufs = malloc((nb ? nb : 1) * sizeof *bufs);
    assert_true(p && q && bufs);
    OK(ddp_trainer_get_params(t, p));
    int same = 1;
    if (rank == 0) {
        OK(ddp_safetensors_read(m, path, q, bufs));
        same = memcmp(p, q, np * sizeof *p) == 0;
        unlink(path);
        print_message("%d rank(s): export of %zu parameters %s the trained ones; %d pages "
                      "outside the shard after it\n",
                      world, np, same ? "equals" : "DIFFERS FROM", stray);
    }
    assert_true(same);
    assert_int_equal(stray, 0);
    free(p);
    free(q);
    free(bufs);
    ddp_trainer_free(t);
}

/* ---- memory and non-finite gradients ------------------------------------------------------- */

static void memory_is_the_shard_and_the_units_in_flight(void **state) {
    ddp_train_config c = gpt_config();
    c.model.layers = 4;
    c.max_steps = 1;
    c.zero = 3;
    ddp_trainer *t = NULL;
    ddp_train_data data = data_of(&c);
    OK(ddp_trainer_create(&c, backend, world_comm, world_comm, &data, &t));
    ddp_model *m = ddp_trainer_model(t);
    size_t np = ddp_model_num_params(m), big[2] = {0, 0};
    for (int u = 0; u < ddp_model_num_units(m); u++) {
        size_t b, e;
        int shared[8];
        int ns = ddp_model_unit_params(m, u, &b, &e, shared, 8);
        size_t n = e - b;
        for (int i = 0; i < ns; i++)
            n += ddp_model_view(m, shared[i])->count;
        if (n > big[0]) {
            big[1] = big[0];
            big[0] = n;
        } else if (n > big[1]) {
            big[1] = n;
        }
    }
    ddp_shard_layout l = ddp_shard_layout_of(np, world);
    ddp_memory_use mem;
    ddp_trainer_memory(t, 0, &mem);
    size_t b, len;
    ddp_shard_of(&l, rank, &b, &len);
    size_t want = (len + big[0] + big[1]) * sizeof(float);
    if (want > np * sizeof(float)) want = np * sizeof(float);
    if (rank == 0)
        print_message("%d rank(s): parameters %zu of %zu bytes per rank (shard %zu + two "
                      "largest units %zu)\n",
                      world, mem.params, np * sizeof(float), len * sizeof(float),
                      (big[0] + big[1]) * sizeof(float));
    assert_int_equal(mem.params, want);
    /* A plan for 8 ranks: an eighth of the parameters and the same two units. */
    ddp_trainer_memory(t, 8, &mem);
    ddp_shard_layout l8 = ddp_shard_layout_of(np, 8);
    assert_int_equal(mem.params, (l8.size + big[0] + big[1]) * sizeof(float));
    ddp_trainer_free(t);
}

static void nonfinite_gradients_are_skipped_on_every_rank(void **state) {
    ddp_train_config c = mlp_config();
    c.optim.kind = DDP_OPTIM_SGD;
    c.clip_norm = 0.0f;
    c.sched.base_lr = 1e12f;
    c.sched.warmup_steps = 0;
    c.max_steps = 8;
    c.on_nonfinite = DDP_NONFINITE_SKIP;
    c.zero = 3;
    size_t n;
    int64_t skipped;
    float *p = train(c, world_comm, &n, &skipped);
    assert_true(skipped > 0);
    int64_t all = skipped;
    assert_int_equal(ddp_comm_allreduce(world_comm, &all, 1, DDP_I64, DDP_MAX), DDP_OK);
    assert_int_equal(all, skipped);
    assert_same_on_all_ranks(world_comm, p, n);
    free(p);
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &backend, &world_comm, &rank, &world);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, backend, &local_comm), DDP_OK);
    synthetic_dataset(&train_set, 960, 20, 4, 7);
    synthetic_dataset(&test_set, 333, 20, 4, 8);
    synthetic_text(&text, 6000, 9);
    synthetic_dataset(&img_train, 320, 36, 4, 10);
    synthetic_dataset(&img_test, 75, 36, 4, 11);
    img_train.height = img_train.width = img_test.height = img_test.width = 6;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mlp_stage3_reaches_the_replicated_parameters),
        cmocka_unit_test(gpt_stage3_reaches_the_replicated_parameters),
        cmocka_unit_test(gpt_in_parts_reaches_the_replicated_parameters),
        cmocka_unit_test(cnn_stage3_reaches_the_replicated_parameters),
        cmocka_unit_test(only_the_units_in_use_are_resident),
        cmocka_unit_test(export_streams_the_sharded_parameters),
        cmocka_unit_test(memory_is_the_shard_and_the_units_in_flight),
        cmocka_unit_test(nonfinite_gradients_are_skipped_on_every_rank),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_dataset_free(&img_train);
    ddp_dataset_free(&img_test);
    ddp_text_free(&text);
    ddp_comm_free(local_comm);
    return mpi_test_finish(failed, backend, world_comm);
}
