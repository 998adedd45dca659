/*
 * ddp-generate's options (ddp/cli.h): where the model comes from and how to sample.
 */
#include <string.h>

#include "cli/cli_impl.h"

#define OPT_BASE ddp_cli_generate_options
static const ddp_opt generate_opts[] = {
    OPT_HEADING("The model (one of)"),
    OPT(PATH, "checkpoint", checkpoint, "FILE", "a checkpoint written by ddp-train", .per_rank = 1),
    OPT(PATH, "checkpoint-dir", checkpoint_dir, "DIR", "the newest checkpoint in DIR",
        .per_rank = 1),
    OPT(PATH, "safetensors", safetensors, "FILE", "parameters exported by ddp-train --export",
        .per_rank = 1),
    OPT_HEADING("Sampling"),
    OPT(PATH, "prompt", prompt, "TEXT", "the text to continue", .def = "\n"),
    OPT(INT, "tokens", tokens, "N", "bytes to generate", .lo = 0, .hi = 1 << 30, .def = "500"),
    OPT(FLOAT, "temperature", temperature, "T",
        "softmax temperature (0 = always the most likely byte)", .min = 0.0, .max = 100.0,
        .def = "0.8"),
    OPT(INT, "top-k", top_k, "K", "draw among the K most likely bytes (0 = all)", .lo = 0,
        .hi = 1 << 24, .def = "40"),
    OPT(U64, "seed", seed, "S", "seed of the draws", .lo = 0, .hi = UINT64_MAX, .def = "42"),
    OPT_HEADING("Device"),
    OPT(CHOICE, "device", device, NULL, "where to compute (auto: CUDA when a GPU is present)",
        .choices = ddp_device_names, .def = "auto"),
    OPT(CHOICE, "precision", math, NULL,
        "matrix-product precision (a model trained in bf16 keeps fp32 weights: any works)",
        .choices = ddp_math_names, .def = "fp32", .per_rank = 1),
    OPT(INT, "threads", threads, "N", "BLAS threads", .lo = 1, .hi = 1024,
        .zero = "as for ddp-train", .per_rank = 1),
    OPT_VERBOSE_ENTRY(verbose),
    OPT_HELP_ENTRY(help),
};
#undef OPT_BASE

const ddp_opt *ddp_cli_generate_table(size_t *n) {
    *n = sizeof generate_opts / sizeof *generate_opts;
    return generate_opts;
}

ddp_status ddp_cli_parse_generate(int argc, char **argv, ddp_cli_generate_options *o) {
    memset(o, 0, sizeof *o);
    ddp_opt_table t = {.base = o};
    t.opts = ddp_cli_generate_table(&t.n);
    DDP_CHECK(ddp_opt_set_defaults(&t, 1, 0));
    DDP_CHECK(ddp_opt_parse(argc, argv, &t, 1));
    return DDP_OK;
}

ddp_status ddp_cli_generate_check(const ddp_cli_generate_options *o) {
    int sources = (o->checkpoint[0] != 0) + (o->checkpoint_dir[0] != 0) + (o->safetensors[0] != 0);
    if (sources != 1)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "give exactly one of --checkpoint FILE, --checkpoint-dir DIR and "
                        "--safetensors FILE (%d given)",
                        sources);
    return DDP_OK;
}

void ddp_cli_generate_usage(FILE *f) {
    ddp_opt_table t = {.base = NULL};
    t.opts = ddp_cli_generate_table(&t.n);
    ddp_opt_print_help(f,
                       "usage: ddp-generate (--checkpoint FILE | --checkpoint-dir DIR | "
                       "--safetensors FILE) [options]\n"
                       "Continues --prompt with text sampled from a GPT trained by ddp-train "
                       "--model gpt.\n\n",
                       &t, 1, 0);
}
