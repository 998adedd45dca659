/*
 * Shorthands for writing option tables (ddp_cli_opt, ddp/cli.h), private to src/cli/.
 * Define OPT_BASE as the struct a table's offsets are relative to before the table.
 * `.per_rank = 1` marks an option that may differ between ranks (every path does).
 */
#ifndef DDP_CLI_IMPL_H
#define DDP_CLI_IMPL_H

#include "ddp/cli.h"

#define OPT_FIELD(m) DDP_CLI_FIELD(OPT_BASE, m)

/* A heading line in --help. */
#define OPT_HEADING(text)                                                                          \
    { .kind = DDP_CLI_HEADING, .help = (text) }
/* An option of kind DDP_CLI_<k> named nm that sets member m of OPT_BASE; argname names
 * its value in --help (NULL for flags and choices). The rest are designators: the range
 * (.lo/.hi, .min/.max), .choices and .values, .parse, .per_rank. */
#define OPT(k, nm, m, argname, text, ...)                                                          \
    {                                                                                              \
        .name = (nm), .kind = DDP_CLI_##k, OPT_FIELD(m), .arg = (argname), .help = (text),         \
        __VA_ARGS__                                                                                \
    }

/* Shared entries: the same option, spelled and documented once, in every table that has
 * it (OPT_BASE decides where it is stored). */
#define OPT_HELP_ENTRY(m) OPT(FLAG, "help", m, NULL, "this text", .lo = 1, .per_rank = 1)
#define OPT_VERBOSE_ENTRY(m)                                                                       \
    OPT(FLAG, "verbose", m, NULL, "errors with their trace of source locations (or DDP_DEBUG=1)",  \
        .lo = 1, .per_rank = 1)
#define OPT_TIMEOUT_ENTRY(m)                                                                       \
    OPT(FLOAT, "timeout", m, "SECONDS",                                                            \
        "end the whole job when a collective waits this long for\n"                                \
        "a rank that died or hangs (default 300; 0 = never)",                                      \
        .min = 0.0, .max = 1e6, .per_rank = 1)
#define OPT_PROGRESS_ENTRY(m)                                                                      \
    OPT(CHOICE, "progress", m, NULL, "how MPI buckets progress during backward (default auto)",    \
        .choices = ddp_progress_names)
#define OPT_BUCKET_ENTRIES(bucket, first)                                                          \
    OPT(MB, "bucket-mb", bucket, "MB", "gradient bucket size (default 25)", .min = 1e-6,           \
        .max = 1e5),                                                                               \
        OPT(MB, "first-bucket-mb", first, "MB",                                                    \
            "the first, last-layer bucket (default 1): starts comm early", .min = 1e-6,            \
            .max = 1e5)

#endif
