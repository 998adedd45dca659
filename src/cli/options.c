/*
 * ddp-train's options: the training configuration's (ddp_train_config_tables: the model
 * kind's own, its data source's and the training options, src/train/) and ddp-train's own
 * below, read by one parser and printed by one --help. ddp-bench train takes the same
 * tables, with its own beside them.
 */
#include <string.h>

#include "cli/cli_impl.h"

#define OPT_BASE ddp_cli_options
static const ddp_opt train_opts[] = {
    OPT_HEADING("Output files and information"),
    OPT(PATH, "dump-params", dump_params, "FILE",
        "write the final parameters as raw float32 (rank 0)", .per_rank = 1),
    OPT(PATH, "export", export_path, "FILE", "write the final parameters as safetensors (rank 0)",
        .per_rank = 1),
    OPT(INT, "memory-plan", memory_plan, "N",
        "print the bytes per rank of parameters, gradients,\n"
        "optimizer state and activations of these settings on N\n"
        "ranks (one JSON line; --batch is one rank's), then exit",
        .lo = 1, .hi = 1 << 24, .per_rank = 1),
    OPT_VERBOSE_ENTRY(verbose),
    OPT_HELP_ENTRY(help),
    OPT(FLAG, "version", version, NULL, "the version", .lo = 1, .def = "0", .per_rank = 1),
};
#undef OPT_BASE

const ddp_opt *ddp_cli_train_table(size_t *n) {
    *n = sizeof train_opts / sizeof *train_opts;
    return train_opts;
}

int ddp_cli_train_tables(ddp_cli_options *opt, ddp_model_kind kind, ddp_train_tables *tt,
                         ddp_opt_table *out) {
    ddp_train_config_tables(opt ? &opt->train : NULL, kind, tt);
    int n = 0;
    for (int i = 0; i < tt->n_active; i++)
        out[n++] = tt->t[i];
    out[n] = (ddp_opt_table){.base = opt};
    out[n].opts = ddp_cli_train_table(&out[n].n);
    n++;
    for (int i = tt->n_active; i < tt->n; i++)
        out[n++] = tt->t[i];
    return n;
}

ddp_model_kind ddp_cli_model_kind(int argc, char **argv) {
    /* The last --model given wins, as in the parser; a value it refuses leaves the MLP's
     * defaults, and the parser then names the option. */
    ddp_model_kind kind = DDP_MODEL_MLP;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        const char *v = NULL;
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            v = argv[i + 1];
        else if (strncmp(argv[i], "--model=", 8) == 0)
            v = argv[i] + 8;
        if (!v) continue;
        int k = ddp_enum_find(ddp_model_kind_names, v);
        kind = k >= 0 ? (ddp_model_kind)k : DDP_MODEL_MLP;
    }
    return kind;
}

ddp_status ddp_cli_parse(int argc, char **argv, ddp_cli_options *opt) {
    memset(opt, 0, sizeof *opt);
    ddp_model_kind kind = ddp_cli_model_kind(argc, argv);
    ddp_train_config_defaults_for(&opt->train, kind);
    ddp_train_tables tt;
    ddp_opt_table t[DDP_CLI_MAX_TABLES];
    int n = ddp_cli_train_tables(opt, kind, &tt, t);
    /* Only ddp-train's own table still needs its defaults. */
    DDP_CHECK(ddp_opt_set_defaults(&t[tt.n_active], 1, (int)kind));
    DDP_CHECK(ddp_opt_parse(argc, argv, t, n));
    return DDP_OK;
}

void ddp_cli_models_intro(char *buf, size_t cap, ddp_model_kind kind) {
    size_t n = (size_t)snprintf(buf, cap, "Models (--model):\n");
    for (int k = 0; k < DDP_MODEL_KIND_COUNT && n + 1 < cap; k++) {
        n += (size_t)snprintf(buf + n, cap - n, "  %s %-5s ", k == (int)kind ? "*" : " ",
                              ddp_model_kind_names[k]);
        /* Continuation lines of the summary are indented under its first. */
        for (const char *p = ddp_model_kind_summary((ddp_model_kind)k); *p && n + 1 < cap; p++)
            n += (size_t)(*p == '\n' ? snprintf(buf + n, cap - n, "\n%10s", "")
                                     : snprintf(buf + n, cap - n, "%c", *p));
        if (n + 1 < cap) n += (size_t)snprintf(buf + n, cap - n, "\n");
    }
    if (n + 1 < cap)
        snprintf(buf + n, cap - n,
                 "The options below are those of --model %s (*), with its defaults.\n\n",
                 ddp_model_kind_name(kind));
}

void ddp_cli_usage(FILE *f, const char *prog, ddp_model_kind kind) {
    char intro[2048];
    int n = snprintf(intro, sizeof intro,
                     "usage: mpirun -np N %s [options]\n"
                     "Data-parallel training: every rank trains on its share of each global "
                     "batch and\ngradients are averaged over all ranks before an identical "
                     "update.\n\n",
                     prog);
    ddp_cli_models_intro(intro + n, sizeof intro - (size_t)n, kind);
    ddp_train_tables tt;
    ddp_opt_table t[DDP_CLI_MAX_TABLES];
    int nt = ddp_cli_train_tables(NULL, kind, &tt, t);
    ddp_opt_print_help(f, intro, t, nt, (int)kind);
}
