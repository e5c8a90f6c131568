/* vae.c: the AutoencoderKL of Stable Diffusion (diffusers' Encoder, Decoder,
 * quant_conv and post_quant_conv): image [1, 3, H, W] <-> latent moments at
 * H/f x W/f, f = 2^(levels-1).
 *
 * Memory is the point of this file. At 512x512 the SD decoder's last level
 * holds 128-256 channels at full resolution (134-268 MB per activation), and a
 * whole-image im2col of one 3x3 convolution there would need 2.4 GB. So:
 *   - every convolution runs in bands of output rows (vae_conv), its im2col
 *     capped at VAE_BAND_FLOATS; the nearest 2x upsample is folded into the
 *     band copy, so the upsampled input never exists as a whole;
 *   - ResNet blocks use their input as scratch (vae_resnet), so one block
 *     needs its input, its output and one conv1 buffer, nothing more;
 *   - activations live in three arena buffers, `big`, `other` and `u`; only
 *     `big` is sized for an upsampler output (see vae_decoder_plan).
 * Everything comes from the arena the caller passes; nothing is allocated
 * after diffuse_vae_load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define VAE_EPS 1e-6f              /* every VAE GroupNorm */
#define VAE_BAND_FLOATS (1u << 22) /* im2col + band copies of one conv band */
#define VAE_MIN_BANDS 4            /* small convs run in bands too: the tiny model tests them */
#define VAE_MAX_SIDE 16384         /* pixels; keeps every int index in range */
#define VAE_MAX_LAYERS 64          /* layers_per_block sanity bound */

/* ------------------------------------------------------------------ model */

/* Mid-block self-attention: one head of width C over the H*W tokens. */
typedef struct vae_attention {
    diffuse_norm norm;           /* group_norm, eps 1e-6 */
    diffuse_linear q, k, v, out; /* to_q, to_k, to_v, to_out.0: [C, C] + bias */
    int c;                       /* channels = head width */
    int groups;                  /* GroupNorm groups */
} vae_attention;

/* UNetMidBlock2D: resnet, attention (optional), resnet. */
typedef struct vae_mid {
    diffuse_resnet res[2];
    vae_attention attn;
    bool has_attn;
} vae_mid;

struct diffuse_vae {
    diffuse_vae_config cfg;
    /* encoder */
    diffuse_conv2d enc_conv_in;                  /* in -> ch[0], 3x3 */
    diffuse_resnet *enc_res;                     /* [levels][layers_per_block] */
    diffuse_conv2d enc_down[DIFFUSE_MAX_LEVELS]; /* 3x3 stride 2; w NULL on the last level */
    vae_mid enc_mid;
    diffuse_norm enc_norm_out;   /* ch[last] */
    diffuse_conv2d enc_conv_out; /* ch[last] -> 2*latent, 3x3 */
    diffuse_conv2d quant_conv;   /* 2*latent -> 2*latent, 1x1 */
    /* decoder */
    diffuse_conv2d post_quant_conv; /* latent -> latent, 1x1 */
    diffuse_conv2d dec_conv_in;     /* latent -> ch[last], 3x3 */
    vae_mid dec_mid;
    diffuse_resnet *dec_res;                   /* [levels][layers_per_block + 1] */
    diffuse_conv2d dec_up[DIFFUSE_MAX_LEVELS]; /* 3x3 after nearest 2x; w NULL on the last */
    diffuse_norm dec_norm_out;                 /* ch[0] */
    diffuse_conv2d dec_conv_out;               /* ch[0] -> out, 3x3 */
};

/* ------------------------------------------------------------------ banded convolution */

/* How one convolution reads its input [cin, h, w]. */
typedef struct vae_geom {
    int h, w; /* stored input size */
    int up;   /* 2: read through a nearest 2x upsample; else 1 */
    int stride;
    int pad[4];  /* top, left, bottom, right; each < k */
    bool banded; /* a band of the banded decode: sub-bands of one height
                    whatever oh, oneDNN direct for those, im2col for the
                    rest (diffuse_conv.direct, .plain) */
} vae_geom;

static vae_geom vae_same(int h, int w, int k)
{
    return (vae_geom){.h = h, .w = w, .up = 1, .stride = 1, .pad = {k / 2, k / 2, k / 2, k / 2}};
}

static void vae_max(size_t *m, size_t v)
{
    if (v > *m)
        *m = v;
}

static void vae_out_size(const diffuse_conv2d *c, const vae_geom *g, int *oh, int *ow)
{
    *oh = (g->up * g->h + g->pad[0] + g->pad[2] - c->k) / g->stride + 1;
    *ow = (g->up * g->w + g->pad[1] + g->pad[3] - c->k) / g->stride + 1;
}

/* A plain 1x1 conv needs no im2col and no band: one GEMM on the whole image. */
static bool vae_conv_direct(const diffuse_conv2d *c, const vae_geom *g, bool acc)
{
    return c->k == 1 && g->up == 1 && g->stride == 1 && !acc && !g->pad[0] && !g->pad[1] &&
           !g->pad[2] && !g->pad[3];
}

/* Output rows per band: the conv's scratch (im2col, or oneDNN's blocked
 * copies of the band's input and output, a ninth as much), input copy and
 * output copy of one band fit VAE_BAND_FLOATS, and there are at least
 * VAE_MIN_BANDS bands when oh allows. */
static int vae_band_rows(const diffuse_conv2d *c, const vae_geom *g, int oh, int ow)
{
    const size_t in_row = (size_t)c->cin * g->stride * g->up * g->w;
    const size_t scratch_row = diffuse_dnnl_preferred(c->k, g->stride)
                                   ? in_row + (size_t)c->cout * ow
                                   : (size_t)c->cin * c->k * c->k * ow;
    size_t per_row = scratch_row + (size_t)c->cout * ow + in_row;
    size_t rows = VAE_BAND_FLOATS / per_row;
    size_t cap = ((size_t)oh + VAE_MIN_BANDS - 1) / VAE_MIN_BANDS;
    if (rows > cap && !g->banded)
        rows = cap;
    return rows < 1 ? 1 : (int)rows;
}

/* The convolution of the band of n output rows from o0: the input rows it
 * reads (pads at the image edge become the band's own), *r0 the first. */
static diffuse_conv vae_band_conv(const diffuse_conv2d *c, const vae_geom *g, int o0, int n,
                                  int *r0)
{
    const int hv = g->up * g->h;
    int lo = o0 * g->stride - g->pad[0], hi = (o0 + n - 1) * g->stride - g->pad[0] + c->k - 1;
    int first = lo > 0 ? lo : 0, last = hi < hv - 1 ? hi : hv - 1; /* rows read, inclusive */
    *r0 = first;
    return (diffuse_conv){.cin = c->cin,
                          .h = last - first + 1,
                          .w = g->up * g->w,
                          .cout = c->cout,
                          .k = c->k,
                          .stride = g->stride,
                          .pad_top = first - lo,
                          .pad_left = g->pad[1],
                          .pad_bottom = hi - last,
                          .pad_right = g->pad[3]};
}

/* The convolution of the sub-band of n of nb output rows from o0: in a band
 * of the banded decode, full sub-bands run oneDNN's direct convolution (one
 * shape per layer and image edge, whatever the band), the last one im2col. */
static diffuse_conv vae_sub_conv(const diffuse_conv2d *c, const vae_geom *g, int o0, int n, int nb,
                                 int *r0)
{
    diffuse_conv d = vae_band_conv(c, g, o0, n, r0);
    d.direct = g->banded;
    d.plain = g->banded && n < nb;
    return d;
}

/* Floats of the band buffers: input rows [cin, rows_in, W], the conv's
 * scratch (im2col [cin*k*k, nb*ow], or oneDNN's, for the first, an inner and
 * the last band), output rows [cout, nb*ow]. */
static void vae_band_sizes(const diffuse_conv2d *c, const vae_geom *g, int nb, int oh, int ow,
                           size_t sz[3])
{
    const int m = nb < oh ? nb : oh; /* (a banded decode's sub-bands may exceed its band) */
    sz[0] = (size_t)c->cin * ((size_t)(m - 1) * g->stride + c->k) * g->up * g->w;
    sz[1] = (size_t)c->cin * c->k * c->k * m * ow;
    const int starts[3] = {0, nb < oh ? nb : 0, (oh - 1) / nb * nb};
    for (int i = 0; i < 3; i++) {
        int r0, n = oh - starts[i] < nb ? oh - starts[i] : nb;
        diffuse_conv d = vae_sub_conv(c, g, starts[i], n, nb, &r0);
        size_t s = diffuse_conv_scratch(&d, 1);
        sz[1] = s > sz[1] ? s : sz[1];
    }
    sz[2] = (size_t)c->cout * m * ow;
}

/* xb [cin, rows, W] = input rows r0..r0+rows-1 of the (virtually upsampled) x. */
static void vae_copy_rows(float *xb, const float *x, const diffuse_conv2d *c, const vae_geom *g,
                          int r0, int rows)
{
    const int up = g->up, wv = up * g->w;
    for (int ci = 0; ci < c->cin; ci++) {
        const float *src = x + (size_t)ci * g->h * g->w;
        for (int r = 0; r < rows; r++) {
            const float *s = src + (size_t)((r0 + r) / up) * g->w;
            float *d = xb + ((size_t)ci * rows + r) * wv;
            if (up == 1) {
                memcpy(d, s, sizeof(float) * g->w);
                continue;
            }
            for (int j = 0; j < wv; j++)
                d[j] = s[j / up];
        }
    }
}

/* y [cout, oh, ow] = conv(x) (+= when acc), one band of output rows at a time:
 * copy the input rows the band reads (pads at the image edge become the
 * band's own pads), run diffuse_op_conv2d on them, copy the rows out.
 * y must not alias x. Returns -1 when the arena is exhausted. */
static int vae_conv_w(const diffuse_conv2d *c, const float *wf, float *y, const float *x,
                      const vae_geom *g, bool acc, diffuse_arena *a)
{
    int oh, ow;
    vae_out_size(c, g, &oh, &ow);
    size_t sz[3], mark = diffuse_arena_mark(a);
    if (vae_conv_direct(c, g, acc)) {
        diffuse_conv d = {
            .cin = c->cin, .h = g->h, .w = g->w, .cout = c->cout, .k = 1, .stride = 1};
        if (!a->dry)
            diffuse_op_conv2d(y, x, wf, c->b, &d, 1, NULL);
        diffuse_arena_count(a, diffuse_conv_flops(&d, 1));
        diffuse_arena_reset(a, mark);
        return 0;
    }
    const int nb = vae_band_rows(c, g, oh, ow);
    vae_band_sizes(c, g, nb, oh, ow, sz);
    float *xb = diffuse_arena_push(a, sz[0]);  /* [cin, rows_in, W] */
    float *col = diffuse_arena_push(a, sz[1]); /* [cin*k*k, nb*ow] */
    float *yb = diffuse_arena_push(a, sz[2]);  /* [cout, nb*ow] */
    if (!xb || !col || !yb)
        return -1;
    for (int o0 = 0; o0 < oh; o0 += nb) {
        int n = oh - o0 < nb ? oh - o0 : nb, r0;
        diffuse_conv d = vae_sub_conv(c, g, o0, n, nb, &r0);
        diffuse_arena_count(a, diffuse_conv_flops(&d, 1));
        if (a->dry)
            continue;
        vae_copy_rows(xb, x, c, g, r0, d.h);
        diffuse_op_conv2d(yb, xb, wf, c->b, &d, 1, col);
        for (int co = 0; co < c->cout; co++) {
            float *dst = y + ((size_t)co * oh + o0) * ow;
            const float *src = yb + (size_t)co * n * ow;
            if (acc)
                diffuse_op_add(dst, src, (size_t)n * ow);
            else
                memcpy(dst, src, sizeof(float) * n * ow);
        }
    }
    diffuse_arena_reset(a, mark);
    return 0;
}

/* vae_conv_w with c's weights as float32 (widened once for all bands). */
static int vae_conv(const diffuse_conv2d *c, float *y, const float *x, const vae_geom *g, bool acc,
                    diffuse_arena *a)
{
    size_t mark = diffuse_arena_mark(a);
    const float *wf = diffuse_wmat_f32(&c->w, a);
    int rc = wf ? vae_conv_w(c, wf, y, x, g, acc, a) : -1;
    diffuse_arena_reset(a, mark);
    return rc;
}

int diffuse_conv_banded(const diffuse_conv2d *c, float *y, const float *x, int h, int w, int up,
                        int stride, bool acc, diffuse_arena *a)
{
    const int p = c->k / 2;
    vae_geom g = {.h = h, .w = w, .up = up, .stride = stride, .pad = {p, p, p, p}};
    return vae_conv(c, y, x, &g, acc, a);
}

diffuse_plan diffuse_conv_banded_plan(const diffuse_conv2d *c, int h, int w, int up, int stride)
{
    const int p = c->k / 2;
    vae_geom g = {.h = h, .w = w, .up = up, .stride = stride, .pad = {p, p, p, p}};
    diffuse_arena a;
    if (diffuse_arena_dry(&a))
        return (diffuse_plan){.floats = DIFFUSE_PLAN_NONE};
    float *y = diffuse_arena_push(&a, 1), *x = diffuse_arena_push(&a, 1); /* never touched */
    const size_t inputs = a.used;
    return diffuse_arena_plan(&a, inputs, y && x ? vae_conv(c, y, x, &g, false, &a) : -1);
}

/* ------------------------------------------------------------------ blocks */

/* The three activation buffers a forward pass rotates through. */
typedef struct vae_bufs {
    float *cur;   /* the live activation */
    float *other; /* free; receives the next output */
    float *u;     /* ResNet conv1 output, upsampler staging */
    float *big;   /* the one of cur/other sized for upsampler outputs */
} vae_bufs;

static void vae_swap(vae_bufs *b)
{
    float *t = b->cur;
    b->cur = b->other;
    b->other = t;
}

/* y [cout, h, w] = skip(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))), as
 * diffusers' ResnetBlock2D without time embedding. x [cin, h, w] is
 * overwritten; u [cout, h, w] is scratch. */
static int vae_resnet(const diffuse_resnet *r, float *y, float *x, float *u, int h, int w,
                      diffuse_arena *a)
{
    const int hw = h * w;
    vae_geom g1 = vae_same(h, w, 1), g3 = vae_same(h, w, 3);
    const bool run = !a->dry;
    if (r->shortcut.w.data) {
        if (vae_conv(&r->shortcut, y, x, &g1, false, a))
            return -1;
    } else if (run) {
        memcpy(y, x, sizeof(float) * r->cout * hw);
    }
    if (run)
        diffuse_op_group_norm(x, x, r->norm1.gamma, r->norm1.beta, 1, r->cin, hw, r->groups, r->eps,
                              true);
    if (vae_conv(&r->conv1, u, x, &g3, false, a))
        return -1;
    if (run)
        diffuse_op_group_norm(u, u, r->norm2.gamma, r->norm2.beta, 1, r->cout, hw, r->groups,
                              r->eps, true);
    return vae_conv(&r->conv2, y, u, &g3, true, a);
}

/* cur <- resnet(cur), through `other`. */
static int vae_resnet_step(const diffuse_resnet *r, vae_bufs *b, int h, int w, diffuse_arena *a)
{
    if (vae_resnet(r, b->other, b->cur, b->u, h, w, a))
        return -1;
    vae_swap(b);
    return 0;
}

/* x [C, T] += to_out(softmax(q k^T / sqrt(C)) v), q, k, v = to_q/k/v(GN(x)^T)
 * over the T = h*w tokens (diffusers' Attention: one head, residual).
 * t0, t1: free buffers of C*T floats (the block's `other` and `u`). */
static int vae_attention_forward(const vae_attention *at, float *x, float *t0, float *t1, int h,
                                 int w, diffuse_arena *a)
{
    const int t = h * w, c = at->c;
    size_t mark = diffuse_arena_mark(a), n = (size_t)t * c;
    float *k = diffuse_arena_push(a, n); /* [T, C] */
    float *v = diffuse_arena_push(a, n); /* [T, C] */
    float *s = diffuse_arena_push(a, diffuse_attention_scratch(t, t, c));
    if (!k || !v || !s)
        return -1;
    if (!a->dry) {
        diffuse_op_group_norm(t0, x, at->norm.gamma, at->norm.beta, 1, c, t, at->groups, VAE_EPS,
                              false);          /* [C, T] */
        diffuse_op_transpose(t1, t0, 1, c, t); /* tokens [T, C] */
    }
    if (diffuse_linear_forward(&at->q, t0, t1, t, a) || /* q [T, C] */
        diffuse_linear_forward(&at->k, k, t1, t, a) || diffuse_linear_forward(&at->v, v, t1, t, a))
        return -1;
    if (!a->dry)
        diffuse_op_attention(t1, t0, c, k, v, c, t, t, 1, c, false, s); /* [T, C] */
    diffuse_arena_count(a, diffuse_attention_flops(t, t, c));
    if (diffuse_linear_forward(&at->out, t0, t1, t, a)) /* [T, C] */
        return -1;
    for (int ch = 0; !a->dry && ch < c; ch++)
        for (int j = 0; j < t; j++)
            x[(size_t)ch * t + j] += t0[(size_t)j * c + ch];
    diffuse_arena_reset(a, mark);
    return 0;
}

/* cur <- mid_block(cur) [C, h, w]. */
static int vae_mid_forward(const vae_mid *m, vae_bufs *b, int h, int w, diffuse_arena *a)
{
    if (vae_resnet_step(&m->res[0], b, h, w, a))
        return -1;
    if (m->has_attn && vae_attention_forward(&m->attn, b->cur, b->other, b->u, h, w, a))
        return -1;
    return vae_resnet_step(&m->res[1], b, h, w, a);
}

static void vae_trace(const diffuse_trace *t, const float *x, size_t n, const char *fmt, int i)
{
    char name[64];
    if (!t || !t->fn) /* (a dry pass has no trace) */
        return;
    snprintf(name, sizeof name, fmt, i);
    t->fn(t->user, name, x, n);
}

/* ------------------------------------------------------------------ loading */

static int vae_attention_load(vae_attention *at, diffuse_weights *w, const char *prefix, int c,
                              int groups, char *err)
{
    char n[256];
    at->c = c;
    at->groups = groups;
#define SUB(s) (snprintf(n, sizeof n, "%s.%s", prefix, s), n)
    if (diffuse_norm_load(&at->norm, w, SUB("group_norm"), c, err) ||
        diffuse_linear_load(&at->q, w, SUB("to_q"), c, c, true, err) ||
        diffuse_linear_load(&at->k, w, SUB("to_k"), c, c, true, err) ||
        diffuse_linear_load(&at->v, w, SUB("to_v"), c, c, true, err) ||
        diffuse_linear_load(&at->out, w, SUB("to_out.0"), c, c, true, err))
        return -1;
#undef SUB
    return 0;
}

static int vae_mid_load(vae_mid *m, diffuse_weights *w, const char *prefix,
                        const diffuse_vae_config *cfg, char *err)
{
    char n[128];
    const int c = cfg->channels[cfg->levels - 1];
    m->has_attn = cfg->mid_attention;
    for (int i = 0; i < 2; i++) {
        snprintf(n, sizeof n, "%s.resnets.%d", prefix, i);
        if (diffuse_resnet_load(&m->res[i], w, n, c, c, 0, cfg->groups, VAE_EPS, err))
            return -1;
    }
    snprintf(n, sizeof n, "%s.attentions.0", prefix);
    return m->has_attn ? vae_attention_load(&m->attn, w, n, c, cfg->groups, err) : 0;
}

static int vae_encoder_load(diffuse_vae *v, diffuse_weights *w, char *err)
{
    const diffuse_vae_config *cfg = &v->cfg;
    const int last = cfg->channels[cfg->levels - 1], lpb = cfg->layers_per_block;
    char n[256];
    if (diffuse_conv2d_load(&v->enc_conv_in, w, "vae.encoder.conv_in", cfg->in_channels,
                            cfg->channels[0], 3, err))
        return -1;
    int cin = cfg->channels[0];
    for (int l = 0; l < cfg->levels; l++) {
        const int c = cfg->channels[l];
        for (int j = 0; j < lpb; j++, cin = c) {
            snprintf(n, sizeof n, "vae.encoder.down_blocks.%d.resnets.%d", l, j);
            if (diffuse_resnet_load(&v->enc_res[l * lpb + j], w, n, cin, c, 0, cfg->groups, VAE_EPS,
                                    err))
                return -1;
        }
        snprintf(n, sizeof n, "vae.encoder.down_blocks.%d.downsamplers.0.conv", l);
        if (l < cfg->levels - 1 && diffuse_conv2d_load(&v->enc_down[l], w, n, c, c, 3, err))
            return -1;
    }
    if (vae_mid_load(&v->enc_mid, w, "vae.encoder.mid_block", cfg, err) ||
        diffuse_norm_load(&v->enc_norm_out, w, "vae.encoder.conv_norm_out", last, err) ||
        diffuse_conv2d_load(&v->enc_conv_out, w, "vae.encoder.conv_out", last,
                            2 * cfg->latent_channels, 3, err) ||
        diffuse_conv2d_load(&v->quant_conv, w, "vae.quant_conv", 2 * cfg->latent_channels,
                            2 * cfg->latent_channels, 1, err))
        return -1;
    return 0;
}

static int vae_decoder_load(diffuse_vae *v, diffuse_weights *w, char *err)
{
    const diffuse_vae_config *cfg = &v->cfg;
    const int levels = cfg->levels, last = cfg->channels[levels - 1], lpb = cfg->layers_per_block;
    char n[256];
    if (diffuse_conv2d_load(&v->post_quant_conv, w, "vae.post_quant_conv", cfg->latent_channels,
                            cfg->latent_channels, 1, err) ||
        diffuse_conv2d_load(&v->dec_conv_in, w, "vae.decoder.conv_in", cfg->latent_channels, last,
                            3, err) ||
        vae_mid_load(&v->dec_mid, w, "vae.decoder.mid_block", cfg, err))
        return -1;
    int cin = last;
    for (int i = 0; i < levels; i++) {
        const int c = cfg->channels[levels - 1 - i];
        for (int j = 0; j <= lpb; j++, cin = c) {
            snprintf(n, sizeof n, "vae.decoder.up_blocks.%d.resnets.%d", i, j);
            if (diffuse_resnet_load(&v->dec_res[i * (lpb + 1) + j], w, n, cin, c, 0, cfg->groups,
                                    VAE_EPS, err))
                return -1;
        }
        snprintf(n, sizeof n, "vae.decoder.up_blocks.%d.upsamplers.0.conv", i);
        if (i < levels - 1 && diffuse_conv2d_load(&v->dec_up[i], w, n, c, c, 3, err))
            return -1;
    }
    if (diffuse_norm_load(&v->dec_norm_out, w, "vae.decoder.conv_norm_out", cfg->channels[0],
                          err) ||
        diffuse_conv2d_load(&v->dec_conv_out, w, "vae.decoder.conv_out", cfg->channels[0],
                            cfg->out_channels, 3, err))
        return -1;
    return 0;
}

static int vae_config_check(const diffuse_vae_config *cfg, char *err)
{
    if (cfg->levels < 1 || cfg->levels > DIFFUSE_MAX_LEVELS)
        return diffuse_fail(err, "VAE config: %d levels (1 to %d supported)", cfg->levels,
                            DIFFUSE_MAX_LEVELS);
    if (cfg->layers_per_block < 1 || cfg->layers_per_block > VAE_MAX_LAYERS)
        return diffuse_fail(err, "VAE config: layers_per_block %d", cfg->layers_per_block);
    if (cfg->in_channels < 1 || cfg->out_channels < 1 || cfg->latent_channels < 1 ||
        cfg->groups < 1)
        return diffuse_fail(err, "VAE config: channel counts and groups must be positive");
    for (int l = 0; l < cfg->levels; l++)
        if (cfg->channels[l] < 1 || cfg->channels[l] % cfg->groups)
            return diffuse_fail(err,
                                "VAE config: %d channels at level %d, not a multiple of %d "
                                "groups",
                                cfg->channels[l], l, cfg->groups);
    return 0;
}

int diffuse_vae_load(const diffuse_vae_config *cfg, diffuse_weights *w, diffuse_vae **out,
                     char *err)
{
    *out = NULL;
    if (vae_config_check(cfg, err))
        return -1;
    diffuse_vae *v = calloc(1, sizeof *v);
    if (v) {
        v->cfg = *cfg;
        v->enc_res = calloc((size_t)cfg->levels * cfg->layers_per_block, sizeof *v->enc_res);
        v->dec_res = calloc((size_t)cfg->levels * (cfg->layers_per_block + 1), sizeof *v->dec_res);
    }
    if (!v || !v->enc_res || !v->dec_res) {
        diffuse_vae_free(v);
        return diffuse_fail(err, "out of memory loading the VAE");
    }
    if (vae_encoder_load(v, w, err) || vae_decoder_load(v, w, err)) {
        diffuse_vae_free(v);
        return -1;
    }
    *out = v;
    return 0;
}

void diffuse_vae_free(diffuse_vae *v)
{
    if (!v)
        return;
    free(v->enc_res);
    free(v->dec_res);
    free(v);
}

/* ------------------------------------------------------------------ memory plan */

/* The three activation buffers of a pass (floats). What a pass pushes on top
 * of them is not mirrored here: diffuse_vae_workspace runs the pass dry. */
typedef struct vae_plan {
    size_t big, other, u;
} vae_plan;

/* Encoder: outputs only shrink after conv_in, so the three buffers are equal:
 * the largest activation at any level. h, w: image size. */
static vae_plan vae_encoder_plan(const diffuse_vae *v, int h, int w)
{
    const diffuse_vae_config *cfg = &v->cfg;
    size_t act = (size_t)cfg->channels[0] * h * w;
    for (int l = 0; l < cfg->levels; l++) {
        vae_max(&act, (size_t)cfg->channels[l] * h * w);
        if (l < cfg->levels - 1) {
            h /= 2;
            w /= 2;
        }
    }
    vae_max(&act, (size_t)2 * cfg->latent_channels * h * w);
    return (vae_plan){act, act, act};
}

/* Decoder: every ResNet output (and conv1 buffer) fits `res`; only upsampler
 * outputs, C x 2h x 2w, may be larger, and they always land in `big`.
 * h, w: latent size. */
static vae_plan vae_decoder_plan(const diffuse_vae *v, int h, int w)
{
    const diffuse_vae_config *cfg = &v->cfg;
    const int levels = cfg->levels;
    vae_plan p = {.u = (size_t)cfg->latent_channels * h * w}; /* post_quant_conv output */
    size_t res = (size_t)cfg->channels[levels - 1] * h * w, up = 0;
    for (int i = 0; i < levels; i++) {
        const int c = cfg->channels[levels - 1 - i];
        vae_max(&res, (size_t)c * h * w);
        if (i < levels - 1) {
            h *= 2;
            w *= 2;
            vae_max(&up, (size_t)c * h * w);
        }
    }
    p.other = res;
    p.big = res > up ? res : up;
    vae_max(&p.u, res);
    return p;
}

static int vae_factor(const diffuse_vae *v)
{
    return 1 << (v->cfg.levels - 1);
}

static bool vae_size_ok(const diffuse_vae *v, int height, int width)
{
    const int f = vae_factor(v);
    return height > 0 && width > 0 && height <= VAE_MAX_SIDE && width <= VAE_MAX_SIDE &&
           height % f == 0 && width % f == 0;
}

static int vae_encode_run(const diffuse_vae *v, float *moments, const float *image, int h, int w,
                          diffuse_arena *a, const diffuse_trace *trace);
static int vae_decode_run(const diffuse_vae *v, float *image, const float *latent, int h, int w,
                          diffuse_arena *a, const diffuse_trace *trace);

/* One pass (encode or decode of a height x width image) run on a dry arena
 * after its input and output. */
diffuse_plan diffuse_vae_plan(const diffuse_vae *v, bool encode, int height, int width)
{
    const diffuse_vae_config *cfg = &v->cfg;
    const int f = vae_factor(v), h = height / f, w = width / f;
    diffuse_arena a;
    if (!vae_size_ok(v, height, width) || diffuse_arena_dry(&a))
        return (diffuse_plan){.floats = DIFFUSE_PLAN_NONE};
    const size_t px = (size_t)height * width, lat = (size_t)h * w * cfg->latent_channels;
    float *in = diffuse_arena_push(&a, encode ? px * cfg->in_channels : lat);
    float *out = diffuse_arena_push(&a, encode ? 2 * lat : px * cfg->out_channels);
    const size_t inputs = a.used;
    int rc = !in || !out ? -1
             : encode    ? vae_encode_run(v, out, in, height, width, &a, NULL)
                         : vae_decode_run(v, out, in, h, w, &a, NULL);
    return diffuse_arena_plan(&a, inputs, rc);
}

size_t diffuse_vae_workspace(const diffuse_vae *v, int height, int width)
{
    if (!vae_size_ok(v, height, width))
        return 0;
    size_t te = diffuse_vae_plan(v, true, height, width).floats;
    size_t td = diffuse_vae_plan(v, false, height, width).floats;
    return te > td ? te : td;
}

/* Pushes the plan's three buffers; cur = big. */
static int vae_bufs_push(vae_bufs *b, const vae_plan *p, diffuse_arena *a)
{
    b->big = b->cur = diffuse_arena_push(a, p->big);
    b->other = diffuse_arena_push(a, p->other);
    b->u = diffuse_arena_push(a, p->u);
    return b->cur && b->other && b->u ? 0 : -1;
}

static int vae_check(const diffuse_vae *v, int height, int width, char *err)
{
    if (vae_size_ok(v, height, width))
        return 0;
    return diffuse_fail(err,
                        "VAE: image size %dx%d must be a positive multiple of %d, at most "
                        "%d",
                        width, height, vae_factor(v), VAE_MAX_SIDE);
}

static int vae_out_of_memory(const diffuse_vae *v, int height, int width, const diffuse_arena *a,
                             char *err)
{
    return diffuse_fail(err,
                        "internal: VAE work memory exhausted, or a oneDNN call refused (arena "
                        "%zu floats, %zu needed at %dx%d)",
                        a->cap, diffuse_vae_workspace(v, height, width), width, height);
}

/* ------------------------------------------------------------------ encode */

/* b->cur [C, h, w] <- down block l: resnets, then the downsampler (F.pad
 * right 1 and bottom 1, conv 3x3 stride 2) on all but the last level. */
static int vae_down_block(const diffuse_vae *v, int l, vae_bufs *b, int *h, int *w,
                          diffuse_arena *a)
{
    const int lpb = v->cfg.layers_per_block;
    for (int j = 0; j < lpb; j++)
        if (vae_resnet_step(&v->enc_res[l * lpb + j], b, *h, *w, a))
            return -1;
    if (l == v->cfg.levels - 1)
        return 0;
    vae_geom g = {.h = *h, .w = *w, .up = 1, .stride = 2, .pad = {0, 0, 1, 1}};
    if (vae_conv(&v->enc_down[l], b->other, b->cur, &g, false, a))
        return -1;
    vae_swap(b);
    *h /= 2;
    *w /= 2;
    return 0;
}

static int vae_encode_run(const diffuse_vae *v, float *moments, const float *image, int h, int w,
                          diffuse_arena *a, const diffuse_trace *trace)
{
    const diffuse_vae_config *cfg = &v->cfg;
    vae_plan p = vae_encoder_plan(v, h, w);
    vae_bufs b;
    vae_geom g = vae_same(h, w, 3);
    if (vae_bufs_push(&b, &p, a) || vae_conv(&v->enc_conv_in, b.cur, image, &g, false, a))
        return -1; /* [ch0, H, W] */
    for (int l = 0; l < cfg->levels; l++) {
        if (vae_down_block(v, l, &b, &h, &w, a))
            return -1; /* [ch_l, H/2^(l+1), ...] */
        vae_trace(trace, b.cur, (size_t)cfg->channels[l] * h * w, "encoder.down_blocks.%d", l);
    }
    const int last = cfg->channels[cfg->levels - 1], z = 2 * cfg->latent_channels;
    if (vae_mid_forward(&v->enc_mid, &b, h, w, a))
        return -1; /* [last, h, w] */
    vae_trace(trace, b.cur, (size_t)last * h * w, "encoder.mid_block", 0);
    if (!a->dry)
        diffuse_op_group_norm(b.cur, b.cur, v->enc_norm_out.gamma, v->enc_norm_out.beta, 1, last,
                              h * w, cfg->groups, VAE_EPS, true);
    g = vae_same(h, w, 3);
    if (vae_conv(&v->enc_conv_out, b.other, b.cur, &g, false, a))
        return -1; /* [2*latent, h, w] */
    vae_trace(trace, b.other, (size_t)z * h * w, "encoder", 0);
    g = vae_same(h, w, 1);
    if (vae_conv(&v->quant_conv, moments, b.other, &g, false, a))
        return -1; /* [2*latent, h, w] */
    vae_trace(trace, moments, (size_t)z * h * w, "quant_conv", 0);
    return 0;
}

int diffuse_vae_encode(const diffuse_vae *v, float *moments, const float *image, int height,
                       int width, diffuse_arena *a, const diffuse_trace *trace, char *err)
{
    if (vae_check(v, height, width, err))
        return -1;
    size_t mark = diffuse_arena_mark(a);
    int rc = vae_encode_run(v, moments, image, height, width, a, trace);
    diffuse_arena_reset(a, mark);
    return rc ? vae_out_of_memory(v, height, width, a, err) : 0;
}

/* ------------------------------------------------------------------ decode */

/* b->cur [C, h, w] <- up block i: layers_per_block + 1 resnets, then on all
 * but the last level nearest 2x + conv 3x3, written into b->big (its input
 * moved to b->u first when it sits there). */
static int vae_up_block(const diffuse_vae *v, int i, vae_bufs *b, int *h, int *w, diffuse_arena *a)
{
    const int lpb = v->cfg.layers_per_block, c = v->cfg.channels[v->cfg.levels - 1 - i];
    for (int j = 0; j <= lpb; j++)
        if (vae_resnet_step(&v->dec_res[i * (lpb + 1) + j], b, *h, *w, a))
            return -1;
    if (i == v->cfg.levels - 1)
        return 0;
    const float *src = b->cur;
    if (b->cur == b->big) {
        if (!a->dry)
            memcpy(b->u, b->cur, sizeof(float) * c * *h * *w);
        src = b->u;
    } else {
        b->other = b->cur;
    }
    vae_geom g = {.h = *h, .w = *w, .up = 2, .stride = 1, .pad = {1, 1, 1, 1}};
    b->cur = b->big;
    if (vae_conv(&v->dec_up[i], b->cur, src, &g, false, a))
        return -1; /* [C, 2h, 2w] */
    *h *= 2;
    *w *= 2;
    return 0;
}

static int vae_decode_run(const diffuse_vae *v, float *image, const float *latent, int h, int w,
                          diffuse_arena *a, const diffuse_trace *trace)
{
    const diffuse_vae_config *cfg = &v->cfg;
    const int last = cfg->channels[cfg->levels - 1];
    vae_plan p = vae_decoder_plan(v, h, w);
    vae_bufs b;
    vae_geom g1 = vae_same(h, w, 1), g3 = vae_same(h, w, 3);
    if (vae_bufs_push(&b, &p, a) || vae_conv(&v->post_quant_conv, b.u, latent, &g1, false, a))
        return -1; /* [latent, h, w] */
    vae_trace(trace, b.u, (size_t)cfg->latent_channels * h * w, "post_quant_conv", 0);
    if (vae_conv(&v->dec_conv_in, b.cur, b.u, &g3, false, a) ||
        vae_mid_forward(&v->dec_mid, &b, h, w, a))
        return -1; /* [last, h, w] */
    vae_trace(trace, b.cur, (size_t)last * h * w, "decoder.mid_block", 0);
    for (int i = 0; i < cfg->levels; i++) {
        if (vae_up_block(v, i, &b, &h, &w, a))
            return -1; /* [ch, h*2^(i+1), ...] */
        vae_trace(trace, b.cur, (size_t)cfg->channels[cfg->levels - 1 - i] * h * w,
                  "decoder.up_blocks.%d", i);
    }
    if (!a->dry)
        diffuse_op_group_norm(b.cur, b.cur, v->dec_norm_out.gamma, v->dec_norm_out.beta, 1,
                              cfg->channels[0], h * w, cfg->groups, VAE_EPS, true);
    g3 = vae_same(h, w, 3);
    if (vae_conv(&v->dec_conv_out, image, b.cur, &g3, false, a))
        return -1; /* [out, H, W] */
    vae_trace(trace, image, (size_t)cfg->out_channels * h * w, "decoder", 0);
    return 0;
}

int diffuse_vae_decode(const diffuse_vae *v, float *image, const float *latent, int height,
                       int width, diffuse_arena *a, const diffuse_trace *trace, char *err)
{
    if (vae_check(v, height, width, err))
        return -1;
    const int f = vae_factor(v);
    size_t mark = diffuse_arena_mark(a);
    int rc = vae_decode_run(v, image, latent, height / f, width / f, a, trace);
    diffuse_arena_reset(a, mark);
    return rc ? vae_out_of_memory(v, height, width, a, err) : 0;
}

/* ------------------------------------------------------------------ exact decode in bands */

/* The decoder's memory grows with the image: about 512 floats per image pixel
 * at its last levels (2 GiB at 1024x1024, 8 GiB at 2048x2048). The banded
 * decode below needs the mid block's output (at 1/f, a few floats per pixel)
 * and buffers for one band of image rows, and its result is the whole-image
 * decode's, up to the order of the statistics' sums.
 *
 * Bands cannot simply be decoded one by one: every GroupNorm after the mid
 * block normalises over the whole image, and its statistics depend on all of
 * its input, which depends on the GroupNorms before it. So the decode runs in
 * passes. Pass k runs every band from the last kept tensor up to GroupNorm k's
 * input and gathers its statistics over the band's own rows (each image row
 * exactly once); the last pass runs the bands to the end and writes the image.
 * A band carries the rows its receptive field needs around its own (one per
 * 3x3 convolution on each side, at that convolution's scale) and computes
 * them again; nothing is blended, there are no seams.
 *
 * Later passes repeat ever longer prefixes, so the decode costs about 12
 * whole-image decodes with only the mid block's output kept (SD's VAE). Each
 * up level's input can be kept whole as well (tiling.keep, bit l); keeping
 * levels 1 and 2 costs 5.7 decodes and 160 floats per image pixel. The
 * pipeline picks the fastest tiling that fits the memory there is
 * (diffuse_vae_tilings). */

#define VB_MAX_UNITS (DIFFUSE_MAX_LEVELS * (VAE_MAX_LAYERS + 2) + 1)

typedef enum { VB_RESNET, VB_UP, VB_OUT } vb_kind;

/* One step of the decoder after its mid block. */
typedef struct vb_unit {
    vb_kind kind;
    const diffuse_resnet *res;     /* VB_RESNET */
    const diffuse_conv2d *conv;    /* VB_UP, VB_OUT */
    const diffuse_norm *norm;      /* VB_OUT: norm_out */
    const float *w, *w1, *w2, *ws; /* float32 weights: conv; conv1, conv2, shortcut */
    int cin, cout;                 /* channels in and out */
    int level;                     /* its input is at 1/2^(levels-1-level) */
    int gn;                        /* its first GroupNorm's index; -1 for VB_UP */
} vb_unit;

/* A place in the tail: the input of unit `unit` (half 0), or a ResNet's conv1
 * output (half 1, GroupNorm norm2's input). unit == count: the image. */
typedef struct vb_point {
    int unit, half;
} vb_point;

typedef struct vb_tail {
    vb_unit u[VB_MAX_UNITS];
    int count, norms; /* units; GroupNorms */
    int levels, h, w; /* levels; latent size */
    int groups;
} vb_tail;

static void vb_tail_of(const diffuse_vae *v, int h, int w, vb_tail *t)
{
    const diffuse_vae_config *cfg = &v->cfg;
    const int levels = cfg->levels, lpb = cfg->layers_per_block;
    int n = 0, gn = 0, cin = cfg->channels[levels - 1];
    *t = (vb_tail){.levels = levels, .h = h, .w = w, .groups = cfg->groups};
    for (int i = 0; i < levels; i++) {
        const int c = cfg->channels[levels - 1 - i];
        for (int j = 0; j <= lpb; j++, gn += 2, cin = c)
            t->u[n++] = (vb_unit){.kind = VB_RESNET,
                                  .res = &v->dec_res[i * (lpb + 1) + j],
                                  .cin = cin,
                                  .cout = c,
                                  .level = i,
                                  .gn = gn};
        if (i < levels - 1)
            t->u[n++] = (vb_unit){
                .kind = VB_UP, .conv = &v->dec_up[i], .cin = c, .cout = c, .level = i, .gn = -1};
    }
    t->u[n++] = (vb_unit){.kind = VB_OUT,
                          .conv = &v->dec_conv_out,
                          .norm = &v->dec_norm_out,
                          .cin = cfg->channels[0],
                          .cout = cfg->out_channels,
                          .level = levels - 1,
                          .gn = gn++};
    t->count = n;
    t->norms = gn;
}

/* Rows and columns at a point (the image's, shifted down by its scale). */
static int vb_level(const vb_tail *t, vb_point p)
{
    return p.unit < t->count ? t->u[p.unit].level : t->levels - 1;
}
static int vb_rows(const vb_tail *t, vb_point p)
{
    return t->h << vb_level(t, p);
}
static int vb_cols(const vb_tail *t, vb_point p)
{
    return t->w << vb_level(t, p);
}
static int vb_channels(const vb_tail *t, vb_point p)
{
    if (p.unit == t->count)
        return t->u[p.unit - 1].cout;
    return p.half ? t->u[p.unit].cout : t->u[p.unit].cin;
}

/* The point where GroupNorm k reads its input. */
static vb_point vb_norm_point(const vb_tail *t, int k)
{
    for (int i = 0; i < t->count; i++)
        if (t->u[i].gn >= 0 && k >= t->u[i].gn &&
            k < t->u[i].gn + (t->u[i].kind == VB_RESNET ? 2 : 1))
            return (vb_point){i, k - t->u[i].gn};
    return (vb_point){t->count, 0};
}

/* A 3x3 convolution's output rows from input rows [r0, r1) of n: one fewer on
 * each side that is not the image's edge (there it pads). */
static void vb_shrink(int r[2], int n)
{
    r[0] += r[0] > 0;
    r[1] -= r[1] < n;
}

/* Input rows [r0, r1) of n that a 3x3 convolution needs for output rows r. */
static void vb_grow(int r[2], int n)
{
    r[0] = r[0] > 0 ? r[0] - 1 : 0;
    r[1] = r[1] < n ? r[1] + 1 : n;
}

/* Unit i's rows from its input rows r: conv1's output m (a ResNet's) and
 * its output o. The one home of the forward row arithmetic (vb_need is its
 * inverse). */
static void vb_step(const vb_tail *t, int i, const int r[2], int m[2], int o[2])
{
    const int n = vb_rows(t, (vb_point){i, 0});
    m[0] = r[0];
    m[1] = r[1];
    if (t->u[i].kind == VB_UP) { /* a 3x3 convolution of the nearest 2x upsample */
        o[0] = 2 * r[0] + (r[0] > 0);
        o[1] = 2 * r[1] - (r[1] < n);
        return;
    }
    vb_shrink(m, n);
    o[0] = m[0];
    o[1] = m[1];
    if (t->u[i].kind == VB_RESNET)
        vb_shrink(o, n);
}

/* need[i]: the rows of unit i's input a band needs for rows r at point `to`,
 * for i from from.unit to to.unit (with to.half, need[to.unit] is what that
 * ResNet's conv1 reads for them). */
static void vb_need(const vb_tail *t, vb_point from, vb_point to, const int r0[2], int (*need)[2])
{
    int r[2] = {r0[0], r0[1]};
    if (to.half) /* conv1 of that ResNet */
        vb_grow(r, vb_rows(t, (vb_point){to.unit, 0}));
    need[to.unit][0] = r[0];
    need[to.unit][1] = r[1];
    for (int i = to.unit - 1; i >= from.unit; i--) {
        const int n = vb_rows(t, (vb_point){i, 0});
        switch (t->u[i].kind) {
        case VB_RESNET:
            vb_grow(r, n);
            vb_grow(r, n);
            break;
        case VB_UP: { /* through the nearest 2x upsample */
            int up[2] = {r[0], r[1]};
            vb_grow(up, 2 * n);
            r[0] = up[0] / 2;
            r[1] = (up[1] - 1) / 2 + 1;
            break;
        }
        case VB_OUT:
            vb_grow(r, n);
            break;
        }
        need[i][0] = r[0];
        need[i][1] = r[1];
    }
}

/* The 3x3 geometry of input rows r (of n) at width w, up 1 or 2. */
static vae_geom vb_geom(const int r[2], int n, int w, int up)
{
    return (vae_geom){.h = r[1] - r[0],
                      .w = w,
                      .up = up,
                      .stride = 1,
                      .pad = {r[0] == 0, 1, r[1] == n, 1},
                      .banded = true};
}

/* The floats one band needs: two activations, a conv1 output and a shortcut
 * output, the largest over the units run from `from` to `to`, each starting
 * from the rows it needs (need, vb_need). */
static void vb_band_sizes(const vb_tail *t, vb_point from, vb_point to, const int (*need)[2],
                          size_t sz[3])
{
    sz[0] = sz[1] = sz[2] = 0;
    for (int i = from.unit; i < to.unit || (i == to.unit && to.half); i++) {
        const vb_unit *u = &t->u[i];
        const int w = vb_cols(t, (vb_point){i, 0}), *r = need[i];
        int m[2], o[2];
        vb_step(t, i, r, m, o);
        const size_t in = (size_t)(r[1] - r[0]) * w;
        const int ow = u->kind == VB_UP ? 2 * w : w;
        vae_max(&sz[0], (size_t)u->cin * in);
        if (u->kind == VB_RESNET) {
            vae_max(&sz[1], (size_t)u->cout * (m[1] - m[0]) * w);
            if (i == to.unit)
                break; /* stops at conv1's output */
            if (u->res->shortcut.w.data)
                vae_max(&sz[2], (size_t)u->cout * in);
        }
        vae_max(&sz[0], (size_t)u->cout * (o[1] - o[0]) * ow);
    }
}

/* x [c, r1 - r0, w] keeps only rows keep (within r), moved to its start. */
static void vb_crop(float *x, int c, int w, int r[2], const int keep[2], bool run)
{
    const size_t rows = (size_t)(r[1] - r[0]), kept = (size_t)(keep[1] - keep[0]);
    if (run && kept != rows)
        for (int ch = 0; ch < c; ch++)
            memmove(x + ch * kept * w, x + (ch * rows + (size_t)(keep[0] - r[0])) * w,
                    sizeof(float) * kept * w);
    r[0] = keep[0];
    r[1] = keep[1];
}

typedef struct vb_state {
    const vb_tail *t;
    const float *mean, *rstd; /* [norms][groups]: the statistics known so far */
    diffuse_arena *a;
} vb_state;

/* GroupNorm k + SiLU in place on x [c, hw]. */
static void vb_norm(const vb_state *s, const diffuse_norm *nm, int k, float *x, int c, int hw)
{
    const int g = s->t->groups;
    if (!s->a->dry)
        diffuse_op_group_norm_with(x, x, nm->gamma, nm->beta, c, hw, g, s->mean + (size_t)k * g,
                                   s->rstd + (size_t)k * g, true);
}

/* Runs one band from `from` (rows r, in cur) to `to`, each unit from the
 * rows it needs (need); on return *out holds the activation at `to` and r its
 * rows. cur, nxt hold sz[0] floats, u sz[1], sk sz[2]. */
static int vb_run(const vb_state *s, vb_point from, vb_point to, const int (*need)[2], int r[2],
                  float *cur, float *nxt, float *u, float *sk, float **out)
{
    const vb_tail *t = s->t;
    diffuse_arena *a = s->a;
    const bool run = !a->dry;
    for (int i = from.unit; i < to.unit || (i == to.unit && to.half); i++) {
        const vb_unit *un = &t->u[i];
        const int n = vb_rows(t, (vb_point){i, 0}), w = vb_cols(t, (vb_point){i, 0});
        if (r[0] > need[i][0] || r[1] < need[i][1])
            return -1;                             /* a band short of rows: a bug */
        vb_crop(cur, un->cin, w, r, need[i], run); /* (an upsample rounds up) */
        const int rows = r[1] - r[0];
        const size_t hw = (size_t)rows * w;
        vae_geom g = vb_geom(r, n, w, un->kind == VB_UP ? 2 : 1);
        int m[2], o[2];
        vb_step(t, i, r, m, o);
        if (un->kind == VB_UP) {
            if (vae_conv_w(un->conv, un->w, nxt, cur, &g, false, a))
                return -1;
        } else if (un->kind == VB_OUT) {
            vb_norm(s, un->norm, un->gn, cur, un->cin, (int)hw);
            if (vae_conv_w(un->conv, un->w, nxt, cur, &g, false, a))
                return -1;
        } else {
            const diffuse_resnet *rs = un->res;
            /* the skip, the output rows of x (through the 1x1 shortcut);
             * none when the pass stops at conv1's output */
            const float *skip = cur;
            size_t plane = hw;
            if (rs->shortcut.w.data && i < to.unit) {
                vae_geom g1 = vae_same(rows, w, 1);
                g1.banded = true;
                if (vae_conv_w(&rs->shortcut, un->ws, sk, cur, &g1, false, a))
                    return -1;
                skip = sk;
            }
            if (i < to.unit && run)
                for (int c = 0; c < un->cout; c++)
                    memcpy(nxt + (size_t)c * (o[1] - o[0]) * w,
                           skip + c * plane + (size_t)(o[0] - r[0]) * w,
                           sizeof(float) * (o[1] - o[0]) * w);
            vb_norm(s, &rs->norm1, un->gn, cur, un->cin, (int)hw);
            if (vae_conv_w(&rs->conv1, un->w1, u, cur, &g, false, a))
                return -1;
            if (i == to.unit) { /* norm2's input */
                r[0] = m[0];
                r[1] = m[1];
                *out = u;
                return 0;
            }
            vb_norm(s, &rs->norm2, un->gn + 1, u, un->cout, (m[1] - m[0]) * w);
            vae_geom g2 = vb_geom(m, n, w, 1);
            if (vae_conv_w(&rs->conv2, un->w2, nxt, u, &g2, true, a))
                return -1;
        }
        r[0] = o[0];
        r[1] = o[1];
        float *tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    *out = cur;
    return 0;
}

/* The unit whose input is up level l's (l >= 1): its first ResNet. */
static int vb_level_unit(const vb_tail *t, int l)
{
    for (int i = 0; i < t->count; i++)
        if (t->u[i].level == l && t->u[i].kind == VB_RESNET)
            return i;
    return 0;
}

/* Everything a banded decode keeps across its passes. */
typedef struct vb_decode {
    vb_state s;
    const diffuse_vae_tiling *tiling;
    float *kept[DIFFUSE_MAX_LEVELS]; /* up level l's input [C, rows, cols], or NULL */
    bool stored[DIFFUSE_MAX_LEVELS];
    float *mean, *rstd; /* [norms][groups] */
    double *acc;        /* [groups][3] */
    int (*stop)(void *);
    void *stop_user;
} vb_decode;

/* The latest kept level input at or before p, stored already. */
static int vb_start(const vb_decode *d, vb_point p)
{
    int l = 0;
    for (int i = 1; i < d->s.t->levels; i++)
        if (d->stored[i] && vb_level_unit(d->s.t, i) <= p.unit)
            l = i;
    return l;
}

enum { VB_STATS, VB_IMAGE };

/* One pass over every band: from the latest kept tensor to p; then gather
 * GroupNorm k's statistics there (VB_STATS; and keep the tensor when p is a
 * kept level's input), or write the image (VB_IMAGE, p the end). Returns 1
 * when stopped. */
static int vb_pass(vb_decode *d, vb_point p, int what, int k, float *image)
{
    const vb_tail *t = d->s.t;
    diffuse_arena *a = d->s.a;
    const int lf = vb_start(d, p), shift = t->levels - 1 - vb_level(t, p);
    const vb_point from = {lf ? vb_level_unit(t, lf) : 0, 0};
    const int image_rows = vb_rows(t, (vb_point){t->count, 0}), from_rows = vb_rows(t, from);
    const int from_cols = vb_cols(t, from), cols = vb_cols(t, p), c = vb_channels(t, p);
    const int kl = what == VB_STATS && p.half == 0 && p.unit == vb_level_unit(t, vb_level(t, p))
                       ? vb_level(t, p)
                       : 0; /* the level whose input p is, when it is kept */
    float *keep = kl && d->kept[kl] && !d->stored[kl] ? d->kept[kl] : NULL;
    const float *src = lf ? d->kept[lf] : d->kept[0];
    const int band = d->tiling->rows;
    int last_key[4] = {-1, -1, -1, -1};
    double last_flops = 0, last_layers = 0;
    if (what == VB_STATS && !a->dry)
        memset(d->acc, 0, sizeof(double) * 3 * t->groups);
    for (int y0 = 0; y0 < image_rows; y0 += band) {
        const int y1 = y0 + band < image_rows ? y0 + band : image_rows;
        const int core[2] = {y0 >> shift, y1 >> shift};
        int need[VB_MAX_UNITS + 1][2];
        vb_need(t, from, p, core, need);
        int r[2] = {need[from.unit][0], need[from.unit][1]};
        /* bands that reach no edge of the image at `from` (nor, then, at any
         * later point) only differ by where they are: the same work */
        const bool edge = r[0] == 0 || r[1] == from_rows;
        const int key[4] = {r[1] - r[0], edge ? core[0] : -1, edge ? core[1] : -1,
                            core[1] - core[0]};
        if (a->dry && !memcmp(key, last_key, sizeof key)) { /* the same band again */
            a->flops += last_flops;
            a->layers += last_layers;
            continue;
        }
        if (!a->dry && d->stop && d->stop(d->stop_user))
            return 1;
        const double f0 = a->flops, l0 = a->layers;
        size_t sz[3], mark = diffuse_arena_mark(a);
        vb_band_sizes(t, from, p, (const int(*)[2])need, sz);
        float *cur = diffuse_arena_push(a, sz[0]), *nxt = diffuse_arena_push(a, sz[0]);
        float *u = diffuse_arena_push(a, sz[1]), *sk = diffuse_arena_push(a, sz[2]), *act;
        if (!cur || !nxt || !u || !sk)
            return -1;
        const int cf = vb_channels(t, from);
        for (int ch = 0; !a->dry && ch < cf; ch++)
            memcpy(cur + (size_t)ch * (r[1] - r[0]) * from_cols,
                   src + ((size_t)ch * from_rows + r[0]) * from_cols,
                   sizeof(float) * (r[1] - r[0]) * from_cols);
        if (vb_run(&d->s, from, p, (const int(*)[2])need, r, cur, nxt, u, sk, &act))
            return -1;
        if (r[0] > core[0] || r[1] < core[1])
            return -1; /* a band short of its own rows: a bug */
        const size_t plane = (size_t)(r[1] - r[0]) * cols, off = (size_t)(core[0] - r[0]) * cols;
        const size_t len = (size_t)(core[1] - core[0]) * cols;
        float *dst = what == VB_IMAGE ? image : keep;
        const int rows_at_p = vb_rows(t, p);
        for (int ch = 0; dst && !a->dry && ch < c; ch++)
            memcpy(dst + ((size_t)ch * rows_at_p + core[0]) * cols, act + ch * plane + off,
                   sizeof(float) * len);
        if (what == VB_STATS && !a->dry)
            diffuse_op_group_moments(d->acc, act + off, c, t->groups, plane, len);
        diffuse_arena_reset(a, mark);
        memcpy(last_key, key, sizeof key);
        last_flops = a->flops - f0;
        last_layers = a->layers - l0;
    }
    if (keep)
        d->stored[kl] = true;
    if (what == VB_STATS && !a->dry)
        diffuse_op_group_norm_stats(d->mean + (size_t)k * t->groups,
                                    d->rstd + (size_t)k * t->groups, d->acc, t->groups, VAE_EPS);
    return 0;
}

static bool vb_tiling_ok(const diffuse_vae *v, int height, diffuse_vae_tiling t)
{
    const int f = vae_factor(v);
    unsigned levels = (1u << v->cfg.levels) - 1;
    return t.rows > 0 && t.rows % f == 0 && t.rows < height && !(t.keep & ~levels & ~1u);
}

/* The banded decode (t.rows > 0): the mid block on the whole latent, kept;
 * the tail's weights widened once; then the passes. Returns 1 when stopped. */
static int vb_decode_run(const diffuse_vae *v, float *image, const float *latent, int h, int w,
                         diffuse_vae_tiling tiling, diffuse_arena *a, const diffuse_trace *trace,
                         int (*stop)(void *), void *stop_user)
{
    const diffuse_vae_config *cfg = &v->cfg;
    const int last = cfg->channels[cfg->levels - 1];
    vb_tail *t = malloc(sizeof *t);
    if (!t)
        return -1;
    vb_tail_of(v, h, w, t);
    vb_decode d = {.s = {.t = t, .a = a}, .tiling = &tiling, .stop = stop, .stop_user = stop_user};
    int rc = -1;
    /* what the passes keep: the mid block's output (its `big` buffer, where
     * the mid block leaves it), kept levels, statistics */
    const size_t act = (size_t)last * h * w;
    vae_plan p = {
        act, act,
        act > (size_t)cfg->latent_channels * h * w ? act : (size_t)cfg->latent_channels * h * w};
    vae_bufs b;
    d.kept[0] = b.big = b.cur = diffuse_arena_push(a, act);
    for (int l = 1; l < t->levels; l++)
        if (tiling.keep >> l & 1) {
            const vb_point p = {vb_level_unit(t, l), 0};
            d.kept[l] =
                diffuse_arena_push(a, (size_t)vb_channels(t, p) * vb_rows(t, p) * vb_cols(t, p));
            if (!d.kept[l])
                goto out;
        }
    d.mean = diffuse_arena_push(a, (size_t)t->norms * t->groups);
    d.rstd = diffuse_arena_push(a, (size_t)t->norms * t->groups);
    d.acc = (double *)diffuse_arena_push(a, (size_t)6 * t->groups);
    d.s.mean = d.mean;
    d.s.rstd = d.rstd;
    if (!d.kept[0] || !d.mean || !d.rstd || !d.acc)
        goto out;
    /* the mid block, whole */
    size_t mark = diffuse_arena_mark(a);
    vae_geom g1 = vae_same(h, w, 1), g3 = vae_same(h, w, 3);
    b.other = diffuse_arena_push(a, p.other);
    b.u = diffuse_arena_push(a, p.u);
    if (!b.other || !b.u || vae_conv(&v->post_quant_conv, b.u, latent, &g1, false, a))
        goto out;
    vae_trace(trace, b.u, (size_t)cfg->latent_channels * h * w, "post_quant_conv", 0);
    if (vae_conv(&v->dec_conv_in, b.cur, b.u, &g3, false, a) ||
        vae_mid_forward(&v->dec_mid, &b, h, w, a))
        goto out;
    vae_trace(trace, b.cur, act, "decoder.mid_block", 0);
    if (b.cur != d.kept[0] && !a->dry) /* (two ResNets: it is back where it started) */
        memcpy(d.kept[0], b.cur, sizeof(float) * act);
    diffuse_arena_reset(a, mark);
    /* the tail's weights, float32 for every band */
    for (int i = 0; i < t->count; i++) {
        vb_unit *u = &t->u[i];
        if (u->kind == VB_RESNET) {
            u->w1 = diffuse_wmat_f32(&u->res->conv1.w, a);
            u->w2 = diffuse_wmat_f32(&u->res->conv2.w, a);
            u->ws = u->res->shortcut.w.data ? diffuse_wmat_f32(&u->res->shortcut.w, a) : NULL;
            if (!u->w1 || !u->w2 || (u->res->shortcut.w.data && !u->ws))
                goto out;
        } else if (!(u->w = diffuse_wmat_f32(&u->conv->w, a))) {
            goto out;
        }
    }
    for (int k = 0; k < t->norms; k++)
        if ((rc = vb_pass(&d, vb_norm_point(t, k), VB_STATS, k, NULL)))
            goto out;
    rc = vb_pass(&d, (vb_point){t->count, 0}, VB_IMAGE, 0, image);
    if (!rc)
        vae_trace(trace, image,
                  (size_t)cfg->out_channels * vb_rows(t, (vb_point){t->count, 0}) *
                      vb_cols(t, (vb_point){t->count, 0}),
                  "decoder", 0);
out:
    free(t);
    return rc;
}

diffuse_plan diffuse_vae_decode_plan(const diffuse_vae *v, int height, int width,
                                     diffuse_vae_tiling tiling)
{
    if (!tiling.rows)
        return diffuse_vae_plan(v, false, height, width);
    const diffuse_vae_config *cfg = &v->cfg;
    const int f = vae_factor(v), h = height / f, w = width / f;
    diffuse_arena a;
    if (!vae_size_ok(v, height, width) || !vb_tiling_ok(v, height, tiling) || diffuse_arena_dry(&a))
        return (diffuse_plan){.floats = DIFFUSE_PLAN_NONE};
    float *in = diffuse_arena_push(&a, (size_t)h * w * cfg->latent_channels);
    float *out = diffuse_arena_push(&a, (size_t)height * width * cfg->out_channels);
    const size_t inputs = a.used;
    int rc = in && out ? vb_decode_run(v, out, in, h, w, tiling, &a, NULL, NULL, NULL) : -1;
    return diffuse_arena_plan(&a, inputs, rc);
}

int diffuse_vae_decode_tiled(const diffuse_vae *v, float *image, const float *latent, int height,
                             int width, diffuse_vae_tiling tiling, diffuse_arena *a,
                             const diffuse_trace *trace, int (*stop)(void *), void *stop_user,
                             char *err)
{
    if (!tiling.rows)
        return diffuse_vae_decode(v, image, latent, height, width, a, trace, err);
    if (vae_check(v, height, width, err))
        return -1;
    if (!vb_tiling_ok(v, height, tiling))
        return diffuse_fail(err,
                            "VAE: bands of %d rows (keeping levels %#x) for a %d-row image: "
                            "a band is a multiple of %d rows, fewer than the image's",
                            tiling.rows, tiling.keep, height, vae_factor(v));
    const int f = vae_factor(v);
    size_t mark = diffuse_arena_mark(a);
    int rc =
        vb_decode_run(v, image, latent, height / f, width / f, tiling, a, trace, stop, stop_user);
    diffuse_arena_reset(a, mark);
    if (rc == 1)
        return diffuse_fail(err, "cancelled"), 1;
    if (rc)
        return diffuse_fail(err,
                            "internal: VAE work memory exhausted (arena %zu floats, %zu needed "
                            "for a %dx%d decode in bands of %d rows)",
                            a->cap, diffuse_vae_decode_plan(v, height, width, tiling).floats, width,
                            height, tiling.rows);
    return 0;
}

int diffuse_vae_tilings(const diffuse_vae *v, int height, int width, int rows,
                        diffuse_vae_tiling *out, diffuse_plan *plans, int max)
{
    const int f = vae_factor(v);
    int n = 0;
    for (int k = 0; k < v->cfg.levels; k++) /* keep levels 1..k */
        for (int r = rows ? rows : f; r < height && n < max; r = rows ? height : 2 * r) {
            diffuse_vae_tiling t = {r, ((1u << (k + 1)) - 1) & ~1u};
            diffuse_plan p = diffuse_vae_decode_plan(v, height, width, t);
            if (p.floats == DIFFUSE_PLAN_NONE)
                continue;
            int i = n++; /* insertion: fewest flops first, then least memory */
            for (; i > 0 && (plans[i - 1].flops > p.flops ||
                             (plans[i - 1].flops == p.flops && plans[i - 1].floats > p.floats));
                 i--) {
                out[i] = out[i - 1];
                plans[i] = plans[i - 1];
            }
            out[i] = t;
            plans[i] = p;
        }
    return n;
}
