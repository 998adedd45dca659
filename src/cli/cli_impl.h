/*
 * Shorthands for writing option tables (ddp_opt, ddp/opt.h), private to src/cli/.
 * Define OPT_BASE as the struct a table's offsets are relative to before the table.
 * `.per_rank = 1` marks an option that may differ between ranks (every path does); `.def`
 * gives its default.
 */
#ifndef DDP_CLI_IMPL_H
#define DDP_CLI_IMPL_H

#include "ddp/cli.h"

#define OPT_FIELD(m) DDP_OPT_FIELD(OPT_BASE, m)

/* A heading line in --help. */
#define OPT_HEADING(text)                                                                          \
    { .kind = DDP_OPT_HEADING, .help = (text) }
/* An option of kind DDP_OPT_<k> named nm that sets member m of OPT_BASE; argname names
 * its value in --help (NULL for flags and choices). The rest are designators: the range
 * (.lo/.hi, .min/.max), .choices and .values, .parse, .def, .per_rank. */
#define OPT(k, nm, m, argname, text, ...)                                                          \
    {                                                                                              \
        .name = (nm), .kind = DDP_OPT_##k, OPT_FIELD(m), .arg = (argname), .help = (text),         \
        __VA_ARGS__                                                                                \
    }

/* Shared entries: the same option, spelled and documented once, in every table that has
 * it (OPT_BASE decides where it is stored). */
#define OPT_HELP_ENTRY(m)                                                                          \
    OPT(FLAG, "help", m, NULL, "this text (with --model NAME: that model's)", .lo = 1, .def = "0", \
        .per_rank = 1)
#define OPT_VERBOSE_ENTRY(m)                                                                       \
    OPT(FLAG, "verbose", m, NULL, "errors with their trace of source locations (or DDP_DEBUG=1)",  \
        .lo = 1, .def = "0", .per_rank = 1)

#endif
