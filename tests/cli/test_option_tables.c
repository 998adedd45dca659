/*
 * The option tables of every program and the parser that reads them. Each option of
 * ddp-train (with each model kind), ddp-bench allreduce and train and ddp-generate has a
 * good value (option_cases.c), which must parse in both spellings (--name value,
 * --name=value) and change exactly the field the table names from the model's default,
 * and a bad one, which must fail with a message naming the option; an option added to a
 * table without such a case fails the walk below. (Defaults, fingerprint and resume
 * flags: test_option_entries.c.) Then what the mechanism
 * itself promises: sizes with suffixes, no abbreviations, hints, `--`, tables that
 * contradict themselves, --help listing everything, and the canonical text that ranks
 * compare.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ddp/cli.h"
#include "option_cases.h"
#include "test_util.h"

/* ---- every option, good and bad ------------------------------------------------------- */

/* The parsers behind one interface. */
typedef ddp_status (*parse_fn)(int argc, char **argv, void *out);
static ddp_status parse_train(int argc, char **argv, void *out) {
    return ddp_cli_parse(argc, argv, out);
}
static ddp_status parse_allreduce(int argc, char **argv, void *out) {
    return ddp_cli_parse_allreduce(argc, argv, out);
}
static ddp_status parse_bench_train(int argc, char **argv, void *out) {
    return ddp_cli_parse_bench_train(argc, argv, out);
}
static ddp_status parse_generate(int argc, char **argv, void *out) {
    return ddp_cli_parse_generate(argc, argv, out);
}

typedef struct {
    const char *prog;
    parse_fn parse;
    size_t size; /* of the struct parse fills */
    const ddp_opt *opts;
    size_t n_opts;
    size_t base;       /* where the table's base lies in that struct */
    const char *model; /* given as --model first (NULL: none) */
    const opt_case *cases;
    size_t n_cases;
} program;

/* Parses {prog, [--model M,] a, b} (b may be NULL) into out. */
static ddp_status parse2(const program *p, const char *a, const char *b, void *out) {
    char *argv[6];
    int n = 0;
    argv[n++] = (char *)p->prog;
    if (p->model) {
        argv[n++] = "--model";
        argv[n++] = (char *)p->model;
    }
    if (a) argv[n++] = (char *)a;
    if (b) argv[n++] = (char *)b;
    argv[n] = NULL;
    return p->parse(n, argv, out);
}

static void walk(const program *p) {
    char *def = calloc(1, p->size), *got = calloc(1, p->size), *eq = calloc(1, p->size);
    assert_non_null(def);
    assert_non_null(got);
    assert_non_null(eq);
    assert_int_equal(parse2(p, NULL, NULL, def), DDP_OK);
    for (size_t i = 0; i < p->n_opts; i++) {
        const ddp_opt *o = &p->opts[i];
        if (!o->name) continue;
        const opt_case *c = find_case(p->cases, p->n_cases, o->name);
        if (!c) fail_msg("%s: --%s has no good and bad case in this test", p->prog, o->name);
        char opt[64], joined[256];
        snprintf(opt, sizeof opt, "--%s", o->name);
        /* Good: both spellings, the same field, changed from its default (the model's). */
        const char *good = c->good;
        if (parse2(p, opt, good, got) != DDP_OK)
            fail_msg("%s %s %s: %s", p->prog, opt, good ? good : "", ddp_error_message());
        size_t at = p->base + o->offset;
        if (memcmp(got + at, def + at, o->size) == 0 && c->alt) {
            good = c->alt;
            assert_int_equal(parse2(p, opt, good, got), DDP_OK);
        }
        if (memcmp(got + at, def + at, o->size) == 0)
            fail_msg("%s %s %s left its field at the default", p->prog, opt, good ? good : "");
        if (good) {
            snprintf(joined, sizeof joined, "%s=%s", opt, good);
            if (parse2(p, joined, NULL, eq) != DDP_OK)
                fail_msg("%s %s: %s", p->prog, joined, ddp_error_message());
            assert_memory_equal(eq + at, got + at, o->size);
        }
        /* Bad: refused, with the option named. */
        ddp_status s;
        if (good) {
            s = parse2(p, opt, c->bad, got);
        } else {
            snprintf(joined, sizeof joined, "%s=%s", opt, c->bad);
            s = parse2(p, joined, NULL, got);
        }
        if (s != DDP_ERR_INVALID_ARG || !strstr(ddp_error_message(), opt))
            fail_msg("%s %s '%s': status %d, message '%s'", p->prog, opt, c->bad, (int)s,
                     ddp_error_message());
    }
    free(def);
    free(got);
    free(eq);
}

/* Every case names an option of some table of the program. */
static void cases_name_options(const char *prog, const opt_case *cases, size_t n,
                               const ddp_opt_table *t, int nt) {
    for (size_t i = 0; i < n; i++) {
        int found = 0;
        for (int k = 0; k < nt && !found; k++)
            found = ddp_opt_find(t[k].opts, t[k].n, cases[i].name) != NULL;
        if (!found) fail_msg("%s: a case for --%s, which is not in any table", prog, cases[i].name);
    }
}

/* Walks every active table of ddp-train for every model kind, through `parse` (ddp-train's
 * or ddp-bench train's, whose ddp_cli_options sit at `at` in its struct). */
static void walk_train_tables(const char *prog, parse_fn parse, size_t size, size_t at) {
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        ddp_cli_options x;
        ddp_train_tables tt;
        ddp_opt_table t[DDP_CLI_MAX_TABLES];
        int nt = ddp_cli_train_tables(&x, (ddp_model_kind)k, &tt, t);
        if (k == 0) cases_name_options(prog, train_cases, n_train_cases, t, nt);
        for (int i = 0; i < nt && !t[i].inactive; i++) {
            program p = {prog,
                         parse,
                         size,
                         t[i].opts,
                         t[i].n,
                         at + (size_t)((char *)t[i].base - (char *)&x),
                         ddp_model_kind_names[k],
                         train_cases,
                         n_train_cases};
            walk(&p);
        }
    }
}

static void every_ddp_train_option_parses_good_and_bad_values(void **state) {
    walk_train_tables("ddp-train", parse_train, sizeof(ddp_cli_options), 0);
}

static void every_generate_option_parses_good_and_bad_values(void **state) {
    program p = {
        "ddp-generate", parse_generate,  sizeof(ddp_cli_generate_options), NULL, 0, 0, NULL,
        generate_cases, n_generate_cases};
    p.opts = ddp_cli_generate_table(&p.n_opts);
    walk(&p);
    /* One model source, no more, no fewer. */
    ddp_cli_generate_options o;
    char *none[] = {"ddp-generate", NULL};
    assert_int_equal(ddp_cli_parse_generate(1, none, &o), DDP_OK);
    assert_int_equal(ddp_cli_generate_check(&o), DDP_ERR_INVALID_ARG);
    char *two[] = {"ddp-generate", "--checkpoint", "a", "--safetensors", "b", NULL};
    assert_int_equal(ddp_cli_parse_generate(5, two, &o), DDP_OK);
    assert_int_equal(ddp_cli_generate_check(&o), DDP_ERR_INVALID_ARG);
    assert_non_null(strstr(ddp_error_message(), "exactly one"));
    char *one[] = {"ddp-generate", "--safetensors", "b", NULL};
    assert_int_equal(ddp_cli_parse_generate(3, one, &o), DDP_OK);
    assert_int_equal(ddp_cli_generate_check(&o), DDP_OK);
    ddp_error_clear();
}

static void every_allreduce_option_parses_good_and_bad_values(void **state) {
    program p = {
        "allreduce",     parse_allreduce,  sizeof(ddp_cli_allreduce_options), NULL, 0, 0, NULL,
        allreduce_cases, n_allreduce_cases};
    p.opts = ddp_cli_allreduce_table(&p.n_opts);
    walk(&p);
}

static void every_bench_train_option_parses_good_and_bad_values(void **state) {
    /* Its own options, then every ddp-train option through the same parser. */
    program p = {"train",
                 parse_bench_train,
                 sizeof(ddp_cli_bench_train_options),
                 NULL,
                 0,
                 0,
                 NULL,
                 bench_train_cases,
                 n_bench_train_cases};
    p.opts = ddp_cli_bench_train_table(&p.n_opts);
    walk(&p);
    walk_train_tables("train", parse_bench_train, sizeof(ddp_cli_bench_train_options),
                      offsetof(ddp_cli_bench_train_options, cli));
}

/* ---- the mechanism -------------------------------------------------------------------- */

static void sizes_take_suffixes_and_must_be_whole_bytes(void **state) {
    static const struct {
        const char *text;
        size_t bytes;
    } good[] = {{"4", 4},
                {"1.5K", 1536},
                {"64KB", 65536},
                {"1m", 1 << 20},
                {"256M", 256u << 20},
                {"0.5G", 1u << 29},
                {"4G", (size_t)4 << 30},
                {"4096b", 4096}};
    static const char *const bad[] = {"0.3K", "1 M", "K", "-1K", "1T",
                                      "1KK",  "",    "3", "1e3", "0x10"};
    ddp_cli_allreduce_options a;
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        char *argv[] = {"allreduce", "--max-bytes", (char *)good[i].text, "--min-bytes", "4", NULL};
        if (ddp_cli_parse_allreduce(5, argv, &a) != DDP_OK)
            fail_msg("--max-bytes %s: %s", good[i].text, ddp_error_message());
        assert_int_equal(a.max_bytes, good[i].bytes);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *argv[] = {"allreduce", "--min-bytes", (char *)bad[i], NULL};
        if (ddp_cli_parse_allreduce(3, argv, &a) != DDP_ERR_INVALID_ARG)
            fail_msg("--min-bytes '%s' was accepted", bad[i]);
        assert_msg_has("--min-bytes");
        assert_msg_has("whole number of bytes");
    }
}

static void allreduce_sizes_must_not_cross(void **state) {
    ddp_cli_allreduce_options a;
    char *argv[] = {"allreduce", "--min-bytes", "1M", "--max-bytes", "64K", NULL};
    assert_int_equal(ddp_cli_parse_allreduce(5, argv, &a), DDP_ERR_INVALID_ARG);
    assert_msg_has("--max-bytes");
    assert_msg_has("below --min-bytes");
}

static void allreduce_defaults_and_renamed_warmup(void **state) {
    ddp_cli_allreduce_options a;
    char *none[] = {"allreduce", NULL};
    assert_int_equal(ddp_cli_parse_allreduce(1, none, &a), DDP_OK);
    assert_int_equal(a.comm, DDP_COMM_MPI);
    assert_int_equal(a.min_bytes, 8);
    assert_int_equal(a.max_bytes, 256u << 20);
    assert_int_equal(a.iters, 20);
    assert_int_equal(a.warmup_iters, 5);
    assert_int_equal(a.tensor_bytes, 1u << 20);
    assert_int_equal(a.ropt.bucket_bytes, 25u << 20);
    assert_true(a.timeout_s == 300.0f);
    assert_string_equal(a.json, "");
    /* Warm-up iterations are --warmup-iters; --warmup is ddp-train's learning-rate
     * warm-up and means nothing here: refused, pointing at the right name. */
    char *old[] = {"allreduce", "--warmup", "3", NULL};
    assert_int_equal(ddp_cli_parse_allreduce(3, old, &a), DDP_ERR_INVALID_ARG);
    assert_msg_has("unknown option '--warmup'");
    assert_msg_has("did you mean --warmup-iters?");
    char *all[] = {"allreduce", "--warmup-iters=2", "--iters",  "9",          "--json=/tmp/x.json",
                   "--reducer", "--tensor-mb=0.5",  "--shared", "--progress", "thread",
                   NULL};
    assert_int_equal(ddp_cli_parse_allreduce(10, all, &a), DDP_OK);
    assert_int_equal(a.warmup_iters, 2);
    assert_int_equal(a.iters, 9);
    assert_string_equal(a.json, "/tmp/x.json");
    assert_int_equal(a.reducer, 1);
    assert_int_equal(a.shared, 1);
    assert_int_equal(a.tensor_bytes, 1u << 19);
    assert_int_equal(a.ropt.progress, DDP_PROGRESS_THREAD);
}

static void bench_train_takes_train_options_and_its_own(void **state) {
    ddp_cli_bench_train_options b;
    char *none[] = {"train", NULL};
    assert_int_equal(ddp_cli_parse_bench_train(1, none, &b), DDP_OK);
    assert_int_equal(b.warmup_steps, 5);
    assert_int_equal(b.bench_steps, 20);
    assert_int_equal(b.have_data, 0); /* synthetic data */
    assert_string_equal(b.json, "");
    /* Mixed in any order; --json=FILE too (the old hand parser refused it); --warmup is
     * still the learning-rate warm-up, --warmup-steps the untimed steps. */
    char *argv[] = {"train",
                    "--json=/tmp/t.json",
                    "--hidden",
                    "64",
                    "--warmup-steps",
                    "2",
                    "--warmup",
                    "10",
                    "--data",
                    "/data/fm",
                    "--no-allreduce",
                    "--steps",
                    "7",
                    NULL};
    assert_int_equal(ddp_cli_parse_bench_train(13, argv, &b), DDP_OK);
    assert_string_equal(b.json, "/tmp/t.json");
    assert_int_equal(b.cli.train.model.hidden.n, 1);
    assert_int_equal(b.warmup_steps, 2);
    assert_int_equal(b.cli.train.sched.warmup_steps, 10);
    assert_int_equal(b.have_data, 1);
    assert_string_equal(b.cli.train.data_dir, "/data/fm");
    assert_int_equal(b.no_allreduce, 1);
    assert_int_equal(b.bench_steps, 7); /* --steps is the number of timed steps */
    /* Too many steps for the step counters. */
    char *many[] = {"train", "--steps", "2000000000", NULL};
    assert_int_equal(ddp_cli_parse_bench_train(3, many, &b), DDP_ERR_INVALID_ARG);
    assert_msg_has("--steps 2000000000");
    char *sum[] = {"train", "--warmup-steps", "600000000", "--bench-steps", "600000000", NULL};
    assert_int_equal(ddp_cli_parse_bench_train(5, sum, &b), DDP_ERR_INVALID_ARG);
    assert_msg_has("--warmup-steps");
    /* An option of neither table. */
    char *bad[] = {"train", "--iters", "3", NULL};
    assert_int_equal(ddp_cli_parse_bench_train(3, bad, &b), DDP_ERR_INVALID_ARG);
    assert_msg_has("unknown option '--iters'");
}

static void names_are_never_abbreviated_but_hinted(void **state) {
    ddp_cli_options o;
    char *abbrev[] = {"ddp-train", "--mic=16", NULL};
    assert_int_equal(ddp_cli_parse(2, abbrev, &o), DDP_ERR_INVALID_ARG);
    assert_msg_has("unknown option '--mic'");
    assert_msg_has("did you mean --micro-batch?");
    char *two[] = {"ddp-train", "--che", "1", NULL};
    assert_int_equal(ddp_cli_parse(3, two, &o), DDP_ERR_INVALID_ARG);
    assert_msg_has("--check-sync or --checkpoint-dir or --checkpoint-every");
    char *none[] = {"ddp-train", "--xyz", NULL};
    assert_int_equal(ddp_cli_parse(2, none, &o), DDP_ERR_INVALID_ARG);
    assert_string_equal(ddp_error_message(), "unknown option '--xyz' (see --help)");
    char *short_opt[] = {"ddp-train", "-h", NULL};
    assert_int_equal(ddp_cli_parse(2, short_opt, &o), DDP_ERR_INVALID_ARG);
    assert_msg_has("unknown option '-h'");
}

static void double_dash_ends_the_options(void **state) {
    ddp_cli_options o;
    char *ok[] = {"ddp-train", "--batch", "64", "--", NULL};
    assert_int_equal(ddp_cli_parse(4, ok, &o), DDP_OK);
    assert_int_equal(o.train.global_batch, 64);
    char *after[] = {"ddp-train", "--", "--batch", NULL};
    assert_int_equal(ddp_cli_parse(3, after, &o), DDP_ERR_INVALID_ARG);
    assert_msg_has("unexpected argument '--batch' after --");
    /* A value may look like an option: it is taken as the value, and judged as one. */
    char *dashes[] = {"ddp-train", "--metrics", "--quiet", NULL};
    assert_int_equal(ddp_cli_parse(3, dashes, &o), DDP_OK);
    assert_string_equal(o.train.metrics_path, "--quiet");
    assert_int_equal(o.train.quiet, 0);
}

/* Tables that contradict themselves are ddp's bugs: refused before anything is written. */
typedef struct {
    int a;
    double d;
} toy;
static void malformed_tables_are_refused(void **state) {
    toy t = {0, 0.0};
    char *argv[] = {"toy", "--a", "1", NULL};
    const ddp_opt twice[] = {
        {.name = "a", .kind = DDP_OPT_INT, DDP_OPT_FIELD(toy, a), .lo = 0, .hi = 9},
        {.name = "a", .kind = DDP_OPT_FLAG, DDP_OPT_FIELD(toy, a), .lo = 1},
    };
    ddp_opt_table tt = {twice, 2, &t, NULL};
    assert_int_equal(ddp_opt_parse(3, argv, &tt, 1), DDP_ERR_INTERNAL);
    assert_msg_has("--a is declared twice");
    const ddp_opt wrong_size[] = {
        {.name = "a", .kind = DDP_OPT_FLOAT, DDP_OPT_FIELD(toy, d), .min = 0, .max = 9},
    };
    ddp_opt_table tw = {wrong_size, 1, &t, NULL};
    assert_int_equal(ddp_opt_parse(3, argv, &tw, 1), DDP_ERR_INTERNAL);
    assert_true(t.a == 0 && t.d == 0.0);
    /* Across tables too: ddp-bench train's own names must not shadow ddp-train's. */
    ddp_opt_table both[2] = {{twice, 1, &t, NULL}, {twice + 1, 1, &t, NULL}};
    assert_int_equal(ddp_opt_parse(3, argv, both, 2), DDP_ERR_INTERNAL);
}

/* Every option appears in --help, which is printed from the tables. */
static void assert_help_lists(const char *text, const ddp_opt *opts, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!opts[i].name) continue;
        char want[64];
        snprintf(want, sizeof want, "  --%s", opts[i].name);
        if (!strstr(text, want)) fail_msg("--help lacks %s", want);
    }
}

static void help_lists_every_option(void **state) {
    size_t n;
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        char *text = train_help((ddp_model_kind)k);
        ddp_train_tables tt;
        ddp_opt_table t[DDP_CLI_MAX_TABLES];
        int nt = ddp_cli_train_tables(NULL, (ddp_model_kind)k, &tt, t);
        for (int i = 0; i < nt && !t[i].inactive; i++)
            assert_help_lists(text, t[i].opts, t[i].n);
        /* The threads rule is documented where the option is. */
        assert_non_null(strstr(text, "OPENBLAS_NUM_THREADS"));
        free(text);
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    ddp_cli_allreduce_usage(f);
    ddp_cli_bench_train_usage(f, DDP_MODEL_MLP);
    fclose(f);
    const ddp_opt *t = ddp_cli_allreduce_table(&n);
    assert_help_lists(text, t, n);
    t = ddp_cli_bench_train_table(&n);
    assert_help_lists(text, t, n);
    free(text);
}

static size_t allreduce_canonical(int argc, char **argv, char *buf, size_t cap) {
    ddp_cli_allreduce_options a;
    assert_int_equal(ddp_cli_parse_allreduce(argc, argv, &a), DDP_OK);
    ddp_opt_table t = {.base = &a};
    t.opts = ddp_cli_allreduce_table(&t.n);
    return ddp_opt_canonical(&t, 1, 0, buf, cap);
}

static void canonical_text_has_what_ranks_must_share(void **state) {
    char base[2048], other[2048];
    char *a[] = {"allreduce", "--max-bytes", "1M", NULL};
    char *per_rank[] = {"allreduce", "--max-bytes", "1M",        "--json", "/tmp/r1.json",
                        "--timeout", "9",           "--verbose", NULL};
    char *sizes[] = {"allreduce", "--max-bytes", "2M", NULL};
    allreduce_canonical(3, a, base, sizeof base);
    assert_non_null(strstr(base, "max-bytes=1048576"));
    assert_non_null(strstr(base, "comm=mpi"));
    assert_non_null(strstr(base, "progress=auto"));
    assert_null(strstr(base, "json="));
    assert_null(strstr(base, "timeout="));
    allreduce_canonical(8, per_rank, other, sizeof other);
    assert_string_equal(base, other);
    allreduce_canonical(3, sizes, other, sizeof other);
    assert_string_not_equal(base, other);
    /* Cut to fit, always terminated. */
    char small[12];
    memset(small, 'x', sizeof small);
    assert_int_equal(allreduce_canonical(3, a, small, sizeof small), sizeof small - 1);
    assert_memory_equal(small, base, sizeof small - 1);
    assert_int_equal(small[sizeof small - 1], '\0');
    assert_int_equal(allreduce_canonical(3, a, small, 0), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_ddp_train_option_parses_good_and_bad_values),
        cmocka_unit_test(every_allreduce_option_parses_good_and_bad_values),
        cmocka_unit_test(every_generate_option_parses_good_and_bad_values),
        cmocka_unit_test(every_bench_train_option_parses_good_and_bad_values),
        cmocka_unit_test(sizes_take_suffixes_and_must_be_whole_bytes),
        cmocka_unit_test(allreduce_sizes_must_not_cross),
        cmocka_unit_test(allreduce_defaults_and_renamed_warmup),
        cmocka_unit_test(bench_train_takes_train_options_and_its_own),
        cmocka_unit_test(names_are_never_abbreviated_but_hinted),
        cmocka_unit_test(double_dash_ends_the_options),
        cmocka_unit_test(malformed_tables_are_refused),
        cmocka_unit_test(help_lists_every_option),
        cmocka_unit_test(canonical_text_has_what_ranks_must_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
