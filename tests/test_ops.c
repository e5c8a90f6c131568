/* test_ops.c: every optimized kernel in ops.c against its plain _ref twin on
 * random data of awkward sizes (odd, not multiples of 4, crossing the attention
 * query block), the pointwise and normalisation kernels against the formulas
 * written out here in double precision, and the seeded generator in rng.c. */
#include <stdint.h>

#include <cblas.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../engine/internal.h"
#include "test.h"

#define TOL 1e-5

/* ------------------------------------------------------------------ data */

/* The test's own generator (not the one under test): splitmix64 -> [-1, 1). */
static uint64_t data_state = 12345;

static float rnd(void)
{
    uint64_t z = (data_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 4503599627370496.0 - 1.0);
}

static float *random_buf(size_t n, float scale)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = rnd() * scale;
    return p;
}

/* Exactly n floats (no slack) so ASan catches a kernel writing past its output. */
static float *filled(size_t n, float value)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = value;
    return p;
}

/* Per element: |a - b| <= tol * (|b| + abs_floor). */
static bool close_all(const float *a, const double *b, size_t n, double tol, double abs_floor,
                      size_t *where)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= tol * (fabs(b[i]) + abs_floor))) {
            *where = i;
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------ linear */

static void test_linear(void)
{
    const int sizes[][3] = {{1, 1, 1}, {7, 13, 11}, {33, 77, 65}, {5, 320, 3}, {77, 31, 129}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int n = sizes[s][0], in = sizes[s][1], out = sizes[s][2];
        float *x = random_buf((size_t)n * in, 1), *w = random_buf((size_t)out * in, 0.5f);
        float *b = random_buf((size_t)out, 2);
        for (int bias = 0; bias < 2; bias++) {
            float *y = filled((size_t)n * out, NAN), *yr = filled((size_t)n * out, NAN);
            diffuse_op_linear(y, x, w, bias ? b : NULL, n, in, out);
            diffuse_op_linear_ref(yr, x, w, bias ? b : NULL, n, in, out);
            double abs_err, rel = test_rel_err(y, yr, (size_t)n * out, &abs_err);
            CHECK(rel <= TOL, "linear n=%d in=%d out=%d bias=%d: rel err %g", n, in, out, bias,
                  rel);
            free(y);
            free(yr);
        }
        /* the ref itself against the definition at one entry */
        float *yr = filled((size_t)n * out, 0);
        diffuse_op_linear_ref(yr, x, w, b, n, in, out);
        int i = n - 1, o = out / 2;
        double want = b[o];
        for (int k = 0; k < in; k++)
            want += (double)x[(size_t)i * in + k] * w[(size_t)o * in + k];
        CHECK(fabs(yr[(size_t)i * out + o] - want) <= 1e-6 * (fabs(want) + 1), "linear_ref");
        free(yr);
        free(x);
        free(w);
        free(b);
    }
}

/* Linear layers through oneDNN's matrix product, weights from fp16, bf16 and
 * (unaligned) fp32 storage widened straight into its layout: against the
 * plain computation on the same widened weights, with and without bias, and
 * the same bits at 1 and 2 threads. Awkward sizes (one row, odd widths, N off
 * the block) and SD 1.5's shapes (the K-heavy ones at 64 rows too). */
static void test_linear_dnnl(void)
{
    diffuse_linear_set_backend(2);
    const int sizes[][3] = {{1, 40, 70},       {9, 17, 33},       {2, 1280, 1280},
                            {77, 768, 3072},   {300, 320, 320},   {64, 5120, 1280},
                            {64, 1280, 10240}, {256, 1280, 1280}, {4096, 320, 320}};
    int ran = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int dt = 0; dt < 3; dt++) {
            const int n = sizes[si][0], in = sizes[si][1], out = sizes[si][2];
            const diffuse_dtype dtype = dt == 0   ? DIFFUSE_DTYPE_F16
                                        : dt == 1 ? DIFFUSE_DTYPE_BF16
                                                  : DIFFUSE_DTYPE_F32;
            const size_t nw = (size_t)out * in, ny = (size_t)n * out;
            float *x = random_buf((size_t)n * in, 1), *b = random_buf((size_t)out, 2);
            float *wf = random_buf(nw, 0.05f);
            uint8_t *raw = malloc(4 * nw + 1), *w = dt == 2 ? raw + 1 : raw;
            for (size_t i = 0; i < nw; i++) {
                if (dt == 2) {
                    memcpy(w + 4 * i, &wf[i], 4);
                    continue;
                }
                /* about 2^-7 to 2^-3, both signs */
                uint16_t h = (uint16_t)((dt ? 0x3c00 + (i * 2654435761u >> 7) % 0x200
                                            : 0x2000 + (i * 2654435761u >> 7) % 0x1000) |
                                        (i * 40503u & 0x8000));
                memcpy(w + 2 * i, &h, 2);
            }
            diffuse_op_widen_ref(wf, w, dtype, nw); /* what the layer computes with */
            const size_t need = diffuse_dnnl_linear_scratch(n, in, out);
            float *sc = filled(need + 1, NAN), *y1 = filled(ny, NAN), *y2 = filled(ny, NAN);
            float *yr = filled(ny, NAN);
            for (int bias = 0; need && bias < 2; bias++) {
                diffuse_pool_set_threads(1);
                bool a = diffuse_dnnl_linear(y1, x, w, dtype, bias ? b : NULL, n, in, out, sc);
                diffuse_pool_set_threads(2);
                bool c = diffuse_dnnl_linear(y2, x, w, dtype, bias ? b : NULL, n, in, out, sc);
                diffuse_pool_set_threads(0);
                diffuse_op_linear_ref(yr, x, wf, bias ? b : NULL, n, in, out);
                double abs_err, rel = a ? test_rel_err(y1, yr, ny, &abs_err) : 1;
                CHECK(a && c && rel <= TOL,
                      "oneDNN linear %dx%dx%d dtype %d bias %d: ran %d %d, "
                      "rel err %g",
                      n, in, out, dt, bias, a, c, rel);
                CHECK(memcmp(y1, y2, sizeof(float) * ny) == 0,
                      "oneDNN linear %dx%dx%d differs between 1 and 2 threads", n, in, out);
                ran++;
            }
            free(x);
            free(b);
            free(wf);
            free(raw);
            free(sc);
            free(y1);
            free(y2);
            free(yr);
        }
#ifdef DIFFUSE_DNNL
    /* oneDNN's brgemm (AVX-512) takes them all; AVX2 machines keep OpenBLAS */
    CHECK(ran == 54 || (ran == 0 && diffuse_cpu_path() < DIFFUSE_CPU_AVX512),
          "oneDNN took %d of 54 linear cases", ran);
#endif
    diffuse_linear_set_backend(0);
    /* by default the small ones stay on OpenBLAS */
    CHECK(diffuse_dnnl_linear_scratch(2, 1280, 1280) == 0, "a time-embedding product on oneDNN");
}

/* ------------------------------------------------------------------ conv2d */

/* Independent of both kernels: copy the input into an explicitly padded
 * image, then a plain valid convolution with stride. */
static void conv_padded(double *y, const float *x, const float *w, const float *b,
                        const diffuse_conv *c, int n)
{
    const int ph = c->h + c->pad_top + c->pad_bottom, pw = c->w + c->pad_left + c->pad_right;
    const int oh = (ph - c->k) / c->stride + 1, ow = (pw - c->k) / c->stride + 1;
    double *pad = calloc((size_t)c->cin * ph * pw, sizeof *pad);
    for (int i = 0; i < n; i++) {
        for (int ci = 0; ci < c->cin; ci++)
            for (int yy = 0; yy < c->h; yy++)
                for (int xx = 0; xx < c->w; xx++)
                    pad[((size_t)ci * ph + yy + c->pad_top) * pw + xx + c->pad_left] =
                        x[(((size_t)i * c->cin + ci) * c->h + yy) * c->w + xx];
        for (int o = 0; o < c->cout; o++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    double s = b ? b[o] : 0;
                    for (int ci = 0; ci < c->cin; ci++)
                        for (int ky = 0; ky < c->k; ky++)
                            for (int kx = 0; kx < c->k; kx++)
                                s += w[(((size_t)o * c->cin + ci) * c->k + ky) * c->k + kx] *
                                     pad[((size_t)ci * ph + oy * c->stride + ky) * pw +
                                         ox * c->stride + kx];
                    y[(((size_t)i * c->cout + o) * oh + oy) * ow + ox] = s;
                }
    }
    free(pad);
}

static void conv_case(int cin, int cout, int h, int w, int k, int stride, int pt, int pl, int pb,
                      int pr, int n, bool bias)
{
    diffuse_conv c = {.cin = cin,
                      .h = h,
                      .w = w,
                      .cout = cout,
                      .k = k,
                      .stride = stride,
                      .pad_top = pt,
                      .pad_left = pl,
                      .pad_bottom = pb,
                      .pad_right = pr};
    const int oh = diffuse_conv_out_h(&c), ow = diffuse_conv_out_w(&c);
    const int want_oh = (h + pt + pb - k) / stride + 1, want_ow = (w + pl + pr - k) / stride + 1;
    CHECK(oh == want_oh && ow == want_ow, "conv out size %dx%d, want %dx%d", oh, ow, want_oh,
          want_ow);
    const size_t ny = (size_t)n * cout * oh * ow, ns = diffuse_conv_scratch(&c, n);
    float *x = random_buf((size_t)n * cin * h * w, 1),
          *wt = random_buf((size_t)cout * cin * k * k, 0.5f);
    float *b = bias ? random_buf((size_t)cout, 1) : NULL;
    float *y = filled(ny, NAN), *yr = filled(ny, NAN);
    float *scratch = ns ? filled(ns, NAN) : NULL; /* exactly what it asks for */
    double *yd = calloc(ny, sizeof *yd);
    diffuse_op_conv2d(y, x, wt, b, &c, n, scratch);
    diffuse_op_conv2d_ref(yr, x, wt, b, &c, n);
    conv_padded(yd, x, wt, b, &c, n);
    double abs_err, rel = test_rel_err(y, yr, ny, &abs_err);
    CHECK(rel <= TOL,
          "conv2d cin=%d cout=%d %dx%d k=%d s=%d pad=(%d,%d,%d,%d) n=%d bias=%d: rel err %g", cin,
          cout, h, w, k, stride, pt, pl, pb, pr, n, bias, rel);
    size_t at = 0;
    CHECK(close_all(yr, yd, ny, 1e-6, 1, &at),
          "conv2d_ref vs padded formula (k=%d s=%d pad=(%d,%d,%d,%d)) at %zu: %g vs %g", k, stride,
          pt, pl, pb, pr, at, yr[at], yd[at]);
    free(x);
    free(wt);
    free(b);
    free(y);
    free(yr);
    free(scratch);
    free(yd);
}

static void test_conv2d(void)
{
    /*        cin cout  h   w  k  s  top left bottom right  n  bias */
    conv_case(5, 7, 9, 11, 1, 1, 0, 0, 0, 0, 2, true); /* 1x1: no im2col */
    conv_case(3, 6, 9, 11, 1, 1, 0, 0, 0, 0, 2, false);
    conv_case(5, 7, 9, 11, 1, 2, 0, 0, 0, 0, 2, true); /* strided 1x1 */
    conv_case(5, 7, 9, 11, 3, 1, 1, 1, 1, 1, 2, true); /* "same" */
    conv_case(3, 5, 8, 7, 3, 1, 1, 1, 1, 1, 2, false);
    conv_case(5, 7, 9, 11, 3, 2, 1, 1, 1, 1, 2, true); /* UNet downsampler */
    conv_case(6, 9, 10, 12, 3, 2, 1, 1, 1, 1, 2, true);
    conv_case(5, 7, 9, 11, 3, 2, 0, 0, 1, 1, 2, true); /* VAE downsampler: pad right/bottom */
    conv_case(6, 3, 8, 8, 3, 2, 0, 0, 1, 1, 2, true);
    conv_case(5, 7, 9, 11, 3, 1, 0, 0, 0, 0, 2, true); /* valid */
    conv_case(4, 5, 7, 9, 3, 1, 2, 0, 1, 2, 2, true);  /* every side its own pad */
    conv_case(5, 3, 9, 7, 3, 2, 0, 2, 2, 1, 2, true);
    conv_case(1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, true); /* single pixel */
    conv_case(3, 13, 5, 6, 3, 1, 1, 1, 1, 1, 1, true);
    conv_case(13, 3, 17, 3, 3, 2, 1, 1, 1, 1, 2, true);

    /* hand-checked: a centre-only kernel is the identity, with the VAE pad it
     * picks every other pixel starting at (1, 1) */
    diffuse_conv c = {
        .cin = 1, .h = 4, .w = 4, .cout = 1, .k = 3, .stride = 2, .pad_bottom = 1, .pad_right = 1};
    float x[16], wt[9] = {0, 0, 0, 0, 1, 0, 0, 0, 0}, y[4];
    for (int i = 0; i < 16; i++)
        x[i] = (float)i;
    float *scratch = filled(diffuse_conv_scratch(&c, 1), 0);
    diffuse_op_conv2d(y, x, wt, NULL, &c, 1, scratch);
    CHECK(diffuse_conv_out_h(&c) == 2 && y[0] == 5 && y[1] == 7 && y[2] == 13 && y[3] == 15,
          "VAE pad picks (%g %g %g %g), want (5 7 13 15)", y[0], y[1], y[2], y[3]);
    free(scratch);
}

/* The oneDNN path (conv_dnnl.c) on the same cases, forced, plus shapes whose
 * channels are not a multiple of the vector block; the same bits at 1 and 2
 * threads; and it really runs where the build has it. */
/* oneDNN's Winograd where the engine picks it: which shapes, and how close
 * it stays to the direct computation (Winograd's transforms add rounding). */
static void test_conv2d_winograd(void)
{
    diffuse_conv_set_backend(DIFFUSE_CONV_WINOGRAD);
    /*        cin cout  h   w  k  s  top left bottom right  n  bias */
    conv_case(64, 64, 37, 41, 3, 1, 1, 1, 1, 1, 1, true);
    conv_case(48, 80, 23, 17, 3, 1, 1, 1, 1, 1, 2, false);
    conv_case(320, 320, 12, 9, 3, 1, 1, 1, 1, 1, 2, true);
    diffuse_conv c = diffuse_conv_3x3(64, 64, 37, 41, 1);
    const bool forced = diffuse_dnnl_winograd(&c, 1);
    diffuse_conv_set_backend(DIFFUSE_CONV_AUTO);
    /* by the rule: big images with enough channels; never small ones, strides or thin layers */
    diffuse_conv big = c, small = c, thin = c, strided = c;
    big.h = big.w = 128;
    small.h = small.w = 32;
    thin.cout = 3;
    thin.h = thin.w = 128;
    strided.stride = 2;
    strided.h = strided.w = 128;
    const bool wino_big = diffuse_dnnl_winograd(&big, 1);
    CHECK(!diffuse_dnnl_winograd(&small, 2) && !diffuse_dnnl_winograd(&thin, 1) &&
              !diffuse_dnnl_winograd(&strided, 1),
          "Winograd picked for a shape it loses on");
    if (diffuse_dnnl_major() == 2 && diffuse_cpu_path() >= DIFFUSE_CPU_AVX512)
        CHECK(forced && wino_big,
              "oneDNN 2's Winograd did not run on an AVX-512 CPU (forced %d, by rule %d)", forced,
              wino_big);
    printf("oneDNN Winograd: %s\n", forced ? "used" : "not in this build or CPU");
}

static void test_conv2d_dnnl(int backend)
{
    diffuse_conv_set_backend(backend);
    test_conv2d();
    /*        cin cout  h   w  k  s  top left bottom right  n  bias */
    conv_case(20, 36, 13, 17, 3, 1, 1, 1, 1, 1, 2, true);
    conv_case(36, 20, 13, 17, 3, 2, 1, 1, 1, 1, 1, false);
    conv_case(24, 40, 19, 9, 3, 2, 0, 0, 1, 1, 2, true);
    conv_case(64, 64, 23, 29, 3, 1, 1, 1, 1, 1, 1, true);
    conv_case(4, 32, 15, 15, 3, 1, 1, 1, 1, 1, 2, true);
    diffuse_conv c = diffuse_conv_3x3(48, 40, 37, 45, 1);
    const size_t nx = (size_t)2 * 48 * 37 * 45, ny = (size_t)2 * 40 * 37 * 45;
    float *x = random_buf(nx, 1), *wt = random_buf((size_t)40 * 48 * 9, 0.5f),
          *b = random_buf(40, 1);
    float *y1 = filled(ny, NAN), *y2 = filled(ny, NAN);
    float *scratch = filled(diffuse_conv_scratch(&c, 2), NAN);
    diffuse_pool_set_threads(1);
    bool ran = diffuse_dnnl_conv(y1, x, wt, b, &c, 2, scratch);
    diffuse_pool_set_threads(2);
    diffuse_op_conv2d(y2, x, wt, b, &c, 2, scratch);
    diffuse_pool_set_threads(0);
#ifdef DIFFUSE_DNNL
    CHECK(ran || !diffuse_dnnl_available(),
          "oneDNN is built in and the CPU has AVX2, yet it did not run");
#endif
    if (ran)
        CHECK(memcmp(y1, y2, sizeof(float) * ny) == 0,
              "oneDNN conv differs between 1 and 2 threads");
    /* weights from the file's dtype straight into oneDNN's layout: the same
     * bits as widening them first (shapes with output channels off the block) */
    const int shapes[][5] = {{48, 40, 37, 45, 1},
                             {20, 36, 13, 17, 1},
                             {36, 20, 13, 17, 2},
                             {64, 64, 23, 29, 1},
                             {4, 32, 15, 15, 1}};
    int took = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int dt = 0; dt < 2; dt++) {
            const int *sh = shapes[si];
            diffuse_conv g = diffuse_conv_3x3(sh[0], sh[1], sh[2], sh[3], sh[4]);
            const size_t nw = (size_t)sh[0] * sh[1] * 9;
            const size_t gx = (size_t)2 * sh[0] * sh[2] * sh[3],
                         gy = (size_t)2 * sh[1] * diffuse_conv_out_h(&g) * diffuse_conv_out_w(&g);
            uint16_t *h = malloc(2 * nw);
            float *wf = malloc(sizeof(float) * nw), *gxb = random_buf(gx, 1);
            for (size_t i = 0; i < nw; i++) /* finite values, both signs */
                h[i] = (uint16_t)(dt ? (0x3c00 + (i * 97u) % 0x700) ^ (i & 1) << 15
                                     : (0x3000 + (i * 97u) % 0x0c00) ^ (i & 1) << 15);
            const diffuse_dtype dtype = dt ? DIFFUSE_DTYPE_BF16 : DIFFUSE_DTYPE_F16;
            diffuse_op_widen_ref(wf, h, dtype, nw);
            float *ya = filled(gy, NAN), *yb = filled(gy, NAN), *yc = filled(gy, NAN);
            float *sc = filled(diffuse_conv_scratch(&g, 2), NAN);
            if (diffuse_dnnl_conv_takes(&g, 2)) {
                took++;
                /* the direct path first, on scratch of NaN: padding it leaves
                 * unwritten would show */
                diffuse_pool_set_threads(1);
                bool bb = diffuse_dnnl_conv_from(yb, gxb, h, dtype, b, &g, 2, sc);
                diffuse_pool_set_threads(2);
                bool cc = diffuse_dnnl_conv_from(yc, gxb, h, dtype, b, &g, 2, sc);
                diffuse_pool_set_threads(0);
                bool a = diffuse_dnnl_conv(ya, gxb, wf, b, &g, 2, sc);
                CHECK(a && bb && cc && memcmp(ya, yb, sizeof(float) * gy) == 0 &&
                          memcmp(ya, yc, sizeof(float) * gy) == 0,
                      "conv %dx%d %dx%d s%d from dtype %d: ran %d %d %d, differs from widened",
                      sh[0], sh[1], sh[2], sh[3], sh[4], dt, a, bb, cc);
            }
            free(h);
            free(wf);
            free(gxb);
            free(ya);
            free(yb);
            free(yc);
            free(sc);
        }
    CHECK(!ran || backend != DIFFUSE_CONV_DIRECT || took == 10,
          "oneDNN's direct convolution took the file's weights on %d of 10 cases", took);
    printf("oneDNN convolutions (backend %d): %s\n", backend,
           ran ? "used" : "not in this build or CPU");
    free(x);
    free(wt);
    free(b);
    free(y1);
    free(y2);
    free(scratch);
    diffuse_conv_set_backend(DIFFUSE_CONV_AUTO);
}

/* x [c, hw] into blocks of blk channels [ceil(c/blk), hw, blk], padding zero. */
static float *to_blocks(const float *x, int c, size_t hw, int blk)
{
    const int nb = (c + blk - 1) / blk;
    float *y = filled((size_t)nb * blk * hw, 0);
    for (int ch = 0; ch < c; ch++)
        for (size_t i = 0; i < hw; i++)
            y[((size_t)(ch / blk) * hw + i) * blk + ch % blk] = x[ch * hw + i];
    return y;
}

/* diffuse_dnnl_conv_fused on one shape and flags against the padded formula:
 * input and output NCHW or blocked, relu(conv(x) + r) with r what the output
 * held; the same bits at 1 and 2 threads; the padding channels of a blocked
 * output zero. */
static void fused_case(int cin, int cout, int h, int w, int stride, int flags)
{
    const int blk = diffuse_dnnl_block();
    diffuse_conv c = diffuse_conv_3x3(cin, cout, h, w, stride);
    const int oh = diffuse_conv_out_h(&c), ow = diffuse_conv_out_w(&c);
    const size_t hw = (size_t)h * w, ohw = (size_t)oh * ow, ny = (size_t)cout * ohw;
    const size_t need = diffuse_dnnl_fused_scratch(&c, flags);
    if (!blk || !need) {
        CHECK(!blk || diffuse_cpu_path() < DIFFUSE_CPU_AVX2,
              "fused conv cin=%d cout=%d %dx%d s=%d flags=%d: oneDNN refused it", cin, cout, h, w,
              stride, flags);
        return;
    }
    const int ib = flags & DIFFUSE_DNNL_IN_BLOCKED ? blk : 1,
              ob = flags & DIFFUSE_DNNL_OUT_BLOCKED ? blk : 1;
    const size_t ny_store = (size_t)(cout + ob - 1) / ob * ob * ohw;
    float *x = random_buf((size_t)cin * hw, 1), *wt = random_buf((size_t)cout * cin * 9, 0.5f);
    float *b = random_buf((size_t)cout, 1), *res = random_buf(ny, 2);
    float *xs = to_blocks(x, cin, hw, ib), *rs = to_blocks(res, cout, ohw, ob);
    float *y1 = filled(ny_store, NAN), *y2 = filled(ny_store, NAN), *sc = filled(need, NAN);
    if (flags & DIFFUSE_DNNL_SUM) {
        memcpy(y1, rs, sizeof(float) * ny_store);
        memcpy(y2, rs, sizeof(float) * ny_store);
    }
    double *yd = calloc(ny, sizeof *yd);
    conv_padded(yd, x, wt, b, &c, 1);
    for (size_t i = 0; i < ny; i++) {
        yd[i] += flags & DIFFUSE_DNNL_SUM ? res[i] : 0;
        yd[i] = flags & DIFFUSE_DNNL_RELU && yd[i] < 0 ? 0 : yd[i];
    }
    diffuse_pool_set_threads(1);
    bool ok = diffuse_dnnl_conv_fused(y1, xs, wt, b, &c, flags, sc);
    diffuse_pool_set_threads(2);
    ok = ok && diffuse_dnnl_conv_fused(y2, xs, wt, b, &c, flags, sc);
    diffuse_pool_set_threads(0);
    CHECK(ok, "fused conv cin=%d cout=%d %dx%d flags=%d did not run", cin, cout, h, w, flags);
    if (ok) {
        float *y = filled(ny, NAN);
        bool pad_zero = true;
        for (int ch = 0; ch < (cout + ob - 1) / ob * ob; ch++)
            for (size_t i = 0; i < ohw; i++) {
                const float v = y1[((size_t)(ch / ob) * ohw + i) * ob + ch % ob];
                if (ch < cout)
                    y[ch * ohw + i] = v;
                else
                    pad_zero = pad_zero && v == 0;
            }
        size_t at = 0;
        /* Winograd's transforms add rounding: 1e-4 of the output's scale */
        CHECK(close_all(y, yd, ny, 1e-4, 10, &at),
              "fused conv cin=%d cout=%d %dx%d s=%d flags=%d (Winograd %d) at %zu: %g vs %g", cin,
              cout, h, w, stride, flags, diffuse_dnnl_fused_winograd(&c, flags), at, y[at], yd[at]);
        CHECK(pad_zero, "fused conv: the padding channels of the blocked output are not zero");
        CHECK(memcmp(y1, y2, sizeof(float) * ny_store) == 0,
              "fused conv cin=%d cout=%d %dx%d flags=%d differs between 1 and 2 threads", cin, cout,
              h, w, flags);
        free(y);
    }
    free(x);
    free(wt);
    free(b);
    free(res);
    free(xs);
    free(rs);
    free(y1);
    free(y2);
    free(sc);
    free(yd);
}

/* The engine's own 3x3 convolution from 16-channel blocks to a few NCHW
 * channels (a decoder's last layer) against the padded formula. */
static void few_case(int cin, int cout, int h, int w, bool bias)
{
    diffuse_conv c = diffuse_conv_3x3(cin, cout, h, w, 1);
    const size_t hw = (size_t)h * w, ny = (size_t)cout * hw;
    float *x = random_buf((size_t)cin * hw, 1), *wt = random_buf((size_t)cout * cin * 9, 0.5f);
    float *b = bias ? random_buf((size_t)cout, 1) : NULL, *xs = to_blocks(x, cin, hw, 16);
    float *y1 = filled(ny, NAN), *y2 = filled(ny, NAN);
    float *sc = filled(diffuse_op_conv3x3_few_scratch(cin, cout), NAN);
    double *yd = calloc(ny, sizeof *yd);
    conv_padded(yd, x, wt, b, &c, 1);
    diffuse_pool_set_threads(1);
    bool ok = diffuse_op_conv3x3_few(y1, xs, wt, b, cin, cout, h, w, sc);
    diffuse_pool_set_threads(2);
    ok = ok && diffuse_op_conv3x3_few(y2, xs, wt, b, cin, cout, h, w, sc);
    diffuse_pool_set_threads(0);
    CHECK(ok || diffuse_cpu_path() < DIFFUSE_CPU_AVX512, "conv3x3_few did not run on AVX-512");
    if (ok) {
        size_t at = 0;
        CHECK(close_all(y1, yd, ny, 1e-5, 1, &at),
              "conv3x3_few cin=%d cout=%d %dx%d bias=%d at %zu: %g vs %g", cin, cout, h, w, bias,
              at, y1[at], yd[at]);
        CHECK(memcmp(y1, y2, sizeof(float) * ny) == 0,
              "conv3x3_few cin=%d cout=%d %dx%d differs between 1 and 2 threads", cin, cout, h, w);
    }
    free(x);
    free(wt);
    free(b);
    free(xs);
    free(y1);
    free(y2);
    free(sc);
    free(yd);
}

/* Blocked-layout convolutions (TAESD's whole-image path) at awkward sizes:
 * odd widths, one-row images, channels off the block, every flag, each
 * backend oneDNN has. */
static void test_conv_fused(void)
{
    enum { IN = DIFFUSE_DNNL_IN_BLOCKED, OUT = DIFFUSE_DNNL_OUT_BLOCKED };
    enum { RELU = DIFFUSE_DNNL_RELU, SUM = DIFFUSE_DNNL_SUM };
    const int backends[] = {DIFFUSE_CONV_AUTO, DIFFUSE_CONV_DIRECT, DIFFUSE_CONV_WINOGRAD};
    for (int i = 0; i < 3; i++) {
        diffuse_conv_set_backend(backends[i]);
        /*         cin cout  h   w  s  flags */
        fused_case(64, 64, 37, 41, 1, IN | OUT);
        fused_case(64, 64, 1, 29, 1, IN | OUT | RELU);
        fused_case(64, 64, 23, 1, 1, IN | OUT | SUM | RELU);
        fused_case(48, 80, 19, 27, 1, IN | OUT | SUM | RELU);
        fused_case(40, 24, 17, 13, 1, IN | OUT | RELU);
        fused_case(4, 64, 9, 11, 1, OUT | RELU); /* NCHW in: a decoder's first layer */
        fused_case(3, 32, 15, 17, 1, OUT);
        fused_case(64, 48, 21, 25, 2, IN | OUT); /* an encoder's downsampler */
        fused_case(36, 20, 1, 7, 2, IN | OUT | RELU);
    }
    diffuse_conv_set_backend(DIFFUSE_CONV_AUTO);
    /*       cin cout  h   w  bias */
    few_case(64, 3, 37, 41, true);
    few_case(64, 3, 1, 1, true);
    few_case(64, 3, 1, 13, false);
    few_case(20, 5, 9, 6, true);
    few_case(33, 1, 6, 5, true);
    few_case(16, 4, 2, 9, false);
    few_case(70, 9, 7, 10, true);
}

/* ------------------------------------------------------------------ attention */

/* q, k, v interleaved in one [t, 3 * heads * dh + |extra|] buffer as a fused
 * projection leaves them, so every row is strided; a negative extra makes the
 * scores peaked: large, with row maxima that move from key block to key block. */
static void attention_case(int tq, int tk, int heads, int dh, bool causal, int extra)
{
    const int width = heads * dh, stride = 3 * width + abs(extra);
    const int rows = tq > tk ? tq : tk;
    float *qkv = random_buf((size_t)rows * stride, 2);
    if (extra < 0)
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < width; i++)
                qkv[(size_t)r * stride + i] *= 4.0f + 0.05f * r;
    const float *q = qkv, *k = qkv + width, *v = qkv + 2 * width;
    const size_t n = (size_t)tq * width, ns = diffuse_attention_scratch(tq, tk, dh);
    float *out = filled(n, NAN), *ref = filled(n, NAN), *scratch = filled(ns, NAN);
    diffuse_op_attention(out, q, stride, k, v, stride, tq, tk, heads, dh, causal, scratch);
    diffuse_op_attention_ref(ref, q, stride, k, v, stride, tq, tk, heads, dh, causal);
    double abs_err, rel = test_rel_err(out, ref, n, &abs_err);
    CHECK(rel <= TOL,
          "attention (path %d) tq=%d tk=%d heads=%d dh=%d causal=%d: rel err %g (abs %g)",
          diffuse_cpu_path(), tq, tk, heads, dh, causal, rel, abs_err);
    /* separate q and k/v buffers with different strides */
    float *q2 = random_buf((size_t)tq * (width + 1), 1),
          *kv = random_buf((size_t)tk * 2 * width, 1);
    diffuse_op_attention(out, q2, width + 1, kv, kv + width, 2 * width, tq, tk, heads, dh, causal,
                         scratch);
    diffuse_op_attention_ref(ref, q2, width + 1, kv, kv + width, 2 * width, tq, tk, heads, dh,
                             causal);
    rel = test_rel_err(out, ref, n, &abs_err);
    CHECK(rel <= TOL,
          "attention (path %d, separate q, kv) tq=%d tk=%d heads=%d causal=%d: rel err %g",
          diffuse_cpu_path(), tq, tk, heads, causal, rel);
    free(q2);
    free(kv);
    free(qkv);
    free(out);
    free(ref);
    free(scratch);
}

/* The ref against the definition: a query's causal output at position 0 is v[0];
 * with one key every query returns that key's value. */
static void test_attention_definition(void)
{
    const int t = 5, heads = 2, dh = 3, w = heads * dh;
    float *q = random_buf((size_t)t * w, 3), *k = random_buf((size_t)t * w, 3);
    float *v = random_buf((size_t)t * w, 1), *out = filled((size_t)t * w, NAN);
    diffuse_op_attention_ref(out, q, w, k, v, w, t, t, heads, dh, true);
    bool ok = true;
    for (int d = 0; d < w; d++)
        ok = ok && fabsf(out[d] - v[d]) < 1e-6f;
    /* row 1 of head 0 by hand */
    double s0 = 0, s1 = 0;
    for (int d = 0; d < dh; d++) {
        s0 += (double)q[w + d] * k[d];
        s1 += (double)q[w + d] * k[w + d];
    }
    s0 /= sqrt(dh);
    s1 /= sqrt(dh);
    double p0 = 1 / (1 + exp(s1 - s0)), p1 = 1 - p0;
    for (int d = 0; d < dh; d++)
        ok = ok && fabs(out[w + d] - (p0 * v[d] + p1 * v[w + d])) < 1e-6;
    CHECK(ok, "attention_ref disagrees with softmax(q k^T / sqrt(d)) v");
    float *scratch = filled(diffuse_attention_scratch(t, 1, dh), NAN);
    diffuse_op_attention(out, q, w, k, v, w, t, 1, heads, dh, false, scratch);
    ok = true;
    for (int i = 0; i < t; i++)
        for (int d = 0; d < w; d++)
            ok = ok && fabsf(out[(size_t)i * w + d] - v[d]) < 1e-6f;
    CHECK(ok, "attention over one key should return its value");
    free(scratch);
    free(q);
    free(k);
    free(v);
    free(out);
}

/* Every case on every vector path this CPU has. Key blocks are 256 keys for
 * heads of up to 64, 96 for 160, 64 for 512; query blocks 256 rows. */
static void test_attention(void)
{
    const int best = diffuse_cpu_path();
    for (int path = DIFFUSE_CPU_BASE; path <= best; path++) {
        diffuse_cpu_cap(path);
        attention_case(7, 5, 1, 8, false, 0);
        attention_case(5, 7, 3, 5, false, 1);
        attention_case(77, 77, 3, 8, true, 0);   /* CLIP self-attention */
        attention_case(64, 77, 3, 7, false, 3);  /* UNet cross-attention */
        attention_case(300, 77, 1, 8, false, 0); /* crosses the 256-query block */
        attention_case(300, 77, 3, 5, false, 2);
        attention_case(300, 300, 3, 4, true, 1); /* causal mask across blocks */
        attention_case(513, 9, 2, 3, false, 0);  /* three blocks, last partial */
        attention_case(257, 257, 1, 16, true, 0);
        attention_case(1, 1, 1, 1, false, 0);
        attention_case(261, 600, 2, 40, false, 0);  /* SD 1.x heads, three key blocks */
        attention_case(600, 600, 1, 40, true, 0);   /* causal across key and query blocks */
        attention_case(130, 333, 1, 40, false, -1); /* peaked: the online rescaling */
        attention_case(90, 250, 2, 160, false, 5);  /* 10 vectors a row: column slabs of 3 */
        attention_case(70, 200, 1, 512, false, 0);  /* the VAE's one head */
        attention_case(33, 97, 3, 17, true, 0);
        test_attention_definition();
    }
    diffuse_cpu_cap(DIFFUSE_CPU_AVX512);
    /* the work space does not grow with the keys */
    CHECK(diffuse_attention_scratch(4096, 4096, 40) == diffuse_attention_scratch(4096, 1 << 20, 40),
          "attention scratch grows with the sequence length");
}

/* ------------------------------------------------------------------ norms */

static void test_group_norm(void)
{
    /* n, c, hw, groups, data scale (0.01: variance near eps, so eps must be in) */
    const int shapes[][5] = {{2, 12, 35, 4, 3}, {1, 6, 1, 3, 3},   {2, 9, 13, 1, 3},
                             {3, 10, 7, 10, 3}, {2, 64, 9, 32, 3}, {2, 12, 35, 4, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int n = shapes[s][0], c = shapes[s][1], hw = shapes[s][2], groups = shapes[s][3];
        const size_t total = (size_t)n * c * hw;
        const float eps = 1e-5f;
        const float scale = shapes[s][4] ? (float)shapes[s][4] : 0.01f;
        float *x = random_buf(total, scale), *gamma = random_buf((size_t)c, 1.5f);
        float *beta = random_buf((size_t)c, 1);
        /* an offset of about 3 standard deviations that the variance must not be
         * fooled by (far larger ones cost precision: the kernel folds the mean
         * into the bias, as torch's CPU kernel does) */
        for (size_t i = 0; i < total; i++)
            x[i] += 1.7f * scale;
        for (int act = 0; act < 2; act++) {
            float *y = filled(total, NAN);
            double *want = calloc(total, sizeof *want);
            diffuse_op_group_norm(y, x, gamma, beta, n, c, hw, groups, eps, act);
            const int cg = c / groups;
            for (int i = 0; i < n; i++)
                for (int g = 0; g < groups; g++) {
                    const size_t base = ((size_t)i * c + (size_t)g * cg) * hw, m = (size_t)cg * hw;
                    double mean = 0, var = 0;
                    for (size_t j = 0; j < m; j++)
                        mean += x[base + j];
                    mean /= m;
                    for (size_t j = 0; j < m; j++)
                        var += (x[base + j] - mean) * (x[base + j] - mean);
                    var /= m;
                    for (size_t j = 0; j < m; j++) {
                        int ch = g * cg + (int)(j / hw);
                        double v = (x[base + j] - mean) / sqrt(var + eps) * gamma[ch] + beta[ch];
                        want[base + j] = act ? v / (1 + exp(-v)) : v;
                    }
                }
            size_t at = 0;
            CHECK(close_all(y, want, total, TOL, 1, &at),
                  "group_norm n=%d c=%d hw=%d groups=%d silu=%d at %zu: %g vs %g", n, c, hw, groups,
                  act, at, y[at], want[at]);
            /* the same from statistics merged over parts of each image
             * (the VAE's bands): uneven parts, one of them empty */
            for (int i = 0; i < n; i++) {
                const float *xi = x + (size_t)i * c * hw;
                double *acc = calloc((size_t)3 * groups, sizeof *acc);
                float *mean = calloc((size_t)groups, sizeof *mean);
                float *rstd = calloc((size_t)groups, sizeof *rstd);
                const int cuts[4] = {0, hw / 3, hw / 3, hw};
                for (int k = 0; k < 3; k++)
                    diffuse_op_group_moments(acc, xi + cuts[k], c, groups, hw,
                                             cuts[k + 1] - cuts[k]);
                diffuse_op_group_norm_stats(mean, rstd, acc, groups, eps);
                float *yi = filled((size_t)c * hw, NAN);
                diffuse_op_group_norm_with(yi, xi, gamma, beta, c, hw, groups, mean, rstd, act);
                CHECK(close_all(yi, want + (size_t)i * c * hw, (size_t)c * hw, TOL, 1, &at),
                      "group_norm from parts n=%d c=%d hw=%d groups=%d silu=%d at %zu", n, c, hw,
                      groups, act, at);
                free(acc);
                free(mean);
                free(rstd);
                free(yi);
            }
            free(y);
            free(want);
        }
        free(x);
        free(gamma);
        free(beta);
    }
}

static void test_layer_norm(void)
{
    /* rows, dim, data scale x 100 (1: variance near eps) */
    const int shapes[][3] = {{1, 1, 400}, {5, 37, 400}, {77, 64, 400}, {3, 1024, 400}, {4, 33, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], dim = shapes[s][1];
        const size_t total = (size_t)rows * dim;
        float *x = random_buf(total, shapes[s][2] / 100.0f), *gamma = random_buf((size_t)dim, 2);
        float *beta = random_buf((size_t)dim, 1), *y = filled(total, NAN);
        double *want = calloc(total, sizeof *want);
        for (size_t i = 0; i < total; i++)
            x[i] -= 3.0f;
        diffuse_op_layer_norm(y, x, gamma, beta, rows, dim, 1e-5f);
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * dim;
            double mean = 0, var = 0;
            for (int j = 0; j < dim; j++)
                mean += xr[j];
            mean /= dim;
            for (int j = 0; j < dim; j++)
                var += (xr[j] - mean) * (xr[j] - mean);
            var /= dim;
            for (int j = 0; j < dim; j++)
                want[(size_t)r * dim + j] = (xr[j] - mean) / sqrt(var + 1e-5) * gamma[j] + beta[j];
        }
        size_t at = 0;
        CHECK(close_all(y, want, total, TOL, 1, &at), "layer_norm rows=%d dim=%d at %zu: %g vs %g",
              rows, dim, at, y[at], want[at]);
        free(x);
        free(gamma);
        free(beta);
        free(y);
        free(want);
    }
}

/* ------------------------------------------------------------------ pointwise */

static double silu_d(double x)
{
    return x / (1 + exp(-x));
}
static double gelu_d(double x)
{
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
}
static double quick_gelu_d(double x)
{
    return x / (1 + exp(-1.702 * x));
}

static void pointwise_case(const char *name, void (*op)(float *, size_t), double (*f)(double))
{
    const size_t n = 4001;
    float *x = filled(n, 0);
    double *want = calloc(n, sizeof *want);
    for (size_t i = 0; i < n; i++)
        x[i] = -20.0f + 40.0f * (float)i / (float)(n - 1); /* -20 .. 20, 0 included */
    x[1] = -88.0f;
    x[2] = 88.0f;
    x[3] = 1e-30f;
    x[4] = -0.0f;
    for (size_t i = 0; i < n; i++)
        want[i] = f(x[i]);
    op(x, n);
    size_t at = 0;
    /* relative, with an absolute floor of 1e-6 for values near zero */
    CHECK(close_all(x, want, n, TOL, 0.1, &at), "%s at %zu: %.9g vs %.9g", name, at, x[at],
          want[at]);
    op(x, 0); /* n = 0 touches nothing */
    free(x);
    free(want);
}

/* GELU on every vector path: close to erf in double; each value's bits the
 * same whether the run is whole or cut anywhere (the thread count decides the
 * cuts); GEGLU against hidden * gelu(gate) and packed in place. */
static void gelu_paths(void)
{
    const int best = diffuse_cpu_path();
    for (int path = DIFFUSE_CPU_BASE; path <= best; path++) {
        diffuse_cpu_cap(path);
        pointwise_case("gelu", diffuse_op_gelu, gelu_d);
        const size_t n = 1037;
        float *whole = random_buf(n, 4), *cut = malloc(sizeof(float) * n);
        memcpy(cut, whole, sizeof(float) * n);
        diffuse_op_gelu(whole, n);
        const size_t at[] = {0, 3, 19, 20, 517, 1030, n};
        for (size_t i = 0; i + 1 < sizeof at / sizeof at[0]; i++)
            diffuse_op_gelu(cut + at[i], at[i + 1] - at[i]);
        CHECK(memcmp(whole, cut, sizeof(float) * n) == 0,
              "gelu (path %d) depends on where a run is cut", path);
        free(whole);
        free(cut);
        const int rows_[] = {1, 7, 300}, halves[] = {1, 21, 160};
        for (int r = 0; r < 3; r++) {
            const int rows = rows_[r], half = halves[r];
            float *f = random_buf((size_t)rows * 2 * half, 3);
            double *want = calloc((size_t)rows * half, sizeof *want);
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < half; j++)
                    want[(size_t)i * half + j] = (double)f[(size_t)i * 2 * half + j] *
                                                 gelu_d(f[(size_t)i * 2 * half + half + j]);
            diffuse_op_geglu(f, rows, half);
            size_t bad = 0;
            CHECK(close_all(f, want, (size_t)rows * half, TOL, 0.1, &bad),
                  "geglu (path %d) %d x %d at %zu: %.9g vs %.9g", path, rows, half, bad, f[bad],
                  want[bad]);
            free(f);
            free(want);
        }
    }
    diffuse_cpu_cap(DIFFUSE_CPU_AVX512);
}

static void test_pointwise(void)
{
    pointwise_case("silu", diffuse_op_silu, silu_d);
    gelu_paths();
    pointwise_case("quick_gelu", diffuse_op_quick_gelu, quick_gelu_d);

    const size_t n = 1003;
    float *y = random_buf(n, 1), *x = random_buf(n, 1);
    double *want = calloc(n, sizeof *want);
    for (size_t i = 0; i < n; i++)
        want[i] = (double)y[i] + x[i];
    diffuse_op_add(y, x, n);
    size_t at = 0;
    CHECK(close_all(y, want, n, 1e-7, 1, &at), "add at %zu", at);
    free(x);
    free(y);
    free(want);
}

static void test_layout(void)
{
    const int n = 2, c = 3, h = 5, w = 7;
    float *x = random_buf((size_t)n * c * h * w, 1), *y = filled((size_t)n * c * 4 * h * w, NAN);
    diffuse_op_upsample2x(y, x, n, c, h, w);
    bool ok = true;
    for (int i = 0; i < n * c; i++)
        for (int oy = 0; oy < 2 * h; oy++)
            for (int ox = 0; ox < 2 * w; ox++)
                ok = ok && y[((size_t)i * 2 * h + oy) * 2 * w + ox] ==
                               x[((size_t)i * h + oy / 2) * w + ox / 2];
    CHECK(ok, "upsample2x differs from nearest neighbour");
    free(y);

    const int rows = 5 * 7, cols = 3 * 11; /* [N, C=rows, HW=cols] */
    float *t = filled((size_t)n * rows * cols, NAN), *back = filled((size_t)n * rows * cols, NAN);
    float *src = random_buf((size_t)n * rows * cols, 1);
    diffuse_op_transpose(t, src, n, rows, cols);
    ok = true;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++)
            for (int cc = 0; cc < cols; cc++)
                ok = ok && t[((size_t)i * cols + cc) * rows + r] ==
                               src[((size_t)i * rows + r) * cols + cc];
    CHECK(ok, "transpose differs from y[i, c, r] = x[i, r, c]");
    diffuse_op_transpose(back, t, n, cols, rows);
    CHECK(memcmp(back, src, sizeof(float) * n * rows * cols) == 0,
          "transpose twice is not the identity");
    free(x);
    free(t);
    free(back);
    free(src);
}

/* ------------------------------------------------------------------ rng, arena */

static void test_rng(void)
{
    const size_t n = 1000000;
    float *a = filled(n, 0), *b = filled(n, 0);
    diffuse_rng r1, r2;
    diffuse_rng_seed(&r1, 42);
    diffuse_rng_seed(&r2, 42);
    diffuse_rng_normal(&r1, a, 1001);
    diffuse_rng_normal(&r2, b, 1001);
    CHECK(memcmp(a, b, sizeof(float) * 1001) == 0, "same seed, different normals");
    /* drawing in odd chunks gives the same stream as one draw */
    diffuse_rng_seed(&r1, 7);
    diffuse_rng_normal(&r1, a, 3);
    diffuse_rng_normal(&r1, a + 3, 5);
    diffuse_rng_normal(&r1, a + 8, 1);
    diffuse_rng_seed(&r2, 7);
    diffuse_rng_normal(&r2, b, 9);
    CHECK(memcmp(a, b, sizeof(float) * 9) == 0, "normals depend on how they are chunked");
    /* reseeding forgets the spare Box-Muller value */
    diffuse_rng_seed(&r1, 7);
    diffuse_rng_normal(&r1, a, 1);
    diffuse_rng_seed(&r1, 7);
    diffuse_rng_normal(&r1, a + 1, 1);
    CHECK(a[0] == a[1], "reseeding does not restart the stream");

    diffuse_rng_seed(&r1, 42);
    diffuse_rng_seed(&r2, 43);
    diffuse_rng_normal(&r1, a, 100);
    diffuse_rng_normal(&r2, b, 100);
    int same = 0;
    for (int i = 0; i < 100; i++)
        same += a[i] == b[i];
    CHECK(same == 0, "seeds 42 and 43 share %d of 100 normals", same);
    diffuse_rng_seed(&r1, 0);
    diffuse_rng_seed(&r2, 1);
    CHECK(diffuse_rng_next(&r1) != diffuse_rng_next(&r2), "seeds 0 and 1 start alike");

    diffuse_rng_seed(&r1, 1234);
    diffuse_rng_normal(&r1, a, n);
    double mean = 0, var = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        mean += a[i];
        bad += !isfinite(a[i]);
    }
    mean /= n;
    for (size_t i = 0; i < n; i++)
        var += (a[i] - mean) * (a[i] - mean);
    var /= n;
    CHECK(bad == 0, "%d non-finite normals", bad);
    CHECK(fabs(mean) < 0.01, "mean of 1e6 normals %g", mean);
    CHECK(fabs(var - 1) < 0.01, "variance of 1e6 normals %g", var);
    /* 4.5 sigma both ways happens with 1e6 draws (expected ~7) */
    int tails = 0;
    for (size_t i = 0; i < n; i++)
        tails += fabsf(a[i]) > 4.5f;
    CHECK(tails >= 1 && tails < 30, "%d normals beyond 4.5 sigma", tails);

    double lo = 1, hi = 0;
    for (int i = 0; i < 100000; i++) {
        double u = diffuse_rng_uniform(&r1);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    CHECK(lo > 0 && hi < 1 && lo < 1e-3 && hi > 1 - 1e-3, "uniform range [%g, %g]", lo, hi);
    free(a);
    free(b);
}

static void test_arena(void)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_arena a;
    CHECK(diffuse_arena_init(&a, 100, err) == 0, "arena init: %s", err);
    float *p = diffuse_arena_push(&a, 3), *q = diffuse_arena_push(&a, 17);
    CHECK(p && q && ((uintptr_t)p % 64) == 0 && ((uintptr_t)q % 64) == 0 && q - p == 16,
          "arena blocks not 64-byte aligned");
    size_t mark = diffuse_arena_mark(&a);
    CHECK(diffuse_arena_push(&a, 200) == NULL && a.overflow, "arena overflow not reported");
    diffuse_arena_reset(&a, mark);
    float *r = diffuse_arena_push(&a, 10);
    CHECK(r == q + 32, "arena reset");
    /* 16 + 32 floats (p and q, each rounded up to 16) + 10 -> 16: used 64 */
    CHECK(a.used == 64 && a.peak == 64, "arena bookkeeping: used %zu, peak %zu (want 64, 64)",
          a.used, a.peak);
    for (size_t i = 0; r && i < 10; i++)
        r[i] = 1; /* inside the block */
    diffuse_arena_free(&a);
}

/* ------------------------------------------------------------------ widen */

/* Every fp16 and bf16 bit pattern, widened by the vector paths (several
 * threads, lengths that leave a scalar tail, odd start addresses) against the
 * scalar twin: equal bits, NaN for NaN. */
static void test_widen(void)
{
    const size_t n = 65536 + 13;
    uint8_t *raw = malloc(2 * n + 2);
    float *fast = malloc(sizeof(float) * n), *slow = malloc(sizeof(float) * n);
    const int best = diffuse_cpu_path();
    for (int path = DIFFUSE_CPU_BASE; path <= best; path++)
        for (int dt = 0; dt < 2; dt++) {
            const diffuse_dtype dtype = dt ? DIFFUSE_DTYPE_BF16 : DIFFUSE_DTYPE_F16;
            diffuse_cpu_cap(path);
            for (int shift = 0; shift < 2; shift++) { /* 2-byte and odd start */
                uint8_t *p = raw + shift;
                for (size_t i = 0; i < n; i++) {
                    uint16_t h = (uint16_t)(i * 40503u); /* a permutation of all 65536 */
                    memcpy(p + 2 * i, &h, 2);
                }
                const size_t lens[] = {0, 1, 7, 15, 17, 31, 1000, n};
                for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
                    size_t len = lens[l], bad = len;
                    memset(fast, 0xff, sizeof(float) * n);
                    diffuse_op_widen(fast, p, dtype, len);
                    diffuse_op_widen_ref(slow, p, dtype, len);
                    for (size_t i = 0; i < len && bad == len; i++) {
                        uint32_t a, b;
                        memcpy(&a, &fast[i], 4);
                        memcpy(&b, &slow[i], 4);
                        if (a != b && !(isnan(fast[i]) && isnan(slow[i])))
                            bad = i;
                    }
                    CHECK(bad == len, "widen %s (path %d) len %zu start +%d: element %zu differs",
                          dt ? "bf16" : "f16", path, len, shift, bad);
                    uint32_t after;
                    memcpy(&after, &fast[len < n ? len : n - 1], 4);
                    CHECK(len == n || after == 0xffffffffu, "widen wrote past %zu", len);
                }
            }
        }
    diffuse_cpu_cap(DIFFUSE_CPU_AVX512);
    /* known values: 1, -2, 65504 (max), 2^-24 (smallest subnormal), +inf */
    const uint16_t h[5] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00};
    const float want[5] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-8f, INFINITY};
    float got[5];
    diffuse_op_widen(got, h, DIFFUSE_DTYPE_F16, 5);
    for (int i = 0; i < 5; i++)
        CHECK(got[i] == want[i], "f16 %04x -> %g, want %g", h[i], got[i], want[i]);
    free(raw);
    free(fast);
    free(slow);
}

/* Convolution weights widened straight into blocked layouts (oneDNN's
 * Acdb8a / 16a / 32a and plain oihw): every path, dtype and block against the
 * plain loop, bit for bit, output channels padded with zeros, nothing written
 * outside the layout. */
static void test_widen_blocked(void)
{
    const int best = diffuse_cpu_path();
    const int shapes[][3] = {{40, 48, 3}, {7, 1, 3},   {33, 17, 3}, {64, 35, 1},
                             {5, 16, 3},  {50, 48, 1}, {20, 300, 1}};
    const int blks[] = {1, 8, 16, 32, 48, 64};
    for (int path = DIFFUSE_CPU_BASE; path <= best; path++) {
        diffuse_cpu_cap(path);
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (size_t bi = 0; bi < sizeof blks / sizeof blks[0]; bi++)
                for (int v = 0; v < 6; v++) {
                    const int dt = v % 3, ib = v < 3 ? 1 : 16; /* ib: oneDNN matmul's BA16a<blk>b */
                    const int co = shapes[si][0], ci = shapes[si][1], k = shapes[si][2];
                    if (ib > 1 && blks[bi] == 1)
                        continue;
                    const int blk = blks[bi], kk = k * k, pad = (co + blk - 1) / blk * blk;
                    const diffuse_dtype dtype = dt == 0   ? DIFFUSE_DTYPE_F16
                                                : dt == 1 ? DIFFUSE_DTYPE_BF16
                                                          : DIFFUSE_DTYPE_F32;
                    diffuse_wblocked l = {
                        .cout = co, .cin = ci, .k = k, .blk = blk, .iblk = ib, .cout_pad = pad};
                    if (ib > 1) /* [O/blk][I/ib][kh][kw][ib][blk]: BA16a<blk>b, ABcd16b<blk>a */
                        l.stride[3] = (size_t)ib * blk, l.stride[2] = (size_t)k * ib * blk,
                        l.stride[1] = (size_t)kk * ib * blk,
                        l.stride[0] = (size_t)(ci + ib - 1) / ib * kk * ib * blk;
                    else if (blk == 1) /* oihw */
                        l.stride[0] = (size_t)ci * kk, l.stride[1] = kk, l.stride[2] = k,
                        l.stride[3] = 1;
                    else /* Acdb<blk>a: [O/blk][kh][kw][I][blk] */
                        l.stride[0] = (size_t)kk * ci * blk, l.stride[1] = blk,
                        l.stride[2] = (size_t)k * ci * blk, l.stride[3] = (size_t)ci * blk;
                    const size_t nw = (size_t)co * ci * kk, nd = pad / blk * l.stride[0];
                    uint8_t *src = malloc(nw * 4 + 1);
                    for (size_t i = 0; i < nw * 4 + 1; i++)
                        src[i] = (uint8_t)(i * 131u + 7);
                    for (size_t i = 0; dt < 2 && i < nw; i++) { /* finite halves */
                        uint16_t h = (uint16_t)((i * 40503u) & 0x3bff);
                        memcpy(src + 2 * i, &h, 2);
                    }
                    const void *from = dt == 2 ? (const void *)(src + 1) : src; /* unaligned */
                    float *got = filled(nd + 16, NAN), *want = filled(nd + 16, NAN);
                    diffuse_op_widen_blocked(got, from, dtype, &l);
                    diffuse_op_widen_blocked_ref(want, from, dtype, &l);
                    bool same = true, zero = true;
                    for (size_t i = 0; i < nd; i++) {
                        uint32_t a, b;
                        memcpy(&a, &got[i], 4);
                        memcpy(&b, &want[i], 4);
                        same = same && a == b;
                    }
                    for (int o = co; o < pad; o++)
                        for (int i = 0; i < ci * kk; i++)
                            zero = zero && got[(size_t)(o / blk) * l.stride[0] +
                                               (size_t)(i / kk / ib) * l.stride[1] +
                                               (size_t)(i / kk % ib) * blk +
                                               (size_t)(i % kk / k) * l.stride[2] +
                                               (size_t)(i % k) * l.stride[3] + o % blk] == 0.0f;
                    CHECK(same && zero && isnan(got[nd]) && isnan(got[nd + 15]),
                          "widen_blocked path %d %dx%dx%d blk %d/%d dtype %d: same %d pad zero "
                          "%d, past the end %g",
                          path, co, ci, k, blk, ib, dt, same, zero, got[nd]);
                    free(src);
                    free(got);
                    free(want);
                }
    }
    diffuse_cpu_cap(DIFFUSE_CPU_AVX512);
}

/* ------------------------------------------------------------------ threads */

static void count_part(void *ctx, size_t b, size_t e)
{
    for (size_t i = b; i < e; i++)
        ((size_t *)ctx)[i]++;
}

/* diffuse_gemm and the attention at 1 to 4 threads: bit for bit the same
 * (cut along N, along M, transposed operands; with the AVX2 kernels too:
 * OPENBLAS_CORETYPE=Haswell), close to one cblas call, and
 * the pool's parallel_for covering every index once. */
static void test_threads(void)
{
    static const int shapes[][5] = {/* m, n, k, ta, tb */
                                    {97, 1003, 301, 0, 0},
                                    {600, 40, 700, 0, 1},
                                    {33, 517, 999, 1, 0},
                                    {5, 4099, 800, 0, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        const bool ta = shapes[s][3], tb = shapes[s][4];
        float *a = random_buf((size_t)m * k, 1), *b = random_buf((size_t)k * n, 1);
        float *want = random_buf((size_t)m * n, 1), *got = malloc(sizeof(float) * m * n);
        float *c0 = malloc(sizeof(float) * m * n);
        memcpy(c0, want, sizeof(float) * m * n);
        diffuse_pool_set_threads(1);
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, 0.5f, a, ta ? m : k, b, tb ? k : n, 0.25f, want, n);
        float *first = malloc(sizeof(float) * m * n);
        for (int t = 1; t <= 4; t++) {
            diffuse_pool_set_threads(t);
            memcpy(got, c0, sizeof(float) * m * n);
            diffuse_gemm(ta, tb, m, n, k, 0.5f, a, ta ? m : k, b, tb ? k : n, 0.25f, got, n);
            if (t == 1) { /* the parts may sum in another order than one call: close */
                memcpy(first, got, sizeof(float) * m * n);
                CHECK(test_rel_err(got, want, (size_t)m * n, NULL) < 1e-6,
                      "gemm %dx%dx%d (ta %d tb %d) is not one call's product", m, n, k, ta, tb);
            }
            CHECK(memcmp(got, first, sizeof(float) * m * n) == 0,
                  "gemm %dx%dx%d (ta %d tb %d) at %d threads differs from 1 thread", m, n, k, ta,
                  tb, t);
        }
        free(first);
        free(a);
        free(b);
        free(want);
        free(got);
        free(c0);
    }
    /* attention: 5 heads x 3 query blocks, results equal at every thread count */
    const int tq = 700, tk = 333, heads = 5, dh = 24, c = heads * dh;
    float *q = random_buf((size_t)tq * c, 1), *kv = random_buf((size_t)tk * c, 1);
    float *one = malloc(sizeof(float) * tq * c), *many = malloc(sizeof(float) * tq * c);
    diffuse_pool_set_threads(4);
    float *scratch = malloc(sizeof(float) * diffuse_attention_scratch(tq, tk, dh));
    for (int t = 1; t <= 4; t++) {
        diffuse_pool_set_threads(t);
        diffuse_op_attention(t == 1 ? one : many, q, c, kv, kv, c, tq, tk, heads, dh, false,
                             scratch);
        CHECK(t == 1 || memcmp(one, many, sizeof(float) * tq * c) == 0,
              "attention at %d threads differs from 1 thread", t);
    }
    free(q);
    free(kv);
    free(one);
    free(many);
    free(scratch);
    /* a forked child (after the workers started) gets a pool of its own */
    diffuse_pool_set_threads(2);
    size_t counts[64] = {0};
    diffuse_parallel_for(64, 1, count_part, counts);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20); /* a child stuck waiting for its parent's workers dies */
        size_t mine[64] = {0};
        diffuse_parallel_for(64, 1, count_part, mine);
        for (int i = 0; i < 64; i++)
            if (mine[i] != 1)
                _exit(2);
        _exit(0);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "parallel_for in a forked child: status %d", status);
    diffuse_pool_set_threads(0);
}

int main(void)
{
    test_threads();
    test_widen();
    test_widen_blocked();
    test_linear();
    test_linear_dnnl();
    test_conv2d();
    test_conv2d_dnnl(DIFFUSE_CONV_DIRECT);
    test_conv2d_dnnl(DIFFUSE_CONV_WINOGRAD);
    test_conv2d_winograd();
    test_conv_fused();
    test_attention();
    test_group_norm();
    test_layer_norm();
    test_pointwise();
    test_layout();
    test_rng();
    test_arena();
    TEST_END();
}
