/*
 * cli: the command-line options of ddp-train, parsed into a training configuration.
 * Separate from main() so that tests and the fuzzer can drive the parser directly.
 */
#ifndef DDP_CLI_H
#define DDP_CLI_H

#include <stdio.h>

#include "ddp/train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    ddp_train_config train;
    char dump_params[DDP_PATH_MAX]; /* write final parameters as raw float32 (rank 0) */
    char export_path[DDP_PATH_MAX]; /* write final parameters as safetensors (rank 0) */
    int help;
    int version;
} ddp_cli_options;

/* Parses argv into opt (starting from defaults). Unknown options, malformed numbers and
 * out-of-range values fail with DDP_ERR_INVALID_ARG and a message naming the option.
 * Not thread-safe (getopt). */
ddp_status ddp_cli_parse(int argc, char **argv, ddp_cli_options *opt);
void ddp_cli_usage(FILE *f, const char *prog);

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

#ifdef __cplusplus
}
#endif
#endif
