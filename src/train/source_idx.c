/*
 * Batches of labelled samples (Fashion-MNIST's IDX images): the distributed sampler
 * hands each rank its share of every global batch; the samples live on the device once,
 * and each micro-batch is gathered from them by index. Evaluation covers the test set
 * in the contiguous parts of the evaluation split, every sample once over all ranks. Its option:
 * --data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/trainer_impl.h"

/* Evaluation and the model's activations use batches of at least this many samples,
 * unless the model kind asks for fewer (ddp_model_kind_eval_batch). */
#define EVAL_BATCH 1000

typedef struct {
    ddp_source base;
    const ddp_dataset *train, *test;
    ddp_sampler sampler; /* the epoch's order and this rank's share of each batch */
    size_t dim;
    size_t eval_batch;             /* samples per evaluation forward */
    float *d_train_x, *d_test_x;   /* (n, dim): on the device, or the datasets' own arrays */
    int32_t *d_train_y, *d_test_y; /* (n) */
    int owns_device_data;
    int32_t *h_idx, *d_idx; /* (largest local batch) */
    float *d_x;             /* (max_batch, dim) */
    int32_t *d_y;           /* (max_batch) */
} idx_source;

/* ---- the data ------------------------------------------------------------------------ */

static ddp_status idx_load(const ddp_train_config *cfg, ddp_train_data *d) {
    DDP_CHECK(ddp_dataset_load_dir(cfg->data_dir, "train", &d->train));
    DDP_CHECK(ddp_dataset_load_dir(cfg->data_dir, "t10k", &d->test));
    return DDP_OK;
}

/* A dataset with the shape of Fashion-MNIST: pixels uniform in [0, 1) and labels uniform
 * over the classes, the same on every rank (fixed seed). Only the speed is measured. */
static ddp_status make_synthetic(size_t n, size_t dim, int classes, uint64_t stream,
                                 ddp_dataset *out) {
    memset(out, 0, sizeof *out);
    out->n = n;
    out->dim = dim;
    out->num_classes = classes;
    out->height = out->width = 28; /* images, for a CNN */
    out->x = malloc(n * dim * sizeof(float));
    out->y = malloc(n * sizeof(int32_t));
    if (!out->x || !out->y) {
        ddp_dataset_free(out);
        return DDP_FAIL(DDP_ERR_NOMEM, "out of memory for a synthetic dataset of %zu samples", n);
    }
    ddp_rng rng;
    ddp_rng_seed(&rng, 12345, stream);
    for (size_t i = 0; i < n * dim; i++)
        out->x[i] = ddp_rng_uniform(&rng);
    for (size_t i = 0; i < n; i++)
        out->y[i] = (int32_t)ddp_rng_below(&rng, (uint64_t)classes);
    return DDP_OK;
}

static ddp_status idx_synthetic(const ddp_train_config *cfg, ddp_train_data *d) {
    DDP_CHECK(make_synthetic(60000, 784, 10, 0, &d->train));
    DDP_CHECK(make_synthetic(1000, 784, 10, 1, &d->test));
    return DDP_OK;
}

static const char *idx_data_name(const ddp_train_config *cfg) { return cfg->data_dir; }

/* ---- training -------------------------------------------------------------------------- */

static ddp_status upload(ddp_backend *b, const void *host, size_t bytes, void **dev) {
    if (ddp_backend_is_host(b)) {
        *dev = (void *)host; /* the CPU backend computes on the dataset's own memory */
        return DDP_OK;
    }
    DDP_CHECK(ddp_backend_alloc(b, bytes, dev));
    DDP_CHECK(ddp_backend_copy(b, *dev, host, bytes, DDP_COPY_H2D));
    return DDP_OK;
}

static void idx_free(ddp_source *base, ddp_backend *b) {
    idx_source *s = (idx_source *)base;
    if (s->owns_device_data) {
        ddp_backend_dealloc(b, s->d_train_x);
        ddp_backend_dealloc(b, s->d_train_y);
        ddp_backend_dealloc(b, s->d_test_x);
        ddp_backend_dealloc(b, s->d_test_y);
    }
    ddp_backend_dealloc(b, s->d_idx);
    ddp_backend_dealloc(b, s->d_x);
    ddp_backend_dealloc(b, s->d_y);
    free(s->h_idx);
    ddp_sampler_free(&s->sampler);
    free(s);
}

static ddp_status idx_setup(idx_source *s, ddp_trainer *t) {
    const ddp_dataset *train = s->train, *test = s->test;
    ddp_backend *b = t->backend;
    if (train->n == 0 || !train->x || !test->x)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--model %s trains on labelled samples (--data DIR), and there are none",
                        ddp_model_kind_name(t->cfg.model.kind));
    if (test->dim != train->dim || test->num_classes != train->num_classes)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "test set (%zu features, %d classes) does not match the training set "
                        "(%zu features, %d classes)",
                        test->dim, test->num_classes, train->dim, train->num_classes);
    s->dim = train->dim;
    t->cfg.model.input_dim = train->dim;
    t->cfg.model.num_classes = train->num_classes;
    /* Images (one channel): a CNN needs their geometry; without it, one row of pixels. */
    t->cfg.model.height = train->height ? (int)train->height : 1;
    t->cfg.model.width = train->width ? (int)train->width : (int)train->dim;
    t->cfg.model.channels = 1;
    DDP_CHECK(ddp_sampler_init(&s->sampler, train->n, t->cfg.global_batch, t->rank, t->world,
                               t->cfg.seed, t->cfg.shuffle));
    size_t eval = ddp_model_kind_eval_batch(t->cfg.model.kind);
    s->eval_batch = eval ? eval : EVAL_BATCH;
    t->max_batch = t->cfg.micro_batch > s->eval_batch ? t->cfg.micro_batch : s->eval_batch;
    s->owns_device_data = !ddp_backend_is_host(b);
    DDP_CHECK(upload(b, train->x, train->n * s->dim * sizeof(float), (void **)&s->d_train_x));
    DDP_CHECK(upload(b, train->y, train->n * sizeof(int32_t), (void **)&s->d_train_y));
    DDP_CHECK(upload(b, test->x, test->n * s->dim * sizeof(float), (void **)&s->d_test_x));
    DDP_CHECK(upload(b, test->y, test->n * sizeof(int32_t), (void **)&s->d_test_y));
    size_t local = ddp_trainer_max_local_batch(t);
    s->h_idx = malloc(local * sizeof(int32_t));
    if (!s->h_idx) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    DDP_CHECK(ddp_backend_alloc(b, local * sizeof(int32_t), (void **)&s->d_idx));
    DDP_CHECK(ddp_backend_alloc(b, t->max_batch * s->dim * sizeof(float), (void **)&s->d_x));
    DDP_CHECK(ddp_backend_alloc(b, t->max_batch * sizeof(int32_t), (void **)&s->d_y));
    return DDP_OK;
}

static ddp_status idx_create(ddp_trainer *t, const ddp_train_data *d, ddp_source **out) {
    idx_source *s = calloc(1, sizeof *s);
    if (!s) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    s->base.ops = ddp_source_of(DDP_DATA_SAMPLES);
    s->train = &d->train;
    s->test = &d->test;
    /* Freed by the trainer through *out, also when set-up fails half-way. */
    *out = &s->base;
    DDP_CHECK(idx_setup(s, t));
    return DDP_OK;
}

static size_t idx_positions(const ddp_source *s) { return 1; }

static ddp_status idx_next(ddp_source *base, ddp_trainer *t, uint64_t *epoch) {
    idx_source *s = (idx_source *)base;
    DDP_CHECK(ddp_sampler_next(&s->sampler, s->h_idx, epoch));
    DDP_CHECK(ddp_backend_copy(t->backend, s->d_idx, s->h_idx,
                               s->sampler.local_batch * sizeof(int32_t), DDP_COPY_H2D));
    return DDP_OK;
}

static ddp_status idx_micro_batch(ddp_source *base, ddp_trainer *t, int k, ddp_batch *out) {
    idx_source *s = (idx_source *)base;
    size_t micro = t->cfg.micro_batch;
    const int32_t *idx = s->d_idx + (size_t)k * micro;
    DDP_CHECK(ddp_backend_gather_rows(t->backend, s->d_x, s->d_train_x, idx, micro,
                                      s->dim * sizeof(float)));
    DDP_CHECK(
        ddp_backend_gather_rows(t->backend, s->d_y, s->d_train_y, idx, micro, sizeof(int32_t)));
    *out = (ddp_batch){.n = micro, .t = 1, .x = s->d_x, .targets = s->d_y};
    return DDP_OK;
}

static ddp_status idx_evaluate(ddp_source *base, ddp_trainer *t, double sums[3], int full) {
    idx_source *s = (idx_source *)base;
    size_t begin, count;
    ddp_split_range(s->test->n, t->rank, t->world, &begin, &count);
    DDP_CHECK(ddp_backend_zero(t->backend, t->d_stats, 2 * sizeof(float)));
    for (size_t i = 0; i < count; i += t->max_batch) {
        size_t n = count - i < t->max_batch ? count - i : t->max_batch;
        ddp_batch batch = {.n = n,
                           .t = 1,
                           .x = s->d_test_x + (begin + i) * s->dim,
                           .targets = s->d_test_y + begin + i};
        DDP_CHECK(ddp_trainer_eval_forward(t, &batch));
    }
    float h[2];
    DDP_CHECK(ddp_backend_copy(t->backend, h, t->d_stats, sizeof h, DDP_COPY_D2H));
    sums[0] += h[0];
    sums[1] += h[1];
    sums[2] += (double)count;
    return DDP_OK;
}

static ddp_cursor idx_cursor(const ddp_source *base) {
    const ddp_sampler *p = &((const idx_source *)base)->sampler;
    return (ddp_cursor){.epoch = p->epoch,
                        .step = p->step,
                        .pos = p->pos,
                        .steps_per_epoch = p->steps_per_epoch,
                        .n = p->n};
}

static ddp_status idx_seek(ddp_source *base, uint64_t epoch, size_t step) {
    DDP_CHECK(ddp_sampler_seek(&((idx_source *)base)->sampler, epoch, step));
    return DDP_OK;
}

static ddp_status idx_set_batch(ddp_source *base, size_t global_batch) {
    DDP_CHECK(ddp_sampler_set_batch(&((idx_source *)base)->sampler, global_batch));
    return DDP_OK;
}

static ddp_status idx_seek_pos(ddp_source *base, uint64_t epoch, size_t step, size_t pos) {
    DDP_CHECK(ddp_sampler_seek_pos(&((idx_source *)base)->sampler, epoch, step, pos));
    return DDP_OK;
}

static size_t idx_identify(const ddp_source *base, char *buf, size_t cap) {
    const ddp_dataset *d = ((const idx_source *)base)->train;
    int n = snprintf(buf, cap, "train=%zu dim=%zu classes=%d labels=%08x", d->n, d->dim,
                     d->num_classes, ddp_crc32(0, d->y, d->n * sizeof(int32_t)));
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap ? cap - 1 : 0;
}

static void idx_eval_text(double accuracy, double loss, char *buf, size_t cap) {
    snprintf(buf, cap, "test accuracy %.4f, test loss %.4f", accuracy, loss);
}

static const ddp_opt idx_opts[] = {
    {.kind = DDP_OPT_HEADING, .help = "Data: labelled images"},
    {.name = "data",
     .kind = DDP_OPT_PATH,
     DDP_OPT_FIELD(ddp_train_config, data_dir),
     .arg = "DIR",
     .help = "Fashion-MNIST/MNIST IDX files (train-images-idx3-ubyte[.gz]...)",
     .def = "/usr/share/datasets/fashion-mnist",
     .per_rank = 1},
};

const ddp_source_ops ddp_source_idx = {
    .name = "labelled samples",
    .opts = idx_opts,
    .n_opts = sizeof idx_opts / sizeof *idx_opts,
    .load = idx_load,
    .synthetic = idx_synthetic,
    .data_name = idx_data_name,
    .create = idx_create,
    .free = idx_free,
    .positions = idx_positions,
    .next = idx_next,
    .micro_batch = idx_micro_batch,
    .evaluate = idx_evaluate,
    .cursor = idx_cursor,
    .seek = idx_seek,
    .set_batch = idx_set_batch,
    .seek_pos = idx_seek_pos,
    .identify = idx_identify,
    .eval_text = idx_eval_text,
};
