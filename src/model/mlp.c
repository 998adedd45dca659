/*
 * The multi-layer perceptron: features (N, D) -> [Linear -> activation] x hidden ->
 * Linear -> class logits. Weights He-normal, biases zero. Its layers are also the head
 * of the CNN, on the flattened features.
 */
#include <stdio.h>

#include "model/layer.h"

ddp_status ddp_model_add_mlp_head(ddp_model *m, const ddp_model_spec *spec, size_t in,
                                  char *describe, size_t cap) {
    if (spec->n_hidden < 0 || spec->n_hidden > DDP_MAX_HIDDEN)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: %d hidden layers (at most %d)", spec->n_hidden,
                        DDP_MAX_HIDDEN);
    if (in == 0 || spec->num_classes < 2)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: input size %zu and %d classes", in,
                        spec->num_classes);
    for (int i = 0; i < spec->n_hidden; i++)
        if (spec->hidden[i] == 0 || spec->hidden[i] > (1u << 24))
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: hidden layer %d has size %zu", i,
                            spec->hidden[i]);
    size_t dims[DDP_MAX_HIDDEN + 2];
    int nd = 0;
    dims[nd++] = in;
    for (int i = 0; i < spec->n_hidden; i++)
        dims[nd++] = spec->hidden[i];
    dims[nd++] = (size_t)spec->num_classes;
    if ((int)spec->act < 0 || spec->act >= DDP_ACT_COUNT)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: unknown activation %d", (int)spec->act);
    const char *act = ddp_act_names[spec->act];
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
            a->checkpoint = 1;
        }
        off += (size_t)snprintf(describe + off, off < cap ? cap - off : 0, "%zu-", dims[i]);
    }
    snprintf(describe + off, off < cap ? cap - off : 0, "%zu %s", dims[nd - 1], act);
    return DDP_OK;
}

ddp_status ddp_model_build_mlp(ddp_model *m, const ddp_model_spec *spec, char *describe,
                               size_t cap) {
    int off = snprintf(describe, cap, "mlp ");
    DDP_CHECK(ddp_model_add_mlp_head(m, spec, spec->input_dim, describe + off, cap - (size_t)off));
    return DDP_OK;
}
