/* bench.h: what the benchmark programs share. */
#ifndef DIFFUSE_BENCH_H
#define DIFFUSE_BENCH_H

#include <stdlib.h>

#include "../../engine/internal.h"

/* n seeded standard normals (the engine's own generator); the caller frees. */
static inline float *random_floats(size_t n, uint64_t seed)
{
    float *x = malloc(sizeof(float) * n);
    diffuse_rng rng;
    diffuse_rng_seed(&rng, seed);
    diffuse_rng_normal(&rng, x, n);
    return x;
}

#endif
