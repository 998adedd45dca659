/*
 * ddp-train's options: one table (ddp/cli.h) that the parser reads and --help prints.
 * ddp-bench train takes the same table, with its own beside it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_impl.h"

/* --hidden 256,128: up to DDP_MAX_HIDDEN sizes, or "none". */
static ddp_status parse_hidden(const char *name, const char *arg, void *field) {
    ddp_model_spec *m = field;
    if (strcmp(arg, "none") == 0) {
        m->n_hidden = 0;
        return DDP_OK;
    }
    size_t sizes[DDP_MAX_HIDDEN];
    int n = 0;
    const char *p = arg;
    while (1) {
        char *end;
        if (n == DDP_MAX_HIDDEN)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': at most %d layers", name, arg,
                            DDP_MAX_HIDDEN);
        if (*p < '0' || *p > '9')
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': expected sizes like 256,128", name,
                            arg);
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || v == 0 || v > (1u << 20))
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--%s '%s': expected sizes from 1 to 1048576, like 256,128", name, arg);
        sizes[n++] = (size_t)v;
        if (*end == '\0') break;
        if (*end != ',')
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--%s '%s': expected sizes separated by commas, like 256,128", name,
                            arg);
        p = end + 1;
    }
    /* Written only when the whole list is good. */
    memcpy(m->hidden, sizes, (size_t)n * sizeof *sizes);
    m->n_hidden = n;
    return DDP_OK;
}

static const char *const models[] = {"mlp", "gpt", "cnn", NULL};
static const int model_values[] = {DDP_MODEL_MLP, DDP_MODEL_GPT, DDP_MODEL_CNN};

/* --channels 32,64: the convolution stages of the CNN, 1 to DDP_MAX_CONV of them. */
static ddp_status parse_channels(const char *name, const char *arg, void *field) {
    ddp_model_spec *m = field;
    int conv[DDP_MAX_CONV], n = 0;
    const char *p = arg;
    while (1) {
        char *end;
        if (n == DDP_MAX_CONV)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': at most %d stages", name, arg,
                            DDP_MAX_CONV);
        if (*p < '0' || *p > '9')
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': expected channels like 32,64", name,
                            arg);
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || v < 1 || v > 65536)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--%s '%s': expected channels from 1 to 65536, like 32,64", name, arg);
        conv[n++] = (int)v;
        if (*end == '\0') break;
        if (*end != ',')
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--%s '%s': expected channels separated by commas, like 32,64", name,
                            arg);
        p = end + 1;
    }
    memcpy(m->conv, conv, (size_t)n * sizeof *conv);
    m->n_conv = n;
    return DDP_OK;
}
/* The communicators a user chooses (the local one is for a world of one, in tests) and the
 * gradient types on the wire: subsets of their enums. */
static const char *const comms[] = {"auto", "mpi", "nccl", NULL};
static const int comm_values[] = {DDP_COMM_AUTO, DDP_COMM_MPI, DDP_COMM_NCCL};
static const char *const dtypes[] = {"fp32", "bf16", NULL};
static const int dtype_values[] = {DDP_F32, DDP_BF16};

#define OPT_BASE ddp_cli_options
static const ddp_cli_opt train_opts[] = {
    OPT_HEADING("Model and data"),
    OPT(CHOICE, "model", train.model.kind, NULL,
        "mlp (default): an MLP on labelled images (--data);\n"
        "cnn: a convolutional network with batch norm on them;\n"
        "gpt: a GPT language model on a text (--text); the\n"
        "other options' defaults follow the model",
        .choices = models, .values = model_values),
    OPT(PATH, "data", train.data_dir, "DIR",
        "mlp: Fashion-MNIST/MNIST IDX files (default\n/usr/share/datasets/fashion-mnist)",
        .per_rank = 1),
    OPT(CUSTOM, "hidden", train.model, "LIST",
        "mlp, cnn: hidden dense layer sizes, e.g. 256,128 (the\n"
        "MLP's default; the CNN's is 128); 'none' for none",
        .parse = parse_hidden),
    OPT(CUSTOM, "channels", train.model, "LIST",
        "cnn: channels of the convolution stages (default 32,64);\n"
        "each: conv, batch norm, ReLU, 2x2 max pooling",
        .parse = parse_channels),
    OPT(INT, "kernel", train.model.kernel, "K", "cnn: odd convolution kernel size (default 3)",
        .lo = 1, .hi = 31),
    OPT(FLAG, "sync-bn", train.sync_bn, NULL,
        "cnn: batch-norm statistics over the global batch (all\n"
        "ranks), not each rank's share",
        .lo = 1),
    OPT(CHOICE, "act", train.model.act, NULL, "mlp: activation (default relu)",
        .choices = ddp_act_names),
    OPT(PATH, "text", train.text_path, "FILE",
        "gpt: a text file, every byte a token; the last 10% is\n"
        "validation (default: the King James Bible of Debian's\n"
        "bible-kjv, written once to a cache file)",
        .per_rank = 1),
    OPT(INT, "layers", train.model.layers, "L", "gpt: transformer blocks (default 4)", .lo = 1,
        .hi = 1024),
    OPT(INT, "dim", train.model.dim, "C", "gpt: width (default 256)", .lo = 1, .hi = 65536),
    OPT(INT, "heads", train.model.heads, "H",
        "gpt: attention heads, dividing the width (default 4)", .lo = 1, .hi = 65536),
    OPT(INT, "ctx", train.model.ctx, "T", "gpt: context length in bytes (default 128)", .lo = 2,
        .hi = 65536),
    OPT(FLAG, "decay-all", train.model.decay_all, NULL,
        "weight decay on every tensor (default: matrices and the\n"
        "token embedding, not biases, norms, positions)",
        .lo = 1),
    OPT(FLAG, "recompute", train.model.recompute, NULL,
        "activation recomputation: keep only each block's input\n"
        "(gpt: transformer block; cnn: conv stage; dense layer +\n"
        "activation) and recompute the rest in backward: less\n"
        "memory, about one more forward per step, same gradients",
        .lo = 1),
    OPT_HEADING("Batch and length"),
    OPT(U64, "batch", train.global_batch, "N", "global batch over all ranks (default 128)", .lo = 1,
        .hi = 1u << 30),
    OPT(INT, "accum", train.accum, "K", "micro-batches per rank per step (gradient accumulation)",
        .lo = 1, .hi = 1 << 20),
    OPT(U64, "micro-batch", train.micro_batch, "M",
        "or: samples per micro-batch; batch = M x K x ranks", .lo = 1, .hi = 1u << 30),
    OPT(INT, "epochs", train.epochs, "E",
        "epochs (default 20); the tail batch of an epoch is dropped", .lo = 1, .hi = 1 << 20),
    OPT(U64, "steps", train.max_steps, "S", "stop after S steps instead", .lo = 1,
        .hi = (uint64_t)1 << 40),
    OPT(CHOICE, "batch-schedule", train.batch_schedule, NULL,
        "(default fixed) adaptive: double --accum, so the batch,\n"
        "when the measured noise scale B_simple exceeds it",
        .choices = ddp_batch_schedule_names),
    OPT(U64, "max-batch", train.max_global_batch, "B",
        "adaptive: the largest global batch (default: --batch)", .lo = 1, .hi = 1u << 30),
    OPT(CHOICE, "lr-scaling", train.lr_scaling, NULL,
        "adaptive: the rate at batch B is --lr x B/B0 (linear,\n"
        "default) or x sqrt(B/B0), B0 the starting batch",
        .choices = ddp_lr_scaling_names),
    OPT_HEADING("Optimizer"),
    OPT(CHOICE, "optim", train.optim.kind, NULL, "(default sgd, momentum 0.9)",
        .choices = ddp_optim_names),
    OPT(FLOAT, "lr", train.sched.base_lr, "LR", "peak learning rate (default 0.05)", .min = 1e-12,
        .max = 1e3),
    OPT(FLOAT, "min-lr", train.sched.min_lr, "LR", "floor of the cosine schedule (default 0)",
        .min = 0.0, .max = 1e3),
    OPT(CHOICE, "schedule", train.sched.kind, NULL, "(default cosine, after linear warm-up)",
        .choices = ddp_sched_names),
    OPT(U64, "warmup", train.sched.warmup_steps, "S", "learning-rate warm-up steps (default 200)",
        .lo = 0, .hi = (uint64_t)1 << 40),
    OPT(FLOAT, "momentum", train.optim.momentum, "M", "SGD momentum (default 0.9)", .min = 0.0,
        .max = 0.999999),
    OPT(FLAG, "nesterov", train.optim.nesterov, NULL, "Nesterov momentum", .lo = 1),
    OPT(FLOAT, "beta1", train.optim.beta1, "B", "AdamW beta1 (default 0.9)", .min = 0.0,
        .max = 0.999999),
    OPT(FLOAT, "beta2", train.optim.beta2, "B", "AdamW beta2 (default 0.999)", .min = 0.0,
        .max = 0.999999),
    OPT(FLOAT, "eps", train.optim.eps, "E", "AdamW epsilon (default 1e-8)", .min = 1e-30,
        .max = 1.0),
    OPT(FLOAT, "weight-decay", train.optim.weight_decay, "W", "(default 1e-4)", .min = 0.0,
        .max = 10.0),
    OPT(FLOAT, "clip", train.clip_norm, "NORM", "clip the global gradient norm (default 0: off)",
        .min = 0.0, .max = 1e9),
    OPT(U64, "seed", train.seed, "S", "seed for initialization and shuffling (default 42)", .lo = 0,
        .hi = UINT64_MAX),
    OPT(FLAG, "no-shuffle", train.shuffle, NULL, "keep the dataset order", .lo = 0),
    OPT_HEADING("Devices"),
    OPT(CHOICE, "device", train.device, NULL, "(default auto: CUDA when a GPU is present)",
        .choices = ddp_device_names),
    OPT(CHOICE, "comm", train.comm, NULL, "gradient all-reduce (default auto: NCCL on GPUs)",
        .choices = comms, .values = comm_values),
    OPT(CHOICE, "precision", train.math, NULL, "matrix-product precision (default fp32)",
        .choices = ddp_math_names),
    OPT(INT, "threads", train.threads, "N",
        "BLAS threads per rank. Default: as OPENBLAS_NUM_THREADS\n"
        "or OMP_NUM_THREADS say where set; else the node's CPUs\n"
        "(cgroup cpuset and quota) shared among its ranks, or the\n"
        "CPUs a launcher bound this rank to, up to that share",
        .lo = 1, .hi = 1024, .per_rank = 1),
    OPT_HEADING("Gradient communication"),
    OPT_BUCKET_ENTRIES(train.reducer.bucket_bytes, train.reducer.first_bucket_bytes),
    OPT(CHOICE, "grad-dtype", train.reducer.grad_dtype, NULL,
        "all-reduce precision (default fp32; bf16 halves traffic)", .choices = dtypes,
        .values = dtype_values),
    OPT(FLAG, "no-overlap", train.reducer.overlap, NULL,
        "one all-reduce after backward instead of buckets during it", .lo = 0),
    OPT(INT, "zero", train.zero, "S",
        "shard over the ranks: 0 nothing (default), 1 the optimizer\n"
        "state (reduce-scatter, update of a shard, all-gather),\n"
        "2 also the gradients",
        .lo = 0, .hi = 2),
    OPT_PROGRESS_ENTRY(train.reducer.progress),
    OPT(FLAG, "no-gns", train.gns, NULL, "do not estimate the gradient noise scale (B_simple)",
        .lo = 0),
    OPT(FLOAT, "gns-ema", train.gns_ema, "D",
        "decay per estimate of the noise scale's moving averages\n(default 0.99)", .min = 0.0,
        .max = 0.999999),
    OPT(INT, "gns-every", train.gns_every, "N",
        "estimate the noise scale on every N-th step only\n(default 1; the cost per step / N)",
        .lo = 1, .hi = 1 << 30),
    OPT(CHOICE, "on-nonfinite", train.on_nonfinite, NULL,
        "NaN/inf gradients: stop (default) or skip the step", .choices = ddp_nonfinite_names),
    OPT_HEADING("Output"),
    OPT(INT, "log-every", train.log_every, "N", "steps between progress lines (default 50)",
        .lo = 1, .hi = 1 << 30),
    OPT(U64, "eval-tokens", train.eval_tokens, "N",
        "gpt: evaluations before the last predict the first N bytes\n"
        "of the validation split (default 65536; 0 = all of it)",
        .lo = 0, .hi = (uint64_t)1 << 40),
    OPT(INT, "eval-every", train.eval_every, "N",
        "steps between test evaluations (default: each epoch)", .lo = 1, .hi = 1 << 30),
    OPT(INT, "check-sync", train.check_sync, "N",
        "verify every N steps that all ranks hold identical\nparameters", .lo = 1, .hi = 1 << 30),
    OPT(FLOAT, "target-accuracy", train.target_accuracy, "A",
        "stop after the first evaluation reaching test accuracy A", .min = 0.0, .max = 1.0),
    OPT(FLOAT, "target-loss", train.target_loss, "L",
        "stop after the first evaluation whose loss is at most L\n"
        "(the GPT's validation loss, nats per byte)",
        .min = 0.0, .max = 1e6),
    OPT(PATH, "metrics", train.metrics_path, "FILE", "one JSON object per logged step (rank 0)",
        .per_rank = 1),
    OPT(PATH, "dump-params", dump_params, "FILE",
        "write the final parameters as raw float32 (rank 0)", .per_rank = 1),
    OPT(FLAG, "quiet", train.quiet, NULL, "no progress lines", .lo = 1, .per_rank = 1),
    OPT(INT, "memory-plan", memory_plan, "N",
        "print the bytes per rank of parameters, gradients,\n"
        "optimizer state and activations of these settings on N\n"
        "ranks (one JSON line; --batch is one rank's), then exit",
        .lo = 1, .hi = 1 << 24, .per_rank = 1),
    OPT(PATH, "trace", train.trace_path, "FILE",
        "Chrome trace events (Perfetto); FILE.rankN.json per rank", .per_rank = 1),
    OPT_VERBOSE_ENTRY(verbose),
    OPT_HEADING("Checkpoints"),
    OPT(PATH, "checkpoint-dir", train.checkpoint_dir, "DIR",
        "save checkpoints there (rank 0), after the last step and", .per_rank = 1),
    OPT(INT, "checkpoint-every", train.checkpoint_every, "N", "every N steps", .lo = 1,
        .hi = 1 << 30),
    OPT(INT, "keep", train.keep, "K", "keep the K newest checkpoints (default 3; 0 = all)", .lo = 0,
        .hi = 1 << 20),
    OPT(FLAG, "resume", train.resume, NULL,
        "continue from the newest checkpoint in DIR (fresh if none);\n"
        "the number of ranks may change, the global batch may not",
        .lo = 1),
    OPT(PATH, "export", export_path, "FILE", "write the final parameters as safetensors (rank 0)",
        .per_rank = 1),
    OPT_HEADING("Failure detection"),
    OPT_TIMEOUT_ENTRY(train.timeout_s),
    OPT_HEADING("Information"),
    OPT_HELP_ENTRY(help),
    OPT(FLAG, "version", version, NULL, "the version", .lo = 1, .per_rank = 1),
};
#undef OPT_BASE

const ddp_cli_opt *ddp_cli_train_table(size_t *n) {
    *n = sizeof train_opts / sizeof *train_opts;
    return train_opts;
}

ddp_model_kind ddp_cli_model_kind(int argc, char **argv) {
    /* The last --model given wins, as in the parser; a value it refuses leaves the MLP's
     * defaults, and the parser then names the option. */
    ddp_model_kind kind = DDP_MODEL_MLP;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        const char *v = NULL;
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            v = argv[i + 1];
        else if (strncmp(argv[i], "--model=", 8) == 0)
            v = argv[i] + 8;
        if (!v) continue;
        kind = DDP_MODEL_MLP;
        for (int k = 0; models[k]; k++)
            if (strcmp(v, models[k]) == 0) kind = (ddp_model_kind)model_values[k];
    }
    return kind;
}

ddp_status ddp_cli_parse(int argc, char **argv, ddp_cli_options *opt) {
    memset(opt, 0, sizeof *opt);
    ddp_train_config_defaults_for(&opt->train, ddp_cli_model_kind(argc, argv));
    ddp_cli_table t = {.base = opt};
    t.opts = ddp_cli_train_table(&t.n);
    DDP_CHECK(ddp_cli_parse_tables(argc, argv, &t, 1));
    return DDP_OK;
}

void ddp_cli_usage(FILE *f, const char *prog) {
    char intro[512];
    snprintf(intro, sizeof intro,
             "usage: mpirun -np N %s [options]\n"
             "Data-parallel training: every rank trains on its share of each global batch and\n"
             "gradients are averaged over all ranks before an identical update.\n\n",
             prog);
    ddp_cli_table t = {.base = NULL};
    t.opts = ddp_cli_train_table(&t.n);
    ddp_cli_print_help(f, intro, &t, 1);
}
