/*
 * model: a network as a list of layers over one flat parameter buffer and one flat
 * gradient buffer, with its activations in one arena sized at creation and its loss.
 *
 * Layers declare their tensors (a name, up to four dimensions, an initialization, and
 * whether weight decay applies), and the model lays them out in forward order, so the
 * gradients of the last layers (final first in backward) sit at the end of the buffer and
 * a reducer can hand them to the all-reduce while earlier layers still compute. A tensor
 * may be used by several layers (the GPT's token embedding is also its output
 * projection): its gradient collects every contribution and is reported final once,
 * after the last. State that is not trained (running statistics) lives in a second flat
 * buffer of "buffers", saved in checkpoints and exports but never all-reduced.
 *
 * Everything below the model (trainer, reducer, optimizer, checkpoints) sees only the
 * flat buffers, the named views, the loss statistics and the ready callbacks; which
 * network it is shows only in ddp_model_describe, the text every rank compares.
 *
 * Kinds: "mlp" (features (N, D) -> [Linear -> act] x hidden -> Linear -> classes),
 * "gpt" (tokens (B, T) -> token + position embedding -> pre-LayerNorm transformer blocks
 * with causal self-attention and a GELU MLP -> LayerNorm -> logits through the tied
 * embedding; one prediction per position) and "cnn" (images (N, H, W, C), channels last
 * -> [conv -> batch norm -> ReLU -> 2x2 max pool] x stages -> flatten (in PyTorch's
 * channel-major order) -> [Linear -> act] x hidden -> Linear -> classes).
 */
#ifndef DDP_MODEL_H
#define DDP_MODEL_H

#include "ddp/backend.h"
#include "ddp/comm.h"
#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_MAX_HIDDEN 16
#define DDP_MAX_DIMS   4

#define DDP_MAX_CONV 8

typedef enum { DDP_MODEL_MLP = 0, DDP_MODEL_GPT, DDP_MODEL_CNN } ddp_model_kind;

/* The shape of a model: the fields of its kind are used, the others ignored. */
typedef struct {
    ddp_model_kind kind;
    /* mlp: hidden layer sizes and activation; input_dim and num_classes from the data */
    int n_hidden;
    size_t hidden[DDP_MAX_HIDDEN];
    ddp_act act;
    size_t input_dim;
    int num_classes;
    /* gpt: blocks, width, attention heads, context length (positions), vocabulary */
    int layers, dim, heads, ctx, vocab;
    /* cnn: convolution stages (each conv kernel x kernel, padding kernel / 2, then batch
     * norm, ReLU and 2 x 2 max pooling) of conv[i] channels, then the MLP part (hidden,
     * act) on the flattened features; the image geometry comes from the data */
    int n_conv;
    int conv[DDP_MAX_CONV];
    int kernel;
    int height, width, channels;
    /* weight decay on every tensor; by default only on matrices and the token embedding,
     * not on biases, normalization parameters and position embeddings */
    int decay_all;
    /* activation recomputation (--recompute): keep only each block's input from forward to
     * backward (a transformer block; a dense layer with its activation; a conv stage) and
     * run the block's forward again in backward, into one block's worth of memory that
     * every block reuses. The gradients are the same bits; a training step costs about
     * one more forward. Not part of ddp_model_describe: it changes no result. */
    int recompute;
} ddp_model_spec;

/* Fills the defaults of `kind` (the sizes ddp-train uses when none are given). */
void ddp_model_spec_defaults(ddp_model_spec *spec, ddp_model_kind kind);
/* "mlp" or "gpt". */
const char *ddp_model_kind_name(ddp_model_kind kind);
/* Reads a description written by ddp_model_describe back into a spec (for tools that
 * load a checkpoint or export, such as ddp-generate). */
ddp_status ddp_model_spec_parse(const char *describe, ddp_model_spec *spec);

/* A named view of one tensor in a flat buffer. */
typedef struct {
    char name[64]; /* e.g. "fc0.weight", "transformer.h.0.attn.c_attn.weight" */
    size_t offset; /* in elements */
    size_t count;
    int ndim;
    size_t shape[DDP_MAX_DIMS]; /* weights of a linear map: (out, in) */
    int decay;                  /* weight decay applies (parameters only) */
} ddp_param_view;

/* One batch in device memory. Per-sample models take features x; token models take
 * tokens. targets holds one label per sample (t = 1) or per position; NULL computes no
 * loss. */
typedef struct {
    size_t n;               /* samples (sequences) */
    size_t t;               /* positions per sample: 1, or a sequence length <= ctx */
    const float *x;         /* (n, input_dim), or NULL */
    const int32_t *tokens;  /* (n, t), or NULL */
    const int32_t *targets; /* (n, t), or NULL */
} ddp_batch;

typedef enum { DDP_MODE_EVAL = 0, DDP_MODE_TRAIN = 1 } ddp_mode;

typedef struct ddp_model ddp_model;

/* Called during backward when the gradients [offset, offset + count) of the flat buffer
 * are final for this backward pass (once per tensor, or per slice of a sliced one), in
 * backward order. A nonzero status stops the backward and is returned from it. */
typedef ddp_status (*ddp_grad_ready_fn)(void *ctx, size_t offset, size_t count);

/* Builds the model of `spec` with activations for batches of up to max_batch samples
 * (sequences of up to ctx positions). Parameters are not initialized. Not collective. */
ddp_status ddp_model_create(ddp_backend *b, const ddp_model_spec *spec, size_t max_batch,
                            ddp_model **out);
void ddp_model_free(ddp_model *m);

const ddp_model_spec *ddp_model_spec_of(const ddp_model *m);
size_t ddp_model_num_params(const ddp_model *m);
/* Classes of the logits: the MLP's classes, the GPT's vocabulary. */
int ddp_model_num_classes(const ddp_model *m);
/* Positions per sample: 1, or the GPT's context length. */
size_t ddp_model_max_positions(const ddp_model *m);
size_t ddp_model_max_batch(const ddp_model *m);
float *ddp_model_params(ddp_model *m); /* device, (num_params) */
float *ddp_model_grads(ddp_model *m);  /* device, (num_params) */
int ddp_model_num_views(const ddp_model *m);
const ddp_param_view *ddp_model_view(const ddp_model *m, int i);
/* Buffers: state that is not trained (running statistics of batch norm; none in the MLP
 * and the GPT). */
size_t ddp_model_num_buffer_elems(const ddp_model *m);
float *ddp_model_buffers(ddp_model *m); /* device, (num_buffer_elems), or NULL */
int ddp_model_num_buffer_views(const ddp_model *m);
const ddp_param_view *ddp_model_buffer_view(const ddp_model *m, int i);
/* Bytes of the activation arena, as allocated at creation for max_batch samples: the
 * layers' outputs and saved tensors (with recomputation: the blocks' inputs and one
 * block's workspace), the shared scratch, the backward's two gradient buffers and the
 * gradient of the logits. Small per-layer state outside it (batch norm's per-channel
 * statistics) is not counted. */
size_t ddp_model_activation_bytes(const ddp_model *m);
/* Gives the layers that communicate in forward and backward (synchronized batch norm)
 * their communicator: one of their own, since another thread (the reducer's) may be
 * all-reducing gradients on the trainer's at the same time. Without one they compute on
 * this rank's batch alone. */
void ddp_model_set_comm(ddp_model *m, ddp_comm *comm);
/* Called by forward before each layer that reads parameters, with the end of the prefix
 * [0, end) of the flat parameter buffer that the layer may read (ascending from layer to
 * layer): returns once those are final. Lets the parameters of a sharded update arrive
 * (all-gathered bucket by bucket) while the first layers already compute. NULL: none. */
typedef ddp_status (*ddp_param_wait_fn)(void *ctx, size_t end);
void ddp_model_set_param_wait(ddp_model *m, ddp_param_wait_fn fn, void *ctx);
/* A text that identifies the kind and every shape option ("mlp 784-256-128-10 relu",
 * "gpt L4 C256 H4 T128 V256"); ddp_model_spec_parse reads it back. */
const char *ddp_model_describe(const ddp_model *m);
/* Floating-point operations of one forward pass per sample (per sequence of ctx
 * positions), counting 2 per multiply-add of the matrix products and the attention;
 * training costs about 3 times this. */
double ddp_model_flops_per_sample(const ddp_model *m);

/* Initializes parameters and buffers from `seed` alone (one RNG stream per tensor), the
 * same on every rank that passes the same seed: MLP weights He-normal, GPT weights
 * normal(0, 0.02) with the residual projections scaled by 1/sqrt(2 layers) as in GPT-2,
 * biases 0, normalization weights 1. */
ddp_status ddp_model_init_params(ddp_model *m, uint64_t seed);

/* Forward pass over one batch (n <= max_batch samples, t <= max positions), whose arrays
 * must stay valid until the backward that follows (it reads the inputs again). With
 * targets, adds the summed cross-entropy loss of all n * t predictions to stats[0] and
 * the number of correct arg-max predictions to stats[1] (device, 2 floats). In
 * DDP_MODE_TRAIN with grad_scale != 0 it also keeps the gradient of grad_scale * the
 * summed loss with respect to the logits for ddp_model_backward (grad_scale = 1 /
 * predictions in the global batch makes it the gradient of the mean). */
ddp_status ddp_model_forward(ddp_model *m, const ddp_batch *batch, ddp_mode mode, float grad_scale,
                             float *stats);
/* The logits of the last forward: (n * t, num_classes) device memory owned by the
 * model, valid until the next forward. */
const float *ddp_model_logits(const ddp_model *m);
/* Backward pass for the last forward (which must have been DDP_MODE_TRAIN with targets).
 * With first set (the first micro-batch of a step) the gradients are written; otherwise
 * they are added to the buffer (later micro-batches accumulate). Every tensor's gradient
 * is reported to ready exactly once per pass, as soon as it is final; a tensor that got
 * no contribution (zeroed when first is set) is reported at the end. ready may be NULL. */
ddp_status ddp_model_backward(ddp_model *m, int first, ddp_grad_ready_fn ready, void *ctx);
ddp_status ddp_model_zero_grads(ddp_model *m);
/* Moves the gradients into grads (num_params floats of the backend's memory, zeroed
 * here), which must outlive the model: e.g. memory shared with the other ranks of the
 * node (ddp_comm_alloc_shared), which all-reduces without copies. */
ddp_status ddp_model_use_grad_buffer(ddp_model *m, float *grads);

/* Sampling new tokens from a token model (the GPT). */
typedef struct {
    size_t tokens;     /* how many new tokens */
    float temperature; /* softmax temperature; 0 = always the most likely token */
    int top_k;         /* draw among the k most likely tokens only; 0 = all */
    uint64_t seed;     /* the same seed and model give the same tokens */
} ddp_generate_options;

/* Receives each new token as it is drawn; a nonzero status stops the generation. */
typedef ddp_status (*ddp_emit_fn)(void *ctx, int32_t token);

/* Draws o->tokens tokens one after the other, each from the model's prediction after the
 * prompt and the tokens drawn so far (the last ctx of them), and hands each to emit. */
ddp_status ddp_model_generate(ddp_model *m, const int32_t *prompt, size_t n_prompt,
                              const ddp_generate_options *o, ddp_emit_fn emit, void *ctx);
/* The backend the model computes on. */
ddp_backend *ddp_model_backend_of(ddp_model *m);

/* Makes backward compute and report the first layer's weight gradient in row slices of
 * about max_elems elements (the lowest rows, sent last, in a shorter one) (0: in one
 * piece, the default), where the first layer is a linear map (the MLP). The first
 * layer's gradients are final last, so whatever bucket holds them is all-reduced after
 * backward has ended; in slices, all but the last slice's all-reduce overlap with the
 * rest of that layer's backward. The values are the same either way. Returns where the
 * gradients that are final last end: [0, returned) (0 when nothing is sliced). */
size_t ddp_model_set_grad_slices(ddp_model *m, size_t max_elems);
/* The offsets (ascending) at which backward's ready reports begin: one per tensor, one
 * per slice of a sliced one. The places a reducer may cut buckets. Writes at most max
 * and returns how many there are. */
int ddp_model_ready_points(ddp_model *m, size_t *offsets, int max);

#ifdef __cplusplus
}
#endif
#endif
