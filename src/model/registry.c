/*
 * The model registry: the one place that maps a kind (DDP_MODEL_KINDS, ddp/model.h) to its
 * entry, the ddp_model_type in the kind's own file. Whatever differs between kinds (the
 * options and their defaults, the layers, the description, the data) is asked of the entry
 * through the functions here; nothing else branches on the kind.
 */
#include <string.h>

#include "model/layer.h"

#define DECLARE_TYPE(NAME, name) extern const ddp_model_type ddp_model_type_##name;
DDP_MODEL_KINDS(DECLARE_TYPE)
#define TYPE_ENTRY(NAME, name) [DDP_MODEL_##NAME] = &ddp_model_type_##name,
static const ddp_model_type *const types[DDP_MODEL_KIND_COUNT] = {DDP_MODEL_KINDS(TYPE_ENTRY)};
#define TYPE_NAME(NAME, name) #name,
const char *const ddp_model_kind_names[] = {DDP_MODEL_KINDS(TYPE_NAME) NULL};

/* Option defaults are kept per kind (ddp_opt.by_model). */
_Static_assert(DDP_MODEL_KIND_COUNT <= DDP_OPT_VARIANTS, "more model kinds than DDP_OPT_VARIANTS");

const ddp_model_type *ddp_model_type_of(ddp_model_kind kind) {
    return (int)kind >= 0 && kind < DDP_MODEL_KIND_COUNT ? types[kind] : NULL;
}

const char *ddp_model_kind_name(ddp_model_kind kind) {
    return ddp_enum_name(ddp_model_kind_names, (int)kind);
}

const char *ddp_model_kind_summary(ddp_model_kind kind) {
    const ddp_model_type *t = ddp_model_type_of(kind);
    return t ? t->summary : "";
}

const ddp_opt *ddp_model_kind_options(ddp_model_kind kind, size_t *n) {
    const ddp_model_type *t = ddp_model_type_of(kind);
    *n = t ? t->n_options : 0;
    return t ? t->options : NULL;
}

ddp_data_kind ddp_model_kind_data(ddp_model_kind kind) {
    const ddp_model_type *t = ddp_model_type_of(kind);
    return t ? t->data : DDP_DATA_KIND_COUNT;
}

size_t ddp_model_kind_eval_batch(ddp_model_kind kind) {
    const ddp_model_type *t = ddp_model_type_of(kind);
    return t ? t->eval_batch : 0;
}

void ddp_model_spec_defaults(ddp_model_spec *spec, ddp_model_kind kind) {
    memset(spec, 0, sizeof *spec);
    spec->kind = kind;
    const ddp_model_type *t = ddp_model_type_of(kind);
    if (!t) return;
    ddp_opt_table table = {.opts = t->options, .n = t->n_options, .base = spec};
    /* Fails only for a default that does not parse, a bug that test_option_tables finds. */
    if (ddp_opt_set_defaults(&table, 1, (int)kind) != DDP_OK)
        ddp_log_current_error("the model's defaults");
}

ddp_status ddp_model_spec_check(const ddp_model_spec *spec) {
    const ddp_model_type *t = ddp_model_type_of(spec->kind);
    if (!t) return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: unknown kind %d", (int)spec->kind);
    if (t->check) DDP_CHECK(t->check(spec));
    return DDP_OK;
}

size_t ddp_model_spec_positions(const ddp_model_spec *spec) {
    const ddp_model_type *t = ddp_model_type_of(spec->kind);
    return t && t->positions ? t->positions(spec) : 1;
}

ddp_status ddp_model_spec_parse(const char *text, ddp_model_spec *spec) {
    for (int k = 0; k < DDP_MODEL_KIND_COUNT; k++) {
        size_t n = strlen(ddp_model_kind_names[k]);
        if (strncmp(text, ddp_model_kind_names[k], n) != 0 || text[n] != ' ') continue;
        ddp_model_spec_defaults(spec, (ddp_model_kind)k);
        ddp_status s = types[k]->parse(text + n + 1, spec);
        if (s == DDP_OK) return DDP_OK;
        return DDP_FAIL(DDP_ERR_FORMAT, "model description '%s' is not one ddp writes: %s", text,
                        ddp_error_message());
    }
    return DDP_FAIL(DDP_ERR_FORMAT,
                    "model description '%s' is not one ddp writes (it starts with the model "
                    "kind, as in \"mlp 784-256-10 relu\")",
                    text);
}
