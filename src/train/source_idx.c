/*
 * Batches of labelled samples (Fashion-MNIST's IDX images): the distributed sampler
 * hands each rank its share of every global batch; the samples live on the device once,
 * and each micro-batch is gathered from them by index. Evaluation covers the test set
 * in contiguous shards, every sample once over all ranks.
 */
#include <stdlib.h>

#include "train/trainer_impl.h"

/* Evaluation and the model's activations use batches of at least this many samples (a
 * CNN's activations are some 500 times larger per sample than the MLP's). */
#define EVAL_BATCH     1000
#define EVAL_BATCH_CNN 256

static ddp_status upload(ddp_trainer *t, const void *host, size_t bytes, void **dev) {
    if (ddp_backend_is_host(t->backend)) {
        *dev = (void *)host; /* the CPU backend computes on the dataset's own memory */
        return DDP_OK;
    }
    DDP_CHECK(ddp_backend_alloc(t->backend, bytes, dev));
    DDP_CHECK(ddp_backend_copy(t->backend, *dev, host, bytes, DDP_COPY_H2D));
    return DDP_OK;
}

static ddp_status idx_setup(ddp_trainer *t) {
    const ddp_dataset *train = t->train, *test = t->test;
    ddp_backend *b = t->backend;
    if (t->cfg.model.kind == DDP_MODEL_GPT)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--model %s trains on a text (--text FILE), not on labelled images",
                        ddp_model_kind_name(t->cfg.model.kind));
    if (test->dim != train->dim || test->num_classes != train->num_classes)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "test set (%zu features, %d classes) does not match the training set "
                        "(%zu features, %d classes)",
                        test->dim, test->num_classes, train->dim, train->num_classes);
    t->dim = train->dim;
    t->num_classes = train->num_classes;
    t->cfg.model.input_dim = train->dim;
    t->cfg.model.num_classes = train->num_classes;
    /* Images (one channel): a CNN needs their geometry; without it, one row of pixels. */
    t->cfg.model.height = train->height ? (int)train->height : 1;
    t->cfg.model.width = train->width ? (int)train->width : (int)train->dim;
    t->cfg.model.channels = 1;
    DDP_CHECK(ddp_sampler_init(&t->sampler, train->n, t->cfg.global_batch, t->rank, t->world,
                               t->cfg.seed, t->cfg.shuffle));
    size_t eval = t->cfg.model.kind == DDP_MODEL_CNN ? EVAL_BATCH_CNN : EVAL_BATCH;
    t->max_batch = t->cfg.micro_batch > eval ? t->cfg.micro_batch : eval;
    t->owns_device_data = !ddp_backend_is_host(b);
    DDP_CHECK(upload(t, train->x, train->n * t->dim * sizeof(float), (void **)&t->d_train_x));
    DDP_CHECK(upload(t, train->y, train->n * sizeof(int32_t), (void **)&t->d_train_y));
    DDP_CHECK(upload(t, test->x, test->n * t->dim * sizeof(float), (void **)&t->d_test_x));
    DDP_CHECK(upload(t, test->y, test->n * sizeof(int32_t), (void **)&t->d_test_y));
    size_t local = ddp_trainer_max_local_batch(t);
    t->h_idx = malloc(local * sizeof(int32_t));
    if (!t->h_idx) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    DDP_CHECK(ddp_backend_alloc(b, local * sizeof(int32_t), (void **)&t->d_idx));
    DDP_CHECK(ddp_backend_alloc(b, t->max_batch * t->dim * sizeof(float), (void **)&t->d_x));
    DDP_CHECK(ddp_backend_alloc(b, t->max_batch * sizeof(int32_t), (void **)&t->d_y));
    return DDP_OK;
}

static size_t idx_positions(const ddp_trainer *t) { return 1; }

static ddp_status idx_next(ddp_trainer *t) {
    DDP_CHECK(ddp_sampler_next(&t->sampler, t->h_idx, &t->epoch));
    DDP_CHECK(ddp_backend_copy(t->backend, t->d_idx, t->h_idx,
                               t->sampler.local_batch * sizeof(int32_t), DDP_COPY_H2D));
    return DDP_OK;
}

static ddp_status idx_micro_batch(ddp_trainer *t, int k, ddp_batch *out) {
    size_t micro = t->cfg.micro_batch;
    const int32_t *idx = t->d_idx + (size_t)k * micro;
    DDP_CHECK(ddp_backend_gather_rows(t->backend, t->d_x, t->d_train_x, idx, micro,
                                      t->dim * sizeof(float)));
    DDP_CHECK(
        ddp_backend_gather_rows(t->backend, t->d_y, t->d_train_y, idx, micro, sizeof(int32_t)));
    *out = (ddp_batch){.n = micro, .t = 1, .x = t->d_x, .targets = t->d_y};
    return DDP_OK;
}

static ddp_status idx_evaluate(ddp_trainer *t, double sums[3], int full) {
    size_t begin, count;
    ddp_shard_range(t->test->n, t->rank, t->world, &begin, &count);
    DDP_CHECK(ddp_backend_zero(t->backend, t->d_stats, 2 * sizeof(float)));
    for (size_t i = 0; i < count; i += t->max_batch) {
        size_t n = count - i < t->max_batch ? count - i : t->max_batch;
        ddp_batch batch = {.n = n,
                           .t = 1,
                           .x = t->d_test_x + (begin + i) * t->dim,
                           .targets = t->d_test_y + begin + i};
        DDP_CHECK(ddp_model_forward(t->model, &batch, DDP_MODE_EVAL, 0.0f, t->d_stats));
    }
    float h[2];
    DDP_CHECK(ddp_backend_copy(t->backend, h, t->d_stats, sizeof h, DDP_COPY_D2H));
    sums[0] += h[0];
    sums[1] += h[1];
    sums[2] += (double)count;
    return DDP_OK;
}

static ddp_status idx_seek(ddp_trainer *t, uint64_t epoch, size_t step) {
    DDP_CHECK(ddp_sampler_seek(&t->sampler, epoch, step));
    return DDP_OK;
}

static size_t idx_identify(const ddp_trainer *t, char *buf, size_t cap) {
    const ddp_dataset *d = t->train;
    int n = snprintf(buf, cap, "train=%zu dim=%zu classes=%d labels=%08x", d->n, d->dim,
                     d->num_classes, ddp_crc32(0, d->y, d->n * sizeof(int32_t)));
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap ? cap - 1 : 0;
}

static void idx_release(ddp_trainer *t) {
    ddp_backend *b = t->backend;
    if (t->owns_device_data) {
        ddp_backend_dealloc(b, t->d_train_x);
        ddp_backend_dealloc(b, t->d_train_y);
        ddp_backend_dealloc(b, t->d_test_x);
        ddp_backend_dealloc(b, t->d_test_y);
    }
    ddp_backend_dealloc(b, t->d_idx);
    ddp_backend_dealloc(b, t->d_x);
    ddp_backend_dealloc(b, t->d_y);
    free(t->h_idx);
}

const ddp_source_ops ddp_source_idx = {
    .kind = "samples",
    .setup = idx_setup,
    .positions = idx_positions,
    .next = idx_next,
    .micro_batch = idx_micro_batch,
    .evaluate = idx_evaluate,
    .seek = idx_seek,
    .identify = idx_identify,
    .release = idx_release,
};
