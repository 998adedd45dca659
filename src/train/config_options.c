/*
 * The options of a training configuration, one entry each (ddp/opt.h): the field, the
 * help, the default (per model kind where it follows the model), whether ranks may differ
 * in it (per_rank: not in the fingerprint) and whether a run may resume with another
 * value (resumable). The model kind's own options are in its file (src/model/<kind>.c),
 * the data source's in source_*.c; ddp_train_config_tables puts them together.
 */
#include <stdio.h>
#include <string.h>

#include "ddp/powersgd.h"
#include "train/trainer_impl.h"

/* The communicators a user chooses (the local one is for a world of one, in tests) and the
 * gradient types on the wire: subsets of their enums. */
static const char *const comms[] = {"auto", "mpi", "nccl", NULL};
static const int comm_values[] = {DDP_COMM_AUTO, DDP_COMM_MPI, DDP_COMM_NCCL};
static const char *const dtypes[] = {"fp32", "bf16", NULL};
static const int dtype_values[] = {DDP_F32, DDP_BF16};

/* Whether checkpoints are written: all ranks must agree on it (saving ends in an agreement
 * over all ranks), while the directory concerns rank 0 alone. */
static void format_is_set(const void *field, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", ((const char *)field)[0] ? "set" : "none");
}

#define F(member) DDP_OPT_FIELD(ddp_train_config, member)
#define HEADING(text)                                                                              \
    { .kind = DDP_OPT_HEADING, .help = (text) }
#define GPT(v) [DDP_MODEL_GPT] = (v)
#define CNN(v) [DDP_MODEL_CNN] = (v)

/* Before the kind's own options. */
static const ddp_opt model_opts[] = {
    HEADING("Model"),
    {.name = "model",
     .kind = DDP_OPT_CHOICE,
     F(model.kind),
     .help = "what to train (above); its own options follow, and\n"
             "other options' defaults follow it (--model NAME --help)",
     .choices = ddp_model_kind_names,
     .def = "mlp"},
    {.name = "decay-all",
     .kind = DDP_OPT_FLAG,
     F(model.decay_all),
     .help = "weight decay on every tensor, also on biases, norms and\n"
             "positions (otherwise only on matrices and the token\n"
             "embedding)",
     .lo = 1,
     .def = "0"},
    /* It changes neither a result (the gradients are the same bits) nor a collective (a
     * recomputed forward does not communicate): ranks may differ in it, and a run may
     * resume with or without it. */
    {.name = "recompute",
     .kind = DDP_OPT_FLAG,
     F(model.recompute),
     .help = "activation recomputation: keep only each segment's input\n"
             "(gpt: transformer block; cnn: conv stage; dense layer +\n"
             "activation) and recompute the rest in backward: less\n"
             "memory, about one more forward per step, same gradients",
     .lo = 1,
     .def = "0",
     .per_rank = 1},
};

/* After the data source's. */
static const ddp_opt train_opts[] = {
    HEADING("Batch and length"),
    {.name = "batch",
     .kind = DDP_OPT_U64,
     F(global_batch),
     .arg = "N",
     .help = "global batch over all ranks",
     .lo = 1,
     .hi = 1u << 30,
     .def = "128",
     DDP_OPT_BY_MODEL(GPT("32"))},
    /* accum and micro_batch are derived from each other: either may change on resume. */
    {.name = "accum",
     .kind = DDP_OPT_INT,
     F(accum),
     .arg = "K",
     .help = "micro-batches per rank per step (gradient accumulation)",
     .lo = 1,
     .hi = 1 << 20,
     .zero = "1, or as --micro-batch says",
     .resumable = 1},
    {.name = "micro-batch",
     .kind = DDP_OPT_U64,
     F(micro_batch),
     .arg = "M",
     .help = "or: samples per micro-batch; batch = M x K x ranks",
     .lo = 1,
     .hi = 1u << 30,
     .resumable = 1},
    {.name = "epochs",
     .kind = DDP_OPT_INT,
     F(epochs),
     .arg = "E",
     .help = "epochs; the tail batch of an epoch is dropped",
     .lo = 1,
     .hi = 1 << 20,
     .def = "20",
     DDP_OPT_BY_MODEL(GPT(""), CNN("15")),
     .zero = "none, --steps sets the length",
     .resumable = 1},
    {.name = "steps",
     .kind = DDP_OPT_U64,
     F(max_steps),
     .arg = "S",
     .help = "stop after S steps instead",
     .lo = 1,
     .hi = (uint64_t)1 << 40,
     DDP_OPT_BY_MODEL(GPT("1300")),
     .zero = "the epochs'",
     .resumable = 1},
    {.name = "batch-schedule",
     .kind = DDP_OPT_CHOICE,
     F(batch_schedule),
     .help = "adaptive: double --accum, so the batch, when the\n"
             "measured noise scale B_simple exceeds it",
     .choices = ddp_batch_schedule_names,
     .def = "fixed"},
    {.name = "max-batch",
     .kind = DDP_OPT_U64,
     F(max_global_batch),
     .arg = "B",
     .help = "adaptive: the largest global batch",
     .lo = 1,
     .hi = 1u << 30,
     .zero = "--batch"},
    {.name = "lr-scaling",
     .kind = DDP_OPT_CHOICE,
     F(lr_scaling),
     .help = "adaptive: the rate at batch B is --lr x B/B0 (linear)\n"
             "or x sqrt(B/B0), B0 the starting batch",
     .choices = ddp_lr_scaling_names,
     .def = "linear"},
    HEADING("Optimizer"),
    {.name = "optim",
     .kind = DDP_OPT_CHOICE,
     F(optim.kind),
     .help = "the optimizer",
     .choices = ddp_optim_names,
     .def = "sgd",
     DDP_OPT_BY_MODEL(GPT("adamw"))},
    {.name = "lr",
     .kind = DDP_OPT_FLOAT,
     F(sched.base_lr),
     .arg = "LR",
     .help = "peak learning rate",
     .min = 1e-12,
     .max = 1e3,
     .def = "0.05",
     DDP_OPT_BY_MODEL(GPT("2e-3"))},
    {.name = "min-lr",
     .kind = DDP_OPT_FLOAT,
     F(sched.min_lr),
     .arg = "LR",
     .help = "floor of the cosine schedule",
     .min = 0.0,
     .max = 1e3,
     .def = "0",
     DDP_OPT_BY_MODEL(GPT("2e-4"))},
    {.name = "schedule",
     .kind = DDP_OPT_CHOICE,
     F(sched.kind),
     .help = "learning-rate schedule after the linear warm-up",
     .choices = ddp_sched_names,
     .def = "cosine"},
    {.name = "warmup",
     .kind = DDP_OPT_U64,
     F(sched.warmup_steps),
     .arg = "S",
     .help = "learning-rate warm-up steps",
     .lo = 0,
     .hi = (uint64_t)1 << 40,
     .def = "200",
     DDP_OPT_BY_MODEL(GPT("100"))},
    {.name = "momentum",
     .kind = DDP_OPT_FLOAT,
     F(optim.momentum),
     .arg = "M",
     .help = "SGD momentum",
     .min = 0.0,
     .max = 0.999999,
     .def = "0.9"},
    {.name = "nesterov",
     .kind = DDP_OPT_FLAG,
     F(optim.nesterov),
     .help = "Nesterov momentum",
     .lo = 1,
     .def = "0"},
    {.name = "beta1",
     .kind = DDP_OPT_FLOAT,
     F(optim.beta1),
     .arg = "B",
     .help = "AdamW beta1",
     .min = 0.0,
     .max = 0.999999,
     .def = "0.9"},
    {.name = "beta2",
     .kind = DDP_OPT_FLOAT,
     F(optim.beta2),
     .arg = "B",
     .help = "AdamW beta2",
     .min = 0.0,
     .max = 0.999999,
     .def = "0.999",
     DDP_OPT_BY_MODEL(GPT("0.99"))},
    {.name = "eps",
     .kind = DDP_OPT_FLOAT,
     F(optim.eps),
     .arg = "E",
     .help = "AdamW epsilon",
     .min = 1e-30,
     .max = 1.0,
     .def = "1e-8"},
    {.name = "weight-decay",
     .kind = DDP_OPT_FLOAT,
     F(optim.weight_decay),
     .arg = "W",
     .help = "weight decay",
     .min = 0.0,
     .max = 10.0,
     .def = "1e-4",
     DDP_OPT_BY_MODEL(GPT("0.1"), CNN("2e-3"))},
    {.name = "clip",
     .kind = DDP_OPT_FLOAT,
     F(clip_norm),
     .arg = "NORM",
     .help = "clip the global gradient norm",
     .min = 0.0,
     .max = 1e9,
     DDP_OPT_BY_MODEL(GPT("1")),
     .zero = "off"},
    {.name = "seed",
     .kind = DDP_OPT_U64,
     F(seed),
     .arg = "S",
     .help = "seed for initialization and shuffling",
     .lo = 0,
     .hi = UINT64_MAX,
     .def = "42"},
    {.name = "no-shuffle",
     .kind = DDP_OPT_FLAG,
     F(shuffle),
     .help = "keep the dataset order",
     .lo = 0,
     .def = "0"},
    HEADING("Devices"),
    {.name = "device",
     .kind = DDP_OPT_CHOICE,
     F(device),
     .help = "where to compute (auto: CUDA when a GPU is present)",
     .choices = ddp_device_names,
     .def = "auto",
     .resumable = 1},
    {.name = "comm",
     .kind = DDP_OPT_CHOICE,
     F(comm),
     .help = "gradient all-reduce (auto: NCCL on GPUs)",
     .choices = comms,
     .values = comm_values,
     .def = "auto",
     .resumable = 1},
    {.name = "precision",
     .kind = DDP_OPT_CHOICE,
     F(math),
     .help = "matrix-product precision",
     .choices = ddp_math_names,
     .def = "fp32",
     .resumable = 1},
    {.name = "threads",
     .kind = DDP_OPT_INT,
     F(threads),
     .arg = "N",
     .help = "BLAS threads per rank. Default: as OPENBLAS_NUM_THREADS\n"
             "or OMP_NUM_THREADS say where set; else the node's CPUs\n"
             "(cgroup cpuset and quota) shared among its ranks, or the\n"
             "CPUs a launcher bound this rank to, up to that share",
     .lo = 1,
     .hi = 1024,
     .per_rank = 1},
    HEADING("Gradient communication"),
    DDP_TRAIN_OPT_BUCKETS(ddp_train_config, reducer.bucket_bytes, reducer.first_bucket_bytes),
    {.name = "grad-dtype",
     .kind = DDP_OPT_CHOICE,
     F(reducer.grad_dtype),
     .help = "all-reduce precision (bf16 halves traffic)",
     .choices = dtypes,
     .values = dtype_values,
     .def = "fp32",
     .resumable = 1},
    {.name = "compress",
     .kind = DDP_OPT_CHOICE,
     F(reducer.compress),
     .help = "gradient compression: powersgd sends rank-R factors of\n"
             "each matrix (error feedback keeps what they miss for the\n"
             "next step); vectors travel as they are",
     .choices = ddp_compress_names,
     .def = "none",
     .resumable = 1},
    {.name = "compress-rank",
     .kind = DDP_OPT_INT,
     F(reducer.compress_rank),
     .arg = "R",
     .help = "--compress powersgd: the factors' rank",
     .lo = 1,
     .hi = DDP_PSGD_MAX_RANK,
     .def = "4",
     .resumable = 1},
    {.name = "compress-start",
     .kind = DDP_OPT_U64,
     F(reducer.compress_start),
     .arg = "STEP",
     .help = "--compress powersgd: all-reduce the gradients as they\n"
             "are for the steps before this one (warm-up)",
     .lo = 0,
     .hi = (uint64_t)1 << 40,
     .def = "0",
     .resumable = 1},
    {.name = "no-overlap",
     .kind = DDP_OPT_FLAG,
     F(reducer.overlap),
     .help = "one all-reduce after backward instead of buckets during it",
     .lo = 0,
     .def = "0",
     .resumable = 1},
    {.name = "zero",
     .kind = DDP_OPT_INT,
     F(zero),
     .arg = "S",
     .help = "shard over the ranks: 0 nothing, 1 the optimizer state\n"
             "(reduce-scatter, update of a shard, all-gather),\n"
             "2 also the gradients, 3 also the parameters (each unit\n"
             "gathered just before its forward and its backward)",
     .lo = 0,
     .hi = 3,
     .def = "0",
     .resumable = 1},
    /* Gathers are collectives: every rank must start the same ones, so both are in the
     * fingerprint; a resumed run may change them (they change no result). */
    {.name = "gathers",
     .kind = DDP_OPT_INT,
     F(gathers),
     .arg = "N",
     .help = "--zero 3: units gathered or being gathered at once (1 to\n"
             "3; 2 gathers the next unit while one computes)",
     .lo = 1,
     .hi = 3,
     .def = "2",
     .resumable = 1},
    {.name = "keep-gathered",
     .kind = DDP_OPT_FLAG,
     F(keep_gathered),
     .help = "--zero 3 with --accum: keep each gathered unit over the\n"
             "step's micro-batches instead of gathering it for each\n"
             "(every parameter resident during a step)",
     .lo = 1,
     .def = "0",
     .resumable = 1},
    DDP_TRAIN_OPT_PROGRESS(ddp_train_config, reducer.progress),
    DDP_TRAIN_OPT_HIERARCHICAL(ddp_train_config, hierarchical),
    {.name = "no-gns",
     .kind = DDP_OPT_FLAG,
     F(gns),
     .help = "do not estimate the gradient noise scale (B_simple)",
     .lo = 0,
     .def = "0",
     .resumable = 1},
    {.name = "gns-ema",
     .kind = DDP_OPT_FLOAT,
     F(gns_ema),
     .arg = "D",
     .help = "decay per estimate of the noise scale's moving averages",
     .min = 0.0,
     .max = 0.999999,
     .def = "0.99"},
    {.name = "gns-every",
     .kind = DDP_OPT_INT,
     F(gns_every),
     .arg = "N",
     .help = "estimate the noise scale on every N-th step only\n(the cost per step / N)",
     .lo = 1,
     .hi = 1 << 30,
     .def = "1"},
    {.name = "on-nonfinite",
     .kind = DDP_OPT_CHOICE,
     F(on_nonfinite),
     .help = "NaN/inf gradients: stop, or skip the step",
     .choices = ddp_nonfinite_names,
     .def = "abort",
     .resumable = 1},
    HEADING("Output"),
    /* log_every, eval_every and check_sync decide which collectives run when, so they
     * must agree over the ranks, or ranks would wait in different collectives. */
    {.name = "log-every",
     .kind = DDP_OPT_INT,
     F(log_every),
     .arg = "N",
     .help = "steps between progress lines",
     .lo = 1,
     .hi = 1 << 30,
     .def = "50",
     .resumable = 1},
    {.name = "eval-every",
     .kind = DDP_OPT_INT,
     F(eval_every),
     .arg = "N",
     .help = "steps between evaluations",
     .lo = 1,
     .hi = 1 << 30,
     DDP_OPT_BY_MODEL(GPT("250")),
     .zero = "each epoch",
     .resumable = 1},
    {.name = "check-sync",
     .kind = DDP_OPT_INT,
     F(check_sync),
     .arg = "N",
     .help = "verify every N steps that all ranks hold identical\nparameters",
     .lo = 1,
     .hi = 1 << 30,
     .zero = "never",
     .resumable = 1},
    /* Runs that stop at a target stop together. */
    {.name = "target-accuracy",
     .kind = DDP_OPT_FLOAT,
     F(target_accuracy),
     .arg = "A",
     .help = "stop after the first evaluation reaching test accuracy A",
     .min = 0.0,
     .max = 1.0,
     .zero = "none",
     .resumable = 1},
    {.name = "target-loss",
     .kind = DDP_OPT_FLOAT,
     F(target_loss),
     .arg = "L",
     .help = "stop after the first evaluation whose loss is at most L\n"
             "(the GPT's validation loss, nats per byte)",
     .min = 0.0,
     .max = 1e6,
     .zero = "none",
     .resumable = 1},
    {.name = "metrics",
     .kind = DDP_OPT_PATH,
     F(metrics_path),
     .arg = "FILE",
     .help = "one JSON object per logged step (rank 0)",
     .per_rank = 1},
    {.name = "quiet",
     .kind = DDP_OPT_FLAG,
     F(quiet),
     .help = "no progress lines",
     .lo = 1,
     .def = "0",
     .per_rank = 1},
    {.name = "trace",
     .kind = DDP_OPT_PATH,
     F(trace_path),
     .arg = "FILE",
     .help = "Chrome trace events (Perfetto); FILE.rankN.json per rank",
     .per_rank = 1},
    HEADING("Checkpoints"),
    {.name = "checkpoint-dir",
     .kind = DDP_OPT_PATH,
     F(checkpoint_dir),
     .arg = "DIR",
     .help = "save checkpoints there (rank 0), after the last step and",
     .format = format_is_set,
     .resumable = 1},
    {.name = "checkpoint-every",
     .kind = DDP_OPT_INT,
     F(checkpoint_every),
     .arg = "N",
     .help = "every N steps",
     .lo = 1,
     .hi = 1 << 30,
     .zero = "after the last step only",
     .resumable = 1},
    {.name = "keep",
     .kind = DDP_OPT_INT,
     F(keep),
     .arg = "K",
     .help = "keep the K newest checkpoints (0 = all)",
     .lo = 0,
     .hi = 1 << 20,
     .def = "3",
     .per_rank = 1},
    {.name = "resume",
     .kind = DDP_OPT_FLAG,
     F(resume),
     .help = "continue from the newest checkpoint in DIR (fresh if none);\n"
             "the number of ranks may change, the global batch may not",
     .lo = 1,
     .def = "0",
     .resumable = 1},
    HEADING("Failure detection"),
    DDP_TRAIN_OPT_TIMEOUT(ddp_train_config, timeout_s),
    {.name = "flight-ring",
     .kind = DDP_OPT_INT,
     F(flight_ring),
     .arg = "N",
     .help = "the flight recorder keeps each rank's last N collectives,\n"
             "written to --flight-dir when the job fails (0 = off)",
     .lo = 0,
     .hi = 1 << 20,
     .def = "256",
     .per_rank = 1,
     .resumable = 1},
    {.name = "flight-dir",
     .kind = DDP_OPT_PATH,
     F(flight_dir),
     .arg = "DIR",
     .help = "where each rank writes flight-rankR.json when the job fails",
     .zero = "--checkpoint-dir, else the working directory",
     .per_rank = 1,
     .resumable = 1},
    /* Adds a collective before every collective: every rank must agree on it. */
    {.name = "check-collectives",
     .kind = DDP_OPT_FLAG,
     F(check_collectives),
     .help = "before every collective the ranks compare its fingerprint;\n"
             "the first that differs ends the job naming both ranks",
     .lo = 1,
     .def = "0",
     .resumable = 1},
};

/* Who an inactive table's options belong to: "--model gpt" for a table of model kind
 * `owner`, or "--model mlp, --model cnn" for the source of data kind `data` (given). */
static void owners(char *buf, size_t cap, ddp_model_kind owner, ddp_data_kind data) {
    size_t n = 0;
    buf[0] = '\0';
    for (int k = 0; k < DDP_MODEL_KIND_COUNT && n < cap; k++) {
        int belongs = data == DDP_DATA_KIND_COUNT ? k == (int)owner
                                                  : ddp_model_kind_data((ddp_model_kind)k) == data;
        if (belongs)
            n += (size_t)snprintf(buf + n, cap - n, "%s--model %s", n ? ", " : "",
                                  ddp_model_kind_name((ddp_model_kind)k));
    }
}

static void add(ddp_train_tables *out, const ddp_opt *opts, size_t n, void *base,
                const char *inactive) {
    if (out->n >= DDP_TRAIN_MAX_TABLES || !opts) return;
    out->t[out->n++] = (ddp_opt_table){.opts = opts, .n = n, .base = base, .inactive = inactive};
}

void ddp_train_config_tables(ddp_train_config *cfg, ddp_model_kind kind, ddp_train_tables *out) {
    memset(out, 0, sizeof *out);
    void *model = cfg ? (void *)&cfg->model : NULL;
    ddp_data_kind data = ddp_model_kind_data(kind);
    size_t n;
    const ddp_opt *opts;
    add(out, model_opts, sizeof model_opts / sizeof *model_opts, cfg, NULL);
    opts = ddp_model_kind_options(kind, &n);
    add(out, opts, n, model, NULL);
    opts = ddp_source_options(data, &n);
    add(out, opts, n, cfg, NULL);
    add(out, train_opts, sizeof train_opts / sizeof *train_opts, cfg, NULL);
    out->n_active = out->n;
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        if (k == (int)kind) continue;
        owners(out->notes[out->n], sizeof out->notes[0], (ddp_model_kind)k, DDP_DATA_KIND_COUNT);
        opts = ddp_model_kind_options((ddp_model_kind)k, &n);
        add(out, opts, n, model, out->notes[out->n]);
    }
    for (int d = 0; d < DDP_DATA_KIND_COUNT; d++) {
        if (d == (int)data) continue;
        owners(out->notes[out->n], sizeof out->notes[0], kind, (ddp_data_kind)d);
        opts = ddp_source_options((ddp_data_kind)d, &n);
        add(out, opts, n, cfg, out->notes[out->n]);
    }
}
