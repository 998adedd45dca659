/*
 * The CPU kernels' own exp (src/backend/cpu_math.h) against the C library's, in double,
 * over the whole range the kernels use it in: within 3e-7 relative, and the clamps at the
 * ends.
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_is_within_3e7_relative),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
