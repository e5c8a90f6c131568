/* attention_kernel.h: the inner kernels of attention.c's flash attention,
 * written once for a vector of FA_W floats. attention.c includes it once per
 * CPU path with these defined:
 *   FA_W       floats in a vector (16 AVX-512, 8 AVX2, 4 SSE2)
 *   FA_ROWS    rows one register tile holds (at most 8)
 *   FA_TARGET  the target attribute of the path's functions
 *   FA_NAME(x) the path's name for x
 * Not a header of its own: nothing else includes it.
 *
 * Everything is transposed so that vectors run along the queries: a task's
 * queries qt [dh, bq] (scaled), scores st [kn, bq], output ot [dh, bq], and
 * the keys and values read in place as rows (kb, vb: row k at k * stride).
 * The softmax then works down columns, a vector of queries at a time, with
 * no reduction across a vector; keys and values need no packing. bq is a
 * multiple of 2 FA_W. */

#define vf FA_NAME(vf)
#define vi FA_NAME(vi)
/* aligned(4): loads and stores of these need no particular alignment */
typedef float vf __attribute__((vector_size(FA_W * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(FA_W * 4), aligned(4)));

__attribute__((target(FA_TARGET), always_inline)) static inline vf FA_NAME(vmax)(vf a, vf b)
{
    const vi gt = a > b;
    return (vf)((gt & (vi)a) | (~gt & (vi)b));
}

/* exp(x) for x <= 0, exactly 0 below -87 (attention.c's EXP_NONPOSITIVE). */
__attribute__((target(FA_TARGET), always_inline)) static inline vf FA_NAME(exp_nonpositive)(vf x)
{
    const vi below = x < -87.0f;
    x = (vf)(~below & (vi)x);
    vf n, f, p;
    EXP_NONPOSITIVE(x, n, f, p)
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return (vf)(~below & (vi)(p * (vf)bits));
}

/* One tile of st = k qt: keys [k, k + rows) by queries [qc, qc + 2 FA_W);
 * rows is a constant where this is inlined. Entries the causal mask hides
 * (query qc + lane < key + shift) become -inf; mx takes the column maxima. */
__attribute__((target(FA_TARGET), always_inline)) static inline void
FA_NAME(scores_tile)(float *st, const float *kb, int stride, const float *qt, int k, int qc, int bq,
                     int dh, int rows, bool causal, int shift, vf mx[2])
{
    vf acc[8][2]; /* FA_ROWS or fewer used */
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++)
        acc[i][0] = acc[i][1] = (vf){0};
    const float *kr = kb + (size_t)k * stride;
    for (int d = 0; d < dh; d++) {
        const vf a0 = *(const vf *)(qt + (size_t)d * bq + qc);
        const vf a1 = *(const vf *)(qt + (size_t)d * bq + qc + FA_W);
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++) {
            const float x = kr[(size_t)i * stride + d];
            acc[i][0] += x * a0;
            acc[i][1] += x * a1;
        }
    }
    const bool masked = causal && k + rows - 1 + shift > qc;
    const vf ninf = (vf){0} - INFINITY;
    vi lane;
    for (int j = 0; j < FA_W; j++)
        lane[j] = qc + j;
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        if (masked) {
            const vi hide0 = lane < k + i + shift, hide1 = lane + FA_W < k + i + shift;
            acc[i][0] = (vf)((hide0 & (vi)ninf) | (~hide0 & (vi)acc[i][0]));
            acc[i][1] = (vf)((hide1 & (vi)ninf) | (~hide1 & (vi)acc[i][1]));
        }
        mx[0] = FA_NAME(vmax)(mx[0], acc[i][0]);
        mx[1] = FA_NAME(vmax)(mx[1], acc[i][1]);
        *(vf *)(st + (size_t)(k + i) * bq + qc) = acc[i][0];
        *(vf *)(st + (size_t)(k + i) * bq + qc + FA_W) = acc[i][1];
    }
}

/* st [kn, bq] = kb [kn, dh] qt, and cm [bq] its column maxima. */
__attribute__((target(FA_TARGET))) static void FA_NAME(scores)(float *st, float *cm,
                                                               const float *kb, int stride,
                                                               const float *qt, int kn, int bq,
                                                               int dh, bool causal, int shift)
{
    for (int qc = 0; qc < bq; qc += 2 * FA_W) {
        vf mx[2] = {(vf){0} - INFINITY, (vf){0} - INFINITY};
        int k = 0;
        for (; k + FA_ROWS <= kn; k += FA_ROWS)
            FA_NAME(scores_tile)(st, kb, stride, qt, k, qc, bq, dh, FA_ROWS, causal, shift, mx);
        /* clang-format off */
        /* the tail, its row count a constant in each call */
        switch (kn - k) {
#define TAIL(r) case r: if (r < FA_ROWS) { \
            FA_NAME(scores_tile)(st, kb, stride, qt, k, qc, bq, dh, r, causal, shift, mx); } break;
        TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7)
#undef TAIL
        default: break;
        }
        /* clang-format on */
        *(vf *)(cm + qc) = mx[0];
        *(vf *)(cm + qc + FA_W) = mx[1];
    }
}

/* The online softmax's step for one key block (Milakov and Gimelshein 2018;
 * FlashAttention, Dao et al. 2022, algorithm 1), a vector of queries at a
 * time: m = max(m, cm); st = exp(st - m); l = l exp(old m - m) + column sums;
 * ot's columns scaled by exp(old m - m). */
__attribute__((target(FA_TARGET))) static void FA_NAME(softmax_step)(float *st, float *ot, float *m,
                                                                     float *l, const float *cm,
                                                                     int kn, int bq, int dh)
{
    for (int q = 0; q < bq; q += FA_W) {
        const vf mold = *(const vf *)(m + q), mnew = FA_NAME(vmax)(mold, *(const vf *)(cm + q));
        const vf corr = FA_NAME(exp_nonpositive)(mold - mnew); /* 0 while m was -inf */
        vf sum = {0};
        for (int k = 0; k < kn; k++) {
            vf *s = (vf *)(st + (size_t)k * bq + q);
            *s = FA_NAME(exp_nonpositive)(*s - mnew);
            sum += *s;
        }
        *(vf *)(l + q) = *(const vf *)(l + q) * corr + sum;
        *(vf *)(m + q) = mnew;
        for (int d = 0; d < dh; d++)
            *(vf *)(ot + (size_t)d * bq + q) *= corr;
    }
}

/* One tile of ot += vb^T st: head columns [d, d + rows) by queries
 * [qc, qc + 2 FA_W); rows is a constant where this is inlined. */
__attribute__((target(FA_TARGET), always_inline)) static inline void
FA_NAME(pv_tile)(float *ot, const float *st, const float *vb, int stride, int d, int qc, int kn,
                 int bq, int rows)
{
    vf acc[8][2]; /* FA_ROWS or fewer used */
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        acc[i][0] = *(const vf *)(ot + (size_t)(d + i) * bq + qc);
        acc[i][1] = *(const vf *)(ot + (size_t)(d + i) * bq + qc + FA_W);
    }
    for (int k = 0; k < kn; k++) {
        const vf p0 = *(const vf *)(st + (size_t)k * bq + qc);
        const vf p1 = *(const vf *)(st + (size_t)k * bq + qc + FA_W);
        const float *vr = vb + (size_t)k * stride + d;
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++) {
            acc[i][0] += vr[i] * p0;
            acc[i][1] += vr[i] * p1;
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        *(vf *)(ot + (size_t)(d + i) * bq + qc) = acc[i][0];
        *(vf *)(ot + (size_t)(d + i) * bq + qc + FA_W) = acc[i][1];
    }
}

/* ot [dh, bq] += vb [kn, dh]^T st [kn, bq]. */
__attribute__((target(FA_TARGET))) static void
FA_NAME(pv)(float *ot, const float *st, const float *vb, int stride, int kn, int bq, int dh)
{
    for (int qc = 0; qc < bq; qc += 2 * FA_W) {
        int d = 0;
        for (; d + FA_ROWS <= dh; d += FA_ROWS)
            FA_NAME(pv_tile)(ot, st, vb, stride, d, qc, kn, bq, FA_ROWS);
        /* clang-format off */
        /* the tail, its row count a constant in each call */
        switch (dh - d) {
#define TAIL(r) case r: if (r < FA_ROWS) { \
            FA_NAME(pv_tile)(ot, st, vb, stride, d, qc, kn, bq, r); } break;
        TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7)
#undef TAIL
        default: break;
        }
        /* clang-format on */
    }
}

#undef vf
#undef vi
