/*
 * OpenBLAS chooses its kernels at start-up from the CPU it recognises. A CPU newer than
 * the OpenBLAS release (Debian 12's 0.3.21 does not know Emerald Rapids, for one) falls
 * back to generic SSE3 kernels ("Prescott"), 2.5 to 4 times slower at matrix products than
 * the AVX2 or AVX-512 kernels the CPU can run. The programs call ddp_blas_choose_kernels
 * first thing: when OpenBLAS settled for an old core on a CPU with AVX2 or AVX-512, and
 * nobody chose the kernels (OPENBLAS_CORETYPE), the program starts itself again with
 * OPENBLAS_CORETYPE set to the family the CPU supports. Nothing else changes; MPI is not
 * initialized yet, so the process is still free to replace itself.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddp/backend.h"

/* Cores older than AVX2 (and the generic fallbacks) that OpenBLAS may settle for. */
static const char *const old_cores[] = {
    "Prescott",  "Core2",  "Penryn",     "Dunnington", "Nehalem",     "Sandybridge",
    "Atom",      "Katmai", "Coppermine", "Northwood",  "Banias",      "Opteron",
    "Barcelona", "Bobcat", "Bulldozer",  "Piledriver", "Steamroller", "Excavator"};

const char *ddp_blas_better_core(const char *detected, int avx512, int avx2, int amd) {
    int old = 0;
    for (size_t i = 0; i < sizeof old_cores / sizeof *old_cores; i++)
        old |= detected && strcasecmp(detected, old_cores[i]) == 0;
    if (!old) return NULL;
    /* OpenBLAS's Zen kernels are its AVX2 kernels tuned for AMD; it has no AVX-512 kernel
     * set for AMD in this release, so AVX-512 means SkylakeX on Intel only. */
    if (avx512 && !amd) return "SkylakeX";
    if (avx2) return amd ? "Zen" : "Haswell";
    return NULL;
}

void ddp_blas_choose_kernels(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || getenv("DDP_BLAS_CHOSEN")) return;
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int amd = __builtin_cpu_is("amd");
    const char *detected = openblas_get_corename();
    const char *better = ddp_blas_better_core(detected, avx512, avx2, amd);
    if (!better) return;
    if (setenv("OPENBLAS_CORETYPE", better, 1) != 0 || setenv("DDP_BLAS_CHOSEN", detected, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* Could not start again (no /proc): go on with the kernels there are. */
    unsetenv("OPENBLAS_CORETYPE");
}

const char *ddp_blas_kernels_note(char *buf, size_t cap) {
    const char *was = getenv("DDP_BLAS_CHOSEN");
    const char *now = getenv("OPENBLAS_CORETYPE");
    if (!was || !now) return NULL;
    snprintf(buf, cap,
             "OpenBLAS did not recognise this CPU and chose its %s kernels; running with "
             "OPENBLAS_CORETYPE=%s, which the CPU supports (set OPENBLAS_CORETYPE to choose)",
             was, now);
    return buf;
}
