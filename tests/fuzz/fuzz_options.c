/*
 * Fuzz target: the option parsers of ddp-train and ddp-bench (one table-driven parser
 * behind all three). The input is split into arguments at NUL bytes and newlines (so a
 * corpus file is readable: one argument per line), parsed with ddp_cli_parse, and, when
 * that succeeds, the configuration is resolved for 1 to 4 ranks and written as the
 * canonical line that ranks compare; the same arguments then go through ddp-bench's
 * allreduce and train parsers, and the allreduce options into their canonical line.
 * Every outcome is fine except a crash, a sanitizer report, or a failure without a
 * message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/cli.h"

#define MAX_ARGS 64

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_options: broken invariant: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A private NUL-terminated copy: the parser keeps pointers into argv. */
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char *argv[MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = "ddp-train";
    char *p = text, *end = text + size;
    while (p < end && argc < MAX_ARGS + 1) {
        char *q = p;
        while (q < end && *q != '\0' && *q != '\n')
            q++;
        *q = '\0';
        argv[argc++] = p;
        p = q + 1;
    }
    argv[argc] = NULL;

    ddp_cli_options opt;
    ddp_error_clear();
    ddp_status s = ddp_cli_parse(argc, argv, &opt);
    if (s != DDP_OK) {
        check(ddp_error_message()[0] != '\0', "a failure has a message");
    } else {
        ddp_train_config *c = &opt.train;
        check(strlen(c->data_dir) < DDP_PATH_MAX, "data path terminated");
        check(strlen(c->metrics_path) < DDP_PATH_MAX, "metrics path terminated");
        check(strlen(opt.dump_params) < DDP_PATH_MAX, "dump path terminated");
        check(c->model.hidden.n >= 0 && c->model.hidden.n <= DDP_MAX_HIDDEN, "hidden layers");
        for (int world = 1; world <= 4; world++) {
            ddp_train_config r = *c;
            ddp_error_clear();
            if (ddp_train_config_resolve(&r, world) != DDP_OK) {
                check(ddp_error_message()[0] != '\0', "a resolve failure has a message");
                continue;
            }
            check(r.micro_batch * (size_t)r.accum * (size_t)world == r.global_batch,
                  "global batch = micro x accum x world");
            char canon[2048];
            size_t n = ddp_train_config_canonical(&r, canon, sizeof canon);
            check(n < sizeof canon && strlen(canon) == n, "canonical line fits and is counted");
        }
    }

    /* The same arguments as ddp-bench's. */
    ddp_cli_allreduce_options ar;
    ddp_error_clear();
    argv[0] = "allreduce";
    if (ddp_cli_parse_allreduce(argc, argv, &ar) != DDP_OK) {
        check(ddp_error_message()[0] != '\0', "an allreduce failure has a message");
    } else {
        check(ar.min_bytes >= 4 && ar.min_bytes <= ar.max_bytes, "allreduce sizes in order");
        check(strlen(ar.json) < DDP_PATH_MAX, "json path terminated");
        ddp_opt_table t = {.base = &ar};
        t.opts = ddp_cli_allreduce_table(&t.n);
        char canon[1024];
        size_t n = ddp_opt_canonical(&t, 1, 0, canon, sizeof canon);
        check(n < sizeof canon && strlen(canon) == n, "allreduce canonical line is counted");
    }
    ddp_cli_bench_train_options bt;
    ddp_error_clear();
    argv[0] = "train";
    if (ddp_cli_parse_bench_train(argc, argv, &bt) != DDP_OK) {
        check(ddp_error_message()[0] != '\0', "a bench train failure has a message");
    } else {
        check(bt.bench_steps >= 1 && bt.warmup_steps >= 0, "bench steps in range");
        check(bt.have_data == (bt.cli.train.data_dir[0] != '\0'), "have_data says --data");
    }
    free(text);
    return 0;
}
