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

/* The tensors of an export in file order: the parameters' views, then the buffers'. */
static int num_entries(const ddp_model *m) {
    return ddp_model_num_views(m) + ddp_model_num_buffer_views(m);
}
static const ddp_param_view *entry(const ddp_model *m, int i) {
    int np = ddp_model_num_views(m);
    return i < np ? ddp_model_view(m, i) : ddp_model_buffer_view(m, i - np);
}

/* The header: every view with its shape and byte range, and the model description. */
static ddp_status build_header(const ddp_model *m, char **text) {
    json_t *root = json_object();
    json_t *meta = json_pack("{s:s}", "model", ddp_model_describe(m));
    if (!root || !meta || json_object_set_new(root, "__metadata__", meta) != 0) {
        json_decref(root);
        return DDP_FAIL(DDP_ERR_NOMEM, "safetensors: could not build the JSON header");
    }
    size_t offset = 0;
    for (int i = 0; i < num_entries(m); i++) {
        const ddp_param_view *v = entry(m, i);
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

/* Where the parameters' bytes come from while they are written: elements [a, b) into
 * host. The whole host array, or the trainer's pieces (ddp_sync_read_params). */
typedef ddp_status (*param_source)(void *ctx, size_t a, size_t b, float *host);

static ddp_status from_array(void *ctx, size_t a, size_t b, float *host) {
    memcpy(host, (const float *)ctx + a, (b - a) * sizeof(float));
    return DDP_OK;
}

/* Writes the file, the parameters in pieces of `chunk` elements from src in the flat order,
 * which is the views' order (every view lies after the one before). Without a path (a rank
 * that only takes part in src's collectives) nothing is written, and src is still called
 * for every piece, also after a failure to write. */
static ddp_status write_file(const ddp_model *m, param_source src, void *ctx, size_t chunk,
                             const float *host_buffers, const char *path) {
    char *json = NULL;
    FILE *f = NULL;
    ddp_status s = DDP_OK;
    size_t n = 0, padded = 0;
    if (path) s = build_header(m, &json);
    if (s == DDP_OK && path) {
        n = strlen(json);
        /* Padded with spaces (which JSON ignores, and the format allows) so that the tensor
         * data start 8-byte aligned: readers can then map the floats in place. */
        padded = (n + 7) / 8 * 8;
        f = fopen(path, "wb");
        if (!f)
            s = DDP_FAIL(DDP_ERR_IO, "--export %s: cannot open for writing: %s", path,
                         strerror(errno));
    }
    int ok = 1;
    if (f) {
        unsigned char len[8];
        for (int i = 0; i < 8; i++)
            len[i] = (unsigned char)((uint64_t)padded >> (8 * i));
        ok = fwrite(len, 1, 8, f) == 8 && fwrite(json, 1, n, f) == n;
        for (size_t i = n; ok && i < padded; i++)
            ok = fputc(' ', f) != EOF;
    }
    size_t np = ddp_model_num_params(m);
    if (chunk == 0 || chunk > np) chunk = np;
    float *piece = malloc((chunk > 0 ? chunk : 1) * sizeof *piece);
    if (!piece && s == DDP_OK) s = DDP_FAIL(DDP_ERR_NOMEM, "--export: out of memory");
    for (size_t a = 0; piece && a < np; a += chunk) {
        size_t b = np - a < chunk ? np : a + chunk;
        ddp_status r = src(ctx, a, b, piece);
        if (r != DDP_OK) {
            s = r;
            break;
        }
        if (f && ok) ok = fwrite(piece, sizeof(float), b - a, f) == b - a;
    }
    free(piece);
    for (int i = ddp_model_num_views(m); f && ok && i < num_entries(m); i++) {
        const ddp_param_view *v = entry(m, i);
        ok = fwrite(host_buffers + v->offset, sizeof(float), v->count, f) == v->count;
    }
    free(json);
    if (f && fclose(f) != 0) ok = 0;
    DDP_CHECK(s);
    if (!ok)
        return DDP_FAIL(DDP_ERR_IO, "--export %s: write failed: %s (disk full?)", path,
                        strerror(errno));
    return DDP_OK;
}

ddp_status ddp_safetensors_write(const ddp_model *m, const float *host, const float *host_buffers,
                                 const char *path) {
    DDP_CHECK(write_file(m, from_array, (void *)host, 0, host_buffers, path));
    return DDP_OK;
}

static ddp_status from_trainer(void *ctx, size_t a, size_t b, float *host) {
    DDP_CHECK(ddp_sync_read_params(((ddp_trainer *)ctx)->sync, a, b, host));
    return DDP_OK;
}

ddp_status ddp_trainer_export(ddp_trainer *t, const char *path) {
    DDP_CHECK(ddp_trainer_settle(t));
    /* Where every rank holds every parameter, rank 0 writes alone; otherwise every rank
     * takes part in gathering the pieces (at most one unit's beyond a rank's shard at a
     * time) and rank 0 streams them to the file. */
    if (t->rank != 0 && ddp_sync_params_replicated(t->sync)) return DDP_OK;
    size_t nb = ddp_model_num_buffer_elems(t->model);
    float *bufs = malloc((nb ? nb : 1) * sizeof(float));
    ddp_status s = bufs ? ddp_backend_copy(t->backend, bufs, ddp_model_buffers(t->model),
                                           nb * sizeof(float), DDP_COPY_D2H)
                        : DDP_FAIL(DDP_ERR_NOMEM, "--export: out of memory");
    /* Every rank reaches every piece's gather, also after a failure of its own. */
    ddp_status w = write_file(t->model, from_trainer, t, ddp_sync_read_chunk(t->sync), bufs,
                              t->rank == 0 && s == DDP_OK ? path : NULL);
    if (s == DDP_OK) s = w;
    free(bufs);
    DDP_CHECK(s);
    return DDP_OK;
}

/* ---- reading ---------------------------------------------------------------------------- */

/* The whole file and its parsed header. */
typedef struct {
    unsigned char *bytes;
    size_t len;
    json_t *header;
    const unsigned char *data; /* after the header */
    size_t data_len;
} st_file;

static void st_close(st_file *f) {
    json_decref(f->header);
    free(f->bytes);
    memset(f, 0, sizeof *f);
}

static ddp_status st_open(const char *path, st_file *f) {
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "rb");
    if (!fp) return DDP_FAIL(DDP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 20;
    f->bytes = malloc(cap);
    size_t n;
    while (f->bytes && (n = fread(f->bytes + f->len, 1, cap - f->len, fp)) > 0) {
        f->len += n;
        if (f->len == cap) {
            unsigned char *grown = realloc(f->bytes, cap * 2);
            if (!grown) {
                free(f->bytes);
                f->bytes = NULL;
                break;
            }
            f->bytes = grown;
            cap *= 2;
        }
    }
    int read_error = ferror(fp);
    fclose(fp);
    if (!f->bytes) return DDP_FAIL(DDP_ERR_NOMEM, "%s: out of memory reading it", path);
    if (read_error) {
        st_close(f);
        return DDP_FAIL(DDP_ERR_IO, "%s: read error", path);
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8 && (size_t)i < f->len; i++)
        hlen |= (uint64_t)f->bytes[i] << (8 * i);
    if (f->len < 8 || hlen > f->len - 8) {
        st_close(f);
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "%s: not a safetensors file (its header length runs past the end)", path);
    }
    json_error_t err;
    f->header = json_loadb((const char *)f->bytes + 8, (size_t)hlen, 0, &err);
    if (!f->header || !json_is_object(f->header)) {
        st_close(f);
        return DDP_FAIL(DDP_ERR_FORMAT, "%s: the safetensors header is not a JSON object (%s)",
                        path, err.text);
    }
    f->data = f->bytes + 8 + hlen;
    f->data_len = f->len - 8 - (size_t)hlen;
    return DDP_OK;
}

ddp_status ddp_safetensors_model(const char *path, char *describe, size_t cap) {
    st_file f;
    DDP_CHECK(st_open(path, &f));
    const char *d =
        json_string_value(json_object_get(json_object_get(f.header, "__metadata__"), "model"));
    ddp_status s = DDP_OK;
    if (!d || strlen(d) >= cap)
        s = DDP_FAIL(DDP_ERR_FORMAT,
                     "%s: no model description in its metadata (__metadata__.model): not "
                     "written by ddp --export?",
                     path);
    else
        snprintf(describe, cap, "%s", d);
    st_close(&f);
    return s;
}

ddp_status ddp_safetensors_read(const ddp_model *m, const char *path, float *host,
                                float *host_buffers) {
    st_file f;
    DDP_CHECK(st_open(path, &f));
    ddp_status s = DDP_OK;
    for (int i = 0; s == DDP_OK && i < num_entries(m); i++) {
        const ddp_param_view *v = entry(m, i);
        float *to = i < ddp_model_num_views(m) ? host : host_buffers;
        json_t *t = json_object_get(f.header, v->name);
        json_t *shape = json_object_get(t, "shape"), *offs = json_object_get(t, "data_offsets");
        const char *dtype = json_string_value(json_object_get(t, "dtype"));
        if (!t || !dtype || strcmp(dtype, "F32") != 0 || !json_is_array(shape) ||
            json_array_size(shape) != (size_t)v->ndim || json_array_size(offs) != 2) {
            s = DDP_FAIL(DDP_ERR_FORMAT, "%s: tensor %s is missing or not F32 of %d dimensions",
                         path, v->name, v->ndim);
            break;
        }
        for (int d = 0; s == DDP_OK && d < v->ndim; d++)
            if ((size_t)json_integer_value(json_array_get(shape, (size_t)d)) != v->shape[d])
                s = DDP_FAIL(
                    DDP_ERR_FORMAT, "%s: tensor %s has dimension %d of %lld, the model needs %zu",
                    path, v->name, d,
                    (long long)json_integer_value(json_array_get(shape, (size_t)d)), v->shape[d]);
        json_int_t b0 = json_integer_value(json_array_get(offs, 0));
        json_int_t b1 = json_integer_value(json_array_get(offs, 1));
        if (s == DDP_OK && (b0 < 0 || b1 < b0 || (size_t)b1 > f.data_len ||
                            (size_t)(b1 - b0) != v->count * sizeof(float)))
            s = DDP_FAIL(DDP_ERR_FORMAT,
                         "%s: tensor %s has data offsets [%lld, %lld) outside "
                         "the file or of the wrong size",
                         path, v->name, (long long)b0, (long long)b1);
        if (s == DDP_OK) memcpy(to + v->offset, f.data + b0, v->count * sizeof(float));
    }
    st_close(&f);
    DDP_CHECK(s);
    return DDP_OK;
}
