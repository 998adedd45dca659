/*
 * The model's state, private to src/model/: shared by model.c (building, the arena, the
 * units, initialization) and model_pass.c (forward, backward and the books of gradients).
 */
#ifndef DDP_MODEL_IMPL_H
#define DDP_MODEL_IMPL_H

#include "model/layer.h"

typedef struct {
    ddp_param_view view; /* name, offset, count, shape, decay; in the parameters or buffers */
    ddp_init init;
    int uses; /* layers that contribute to its gradient */
    /* per backward pass */
    int touched;       /* got its first contribution */
    int uses_left;     /* contributions still to come */
    int reported;      /* reported ready */
    size_t chunk_rows; /* reported in chunks of this many rows (0: whole); ddp_model_chunk_rows */
} tensor;

struct ddp_model {
    ddp_backend *backend;
    ddp_model_spec spec;
    int n_layers, cap_layers;
    ddp_layer **layers;
    int n_tensors, cap_tensors;
    tensor *tensors;
    int n_buffers, cap_buffers;
    tensor *buffers; /* state that is not trained: views into bufs */
    size_t num_params;
    size_t num_buffer_elems;
    float *bufs;    /* device (num_buffer_elems), NULL when there are none */
    ddp_comm *comm; /* for layers that communicate in forward and backward; may be NULL */
    float *params;  /* device (num_params) */
    float *grads;   /* device (num_params) */
    int own_grads;  /* grads was allocated here (not given by ddp_model_use_grad_buffer) */
    size_t max_batch, max_pos;
    /* the activation arena: each layer's output, each layer's saved tensors, the shared
     * scratch, the two backward buffers and the gradient of the logits; with
     * recomputation the outputs that end recompute segments only, then one segment's workspace for
     * the other outputs and the saved tensors */
    float *arena;
    size_t arena_bytes;
    float **outs;   /* (n_layers) rows x out_per_pos each */
    float *bwd[2];  /* rows x the widest layer boundary */
    float *dlogits; /* rows x classes */
    /* the last forward */
    ddp_batch batch;
    ddp_pass pass;
    int have_dlogits;
    /* the backward pass in progress */
    int overwrite;
    ddp_grad_ready_fn ready;
    void *ready_ctx;
    ddp_unit_fn unit_hook; /* see ddp_model_set_unit_hook */
    void *unit_ctx;
    /* units (ddp_model_num_units): the layers between recompute segment ends, and each part
     * of a layer that has parts (ddp_layer_ops.parts) a unit of its own */
    int n_units;
    size_t unit_limit; /* ddp_model_set_unit_limit */
    int *unit_of;      /* (n_layers) the unit of each layer (a parted one's first) */
    int *unit_layer;   /* (n_units) its last layer */
    size_t *unit_end;  /* (n_units) the end of its range; it begins where unit u - 1 ends */
    int (*shares)[2];  /* (n_shares) layer, tensor: a layer uses an earlier tensor */
    int n_shares, cap_shares;
    int share_failed; /* out of memory in ddp_model_share_param */
    char describe[256];
    double flops;
    int big_rows, big_N, big_K; /* the largest matrix product per sample (add_product) */
};

/* Whether layer i's output is kept from forward to backward under recomputation: the
 * layers that end a recompute segment, and the logits. */
static inline int ddp_model_segment_end(const ddp_model *m, int i) {
    return m->layers[i]->segment_end || i == m->n_layers - 1;
}

#endif
