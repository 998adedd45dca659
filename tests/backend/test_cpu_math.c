/*
 * The CPU kernels' own exp and tanh (src/backend/cpu_math.h) against the C library's, in
 * double, over the whole range the kernels use them in: exp within 3e-7 relative, tanh
 * within 2e-7 absolute, exact saturation to +-1, and the clamps at the ends.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "backend/cpu_math.h"

static void test_exp_is_within_3e7_relative(void **state) {
    double worst = 0.0;
    for (double y = -87.0; y <= 88.0; y += 0.000731) {
        double want = exp((double)(float)y), got = ddp_expf((float)y);
        double err = fabs(got - want) / want;
        if (err > worst) worst = err;
    }
    print_message("exp: largest relative error %.3g\n", worst);
    assert_true(worst < 3e-7);
    assert_true(ddp_expf(0.0f) == 1.0f);
    assert_true(ddp_expf(-1000.0f) > 0.0f && ddp_expf(-1000.0f) < 1e-37f); /* clamped, finite */
    assert_true(isfinite(ddp_expf(1000.0f)));
}

static void test_tanh_is_within_2e7_absolute(void **state) {
    double worst = 0.0;
    for (double u = -12.0; u <= 12.0; u += 0.0000917) {
        double err = fabs(ddp_tanhf((float)u) - tanh((double)(float)u));
        if (err > worst) worst = err;
    }
    print_message("tanh: largest absolute error %.3g\n", worst);
    assert_true(worst < 2e-7);
    assert_true(ddp_tanhf(20.0f) == 1.0f);
    assert_true(ddp_tanhf(-20.0f) == -1.0f);
    assert_true(ddp_tanhf(0.0f) == 0.0f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_is_within_3e7_relative),
        cmocka_unit_test(test_tanh_is_within_2e7_absolute),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
