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

#ifdef __cplusplus
}
#endif
#endif
