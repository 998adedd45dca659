/*
 * Elementwise math for the CPU backend's kernels, written so that the compiler
 * vectorizes the loops that call it (no calls into libm, no branches): exp to within a
 * few units in the last place of float, for GELU.
 *
 * DDP_CPU_CLONES compiles a kernel three times, for AVX-512 (x86-64-v4), AVX2 (x86-64-v3)
 * and plain x86-64, and picks the one the CPU runs when the program starts. The files
 * that use it are compiled without fused multiply-adds (CMakeLists.txt), so the three
 * give the same bits. Forward and backward kernels take it, and the sum of squares of the
 * gradient norm, whose order is fixed and whose products are exact; the optimizer's
 * update, which every rank must compute to the same bits on any CPU, stays plain.
 */
#ifndef DDP_BACKEND_CPU_MATH_H
#define DDP_BACKEND_CPU_MATH_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 &&           \
    !defined(DDP_NO_CLONES)
#define DDP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DDP_CPU_CLONES
#endif

/* x rounded to bf16 (to nearest, ties to even; a NaN stays a quiet NaN), as its 16 bits.
 * A select, not a branch, so that loops over it vectorize. */
static inline uint16_t ddp_bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

/* The same value held in a float. */
static inline float ddp_bf16_round(float x) {
    uint32_t u = (uint32_t)ddp_bf16_bits(x) << 16;
    float y;
    memcpy(&y, &u, 4);
    return y;
}

/* e^y for y in [-87, 88]: y = k ln 2 + r with |r| <= ln2 / 2 (k rounded by the 1.5 * 2^23
 * trick, which needs no rounding instruction), e^r by its Taylor polynomial of degree 7
 * (truncation below 1e-8 relative), 2^k put into the exponent bits. */
static inline float ddp_expf(float y) {
    y = y < -87.0f ? -87.0f : y > 88.0f ? 88.0f : y;
    const float shift = 12582912.0f; /* 1.5 * 2^23 */
    float k = (y * 1.44269504088896341f + shift) - shift;
    float r = y - k * 0.693145751953125f; /* ln 2 in two parts: the first exact in k * . */
    r = r - k * 1.42860682030941723e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    return p * two_k;
}

#endif
