/*
 * Training configuration: defaults (from the option tables, config_options.c), the batch
 * arithmetic (global = micro x accum x world) and the canonical text whose CRC is the
 * fingerprint that all ranks compare.
 */
#include <stdio.h>
#include <string.h>

#include "ddp/sync.h"
#include "ddp/train.h"

const char *const ddp_nonfinite_names[] = {DDP_NONFINITE_POLICIES(DDP_X_NAME) NULL};
const char *const ddp_batch_schedule_names[] = {DDP_BATCH_SCHEDULES(DDP_X_NAME) NULL};
const char *const ddp_lr_scaling_names[] = {DDP_LR_SCALINGS(DDP_X_NAME) NULL};

void ddp_train_config_defaults_for(ddp_train_config *cfg, ddp_model_kind kind) {
    memset(cfg, 0, sizeof *cfg);
    ddp_train_tables tt;
    ddp_train_config_tables(cfg, kind, &tt);
    /* Fails only for a default that does not parse, a bug that test_option_tables finds. */
    if (ddp_opt_set_defaults(tt.t, tt.n_active, (int)kind) != DDP_OK)
        ddp_log_current_error("the training defaults");
    cfg->model.kind = kind;
}

void ddp_train_config_defaults(ddp_train_config *cfg) {
    ddp_train_config_defaults_for(cfg, DDP_MODEL_MLP);
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
    DDP_CHECK(ddp_model_spec_check(&cfg->model));
    if (cfg->zero < 0 || cfg->zero > DDP_SYNC_MAX_STAGE)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--zero %d: the stages are 0 (replicated), 1 (sharded optimizer state), "
                        "2 (and gradients) and 3 (and parameters)",
                        cfg->zero);
    if (cfg->gathers < 1 || cfg->gathers > DDP_SYNC_MAX_GATHERS)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--gathers %d: 1 to %d units at once", cfg->gathers,
                        DDP_SYNC_MAX_GATHERS);
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

/* The canonical text of cfg's options: all that ranks must share, or (resume) what must
 * also match on resume. */
static size_t canonical(const ddp_train_config *cfg, int resume, char *buf, size_t cap) {
    ddp_train_tables tt;
    /* The tables only read through their bases here. */
    ddp_train_config_tables((ddp_train_config *)cfg, cfg->model.kind, &tt);
    return ddp_opt_canonical(tt.t, tt.n_active, resume, buf, cap);
}

size_t ddp_train_config_canonical(const ddp_train_config *cfg, char *buf, size_t cap) {
    return canonical(cfg, 0, buf, cap);
}

size_t ddp_train_config_resume_text(const ddp_train_config *cfg, char *buf, size_t cap) {
    return canonical(cfg, 1, buf, cap);
}
