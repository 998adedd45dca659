/*
 * Batches of a text for a language model: every step each rank takes its share of the
 * global batch of windows, whose offsets every rank derives from (seed, step) alone
 * (ddp_window_offsets); inputs are the window's bytes and targets the bytes one further.
 * Evaluation predicts every byte of the validation split exactly once over all ranks.
 */
#include <stdlib.h>

#include "train/trainer_impl.h"

/* Where tokens of n rows live on the device: the host arrays themselves on the CPU. */
static ddp_status to_device(ddp_trainer *t, size_t count) {
    if (ddp_backend_is_host(t->backend)) return DDP_OK;
    DDP_CHECK(
        ddp_backend_copy(t->backend, t->d_tok, t->h_tok, count * sizeof(int32_t), DDP_COPY_H2D));
    DDP_CHECK(
        ddp_backend_copy(t->backend, t->d_tgt, t->h_tgt, count * sizeof(int32_t), DDP_COPY_H2D));
    return DDP_OK;
}

static ddp_status text_setup(ddp_trainer *t) {
    ddp_model_spec *spec = &t->cfg.model;
    if (spec->kind != DDP_MODEL_GPT)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--model %s trains on labelled images (--data DIR), not on a text",
                        ddp_model_kind_name(spec->kind));
    /* Byte-level: every byte is a token. */
    spec->vocab = DDP_TEXT_VOCAB;
    spec->num_classes = DDP_TEXT_VOCAB;
    size_t ctx = (size_t)spec->ctx;
    DDP_CHECK(ddp_text_check(t->text, ctx));
    DDP_CHECK(ddp_window_sampler_init(&t->windows, t->text->n_train, ctx, t->cfg.global_batch,
                                      t->rank, t->world, t->cfg.seed));
    DDP_CHECK(ddp_val_windows_init(&t->val, t->text, ctx, t->rank, t->world));
    /* The part: the same windows over the first eval_tokens predicted bytes. */
    t->text_part = *t->text; /* shares the bytes */
    if (t->cfg.eval_tokens > 0 && (uint64_t)t->cfg.eval_tokens < t->text_part.n_val - 1)
        t->text_part.n_val = (size_t)t->cfg.eval_tokens + 1;
    DDP_CHECK(ddp_val_windows_init(&t->val_part, &t->text_part, ctx, t->rank, t->world));
    /* The cursor: (epoch, step in epoch) of the next step, from the step alone. */
    t->sampler.steps_per_epoch = t->windows.steps_per_epoch;
    t->sampler.local_batch = t->windows.local_batch;
    t->max_batch = t->cfg.micro_batch;
    size_t rows = t->windows.local_batch > t->max_batch ? t->windows.local_batch : t->max_batch;
    t->h_offsets = malloc(t->windows.local_batch * sizeof *t->h_offsets);
    t->h_tok = malloc(rows * ctx * sizeof(int32_t));
    t->h_tgt = malloc(rows * ctx * sizeof(int32_t));
    if (!t->h_offsets || !t->h_tok || !t->h_tgt)
        return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory for %zu windows", rows);
    if (ddp_backend_is_host(t->backend)) {
        t->d_tok = t->h_tok;
        t->d_tgt = t->h_tgt;
    } else {
        DDP_CHECK(ddp_backend_alloc(t->backend, rows * ctx * sizeof(int32_t), (void **)&t->d_tok));
        DDP_CHECK(ddp_backend_alloc(t->backend, rows * ctx * sizeof(int32_t), (void **)&t->d_tgt));
    }
    return DDP_OK;
}

static size_t text_positions(const ddp_trainer *t) { return (size_t)t->cfg.model.ctx; }

static ddp_status text_next(ddp_trainer *t) {
    size_t ctx = (size_t)t->cfg.model.ctx, local = t->windows.local_batch;
    DDP_CHECK(ddp_window_offsets(&t->windows, t->step, t->h_offsets));
    DDP_CHECK(ddp_text_fill(t->text, t->h_offsets, local, ctx, t->h_tok, t->h_tgt));
    DDP_CHECK(to_device(t, local * ctx));
    size_t spe = t->sampler.steps_per_epoch;
    t->epoch = (uint64_t)t->step / spe;
    t->sampler.epoch = (uint64_t)(t->step + 1) / spe;
    t->sampler.step = (size_t)((uint64_t)(t->step + 1) % spe);
    return DDP_OK;
}

static ddp_status text_micro_batch(ddp_trainer *t, int k, ddp_batch *out) {
    size_t ctx = (size_t)t->cfg.model.ctx, micro = t->cfg.micro_batch;
    size_t at = (size_t)k * micro * ctx;
    *out = (ddp_batch){.n = micro, .t = ctx, .tokens = t->d_tok + at, .targets = t->d_tgt + at};
    return DDP_OK;
}

static ddp_status text_evaluate(ddp_trainer *t, double sums[3], int full) {
    size_t ctx = (size_t)t->cfg.model.ctx, predicted = 0;
    const ddp_val_windows *val = full ? &t->val : &t->val_part;
    const ddp_text *text = full ? t->text : &t->text_part;
    DDP_CHECK(ddp_backend_zero(t->backend, t->d_stats, 2 * sizeof(float)));
    for (size_t i = 0; i < val->count; i += t->max_batch) {
        size_t n = val->count - i < t->max_batch ? val->count - i : t->max_batch, last = 0;
        DDP_CHECK(ddp_val_windows_fill(val, text, i, n, t->h_tok, t->h_tgt, &last));
        DDP_CHECK(to_device(t, n * ctx));
        /* Only the very last window of the split can be short: it goes alone. */
        size_t whole = last == ctx ? n : n - 1;
        if (whole > 0) {
            ddp_batch batch = {.n = whole, .t = ctx, .tokens = t->d_tok, .targets = t->d_tgt};
            DDP_CHECK(ddp_model_forward(t->model, &batch, DDP_MODE_EVAL, 0.0f, t->d_stats));
        }
        if (whole < n) {
            ddp_batch batch = {.n = 1,
                               .t = last,
                               .tokens = t->d_tok + whole * ctx,
                               .targets = t->d_tgt + whole * ctx};
            DDP_CHECK(ddp_model_forward(t->model, &batch, DDP_MODE_EVAL, 0.0f, t->d_stats));
        }
        predicted += whole * ctx + (whole < n ? last : 0);
    }
    float h[2];
    DDP_CHECK(ddp_backend_copy(t->backend, h, t->d_stats, sizeof h, DDP_COPY_D2H));
    sums[0] += h[0];
    sums[1] += h[1];
    sums[2] += (double)predicted;
    return DDP_OK;
}

static ddp_status text_seek(ddp_trainer *t, uint64_t epoch, size_t step) {
    /* The windows of a step depend on the step alone: the cursor is only bookkeeping. */
    if (step >= t->sampler.steps_per_epoch)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "text: step %zu of an epoch of %zu steps", step,
                        t->sampler.steps_per_epoch);
    t->sampler.epoch = epoch;
    t->sampler.step = step;
    return DDP_OK;
}

static size_t text_identify(const ddp_trainer *t, char *buf, size_t cap) {
    const ddp_text *x = t->text;
    int n = snprintf(buf, cap, "text=%zu+%zu crc=%08x", x->n_train, x->n_val,
                     ddp_crc32(0, x->bytes, x->n_train + x->n_val));
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap ? cap - 1 : 0;
}

static void text_release(ddp_trainer *t) {
    if (!ddp_backend_is_host(t->backend)) {
        ddp_backend_dealloc(t->backend, t->d_tok);
        ddp_backend_dealloc(t->backend, t->d_tgt);
    }
    free(t->h_offsets);
    free(t->h_tok);
    free(t->h_tgt);
}

const ddp_source_ops ddp_source_text = {
    .kind = "text",
    .setup = text_setup,
    .positions = text_positions,
    .next = text_next,
    .micro_batch = text_micro_batch,
    .evaluate = text_evaluate,
    .seek = text_seek,
    .identify = text_identify,
    .release = text_release,
};
