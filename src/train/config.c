/*
 * Training configuration: defaults, the batch arithmetic (global = micro x accum x
 * world) and the canonical text whose CRC is the fingerprint that all ranks compare.
 */
#include <stdio.h>
#include <string.h>

#include "ddp/train.h"

const char *const ddp_nonfinite_names[] = {DDP_NONFINITE_POLICIES(DDP_X_NAME) NULL};
const char *const ddp_batch_schedule_names[] = {DDP_BATCH_SCHEDULES(DDP_X_NAME) NULL};
const char *const ddp_lr_scaling_names[] = {DDP_LR_SCALINGS(DDP_X_NAME) NULL};

void ddp_train_config_defaults(ddp_train_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    ddp_model_spec_defaults(&cfg->model, DDP_MODEL_MLP);
    snprintf(cfg->data_dir, sizeof cfg->data_dir, "/usr/share/datasets/fashion-mnist");
    cfg->global_batch = 128;
    cfg->accum = 0;
    cfg->micro_batch = 0;
    cfg->epochs = 20;
    cfg->max_steps = 0;
    cfg->optim.kind = DDP_OPTIM_SGD;
    cfg->optim.momentum = 0.9f;
    cfg->optim.nesterov = 0;
    cfg->optim.beta1 = 0.9f;
    cfg->optim.beta2 = 0.999f;
    cfg->optim.eps = 1e-8f;
    cfg->optim.weight_decay = 1e-4f;
    cfg->sched.kind = DDP_SCHED_COSINE;
    cfg->sched.base_lr = 0.05f;
    cfg->sched.min_lr = 0.0f;
    cfg->sched.warmup_steps = 200;
    cfg->clip_norm = 0.0f;
    cfg->seed = 42;
    cfg->shuffle = 1;
    cfg->device = DDP_DEVICE_AUTO;
    cfg->comm = DDP_COMM_AUTO;
    cfg->math = DDP_MATH_FP32;
    cfg->threads = 0;
    cfg->reducer.bucket_bytes = 25u << 20;
    cfg->reducer.first_bucket_bytes = 1u << 20;
    cfg->reducer.grad_dtype = DDP_F32;
    cfg->reducer.overlap = 1;
    cfg->reducer.progress = DDP_PROGRESS_AUTO;
    cfg->on_nonfinite = DDP_NONFINITE_ABORT;
    cfg->log_every = 50;
    cfg->eval_every = 0;
    cfg->check_sync = 0;
    cfg->keep = 3;
    cfg->timeout_s = 300.0f;
    cfg->gns = 1;
    cfg->gns_ema = 0.99f;
    cfg->gns_every = 1;
    cfg->batch_schedule = DDP_BATCH_FIXED;
    cfg->lr_scaling = DDP_LR_SCALING_LINEAR;
    cfg->max_global_batch = 0;
}

void ddp_train_config_defaults_for(ddp_train_config *cfg, ddp_model_kind kind) {
    ddp_train_config_defaults(cfg);
    if (kind == DDP_MODEL_CNN) {
        /* The CNN of the README's run on Fashion-MNIST (bench/RESULTS.md). */
        ddp_model_spec_defaults(&cfg->model, DDP_MODEL_CNN);
        cfg->epochs = 15;
        cfg->optim.weight_decay = 2e-3f;
        return;
    }
    if (kind != DDP_MODEL_GPT) return;
    /* A GPT on a byte-level text: the sizes and schedule of the README's language-model
     * run, which the measurements in bench/RESULTS.md chose for 2 CPU cores. */
    ddp_model_spec_defaults(&cfg->model, DDP_MODEL_GPT);
    cfg->global_batch = 32;
    cfg->epochs = 0;
    cfg->max_steps = 1300;
    cfg->optim.kind = DDP_OPTIM_ADAMW;
    cfg->optim.beta1 = 0.9f;
    cfg->optim.beta2 = 0.99f;
    cfg->optim.weight_decay = 0.1f;
    cfg->sched.kind = DDP_SCHED_COSINE;
    cfg->sched.base_lr = 2e-3f;
    cfg->sched.min_lr = 2e-4f;
    cfg->sched.warmup_steps = 100;
    cfg->clip_norm = 1.0f;
    cfg->eval_every = 250;
    cfg->eval_tokens = 65536;
}

/* The divisors of n nearest to `want` from below and above, for messages that say which
 * numbers would work. Divisors come in pairs (d, n / d), so trying d up to sqrt(n) finds
 * them all: at most 2^15 steps for any batch the options accept, however far `want` is. */
static void nearby_divisors(size_t n, size_t want, char *buf, size_t cap) {
    size_t below = 1, above = 0;
    for (size_t d = 1; d <= n / d; d++) {
        if (n % d != 0) continue;
        size_t pair[2] = {d, n / d};
        for (int k = 0; k < 2; k++) {
            if (pair[k] <= want && pair[k] > below) below = pair[k];
            if (pair[k] > want && (above == 0 || pair[k] < above)) above = pair[k];
        }
    }
    if (above)
        snprintf(buf, cap, "%zu or %zu", below, above);
    else
        snprintf(buf, cap, "%zu", below);
}

ddp_status ddp_train_config_resolve(ddp_train_config *cfg, int world) {
    if (world < 1) return DDP_FAIL(DDP_ERR_INVALID_ARG, "world size %d", world);
    size_t B = cfg->global_batch;
    if (B == 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "--batch must be positive");
    if (B % (size_t)world != 0) {
        size_t lo = B / (size_t)world * (size_t)world, hi = lo + (size_t)world;
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--batch %zu cannot be split evenly over %d ranks: use a multiple of "
                        "%d, such as %zu or %zu",
                        B, world, world, lo ? lo : hi, hi);
    }
    size_t local = B / (size_t)world;
    char hint[64];
    if (cfg->accum < 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "--accum %d is negative", cfg->accum);
    if (cfg->micro_batch > 0) {
        if (local % cfg->micro_batch != 0) {
            nearby_divisors(local, cfg->micro_batch, hint, sizeof hint);
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--micro-batch %zu does not divide the %zu samples per rank "
                            "(--batch %zu over %d ranks): use a micro-batch of %s",
                            cfg->micro_batch, local, B, world, hint);
        }
        size_t k = local / cfg->micro_batch;
        if (cfg->accum > 0 && (size_t)cfg->accum != k)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--accum %d and --micro-batch %zu disagree: --batch %zu = micro-batch "
                            "x accum x ranks (%d) needs --accum %zu",
                            cfg->accum, cfg->micro_batch, B, world, k);
        cfg->accum = (int)k;
    } else {
        if (cfg->accum == 0) cfg->accum = 1;
        if ((size_t)cfg->accum > local || local % (size_t)cfg->accum != 0) {
            nearby_divisors(local, (size_t)cfg->accum, hint, sizeof hint);
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--accum %d does not divide the %zu samples per rank (--batch %zu "
                            "over %d ranks): use --accum %s, or change --batch",
                            cfg->accum, local, B, world, hint);
        }
        cfg->micro_batch = local / (size_t)cfg->accum;
    }
    if (cfg->model.kind == DDP_MODEL_GPT) {
        const ddp_model_spec *m = &cfg->model;
        if (m->dim % m->heads != 0)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--heads %d does not divide --dim %d: each head takes dim / heads "
                            "channels",
                            m->heads, m->dim);
    } else if (cfg->sync_bn && cfg->model.kind != DDP_MODEL_CNN) {
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--sync-bn synchronizes batch normalization, which only --model cnn "
                        "has");
    } else if (cfg->text_path[0]) {
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--text is the data of a language model: use it with --model gpt (the "
                        "MLP trains on --data DIR)");
    }
    if (cfg->zero < 0 || cfg->zero > 2)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--zero %d: the stages are 0 (replicated), 1 (sharded optimizer state) "
                        "and 2 (sharded optimizer state and gradients)",
                        cfg->zero);
    if (cfg->zero > 0 && cfg->reducer.grad_dtype != DDP_F32)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--zero %d reduce-scatters the gradients in fp32: --grad-dtype bf16 "
                        "applies to --zero 0 only",
                        cfg->zero);
    if (cfg->epochs <= 0 && cfg->max_steps <= 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "set --epochs or --steps to a positive number");
    if (cfg->sched.base_lr <= 0.0f)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--lr %g must be positive", cfg->sched.base_lr);
    if (cfg->sched.min_lr < 0.0f || cfg->sched.min_lr > cfg->sched.base_lr)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--min-lr %g must be in [0, --lr %g]",
                        cfg->sched.min_lr, cfg->sched.base_lr);
    if (cfg->sched.warmup_steps < 0 || cfg->clip_norm < 0.0f || cfg->log_every < 0 ||
        cfg->eval_every < 0 || cfg->check_sync < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--warmup, --clip, --log-every, --eval-every and --check-sync must not "
                        "be negative");
    if (cfg->log_every == 0) cfg->log_every = 1;
    if (cfg->max_global_batch == 0) cfg->max_global_batch = cfg->global_batch;
    if (!(cfg->gns_ema >= 0.0f && cfg->gns_ema < 1.0f))
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--gns-ema %g must be in [0, 1)", cfg->gns_ema);
    if (cfg->gns_every < 1)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--gns-every %d must be at least 1", cfg->gns_every);
    if ((cfg->checkpoint_every > 0 || cfg->resume) && !cfg->checkpoint_dir[0])
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--checkpoint-every and --resume need --checkpoint-dir "
                        "DIR (where checkpoints are written and found)");
    if (cfg->checkpoint_every < 0 || cfg->keep < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--checkpoint-every and --keep must not be negative");
    return DDP_OK;
}

size_t ddp_train_config_canonical(const ddp_train_config *cfg, char *buf, size_t cap) {
    int n = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        if ((size_t)n < cap) n += snprintf(buf + n, cap - (size_t)n, __VA_ARGS__);                 \
    } while (0)
    /* The model's shape options of its kind (ddp_model_describe covers them too). */
    const ddp_model_spec *m = &cfg->model;
    PUT("model=%s", ddp_model_kind_name(m->kind));
    if (m->kind == DDP_MODEL_GPT) {
        PUT(" layers=%d dim=%d heads=%d ctx=%d vocab=%d", m->layers, m->dim, m->heads, m->ctx,
            m->vocab);
    } else {
        PUT(" hidden=");
        for (int i = 0; i < m->n_hidden; i++)
            PUT("%s%zu", i ? "," : "", m->hidden[i]);
        PUT(" act=%d", (int)m->act);
    }
    if (m->kind == DDP_MODEL_CNN) {
        PUT(" conv=");
        for (int i = 0; i < m->n_conv; i++)
            PUT("%s%d", i ? "," : "", m->conv[i]);
        PUT(" kernel=%d sync_bn=%d", m->kernel, cfg->sync_bn);
    }
    /* --recompute is not here: it changes neither a result (the gradients are the same
     * bits) nor a collective (a recomputed forward does not communicate), so ranks may
     * differ in it and a run may resume with or without it. */
    PUT(" decay_all=%d batch=%zu accum=%d micro=%zu epochs=%d steps=%lld", m->decay_all,
        cfg->global_batch, cfg->accum, cfg->micro_batch, cfg->epochs, (long long)cfg->max_steps);
    PUT(" optim=%d momentum=%a nesterov=%d betas=%a,%a eps=%a wd=%a", (int)cfg->optim.kind,
        cfg->optim.momentum, cfg->optim.nesterov, cfg->optim.beta1, cfg->optim.beta2,
        cfg->optim.eps, cfg->optim.weight_decay);
    PUT(" sched=%d lr=%a min_lr=%a warmup=%lld clip=%a seed=%llu shuffle=%d", (int)cfg->sched.kind,
        cfg->sched.base_lr, cfg->sched.min_lr, (long long)cfg->sched.warmup_steps, cfg->clip_norm,
        (unsigned long long)cfg->seed, cfg->shuffle);
    /* log_every, eval_every and check_sync decide which collectives run when, so they
     * must agree too or ranks would wait in different collectives. */
    PUT(" device=%d comm=%d math=%d log_every=%d eval_every=%d eval_tokens=%lld check_sync=%d",
        (int)cfg->device, (int)cfg->comm, (int)cfg->math, cfg->log_every, cfg->eval_every,
        (long long)cfg->eval_tokens, cfg->check_sync);
    /* The buckets decide which all-reduces run, in which order and with which type. */
    PUT(" bucket=%zu first_bucket=%zu grad_dtype=%d overlap=%d progress=%d nonfinite=%d",
        cfg->reducer.bucket_bytes, cfg->reducer.first_bucket_bytes, (int)cfg->reducer.grad_dtype,
        cfg->reducer.overlap, (int)cfg->reducer.progress, cfg->on_nonfinite);
    /* The stage decides which collectives run (reduce-scatter and all-gather instead of
     * all-reduce). */
    PUT(" zero=%d", cfg->zero);
    /* Saving and resuming end in an agreement over all ranks, so whether and when they
     * happen must agree; the directory and --keep concern rank 0 alone. */
    PUT(" ckpt=%d ckpt_every=%d resume=%d", cfg->checkpoint_dir[0] != '\0', cfg->checkpoint_every,
        cfg->resume);
    /* Runs that stop at a target accuracy stop together. (Written only when set, so that
     * the fingerprints of other runs, and their checkpoints, are unchanged.) */
    if (cfg->target_accuracy > 0.0f) PUT(" target=%a", cfg->target_accuracy);
    if (cfg->target_loss > 0.0f) PUT(" target_loss=%a", cfg->target_loss);
    /* The adaptive schedule changes the batch, the steps and the rate alike everywhere. */
    if (cfg->batch_schedule == DDP_BATCH_ADAPTIVE)
        PUT(" batch_schedule=adaptive max_batch=%zu lr_scaling=%d gns_ema=%a gns_every=%d",
            cfg->max_global_batch, cfg->lr_scaling, cfg->gns_ema, cfg->gns_every);
#undef PUT
    if (cap == 0) return 0; /* nothing written, not even the terminating zero */
    return (size_t)n < cap ? (size_t)n : cap - 1;
}
