/*
 * Initialization of every kind: each tensor's values have the spread its rule gives.
 * He-normal weights (the MLP's and the CNN's linear maps and convolutions) have standard
 * deviation sqrt(2 / fan_in), fan_in being every dimension but the first (in of (out,
 * in), in kh kw of a convolution (out, in, kh, kw)); the GPT's weights 0.02, its two
 * residual projections per block 0.02 / sqrt(2 layers); biases 0 and normalization
 * weights 1. The sample standard deviation of n draws is within a few times 1 / sqrt(2n)
 * of the true one, relative, so a wrong fan-in (a factor of 3 or 10) fails by far.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/model.h"

/* What a tensor's values must look like. */
typedef struct {
    const char *pattern; /* a part of the tensor's name */
    double std;          /* > 0: normal(0, std); 0: all equal to value */
    float value;
} rule;

static size_t fan_in(const ddp_param_view *v) {
    size_t f = 1;
    for (int d = 1; d < v->ndim; d++)
        f *= v->shape[d];
    return f;
}

/* Checks every parameter tensor of m against the first rule whose pattern its name
 * contains; he != 0 makes ".weight" tensors of two or more dimensions He-normal. */
static void check_model(ddp_model *m, const rule *rules, int n_rules, int he) {
    const float *p = ddp_model_params(m);
    for (int i = 0; i < ddp_model_num_views(m); i++) {
        const ddp_param_view *v = ddp_model_view(m, i);
        const float *w = p + v->offset;
        const rule *r = NULL;
        rule he_rule = {"", sqrt(2.0 / (double)fan_in(v)), 0.0f};
        if (he && v->ndim >= 2 && strstr(v->name, ".weight")) r = &he_rule;
        for (int k = 0; !r && k < n_rules; k++)
            if (strstr(v->name, rules[k].pattern)) r = &rules[k];
        if (!r) fail_msg("%s: no rule in the test", v->name);
        if (r->std == 0.0) {
            for (size_t k = 0; k < v->count; k++)
                if (w[k] != r->value)
                    fail_msg("%s[%zu] = %g, expected %g", v->name, k, w[k], r->value);
            continue;
        }
        double sum = 0.0, sq = 0.0, n = (double)v->count;
        for (size_t k = 0; k < v->count; k++) {
            sum += w[k];
            sq += (double)w[k] * w[k];
        }
        double mean = sum / n, std = sqrt(sq / n - mean * mean);
        /* 6 standard errors of each estimate, and at least 2% on the spread. */
        double tol = 6.0 / sqrt(2.0 * n) + 0.02;
        if (fabs(std / r->std - 1.0) > tol)
            fail_msg("%s (%zu values, fan-in %zu): standard deviation %.4g, expected %.4g", v->name,
                     v->count, fan_in(v), std, r->std);
        if (fabs(mean) > 6.0 * r->std / sqrt(n))
            fail_msg("%s: mean %.4g, expected 0 (std %.4g)", v->name, mean, r->std);
    }
}

static ddp_model *build(ddp_backend *b, const ddp_model_spec *spec) {
    ddp_model *m = NULL;
    OK(ddp_model_create(b, spec, 1, &m));
    OK(ddp_model_init_params(m, 7));
    return m;
}

static const rule zero_bias[] = {{".bias", 0.0, 0.0f}};

static void mlp_weights_are_he_normal_over_their_inputs(void **state) {
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_MLP);
    s.input_dim = 784;
    s.num_classes = 10;
    ddp_model *m = build(*state, &s);
    check_model(m, zero_bias, 1, 1);
    ddp_model_free(m);
}

static void cnn_convolutions_count_kernel_taps_in_their_fan_in(void **state) {
    /* The default CNN on Fashion-MNIST: conv0 (32, 1, 3, 3) has fan-in 9, conv1 (64, 32,
     * 3, 3) 288 (not the kernel width 3), the head's fc0 (128, 3136) 3136. */
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_CNN);
    s.height = s.width = 28;
    s.channels = 1;
    s.num_classes = 10;
    ddp_model *m = build(*state, &s);
    /* Batch norm's shift starts at 0 (a bias), its scale at 1. */
    const rule rules[] = {{".bias", 0.0, 0.0f}, {"bn", 0.0, 1.0f}};
    const ddp_param_view *conv1 = ddp_model_view(m, 4);
    assert_string_equal(conv1->name, "conv1.weight");
    assert_int_equal(fan_in(conv1), 288);
    check_model(m, rules, 2, 1);
    ddp_model_free(m);
}

static void gpt_weights_follow_gpt2(void **state) {
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_GPT);
    s.layers = 3;
    s.dim = 64;
    s.heads = 2;
    s.ctx = 32;
    s.num_classes = 256; /* the vocabulary, which a text gives */
    ddp_model *m = build(*state, &s);
    double resid = 0.02 / sqrt(2.0 * 3.0);
    const rule rules[] = {
        {"c_proj.weight", resid, 0.0f},
        {".bias", 0.0, 0.0f},
        {"ln_", 0.0, 1.0f},
        {"wte", 0.02, 0.0f},
        {"wpe", 0.02, 0.0f},
        {"c_attn.weight", 0.02, 0.0f},
        {"c_fc.weight", 0.02, 0.0f},
    };
    check_model(m, rules, sizeof rules / sizeof *rules, 0);
    ddp_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mlp_weights_are_he_normal_over_their_inputs),
        cmocka_unit_test(cnn_convolutions_count_kernel_taps_in_their_fan_in),
        cmocka_unit_test(gpt_weights_follow_gpt2),
    };
    return cmocka_run_group_tests(tests, cpu_backend_setup, cpu_backend_teardown);
}
