/*
 * The option tables of every program and the parser that reads them. Each option of
 * ddp-train, ddp-bench allreduce and ddp-bench train has a good value, which must parse
 * in both spellings (--name value, --name=value) and change exactly the field the table
 * names, and a bad one, which must fail with a message naming the option; an option
 * added to a table without such a case fails the walk below. Then what the mechanism
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
#include "test_util.h"

/* ---- every option, good and bad ------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *good; /* NULL: a flag */
    const char *bad;  /* refused; for a flag, the value given with '=' */
    const char *alt;  /* another good value, for a model whose default good is */
} opt_case;

static const opt_case train_cases[] = {
    {"data", "/data/mnist", "", NULL},
    {"hidden", "64,32", "64,,32", NULL},
    {"act", "gelu", "tanh", NULL},
    {"model", "gpt", "gpt2", "cnn"},
    {"channels", "16,32,64", "16,,32", NULL},
    {"kernel", "5", "0", NULL},
    {"sync-bn", NULL, "1", NULL},
    {"eval-tokens", "1024", "-1", NULL},
    {"text", "/data/corpus.txt", "", NULL},
    {"layers", "6", "0", NULL},
    {"dim", "384", "-8", NULL},
    {"heads", "6", "1e2", NULL},
    {"ctx", "256", "1", NULL},
    {"norm", "rmsnorm", "rms", NULL},
    {"decay-all", NULL, "1", NULL},
    {"recompute", NULL, "1", NULL},
    {"batch", "256", "0", NULL},
    {"accum", "4", "0", NULL},
    {"micro-batch", "16", "1.5", NULL},
    {"epochs", "3", "0x3", NULL},
    {"steps", "1000", "1e3", NULL},
    {"optim", "adamw", "adam", "sgd"},
    {"lr", "0.1", "nan", NULL},
    {"min-lr", "1e-5", "-1", NULL},
    {"schedule", "constant", "linear", NULL},
    {"warmup", "0", "-1", NULL},
    {"momentum", "0.5", "1", NULL},
    {"nesterov", NULL, "yes", NULL},
    {"beta1", "0.8", "1.5", NULL},
    {"beta2", "0.99", " 0.9", "0.95"},
    {"eps", "1e-6", "0", NULL},
    {"weight-decay", "0.01", "11", NULL},
    {"clip", "1.5", "inf", NULL},
    {"seed", "7", "-1", NULL},
    {"no-shuffle", NULL, "1", NULL},
    {"device", "cpu", "gpu", NULL},
    {"comm", "mpi", "gloo", NULL},
    {"precision", "bf16", "fp16", NULL},
    {"threads", "4", "0", NULL},
    {"bucket-mb", "2.5", "0", NULL},
    {"first-bucket-mb", "0.5", "1e6", NULL},
    {"grad-dtype", "bf16", "fp16", NULL},
    {"no-overlap", NULL, "true", NULL},
    {"zero", "2", "3", NULL},
    {"progress", "thread", "fast", NULL},
    {"on-nonfinite", "skip", "ignore", NULL},
    {"no-gns", NULL, "1", NULL},
    {"gns-ema", "0.9", "1", NULL},
    {"gns-every", "10", "0", NULL},
    {"batch-schedule", "adaptive", "dynamic", NULL},
    {"max-batch", "4096", "0", NULL},
    {"lr-scaling", "sqrt", "cubic", NULL},
    {"target-accuracy", "0.88", "1.5", NULL},
    {"log-every", "10", "0", NULL},
    {"eval-every", "100", "2147483648", NULL},
    {"check-sync", "25", "", NULL},
    {"metrics", "/tmp/m.jsonl", "", NULL},
    {"dump-params", "out.bin", "", NULL},
    {"memory-plan", "8", "0", NULL},
    {"target-loss", "1.5", "-1", NULL},
    {"quiet", NULL, "1", NULL},
    {"trace", "/tmp/trace", "", NULL},
    {"verbose", NULL, "2", NULL},
    {"checkpoint-dir", "ckpt", "", NULL},
    {"checkpoint-every", "10", "0", NULL},
    {"keep", "0", "1048577", NULL},
    {"resume", NULL, "1", NULL},
    {"export", "model.safetensors", "", NULL},
    {"timeout", "7.5", "-1", NULL},
    {"help", NULL, "1", NULL},
    {"version", NULL, "1", NULL},
};

static const opt_case allreduce_cases[] = {
    {"comm", "nccl", "gloo", NULL},     {"min-bytes", "1K", "1.5", NULL},
    {"max-bytes", "1M", "5G", NULL},    {"iters", "3", "0", NULL},
    {"warmup-iters", "0", "-1", NULL},  {"shared", NULL, "1", NULL},
    {"reducer", NULL, "1", NULL},       {"tensor-mb", "0.25", "0", NULL},
    {"bucket-mb", "2", "x", NULL},      {"first-bucket-mb", "0.5", "-1", NULL},
    {"progress", "test", "fast", NULL}, {"json", "/tmp/ar.json", "", NULL},
    {"timeout", "5", "nan", NULL},      {"verbose", NULL, "1", NULL},
    {"help", NULL, "1", NULL},
};

static const opt_case bench_train_cases[] = {
    {"warmup-steps", "7", "-1", NULL},
    {"bench-steps", "30", "0", NULL},
    {"json", "/tmp/train.json", "", NULL},
    {"no-allreduce", NULL, "1", NULL},
};

static const opt_case generate_cases[] = {
    {"checkpoint", "ckpt/ckpt-00000010.ddp", "", NULL},
    {"checkpoint-dir", "ckpt", "", NULL},
    {"safetensors", "model.safetensors", "", NULL},
    {"prompt", "And God said", "", NULL},
    {"tokens", "100", "-1", NULL},
    {"temperature", "0", "-0.5", NULL},
    {"top-k", "0", "k", NULL},
    {"seed", "7", "-7", NULL},
    {"device", "cpu", "tpu", NULL},
    {"threads", "2", "0", NULL},
    {"verbose", NULL, "1", NULL},
    {"help", NULL, "1", NULL},
};

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

static const opt_case *find_case(const opt_case *cases, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(cases[i].name, name) == 0) return &cases[i];
    return NULL;
}

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
        if (k == 0)
            cases_name_options(prog, train_cases, sizeof train_cases / sizeof *train_cases, t, nt);
        for (int i = 0; i < nt && !t[i].inactive; i++) {
            program p = {prog,
                         parse,
                         size,
                         t[i].opts,
                         t[i].n,
                         at + (size_t)((char *)t[i].base - (char *)&x),
                         ddp_model_kind_names[k],
                         train_cases,
                         sizeof train_cases / sizeof *train_cases};
            walk(&p);
        }
    }
}

#define CASES(a) (a), sizeof(a) / sizeof *(a)

static void every_ddp_train_option_parses_good_and_bad_values(void **state) {
    walk_train_tables("ddp-train", parse_train, sizeof(ddp_cli_options), 0);
}

static void every_generate_option_parses_good_and_bad_values(void **state) {
    program p = {"ddp-generate", parse_generate,       sizeof(ddp_cli_generate_options), NULL, 0, 0,
                 NULL,           CASES(generate_cases)};
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
    program p = {"allreduce", parse_allreduce,       sizeof(ddp_cli_allreduce_options), NULL, 0, 0,
                 NULL,        CASES(allreduce_cases)};
    p.opts = ddp_cli_allreduce_table(&p.n_opts);
    walk(&p);
}

static void every_bench_train_option_parses_good_and_bad_values(void **state) {
    /* Its own options, then every ddp-train option through the same parser. */
    program p = {"train", parse_bench_train,       sizeof(ddp_cli_bench_train_options), NULL, 0, 0,
                 NULL,    CASES(bench_train_cases)};
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

/* --help of ddp-train for model kind k (malloc'd). */
static char *train_help(ddp_model_kind k) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    ddp_cli_usage(f, "ddp-train", k);
    fclose(f);
    return text;
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

/* ---- one entry per option: defaults, help, fingerprint, resume ------------------------ */

/* The lines of --help that document --name: from its line to the next option's. */
static void help_of(const char *text, const char *name, char *buf, size_t cap) {
    char want[64];
    snprintf(want, sizeof want, "  --%s ", name);
    const char *a = strstr(text, want);
    if (!a) {
        snprintf(want, sizeof want, "  --%s\n", name);
        a = strstr(text, want);
    }
    if (!a) fail_msg("--help lacks --%s", name);
    const char *b = strstr(a + 1, "\n  --");
    size_t len = b ? (size_t)(b - a) : strlen(a);
    snprintf(buf, cap, "%.*s", (int)(len < cap ? len : cap - 1), a);
}

/* The defaults that --help shows for a model are those of its entries, and the values the
 * configuration starts from: parsing the shown default as the option's value leaves the
 * field as ddp_train_config_defaults_for made it. The regression this guards: --help
 * printed the MLP's defaults for --model gpt and cnn. */
static void help_shows_each_models_defaults_from_the_table(void **state) {
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        char *text = train_help((ddp_model_kind)k);
        ddp_cli_options d, x;
        ddp_train_tables tt;
        ddp_opt_table t[DDP_CLI_MAX_TABLES];
        int nt = ddp_cli_train_tables(&x, (ddp_model_kind)k, &tt, t);
        char model[16];
        snprintf(model, sizeof model, "%s", ddp_model_kind_names[k]);
        char *argv0[] = {"ddp-train", "--model", model, NULL};
        OK(ddp_cli_parse(3, argv0, &d));
        for (int i = 0; i < nt && !t[i].inactive; i++)
            for (size_t j = 0; j < t[i].n; j++) {
                const ddp_opt *o = &t[i].opts[j];
                const char *def = ddp_opt_default(o, k);
                /* --model's own default is the MLP whichever model was asked for. */
                if (!o->name || o->kind == DDP_OPT_FLAG || !def || !*def ||
                    strcmp(o->name, "model") == 0)
                    continue;
                char lines[1024], want[256];
                help_of(text, o->name, lines, sizeof lines);
                snprintf(want, sizeof want, "(default %s)", def);
                if (!strstr(lines, want))
                    fail_msg("--model %s --help: --%s shows no %s:\n%s", model, o->name, want,
                             lines);
                /* The shown default, given as the value, is the value already there. */
                char *argv[] = {"ddp-train", "--model", model, NULL, (char *)def, NULL};
                char opt[64];
                snprintf(opt, sizeof opt, "--%s", o->name);
                argv[3] = opt;
                if (ddp_cli_parse(5, argv, &x) != DDP_OK) {
                    /* Defaults outside what a user may give are "not set" values. */
                    ddp_error_clear();
                    continue;
                }
                size_t at = (size_t)((char *)t[i].base - (char *)&x) + o->offset;
                if (memcmp((char *)&x + at, (char *)&d + at, o->size) != 0)
                    fail_msg("--model %s: --%s %s is not the default the run starts from", model,
                             o->name, def);
            }
        free(text);
    }
    /* The case of the regression, spelled out. */
    char *gpt = train_help(DDP_MODEL_GPT), *mlp = train_help(DDP_MODEL_MLP), lines[1024];
    help_of(gpt, "lr", lines, sizeof lines);
    assert_non_null(strstr(lines, "(default 2e-3)"));
    help_of(gpt, "batch", lines, sizeof lines);
    assert_non_null(strstr(lines, "(default 32)"));
    help_of(mlp, "lr", lines, sizeof lines);
    assert_non_null(strstr(lines, "(default 0.05)"));
    help_of(mlp, "hidden", lines, sizeof lines);
    assert_non_null(strstr(lines, "(default 256,128)"));
    assert_null(strstr(gpt, "  --hidden"));
    free(gpt);
    free(mlp);
}

/* Defaults live in the entries alone: no help text spells one out by hand. */
static void help_texts_carry_no_defaults_of_their_own(void **state) {
    const ddp_opt *lists[16];
    size_t counts[16];
    int n = 0;
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        ddp_train_tables tt;
        ddp_opt_table t[DDP_CLI_MAX_TABLES];
        int nt = ddp_cli_train_tables(NULL, (ddp_model_kind)k, &tt, t);
        for (int i = 0; i < nt; i++)
            for (size_t j = 0; j < t[i].n; j++)
                if (t[i].opts[j].help && strstr(t[i].opts[j].help, "(default"))
                    fail_msg("--%s's help says its default itself: %s", t[i].opts[j].name,
                             t[i].opts[j].help);
    }
    lists[n] = ddp_cli_allreduce_table(&counts[n]), n++;
    lists[n] = ddp_cli_bench_train_table(&counts[n]), n++;
    lists[n] = ddp_cli_generate_table(&counts[n]), n++;
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < counts[i]; j++)
            if (lists[i][j].help && strstr(lists[i][j].help, "(default"))
                fail_msg("--%s's help says its default itself", lists[i][j].name);
}

/* Parses the good value of --name for model kind k into o; 0 when the option has no case
 * or does not apply to k. */
static int parse_good(ddp_model_kind k, const char *name, ddp_cli_options *o) {
    const opt_case *c = find_case(train_cases, sizeof train_cases / sizeof *train_cases, name);
    if (!c) return 0;
    char model[16], opt[64];
    snprintf(model, sizeof model, "%s", ddp_model_kind_names[k]);
    snprintf(opt, sizeof opt, "--%s", name);
    ddp_cli_options d;
    char *argv0[] = {"ddp-train", "--model", model, NULL};
    OK(ddp_cli_parse(3, argv0, &d));
    const char *values[2] = {c->good, c->alt};
    for (int v = 0; v < 2; v++) {
        if (v == 1 && !values[1]) break;
        char *argv[] = {"ddp-train", "--model", model, opt, (char *)values[v], NULL};
        OK(ddp_cli_parse(values[v] ? 5 : 4, argv, o));
        if (memcmp(&o->train, &d.train, sizeof d.train) != 0) return 1;
    }
    return 1;
}

/* The fingerprint ranks compare holds every option not marked per_rank, and what must
 * match on resume every one also not marked resumable: an option's entry decides both. */
static void fingerprint_and_resume_follow_the_entries(void **state) {
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        ddp_train_tables tt;
        ddp_opt_table t[DDP_CLI_MAX_TABLES];
        ddp_cli_train_tables(NULL, (ddp_model_kind)k, &tt, t);
        ddp_cli_options d;
        char model[16];
        snprintf(model, sizeof model, "%s", ddp_model_kind_names[k]);
        char *argv0[] = {"ddp-train", "--model", model, NULL};
        OK(ddp_cli_parse(3, argv0, &d));
        char canon0[4096], resume0[4096], canon[4096], resume[4096];
        ddp_train_config_canonical(&d.train, canon0, sizeof canon0);
        ddp_train_config_resume_text(&d.train, resume0, sizeof resume0);
        for (int i = 0; i < tt.n_active; i++)
            for (size_t j = 0; j < t[i].n; j++) {
                const ddp_opt *o = &t[i].opts[j];
                ddp_cli_options x;
                if (!o->name || strcmp(o->name, "model") == 0 || !parse_good(k, o->name, &x))
                    continue;
                ddp_train_config_canonical(&x.train, canon, sizeof canon);
                ddp_train_config_resume_text(&x.train, resume, sizeof resume);
                int in_canon = strcmp(canon, canon0) != 0, in_resume = strcmp(resume, resume0) != 0;
                if (in_canon != !o->per_rank)
                    fail_msg("--model %s --%s: in the fingerprint %d, per_rank %d", model, o->name,
                             in_canon, o->per_rank);
                if (in_resume != (!o->per_rank && !o->resumable))
                    fail_msg("--model %s --%s: in the resume settings %d, per_rank %d, "
                             "resumable %d",
                             model, o->name, in_resume, o->per_rank, o->resumable);
            }
    }
}

/* Every default of every table parses (a default that does not is ddp's bug). */
static void every_default_parses(void **state) {
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        ddp_cli_options x;
        ddp_train_tables tt;
        ddp_opt_table t[DDP_CLI_MAX_TABLES];
        int nt = ddp_cli_train_tables(&x, (ddp_model_kind)k, &tt, t);
        OK(ddp_opt_set_defaults(t, nt, k));
        assert_int_equal(x.train.model.kind, DDP_MODEL_MLP); /* --model's own default */
    }
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
        cmocka_unit_test(help_shows_each_models_defaults_from_the_table),
        cmocka_unit_test(help_texts_carry_no_defaults_of_their_own),
        cmocka_unit_test(fingerprint_and_resume_follow_the_entries),
        cmocka_unit_test(every_default_parses),
        cmocka_unit_test(canonical_text_has_what_ranks_must_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
