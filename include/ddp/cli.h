/*
 * cli: the command-line programs' options and set-up. Every program (ddp-train, and
 * ddp-bench's allreduce and train) declares its options in a table: name, kind of value,
 * accepted range, the field it sets and its help line. One strict parser reads argv
 * against one or more tables and one printer writes --help from them, so all programs
 * spell, check and document their options alike. Separate from main() so that tests and
 * the fuzzer can drive the parsers directly.
 *
 * Syntax: options are spelled in full, `--name value` or `--name=value`; a flag takes no
 * value. A number is the whole text or it is refused; every refusal names the option and
 * says what it expects. There are no positional arguments; `--` ends the options.
 */
#ifndef DDP_CLI_H
#define DDP_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddp/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exit statuses of the programs besides 0 and 1 (any other failure). */
#define DDP_CLI_EXIT_USAGE   2 /* bad options, or options the ranks disagree on */
#define DDP_CLI_EXIT_TIMEOUT 3 /* the watchdog ended the job: a rank died or hangs */

/* ---- option tables ------------------------------------------------------------------ */

typedef enum {
    DDP_CLI_HEADING = 0, /* not an option: a heading line in --help (text in .help) */
    DDP_CLI_FLAG,        /* no value; stores .lo into an int */
    DDP_CLI_INT,         /* a whole number in [.lo, .hi] into an int */
    DDP_CLI_U64,         /* a whole number in [.lo, .hi] into a 64-bit field */
    DDP_CLI_FLOAT,       /* a finite number in [.min, .max] into a float */
    DDP_CLI_MB,          /* mebibytes, fractions allowed, in [.min, .max], into a size_t
                          * as bytes (at least 4, one float) */
    DDP_CLI_BYTES,       /* bytes, with an optional K, M or G suffix (powers of 2),
                          * in [.lo, .hi], into a size_t */
    DDP_CLI_CHOICE,      /* one of .choices, into an int: .values[i] (or i) */
    DDP_CLI_PATH,        /* a non-empty text shorter than the char array it fills */
    DDP_CLI_CUSTOM,      /* .parse reads the value into the field */
} ddp_cli_kind;

typedef struct {
    const char *name; /* without the leading "--"; NULL for a heading */
    ddp_cli_kind kind;
    size_t offset, size;        /* the field it sets: offset from its table's base, and size */
    const char *arg;            /* the value's name in --help ("N", "FILE"); choices: a|b */
    const char *help;           /* the help text; '\n' starts an indented continuation line */
    uint64_t lo, hi;            /* INT, U64, BYTES: the range; FLAG: the value stored */
    double min, max;            /* FLOAT, MB: the range */
    const char *const *choices; /* CHOICE: the names, NULL-terminated */
    const int *values;          /* CHOICE: what each name stores; NULL: its index */
    ddp_status (*parse)(const char *name, const char *arg, void *field); /* CUSTOM */
    int per_rank; /* left out of ddp_cli_canonical: may differ between ranks (paths) */
} ddp_cli_opt;

/* One table of options and the struct its offsets are relative to. */
typedef struct {
    const ddp_cli_opt *opts;
    size_t n;
    void *base;
} ddp_cli_table;

/* The offset and size of `member` in `type`, for a table entry. */
#define DDP_CLI_FIELD(type, member)                                                                \
    .offset = offsetof(type, member), .size = sizeof(((type *)0)->member)

/* Parses argv[1..argc-1] against the tables, storing each value into its table's base
 * (which holds the defaults beforehand: fields of options not given are left alone).
 * Unknown options, missing or unexpected values, malformed numbers and values out of
 * range fail with DDP_ERR_INVALID_ARG and a message naming the option; a table that
 * contradicts itself (a name twice, a field of the wrong size) with DDP_ERR_INTERNAL.
 * Reentrant; argv is not modified. */
ddp_status ddp_cli_parse_tables(int argc, char **argv, const ddp_cli_table *tables, int n_tables);
/* Writes --help: `intro` (the usage lines), then one line (or more, as the help text
 * says) per option under its heading, then how to get error traces. */
void ddp_cli_print_help(FILE *f, const char *intro, const ddp_cli_table *tables, int n_tables);
/* The parsed values of every option not marked per_rank, as one canonical line
 * ("name=value ..."), for ranks to compare. Returns the length written, at most cap - 1
 * (cut to fit); 0 when cap is 0. */
size_t ddp_cli_canonical(const ddp_cli_table *tables, int n_tables, char *buf, size_t cap);
/* "1G", "256M", "64K" where that is exact, else the number of bytes. */
void ddp_cli_format_bytes(uint64_t bytes, char *buf, size_t cap);
/* A table entry by name (without "--"), or NULL. */
const ddp_cli_opt *ddp_cli_find(const ddp_cli_opt *opts, size_t n, const char *name);

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

/* ddp-train's option table (offsets into ddp_cli_options); *n gets its length. */
const ddp_cli_opt *ddp_cli_train_table(size_t *n);
/* Parses argv into opt (starting from defaults) with ddp-train's table. */
ddp_status ddp_cli_parse(int argc, char **argv, ddp_cli_options *opt);
/* The model kind argv asks for with --model (the MLP when it does not): the defaults
 * that the other options start from. */
ddp_model_kind ddp_cli_model_kind(int argc, char **argv);
/* Logs (rank 0) that the program chose other OpenBLAS kernels (ddp_blas_choose_kernels),
 * when it did. */
void ddp_cli_log_blas_note(void);
void ddp_cli_usage(FILE *f, const char *prog);

/* ---- ddp-bench ---------------------------------------------------------------------- */

/* ddp-bench allreduce. */
typedef struct {
    ddp_comm_kind comm;
    size_t min_bytes, max_bytes;
    int iters, warmup_iters; /* timed and untimed all-reduces of each size */
    int reducer;             /* also time the gradient reducer */
    int shared;              /* buffers in node-shared memory (the trainer's CPU path) */
    size_t tensor_bytes;     /* --reducer: tensor boundaries every this many bytes */
    ddp_reducer_options ropt;
    char json[DDP_PATH_MAX]; /* results as JSON (rank 0); "" = none */
    float timeout_s;         /* the watchdog's --timeout */
    int verbose;
    int help;
} ddp_cli_allreduce_options;

const ddp_cli_opt *ddp_cli_allreduce_table(size_t *n);
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
const ddp_cli_opt *ddp_cli_bench_train_table(size_t *n);
ddp_status ddp_cli_parse_bench_train(int argc, char **argv, ddp_cli_bench_train_options *opt);
void ddp_cli_bench_train_usage(FILE *f);

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
    int threads;
    int verbose;
    int help;
} ddp_cli_generate_options;

const ddp_cli_opt *ddp_cli_generate_table(size_t *n);
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
int ddp_cli_default_threads(int requested, int local_size);

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
 * ddp_comm to abort through) with exit status DDP_CLI_EXIT_TIMEOUT. Does not return. */
void ddp_cli_watchdog_expired(void *ctx, const char *message);
/* The compute backend of a training program: cfg's device and precision, the GPU of its
 * local rank (modulo the visible GPUs), BLAS threads by ddp_cli_default_threads. Returns
 * 1 when it was made on every rank. COLLECTIVE over ctrl (agreement). */
int ddp_cli_create_backend(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_backend **out);
/* What a training program trains on: labelled images (the MLP) or a text (the GPT). */
typedef struct {
    ddp_dataset train, test;
    ddp_text text;
} ddp_cli_data;

/* Loads cfg's data into *d: the IDX files of --data, or the text of --text, or, without
 * --text, the default corpus, which one rank per node creates first if it is missing
 * (ddp_text_default_corpus) before every rank reads it. Returns 1 when every rank has it.
 * COLLECTIVE over ctrl (agreement). */
int ddp_cli_load_data(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_cli_data *d);
void ddp_cli_data_free(ddp_cli_data *d);
/* The gradient communicator and the trainer over the data, each agreed on; the rank that
 * failed says why. Returns 1 when both were made on every rank. COLLECTIVE. */
int ddp_cli_create_trainer(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_backend *b,
                           const ddp_cli_data *data, ddp_comm **comm, ddp_trainer **trainer);
/* Compares the canonical text of the parsed options (ddp_cli_canonical) over all ranks;
 * a rank whose text differs from rank 0's prints it, and every rank fails with a
 * message naming the first such rank (DDP_ERR_MISMATCH). COLLECTIVE over ctrl. */
ddp_status ddp_cli_check_same_options(ddp_comm *ctrl, const ddp_cli_table *tables, int n_tables);

#ifdef __cplusplus
}
#endif
#endif
