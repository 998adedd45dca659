/*
 * The choice of OpenBLAS kernels for a CPU OpenBLAS does not recognise: an old or generic
 * core on a CPU with AVX-512 (Intel) becomes SkylakeX, with AVX2 Haswell (Intel) or Zen
 * (AMD); a recognised modern core, or a CPU without AVX2, is left alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "ddp/backend.h"

static void test_old_core_on_a_modern_cpu_gets_the_supported_family(void **state) {
    assert_string_equal(ddp_blas_better_core("Prescott", 1, 1, 0), "SkylakeX");
    assert_string_equal(ddp_blas_better_core("Prescott", 0, 1, 0), "Haswell");
    assert_string_equal(ddp_blas_better_core("Sandybridge", 0, 1, 1), "Zen");
    assert_string_equal(ddp_blas_better_core("Core2", 1, 1, 1), "Zen"); /* no AMD AVX-512 set */
    assert_string_equal(ddp_blas_better_core("nehalem", 1, 1, 0), "SkylakeX");
}

static void test_recognised_cores_and_old_cpus_are_left_alone(void **state) {
    assert_null(ddp_blas_better_core("SkylakeX", 1, 1, 0));
    assert_null(ddp_blas_better_core("Cooperlake", 1, 1, 0));
    assert_null(ddp_blas_better_core("Haswell", 1, 1, 0)); /* decent kernels: keep */
    assert_null(ddp_blas_better_core("Zen", 0, 1, 1));
    assert_null(ddp_blas_better_core("Prescott", 0, 0, 0)); /* the CPU has nothing better */
    assert_null(ddp_blas_better_core(NULL, 1, 1, 0));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_old_core_on_a_modern_cpu_gets_the_supported_family),
        cmocka_unit_test(test_recognised_cores_and_old_cpus_are_left_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
