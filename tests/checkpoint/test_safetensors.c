/*
 * Safetensors export: the file parses back (with jansson) into every tensor of the
 * model's views with its name, dtype, shape and byte range; the ranges tile the data
 * exactly; the header is padded with spaces to a multiple of 8; the values are the
 * parameters bit for bit; the metadata names the model; an unwritable path fails.
 */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "checkpoint/ckpt_fixture.h"
#include "ddp/checkpoint.h"

static ddp_backend *backend;

static void export_parses_back_to_the_model_tensors(void **state) {
    /* Odd sizes, so that the JSON header's length is not a multiple of 8 by chance. */
    ddp_model_spec spec = {.input_dim = 7, .num_classes = 3, .hidden = {2, {5, 4}}};
    ddp_model *m;
    assert_int_equal(ddp_model_create(backend, &spec, 4, &m), DDP_OK);
    assert_int_equal(ddp_model_init_params(m, 11), DDP_OK);
    size_t n = ddp_model_num_params(m);
    float *params = ddp_model_params(m); /* host memory on the CPU backend */
    for (size_t i = 0; i < n; i++)
        params[i] += (float)i * 1e-3f; /* biases not all zero */
    char path[] = "/tmp/ddp-safetensors-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(ddp_safetensors_write(m, params, NULL, path), DDP_OK);

    size_t len;
    unsigned char *b = fx_slurp(path, &len);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)b[i] << (8 * i);
    assert_true(hlen % 8 == 0);
    assert_true(8 + hlen <= len);
    json_error_t err;
    json_t *h = json_loadb((const char *)b + 8, hlen, 0, &err);
    if (!h) fail_msg("header is not JSON: %s", err.text);
    /* Whatever follows the JSON text inside the header is padding of spaces. */
    const char *text = (const char *)b + 8;
    size_t text_len = hlen;
    while (text_len > 0 && text[text_len - 1] == ' ')
        text_len--;
    assert_int_equal(text[text_len - 1], '}');
    assert_true(hlen - text_len < 8);

    json_t *meta = json_object_get(h, "__metadata__");
    assert_non_null(meta);
    assert_string_equal(json_string_value(json_object_get(meta, "model")), ddp_model_describe(m));
    const unsigned char *data = b + 8 + hlen;
    size_t data_len = len - 8 - hlen, covered = 0;
    int nv = ddp_model_num_views(m);
    assert_int_equal(json_object_size(h), (size_t)nv + 1);
    assert_int_equal(nv, 6);
    for (int i = 0; i < nv; i++) {
        const ddp_param_view *v = ddp_model_view(m, i);
        char want[32];
        snprintf(want, sizeof want, "fc%d.%s", i / 2, i % 2 ? "bias" : "weight");
        assert_string_equal(v->name, want);
        json_t *t = json_object_get(h, v->name);
        if (!t) fail_msg("tensor %s missing", v->name);
        assert_string_equal(json_string_value(json_object_get(t, "dtype")), "F32");
        json_t *shape = json_object_get(t, "shape");
        assert_int_equal(json_array_size(shape), (size_t)v->ndim);
        size_t count = 1;
        for (int d = 0; d < v->ndim; d++) {
            assert_int_equal(json_integer_value(json_array_get(shape, (size_t)d)), v->shape[d]);
            count *= v->shape[d];
        }
        assert_int_equal(count, v->count);
        json_t *off = json_object_get(t, "data_offsets");
        size_t begin = (size_t)json_integer_value(json_array_get(off, 0));
        size_t end = (size_t)json_integer_value(json_array_get(off, 1));
        /* In view order, back to back: no holes, no overlaps. */
        assert_int_equal(begin, covered);
        assert_int_equal(end - begin, v->count * sizeof(float));
        assert_memory_equal(data + begin, params + v->offset, end - begin);
        covered = end;
    }
    assert_int_equal(covered, data_len);
    /* Weights are (out, in): fc0.weight is (5, 7). */
    json_t *w0 = json_object_get(json_object_get(h, "fc0.weight"), "shape");
    assert_int_equal(json_integer_value(json_array_get(w0, 0)), 5);
    assert_int_equal(json_integer_value(json_array_get(w0, 1)), 7);
    json_decref(h);
    free(b);
    unlink(path);
    ddp_model_free(m);
}

static void export_to_an_unwritable_path_fails_with_a_message(void **state) {
    ddp_model_spec spec = {.input_dim = 3, .num_classes = 2, .hidden.n = 0};
    ddp_model *m;
    assert_int_equal(ddp_model_create(backend, &spec, 1, &m), DDP_OK);
    const char *path = "/nonexistent-dir/model.safetensors";
    assert_int_equal(ddp_safetensors_write(m, ddp_model_params(m), NULL, path), DDP_ERR_IO);
    assert_non_null(strstr(ddp_error_message(), path));
    ddp_model_free(m);
}

int main(void) {
    ddp_backend_options bo = {.device = DDP_DEVICE_CPU, .threads = 1};
    assert_int_equal(ddp_backend_create(&bo, &backend), DDP_OK);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(export_parses_back_to_the_model_tensors),
        cmocka_unit_test(export_to_an_unwritable_path_fails_with_a_message),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_backend_free(backend);
    return failed ? 1 : 0;
}
