/*
 * The multi-layer perceptron: features (N, D) -> [Linear -> activation] x hidden ->
 * Linear -> class logits. Weights He-normal, biases zero. Its layers are also the dense
 * head of the CNN, on the flattened features. Its registry entry: --hidden and --act, the
 * description "mlp 784-256-128-10 relu", labelled samples.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/layer.h"

/* ---- options ----------------------------------------------------------------------- */

ddp_status ddp_model_parse_list(const char *name, const char *arg, ddp_size_list *out, int max_n,
                                size_t max_v, const char *example) {
    ddp_size_list l = {0};
    const char *p = arg;
    while (1) {
        char *end;
        if (l.n == max_n)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': at most %d values", name, arg, max_n);
        if (*p < '0' || *p > '9')
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': expected sizes like %s", name, arg,
                            example);
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || v == 0 || v > max_v)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': expected sizes from 1 to %zu, like %s",
                            name, arg, max_v, example);
        l.v[l.n++] = (size_t)v;
        if (*end == '\0') break;
        if (*end != ',')
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--%s '%s': expected sizes separated by commas, like %s", name, arg,
                            example);
        p = end + 1;
    }
    *out = l;
    return DDP_OK;
}

void ddp_model_format_sizes(const void *field, char *buf, size_t cap) {
    const ddp_size_list *l = field;
    size_t n = 0;
    buf[0] = '\0';
    if (l->n == 0) snprintf(buf, cap, "none");
    for (int i = 0; i < l->n && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%zu", i ? "," : "", l->v[i]);
}

ddp_status ddp_model_parse_hidden(const char *name, const char *arg, void *field) {
    ddp_size_list *l = field;
    if (strcmp(arg, "none") == 0) {
        l->n = 0;
        return DDP_OK;
    }
    DDP_CHECK(ddp_model_parse_list(name, arg, l, DDP_MAX_HIDDEN, 1u << 20, "256,128"));
    return DDP_OK;
}

/* ---- the dense head ------------------------------------------------------------------ */

ddp_status ddp_model_add_mlp_head(ddp_model *m, const ddp_model_spec *spec, size_t in,
                                  char *describe, size_t cap) {
    const ddp_size_list *hidden = &spec->hidden;
    if (hidden->n < 0 || hidden->n > DDP_MAX_HIDDEN)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: %d hidden layers (at most %d)", hidden->n,
                        DDP_MAX_HIDDEN);
    if (in == 0 || spec->num_classes < 2)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: input size %zu and %d classes", in,
                        spec->num_classes);
    for (int i = 0; i < hidden->n; i++)
        if (hidden->v[i] == 0 || hidden->v[i] > (1u << 24))
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: hidden layer %d has size %zu", i,
                            hidden->v[i]);
    if ((int)spec->act < 0 || spec->act >= DDP_ACT_COUNT)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: unknown activation %d", (int)spec->act);
    const char *act = ddp_act_names[spec->act];
    size_t dims[DDP_MAX_HIDDEN + 2];
    int nd = 0;
    dims[nd++] = in;
    for (int i = 0; i < hidden->n; i++)
        dims[nd++] = hidden->v[i];
    dims[nd++] = (size_t)spec->num_classes;
    size_t off = 0;
    for (int i = 0; i + 1 < nd; i++) {
        char name[32];
        snprintf(name, sizeof name, "fc%d", i);
        DDP_CHECK(ddp_layer_linear_create(m, name, name, dims[i], dims[i + 1],
                                          (ddp_init){DDP_INIT_HE_NORMAL, 0.0f}, NULL));
        if (i + 2 < nd) {
            snprintf(name, sizeof name, "%s%d", act, i);
            ddp_layer *a;
            DDP_CHECK(ddp_layer_activation_create(m, name, spec->act, dims[i + 1], &a));
            /* With recomputation a linear map and its activation are one block: the
             * activation's output is kept, the linear map's recomputed. */
            a->segment_end = 1;
        }
        off += (size_t)snprintf(describe + off, off < cap ? cap - off : 0, "%zu-", dims[i]);
    }
    snprintf(describe + off, off < cap ? cap - off : 0, "%zu %s", dims[nd - 1], act);
    return DDP_OK;
}

ddp_status ddp_model_parse_mlp_head(const char *text, ddp_model_spec *spec) {
    size_t dims[DDP_MAX_HIDDEN + 2];
    int nd = 0, used = 0;
    char act[16];
    const char *p = text;
    while (nd < DDP_MAX_HIDDEN + 2) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || v == 0) break;
        dims[nd++] = (size_t)v;
        p = end;
        if (*p != '-') break;
        p++;
    }
    if (nd < 2 || sscanf(p, " %15s%n", act, &used) != 1 || p[used] != '\0' ||
        ddp_enum_find(ddp_act_names, act) < 0)
        return DDP_FAIL(DDP_ERR_FORMAT, "'%s' is not a dense head ddp writes", text);
    spec->input_dim = dims[0];
    spec->num_classes = (int)dims[nd - 1];
    spec->hidden.n = nd - 2;
    for (int i = 0; i < nd - 2; i++)
        spec->hidden.v[i] = dims[i + 1];
    spec->act = (ddp_act)ddp_enum_find(ddp_act_names, act);
    return DDP_OK;
}

/* ---- the kind ------------------------------------------------------------------------ */

static ddp_status build(ddp_model *m, const ddp_model_spec *spec, char *describe, size_t cap) {
    int off = snprintf(describe, cap, "mlp ");
    DDP_CHECK(ddp_model_add_mlp_head(m, spec, spec->input_dim, describe + off, cap - (size_t)off));
    return DDP_OK;
}

static ddp_status parse(const char *rest, ddp_model_spec *spec) {
    DDP_CHECK(ddp_model_parse_mlp_head(rest, spec));
    return DDP_OK;
}

static const ddp_opt options[] = {
    {.kind = DDP_OPT_HEADING, .help = "The MLP (--model mlp)"},
    DDP_MODEL_HEAD_OPTIONS("256,128"),
};

const ddp_model_type ddp_model_type_mlp = {
    .summary = "an MLP on labelled images (--data)",
    .options = options,
    .n_options = sizeof options / sizeof *options,
    .data = DDP_DATA_SAMPLES,
    .eval_batch = 1000,
    .build = build,
    .parse = parse,
};
