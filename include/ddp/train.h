/*
 * train: the step loop. Each step every rank takes its share of the global batch,
 * splits it into `accum` micro-batches, runs forward and backward on each (gradients
 * accumulate in the flat buffer, scaled by 1/global_batch), reduces the gradients over
 * the ranks as backward makes them final (on the last micro-batch: bucket by bucket,
 * all-reduced; with --zero, reduce-scattered into shards, on every micro-batch at stages
 * 2 and 3), and applies the same optimizer update (with --zero, each rank its shard, then
 * the parameters all-gathered; at stage 3 unit by unit just before each use). How the ranks
 * keep in step is the sync's business (ddp/sync.h): the step calls it the same way at
 * every stage.
 */
#ifndef DDP_TRAIN_H
#define DDP_TRAIN_H

#include "ddp/backend.h"
#include "ddp/comm.h"
#include "ddp/data.h"
#include "ddp/model.h"
#include "ddp/opt.h"
#include "ddp/optim.h"
#include "ddp/reducer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_PATH_MAX 1024

/* What a step does when the loss or the averaged gradients are NaN or infinite. Every
 * rank sees the same averaged gradients, so all ranks decide alike. */
#define DDP_NONFINITE_POLICIES(X) X(DDP_NONFINITE_ABORT, "abort") X(DDP_NONFINITE_SKIP, "skip")
enum { DDP_NONFINITE_POLICIES(DDP_X_VALUE) DDP_NONFINITE_COUNT };
/* The batch schedule (batch_schedule.c) and how the learning rate follows the batch. */
#define DDP_BATCH_SCHEDULES(X) X(DDP_BATCH_FIXED, "fixed") X(DDP_BATCH_ADAPTIVE, "adaptive")
enum { DDP_BATCH_SCHEDULES(DDP_X_VALUE) DDP_BATCH_SCHEDULE_COUNT };
#define DDP_LR_SCALINGS(X) X(DDP_LR_SCALING_LINEAR, "linear") X(DDP_LR_SCALING_SQRT, "sqrt")
enum { DDP_LR_SCALINGS(DDP_X_VALUE) DDP_LR_SCALING_COUNT };
extern const char *const ddp_nonfinite_names[];
extern const char *const ddp_batch_schedule_names[];
extern const char *const ddp_lr_scaling_names[];

/* A training configuration. Each field that an option sets has its default, help, and
 * whether it is in the fingerprint and may change on resume in that option's entry
 * (src/train/config_options.c; the model kind's own in its file, the data source's in
 * source_*.c): ddp_train_config_tables. */
typedef struct {
    /* model */
    ddp_model_spec model; /* the sizes the data decides are filled in by the data source */
    /* data: IDX images in data_dir (labelled samples), or a text file ("" = the default
     * corpus) */
    char data_dir[DDP_PATH_MAX];
    char text_path[DDP_PATH_MAX];
    /* batch: global = micro_batch * accum * world; set global_batch and one of
     * accum / micro_batch (0 = derive it) */
    size_t global_batch;
    int accum;
    size_t micro_batch;
    /* length: max_steps when > 0, else epochs */
    int epochs;
    int64_t max_steps;
    /* optimizer */
    ddp_optim_config optim;
    ddp_schedule sched; /* total_steps is filled in from the run length */
    float clip_norm;    /* 0 = no clipping */
    uint64_t seed;
    int shuffle;
    /* where */
    ddp_device_kind device;
    ddp_comm_kind comm;
    ddp_hier_mode hierarchical; /* MPI across nodes: node sums, then slices between nodes */
    ddp_math math;
    int threads; /* BLAS threads per rank; 0 = cores / local ranks */
    /* gradient communication */
    ddp_reducer_options reducer;
    /* ZeRO stage: 0 every rank holds and updates everything; 1 each rank keeps the
     * optimizer state of its shard of the flat buffer, gradients are reduce-scattered and
     * the updated parameters all-gathered; 2 also the averaged gradients only for its
     * shard, sent once per micro-batch, the full gradient buffer released bucket by
     * bucket (host memory); 3 also the parameters only for its shard, each unit of the
     * model gathered just before its forward and its backward and released after */
    int zero;
    int gathers;       /* --zero 3: units gathered or being gathered at once (1..3) */
    int keep_gathered; /* --zero 3: keep gathered units over a step's micro-batches */
    /* Set up for a memory plan only (ddp-train --memory-plan; no option of its own): the
     * parameters are left unwritten, so that no page of the model is touched. */
    int plan_only;
    int on_nonfinite; /* DDP_NONFINITE_ABORT or DDP_NONFINITE_SKIP */
    /* output */
    int log_every;  /* steps between progress lines and metrics records */
    int eval_every; /* steps between evaluations; 0 = end of each epoch */
    /* Text: evaluations before the last cover the first eval_tokens predictions of the
     * validation split (exactly once over all ranks); the last covers all of it. 0 = all
     * every time. */
    int64_t eval_tokens;
    int check_sync; /* steps between bitwise parameter checks; 0 = never */
    /* stop after the first evaluation whose test accuracy reaches this (time-to-accuracy
     * runs); 0 = never */
    float target_accuracy;
    /* the same for an evaluation loss at or below this (the GPT's validation loss); 0 = never */
    float target_loss;
    char metrics_path[DDP_PATH_MAX];
    char trace_path[DDP_PATH_MAX]; /* Chrome trace events, one file per rank */
    int quiet;                     /* no progress lines */
    /* checkpoints (ddp/checkpoint.h); only rank 0 uses the directory */
    char checkpoint_dir[DDP_PATH_MAX]; /* "" = no checkpoints */
    int checkpoint_every;              /* steps between checkpoints; 0 = only after the last step */
    int keep;                          /* newest checkpoints kept; 0 = all */
    int resume;                        /* continue from the newest checkpoint in checkpoint_dir */
    /* gradient noise scale (McCandlish et al. 2018), estimated each step from the
     * micro-batch and global-batch gradients; logged as B_simple */
    int gns;       /* estimate it (default 1; --no-gns) */
    float gns_ema; /* decay of its moving averages per estimate (default 0.99) */
    int gns_every; /* estimate on every gns_every-th step (default 1) */
    /* the batch schedule: DDP_BATCH_FIXED, or DDP_BATCH_ADAPTIVE, which doubles the
     * accumulation steps (so the global batch) when B_simple exceeds the batch, up to
     * max_global_batch, with the learning rate scaled by lr_scaling (batch_schedule.c) */
    int batch_schedule;
    int lr_scaling; /* DDP_LR_SCALING_LINEAR (Goyal et al. 2017) or DDP_LR_SCALING_SQRT */
    size_t max_global_batch;
    /* failure detection (per rank; not part of the fingerprint) */
    float timeout_s; /* a collective blocked this long ends the job (--timeout); 0 = never */
    int flight_ring; /* collectives the flight recorder keeps (ddp/flight.h); 0 = off */
    char flight_dir[DDP_PATH_MAX]; /* where a failed job's rings go; "" = checkpoint_dir or . */
    /* compare every collective's fingerprint over the ranks before it runs (in the
     * fingerprint: it adds collectives) */
    int check_collectives;
} ddp_train_config;

/* The option tables of a training configuration for model kind `kind`, with their bases in
 * cfg (NULL for --help): the model options every kind has, the kind's own, its data
 * source's, then the training options; after them, inactive (see ddp_opt_table), the other
 * kinds' and sources' options, which are refused with a note naming the models they
 * belong to. */
#define DDP_TRAIN_MAX_TABLES (2 * DDP_MODEL_KIND_COUNT + 4)
typedef struct {
    ddp_opt_table t[DDP_TRAIN_MAX_TABLES];
    int n;        /* all of them */
    int n_active; /* the first n_active are active */
    char notes[DDP_TRAIN_MAX_TABLES][128];
} ddp_train_tables;
void ddp_train_config_tables(ddp_train_config *cfg, ddp_model_kind kind, ddp_train_tables *out);

/* The defaults for training a model of `kind` (each option's, ddp_opt_set_defaults). */
void ddp_train_config_defaults_for(ddp_train_config *cfg, ddp_model_kind kind);
/* The MLP's. */
void ddp_train_config_defaults(ddp_train_config *cfg);

/* Checks the batch arithmetic for `world` ranks and fills in the derived numbers
 * (accum or micro_batch). A message says which numbers would work. Not collective. */
ddp_status ddp_train_config_resolve(ddp_train_config *cfg, int world);

/* Writes the options that must agree on every rank as one canonical line (every option not
 * marked per_rank); the fingerprint is its CRC-32. Returns the length written, at most
 * cap - 1 (the line is cut to fit); 0 when cap is 0. */
size_t ddp_train_config_canonical(const ddp_train_config *cfg, char *buf, size_t cap);
/* The part of it that must also match when a run resumes from a checkpoint (the options
 * not marked resumable): a checkpoint's settings. */
size_t ddp_train_config_resume_text(const ddp_train_config *cfg, char *buf, size_t cap);

/* Option entries that ddp-bench allreduce shares with the training configuration, `type`
 * being the struct of the table they are in. */
#define DDP_TRAIN_OPT_BUCKETS(type, bucket, first)                                                 \
    {.name = "bucket-mb",                                                                          \
     .kind = DDP_OPT_MB,                                                                           \
     DDP_OPT_FIELD(type, bucket),                                                                  \
     .arg = "MB",                                                                                  \
     .help = "gradient bucket size",                                                               \
     .min = 1e-6,                                                                                  \
     .max = 1e5,                                                                                   \
     .def = "25",                                                                                  \
     .resumable = 1},                                                                              \
    {                                                                                              \
        .name = "first-bucket-mb", .kind = DDP_OPT_MB, DDP_OPT_FIELD(type, first), .arg = "MB",    \
        .help = "the first, last-layer bucket: starts comm early", .min = 1e-6, .max = 1e5,        \
        .def = "1", .resumable = 1                                                                 \
    }
#define DDP_TRAIN_OPT_PROGRESS(type, m)                                                            \
    {                                                                                              \
        .name = "progress", .kind = DDP_OPT_CHOICE, DDP_OPT_FIELD(type, m),                        \
        .help = "how MPI buckets progress during backward", .choices = ddp_progress_names,         \
        .def = "auto", .resumable = 1                                                              \
    }
#define DDP_TRAIN_OPT_HIERARCHICAL(type, m)                                                        \
    {                                                                                              \
        .name = "hierarchical", .kind = DDP_OPT_CHOICE, DDP_OPT_FIELD(type, m),                    \
        .help = "across nodes, sum in each node's memory and let every\n"                          \
                "local rank carry a slice between nodes (auto: where\n"                            \
                "ranks span nodes and a node holds several)",                                      \
        .choices = ddp_hier_names, .def = "auto", .resumable = 1                                   \
    }
#define DDP_TRAIN_OPT_TIMEOUT(type, m)                                                             \
    {                                                                                              \
        .name = "timeout", .kind = DDP_OPT_FLOAT, DDP_OPT_FIELD(type, m), .arg = "SECONDS",        \
        .help = "end the whole job when a collective waits this long for\n"                        \
                "a rank that died or hangs (0 = never)",                                           \
        .min = 0.0, .max = 1e6, .def = "300", .per_rank = 1                                        \
    }

/* ---- data ------------------------------------------------------------------------------ */

/* What a trainer trains on: labelled samples (a training and a test set) or a text. The
 * model kind's data source (ddp_model_kind_data) reads its part; the rest may be empty. */
typedef struct {
    ddp_dataset train, test;
    ddp_text text;
} ddp_train_data;

/* Before ddp_train_data_load, on one rank per node (the others wait): creates what the
 * data needs on the node (the default corpus, ddp_text_default_corpus). Not collective. */
ddp_status ddp_train_data_prepare(const ddp_train_config *cfg);
/* Loads the data of cfg's model kind from cfg's paths into *d (zeroed first). Not
 * collective. */
ddp_status ddp_train_data_load(const ddp_train_config *cfg, ddp_train_data *d);
/* Data of the right shape with random contents, the same on every rank, for measuring
 * speed (ddp-bench train); DDP_ERR_UNSUPPORTED where the source has none (a text loads its
 * file instead). */
ddp_status ddp_train_data_synthetic(const ddp_train_config *cfg, ddp_train_data *d);
/* What ddp_train_data_load reads, for reports: the directory, the text file. */
const char *ddp_train_data_name(const ddp_train_config *cfg);
void ddp_train_data_free(ddp_train_data *d);

typedef struct {
    int64_t step; /* steps completed after this one */
    uint64_t epoch;
    float lr;
    int logged;       /* a logging step: loss holds the loss reduced over all ranks */
    double loss;      /* mean training loss over the global batch (logged steps) */
    double grad_norm; /* global gradient norm, before clipping */
    double t_forward, t_backward, t_allreduce, t_optim, t_step; /* seconds */
    double t_data; /* loading the batch and its micro-batches (not in t_forward) */
    /* the phase times were measured with the device idle at their edges (every step on the
     * CPU, the logged steps on a GPU) */
    int timed;
    double t_exposed;   /* part of the all-reduce time not hidden behind backward (with
                         * --zero: of the reduce-scatters' and the all-gather's, t_allgather
                         * not hidden behind forward) */
    double t_allgather; /* --zero: seconds the parameters' all-gather took (t_allreduce: the
                         * gradients' reduce-scatters) */
    double t_comm_cpu;  /* CPU seconds communication took (ddp_reducer_stats) */
    int skipped;        /* the update was skipped: non-finite gradients */
    /* gradient noise scale: this step's squared norms of this rank's micro-batch gradient
     * and of the averaged gradient, and their batch sizes (0 when not measured) */
    double gns_b_small, gns_small_sq, gns_b_big, gns_big_sq;
    double t_gns; /* seconds this rank spent measuring the micro-batch's norm (its cost) */
    /* logged steps: the moving averages over ranks of the estimates of |G|^2 and
     * tr(Sigma), and B_simple = tr(Sigma) / |G|^2 (gns_valid set) */
    int gns_valid;
    double gns_g2, gns_trace, gns_b_simple;
} ddp_step_stats;

typedef struct ddp_trainer ddp_trainer;

/* Creates the model (initialized from cfg->seed), optimizer and the data source of the
 * model kind over `data` (whose arrays must outlive the trainer; the struct itself is
 * copied); checks that every rank has the same configuration fingerprint, model shape
 * and data, and says which rank differs. `comm` carries the gradients; `ctrl` carries
 * host-side control traffic (agreement, counts, fingerprints) and may be the same
 * communicator when it is MPI or local. COLLECTIVE over both. */
ddp_status ddp_trainer_create(const ddp_train_config *cfg, ddp_backend *b, ddp_comm *comm,
                              ddp_comm *ctrl, const ddp_train_data *data, ddp_trainer **out);
void ddp_trainer_free(ddp_trainer *t);

/* One optimizer step over one global batch. COLLECTIVE. */
ddp_status ddp_trainer_step(ddp_trainer *t, ddp_step_stats *stats);
/* Accuracy and mean loss on the test set, every sample counted once over all ranks.
 * COLLECTIVE. */
ddp_status ddp_trainer_evaluate(ddp_trainer *t, double *accuracy, double *loss);
/* The same over the part of the evaluation set that cfg.eval_tokens allows (text; the
 * whole set with full set, or for samples). COLLECTIVE. */
ddp_status ddp_trainer_evaluate_part(ddp_trainer *t, int full, double *accuracy, double *loss);
/* Verifies that parameters are bitwise identical on all ranks; DDP_ERR_MISMATCH names
 * the first rank that differs from rank 0. COLLECTIVE. */
ddp_status ddp_trainer_check_sync(ddp_trainer *t);
/* The whole run: steps, progress, evaluation, metrics. COLLECTIVE. */
ddp_status ddp_trainer_run(ddp_trainer *t, double *final_accuracy);

/* Bytes per rank of the training state under the run's settings (--zero, the buckets). */
typedef struct {
    size_t params;      /* the parameters: all of them, or under --zero 3 the shard and the units
                         * gathered at most at once */
    size_t params_bf16; /* --precision bf16 under --zero 0 and 3: their bf16 copy for the
                         * products (stage 3: of the shard and the units) */
    /* Gradient memory resident at its peak: the whole flat buffer, or under --zero 2 the
     * two largest buckets (one being written by backward while the other is sent); the
     * rest of the buffer is address space whose pages go back to the system once sent. */
    size_t grads;
    size_t grad_shard;  /* the shard's averaged gradients (--zero 1 to 3) */
    size_t optim;       /* optimizer state: all of it, or this rank's shard */
    size_t optim_full;  /* what the optimizer state would take unsharded */
    size_t activations; /* the model's activation arena */
    size_t comm;        /* communication buffers (ddp_sync_memory) */
} ddp_memory_use;
/* For this run, or with ranks > 0 for the same settings on that many ranks with the same
 * micro-batch (a plan: the largest shard's figures). Not collective. */
void ddp_trainer_memory(const ddp_trainer *t, int ranks, ddp_memory_use *m);

int64_t ddp_trainer_total_steps(const ddp_trainer *t);
ddp_model *ddp_trainer_model(ddp_trainer *t);
/* Nonzero when the gradients live in memory shared by the node's ranks
 * (ddp_comm_alloc_shared), so that their all-reduce sends no message; 0 when they are in
 * the model's own buffer (one rank, several nodes, a GPU, no room in /dev/shm). */
int ddp_trainer_grads_shared(const ddp_trainer *t);
/* Nonzero when the last step's gradients went through PowerSGD (--compress powersgd after
 * its warm-up, or --compress auto once it chose to). */
int ddp_trainer_compressing(const ddp_trainer *t);
/* Gradient bytes each rank sends per step, the collectives that carry them and the
 * reducer's buckets (ddp_sync_wire). */
void ddp_trainer_wire(const ddp_trainer *t, size_t *bytes, int *collectives, int *buckets);
/* The mean loss per prediction of the last evaluation of ddp_trainer_run (< 0: none). */
double ddp_trainer_last_eval_loss(const ddp_trainer *t);
/* An evaluation's result in the data's terms ("test accuracy 0.9004, test loss 0.2914";
 * a text: validation loss, bits per byte, next-byte accuracy) into buf. */
void ddp_trainer_eval_text(const ddp_trainer *t, double accuracy, double loss, char *buf,
                           size_t cap);
/* Copies the parameters to host memory (n = ddp_model_num_params). */
ddp_status ddp_trainer_get_params(ddp_trainer *t, float *host);

#ifdef __cplusplus
}
#endif
#endif
