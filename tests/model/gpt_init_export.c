/*
 * gpt_init_export: writes the initial weights of ddp's GPT as a safetensors export, for
 * tests/model/make_gpt_reference.py, which loads them into the PyTorch twin of the model
 * so that both start from the same point. The weights are exactly those of
 * ddp_model_init_params with the given seed, which the trainer uses on every rank.
 *
 *   gpt_init_export "gpt L2 C32 H4 T16 V256" SEED OUT.safetensors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "ddp/checkpoint.h"
#include "ddp/model.h"

static ddp_status export_init(const char *describe, uint64_t seed, const char *path) {
    ddp_model_spec spec;
    DDP_CHECK(ddp_model_spec_parse(describe, &spec));
    ddp_backend_options bo = {.device = DDP_DEVICE_CPU, .threads = 1};
    ddp_backend *b;
    DDP_CHECK(ddp_backend_create(&bo, &b));
    ddp_model *m = NULL;
    ddp_status s = ddp_model_create(b, &spec, 1, &m);
    if (s == DDP_OK) s = ddp_model_init_params(m, seed);
    /* The CPU backend's parameters are host memory: written as they are. The GPT has no
     * buffers (NULL). */
    if (s == DDP_OK) s = ddp_safetensors_write(m, ddp_model_params(m), ddp_model_buffers(m), path);
    if (s == DDP_OK)
        printf("%s, seed %" PRIu64 ": %zu parameters, CRC-32 %08" PRIx32 " -> %s\n", describe, seed,
               ddp_model_num_params(m),
               ddp_crc32(0, ddp_model_params(m), ddp_model_num_params(m) * sizeof(float)), path);
    ddp_model_free(m);
    ddp_backend_free(b);
    DDP_CHECK(s);
    return DDP_OK;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s \"gpt L2 C32 H4 T16 V256\" SEED OUT.safetensors\n", argv[0]);
        return 2;
    }
    char *end;
    errno = 0;
    unsigned long long seed = strtoull(argv[2], &end, 10);
    if (errno || end == argv[2] || *end) {
        fprintf(stderr, "%s: seed '%s' is not a non-negative integer\n", argv[0], argv[2]);
        return 2;
    }
    if (export_init(argv[1], (uint64_t)seed, argv[3]) != DDP_OK) {
        fprintf(stderr, "%s: %s\n", argv[0], ddp_error_message());
        return 1;
    }
    return 0;
}
