/* rng.c: the seeded Gaussian generators, so that a seed means the same noise
 * here as in the tool it came from.
 *
 *   diffuse    the engine's own: xoshiro256** seeded through splitmix64,
 *              Box-Muller in double (Blackman & Vigna 2018).
 *   torch-cpu  torch.randn(shape, generator=torch.Generator().manual_seed(s))
 *              on the CPU, float32, as PyTorch 1.13 computes it for x86-64
 *              with AVX2 (what diffusers and ComfyUI draw on a CPU).
 *   philox     AUTOMATIC1111's "NV" source (modules/rng_philox.py): Philox
 *              4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy
 *              as 1, 2, 3") and Box-Muller, the numbers torch draws on CUDA
 *              (to a few float ulps: A1111 computes in double, CUDA in float).
 *
 * One call of diffuse_generator_normal() is one randn call of the reference:
 * successive calls continue the same stream, as a sampler's successive
 * torch.randn(..., generator=g) calls do.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

/* Every formula below rounds where its reference rounds: no fused
 * multiply-add unless written as fmaf() (GCC fuses nothing in ISO C mode). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ------------------------------------------------------------------ diffuse */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void diffuse_rng_seed(diffuse_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
    rng->has_spare = 0;
    rng->spare = 0;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman & Vigna 2018). */
uint64_t diffuse_rng_next(diffuse_rng *rng)
{
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

double diffuse_rng_uniform(diffuse_rng *rng)
{
    /* 53 random bits, shifted off zero so log() is finite */
    return ((double)(diffuse_rng_next(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Box-Muller: two uniforms give two independent N(0, 1) values. */
void diffuse_rng_normal(diffuse_rng *rng, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (rng->has_spare) {
            rng->has_spare = 0;
            out[i] = (float)rng->spare;
            continue;
        }
        double u1 = diffuse_rng_uniform(rng), u2 = diffuse_rng_uniform(rng);
        double r = sqrt(-2.0 * log(u1));
        out[i] = (float)(r * cos(2.0 * M_PI * u2));
        rng->spare = r * sin(2.0 * M_PI * u2);
        rng->has_spare = 1;
    }
}

/* ------------------------------------------------------------------ torch-cpu: mt19937 */

#define MT_N 624
#define MT_M 397

/* torch's CPUGeneratorImpl keeps only the low 32 bits of a 64-bit seed:
 * state[0] = seed, state[i] = 1812433253 (state[i-1] ^ state[i-1] >> 30) + i
 * (Matsumoto & Nishimura's init_genrand). */
static void mt_seed(diffuse_torch_cpu *t, uint64_t seed)
{
    t->state[0] = (uint32_t)seed;
    for (uint32_t i = 1; i < MT_N; i++)
        t->state[i] = 1812433253u * (t->state[i - 1] ^ (t->state[i - 1] >> 30)) + i;
    t->next = MT_N; /* the first draw regenerates the whole state */
    t->has_cached_normal = 0;
    t->cached_normal = 0;
}

/* The twist: state[i] = state[i+M] ^ (upper(state[i]) | lower(state[i+1])) >> 1
 * ^ (MATRIX_A when state[i+1] is odd), indices mod N. */
static void mt_twist(diffuse_torch_cpu *t)
{
    uint32_t *s = t->state;
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
        s[i] = s[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((s[(i + 1) % MT_N] & 1u) ? 0x9908b0dfu : 0u);
    }
    t->next = 0;
}

/* One tempered 32-bit output (torch's CPUGeneratorImpl::random()). */
static uint32_t mt_next(diffuse_torch_cpu *t)
{
    if (t->next >= MT_N)
        mt_twist(t);
    uint32_t y = t->state[t->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* uniform_real_distribution<float>(0, 1): the low 24 bits of one output times
 * 2^-24, a float in [0, 1) (exact). */
static float torch_uniform_float(diffuse_torch_cpu *t)
{
    return (float)(mt_next(t) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1): random64() puts the first output in
 * the high word; its low 53 bits times 2^-53 (exact). */
static double torch_uniform_double(diffuse_torch_cpu *t)
{
    uint64_t hi = mt_next(t), lo = mt_next(t);
    uint64_t r = (hi << 32) | lo;
    return (double)(r & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* normal_distribution<double>(0, 1) (torch's path for tensors under 16
 * values): r = sqrt(-2 ln(1 - u2)), theta = 2 pi u1; returns r cos(theta) and
 * keeps r sin(theta) in the generator for its next call, which may be the next
 * randn call (torch's cache lives in the generator). */
static double torch_normal_double(diffuse_torch_cpu *t)
{
    if (t->has_cached_normal) {
        t->has_cached_normal = 0;
        return t->cached_normal;
    }
    double u1 = torch_uniform_double(t);
    double u2 = torch_uniform_double(t);
    double r = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * M_PI * u1;
    t->cached_normal = r * sin(theta);
    t->has_cached_normal = 1;
    return r * cos(theta);
}

/* ------------------------------------------------------------------ torch-cpu: AVX2 math */

/* torch 1.13's normal_fill_AVX2 takes log and sin/cos of 8 floats at a time
 * from avx_mathfun.h (Giovanni Garberoglio's AVX port of Julien Pommier's
 * sse_mathfun, itself Cephes' single-precision logf/sinf/cosf). Its results
 * are not libm's, so each lane is redone here in scalar float, one rounding
 * per vector instruction. Those kernels are built with -mfma in GNU C++ mode,
 * where GCC fuses a multiply into the add or subtract that alone uses it
 * (trying the multiplies in source order): each such place is an fmaf() here,
 * and a multiply whose add was already taken stays rounded. Constants are the
 * header's double literals rounded to float. */

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Cephes logf for x in (0, 1]: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
 * log x = e ln2 + log1p(f), f = m - 1, log1p(f) = f - f^2/2 + f^3 P(f) with P
 * of degree 8, ln2 split as q2 + q1 = 0.693359375 - 2.12194440e-4. */
static float avx2_logf(float x)
{
    static const double p[9] = {7.0376836292E-2,  -1.1514610310E-1, 1.1676998740E-1,
                                -1.2420140846E-1, +1.4249322787E-1, -1.6668057665E-1,
                                +2.0000714765E-1, -2.4999993993E-1, +3.3333331174E-1};
    if (x < 1.17549435e-38f)
        x = 1.17549435e-38f; /* cut off subnormals, as the vector code does */
    uint32_t bits = f2u(x);
    float e = (float)((int32_t)(bits >> 23) - 0x7f) + 1.0f;
    x = u2f((bits & ~0x7f800000u) | f2u(0.5f)); /* mantissa in [0.5, 1) */
    if (x < (float)0.707106781186547524) {
        e = e - 1.0f;
        x = (x - 1.0f) + x;
    } else {
        x = x - 1.0f;
    }
    float z = x * x;
    float y = (float)p[0];
    for (int i = 1; i < 9; i++)
        y = fmaf(y, x, (float)p[i]); /* Horner: y = y x + p_i */
    y = y * x;
    y = fmaf(y, z, e * (float)-2.12194440e-4); /* f^3 P(f) + e q1 */
    y = fmaf(-z, 0.5f, y);                     /* - f^2/2 (exact product) */
    x = x + y;
    return fmaf(e, (float)0.693359375, x); /* + e q2 (exact product) */
}

/* The two Cephes polynomials on |x| <= pi/4, z = x^2:
 * cos x = 1 - z/2 + z^2 C(z), sin x = x + x z S(z). */
static float cephes_cos_poly(float z)
{
    float y = (float)2.443315711809948E-005;
    y = fmaf(y, z, (float)-1.388731625493765E-003);
    y = fmaf(y, z, (float)4.166664568298827E-002);
    y = y * z;
    y = fmaf(y, z, -(z * 0.5f)); /* z^2 C(z) - z/2 */
    return y + 1.0f;
}

static float cephes_sin_poly(float x, float z)
{
    float y = (float)-1.9515295891E-4;
    y = fmaf(y, z, (float)8.3321608736E-3);
    y = fmaf(y, z, (float)-1.6666654611E-1);
    y = y * z;
    return fmaf(y, x, x);
}

/* sincos256_ps for one lane, x >= 0: j = the even integer nearest x 4/pi
 * (rounded up from trunc), x -= j pi/4 in three parts (Cody-Waite, extended
 * precision), then the octant j picks polynomial and signs. */
static void avx2_sincosf(float x, float *s, float *c)
{
    uint32_t sign_sin = f2u(x) & 0x80000000u;
    x = u2f(f2u(x) & 0x7fffffffu);
    int32_t j = (int32_t)(x * (float)1.27323954473516);
    j = (j + 1) & ~1;
    float y = (float)j;
    sign_sin ^= (uint32_t)(j & 4) << 29;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    int sin_poly = (j & 2) == 0; /* octants 0, 3: sin from the sine polynomial */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, (float)-2.4187564849853515625e-4, x);
    x = fmaf(y, (float)-3.77489497744594108e-8, x);
    float z = x * x;
    float pc = cephes_cos_poly(z), ps = cephes_sin_poly(x, z);
    /* the vector code blends by masking and adding +0: keep its zeros' signs */
    float sin_ps = sin_poly ? ps : 0.0f, sin_pc = sin_poly ? 0.0f : pc;
    float rs = sin_pc + sin_ps;
    float rc = (pc - sin_pc) + (ps - sin_ps);
    *s = u2f(f2u(rs) ^ sign_sin);
    *c = u2f(f2u(rc) ^ sign_cos);
}

/* normal_fill_16_AVX2: 16 uniforms in place become 16 normals, lane j paired
 * with lane j + 8: r = sqrt(-2 ln(1 - u_j)), theta = 2 pi u_{j+8},
 * out_j = r cos(theta), out_{j+8} = r sin(theta). The "+ 0.0f" is the
 * kernel's fmadd with mean 0 and std 1 (it turns -0 into +0). */
static void torch_box_muller_16(float *d)
{
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j], u2 = d[j + 8];
        float radius = sqrtf(-2.0f * avx2_logf(u1));
        float sn, cs;
        avx2_sincosf(two_pi * u2, &sn, &cs);
        d[j] = radius * cs + 0.0f;
        d[j + 8] = radius * sn + 0.0f;
    }
}

/* torch.randn on the CPU, float32 (normal_kernel): under 16 values, one
 * normal_distribution<double> draw each; from 16 on, all n uniforms first,
 * then Box-Muller on every whole block of 16, and when n % 16 != 0, 16 fresh
 * uniforms for the last 16 places, transformed again. */
static void torch_normal(diffuse_torch_cpu *t, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = (float)(torch_normal_double(t) + 0.0);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = torch_uniform_float(t);
    for (size_t i = 0; i + 16 <= n; i += 16)
        torch_box_muller_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = torch_uniform_float(t);
        torch_box_muller_16(tail);
    }
}

/* ------------------------------------------------------------------ philox */

/* Philox4x32-10 (Salmon et al. 2011), Random123's word order: each round
 * multiplies ctr[0] by M0 and ctr[2] by M1 into 64 bits and mixes
 *   (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0));
 * the key is bumped by the Weyl constants W0, W1 between rounds. */
void diffuse_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += 0x9e3779b9u;
            k1 += 0xbb67ae85u;
        }
        uint64_t p0 = (uint64_t)0xd2511f53u * c0;
        uint64_t p1 = (uint64_t)0xcd9e8d57u * c2;
        c0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        c1 = (uint32_t)p1;
        c2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c3 = (uint32_t)p0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* A1111's box_muller(x, y): u = x 2^-32 + 2^-33 in (0, 1), v = y 2pi 2^-32 +
 * pi 2^-32, out = sqrt(-2 ln u) sin v. Its constants are float32 arrays, but a
 * uint32 array times a float32 array is float64 in numpy, so everything runs
 * in double from the float32 constants and is rounded to float once. */
static float philox_box_muller(uint32_t x, uint32_t y)
{
    const float inv32 = 2.3283064e-10f;
    const float inv32_2pi = (float)(2.3283064e-10 * 6.2831855);
    double u = (double)x * (double)inv32;
    u = u + (double)(inv32 / 2.0f);
    double v = (double)y * (double)inv32_2pi;
    v = v + (double)(inv32_2pi / 2.0f);
    double s = sqrt(-2.0 * log(u));
    return (float)(s * sin(v));
}

/* Generator.randn(shape): value i of call number `offset` comes from
 * counter (offset, 0, i, 0) and key (seed low word, seed high word), using
 * the first two of its four outputs. */
static void philox_normal(diffuse_philox *p, float *out, size_t n)
{
    const uint32_t key[2] = {(uint32_t)p->seed, (uint32_t)(p->seed >> 32)};
    for (size_t i = 0; i < n; i++) {
        const uint32_t ctr[4] = {(uint32_t)p->offset, 0, (uint32_t)i, 0};
        uint32_t r[4];
        diffuse_philox4x32_10(ctr, key, r);
        out[i] = philox_box_muller(r[0], r[1]);
    }
    p->offset++;
}

/* ------------------------------------------------------------------ generator */

/* The one table of names: ours (--rng), what A1111 writes after "RNG: " in
 * its parameters text, and one more A1111 value read as the same kind: "GPU",
 * torch's CUDA generator, whose numbers philox reproduces. */
static const struct {
    const char *name;
    const char *a1111;
    const char *also;
} rng_kinds[DIFFUSE_RNG_KINDS] = {
    [DIFFUSE_RNG_DIFFUSE] = {"diffuse", "diffuse", NULL},
    [DIFFUSE_RNG_PHILOX] = {"philox", "NV", "GPU"},
    [DIFFUSE_RNG_TORCH_CPU] = {"torch-cpu", "CPU", NULL},
};

const char *diffuse_rng_kind_name(diffuse_rng_kind k)
{
    return (unsigned)k < DIFFUSE_RNG_KINDS ? rng_kinds[k].name : NULL;
}

const char *diffuse_rng_kind_a1111(diffuse_rng_kind k)
{
    return (unsigned)k < DIFFUSE_RNG_KINDS ? rng_kinds[k].a1111 : NULL;
}

int diffuse_rng_kind_parse(const char *name, diffuse_rng_kind *out)
{
    for (int k = 0; name && k < DIFFUSE_RNG_KINDS; k++) {
        if (strcmp(name, rng_kinds[k].name) == 0 || strcmp(name, rng_kinds[k].a1111) == 0 ||
            (rng_kinds[k].also && strcmp(name, rng_kinds[k].also) == 0)) {
            *out = (diffuse_rng_kind)k;
            return 0;
        }
    }
    return -1;
}

void diffuse_generator_seed(diffuse_generator *g, diffuse_rng_kind kind, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    g->kind = kind;
    switch (kind) {
    case DIFFUSE_RNG_PHILOX:
        g->u.philox.seed = seed;
        g->u.philox.offset = 0;
        break;
    case DIFFUSE_RNG_TORCH_CPU:
        mt_seed(&g->u.torch_cpu, seed);
        break;
    default:
        g->kind = DIFFUSE_RNG_DIFFUSE;
        diffuse_rng_seed(&g->u.diffuse, seed);
        break;
    }
}

void diffuse_generator_normal(diffuse_generator *g, float *out, size_t n)
{
    switch (g->kind) {
    case DIFFUSE_RNG_PHILOX:
        philox_normal(&g->u.philox, out, n);
        break;
    case DIFFUSE_RNG_TORCH_CPU:
        torch_normal(&g->u.torch_cpu, out, n);
        break;
    default:
        diffuse_rng_normal(&g->u.diffuse, out, n);
        break;
    }
}
