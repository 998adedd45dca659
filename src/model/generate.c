/*
 * Sampling from a token model: each new token is drawn from the model's prediction after
 * the last (at most ctx) tokens, at a temperature, among the top k. The model runs the
 * whole window again for every token (no cache of keys and values): simple, and fast
 * enough for the small models and short samples this is for.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/layer.h"

static int descending(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Index of the token drawn from logits (V) at temperature (0: arg-max) among the k
 * largest (0: all; ties with the k-th are kept too), with a uniform number u in [0, 1).
 * prob and sorted are scratch of V. */
static int32_t draw(const float *logits, int V, float temperature, int top_k, double u,
                    double *prob, float *sorted) {
    int arg = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[arg]) arg = v;
    if (temperature <= 0.0f) return arg;
    float cut = -INFINITY;
    if (top_k > 0 && top_k < V) {
        memcpy(sorted, logits, (size_t)V * sizeof *sorted);
        qsort(sorted, (size_t)V, sizeof *sorted, descending);
        cut = sorted[top_k - 1];
    }
    double sum = 0.0;
    for (int v = 0; v < V; v++) {
        prob[v] = logits[v] >= cut ? exp(((double)logits[v] - logits[arg]) / temperature) : 0.0;
        sum += prob[v];
    }
    double acc = 0.0, target = u * sum;
    for (int v = 0; v < V; v++) {
        acc += prob[v];
        if (prob[v] > 0.0 && target < acc) return v;
    }
    return arg; /* rounding left the target past the last step */
}

ddp_status ddp_model_generate(ddp_model *m, const int32_t *prompt, size_t n_prompt,
                              const ddp_generate_options *o, ddp_emit_fn emit, void *ctx) {
    size_t T = ddp_model_max_positions(m);
    int V = ddp_model_num_classes(m);
    if (T < 2 || !ddp_model_takes_tokens(m))
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "generate: %s is not a token model",
                        ddp_model_describe(m));
    if (n_prompt == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "generate: the prompt needs at least one token");
    if (o->temperature < 0.0f || o->top_k < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "generate: temperature %g and top-k %d must not be negative",
                        o->temperature, o->top_k);
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "generate: prompt token %d at %zu is outside the vocabulary of %d",
                            prompt[i], i, V);
    ddp_backend *b = ddp_model_backend(m);
    size_t keep = T; /* the window: the last T tokens */
    int32_t *window = malloc(keep * sizeof *window);
    float *logits = malloc((size_t)V * sizeof *logits);
    double *prob = malloc((size_t)V * sizeof *prob);
    float *sorted = malloc((size_t)V * sizeof *sorted);
    int32_t *d_window = NULL;
    ddp_status s = window && logits && prob && sorted
                       ? DDP_OK
                       : DDP_FAIL(DDP_ERR_NOMEM, "generate: out of memory");
    if (s == DDP_OK) s = ddp_backend_alloc(b, keep * sizeof(int32_t), (void **)&d_window);
    size_t n = n_prompt < keep ? n_prompt : keep;
    for (size_t i = 0; s == DDP_OK && i < n; i++)
        window[i] = prompt[n_prompt - n + i];
    ddp_rng rng;
    ddp_rng_seed(&rng, o->seed, 0x6e6e);
    for (size_t k = 0; s == DDP_OK && k < o->tokens; k++) {
        s = ddp_backend_copy(b, d_window, window, n * sizeof(int32_t), DDP_COPY_H2D);
        ddp_batch batch = {.n = 1, .t = n, .tokens = d_window};
        if (s == DDP_OK) s = ddp_model_forward(m, &batch, DDP_MODE_EVAL, 0.0f, NULL);
        if (s == DDP_OK)
            s = ddp_backend_copy(b, logits, ddp_model_logits(m) + (n - 1) * (size_t)V,
                                 (size_t)V * sizeof(float), DDP_COPY_D2H);
        if (s != DDP_OK) break;
        int32_t next =
            draw(logits, V, o->temperature, o->top_k, ddp_rng_uniform(&rng), prob, sorted);
        s = emit(ctx, next);
        if (n == keep) {
            for (size_t i = 1; i < keep; i++)
                window[i - 1] = window[i];
            n--;
        }
        window[n++] = next;
    }
    if (d_window) ddp_backend_dealloc(b, d_window);
    free(window);
    free(logits);
    free(prob);
    free(sorted);
    DDP_CHECK(s);
    return DDP_OK;
}
