/*
 * Export of trained parameters as safetensors (https://github.com/huggingface/safetensors):
 * an 8-byte little-endian header length N, N bytes of JSON, then the tensors' bytes.
 * The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end)}
 * (offsets relative to the end of the header) and "__metadata__" to string pairs. Other
 * tools (PyTorch, JAX, numpy readers) load it without knowing ddp.
 *
 * Tensors are written in the order of the model's views, one after another, so the data
 * has no holes and no overlaps, as the format requires, whatever the flat layout is.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/checkpoint.h"
#include "train/trainer_impl.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors stores float32 little-endian: add byte swapping for this host"
#endif

/* The header: every view with its shape and byte range, and the model description. */
static ddp_status build_header(const ddp_model *m, char **text) {
    json_t *root = json_object();
    json_t *meta = json_pack("{s:s}", "model", ddp_model_describe(m));
    if (!root || !meta || json_object_set_new(root, "__metadata__", meta) != 0) {
        json_decref(root);
        return DDP_FAIL(DDP_ERR_NOMEM, "safetensors: could not build the JSON header");
    }
    size_t offset = 0;
    for (int i = 0; i < ddp_model_num_views(m); i++) {
        const ddp_param_view *v = ddp_model_view(m, i);
        json_t *shape = json_array();
        for (int d = 0; shape && d < v->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)v->shape[d]));
        size_t bytes = v->count * sizeof(float);
        json_t *t = json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", shape,
                              "data_offsets", (json_int_t)offset, (json_int_t)(offset + bytes));
        if (!t || json_object_get(root, v->name) || json_object_set_new(root, v->name, t) != 0) {
            json_decref(root);
            return DDP_FAIL(DDP_ERR_INTERNAL,
                            "safetensors: tensor '%s' could not be added "
                            "(duplicate name?)",
                            v->name);
        }
        offset += bytes;
    }
    *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!*text) return DDP_FAIL(DDP_ERR_NOMEM, "safetensors: could not encode the JSON header");
    return DDP_OK;
}

ddp_status ddp_safetensors_write(const ddp_model *m, const float *host, const char *path) {
    char *json;
    DDP_CHECK(build_header(m, &json));
    size_t n = strlen(json);
    /* Padded with spaces (which JSON ignores, and the format allows) so that the tensor
     * data start 8-byte aligned: readers can then map the floats in place. */
    size_t padded = (n + 7) / 8 * 8;
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(json);
        return DDP_FAIL(DDP_ERR_IO, "--export %s: cannot open for writing: %s", path,
                        strerror(errno));
    }
    int ok = fwrite(len, 1, 8, f) == 8 && fwrite(json, 1, n, f) == n;
    for (size_t i = n; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < ddp_model_num_views(m); i++) {
        const ddp_param_view *v = ddp_model_view(m, i);
        ok = fwrite(host + v->offset, sizeof(float), v->count, f) == v->count;
    }
    free(json);
    if (fclose(f) != 0) ok = 0;
    if (!ok)
        return DDP_FAIL(DDP_ERR_IO, "--export %s: write failed: %s (disk full?)", path,
                        strerror(errno));
    return DDP_OK;
}

ddp_status ddp_trainer_export(ddp_trainer *t, const char *path) {
    float *host = malloc(t->num_params * sizeof(float));
    if (!host) return DDP_FAIL(DDP_ERR_NOMEM, "--export: out of memory");
    ddp_status s = ddp_trainer_get_params(t, host);
    if (s == DDP_OK) s = ddp_safetensors_write(t->model, host, path);
    free(host);
    DDP_CHECK(s);
    return DDP_OK;
}
