/*
 * Stage 0, replicated: every rank holds all parameters, gradients and optimizer state and
 * applies the same update; the gradients are all-reduced bucket by bucket during the last
 * micro-batch's backward, in node-shared memory where the comm offers it. The common calls
 * of sync.c do all of it; what is left is the weights' bf16 copy.
 */
#include "sync/sync_impl.h"

/* Mixed precision: products read the weights from a bf16 copy that the optimizer writes in
 * its own pass (a no-op unless the backend computes in bf16). The backend drops the copy
 * when the model frees the array. */
static ddp_status replicated_init(ddp_sync *s) {
    DDP_CHECK(ddp_backend_set_bf16_weights(s->backend, ddp_model_params(s->model), s->n));
    return DDP_OK;
}

const ddp_sync_ops ddp_sync_replicated = {
    .name = "replicated",
    .shares_grads = 1,
    .init = replicated_init,
};
