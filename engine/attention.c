/* attention.c: multi-head attention, softmax(Q K^T / sqrt(dh)) V, as flash
 * attention (Dao et al. 2022, algorithm 1): each task takes one head and a
 * block of query rows, walks the keys a block at a time and keeps a running
 * maximum and sum per query (the online softmax), so no more than
 * [key block, query block] scores exist at once, whatever the sequence
 * length. The inner kernels are register tiles written once
 * (attention_kernel.h) and compiled for AVX-512, AVX2+FMA and plain SSE2,
 * picked at run time. They replace cblas_sgemm on score blocks, which
 * reached 40% of OpenBLAS's own peak here: head widths of 40 to 160 are too
 * thin an inner dimension for its kernels, and the row softmax between the
 * two products took a fifth of the time.
 *
 * Determinism: a task's arithmetic depends only on its head and query block,
 * never on which thread runs it or how many there are.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

/* Query rows a task takes, at most: a key block's scores [FA_BK, bq], and
 * the task's queries and output [dh, bq] each, should stay in the L2 cache. */
#define FA_BQ 256
#define FA_TASK_FLOATS 65536 /* dh * bq, at most, unless bq would drop below 32 */
/* Queries come in multiples of this: two vectors of the widest path. */
#define FA_BQ_ALIGN 32
/* Keys a block takes. */
#define FA_BK 256
/* Below this many multiply-adds an attention runs on the calling thread. */
#define FA_SPLIT_MIN (1 << 23)

static int round_up(int x, int m)
{
    return (x + m - 1) / m * m;
}

/* exp(x) for x <= 0 (softmax after subtracting the running max): x = n ln2 + f
 * with n an integer and |f| <= ln2 / 2 (ln2 split in two so the reduction is
 * exact), e^f by its degree-7 Taylor polynomial (truncation under 1e-8: at most
 * 1.7 ulp from the true value), 2^n put straight into the exponent bits by the
 * caller. One body serves GCC vectors of any width. */
#define EXP_NONPOSITIVE(x, n, f, p)                                                                \
    n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */             \
    f = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;                                \
    p = 1.0f +                                                                                     \
        f * (1.0f + f * (0.5f + f * (1.66666667e-1f +                                              \
                                     f * (4.16666667e-2f +                                         \
                                          f * (8.33333333e-3f +                                    \
                                               f * (1.38888889e-3f + f * 1.98412698e-4f))))));

#define FA_W 16
#define FA_ROWS 8
#define FA_TARGET "avx512f"
#define FA_NAME(x) x##_avx512
#include "attention_kernel.h"
#undef FA_W
#undef FA_ROWS
#undef FA_TARGET
#undef FA_NAME

#define FA_W 8
#define FA_ROWS 6
#define FA_TARGET "avx2,fma"
#define FA_NAME(x) x##_avx2
#include "attention_kernel.h"
#undef FA_W
#undef FA_ROWS
#undef FA_TARGET
#undef FA_NAME

#define FA_W 4
#define FA_ROWS 4
#define FA_TARGET "sse2"
#define FA_NAME(x) x##_sse2
#include "attention_kernel.h"
#undef FA_W
#undef FA_ROWS
#undef FA_TARGET
#undef FA_NAME

/* Queries a task takes for this call: at most FA_BQ, fewer for wide heads,
 * a multiple of FA_BQ_ALIGN, the blocks as even as that allows (256 queries
 * in two blocks of 128, not 192 and 64). */
static int query_block(int tq, int dh)
{
    int most = FA_TASK_FLOATS / dh / FA_BQ_ALIGN * FA_BQ_ALIGN;
    most = most < FA_BQ_ALIGN ? FA_BQ_ALIGN : most > FA_BQ ? FA_BQ : most;
    const int blocks = (tq + most - 1) / most;
    return round_up((tq + blocks - 1) / blocks, FA_BQ_ALIGN);
}

/* One thread's work space, in floats: qt and ot [dh, bq], st [FA_BK, bq],
 * m, l and the column maxima [bq]. */
static size_t slot_floats(int bq, int tk, int dh)
{
    const int bk = tk < FA_BK ? tk : FA_BK;
    return (size_t)bq * (2 * (size_t)dh + bk + 3);
}

size_t diffuse_attention_scratch(int tq, int tk, int dh)
{
    return (size_t)diffuse_pool_threads() * slot_floats(query_block(tq, dh), tk, dh);
}

double diffuse_attention_flops(int tq, int tk, int width)
{
    return 4.0 * tq * tk * width;
}

/* The kernels of one CPU path. */
typedef struct fa_kernels {
    void (*scores)(float *, float *, const float *, int, const float *, int, int, int, bool, int);
    void (*softmax_step)(float *, float *, float *, float *, const float *, int, int, int);
    void (*pv)(float *, const float *, const float *, int, int, int, int);
} fa_kernels;

static fa_kernels kernels_of(int path)
{
    if (path >= DIFFUSE_CPU_AVX512)
        return (fa_kernels){scores_avx512, softmax_step_avx512, pv_avx512};
    if (path >= DIFFUSE_CPU_AVX2)
        return (fa_kernels){scores_avx2, softmax_step_avx2, pv_avx2};
    return (fa_kernels){scores_sse2, softmax_step_sse2, pv_sse2};
}

typedef struct attention_job {
    float *out, *scratch;
    const float *q, *k, *v;
    int q_stride, kv_stride, tq, tk, heads, dh, bq, blocks, parts;
    bool causal;
    fa_kernels f;
} attention_job;

/* One task: head h, query rows [q0, q0 + qn), in the work space slot. */
static void attention_task(const attention_job *j, float *slot, int h, int q0, int qn)
{
    const int dh = j->dh, bq = j->bq;
    const int bk = j->tk < FA_BK ? j->tk : FA_BK;
    float *qt = slot, *ot = qt + (size_t)dh * bq, *st = ot + (size_t)dh * bq;
    float *m = st + (size_t)bk * bq, *l = m + bq, *cm = l + bq;
    const float scale = 1.0f / sqrtf((float)dh);
    memset(qt, 0, sizeof(float) * dh * bq);
    for (int i = 0; i < qn; i++) {
        const float *qr = j->q + (size_t)(q0 + i) * j->q_stride + h * dh;
        for (int d = 0; d < dh; d++)
            qt[(size_t)d * bq + i] = qr[d] * scale;
    }
    memset(ot, 0, sizeof(float) * dh * bq);
    for (int i = 0; i < bq; i++)
        m[i] = -INFINITY, l[i] = 0.0f;
    /* with the causal mask, query q0 + i sees keys 0 .. q0 + i */
    const int tk = j->causal && q0 + qn < j->tk ? q0 + qn : j->tk;
    for (int k0 = 0; k0 < tk; k0 += bk) {
        const int kn = tk - k0 < bk ? tk - k0 : bk;
        const size_t row0 = (size_t)k0 * j->kv_stride + (size_t)h * dh;
        j->f.scores(st, cm, j->k + row0, j->kv_stride, qt, kn, bq, dh, j->causal, k0 - q0);
        j->f.softmax_step(st, ot, m, l, cm, kn, bq, dh);
        j->f.pv(ot, st, j->v + row0, j->kv_stride, kn, bq, dh);
    }
    const int ld_out = j->heads * dh;
    for (int i = 0; i < qn; i++) {
        float *orow = j->out + (size_t)(q0 + i) * ld_out + h * dh;
        const float inv = 1.0f / l[i];
        for (int d = 0; d < dh; d++)
            orow[d] = ot[(size_t)d * bq + i] * inv;
    }
}

/* Part p of the (head, query block) tasks, with work space slot p. */
static void attention_part(void *ctx, size_t p0, size_t p1)
{
    const attention_job *j = ctx;
    const int tasks = j->heads * j->blocks;
    for (size_t p = p0; p < p1; p++) {
        float *slot = j->scratch + p * slot_floats(j->bq, j->tk, j->dh);
        for (int t = (int)((size_t)tasks * p / j->parts);
             t < (int)((size_t)tasks * (p + 1) / j->parts); t++) {
            const int h = t / j->blocks, q0 = (t % j->blocks) * j->bq;
            attention_task(j, slot, h, q0, j->tq - q0 < j->bq ? j->tq - q0 : j->bq);
        }
    }
}

void diffuse_op_attention(float *out, const float *q, int q_stride, const float *k, const float *v,
                          int kv_stride, int tq, int tk, int heads, int dh, bool causal,
                          float *scratch)
{
    attention_job j = {.out = out,
                       .scratch = scratch,
                       .q = q,
                       .k = k,
                       .v = v,
                       .q_stride = q_stride,
                       .kv_stride = kv_stride,
                       .tq = tq,
                       .tk = tk,
                       .heads = heads,
                       .dh = dh,
                       .causal = causal,
                       .bq = query_block(tq, dh),
                       .f = kernels_of(diffuse_cpu_path())};
    j.blocks = (tq + j.bq - 1) / j.bq;
    const int tasks = heads * j.blocks, threads = diffuse_pool_threads();
    j.parts = tasks < threads ? tasks : threads;
    if ((double)tq * tk * dh * heads < (double)FA_SPLIT_MIN)
        j.parts = 1; /* not worth waking the pool */
    diffuse_parallel_for((size_t)j.parts, 1, attention_part, &j);
}

void diffuse_op_attention_ref(float *out, const float *q, int q_stride, const float *k,
                              const float *v, int kv_stride, int tq, int tk, int heads, int dh,
                              bool causal)
{
    const double scale = 1.0 / sqrt((double)dh);
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < tq; i++) {
            double s[tk], m = -INFINITY, sum = 0;
            int valid = causal ? (i + 1 < tk ? i + 1 : tk) : tk;
            for (int j = 0; j < valid; j++) {
                s[j] = 0;
                for (int d = 0; d < dh; d++)
                    s[j] += (double)q[(size_t)i * q_stride + h * dh + d] *
                            k[(size_t)j * kv_stride + h * dh + d];
                s[j] *= scale;
                m = s[j] > m ? s[j] : m;
            }
            for (int j = 0; j < valid; j++)
                sum += (s[j] = exp(s[j] - m));
            for (int d = 0; d < dh; d++) {
                double o = 0;
                for (int j = 0; j < valid; j++)
                    o += s[j] / sum * v[(size_t)j * kv_stride + h * dh + d];
                out[(size_t)i * heads * dh + h * dh + d] = (float)o;
            }
        }
}
