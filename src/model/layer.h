/*
 * Layers, private to src/model/. A layer maps x (n, in_dim) to y (n, out_dim) and back;
 * layers with parameters hold views into the model's flat buffers. New layer kinds
 * (attention, layer norm, embeddings) plug in here without touching the trainer.
 */
#ifndef DDP_MODEL_LAYER_H
#define DDP_MODEL_LAYER_H

#include "ddp/model.h"

typedef struct ddp_layer ddp_layer;

typedef struct {
    const char *kind;
    ddp_status (*forward)(ddp_layer *l, ddp_backend *b, const float *x, float *y, size_t n);
    /* Adds parameter gradients (if any), or with overwrite writes them (every one: the
     * buffer was not zeroed), and, when dx is not NULL, writes dx (n, in_dim). x and y
     * are this layer's input and output from the last forward. Calls ready (if not NULL)
     * as soon as the parameter gradients are final, before computing dx, so that their
     * communication overlaps the rest of backward. */
    ddp_status (*backward)(ddp_layer *l, ddp_backend *b, const float *x, const float *y,
                           const float *dy, float *dx, size_t n, int overwrite,
                           ddp_grad_ready_fn ready, void *ctx);
} ddp_layer_ops;

struct ddp_layer {
    const ddp_layer_ops *ops;
    char name[16]; /* "fc0", "relu0": trace labels */
    size_t in_dim, out_dim;
    /* parameters, when the layer has any: views into the flat buffers */
    size_t param_offset, param_count; /* elements */
    float *w, *dw;                    /* (out_dim, in_dim) */
    float *bias, *dbias;              /* (out_dim) */
    ddp_act act;                      /* activation layers */
    /* Linear: weight-gradient rows per ready report, last rows first (0: the whole
     * layer in one report). Set on the first layer only: its gradients are final last,
     * so slices let most of its all-reduce overlap with the rest of its own backward. */
    size_t slice_rows;
};

void ddp_layer_linear(ddp_layer *l, size_t in_dim, size_t out_dim);
void ddp_layer_activation(ddp_layer *l, ddp_act act, size_t dim);

#endif
