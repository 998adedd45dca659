/*
 * cli: the command-line programs' options and set-up. Every program (ddp-train,
 * ddp-generate, and ddp-bench's allreduce and train) declares its options in tables
 * (ddp/opt.h): name, kind of value, accepted range, the field it sets, its help line and
 * its default; a training program's are mostly the training configuration's own
 * (ddp_train_config_tables). One strict parser reads argv against the tables and one
 * printer writes --help from them, so all programs spell, check and document their options
 * alike. Separate from main() so that tests and the fuzzer can drive the parsers directly.
 */
#ifndef DDP_CLI_H
#define DDP_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddp/opt.h"
#include "ddp/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exit statuses of the programs besides 0 and 1 (any other failure). */
#define DDP_CLI_EXIT_USAGE   2 /* bad options, or options the ranks disagree on */
#define DDP_CLI_EXIT_TIMEOUT 3 /* the watchdog ended the job: a rank died or hangs */

/* ---- ddp-train ---------------------------------------------------------------------- */

typedef struct {
    ddp_train_config train;
    char dump_params[DDP_PATH_MAX]; /* write final parameters as raw float32 (rank 0) */
    char export_path[DDP_PATH_MAX]; /* write final parameters as safetensors (rank 0) */
    int verbose;                    /* error messages with their trace */
    int memory_plan;                /* > 0: print the memory per rank on that many ranks, exit */
    int help;
    int version;
} ddp_cli_options;

/* ddp-train's own options, besides the training configuration's (offsets into
 * ddp_cli_options); *n gets their number. */
const ddp_opt *ddp_cli_train_table(size_t *n);
/* Every option table of ddp-train for model kind `kind`, bases in opt (NULL for --help):
 * the configuration's active tables, ddp-train's own, then the inactive ones (other
 * kinds'); tt keeps the notes of the inactive ones and must outlive out. Returns the
 * number of tables written to out. */
#define DDP_CLI_MAX_TABLES (DDP_TRAIN_MAX_TABLES + 2)
int ddp_cli_train_tables(ddp_cli_options *opt, ddp_model_kind kind, ddp_train_tables *tt,
                         ddp_opt_table *out);
/* Parses argv into opt (starting from the defaults of the model kind that argv asks for)
 * with ddp-train's tables. */
ddp_status ddp_cli_parse(int argc, char **argv, ddp_cli_options *opt);
/* The model kind argv asks for with --model (the MLP when it does not): the defaults
 * that the other options start from, and the model options that apply. */
ddp_model_kind ddp_cli_model_kind(int argc, char **argv);
/* The start of a training program's --help: the models with their summaries, `kind`
 * marked as the one whose options and defaults follow. */
void ddp_cli_models_intro(char *buf, size_t cap, ddp_model_kind kind);
/* Logs (rank 0) that the program chose other OpenBLAS kernels (ddp_blas_choose_kernels),
 * when it did. */
void ddp_cli_log_blas_note(void);
/* --help of ddp-train for model kind `kind`. */
void ddp_cli_usage(FILE *f, const char *prog, ddp_model_kind kind);

/* ---- ddp-bench ---------------------------------------------------------------------- */

/* ddp-bench allreduce: the collectives it can time. */
typedef enum {
    DDP_BENCH_ALLREDUCE,      /* in place, every rank gets the sum */
    DDP_BENCH_REDUCE_SCATTER, /* in place, rank r gets the sum of its own block */
    DDP_BENCH_ALLGATHER,      /* in place, every rank gets every rank's block */
} ddp_bench_collective;

/* ddp-bench allreduce. */
typedef struct {
    ddp_comm_kind comm;
    ddp_bench_collective collective;
    size_t min_bytes, max_bytes;
    int iters, warmup_iters; /* timed and untimed all-reduces of each size */
    float gap_ms;            /* CPU time each rank computes before each collective */
    int reducer;             /* also time the gradient reducer */
    int shared;              /* buffers in node-shared memory (the trainer's CPU path) */
    ddp_hier_mode hierarchical;
    size_t tensor_bytes; /* --reducer: tensor boundaries every this many bytes */
    ddp_reducer_options ropt;
    char json[DDP_PATH_MAX]; /* results as JSON (rank 0); "" = none */
    float timeout_s;         /* the watchdog's --timeout */
    int verbose;
    int help;
} ddp_cli_allreduce_options;

const ddp_opt *ddp_cli_allreduce_table(size_t *n);
/* Parses argv (argv[0] is the subcommand) from the defaults. Also checks that
 * --max-bytes is not below --min-bytes. */
ddp_status ddp_cli_parse_allreduce(int argc, char **argv, ddp_cli_allreduce_options *opt);
void ddp_cli_allreduce_usage(FILE *f);

/* ddp-bench train: every ddp-train option, and its own. */
typedef struct {
    ddp_cli_options cli;
    int warmup_steps, bench_steps; /* untimed and timed steps */
    char json[DDP_PATH_MAX];       /* results as JSON (rank 0); "" = none */
    int no_allreduce;              /* skip gradient averaging: the compute-only ceiling */
    int have_data;                 /* --data was given: real data, not synthetic */
} ddp_cli_bench_train_options;

/* The bench's own options (offsets into ddp_cli_bench_train_options). */
const ddp_opt *ddp_cli_bench_train_table(size_t *n);
ddp_status ddp_cli_parse_bench_train(int argc, char **argv, ddp_cli_bench_train_options *opt);
void ddp_cli_bench_train_usage(FILE *f, ddp_model_kind kind);

/* ---- ddp-generate --------------------------------------------------------------------- */

typedef struct {
    char checkpoint[DDP_PATH_MAX];     /* a checkpoint file, */
    char checkpoint_dir[DDP_PATH_MAX]; /* or the newest one in a directory, */
    char safetensors[DDP_PATH_MAX];    /* or an export */
    char prompt[4096];
    int tokens;
    float temperature;
    int top_k;
    uint64_t seed;
    int device; /* ddp_device_kind */
    int math;   /* ddp_math: the products' precision */
    int threads;
    int verbose;
    int help;
} ddp_cli_generate_options;

const ddp_opt *ddp_cli_generate_table(size_t *n);
/* Parses ddp-generate's options. */
ddp_status ddp_cli_parse_generate(int argc, char **argv, ddp_cli_generate_options *o);
/* Exactly one of --checkpoint, --checkpoint-dir and --safetensors must be given. */
ddp_status ddp_cli_generate_check(const ddp_cli_generate_options *o);
void ddp_cli_generate_usage(FILE *f);

/* ---- threads ------------------------------------------------------------------------ */

/* What decides the default number of BLAS threads of a rank. */
typedef struct {
    int env_threads; /* OPENBLAS_NUM_THREADS or OMP_NUM_THREADS is set (non-empty) */
    int node_cpus;   /* CPUs of the node this job may use: the cgroup's cpuset, else
                      * the online CPUs */
    int mask_cpus;   /* CPUs in this process's affinity mask (0: unknown) */
    double quota;    /* the cgroup CPU quota in CPUs (v2 cpu.max, v1 cfs_quota_us); 0 = none */
} ddp_cli_cpu_info;

/* Reads the environment, the affinity mask and the cgroup files. Not collective. */
void ddp_cli_cpu_info_read(ddp_cli_cpu_info *info);

/* The part of it that reads the cgroups: for each line of `proc_cgroup` (the format of
 * /proc/self/cgroup), the hierarchy mounted under `root` (/sys/fs/cgroup), cgroup v2
 * (cpu.max, cpuset.cpus.effective) or v1 (cpu.cfs_quota_us / cpu.cfs_period_us,
 * cpuset.effective_cpus), from the process's level up to the mount: sets info->quota to
 * the tightest quota and info->node_cpus to the nearest cpuset's size, where found. */
void ddp_cli_cgroup_limits(const char *proc_cgroup, const char *root, ddp_cli_cpu_info *info);

/* The BLAS threads for a rank with `local_size` ranks on its node: `requested` when > 0
 * (--threads); 0 (leave the library's own setting) when OPENBLAS_NUM_THREADS or
 * OMP_NUM_THREADS is set; else the CPUs this rank may use: its share of the node's CPUs
 * (capped by the quota) among the node's ranks, but no more than its affinity mask holds
 * (a rank bound by the launcher gets the CPUs of its mask, up to its share); at least 1.
 * Pure: ddp_cli_default_threads feeds it the system's numbers. */
int ddp_cli_threads_for(int requested, int local_size, const ddp_cli_cpu_info *info);
/* Where `requested` threads (--threads) are more than the CPUs of this rank's affinity
 * mask (a launcher's binding: Open MPI binds each rank to one core when it starts few of
 * them; or taskset), they share those CPUs and run slower than fewer would: writes a
 * warning that says so and how to unbind (mpirun --bind-to none, launch/ddp-run) into
 * buf and returns 1. Returns 0 (buf untouched) when they fit, when no number was
 * requested, or when the mask is unknown. Pure. */
int ddp_cli_threads_warning(int requested, const ddp_cli_cpu_info *info, char *buf, size_t cap);
/* Where the node's `local_size` ranks outnumber the CPUs they may keep busy (the node's,
 * capped by the quota) and MPI makes waiting ranks spin (`yields` 0, from
 * ddp_mpi_yields_when_idle), each waiting rank holds a CPU another needs: writes a
 * warning that says so and how to make them yield into buf and returns 1. Returns 0 (buf
 * untouched) when the CPUs suffice or the ranks yield or it is unknown (`yields` -1).
 * Pure. */
int ddp_cli_spin_warning(int local_size, int yields, const ddp_cli_cpu_info *info, char *buf,
                         size_t cap);
/* ddp_cli_threads_for with the system's numbers (info, or read now where NULL); logs
 * ddp_cli_threads_warning's warning where there is one. */
int ddp_cli_default_threads(int requested, int local_size, const ddp_cli_cpu_info *info);

/* ---- set-up phases ------------------------------------------------------------------ */

/* Set-up phases of the command-line programs (ddp-train, ddp-bench), where one rank may
 * fail alone. All ranks agree on the outcome of a phase: the rank that failed prints its
 * own error (prefixed with `phase`), rank 0 also names it; returns 1 when the phase
 * succeeded on every rank. A communication error (DDP_ERR_COMM) aborts the job instead,
 * since the ranks may then be a collective apart. COLLECTIVE over ctrl. */
int ddp_cli_phase_ok(ddp_comm *ctrl, ddp_status s, const char *phase);
/* For a phase that agreed on its failure by itself: prints the error unless it was
 * another rank's (DDP_ERR_REMOTE), and aborts the job on a communication error. */
void ddp_cli_agreed_failure(ddp_comm *ctrl, ddp_status s, const char *phase);
/* Opens the Chrome trace of --trace FILE: FILE itself for a single rank, else
 * FILE.rankN.json per rank (nothing where path is empty). Returns 1 when every rank
 * succeeded. COLLECTIVE over ctrl, with or without a path. */
int ddp_cli_open_trace(ddp_comm *ctrl, const char *path);
/* Starts the watchdog (--timeout SECONDS; 0 = none) with ddp_cli_watchdog_expired as
 * its way out, through ctrl. Returns 1 when it started on every rank. COLLECTIVE. */
int ddp_cli_start_watchdog(ddp_comm *ctrl, double timeout_s);
/* The watchdog's expiry function for the programs: ends the whole job (ctx is the
 * ddp_comm to abort through) with exit status DDP_CLI_EXIT_TIMEOUT, through the flight
 * recorder as ddp_cli_abort does. Does not return. */
void ddp_cli_watchdog_expired(void *ctx, const char *message);
/* Ends the whole job with exit status `code` after a failure on this rank (`reason`),
 * from the main thread: the flight recorder writes this rank's ring and, where its
 * channel is open, rank 0 gathers every rank's and prints its verdict (ddp_flight_conclude:
 * bounded, about 15 s at most), then MPI_Abort. Does not return. */
void ddp_cli_abort(ddp_comm *ctrl, int code, const char *reason);
/* The flight recorder of a training program (after ddp_cli_start_watchdog, whose wake-ups
 * answer the other ranks): --check-collectives compared over the ranks and, where given,
 * turned on for ctrl and every communicator created after; the ring of --flight-ring; its
 * dumps in --flight-dir (else --checkpoint-dir, else the working directory), created where
 * missing; the side channel; the fatal signals. Names ctrl "control". Returns 0 when every
 * rank set it up, else the exit status to end with (DDP_CLI_EXIT_USAGE when the ranks
 * disagree on --check-collectives). COLLECTIVE over ctrl. */
int ddp_cli_start_flight(ddp_comm *ctrl, const ddp_train_config *cfg);
/* Closes the side channel, after ddp_watchdog_free. COLLECTIVE. */
void ddp_cli_stop_flight(void);
/* The compute backend of a training program: cfg's device and precision, the GPU of its
 * local rank (modulo the visible GPUs), BLAS threads by ddp_cli_default_threads. Returns
 * 1 when it was made on every rank. COLLECTIVE over ctrl (agreement). */
int ddp_cli_create_backend(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_backend **out);
/* Loads the data of cfg's model kind into *d (ddp_train_data_load; free it with
 * ddp_train_data_free), the first rank of each node preparing what the data needs on the
 * node first (the default corpus, ddp_train_data_prepare) while the others wait. Returns 1
 * when every rank has it. COLLECTIVE over ctrl (agreement). */
int ddp_cli_load_data(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_train_data *d);
/* The gradient communicator and the trainer over the data, each agreed on; the rank that
 * failed says why. Returns 1 when both were made on every rank. COLLECTIVE. */
int ddp_cli_create_trainer(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_backend *b,
                           const ddp_train_data *data, ddp_comm **comm, ddp_trainer **trainer);
/* Compares the canonical text of the parsed options (ddp_opt_canonical) over all ranks;
 * a rank whose text differs from rank 0's prints it, and every rank fails with a
 * message naming the first such rank (DDP_ERR_MISMATCH). COLLECTIVE over ctrl. */
ddp_status ddp_cli_check_same_options(ddp_comm *ctrl, const ddp_opt_table *tables, int n_tables);

#ifdef __cplusplus
}
#endif
#endif
