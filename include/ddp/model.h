/*
 * model: layers with forward and backward over one flat parameter buffer and one flat
 * gradient buffer. Each layer holds views into them; parameters are laid out in
 * forward order, so the gradients of the last layers (ready first in backward) are at
 * the end of the buffer and a reducer can hand contiguous tails to the all-reduce.
 *
 * Nothing outside src/model/ assumes the model is an MLP: the trainer sees a function
 * from inputs (N, input_dim) to logits (N, num_classes), the flat buffers, the named
 * views, and a callback as each layer's gradient becomes final.
 */
#ifndef DDP_MODEL_H
#define DDP_MODEL_H

#include "ddp/backend.h"
#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_MAX_HIDDEN 16

typedef struct {
    size_t input_dim;
    int num_classes;
    int n_hidden;
    size_t hidden[DDP_MAX_HIDDEN];
    ddp_act act;
} ddp_mlp_spec;

typedef struct {
    char name[48]; /* e.g. "fc0.weight" */
    size_t offset; /* in elements, into the flat buffers */
    size_t count;
    int ndim;
    size_t shape[2]; /* weight: (out, in); bias: (out) */
} ddp_param_view;

typedef struct ddp_model ddp_model;

/* Called during backward when the gradients [offset, offset + count) of the flat buffer
 * are final for this backward pass (one call per layer with parameters, last layer
 * first). A nonzero status stops the backward and is returned from it. */
typedef ddp_status (*ddp_grad_ready_fn)(void *ctx, size_t offset, size_t count);

/* Builds an MLP: input -> [Linear -> act] x n_hidden -> Linear -> logits, with
 * activations sized for up to max_batch samples. Parameters are not initialized. */
ddp_status ddp_model_create_mlp(ddp_backend *b, const ddp_mlp_spec *spec, size_t max_batch,
                                ddp_model **out);
void ddp_model_free(ddp_model *m);

size_t ddp_model_num_params(const ddp_model *m);
size_t ddp_model_input_dim(const ddp_model *m);
int ddp_model_num_classes(const ddp_model *m);
float *ddp_model_params(ddp_model *m); /* device, (num_params) */
float *ddp_model_grads(ddp_model *m);  /* device, (num_params) */
int ddp_model_num_views(const ddp_model *m);
const ddp_param_view *ddp_model_view(const ddp_model *m, int i);
/* A text that identifies the architecture and shapes ("mlp 784-256-128-10 relu"). */
const char *ddp_model_describe(const ddp_model *m);
/* Floating-point operations of one forward pass per sample (2 per multiply-add of the
 * matrix products; training costs about 3 times this). */
double ddp_model_flops_per_sample(const ddp_model *m);

/* Kaiming (He) normal weights and zero biases, from `seed` alone: the same on every
 * rank that passes the same seed. */
ddp_status ddp_model_init_params(ddp_model *m, uint64_t seed);
/* Forward pass over n <= max_batch samples; *logits points at (n, num_classes) device
 * memory owned by the model, valid until the next forward. */
ddp_status ddp_model_forward(ddp_model *m, const float *x, size_t n, const float **logits);
/* Backward pass from dlogits (n, num_classes) for the last forward; gradients are ADDED
 * to the flat gradient buffer (so micro-batches accumulate). ready may be NULL. */
ddp_status ddp_model_backward(ddp_model *m, const float *dlogits, size_t n, ddp_grad_ready_fn ready,
                              void *ctx);
ddp_status ddp_model_zero_grads(ddp_model *m);
/* Moves the gradients into grads (num_params floats of the backend's memory, zeroed
 * here), which must outlive the model: e.g. memory shared with the other ranks of the
 * node (ddp_comm_alloc_shared), which all-reduces without copies. */
ddp_status ddp_model_use_grad_buffer(ddp_model *m, float *grads);
/* The first backward of a step: the same gradients as ddp_model_zero_grads followed by
 * ddp_model_backward, without the pass over the whole gradient buffer that zeroing
 * costs (the gradients are written instead of added; the buffer's old contents are
 * never read). */
ddp_status ddp_model_backward_first(ddp_model *m, const float *dlogits, size_t n,
                                    ddp_grad_ready_fn ready, void *ctx);

/* Makes backward compute and report the first layer's weight gradient in row slices of
 * about max_elems elements (the lowest rows, sent last, in a shorter one) (0: in one piece, the
 * default). The first layer's gradients are final last, so whatever bucket holds them is
 * all-reduced after backward has ended; in slices, all but the last slice's all-reduce overlap with
 * the rest of that layer's backward. The values are the same either way. Returns where the first
 * layer's gradients end: [0, returned) is final last. */
size_t ddp_model_set_grad_slices(ddp_model *m, size_t max_elems);
/* The offsets (ascending) at which backward's ready reports begin: one per layer with
 * parameters, one per slice of a sliced layer. The places a reducer may cut buckets.
 * Writes at most max and returns how many there are. */
int ddp_model_ready_points(ddp_model *m, size_t *offsets, int max);

#ifdef __cplusplus
}
#endif
#endif
