/*
 * ddp-bench's subcommands (bench_allreduce.c, bench_train.c) and what they share,
 * private to the ddp-bench program.
 */
#ifndef DDP_BENCH_H
#define DDP_BENCH_H

#include <jansson.h>

#include "ddp/cli.h"

/* Each runs one subcommand on every rank: argv[0] is the subcommand's name. Returns the
 * exit status. COLLECTIVE over ctrl. */
int ddp_bench_allreduce_main(ddp_comm *ctrl, int argc, char **argv);
int ddp_bench_train_main(ddp_comm *ctrl, int argc, char **argv);

/* The maximum over ranks of a time. COLLECTIVE over ctrl. */
ddp_status ddp_bench_max_over_ranks(ddp_comm *ctrl, double *t);
/* Writes the results to --json FILE. */
ddp_status ddp_bench_write_json(json_t *o, const char *path);

#endif
