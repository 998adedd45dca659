/*
 * One entry per option, and everything about the option in it: the defaults that --help
 * shows for each model kind are its entries' and the values a run starts from (the GPT's
 * --lr 2e-3, not the MLP's 0.05); no help text spells a default by hand; the fingerprint
 * that ranks compare holds exactly the options not marked per_rank, and a checkpoint's
 * settings exactly those neither per_rank nor resumable; every default of every table
 * parses.
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
    const opt_case *c = find_case(train_cases, n_train_cases, name);
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(help_shows_each_models_defaults_from_the_table),
        cmocka_unit_test(help_texts_carry_no_defaults_of_their_own),
        cmocka_unit_test(fingerprint_and_resume_follow_the_entries),
        cmocka_unit_test(every_default_parses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
