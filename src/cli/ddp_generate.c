/*
 * ddp-generate: text from a GPT that ddp-train trained (--model gpt), read from a
 * checkpoint or a safetensors export. One process, no MPI: the model's description in the
 * file says what to build, the parameters are loaded into it, and each new byte is drawn
 * from its prediction after the prompt and the bytes drawn so far, printed as it comes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/checkpoint.h"
#include "ddp/cli.h"

/* The model and its parameters (host), from one of the three sources. */
static ddp_status load(const ddp_cli_generate_options *o, ddp_backend *b, ddp_model **out) {
    char path[DDP_PATH_MAX + 64], describe[256];
    void *buf = NULL;
    size_t len = 0;
    ddp_checkpoint_info info;
    *out = NULL;
    if (o->checkpoint_dir[0]) {
        int64_t *steps = NULL;
        size_t n = 0;
        DDP_CHECK(ddp_checkpoint_list(o->checkpoint_dir, &steps, &n));
        if (n == 0) {
            free(steps);
            return DDP_FAIL(DDP_ERR_IO, "--checkpoint-dir %s holds no checkpoint",
                            o->checkpoint_dir);
        }
        ddp_checkpoint_path(path, sizeof path, o->checkpoint_dir, steps[n - 1]);
        free(steps);
    } else {
        snprintf(path, sizeof path, "%s", o->checkpoint[0] ? o->checkpoint : o->safetensors);
    }
    if (o->safetensors[0]) {
        DDP_CHECK(ddp_safetensors_model(path, describe, sizeof describe));
    } else {
        DDP_CHECK(ddp_checkpoint_read(path, &buf, &len, &info));
        snprintf(describe, sizeof describe, "%.*s", (int)info.model_len, info.model);
    }
    ddp_model_spec spec;
    ddp_model *m = NULL;
    ddp_status s = ddp_model_spec_parse(describe, &spec);
    if (s == DDP_OK) s = ddp_model_create(b, &spec, 1, &m);
    if (s == DDP_OK && !ddp_model_takes_tokens(m))
        s = DDP_FAIL(DDP_ERR_INVALID_ARG,
                     "%s holds the model '%s', which does not predict tokens: ddp-generate "
                     "samples from a language model such as a GPT (ddp-train --model gpt)",
                     path, describe);
    size_t n = m ? ddp_model_num_params(m) : 0;
    float *host = m ? malloc(n * sizeof *host) : NULL;
    if (s == DDP_OK && !host) s = DDP_FAIL(DDP_ERR_NOMEM, "out of memory for the parameters");
    if (s == DDP_OK && o->safetensors[0]) {
        s = ddp_safetensors_read(m, path, host, NULL); /* a GPT has no buffers */
    } else if (s == DDP_OK) {
        /* A ZeRO-3 checkpoint's manifest holds no parameters: its shard files do. */
        uint64_t held = info.num_params > 0 ? info.num_params : info.state_size;
        if (held != n)
            s = DDP_FAIL(DDP_ERR_FORMAT, "%s: %llu parameters for a model of %zu", path,
                         (unsigned long long)held, n);
        else
            s = ddp_checkpoint_read_params(path, &info, host);
    }
    if (s == DDP_OK)
        s = ddp_backend_copy(b, ddp_model_params(m), host, n * sizeof *host, DDP_COPY_H2D);
    if (s == DDP_OK) s = ddp_backend_sync(b);
    free(host);
    free(buf);
    if (s != DDP_OK) {
        ddp_model_free(m);
        return s;
    }
    *out = m;
    return DDP_OK;
}

static ddp_status emit(void *ctx, int32_t token) {
    (void)ctx;
    if (putchar(token) == EOF || fflush(stdout) != 0)
        return DDP_FAIL(DDP_ERR_IO, "could not write to standard output");
    return DDP_OK;
}

int main(int argc, char **argv) {
    ddp_blas_choose_kernels(argv);
    ddp_log_init(0, 1, DDP_LOG_WARN);
    ddp_cli_generate_options o;
    ddp_status s = ddp_cli_parse_generate(argc, argv, &o);
    if (s == DDP_OK && !o.help) s = ddp_cli_generate_check(&o);
    if (s != DDP_OK) {
        ddp_log_current_error("parsing options");
        fprintf(stderr, "usage: see %s --help\n", argv[0]);
        return DDP_CLI_EXIT_USAGE;
    }
    if (o.help) {
        ddp_cli_generate_usage(stdout);
        return 0;
    }
    if (o.verbose) ddp_log_show_traces(1);
    ddp_backend_options bo = {.device = (ddp_device_kind)o.device,
                              .math = (ddp_math)o.math,
                              .threads = ddp_cli_default_threads(o.threads, 1, NULL)};
    ddp_backend *b = NULL;
    ddp_model *m = NULL;
    int32_t *prompt = NULL;
    s = ddp_backend_create(&bo, &b);
    if (s == DDP_OK) s = load(&o, b, &m);
    size_t n = strlen(o.prompt);
    if (s == DDP_OK && !(prompt = malloc(n * sizeof *prompt)))
        s = DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; s == DDP_OK && i < n; i++)
        prompt[i] = (unsigned char)o.prompt[i]; /* byte-level vocabulary */
    if (s == DDP_OK) {
        fputs(o.prompt, stdout);
        ddp_generate_options go = {.tokens = (size_t)o.tokens,
                                   .temperature = o.temperature,
                                   .top_k = o.top_k,
                                   .seed = o.seed};
        s = ddp_model_generate(m, prompt, n, &go, emit, NULL);
        putchar('\n');
    }
    if (s != DDP_OK) ddp_log_current_error("generating");
    free(prompt);
    ddp_model_free(m);
    ddp_backend_free(b);
    return s == DDP_OK ? 0 : 1;
}
