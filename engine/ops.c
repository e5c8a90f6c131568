/* ops.c: the numeric kernels every model part is built from.
 *
 * Matrix products go through cblas_sgemm, single-threaded, split over the
 * engine's pool (diffuse_gemm); the rest are flat loops over NCHW float32
 * buffers (attention has a file of its own, attention.c). Every optimized kernel has a plain
 * reference twin (suffix _ref) that tests/test_ops.c holds it to.
 */
#include <cpuid.h>
#include <math.h>
#include <string.h>

#include <cblas.h>
#include <immintrin.h>

#include "internal.h"

/* Kernels other than matrix products run on the pool in parts of at least
 * this many floats written: below it, waking a thread costs more than it saves. */
#define POINTWISE_GRAIN 16384

/* Items of `per` floats each that make one part of at least POINTWISE_GRAIN. */
static size_t grain_of(size_t per)
{
    return POINTWISE_GRAIN / (per ? per : 1) + 1;
}

/* ------------------------------------------------------------------ cpu paths */

/* Which vector paths this CPU runs (the build targets plain x86-64; the fast
 * paths are compiled with target attributes and chosen here at run time). */
typedef enum {
    CPU_BASE = DIFFUSE_CPU_BASE,
    CPU_AVX2 = DIFFUSE_CPU_AVX2,
    CPU_AVX512 = DIFFUSE_CPU_AVX512
} cpu_path;

static int cpu_cap = CPU_AVX512;

void diffuse_cpu_cap(int max_path)
{
    cpu_cap = max_path;
}

/* F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does
 * not know the name. */
static bool has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}

int diffuse_cpu_path(void)
{
    static int path = -1;
    if (path < 0) {
        __builtin_cpu_init();
        int p = CPU_BASE;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())
            p = CPU_AVX2;
        if (p == CPU_AVX2 && __builtin_cpu_supports("avx512f"))
            p = CPU_AVX512;
        path = p;
    }
    return path < cpu_cap ? path : cpu_cap;
}

static cpu_path cpu(void)
{
    return (cpu_path)diffuse_cpu_path();
}

/* ------------------------------------------------------------------ widen */

void diffuse_op_widen_ref(float *dst, const void *src, diffuse_dtype dtype, size_t n)
{
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        if (dtype == DIFFUSE_DTYPE_F32) {
            memcpy(&dst[i], p + 4 * i, 4);
            continue;
        }
        memcpy(&h, p + 2 * i, 2);
        dst[i] = dtype == DIFFUSE_DTYPE_F16 ? diffuse_f16_to_f32(h) : diffuse_bf16_to_f32(h);
    }
}

__attribute__((target("avx2,fma,f16c"))) static void widen_avx2(float *d, const uint16_t *s,
                                                                bool bf16, size_t n)
{
    size_t i = 0;
    if (bf16)
        for (; i + 8 <= n; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
    else
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    diffuse_op_widen_ref(d + i, s + i, bf16 ? DIFFUSE_DTYPE_BF16 : DIFFUSE_DTYPE_F16, n - i);
}

__attribute__((target("avx512f"))) static void widen_avx512(float *d, const uint16_t *s, bool bf16,
                                                            size_t n)
{
    size_t i = 0;
    if (bf16)
        for (; i + 16 <= n; i += 16) {
            __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i)));
            _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
        }
    else
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
    diffuse_op_widen_ref(d + i, s + i, bf16 ? DIFFUSE_DTYPE_BF16 : DIFFUSE_DTYPE_F16, n - i);
}

typedef struct widen_job {
    float *dst;
    const uint8_t *src;
    diffuse_dtype dtype;
} widen_job;

static void widen_part(void *ctx, size_t b, size_t e)
{
    const widen_job *j = ctx;
    if (j->dtype == DIFFUSE_DTYPE_F32) {
        memcpy(j->dst + b, j->src + 4 * b, 4 * (e - b));
        return;
    }
    const uint16_t *s = (const uint16_t *)(j->src + 2 * b); /* 2-aligned: safetensors offsets */
    const bool bf16 = j->dtype == DIFFUSE_DTYPE_BF16;
    switch (cpu()) {
    case CPU_AVX512:
        widen_avx512(j->dst + b, s, bf16, e - b);
        break;
    case CPU_AVX2:
        widen_avx2(j->dst + b, s, bf16, e - b);
        break;
    default:
        diffuse_op_widen_ref(j->dst + b, s, j->dtype, e - b);
        break;
    }
}

void diffuse_op_widen(float *dst, const void *src, diffuse_dtype dtype, size_t n)
{
    widen_job j = {dst, src, dtype};
    diffuse_parallel_for(n, 1 << 16, widen_part, &j);
}

/* One element of src (index e) as float32. */
static float widen_one(const void *src, diffuse_dtype dtype, size_t e)
{
    float f;
    diffuse_op_widen_ref(&f, (const uint8_t *)src + e * (dtype == DIFFUSE_DTYPE_F32 ? 4 : 2), dtype,
                         1);
    return f;
}

void diffuse_op_widen_blocked_ref(float *dst, const void *src, diffuse_dtype dtype,
                                  const diffuse_wblocked *l)
{
    const int kk = l->k * l->k;
    for (int o = 0; o < l->cout_pad; o++)
        for (int i = 0; i < l->cin; i++)
            for (int y = 0; y < l->k; y++)
                for (int x = 0; x < l->k; x++)
                    dst[(size_t)(o / l->blk) * l->stride[0] + (i / l->iblk) * l->stride[1] +
                        (size_t)(i % l->iblk) * l->blk + y * l->stride[2] + x * l->stride[3] +
                        o % l->blk] =
                        o < l->cout
                            ? widen_one(src, dtype, ((size_t)o * l->cin + i) * kk + y * l->k + x)
                            : 0.0f;
}

/* Floats of each row a block widens at a time (WBLOCK_RUN / (k k) input
 * channels: 16 at 3x3, 144 for a linear layer): blk rows of them, 36 KiB at
 * most, stay in the L1/L2 cache between the widening and the writes, and a
 * row's run is long enough for the vector widening. */
#define WBLOCK_RUN 144

/* Where column c of a piece's widened rows (input channel i0 + c / kk,
 * kernel position c % kk) goes in the blocked layout, from its block's start. */
static size_t wblocked_at(const diffuse_wblocked *l, int i0, int c)
{
    const int kk = l->k * l->k, i = i0 + c / kk, yx = c % kk;
    return (size_t)(i / l->iblk) * l->stride[1] + (size_t)(i % l->iblk) * l->blk +
           (yx / l->k) * l->stride[2] + (yx % l->k) * l->stride[3];
}

/* Columns [c0, 16 n) of t [blk][ts] (blk a multiple of 16) written out as
 * blk-float runs: 16 x 16 tiles transposed in registers. Returns the columns
 * done (a multiple of 16; the caller does the rest). */
__attribute__((target("avx512f"))) static int
tiles_avx512(float *d, const float *t, int ts, int run, const diffuse_wblocked *l, int i0)
{
    int c0 = 0;
    for (; c0 + 16 <= run; c0 += 16) {
        size_t at[16];
        for (int c = 0; c < 16; c++)
            at[c] = wblocked_at(l, i0, c0 + c);
        for (int o0 = 0; o0 < l->blk; o0 += 16) {
            __m512 r[16], u[16];
            for (int i = 0; i < 16; i++)
                r[i] = _mm512_loadu_ps(t + (size_t)(o0 + i) * ts + c0);
            for (int i = 0; i < 8; i++) { /* pairs of rows interleaved, per 128-bit lane */
                u[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                u[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            for (int g = 0; g < 4; g++) { /* r[4g + j], lane L: column 4L + j, rows 4g.. */
                r[4 * g] = _mm512_shuffle_ps(u[4 * g], u[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
                r[4 * g + 1] = _mm512_shuffle_ps(u[4 * g], u[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
                r[4 * g + 2] =
                    _mm512_shuffle_ps(u[4 * g + 1], u[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
                r[4 * g + 3] =
                    _mm512_shuffle_ps(u[4 * g + 1], u[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            for (int j = 0; j < 4; j++) { /* the lanes across the four row groups */
                __m512 s0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44),
                       s1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xee),
                       s2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44),
                       s3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xee);
                _mm512_storeu_ps(d + at[j] + o0, _mm512_shuffle_f32x4(s0, s2, 0x88));
                _mm512_storeu_ps(d + at[4 + j] + o0, _mm512_shuffle_f32x4(s0, s2, 0xdd));
                _mm512_storeu_ps(d + at[8 + j] + o0, _mm512_shuffle_f32x4(s1, s3, 0x88));
                _mm512_storeu_ps(d + at[12 + j] + o0, _mm512_shuffle_f32x4(s1, s3, 0xdd));
            }
        }
    }
    return c0;
}

/* The same with 8 x 8 tiles (blk a multiple of 8). */
__attribute__((target("avx2"))) static int tiles_avx2(float *d, const float *t, int ts, int run,
                                                      const diffuse_wblocked *l, int i0)
{
    int c0 = 0;
    for (; c0 + 8 <= run; c0 += 8) {
        size_t at[8];
        for (int c = 0; c < 8; c++)
            at[c] = wblocked_at(l, i0, c0 + c);
        for (int o0 = 0; o0 < l->blk; o0 += 8) {
            __m256 r[8], u[8];
            for (int i = 0; i < 8; i++)
                r[i] = _mm256_loadu_ps(t + (size_t)(o0 + i) * ts + c0);
            for (int i = 0; i < 4; i++) {
                u[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                u[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            for (int g = 0; g < 2; g++) {
                r[4 * g] = _mm256_shuffle_ps(u[4 * g], u[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
                r[4 * g + 1] = _mm256_shuffle_ps(u[4 * g], u[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
                r[4 * g + 2] =
                    _mm256_shuffle_ps(u[4 * g + 1], u[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
                r[4 * g + 3] =
                    _mm256_shuffle_ps(u[4 * g + 1], u[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            for (int j = 0; j < 4; j++) {
                _mm256_storeu_ps(d + at[j] + o0, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
                _mm256_storeu_ps(d + at[4 + j] + o0, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
            }
        }
    }
    return c0;
}

typedef struct wblocked_job {
    float *dst;
    const uint8_t *src;
    diffuse_dtype dtype;
    const diffuse_wblocked *l;
} wblocked_job;

/* Pieces [b, e) of (block of blk output channels, run of `chunk` input
 * channels): each row's run is contiguous in src; widened into t [blk][chunk
 * * kk] with the vector path, then written out blk floats at a time. */
static void wblocked_part(void *ctx, size_t b, size_t e)
{
    const wblocked_job *j = ctx;
    const diffuse_wblocked *l = j->l;
    const int kk = l->k * l->k, blk = l->blk, esize = j->dtype == DIFFUSE_DTYPE_F32 ? 4 : 2;
    const int chunk = WBLOCK_RUN / kk, nchunks = (l->cin + chunk - 1) / chunk;
    const int path = cpu();
    float t[DIFFUSE_WBLOCK_MAX * WBLOCK_RUN];
    for (size_t piece = b; piece < e; piece++) {
        const size_t ob = piece / nchunks;
        const int i0 = (int)(piece % nchunks) * chunk;
        const int ni = l->cin - i0 < chunk ? l->cin - i0 : chunk;
        const int run = ni * kk, ts = chunk * kk; /* floats per row, row stride */
        float *d = j->dst + ob * l->stride[0];
        for (int oo = 0; oo < blk; oo++) {
            const size_t o = ob * blk + oo;
            float *r = t + (size_t)oo * ts;
            if ((int)o < l->cout)
                widen_part(&(widen_job){r, j->src + (o * l->cin + i0) * kk * esize, j->dtype}, 0,
                           run);
            else
                memset(r, 0, sizeof(float) * run);
        }
        int c = 0; /* the columns: register tiles, then one at a time */
        if (path == CPU_AVX512 && blk % 16 == 0)
            c = tiles_avx512(d, t, ts, run, l, i0);
        else if (path >= CPU_AVX2 && blk % 8 == 0)
            c = tiles_avx2(d, t, ts, run, l, i0);
        for (; c < run; c++) {
            float *dd = d + wblocked_at(l, i0, c);
            for (int oo = 0; oo < blk; oo++)
                dd[oo] = t[(size_t)oo * ts + c];
        }
    }
}

void diffuse_op_widen_blocked(float *dst, const void *src, diffuse_dtype dtype,
                              const diffuse_wblocked *l)
{
    if (l->k * l->k > WBLOCK_RUN || l->blk > DIFFUSE_WBLOCK_MAX || l->blk < 1 || l->iblk < 1) {
        diffuse_op_widen_blocked_ref(dst, src, dtype, l); /* not a layout the tiles take */
        return;
    }
    wblocked_job j = {dst, src, dtype, l};
    const int chunk = WBLOCK_RUN / (l->k * l->k), nchunks = (l->cin + chunk - 1) / chunk;
    diffuse_parallel_for((size_t)(l->cout_pad / l->blk) * nchunks, 4, wblocked_part, &j);
}

/* ------------------------------------------------------------------ gemm */

/* C[M, N] = alpha op(A) op(B) + beta C (row-major), on the engine's pool:
 * OpenBLAS runs single-threaded inside each part (diffuse_pool_set_threads
 * keeps it so), and the pool's threads take one part each. Large products
 * are cut into as many parts as there are threads, along N when it is wide
 * (each part packs all of A, which is cheap next to its share of B) or else
 * along M. Every element still sums its K products in OpenBLAS's order, and
 * parts stay far above OpenBLAS's small-matrix path (different code, other
 * rounding), so the result does not depend on the cut: tests/test_ops.c
 * holds it to the one-call result bit for bit at every thread count. */
#define GEMM_MAX_PARTS 16        /* threads a product can use */
#define GEMM_SPLIT_MIN (1 << 23) /* multiply-adds per part, at least */

typedef struct gemm_job {
    bool ta, tb;
    int m, n, k, parts;
    bool along_n;
    float alpha, beta;
    const float *a, *b;
    float *c;
    int lda, ldb, ldc;
} gemm_job;

static void gemm_call(const gemm_job *j, int m0, int m1, int n0, int n1)
{
    const float *a = j->a + (size_t)m0 * (j->ta ? 1 : (size_t)j->lda);
    const float *b = j->b + (size_t)n0 * (j->tb ? (size_t)j->ldb : 1);
    cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans, j->tb ? CblasTrans : CblasNoTrans,
                m1 - m0, n1 - n0, j->k, j->alpha, a, j->lda, b, j->ldb, j->beta,
                j->c + (size_t)m0 * j->ldc + n0, j->ldc);
}

static void gemm_part(void *ctx, size_t p0, size_t p1)
{
    const gemm_job *j = ctx;
    for (size_t p = p0; p < p1; p++) {
        const int dim = j->along_n ? j->n : j->m, align = j->along_n ? 16 : 8;
        int b = (int)((size_t)dim * p / (size_t)j->parts),
            e = (int)((size_t)dim * (p + 1) / (size_t)j->parts);
        b = b / align * align;
        e = p + 1 == (size_t)j->parts ? dim : e / align * align;
        if (b >= e)
            continue;
        if (j->along_n)
            gemm_call(j, 0, j->m, b, e);
        else
            gemm_call(j, b, e, 0, j->n);
    }
}

void diffuse_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc)
{
    gemm_job j = {.ta = ta,
                  .tb = tb,
                  .m = m,
                  .n = n,
                  .k = k,
                  .alpha = alpha,
                  .beta = beta,
                  .a = a,
                  .b = b,
                  .c = c,
                  .lda = lda,
                  .ldb = ldb,
                  .ldc = ldc};
    /* The cut depends on the shape alone, never on the thread count: OpenBLAS
     * may sum a narrower product in another order (its AVX2 kernels do), so
     * the same parts must run whatever the threads. A power of two of them,
     * at least GEMM_SPLIT_MIN multiply-adds each, spread over the threads. */
    const double work = (double)m * n * k;
    int parts = 1;
    while (parts < GEMM_MAX_PARTS && work >= (double)GEMM_SPLIT_MIN * 2 * parts)
        parts *= 2;
    j.along_n = n >= 64 * parts || n >= m;
    const int dim = j.along_n ? n : m, align = j.along_n ? 16 : 8;
    while (parts > 1 && parts > dim / align)
        parts /= 2;
    if (parts <= 1) {
        gemm_call(&j, 0, m, 0, n);
        return;
    }
    j.parts = parts;
    diffuse_parallel_for((size_t)parts, 1, gemm_part, &j);
}

/* ------------------------------------------------------------------ linear */

/* y[n, out] = x[n, in] . W[out, in]^T + b */
void diffuse_op_linear(float *y, const float *x, const float *w, const float *b, int n, int in,
                       int out)
{
    if (b) {
        for (int i = 0; i < n; i++)
            memcpy(y + (size_t)i * out, b, sizeof(float) * out);
    }
    diffuse_gemm(false, true, n, out, in, 1.0f, x, in, w, in, b ? 1.0f : 0.0f, y, out);
}

void diffuse_op_linear_ref(float *y, const float *x, const float *w, const float *b, int n, int in,
                           int out)
{
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int k = 0; k < in; k++)
                s += (double)x[(size_t)i * in + k] * w[(size_t)o * in + k];
            y[(size_t)i * out + o] = (float)s;
        }
}

/* ------------------------------------------------------------------ conv2d */

diffuse_conv diffuse_conv_3x3(int cin, int cout, int h, int w, int stride)
{
    return (diffuse_conv){.cin = cin,
                          .h = h,
                          .w = w,
                          .cout = cout,
                          .k = 3,
                          .stride = stride,
                          .pad_top = 1,
                          .pad_left = 1,
                          .pad_bottom = 1,
                          .pad_right = 1};
}

int diffuse_conv_out_h(const diffuse_conv *c)
{
    return (c->h + c->pad_top + c->pad_bottom - c->k) / c->stride + 1;
}

int diffuse_conv_out_w(const diffuse_conv *c)
{
    return (c->w + c->pad_left + c->pad_right - c->k) / c->stride + 1;
}

double diffuse_conv_flops(const diffuse_conv *c, int n)
{
    return 2.0 * n * c->cout * c->cin * c->k * c->k * diffuse_conv_out_h(c) * diffuse_conv_out_w(c);
}

/* im2col of one image; 0 for a plain 1x1 convolution (the input is the matrix) */
static size_t im2col_floats(const diffuse_conv *c)
{
    if (c->k == 1 && c->stride == 1 && !c->pad_top && !c->pad_left && !c->pad_bottom &&
        !c->pad_right)
        return 0;
    return (size_t)c->cin * c->k * c->k * diffuse_conv_out_h(c) * diffuse_conv_out_w(c);
}

size_t diffuse_conv_scratch(const diffuse_conv *c, int n)
{
    size_t col = im2col_floats(c), dnnl = diffuse_dnnl_conv_scratch(c, n);
    return col > dnnl ? col : dnnl;
}

typedef struct im2col_job {
    float *col;
    const float *x;
    const diffuse_conv *c;
    int oh, ow;
} im2col_job;

/* col[(ci*k + ky)*k + kx, oy*ow + ox] = x[ci, oy*s + ky - pt, ox*s + kx - pl] (0 outside),
 * for input channels [c0, c1) */
static void im2col_part(void *ctx, size_t c0, size_t c1)
{
    const im2col_job *j = ctx;
    float *col = j->col;
    const float *x = j->x;
    const diffuse_conv *c = j->c;
    const int oh = j->oh, ow = j->ow;
    const int k = c->k, s = c->stride;
    for (int ci = (int)c0; ci < (int)c1; ci++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *dst = col + ((size_t)(ci * k + ky) * k + kx) * oh * ow;
                const float *src = x + (size_t)ci * c->h * c->w;
                for (int oy = 0; oy < oh; oy++) {
                    int iy = oy * s + ky - c->pad_top;
                    float *row = dst + (size_t)oy * ow;
                    if (iy < 0 || iy >= c->h) {
                        memset(row, 0, sizeof(float) * ow);
                        continue;
                    }
                    const float *in = src + (size_t)iy * c->w;
                    if (s == 1) { /* zeros, a straight copy, zeros */
                        int lo = c->pad_left - kx,
                            hi = c->w + c->pad_left - kx; /* ox range inside */
                        lo = lo < 0 ? 0 : lo > ow ? ow : lo;
                        hi = hi < lo ? lo : hi > ow ? ow : hi;
                        for (int ox = 0; ox < lo; ox++)
                            row[ox] = 0.0f;
                        memcpy(row + lo, in + lo + kx - c->pad_left, sizeof(float) * (hi - lo));
                        for (int ox = hi; ox < ow; ox++)
                            row[ox] = 0.0f;
                        continue;
                    }
                    for (int ox = 0; ox < ow; ox++) {
                        int ix = ox * s + kx - c->pad_left;
                        row[ox] = (ix >= 0 && ix < c->w) ? in[ix] : 0.0f;
                    }
                }
            }
}

static void im2col(float *col, const float *x, const diffuse_conv *c, int oh, int ow)
{
    im2col_job j = {col, x, c, oh, ow};
    diffuse_parallel_for((size_t)c->cin, grain_of((size_t)c->k * c->k * oh * ow), im2col_part, &j);
}

typedef struct fill_job {
    float *y;
    const float *b;
    size_t len;
} fill_job;

static void fill_rows_part(void *ctx, size_t b, size_t e)
{
    const fill_job *j = ctx;
    for (size_t o = b; o < e; o++) {
        float v = j->b ? j->b[o] : 0.0f, *p = j->y + o * j->len;
        for (size_t q = 0; q < j->len; q++)
            p[q] = v;
    }
}

/* Per image: Y[cout, oh*ow] = W[cout, cin*k*k] . col[cin*k*k, oh*ow] + b */
void diffuse_op_conv2d(float *y, const float *x, const float *w, const float *b,
                       const diffuse_conv *c, int n, float *scratch)
{
    const int oh = diffuse_conv_out_h(c), ow = diffuse_conv_out_w(c);
    const int kk = c->cin * c->k * c->k, hw = oh * ow;
    if (diffuse_dnnl_conv(y, x, w, b, c, n, scratch))
        return;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * c->cin * c->h * c->w;
        float *yi = y + (size_t)i * c->cout * hw;
        const float *col = xi;
        if (im2col_floats(c)) {
            im2col(scratch, xi, c, oh, ow);
            col = scratch;
        }
        fill_job fj = {yi, b, (size_t)hw};
        diffuse_parallel_for((size_t)c->cout, grain_of((size_t)hw), fill_rows_part, &fj);
        diffuse_gemm(false, false, c->cout, hw, kk, 1.0f, w, kk, col, hw, 1.0f, yi, hw);
    }
}

void diffuse_op_conv2d_ref(float *y, const float *x, const float *w, const float *b,
                           const diffuse_conv *c, int n)
{
    const int oh = diffuse_conv_out_h(c), ow = diffuse_conv_out_w(c), k = c->k;
    for (int i = 0; i < n; i++)
        for (int o = 0; o < c->cout; o++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    double s = b ? b[o] : 0;
                    for (int ci = 0; ci < c->cin; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = oy * c->stride + ky - c->pad_top;
                                int ix = ox * c->stride + kx - c->pad_left;
                                if (iy < 0 || iy >= c->h || ix < 0 || ix >= c->w)
                                    continue;
                                s += (double)w[(((size_t)o * c->cin + ci) * k + ky) * k + kx] *
                                     x[(((size_t)i * c->cin + ci) * c->h + iy) * c->w + ix];
                            }
                    y[(((size_t)i * c->cout + o) * oh + oy) * ow + ox] = (float)s;
                }
}

/* ------------------------------------------------------------------ norms */

static inline float silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* y = (x - mean_g) / sqrt(var_g + eps) * gamma_c + beta_c, statistics per
 * (image, group) over C/groups channels x HW; biased variance as torch. */
typedef struct norm_job {
    float *y;
    const float *x, *gamma, *beta;
    int c, hw, groups, dim;
    float eps;
    bool act;
} norm_job;

/* One group's mean and sum of squared deviations: cg channels of len values,
 * plane apart; two passes, in double. */
static void group_moments(const float *x, int cg, size_t plane, size_t len, double *mean,
                          double *m2)
{
    double sum = 0, sq = 0;
    for (int ch = 0; ch < cg; ch++)
        for (size_t j = 0; j < len; j++)
            sum += x[(size_t)ch * plane + j];
    const double m = sum / ((double)cg * len);
    for (int ch = 0; ch < cg; ch++)
        for (size_t j = 0; j < len; j++) {
            const double d = x[(size_t)ch * plane + j] - m;
            sq += d * d;
        }
    *mean = m;
    *m2 = sq;
}

/* yg = (xg - mean) * rstd * gamma + beta (then SiLU) over cg channels of hw. */
static void group_apply(float *yg, const float *xg, const float *gamma, const float *beta, int cg,
                        int hw, float mean, float rstd, bool act)
{
    for (int ch = 0; ch < cg; ch++) {
        float a = gamma[ch] * rstd;
        float bb = beta[ch] - mean * a;
        for (int p = 0; p < hw; p++) {
            float v = xg[(size_t)ch * hw + p] * a + bb;
            yg[(size_t)ch * hw + p] = act ? silu(v) : v;
        }
    }
}

static float group_rstd(double m2, double count, float eps)
{
    return (float)(1.0 / sqrt(m2 / count + eps));
}

static void group_norm_part(void *ctx, size_t b, size_t e)
{
    const norm_job *j = ctx;
    const int c = j->c, hw = j->hw, groups = j->groups, cg = c / groups;
    for (size_t ig = b; ig < e; ig++) {
        const size_t i = ig / (size_t)groups;
        const int g = (int)(ig % (size_t)groups);
        const size_t off = ((size_t)i * c + (size_t)g * cg) * hw;
        double mean, m2;
        group_moments(j->x + off, cg, hw, hw, &mean, &m2);
        group_apply(j->y + off, j->x + off, j->gamma + g * cg, j->beta + g * cg, cg, hw,
                    (float)mean, group_rstd(m2, (double)cg * hw, j->eps), j->act);
    }
}

void diffuse_op_group_norm(float *y, const float *x, const float *gamma, const float *beta, int n,
                           int c, int hw, int groups, float eps, bool act)
{
    norm_job j = {.y = y,
                  .x = x,
                  .gamma = gamma,
                  .beta = beta,
                  .c = c,
                  .hw = hw,
                  .groups = groups,
                  .eps = eps,
                  .act = act};
    diffuse_parallel_for((size_t)n * groups, grain_of((size_t)(c / groups) * hw), group_norm_part,
                         &j);
}

typedef struct moments_job {
    double *acc;
    const float *x;
    int cg;
    size_t plane, len;
} moments_job;

static void moments_part(void *ctx, size_t b, size_t e)
{
    const moments_job *j = ctx;
    for (size_t g = b; g < e; g++) {
        double *acc = j->acc + 3 * g, mean, m2;
        const double n = (double)j->cg * j->len, total = acc[0] + n;
        group_moments(j->x + g * j->cg * j->plane, j->cg, j->plane, j->len, &mean, &m2);
        const double d = mean - acc[1]; /* Chan et al.'s merge of two partitions */
        acc[1] += d * n / total;
        acc[2] += m2 + d * d * acc[0] * n / total;
        acc[0] = total;
    }
}

void diffuse_op_group_moments(double *acc, const float *x, int c, int groups, size_t plane,
                              size_t len)
{
    if (!len)
        return;
    moments_job j = {.acc = acc, .x = x, .cg = c / groups, .plane = plane, .len = len};
    diffuse_parallel_for((size_t)groups, grain_of((size_t)j.cg * len), moments_part, &j);
}

void diffuse_op_group_norm_stats(float *mean, float *rstd, const double *acc, int groups, float eps)
{
    for (int g = 0; g < groups; g++) {
        mean[g] = (float)acc[3 * g + 1];
        rstd[g] = group_rstd(acc[3 * g + 2], acc[3 * g], eps);
    }
}

typedef struct apply_job {
    float *y;
    const float *x, *gamma, *beta, *mean, *rstd;
    int cg, hw;
    bool act;
} apply_job;

static void apply_part(void *ctx, size_t b, size_t e)
{
    const apply_job *j = ctx;
    for (size_t g = b; g < e; g++) {
        const size_t off = g * j->cg * (size_t)j->hw;
        group_apply(j->y + off, j->x + off, j->gamma + g * j->cg, j->beta + g * j->cg, j->cg, j->hw,
                    j->mean[g], j->rstd[g], j->act);
    }
}

void diffuse_op_group_norm_with(float *y, const float *x, const float *gamma, const float *beta,
                                int c, int hw, int groups, const float *mean, const float *rstd,
                                bool act)
{
    apply_job j = {.y = y,
                   .x = x,
                   .gamma = gamma,
                   .beta = beta,
                   .mean = mean,
                   .rstd = rstd,
                   .cg = c / groups,
                   .hw = hw,
                   .act = act};
    diffuse_parallel_for((size_t)groups, grain_of((size_t)j.cg * hw), apply_part, &j);
}

static void layer_norm_part(void *ctx, size_t r0, size_t r1)
{
    const norm_job *jb = ctx;
    float *y = jb->y;
    const float *x = jb->x, *gamma = jb->gamma, *beta = jb->beta;
    const int dim = jb->dim;
    const float eps = jb->eps;
    for (int r = (int)r0; r < (int)r1; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = y + (size_t)r * dim;
        double sum = 0, sq = 0;
        for (int j = 0; j < dim; j++)
            sum += xr[j];
        double mean = sum / dim;
        for (int j = 0; j < dim; j++)
            sq += (xr[j] - mean) * (xr[j] - mean);
        float rstd = (float)(1.0 / sqrt(sq / dim + eps));
        for (int j = 0; j < dim; j++)
            yr[j] = (float)(xr[j] - mean) * rstd * gamma[j] + beta[j];
    }
}

void diffuse_op_layer_norm(float *y, const float *x, const float *gamma, const float *beta,
                           int rows, int dim, float eps)
{
    norm_job j = {.y = y, .x = x, .gamma = gamma, .beta = beta, .dim = dim, .eps = eps};
    diffuse_parallel_for((size_t)rows, grain_of((size_t)dim), layer_norm_part, &j);
}

/* ------------------------------------------------------------------ pointwise */

typedef struct pointwise_job {
    float *y;
    const float *x;
} pointwise_job;

static void silu_part(void *ctx, size_t b, size_t e)
{
    float *x = ((pointwise_job *)ctx)->y;
    for (size_t i = b; i < e; i++)
        x[i] = silu(x[i]);
}

/* gelu(x) = x/2 (1 + erf(x / sqrt 2)), with glibc's vector erf (libmvec,
 * within 4 ulp; glibc 2.35 and later) on the AVX2 and AVX-512 paths. A run's
 * last few values go through the same vector function, padded, so that each
 * value's bits do not depend on where a part ends (the thread count). */
__attribute__((target("avx512f"))) __m512 _ZGVeN16v_erff(__m512);
__attribute__((target("avx2"))) __m256 _ZGVdN8v_erff(__m256);

/* One body for both widths: W floats a vector, VT its type, ERF libmvec's
 * erf on it. */
#define GELU_VEC(NAME, TARGET, W, VT, ERF)                                                         \
    __attribute__((target(TARGET))) static void NAME(float *x, size_t n)                           \
    {                                                                                              \
        for (size_t i = 0; i < n; i += W) {                                                        \
            float tail[W] = {0};                                                                   \
            float *p = i + W <= n ? x + i : tail;                                                  \
            if (p == tail)                                                                         \
                memcpy(tail, x + i, sizeof(float) * (n - i));                                      \
            VT v;                                                                                  \
            memcpy(&v, p, sizeof v);                                                               \
            const VT e = ERF(v * (float)M_SQRT1_2);                                                \
            v = 0.5f * v * (1.0f + e);                                                             \
            memcpy(p, &v, sizeof v);                                                               \
            if (p == tail)                                                                         \
                memcpy(x + i, tail, sizeof(float) * (n - i));                                      \
        }                                                                                          \
    }
GELU_VEC(gelu_avx512, "avx512f", 16, __m512, _ZGVeN16v_erff)
GELU_VEC(gelu_avx2, "avx2", 8, __m256, _ZGVdN8v_erff)
#undef GELU_VEC

static void gelu_run(float *x, size_t n)
{
    switch (cpu()) {
    case CPU_AVX512:
        gelu_avx512(x, n);
        break;
    case CPU_AVX2:
        gelu_avx2(x, n);
        break;
    default:
        for (size_t i = 0; i < n; i++)
            x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
        break;
    }
}

static void gelu_part(void *ctx, size_t b, size_t e)
{
    gelu_run(((pointwise_job *)ctx)->y + b, e - b);
}

typedef struct geglu_job {
    float *f;
    int half;
} geglu_job;

/* rows [b, e): the gate half becomes hidden * gelu(gate), in place */
static void geglu_part(void *ctx, size_t b, size_t e)
{
    const geglu_job *j = ctx;
    for (size_t r = b; r < e; r++) {
        float *hid = j->f + r * 2 * j->half, *gate = hid + j->half;
        gelu_run(gate, (size_t)j->half);
        for (int i = 0; i < j->half; i++)
            gate[i] *= hid[i];
    }
}

static void quick_gelu_part(void *ctx, size_t b, size_t e)
{
    float *x = ((pointwise_job *)ctx)->y;
    for (size_t i = b; i < e; i++)
        x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

static void add_part(void *ctx, size_t b, size_t e)
{
    const pointwise_job *j = ctx;
    for (size_t i = b; i < e; i++)
        j->y[i] += j->x[i];
}

void diffuse_op_silu(float *x, size_t n)
{
    pointwise_job j = {x, NULL};
    diffuse_parallel_for(n, POINTWISE_GRAIN, silu_part, &j);
}

void diffuse_op_gelu(float *x, size_t n)
{
    pointwise_job j = {x, NULL};
    diffuse_parallel_for(n, POINTWISE_GRAIN, gelu_part, &j);
}

void diffuse_op_geglu(float *f, int rows, int half)
{
    geglu_job j = {f, half};
    diffuse_parallel_for((size_t)rows, grain_of((size_t)half), geglu_part, &j);
    for (int r = 0; r < rows; r++) /* each row's products move down over rows already read */
        memmove(f + (size_t)r * half, f + ((size_t)2 * r + 1) * half, sizeof(float) * half);
}

void diffuse_op_quick_gelu(float *x, size_t n)
{
    pointwise_job j = {x, NULL};
    diffuse_parallel_for(n, POINTWISE_GRAIN, quick_gelu_part, &j);
}

void diffuse_op_add(float *y, const float *x, size_t n)
{
    pointwise_job j = {y, x};
    diffuse_parallel_for(n, POINTWISE_GRAIN, add_part, &j);
}

void diffuse_op_upsample2x(float *y, const float *x, int n, int c, int h, int w)
{
    for (size_t p = 0; p < (size_t)n * c; p++) {
        const float *xp = x + p * h * w;
        float *yp = y + p * 4 * h * w;
        for (int oy = 0; oy < 2 * h; oy++)
            for (int ox = 0; ox < 2 * w; ox++)
                yp[(size_t)oy * 2 * w + ox] = xp[(size_t)(oy / 2) * w + ox / 2];
    }
}

typedef struct transpose_job {
    float *y;
    const float *x;
    int rows, cols;
} transpose_job;

/* Output rows (input columns) [c0, c1) of every item, in 32 x 32 tiles. */
static void transpose_part(void *ctx, size_t c0, size_t c1)
{
    const transpose_job *j = ctx;
    const int rows = j->rows, cols = j->cols;
    for (int cb = (int)c0; cb < (int)c1; cb += 32)
        for (int rb = 0; rb < rows; rb += 32) {
            const int ce = cb + 32 < (int)c1 ? cb + 32 : (int)c1,
                      re = rb + 32 < rows ? rb + 32 : rows;
            for (int c = cb; c < ce; c++)
                for (int r = rb; r < re; r++)
                    j->y[(size_t)c * rows + r] = j->x[(size_t)r * cols + c];
        }
}

void diffuse_op_transpose(float *y, const float *x, int n, int rows, int cols)
{
    for (int i = 0; i < n; i++) {
        transpose_job j = {y + (size_t)i * rows * cols, x + (size_t)i * rows * cols, rows, cols};
        diffuse_parallel_for((size_t)cols, grain_of((size_t)rows), transpose_part, &j);
    }
}

/* ------------------------------------------------------------------ 3x3 to few channels */

/* y [cout, h, w] = conv3x3(x) + b, padding 1, x in blocks of 16 channels
 * [ceil(cin/16), h, w, 16] (the blocked layout of diffuse_dnnl_conv_fused),
 * for a few output channels: a decoder's last layer (64 -> 3), where oneDNN
 * pads the output channels to 16 and so does 5x the work. Every output
 * pixel is one fixed sum (16 lanes per tap, then the lanes), whatever the
 * thread count. Vectorised over the 16 channels of a block, 4 pixels and up
 * to 4 output channels at a time, weights from wt [cout][nb][9][16]. */
typedef struct few_job {
    float *y;
    const float *x, *wt, *b;
    int nb, cout, h, w;
} few_job;

#define FEW_CO 4 /* output channels per pass */
#define FEW_PX 4 /* pixels per step */

__attribute__((target("avx512f,fma"))) static inline __attribute__((always_inline)) void
few_step(const few_job *j, int oy, int ox, int co0, int nco, int npx, bool edge)
{
    __m512 acc[FEW_PX][FEW_CO];
    for (int p = 0; p < npx; p++)
        for (int q = 0; q < nco; q++)
            acc[p][q] = _mm512_setzero_ps();
    const int ky0 = oy > 0 ? 0 : 1, ky1 = oy + 1 < j->h ? 2 : 1;
    for (int cb = 0; cb < j->nb; cb++)
        for (int ky = ky0; ky <= ky1; ky++) {
            const float *row = j->x + ((size_t)cb * j->h + oy + ky - 1) * j->w * 16;
            for (int kx = 0; kx < 3; kx++) {
                const int ix = ox + kx - 1;
                if (edge && (ix < 0 || ix >= j->w)) /* one pixel at the left or right edge */
                    continue;
                __m512 wv[FEW_CO], xv[FEW_PX];
                for (int q = 0; q < nco; q++)
                    wv[q] = _mm512_loadu_ps(
                        j->wt + ((((size_t)co0 + q) * j->nb + cb) * 9 + ky * 3 + kx) * 16);
                for (int p = 0; p < npx; p++)
                    xv[p] = _mm512_loadu_ps(row + (size_t)(ix + p) * 16);
                for (int p = 0; p < npx; p++)
                    for (int q = 0; q < nco; q++)
                        acc[p][q] = _mm512_fmadd_ps(xv[p], wv[q], acc[p][q]);
            }
        }
    for (int q = 0; q < nco; q++) {
        float *y = j->y + ((size_t)(co0 + q) * j->h + oy) * j->w + ox;
        const float b = j->b ? j->b[co0 + q] : 0.0f;
        for (int p = 0; p < npx; p++)
            y[p] = _mm512_reduce_add_ps(acc[p][q]) + b;
    }
}

__attribute__((target("avx512f,fma"))) static void few_rows(void *ctx, size_t r0, size_t r1)
{
    const few_job *j = ctx;
    for (int oy = (int)r0; oy < (int)r1; oy++)
        for (int co0 = 0; co0 < j->cout; co0 += FEW_CO) {
            const int nco = j->cout - co0 < FEW_CO ? j->cout - co0 : FEW_CO;
            int ox = 0;
            while (ox < j->w) {
                const bool inner = ox >= 1 && ox + FEW_PX < j->w; /* every tap inside */
                switch (inner ? nco : 0) {
                case 4:
                    few_step(j, oy, ox, co0, 4, FEW_PX, false);
                    break;
                case 3:
                    few_step(j, oy, ox, co0, 3, FEW_PX, false);
                    break;
                case 2:
                    few_step(j, oy, ox, co0, 2, FEW_PX, false);
                    break;
                case 1:
                    few_step(j, oy, ox, co0, 1, FEW_PX, false);
                    break;
                default:
                    few_step(j, oy, ox, co0, nco, 1, true);
                    ox++;
                    continue;
                }
                ox += FEW_PX;
            }
        }
}

size_t diffuse_op_conv3x3_few_scratch(int cin, int cout)
{
    return (size_t)cout * ((cin + 15) / 16) * 9 * 16;
}

bool diffuse_op_conv3x3_few(float *y, const float *x, const float *w, const float *b, int cin,
                            int cout, int h, int width, float *scratch)
{
    if (diffuse_cpu_path() < DIFFUSE_CPU_AVX512 || cout < 1 || cin < 1)
        return false;
    const int nb = (cin + 15) / 16;
    memset(scratch, 0, sizeof(float) * diffuse_op_conv3x3_few_scratch(cin, cout));
    for (int co = 0; co < cout; co++) /* w [cout, cin, 3, 3] -> [cout][nb][9][16] */
        for (int ci = 0; ci < cin; ci++)
            for (int t = 0; t < 9; t++)
                scratch[(((size_t)co * nb + ci / 16) * 9 + t) * 16 + ci % 16] =
                    w[((size_t)co * cin + ci) * 9 + t];
    few_job j = {y, x, scratch, b, nb, cout, h, width};
    diffuse_parallel_for((size_t)h, 1, few_rows, &j);
    return true;
}
