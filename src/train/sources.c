/*
 * The data sources, one per kind of data a model trains on (ddp_data_kind): the one place
 * that maps a model kind's data to its source, and the loading of that data for the
 * programs.
 */
#include <string.h>

#include "train/trainer_impl.h"

extern const ddp_source_ops ddp_source_idx;
extern const ddp_source_ops ddp_source_text;

static const ddp_source_ops *const sources[DDP_DATA_KIND_COUNT] = {
    [DDP_DATA_SAMPLES] = &ddp_source_idx,
    [DDP_DATA_TEXT] = &ddp_source_text,
};

const ddp_source_ops *ddp_source_of(ddp_data_kind data) {
    return (int)data >= 0 && data < DDP_DATA_KIND_COUNT ? sources[data] : NULL;
}

const ddp_opt *ddp_source_options(ddp_data_kind data, size_t *n) {
    const ddp_source_ops *s = ddp_source_of(data);
    *n = s ? s->n_opts : 0;
    return s ? s->opts : NULL;
}

/* The source of cfg's model kind. */
static ddp_status source(const ddp_train_config *cfg, const ddp_source_ops **out) {
    *out = ddp_source_of(ddp_model_kind_data(cfg->model.kind));
    if (!*out)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--model %s: no data source for what it trains on",
                        ddp_model_kind_name(cfg->model.kind));
    return DDP_OK;
}

ddp_status ddp_train_data_prepare(const ddp_train_config *cfg) {
    const ddp_source_ops *s;
    DDP_CHECK(source(cfg, &s));
    if (s->prepare) DDP_CHECK(s->prepare(cfg));
    return DDP_OK;
}

ddp_status ddp_train_data_load(const ddp_train_config *cfg, ddp_train_data *d) {
    memset(d, 0, sizeof *d);
    const ddp_source_ops *s;
    DDP_CHECK(source(cfg, &s));
    DDP_CHECK(s->load(cfg, d));
    return DDP_OK;
}

ddp_status ddp_train_data_synthetic(const ddp_train_config *cfg, ddp_train_data *d) {
    memset(d, 0, sizeof *d);
    const ddp_source_ops *s;
    DDP_CHECK(source(cfg, &s));
    if (!s->synthetic)
        return DDP_FAIL(DDP_ERR_UNSUPPORTED, "%s: no synthetic data; it reads its file", s->name);
    DDP_CHECK(s->synthetic(cfg, d));
    return DDP_OK;
}

const char *ddp_train_data_name(const ddp_train_config *cfg) {
    const ddp_source_ops *s = ddp_source_of(ddp_model_kind_data(cfg->model.kind));
    return s ? s->data_name(cfg) : "?";
}

void ddp_train_data_free(ddp_train_data *d) {
    ddp_dataset_free(&d->train);
    ddp_dataset_free(&d->test);
    ddp_text_free(&d->text);
}
