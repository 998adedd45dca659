/*
 * Option parsing for ddp-train (getopt_long). Every number is parsed strictly: the
 * whole text must be a number in range, or the option is named in the error.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/cli.h"

enum {
    OPT_DATA = 256,
    OPT_HIDDEN,
    OPT_ACT,
    OPT_BATCH,
    OPT_ACCUM,
    OPT_MICRO,
    OPT_EPOCHS,
    OPT_STEPS,
    OPT_OPTIM,
    OPT_LR,
    OPT_MIN_LR,
    OPT_MOMENTUM,
    OPT_NESTEROV,
    OPT_BETA1,
    OPT_BETA2,
    OPT_EPS,
    OPT_WD,
    OPT_SCHEDULE,
    OPT_WARMUP,
    OPT_CLIP,
    OPT_SEED,
    OPT_NO_SHUFFLE,
    OPT_DEVICE,
    OPT_COMM,
    OPT_PRECISION,
    OPT_THREADS,
    OPT_LOG_EVERY,
    OPT_EVAL_EVERY,
    OPT_CHECK_SYNC,
    OPT_METRICS,
    OPT_QUIET,
    OPT_DUMP_PARAMS,
    OPT_HELP,
    OPT_VERSION,
    OPT_BUCKET_MB,
    OPT_FIRST_BUCKET_MB,
    OPT_GRAD_DTYPE,
    OPT_NO_OVERLAP,
    OPT_PROGRESS,
    OPT_ON_NONFINITE,
    OPT_TRACE,
    OPT_TIMEOUT,
    OPT_CHECKPOINT_DIR,
    OPT_CHECKPOINT_EVERY,
    OPT_KEEP,
    OPT_RESUME,
    OPT_EXPORT,
};

static const struct option long_options[] = {
    {"data", required_argument, 0, OPT_DATA},
    {"hidden", required_argument, 0, OPT_HIDDEN},
    {"act", required_argument, 0, OPT_ACT},
    {"batch", required_argument, 0, OPT_BATCH},
    {"accum", required_argument, 0, OPT_ACCUM},
    {"micro-batch", required_argument, 0, OPT_MICRO},
    {"epochs", required_argument, 0, OPT_EPOCHS},
    {"steps", required_argument, 0, OPT_STEPS},
    {"optim", required_argument, 0, OPT_OPTIM},
    {"lr", required_argument, 0, OPT_LR},
    {"min-lr", required_argument, 0, OPT_MIN_LR},
    {"momentum", required_argument, 0, OPT_MOMENTUM},
    {"nesterov", no_argument, 0, OPT_NESTEROV},
    {"beta1", required_argument, 0, OPT_BETA1},
    {"beta2", required_argument, 0, OPT_BETA2},
    {"eps", required_argument, 0, OPT_EPS},
    {"weight-decay", required_argument, 0, OPT_WD},
    {"schedule", required_argument, 0, OPT_SCHEDULE},
    {"warmup", required_argument, 0, OPT_WARMUP},
    {"clip", required_argument, 0, OPT_CLIP},
    {"seed", required_argument, 0, OPT_SEED},
    {"no-shuffle", no_argument, 0, OPT_NO_SHUFFLE},
    {"device", required_argument, 0, OPT_DEVICE},
    {"comm", required_argument, 0, OPT_COMM},
    {"precision", required_argument, 0, OPT_PRECISION},
    {"threads", required_argument, 0, OPT_THREADS},
    {"log-every", required_argument, 0, OPT_LOG_EVERY},
    {"eval-every", required_argument, 0, OPT_EVAL_EVERY},
    {"check-sync", required_argument, 0, OPT_CHECK_SYNC},
    {"metrics", required_argument, 0, OPT_METRICS},
    {"quiet", no_argument, 0, OPT_QUIET},
    {"dump-params", required_argument, 0, OPT_DUMP_PARAMS},
    {"bucket-mb", required_argument, 0, OPT_BUCKET_MB},
    {"first-bucket-mb", required_argument, 0, OPT_FIRST_BUCKET_MB},
    {"grad-dtype", required_argument, 0, OPT_GRAD_DTYPE},
    {"no-overlap", no_argument, 0, OPT_NO_OVERLAP},
    {"progress", required_argument, 0, OPT_PROGRESS},
    {"on-nonfinite", required_argument, 0, OPT_ON_NONFINITE},
    {"trace", required_argument, 0, OPT_TRACE},
    {"timeout", required_argument, 0, OPT_TIMEOUT},
    {"checkpoint-dir", required_argument, 0, OPT_CHECKPOINT_DIR},
    {"checkpoint-every", required_argument, 0, OPT_CHECKPOINT_EVERY},
    {"keep", required_argument, 0, OPT_KEEP},
    {"resume", no_argument, 0, OPT_RESUME},
    {"export", required_argument, 0, OPT_EXPORT},
    {"help", no_argument, 0, OPT_HELP},
    {"version", no_argument, 0, OPT_VERSION},
    {0, 0, 0, 0},
};

void ddp_cli_usage(FILE *f, const char *prog) {
    fprintf(
        f,
        "usage: mpirun -np N %s [options]\n"
        "Data-parallel training: every rank trains on its share of each global batch and\n"
        "gradients are averaged over all ranks before an identical update.\n"
        "\n"
        "Model and data\n"
        "  --data DIR            Fashion-MNIST/MNIST IDX files (default\n"
        "                        /usr/share/datasets/fashion-mnist)\n"
        "  --hidden LIST         hidden layer sizes, e.g. 256,128 (default); 'none' for none\n"
        "  --act relu|gelu       activation (default relu)\n"
        "Batch and length\n"
        "  --batch N             global batch over all ranks (default 128)\n"
        "  --accum K             micro-batches per rank per step (gradient accumulation)\n"
        "  --micro-batch M       or: samples per micro-batch; batch = M x K x ranks\n"
        "  --epochs E            epochs (default 20); the tail batch of an epoch is dropped\n"
        "  --steps S             stop after S steps instead\n"
        "Optimizer\n"
        "  --optim sgd|adamw     (default sgd, momentum 0.9)\n"
        "  --lr LR               peak learning rate (default 0.05)\n"
        "  --min-lr LR           floor of the cosine schedule (default 0)\n"
        "  --schedule constant|cosine   (default cosine, after linear warm-up)\n"
        "  --warmup S            warm-up steps (default 200)\n"
        "  --momentum M --nesterov --beta1 B --beta2 B --eps E --weight-decay W (default 1e-4)\n"
        "  --clip NORM           clip the global gradient norm (default off)\n"
        "  --seed S              seed for initialization and shuffling (default 42)\n"
        "  --no-shuffle          keep the dataset order\n"
        "Devices\n"
        "  --device auto|cpu|cuda     (default auto: CUDA when a GPU is present)\n"
        "  --comm auto|nccl|mpi       gradient all-reduce (default auto: NCCL on GPUs)\n"
        "  --precision fp32|tf32|bf16 matrix-product precision (default fp32)\n"
        "  --threads N           BLAS threads per rank (default: cores / ranks on the node)\n"
        "Gradient communication\n"
        "  --bucket-mb MB        gradient bucket size (default 25)\n"
        "  --first-bucket-mb MB  the first, last-layer bucket (default 1): starts comm early\n"
        "  --grad-dtype fp32|bf16  all-reduce precision (default fp32; bf16 halves traffic)\n"
        "  --no-overlap          one all-reduce after backward instead of buckets during it\n"
        "  --progress auto|thread|test  how MPI buckets progress during backward\n"
        "  --on-nonfinite abort|skip    NaN/inf gradients: stop (default) or skip the step\n"
        "Output\n"
        "  --log-every N         steps between progress lines (default 50)\n"
        "  --eval-every N        steps between test evaluations (default: each epoch)\n"
        "  --check-sync N        verify every N steps that all ranks hold identical parameters\n"
        "  --metrics FILE        one JSON object per logged step (rank 0)\n"
        "  --dump-params FILE    write the final parameters as raw float32 (rank 0)\n"
        "  --quiet               no progress lines\n"
        "  --trace FILE          Chrome trace events (Perfetto); FILE.rankN.json per rank\n"
        "Checkpoints\n"
        "  --checkpoint-dir DIR  save checkpoints there (rank 0), after the last step and\n"
        "  --checkpoint-every N  every N steps\n"
        "  --keep K              keep the K newest checkpoints (default 3; 0 = all)\n"
        "  --resume              continue from the newest checkpoint in DIR (fresh if none);\n"
        "                        the number of ranks may change, the global batch may not\n"
        "  --export FILE         write the final parameters as safetensors (rank 0)\n"
        "Failure detection\n"
        "  --timeout SECONDS     end the whole job when a collective waits this long for\n"
        "                        a rank that died or hangs (default 300; 0 = never)\n"
        "  --help, --version\n",
        prog);
}

static ddp_status bad(const char *opt, const char *arg, const char *want) {
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': expected %s", opt, arg, want);
}

static ddp_status parse_u64(const char *opt, const char *arg, uint64_t lo, uint64_t hi,
                            uint64_t *out) {
    char *end;
    errno = 0;
    if (!arg[0] || arg[0] == '-' || arg[0] == '+') goto fail;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || *end || v < lo || v > hi) goto fail;
    *out = v;
    return DDP_OK;
fail:;
    char want[96];
    snprintf(want, sizeof want, "a whole number from %llu to %llu", (unsigned long long)lo,
             (unsigned long long)hi);
    return bad(opt, arg, want);
}

static ddp_status parse_int(const char *opt, const char *arg, int lo, int hi, int *out) {
    uint64_t v = 0;
    DDP_CHECK(parse_u64(opt, arg, (uint64_t)lo, (uint64_t)hi, &v));
    *out = (int)v;
    return DDP_OK;
}

static ddp_status parse_float(const char *opt, const char *arg, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (!arg[0] || errno || *end || !isfinite(v) || v < lo || v > hi) {
        char want[96];
        snprintf(want, sizeof want, "a number from %g to %g", lo, hi);
        return bad(opt, arg, want);
    }
    *out = (float)v;
    return DDP_OK;
}

static ddp_status parse_choice(const char *opt, const char *arg, const char *const *names, int n,
                               int *out) {
    for (int i = 0; i < n; i++)
        if (strcmp(arg, names[i]) == 0) {
            *out = i;
            return DDP_OK;
        }
    char want[128] = "one of";
    for (int i = 0; i < n; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s %s", i ? "," : "", names[i]);
    return bad(opt, arg, want);
}

static ddp_status parse_hidden(const char *arg, ddp_mlp_spec *m) {
    if (strcmp(arg, "none") == 0) {
        m->n_hidden = 0;
        return DDP_OK;
    }
    int n = 0;
    const char *p = arg;
    while (1) {
        char *end;
        if (n == DDP_MAX_HIDDEN)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--hidden '%s': at most %d layers", arg,
                            DDP_MAX_HIDDEN);
        if (*p < '0' || *p > '9') return bad("hidden", arg, "sizes like 256,128");
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || v == 0 || v > (1u << 20))
            return bad("hidden", arg, "sizes from 1 to 1048576, like 256,128");
        m->hidden[n++] = (size_t)v;
        if (*end == '\0') break;
        if (*end != ',') return bad("hidden", arg, "sizes separated by commas, like 256,128");
        p = end + 1;
    }
    m->n_hidden = n;
    return DDP_OK;
}

static ddp_status copy_path(const char *opt, const char *arg, char *dst) {
    size_t n = strlen(arg);
    if (n == 0 || n >= DDP_PATH_MAX)
        return bad(opt, arg, "a non-empty path shorter than 1024 bytes");
    memcpy(dst, arg, n + 1);
    return DDP_OK;
}

static ddp_status apply(int code, const char *name, const char *arg, ddp_cli_options *o) {
    ddp_train_config *c = &o->train;
    static const char *const acts[] = {"relu", "gelu"};
    static const char *const optims[] = {"sgd", "adamw"};
    static const char *const scheds[] = {"constant", "cosine"};
    static const char *const devices[] = {"auto", "cpu", "cuda"};
    static const char *const comms[] = {"auto", "mpi", "nccl"};
    static const char *const precisions[] = {"fp32", "tf32", "bf16"};
    static const ddp_comm_kind comm_kinds[] = {DDP_COMM_AUTO, DDP_COMM_MPI, DDP_COMM_NCCL};
    uint64_t u = 0;
    int i = 0;
    switch (code) {
    case OPT_DATA: return copy_path(name, arg, c->data_dir);
    case OPT_HIDDEN: return parse_hidden(arg, &c->model);
    case OPT_ACT:
        DDP_CHECK(parse_choice(name, arg, acts, 2, &i));
        c->model.act = (ddp_act)i;
        return DDP_OK;
    case OPT_BATCH:
        DDP_CHECK(parse_u64(name, arg, 1, 1u << 30, &u));
        c->global_batch = u;
        return DDP_OK;
    case OPT_ACCUM: return parse_int(name, arg, 1, 1 << 20, &c->accum);
    case OPT_MICRO:
        DDP_CHECK(parse_u64(name, arg, 1, 1u << 30, &u));
        c->micro_batch = u;
        return DDP_OK;
    case OPT_EPOCHS: return parse_int(name, arg, 1, 1 << 20, &c->epochs);
    case OPT_STEPS:
        DDP_CHECK(parse_u64(name, arg, 1, (uint64_t)1 << 40, &u));
        c->max_steps = (int64_t)u;
        return DDP_OK;
    case OPT_OPTIM:
        DDP_CHECK(parse_choice(name, arg, optims, 2, &i));
        c->optim.kind = (ddp_optim_kind)i;
        return DDP_OK;
    case OPT_LR: return parse_float(name, arg, 1e-12, 1e3, &c->sched.base_lr);
    case OPT_MIN_LR: return parse_float(name, arg, 0.0, 1e3, &c->sched.min_lr);
    case OPT_MOMENTUM: return parse_float(name, arg, 0.0, 0.999999, &c->optim.momentum);
    case OPT_NESTEROV: c->optim.nesterov = 1; return DDP_OK;
    case OPT_BETA1: return parse_float(name, arg, 0.0, 0.999999, &c->optim.beta1);
    case OPT_BETA2: return parse_float(name, arg, 0.0, 0.999999, &c->optim.beta2);
    case OPT_EPS: return parse_float(name, arg, 1e-30, 1.0, &c->optim.eps);
    case OPT_WD: return parse_float(name, arg, 0.0, 10.0, &c->optim.weight_decay);
    case OPT_SCHEDULE:
        DDP_CHECK(parse_choice(name, arg, scheds, 2, &i));
        c->sched.kind = (ddp_sched_kind)i;
        return DDP_OK;
    case OPT_WARMUP:
        DDP_CHECK(parse_u64(name, arg, 0, (uint64_t)1 << 40, &u));
        c->sched.warmup_steps = (int64_t)u;
        return DDP_OK;
    case OPT_CLIP: return parse_float(name, arg, 0.0, 1e9, &c->clip_norm);
    case OPT_SEED: return parse_u64(name, arg, 0, UINT64_MAX, &c->seed);
    case OPT_NO_SHUFFLE: c->shuffle = 0; return DDP_OK;
    case OPT_DEVICE:
        DDP_CHECK(parse_choice(name, arg, devices, 3, &i));
        c->device = (ddp_device_kind)i;
        return DDP_OK;
    case OPT_COMM:
        DDP_CHECK(parse_choice(name, arg, comms, 3, &i));
        c->comm = comm_kinds[i];
        return DDP_OK;
    case OPT_PRECISION:
        DDP_CHECK(parse_choice(name, arg, precisions, 3, &i));
        c->math = (ddp_math)i;
        return DDP_OK;
    case OPT_THREADS: return parse_int(name, arg, 1, 1024, &c->threads);
    case OPT_LOG_EVERY: return parse_int(name, arg, 1, 1 << 30, &c->log_every);
    case OPT_EVAL_EVERY: return parse_int(name, arg, 1, 1 << 30, &c->eval_every);
    case OPT_CHECK_SYNC: return parse_int(name, arg, 1, 1 << 30, &c->check_sync);
    case OPT_METRICS: return copy_path(name, arg, c->metrics_path);
    case OPT_QUIET: c->quiet = 1; return DDP_OK;
    case OPT_TIMEOUT: return parse_float(name, arg, 0.0, 1e6, &c->timeout_s);
    case OPT_DUMP_PARAMS: return copy_path(name, arg, o->dump_params);
    case OPT_CHECKPOINT_DIR: return copy_path(name, arg, c->checkpoint_dir);
    case OPT_CHECKPOINT_EVERY: return parse_int(name, arg, 1, 1 << 30, &c->checkpoint_every);
    case OPT_KEEP: return parse_int(name, arg, 0, 1 << 20, &c->keep);
    case OPT_RESUME: c->resume = 1; return DDP_OK;
    case OPT_EXPORT: return copy_path(name, arg, o->export_path);
    case OPT_BUCKET_MB:
    case OPT_FIRST_BUCKET_MB: {
        float mb;
        DDP_CHECK(parse_float(name, arg, 1e-6, 1e5, &mb));
        size_t bytes = (size_t)((double)mb * 1048576.0);
        if (bytes < sizeof(float)) bytes = sizeof(float);
        if (code == OPT_BUCKET_MB)
            c->reducer.bucket_bytes = bytes;
        else
            c->reducer.first_bucket_bytes = bytes;
        return DDP_OK;
    }
    case OPT_GRAD_DTYPE: {
        static const char *const dtypes[] = {"fp32", "bf16"};
        DDP_CHECK(parse_choice(name, arg, dtypes, 2, &i));
        c->reducer.grad_dtype = i ? DDP_BF16 : DDP_F32;
        return DDP_OK;
    }
    case OPT_NO_OVERLAP: c->reducer.overlap = 0; return DDP_OK;
    case OPT_PROGRESS: {
        static const char *const modes[] = {"auto", "thread", "test"};
        DDP_CHECK(parse_choice(name, arg, modes, 3, &i));
        c->reducer.progress = (ddp_progress)i;
        return DDP_OK;
    }
    case OPT_ON_NONFINITE: {
        static const char *const policies[] = {"abort", "skip"};
        DDP_CHECK(parse_choice(name, arg, policies, 2, &i));
        c->on_nonfinite = i;
        return DDP_OK;
    }
    case OPT_TRACE: return copy_path(name, arg, c->trace_path);
    case OPT_HELP: o->help = 1; return DDP_OK;
    case OPT_VERSION: o->version = 1; return DDP_OK;
    }
    return DDP_FAIL(DDP_ERR_INTERNAL, "option code %d not handled", code);
}

ddp_status ddp_cli_parse(int argc, char **argv, ddp_cli_options *opt) {
    memset(opt, 0, sizeof *opt);
    ddp_train_config_defaults(&opt->train);
    opterr = 0; /* our own messages, on the error path of every rank */
    optind = 0; /* GNU: full re-initialization, so the parser can run more than once */
    int code, index;
    while ((code = getopt_long(argc, argv, ":", long_options, &index)) != -1) {
        if (code == '?') {
            const char *what = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown option '%s' (see --help)", what);
        }
        if (code == ':') {
            const char *what = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "option '%s' needs a value (see --help)", what);
        }
        DDP_CHECK(apply(code, long_options[index].name, optarg, opt));
    }
    if (optind < argc)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "unexpected argument '%s' (options start with --)",
                        argv[optind]);
    return DDP_OK;
}
