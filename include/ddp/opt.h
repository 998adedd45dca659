/*
 * Option tables: every option of a program or of a configuration is one entry that says
 * its name, the field it sets, how its value is read and checked, its help line, its
 * default (per model kind where the default follows the model), whether it is part of the
 * text that ranks compare (a training run's fingerprint), and whether it may change when
 * a run resumes from a checkpoint. One strict parser reads argv against tables, one
 * printer writes --help, one formatter writes the canonical text, and the defaults are
 * written into the fields from the same entries: each fact about an option has one place.
 * This module knows no option itself: the training configuration's tables are in
 * src/train/, a model kind's in its file under src/model/, the programs' in src/cli/.
 *
 * Syntax: options are spelled in full, `--name value` or `--name=value`; a flag takes no
 * value. A number is the whole text or it is refused; every refusal names the option and
 * says what it expects. There are no positional arguments; `--` ends the options.
 */
#ifndef DDP_OPT_H
#define DDP_OPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DDP_OPT_HEADING = 0, /* not an option: a heading line in --help (text in .help) */
    DDP_OPT_FLAG,        /* no value; stores .lo into an int */
    DDP_OPT_INT,         /* a whole number in [.lo, .hi] into an int */
    DDP_OPT_U64,         /* a whole number in [.lo, .hi] into a 64-bit field */
    DDP_OPT_FLOAT,       /* a finite number in [.min, .max] into a float */
    DDP_OPT_MB,          /* mebibytes, fractions allowed, in [.min, .max], into a size_t
                          * as bytes (at least 4, one float) */
    DDP_OPT_BYTES,       /* bytes, with an optional K, M or G suffix (powers of 2),
                          * in [.lo, .hi], into a size_t */
    DDP_OPT_CHOICE,      /* one of .choices, into an int: .values[i] (or i) */
    DDP_OPT_PATH,        /* a non-empty text shorter than the char array it fills */
    DDP_OPT_CUSTOM,      /* .parse reads the value into the field, .format writes it */
} ddp_opt_kind;

/* Defaults may differ per variant (the model kinds, ddp/model.h): at most this many. */
#define DDP_OPT_VARIANTS 8

typedef struct {
    const char *name; /* without the leading "--"; NULL for a heading */
    ddp_opt_kind kind;
    size_t offset, size;        /* the field it sets: offset from its table's base, and size */
    const char *arg;            /* the value's name in --help ("N", "FILE"); choices: a|b */
    const char *help;           /* the help text, without the default (--help adds it); '\n'
                                 * starts an indented continuation line */
    uint64_t lo, hi;            /* INT, U64, BYTES: the range; FLAG: the value stored */
    double min, max;            /* FLOAT, MB: the range */
    const char *const *choices; /* CHOICE: the names, NULL-terminated */
    const int *values;          /* CHOICE: what each name stores; NULL: its index */
    ddp_status (*parse)(const char *name, const char *arg, void *field); /* CUSTOM */
    /* The field's value as text that parse reads back (CUSTOM; for another kind, replaces
     * the plain form in the canonical text). */
    void (*format)(const void *field, char *buf, size_t cap);
    /* The default, written as on the command line ("0.05", "sgd", "256,128"; a flag: "1"
     * as if given, "0" not); NULL or "": zero, "not set" (an empty path). Not
     * range-checked: a default may be a value that a user may not give. */
    const char *def;
    /* Where the default follows the model: DDP_OPT_VARIANTS defaults indexed by kind, NULL
     * where a kind takes def ("" for "not set"). NULL: every kind takes def. */
    const char *const *by_model;
    /* --help: what the default "not set" means ("each epoch", "off"); NULL: say nothing. */
    const char *zero;
    /* May differ between ranks: left out of the canonical text (paths, output, per-rank
     * settings). */
    int per_rank;
    /* May differ between the run that wrote a checkpoint and the run that resumes it
     * (ranks, devices, communication, logging, run length); everything else must match. */
    int resumable;
} ddp_opt;

/* Defaults per model kind: DDP_OPT_BY_MODEL([DDP_MODEL_GPT] = "2e-3"). */
#define DDP_OPT_BY_MODEL(...)                                                                      \
    .by_model = (const char *const[DDP_OPT_VARIANTS]) { __VA_ARGS__ }

/* One table of options and the struct its offsets are relative to. */
typedef struct {
    const ddp_opt *opts;
    size_t n;
    void *base;
    /* Non-NULL: the table's options are known but do not apply here (another model kind's),
     * and this says whose they are ("--model gpt"); one given is refused with "option
     * '--NAME' applies to --model gpt only". Inactive tables are neither printed nor
     * checked for names that repeat. */
    const char *inactive;
} ddp_opt_table;

/* The offset and size of `member` in `type`, for a table entry. */
#define DDP_OPT_FIELD(type, member)                                                                \
    .offset = offsetof(type, member), .size = sizeof(((type *)0)->member)

/* Parses argv[1..argc-1] against the tables, storing each value into its table's base
 * (which holds the defaults beforehand: fields of options not given are left alone).
 * Unknown options, options of an inactive table, missing or unexpected values, malformed
 * numbers and values out of range fail with DDP_ERR_INVALID_ARG and a message naming the
 * option; a table that contradicts itself (a name twice, a field of the wrong size) with
 * DDP_ERR_INTERNAL. Reentrant; argv is not modified. */
ddp_status ddp_opt_parse(int argc, char **argv, const ddp_opt_table *tables, int n_tables);
/* Writes every option's default for model kind `variant` (0 where none differ) into its
 * field under its table's base: the one place where defaults are set. A default that does
 * not parse is ddp's bug (DDP_ERR_INTERNAL). Inactive tables are skipped. */
ddp_status ddp_opt_set_defaults(const ddp_opt_table *tables, int n_tables, int variant);
/* The default text of o for `variant` (NULL: zero). */
const char *ddp_opt_default(const ddp_opt *o, int variant);
/* Writes --help: `intro` (the usage lines), then one line (or more, as the help text
 * says) per option of the active tables under its heading, each with its default for
 * `variant`, then how to get error traces. */
void ddp_opt_print_help(FILE *f, const char *intro, const ddp_opt_table *tables, int n_tables,
                        int variant);
/* The values of every option of the active tables not marked per_rank, as one canonical
 * line ("name=value ..."), for ranks to compare; with `resume`, only those that must also
 * match when a run resumes (not resumable). Returns the length written, at most cap - 1
 * (cut to fit); 0 when cap is 0. */
size_t ddp_opt_canonical(const ddp_opt_table *tables, int n_tables, int resume, char *buf,
                         size_t cap);
/* The value of o's field as text (the canonical form). */
void ddp_opt_format_value(const ddp_opt *o, const void *field, char *buf, size_t cap);
/* "1G", "256M", "64K" where that is exact, else the number of bytes. */
void ddp_opt_format_bytes(uint64_t bytes, char *buf, size_t cap);
/* A table entry by name (without "--"), or NULL. */
const ddp_opt *ddp_opt_find(const ddp_opt *opts, size_t n, const char *name);

#ifdef __cplusplus
}
#endif
#endif
