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
    int pad[4]; /* top, left, bottom, right; each < k */
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
    if (rows > cap)
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

/* Floats of the band buffers: input rows [cin, rows_in, W], the conv's
 * scratch (im2col [cin*k*k, nb*ow], or oneDNN's, for the first, an inner and
 * the last band), output rows [cout, nb*ow]. */
static void vae_band_sizes(const diffuse_conv2d *c, const vae_geom *g, int nb, int oh, int ow,
                           size_t sz[3])
{
    sz[0] = (size_t)c->cin * ((size_t)(nb - 1) * g->stride + c->k) * g->up * g->w;
    sz[1] = (size_t)c->cin * c->k * c->k * nb * ow;
    const int starts[3] = {0, nb < oh ? nb : 0, (oh - 1) / nb * nb};
    for (int i = 0; i < 3; i++) {
        int r0, n = oh - starts[i] < nb ? oh - starts[i] : nb;
        diffuse_conv d = vae_band_conv(c, g, starts[i], n, &r0);
        size_t s = diffuse_conv_scratch(&d, 1);
        sz[1] = s > sz[1] ? s : sz[1];
    }
    sz[2] = (size_t)c->cout * nb * ow;
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
static int vae_conv(const diffuse_conv2d *c, float *y, const float *x, const vae_geom *g, bool acc,
                    diffuse_arena *a)
{
    int oh, ow;
    vae_out_size(c, g, &oh, &ow);
    size_t sz[3], mark = diffuse_arena_mark(a);
    const float *wf = diffuse_wmat_f32(&c->w, a); /* once for all bands */
    if (!wf)
        return -1;
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
        diffuse_conv d = vae_band_conv(c, g, o0, n, &r0);
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
                        "internal: VAE work memory exhausted (arena %zu floats, %zu needed at "
                        "%dx%d)",
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
