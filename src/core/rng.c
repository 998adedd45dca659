/*
 * xoshiro256** (Blackman and Vigna), seeded by splitmix64 from (seed, stream). The same
 * sequence on every rank and platform, which is what replicated state needs.
 */
#include <math.h>

#include "ddp/core.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void ddp_rng_seed(ddp_rng *rng, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&x);
}

uint64_t ddp_rng_u64(ddp_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t ddp_rng_below(ddp_rng *rng, uint64_t n) {
    /* Rejection sampling: draws above the largest multiple of n are redrawn. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do {
        r = ddp_rng_u64(rng);
    } while (r >= limit);
    return r % n;
}

float ddp_rng_uniform(ddp_rng *rng) { return (float)(ddp_rng_u64(rng) >> 40) * 0x1.0p-24f; }

float ddp_rng_normal(ddp_rng *rng) {
    /* u1 in (0, 1] so that log never sees zero. */
    double u1 = ((double)(ddp_rng_u64(rng) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (double)(ddp_rng_u64(rng) >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}
