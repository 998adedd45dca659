/*
 * Batches of a text for a language model: every step each rank takes its share of the
 * global batch of windows, whose offsets every rank derives from (seed, step) alone
 * (ddp_window_offsets); inputs are the window's bytes and targets the bytes one further.
 * Evaluation predicts every byte of the validation split exactly once over all ranks. Its
 * options: --text, --eval-tokens.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "train/trainer_impl.h"

typedef struct {
    ddp_source base;
    const ddp_text *text;
    size_t ctx; /* positions per window: the model's */
    ddp_window_sampler windows;
    ddp_val_windows val, val_part; /* the whole validation split; its first eval_tokens */
    ddp_text text_part;            /* the text with the validation split cut to that part */
    uint64_t epoch;                /* the cursor: of the next step */
    size_t step;
    size_t *h_offsets;      /* (local_batch) */
    int32_t *h_tok, *h_tgt; /* (max(local_batch, max_batch), ctx) host */
    int32_t *d_tok, *d_tgt; /* the same on the device (the host arrays on the CPU) */
    int on_host;
} text_source;

/* ---- the data ------------------------------------------------------------------------ */

/* Without --text: the default corpus, which the first rank of each node writes to its
 * node's cache file (it may be the only one that sees that directory) before any reads it. */
static ddp_status text_prepare(const ddp_train_config *cfg) {
    if (cfg->text_path[0]) return DDP_OK;
    char path[DDP_PATH_MAX];
    DDP_CHECK(ddp_text_default_corpus(path, sizeof path));
    return DDP_OK;
}

static ddp_status text_load(const ddp_train_config *cfg, ddp_train_data *d) {
    char path[DDP_PATH_MAX];
    if (cfg->text_path[0])
        snprintf(path, sizeof path, "%s", cfg->text_path);
    else
        DDP_CHECK(ddp_text_corpus_path(path, sizeof path));
    DDP_CHECK(ddp_text_load(path, &d->text));
    return DDP_OK;
}

static const char *text_data_name(const ddp_train_config *cfg) {
    return cfg->text_path[0] ? cfg->text_path : "default corpus";
}

/* ---- training -------------------------------------------------------------------------- */

/* Where tokens of n rows live on the device: the host arrays themselves on the CPU. */
static ddp_status to_device(text_source *s, ddp_backend *b, size_t count) {
    if (s->on_host) return DDP_OK;
    DDP_CHECK(ddp_backend_copy(b, s->d_tok, s->h_tok, count * sizeof(int32_t), DDP_COPY_H2D));
    DDP_CHECK(ddp_backend_copy(b, s->d_tgt, s->h_tgt, count * sizeof(int32_t), DDP_COPY_H2D));
    return DDP_OK;
}

static void text_free(ddp_source *base, ddp_backend *b) {
    text_source *s = (text_source *)base;
    if (!s->on_host) {
        ddp_backend_dealloc(b, s->d_tok);
        ddp_backend_dealloc(b, s->d_tgt);
    }
    free(s->h_offsets);
    free(s->h_tok);
    free(s->h_tgt);
    free(s);
}

static ddp_status text_setup(text_source *s, ddp_trainer *t) {
    ddp_model_spec *spec = &t->cfg.model;
    if (!s->text->bytes)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--model %s trains on a text (--text FILE), and there is none",
                        ddp_model_kind_name(spec->kind));
    /* Byte-level: every byte is a token. */
    spec->num_classes = DDP_TEXT_VOCAB;
    size_t ctx = s->ctx = ddp_model_spec_positions(spec);
    DDP_CHECK(ddp_text_check(s->text, ctx));
    DDP_CHECK(ddp_window_sampler_init(&s->windows, s->text->n_train, ctx, t->cfg.global_batch,
                                      t->rank, t->world, t->cfg.seed));
    DDP_CHECK(ddp_val_windows_init(&s->val, s->text, ctx, t->rank, t->world));
    /* The part: the same windows over the first eval_tokens predicted bytes. */
    s->text_part = *s->text; /* shares the bytes */
    if (t->cfg.eval_tokens > 0 && (uint64_t)t->cfg.eval_tokens < s->text_part.n_val - 1)
        s->text_part.n_val = (size_t)t->cfg.eval_tokens + 1;
    DDP_CHECK(ddp_val_windows_init(&s->val_part, &s->text_part, ctx, t->rank, t->world));
    t->max_batch = t->cfg.micro_batch;
    size_t local = s->windows.local_batch;
    size_t rows = local > t->max_batch ? local : t->max_batch;
    s->h_offsets = malloc(local * sizeof *s->h_offsets);
    s->h_tok = malloc(rows * ctx * sizeof(int32_t));
    s->h_tgt = malloc(rows * ctx * sizeof(int32_t));
    if (!s->h_offsets || !s->h_tok || !s->h_tgt)
        return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory for %zu windows", rows);
    s->on_host = ddp_backend_is_host(t->backend);
    if (s->on_host) {
        s->d_tok = s->h_tok;
        s->d_tgt = s->h_tgt;
    } else {
        DDP_CHECK(ddp_backend_alloc(t->backend, rows * ctx * sizeof(int32_t), (void **)&s->d_tok));
        DDP_CHECK(ddp_backend_alloc(t->backend, rows * ctx * sizeof(int32_t), (void **)&s->d_tgt));
    }
    return DDP_OK;
}

static ddp_status text_create(ddp_trainer *t, const ddp_train_data *d, ddp_source **out) {
    text_source *s = calloc(1, sizeof *s);
    if (!s) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    s->base.ops = ddp_source_of(DDP_DATA_TEXT);
    s->text = &d->text;
    /* Freed by the trainer through *out, also when set-up fails half-way. */
    *out = &s->base;
    DDP_CHECK(text_setup(s, t));
    return DDP_OK;
}

static size_t text_positions(const ddp_source *base) { return ((const text_source *)base)->ctx; }

static ddp_status text_next(ddp_source *base, ddp_trainer *t, uint64_t *epoch) {
    text_source *s = (text_source *)base;
    size_t ctx = s->ctx, local = s->windows.local_batch, spe = s->windows.steps_per_epoch;
    DDP_CHECK(ddp_window_offsets(&s->windows, t->step, s->h_offsets));
    DDP_CHECK(ddp_text_fill(s->text, s->h_offsets, local, ctx, s->h_tok, s->h_tgt));
    DDP_CHECK(to_device(s, t->backend, local * ctx));
    /* The windows of a step depend on the step alone: the cursor is only bookkeeping. */
    *epoch = (uint64_t)t->step / spe;
    s->epoch = (uint64_t)(t->step + 1) / spe;
    s->step = (size_t)((uint64_t)(t->step + 1) % spe);
    return DDP_OK;
}

static ddp_status text_micro_batch(ddp_source *base, ddp_trainer *t, int k, ddp_batch *out) {
    text_source *s = (text_source *)base;
    size_t micro = t->cfg.micro_batch, at = (size_t)k * micro * s->ctx;
    *out = (ddp_batch){.n = micro, .t = s->ctx, .tokens = s->d_tok + at, .targets = s->d_tgt + at};
    return DDP_OK;
}

static ddp_status text_evaluate(ddp_source *base, ddp_trainer *t, double sums[3], int full) {
    text_source *s = (text_source *)base;
    size_t ctx = s->ctx, predicted = 0;
    const ddp_val_windows *val = full ? &s->val : &s->val_part;
    const ddp_text *text = full ? s->text : &s->text_part;
    DDP_CHECK(ddp_backend_zero(t->backend, t->d_stats, 2 * sizeof(float)));
    for (size_t i = 0; i < val->count; i += t->max_batch) {
        size_t n = val->count - i < t->max_batch ? val->count - i : t->max_batch, last = 0;
        DDP_CHECK(ddp_val_windows_fill(val, text, i, n, s->h_tok, s->h_tgt, &last));
        DDP_CHECK(to_device(s, t->backend, n * ctx));
        /* Only the very last window of the split can be short: it goes alone. */
        size_t whole = last == ctx ? n : n - 1;
        if (whole > 0) {
            ddp_batch batch = {.n = whole, .t = ctx, .tokens = s->d_tok, .targets = s->d_tgt};
            DDP_CHECK(ddp_trainer_eval_forward(t, &batch));
        }
        if (whole < n) {
            ddp_batch batch = {.n = 1,
                               .t = last,
                               .tokens = s->d_tok + whole * ctx,
                               .targets = s->d_tgt + whole * ctx};
            DDP_CHECK(ddp_trainer_eval_forward(t, &batch));
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

static ddp_cursor text_cursor(const ddp_source *base) {
    const text_source *s = (const text_source *)base;
    /* No position in an order: windows are drawn, not visited. */
    return (ddp_cursor){
        .epoch = s->epoch, .step = s->step, .steps_per_epoch = s->windows.steps_per_epoch};
}

static ddp_status text_seek(ddp_source *base, uint64_t epoch, size_t step) {
    text_source *s = (text_source *)base;
    if (step >= s->windows.steps_per_epoch)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "text: step %zu of an epoch of %zu steps", step,
                        s->windows.steps_per_epoch);
    s->epoch = epoch;
    s->step = step;
    return DDP_OK;
}

static size_t text_identify(const ddp_source *base, char *buf, size_t cap) {
    const ddp_text *x = ((const text_source *)base)->text;
    int n = snprintf(buf, cap, "text=%zu+%zu crc=%08x", x->n_train, x->n_val,
                     ddp_crc32(0, x->bytes, x->n_train + x->n_val));
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap ? cap - 1 : 0;
}

/* Byte-level vocabulary: the loss per byte in bits is the loss in nats / ln 2. */
static void text_eval_text(double accuracy, double loss, char *buf, size_t cap) {
    snprintf(buf, cap, "validation loss %.4f, %.4f bits per byte, next-byte accuracy %.4f", loss,
             loss / M_LN2, accuracy);
}

static const ddp_opt text_opts[] = {
    {.kind = DDP_OPT_HEADING, .help = "Data: a text"},
    {.name = "text",
     .kind = DDP_OPT_PATH,
     DDP_OPT_FIELD(ddp_train_config, text_path),
     .arg = "FILE",
     .help = "a text file, every byte a token; the last 10% is\nvalidation",
     .zero = "the King James Bible of Debian's\nbible-kjv, written once to a cache file",
     .per_rank = 1},
    {.name = "eval-tokens",
     .kind = DDP_OPT_U64,
     DDP_OPT_FIELD(ddp_train_config, eval_tokens),
     .arg = "N",
     .help = "evaluations before the last predict the first N bytes of\n"
             "the validation split (0 = all of it)",
     .lo = 0,
     .hi = (uint64_t)1 << 40,
     .def = "65536"},
};

const ddp_source_ops ddp_source_text = {
    .name = "text",
    .opts = text_opts,
    .n_opts = sizeof text_opts / sizeof *text_opts,
    .prepare = text_prepare,
    .load = text_load,
    .data_name = text_data_name,
    .create = text_create,
    .free = text_free,
    .positions = text_positions,
    .next = text_next,
    .micro_batch = text_micro_batch,
    .evaluate = text_evaluate,
    .cursor = text_cursor,
    .seek = text_seek,
    .identify = text_identify,
    .eval_text = text_eval_text,
};
