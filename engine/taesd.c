/* taesd.c: the tiny autoencoder (madebyollin's TAESD, diffusers'
 * AutoencoderTiny), a fast stand-in for the VAE: about a million weights per
 * half instead of 84 million, 64 channels, no normalisation, no attention.
 *
 *   encoder: (image + 1) / 2 -> conv 3->64, Block, then per level
 *            [conv stride 2 (no bias), Block x n], conv 64->latent
 *   decoder: tanh(x / 3) * 3 -> conv latent->64, ReLU, then per level
 *            [Block x n, nearest 2x, conv (no bias)], Block, conv 64->3
 *   Block:   relu(c3(relu(c2(relu(c1(x))))) + x)
 *
 * The layer list is read off the weights (diffusers' indices: a conv, a block
 * of three convs, or a gap: the decoder's ReLU after its first conv, an
 * upsample anywhere else), so the block counts of the config need not be
 * known. With oneDNN (AVX2 and up, DIFFUSE_CONV other than im2col) a half
 * runs on whole images kept in oneDNN's blocked layout, ReLUs and residual
 * sums fused into the convolutions (the blocked path below); otherwise, or
 * with DIFFUSE_TAESD=banded, convolutions run in bands (diffuse_conv_banded),
 * the upsample folded into the next convolution's band copy. Either way three
 * activation buffers of the largest size rotate.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TAESD_MAX_LAYERS 64

typedef enum { TAESD_CONV, TAESD_BLOCK, TAESD_RELU, TAESD_UP } taesd_kind;

typedef struct taesd_layer {
    taesd_kind kind;
    diffuse_conv2d conv[3]; /* CONV: conv[0]; BLOCK: the three */
    int stride;             /* CONV: 1 or 2 */
} taesd_layer;

/* The blocked path's weights in oneDNN's own layouts (Winograd's
 * transformed), made as the first run of a half needs them and kept, for
 * that run's input size and flags only; other sizes reorder on every call. */
typedef struct taesd_prep {
    float *w[TAESD_MAX_LAYERS][3];
    int flags[TAESD_MAX_LAYERS][3]; /* theirs, 0x100 added for Winograd's */
    int ih, iw;                     /* the input size they are for; 0: none yet */
} taesd_prep;

typedef struct taesd_half {
    taesd_layer layers[TAESD_MAX_LAYERS];
    int count;          /* 0: this half is missing */
    int in, out, width; /* channels in, out, and of the inner activations */
    taesd_prep prep;
} taesd_half;

struct diffuse_taesd {
    diffuse_weights *w;
    taesd_half enc, dec;
    pthread_mutex_t lock; /* the taesd_prep of each half */
};

/* ------------------------------------------------------------------ loading */

static int load_conv(diffuse_conv2d *c, diffuse_weights *w, const char *name, char *err)
{
    char n[256];
    int64_t shape[DIFFUSE_MAX_DIMS];
    snprintf(n, sizeof n, "%s.weight", name);
    if (diffuse_weights_shape(w, n, shape) != 4 || shape[2] != 3 || shape[3] != 3 || shape[0] < 1 ||
        shape[1] < 1 || shape[0] > 4096 || shape[1] > 4096)
        return diffuse_fail(err, "TAESD: %s is not a 3x3 convolution", n);
    c->cout = (int)shape[0];
    c->cin = (int)shape[1];
    c->k = 3;
    c->b = NULL;
    if (diffuse_weights_matf(w, &c->w, err, (int64_t[]){c->cout, c->cin, 3, 3, -1}, "%s", n))
        return -1;
    snprintf(n, sizeof n, "%s.bias", name);
    if (diffuse_weights_has(w, n) &&
        !(c->b = diffuse_weights_getf(w, err, (int64_t[]){c->cout, -1}, "%s", n)))
        return -1;
    return 0;
}

/* Reads one half's layers; channels must chain. */
static int load_half(taesd_half *h, diffuse_weights *w, bool decoder, char *err)
{
    const char *side = decoder ? "decoder" : "encoder";
    char prefix[64], name[128], probe[160];
    snprintf(prefix, sizeof prefix, "taesd.%s.layers.", side);
    h->count = diffuse_weights_max_index(w, prefix);
    if (h->count == 0)
        return 0;
    if (h->count > TAESD_MAX_LAYERS)
        return diffuse_fail(err, "TAESD %s: %d layers (at most %d)", side, h->count,
                            TAESD_MAX_LAYERS);
    int ch = -1, last_conv = -1;
    for (int i = 0; i < h->count; i++) {
        taesd_layer *l = &h->layers[i];
        snprintf(name, sizeof name, "%s%d", prefix, i);
        snprintf(probe, sizeof probe, "%s.weight", name);
        if (diffuse_weights_has(w, probe)) {
            l->kind = TAESD_CONV;
            if (load_conv(&l->conv[0], w, name, err))
                return -1;
            last_conv = i;
        } else {
            snprintf(probe, sizeof probe, "%s.conv.0.weight", name);
            if (diffuse_weights_has(w, probe)) {
                l->kind = TAESD_BLOCK;
                for (int k = 0; k < 3; k++) {
                    snprintf(probe, sizeof probe, "%s.conv.%d", name, 2 * k);
                    if (load_conv(&l->conv[k], w, probe, err))
                        return -1;
                }
                if (l->conv[0].cin != l->conv[2].cout || l->conv[0].cout != l->conv[1].cin ||
                    l->conv[1].cout != l->conv[2].cin)
                    return diffuse_fail(err,
                                        "TAESD %s layer %d: a block must keep its channels "
                                        "(its skip is the identity)",
                                        side, i);
            } else {
                /* no weights: the decoder's activation after its first conv, else an upsample */
                l->kind = decoder && i == 1 ? TAESD_RELU : TAESD_UP;
                if (!decoder)
                    return diffuse_fail(err, "TAESD encoder: layer %d has no weights", i);
                continue;
            }
        }
        const int cin = l->conv[0].cin;
        if (ch >= 0 && cin != ch)
            return diffuse_fail(err, "TAESD %s layer %d takes %d channels, gets %d", side, i, cin,
                                ch);
        if (ch < 0)
            h->in = cin;
        ch = l->kind == TAESD_CONV ? l->conv[0].cout : l->conv[2].cout;
        h->width = ch > h->width ? ch : h->width;
        h->width = cin > h->width ? cin : h->width;
    }
    if (last_conv != h->count - 1)
        return diffuse_fail(err, "TAESD %s: the last layer is not a convolution", side);
    h->out = ch;
    /* the encoder's inner convs halve the size (diffusers: stride 2, no bias) */
    for (int i = 1; !decoder && i < h->count - 1; i++)
        if (h->layers[i].kind == TAESD_CONV)
            h->layers[i].stride = 2;
    for (int i = 0; i < h->count; i++)
        if (h->layers[i].kind == TAESD_CONV && !h->layers[i].stride)
            h->layers[i].stride = 1;
    return 0;
}

diffuse_status diffuse_taesd_load(const char *path, diffuse_taesd **out, char *err)
{
    *out = NULL;
    diffuse_taesd *t = calloc(1, sizeof *t);
    if (!t)
        return diffuse_fail(err, "out of memory"), DIFFUSE_ERR_MEMORY;
    pthread_mutex_init(&t->lock, NULL);
    diffuse_status st = diffuse_weights_open_taesd(path, &t->w, err);
    int rc = st != DIFFUSE_OK;
    if (rc == 0)
        rc = load_half(&t->enc, t->w, false, err) || load_half(&t->dec, t->w, true, err);
    if (rc == 0 && !t->enc.count && !t->dec.count)
        rc = diffuse_fail(err, "%s: holds no TAESD layers", path);
    if (rc == 0 && t->enc.count && (t->enc.in != 3 || t->enc.out < 1))
        rc = diffuse_fail(err, "%s: the TAESD encoder takes %d channels, not RGB", path, t->enc.in);
    if (rc == 0 && t->dec.count && t->dec.out != 3)
        rc =
            diffuse_fail(err, "%s: the TAESD decoder makes %d channels, not RGB", path, t->dec.out);
    if (rc == 0 && t->enc.count && t->dec.count && t->enc.out != t->dec.in)
        rc = diffuse_fail(err, "%s: TAESD encoder (%d latent channels) and decoder (%d) differ",
                          path, t->enc.out, t->dec.in);
    if (rc) {
        diffuse_taesd_free(t);
        return st != DIFFUSE_OK ? st : DIFFUSE_ERR_FORMAT; /* the layers do not make a TAESD */
    }
    *out = t;
    return DIFFUSE_OK;
}

void diffuse_taesd_free(diffuse_taesd *t)
{
    if (!t)
        return;
    diffuse_weights_free(t->w);
    for (int i = 0; i < TAESD_MAX_LAYERS; i++)
        for (int k = 0; k < 3; k++) {
            free(t->enc.prep.w[i][k]);
            free(t->dec.prep.w[i][k]);
        }
    pthread_mutex_destroy(&t->lock);
    free(t);
}

bool diffuse_taesd_has(const diffuse_taesd *t, bool decoder)
{
    return t && (decoder ? t->dec.count : t->enc.count) > 0;
}

int diffuse_taesd_latent_channels(const diffuse_taesd *t)
{
    return t->dec.count ? t->dec.in : t->enc.out;
}

const char *diffuse_taesd_layout(const diffuse_taesd *t)
{
    return diffuse_weights_layout(t->w);
}

const diffuse_weights *diffuse_taesd_weights(const diffuse_taesd *t)
{
    return t->w;
}

/* ------------------------------------------------------------------ sizes */

static size_t round16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Walks a half's layers from an input of h x w: the largest activation
 * (floats) and the largest convolution scratch. */
static void half_sizes(const taesd_half *hf, int h, int w, size_t *act, size_t *scratch,
                       diffuse_plan *plan)
{
    int up = 1;
    *act = round16((size_t)hf->in * h * w);
    *scratch = 0;
    for (int i = 0; i < hf->count; i++) {
        const taesd_layer *l = &hf->layers[i];
        if (l->kind == TAESD_UP) {
            up *= 2;
            continue;
        }
        if (l->kind == TAESD_RELU)
            continue;
        const int n = l->kind == TAESD_BLOCK ? 3 : 1;
        for (int k = 0; k < n; k++) {
            const diffuse_conv2d *c = &l->conv[k];
            const int stride = l->kind == TAESD_CONV ? l->stride : 1;
            diffuse_plan p = diffuse_conv_banded_plan(c, h, w, up, stride);
            *scratch = p.floats > *scratch ? p.floats : *scratch;
            if (plan) {
                plan->flops += p.flops;
                plan->layers += p.layers;
            }
            if (k == 0) { /* the size after this conv */
                h = (up * h - 1) / stride + 1;
                w = (up * w - 1) / stride + 1;
                up = 1;
            }
            size_t a = round16((size_t)c->cout * h * w);
            *act = a > *act ? a : *act;
        }
    }
}

/* ------------------------------------------------------------------ forward */

static void relu_part(void *ctx, size_t b, size_t e)
{
    float *x = ctx;
    for (size_t i = b; i < e; i++)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void relu(float *x, size_t n)
{
    diffuse_parallel_for(n, 1 << 14, relu_part, x);
}

typedef struct taesd_run {
    taesd_prep *prep;      /* the blocked path's kept weights (NULL: none) */
    pthread_mutex_t *lock; /* of prep */
    float *buf[3];         /* buf[0] holds the live activation */
    int c, h, w, up;       /* its channels and stored size; up: a pending nearest 2x */
    diffuse_arena *a;
    const diffuse_trace *trace;
    const char *side;
} taesd_run;

static void rotate(taesd_run *r, int to) /* buf[to] becomes the live one */
{
    float *t = r->buf[0];
    r->buf[0] = r->buf[to];
    r->buf[to] = t;
}

/* ------------------------------------------------------------------ blocked path */

/* With oneDNN, a half runs on whole images in oneDNN's blocked layout
 * (diffuse_dnnl_conv_fused): no bands, no reorders or copies around each
 * convolution, each ReLU and the blocks' residual sums fused into the
 * convolution before them. A block x -> relu(c3(relu(c2(relu(c1 x)))) + x) is
 * three convolutions A -> B -> C -> A, the last adding into x where it lies.
 * The nearest 2x upsample is one pass of its own (upsample_blocked); the
 * input (NCHW) goes into the first convolution as it is, the last one writes
 * NCHW. One walk (blocked_walk) both sizes this (dry) and runs it, so the
 * workspace always matches what runs; a half whose convolutions oneDNN cannot
 * all run this way (no oneDNN, DIFFUSE_CONV=im2col) keeps the banded path. */

typedef struct up_ctx {
    float *dst;
    const float *src;
    int h, w, blk; /* source rows, columns, floats per pixel */
} up_ctx;

/* Output rows [b, e) of [nb, 2h, 2w, blk] from [nb, h, w, blk]. */
static void upsample_part(void *ctx, size_t b, size_t e)
{
    const up_ctx *u = ctx;
    const size_t blk = (size_t)u->blk, ow = 2 * (size_t)u->w;
    for (size_t r = b; r < e; r++) {
        const size_t plane = r / (2 * (size_t)u->h), y = r % (2 * (size_t)u->h);
        const float *s = u->src + (plane * u->h + y / 2) * u->w * blk;
        float *d = u->dst + r * ow * blk;
        if (blk == 16) { /* the AVX-512 block: one vector per pixel, stored twice */
            for (int x = 0; x < u->w; x++)
                for (int k = 0; k < 16; k++) {
                    const float v = s[(size_t)x * 16 + k];
                    d[(size_t)x * 32 + k] = v;
                    d[(size_t)x * 32 + 16 + k] = v;
                }
            continue;
        }
        for (size_t x = 0; x < ow; x++)
            for (size_t k = 0; k < blk; k++)
                d[x * blk + k] = s[(x / 2) * blk + k];
    }
}

static void upsample_blocked(float *dst, const float *src, int planes, int h, int w, int blk)
{
    up_ctx u = {dst, src, h, w, blk};
    diffuse_parallel_for((size_t)planes * 2 * h, 16, upsample_part, &u);
}

/* y [c, h*w] (NCHW) from x in blocks of blk channels. */
static void unblock(float *y, const float *x, int c, size_t hw, int blk)
{
    for (int ch = 0; ch < c; ch++)
        for (size_t i = 0; i < hw; i++)
            y[ch * hw + i] = x[((size_t)(ch / blk) * hw + i) * blk + ch % blk];
}

typedef struct blocked_state {
    bool dry;             /* size only */
    size_t act, scratch;  /* dry: the largest activation and convolution scratch (floats) */
    size_t prep;          /* dry: floats of the weights taesd_prep keeps */
    double flops, layers; /* dry: what the convolutions count when they run */
    int c, h, w, up, blk; /* the live activation: channels, size, pending upsample; blk: its
                             floats per pixel group (1: NCHW) */
} blocked_state;

static size_t act_floats(int c, int h, int w, int blk)
{
    return round16((size_t)(c + blk - 1) / blk * blk * h * w);
}

/* One fused convolution of the walk: dst = conv(src) with these flags. */
/* The kept weights of layer i's k-th convolution for these flags, made now
 * when they are not yet; NULL when this run does not keep them. */
static const float *prepared(taesd_run *r, int i, int k, const diffuse_conv *d, int flags,
                             const float *wf)
{
    if (!r->prep)
        return NULL;
    /* the layout follows the algorithm too (diffuse_conv_set_backend may change it) */
    const int key = flags | (diffuse_dnnl_fused_winograd(d, flags) ? 0x100 : 0);
    pthread_mutex_lock(r->lock);
    float *w = r->prep->w[i][k];
    if (!w) {
        const size_t n = diffuse_dnnl_fused_weights(d, flags);
        if (n && (w = malloc(sizeof(float) * n)) && !diffuse_dnnl_fused_prepare(w, wf, d, flags)) {
            free(w);
            w = NULL;
        }
        r->prep->w[i][k] = w;
        r->prep->flags[i][k] = key;
    } else if (r->prep->flags[i][k] != key) {
        w = NULL;
    }
    pthread_mutex_unlock(r->lock);
    return w;
}

static int blocked_conv(blocked_state *s, taesd_run *r, int i, int k, const diffuse_conv2d *c,
                        float *dst, const float *src, int stride, int flags)
{
    const int blk = diffuse_dnnl_block();
    diffuse_conv d = diffuse_conv_3x3(c->cin, c->cout, s->h, s->w, stride);
    const size_t need = diffuse_dnnl_fused_scratch(&d, flags);
    if (!need)
        return -1;
    const int oh = diffuse_conv_out_h(&d), ow = diffuse_conv_out_w(&d);
    const int oblk = flags & DIFFUSE_DNNL_OUT_BLOCKED ? blk : 1;
    if (s->dry) {
        size_t sc = need + (c->w.in_place ? 0 : diffuse_wmat_scratch(c->w.numel));
        s->scratch = sc > s->scratch ? sc : s->scratch;
        size_t a = act_floats(c->cout, oh, ow, oblk);
        s->act = a > s->act ? a : s->act;
        s->prep += diffuse_dnnl_fused_weights(&d, flags);
        s->flops += diffuse_conv_flops(&d, 1);
        s->layers += 1;
    } else {
        const size_t mark = diffuse_arena_mark(r->a);
        const float *wf = diffuse_wmat_f32(&c->w, r->a);
        const float *wp = wf ? prepared(r, i, k, &d, flags, wf) : NULL;
        float *scratch = wf ? diffuse_arena_push(r->a, need) : NULL;
        bool ok =
            scratch && diffuse_dnnl_conv_fused(dst, src, wp ? wp : wf, c->b, &d,
                                               flags | (wp ? DIFFUSE_DNNL_PREPARED : 0), scratch);
        diffuse_arena_reset(r->a, mark);
        if (!ok)
            return -1;
        diffuse_arena_count(r->a, diffuse_conv_flops(&d, 1));
    }
    s->c = c->cout;
    s->h = oh;
    s->w = ow;
    s->blk = oblk;
    return 0;
}

/* The last convolution to few channels (RGB), blocked in, NCHW out, with
 * the engine's own kernel (oneDNN's pads the output to 16 channels). */
static int few_conv(blocked_state *s, taesd_run *r, const diffuse_conv2d *c)
{
    const size_t need = diffuse_op_conv3x3_few_scratch(c->cin, c->cout);
    const diffuse_conv d = diffuse_conv_3x3(c->cin, c->cout, s->h, s->w, 1);
    if (s->dry) {
        s->flops += diffuse_conv_flops(&d, 1);
        s->layers += 1;
        size_t sc = need + (c->w.in_place ? 0 : diffuse_wmat_scratch(c->w.numel));
        s->scratch = sc > s->scratch ? sc : s->scratch;
        size_t a = act_floats(c->cout, s->h, s->w, 1);
        s->act = a > s->act ? a : s->act;
    } else {
        const size_t mark = diffuse_arena_mark(r->a);
        const float *wf = diffuse_wmat_f32(&c->w, r->a);
        float *scratch = wf ? diffuse_arena_push(r->a, need) : NULL;
        bool ok = scratch && diffuse_op_conv3x3_few(r->buf[1], r->buf[0], wf, c->b, c->cin, c->cout,
                                                    s->h, s->w, scratch);
        diffuse_arena_reset(r->a, mark);
        if (!ok)
            return -1;
        diffuse_arena_count(r->a, diffuse_conv_flops(&d, 1));
        rotate(r, 1);
    }
    s->c = c->cout;
    s->blk = 1;
    return 0;
}

/* Runs (or, dry, sizes) a half from s's activation (NCHW in r->buf[0]);
 * fuse_relu: the decoder's lone ReLU goes into the convolution before it (not
 * when tracing: the trace shows that convolution's output). -1 when a
 * convolution cannot run this way. */
static int blocked_walk(blocked_state *s, taesd_run *r, const taesd_half *hf, bool fuse_relu)
{
    const int blk = diffuse_dnnl_block();
    if (blk <= 0)
        return -1;
    s->blk = 1;
    s->act = act_floats(s->c, s->h, s->w, 1);
    for (int i = 0; i < hf->count; i++) {
        const taesd_layer *l = &hf->layers[i];
        if (l->kind == TAESD_UP) {
            s->up *= 2;
            continue;
        }
        while (s->up > 1) { /* the pending upsample, a pass of its own */
            const int planes = (s->c + s->blk - 1) / s->blk;
            if (s->dry) {
                size_t a = act_floats(s->c, 2 * s->h, 2 * s->w, s->blk);
                s->act = a > s->act ? a : s->act;
            } else {
                upsample_blocked(r->buf[1], r->buf[0], planes, s->h, s->w, s->blk);
                rotate(r, 1);
            }
            s->h *= 2;
            s->w *= 2;
            s->up /= 2;
        }
        const bool last = i == hf->count - 1;
        switch (l->kind) {
        case TAESD_UP:
            break;
        case TAESD_RELU:
            if (!fuse_relu && !s->dry)
                relu(r->buf[0], act_floats(s->c, s->h, s->w, s->blk));
            break;
        case TAESD_CONV: {
            if (last && s->blk == 16 && l->stride == 1 && l->conv[0].cout < 16) {
                if (few_conv(s, r, &l->conv[0]))
                    return -1;
                break;
            }
            int flags = (s->blk > 1 ? DIFFUSE_DNNL_IN_BLOCKED : 0) | DIFFUSE_DNNL_OUT_BLOCKED |
                        (fuse_relu && hf->layers[i + 1].kind == TAESD_RELU ? DIFFUSE_DNNL_RELU : 0);
            if (blocked_conv(s, r, i, 0, &l->conv[0], r->buf[1], r->buf[0], l->stride, flags))
                return -1;
            if (!s->dry)
                rotate(r, 1);
            break;
        }
        case TAESD_BLOCK: {
            const int io = DIFFUSE_DNNL_IN_BLOCKED | DIFFUSE_DNNL_OUT_BLOCKED;
            if (s->blk == 1 || last) /* the residual sum needs x blocked, as its output */
                return -1;
            if (blocked_conv(s, r, i, 0, &l->conv[0], r->buf[1], r->buf[0], 1,
                             io | DIFFUSE_DNNL_RELU) ||
                blocked_conv(s, r, i, 1, &l->conv[1], r->buf[2], r->buf[1], 1,
                             io | DIFFUSE_DNNL_RELU) ||
                blocked_conv(s, r, i, 2, &l->conv[2], r->buf[0], r->buf[2], 1,
                             io | DIFFUSE_DNNL_SUM | DIFFUSE_DNNL_RELU))
                return -1;
            break;
        }
        }
        if (!s->dry && r->trace && r->trace->fn) {
            char name[64];
            const size_t n = (size_t)s->c * s->h * s->w;
            const float *t = r->buf[0];
            if (s->blk > 1) { /* buf[1] is free between layers */
                unblock(r->buf[1], r->buf[0], s->c, (size_t)s->h * s->w, s->blk);
                t = r->buf[1];
            }
            snprintf(name, sizeof name, "%s.layers.%d", r->side, i);
            r->trace->fn(r->trace->user, name, t, n);
        }
    }
    if (s->blk > 1) { /* the output, NCHW (oneDNN writes NCHW from its reference code only) */
        if (s->dry) {
            size_t a = act_floats(s->c, s->h, s->w, 1);
            s->act = a > s->act ? a : s->act;
        } else {
            unblock(r->buf[1], r->buf[0], s->c, (size_t)s->h * s->w, s->blk);
            rotate(r, 1);
        }
        s->blk = 1;
    }
    return 0;
}

/* Whether a half runs blocked from an input of c x h x w, and its sizes. */
static bool blocked_sizes(const taesd_half *hf, int c, int h, int w, size_t *act, size_t *scratch,
                          size_t *prep, diffuse_plan *plan)
{
    blocked_state s = {.dry = true, .c = c, .h = h, .w = w, .up = 1};
    taesd_run none = {0}; /* no buffers: nothing runs */
    if (blocked_walk(&s, &none, hf, true))
        return false;
    *act = s.act;
    *scratch = s.scratch;
    if (prep)
        *prep = s.prep;
    if (plan) {
        plan->flops = s.flops;
        plan->layers = s.layers;
    }
    return true;
}

/* DIFFUSE_TAESD=banded keeps the banded path (for measurements). */
static bool banded_only(void)
{
    const char *e = getenv("DIFFUSE_TAESD");
    return e && strcmp(e, "banded") == 0;
}

/* A half's buffers and scratch: the blocked path's when it runs that way. */
static void sizes(const taesd_half *hf, int h, int w, size_t *act, size_t *scratch)
{
    if (banded_only() || !blocked_sizes(hf, hf->in, h, w, act, scratch, NULL, NULL))
        half_sizes(hf, h, w, act, scratch, NULL);
}

size_t diffuse_taesd_pending_bytes(const diffuse_taesd *t, bool decoder, int height, int width)
{
    const taesd_half *hf = decoder ? &t->dec : &t->enc;
    const int h = decoder ? (height / 8 > 0 ? height / 8 : 1) : height,
              w = decoder ? (width / 8 > 0 ? width / 8 : 1) : width;
    size_t act, scratch, prep = 0;
    pthread_mutex_lock((pthread_mutex_t *)&t->lock);
    const bool made = hf->prep.ih != 0;
    pthread_mutex_unlock((pthread_mutex_t *)&t->lock);
    if (made || !hf->count || banded_only() ||
        !blocked_sizes(hf, hf->in, h, w, &act, &scratch, &prep, NULL))
        return 0;
    return sizeof(float) * prep;
}

diffuse_plan diffuse_taesd_plan(const diffuse_taesd *t, bool decoder, int height, int width)
{
    const taesd_half *hf = decoder ? &t->dec : &t->enc;
    const int h = decoder ? (height / 8 > 0 ? height / 8 : 1) : height,
              w = decoder ? (width / 8 > 0 ? width / 8 : 1) : width;
    diffuse_plan p = {0};
    size_t act, scratch;
    if (!hf->count)
        return (diffuse_plan){.floats = DIFFUSE_PLAN_NONE};
    if (banded_only() || !blocked_sizes(hf, hf->in, h, w, &act, &scratch, NULL, &p))
        half_sizes(hf, h, w, &act, &scratch, &p);
    p.floats = 3 * act + scratch;
    return p;
}

size_t diffuse_taesd_workspace(const diffuse_taesd *t, int height, int width)
{
    size_t need = 0, act, scratch;
    if (t->enc.count) {
        sizes(&t->enc, height, width, &act, &scratch);
        need = 3 * act + scratch;
    }
    if (t->dec.count) {
        sizes(&t->dec, height / 8 > 0 ? height / 8 : 1, width / 8 > 0 ? width / 8 : 1, &act,
              &scratch);
        need = 3 * act + scratch > need ? 3 * act + scratch : need;
    }
    return need + 64;
}

/* dst [cout, h', w'] = conv(live activation, through the pending upsample). */
static int run_conv(taesd_run *r, const diffuse_conv2d *c, float *dst, const float *src, int stride,
                    bool first)
{
    if (diffuse_conv_banded(c, dst, src, r->h, r->w, first ? r->up : 1, stride, false, r->a))
        return -1;
    if (first) {
        r->h = (r->up * r->h - 1) / stride + 1;
        r->w = (r->up * r->w - 1) / stride + 1;
        r->up = 1;
    }
    return 0;
}

static int run_half(taesd_run *r, const taesd_half *hf)
{
    for (int i = 0; i < hf->count; i++) {
        const taesd_layer *l = &hf->layers[i];
        switch (l->kind) {
        case TAESD_UP:
            r->up *= 2; /* folded into the next convolution */
            break;
        case TAESD_RELU:
            relu(r->buf[0], (size_t)r->c * r->h * r->w);
            break;
        case TAESD_CONV:
            if (run_conv(r, &l->conv[0], r->buf[1], r->buf[0], l->stride, true))
                return -1;
            r->c = l->conv[0].cout;
            rotate(r, 1);
            break;
        case TAESD_BLOCK: { /* buf[0] = relu(c3(relu(c2(relu(c1 x)))) + x), x kept in buf[2] */
            const size_t n = (size_t)l->conv[2].cout * r->h * r->w;
            if (r->up > 1) /* a block after an upsample: a plain copy first (not in TAESD) */
                return -1;
            if (run_conv(r, &l->conv[0], r->buf[1], r->buf[0], 1, false))
                return -1;
            relu(r->buf[1], (size_t)l->conv[0].cout * r->h * r->w);
            if (run_conv(r, &l->conv[1], r->buf[2], r->buf[1], 1, false))
                return -1;
            relu(r->buf[2], (size_t)l->conv[1].cout * r->h * r->w);
            if (run_conv(r, &l->conv[2], r->buf[1], r->buf[2], 1, false))
                return -1;
            diffuse_op_add(r->buf[1], r->buf[0], n);
            relu(r->buf[1], n);
            rotate(r, 1);
            break;
        }
        }
        if (r->trace && r->trace->fn && l->kind != TAESD_UP) {
            char name[64];
            snprintf(name, sizeof name, "%s.layers.%d", r->side, i);
            r->trace->fn(r->trace->user, name, r->buf[0], (size_t)r->c * r->h * r->w);
        }
    }
    return 0;
}

/* Runs a half on the blocked path where it can, else banded. */
static int run_any(taesd_run *r, const taesd_half *hf)
{
    size_t act, scratch;
    if (banded_only() || !blocked_sizes(hf, r->c, r->h, r->w, &act, &scratch, NULL, NULL))
        return run_half(r, hf);
    blocked_state s = {.c = r->c, .h = r->h, .w = r->w, .up = 1};
    taesd_prep *prep = (taesd_prep *)&hf->prep; /* the model's cache, behind r->lock */
    pthread_mutex_lock(r->lock);
    if (!prep->ih) { /* the first run keeps its weights */
        prep->ih = r->h;
        prep->iw = r->w;
    }
    r->prep = prep->ih == r->h && prep->iw == r->w ? prep : NULL;
    pthread_mutex_unlock(r->lock);
    if (blocked_walk(&s, r, hf, !(r->trace && r->trace->fn)))
        return -1;
    r->c = s.c;
    r->h = s.h;
    r->w = s.w;
    return 0;
}

/* Sets up the three buffers; the caller puts the input into buf[0]. */
static int run_init(taesd_run *r, const taesd_half *hf, int c, int h, int w, diffuse_arena *a)
{
    size_t act, scratch;
    sizes(hf, h, w, &act, &scratch);
    r->a = a;
    r->c = c;
    r->h = h;
    r->w = w;
    r->up = 1;
    for (int k = 0; k < 3; k++)
        if (!(r->buf[k] = diffuse_arena_push(a, act)))
            return -1;
    return 0;
}

int diffuse_taesd_encode(const diffuse_taesd *t, float *latents, const float *image, int height,
                         int width, diffuse_arena *a, const diffuse_trace *trace, char *err)
{
    if (!t->enc.count)
        return diffuse_fail(err, "this TAESD has no encoder (taesd_encoder.safetensors)");
    if (height < 8 || width < 8 || height % 8 || width % 8)
        return diffuse_fail(err, "TAESD: %dx%d is not a multiple of 8", width, height);
    const size_t mark = diffuse_arena_mark(a), px = (size_t)3 * height * width;
    taesd_run r = {.trace = trace, .side = "encoder", .lock = (pthread_mutex_t *)&t->lock};
    int rc = run_init(&r, &t->enc, 3, height, width, a);
    if (rc == 0) {
        for (size_t i = 0; i < px; i++)
            r.buf[0][i] = (image[i] + 1.0f) * 0.5f;
        rc = run_any(&r, &t->enc);
    }
    if (rc == 0 && (r.h != height / 8 || r.w != width / 8))
        rc = diffuse_fail(err, "TAESD: the encoder made %dx%d latents from %dx%d, not 1/8", r.w,
                          r.h, width, height);
    else if (rc == 0)
        memcpy(latents, r.buf[0], sizeof(float) * r.c * r.h * r.w);
    else
        diffuse_fail(err, "internal: TAESD work memory exhausted (%dx%d)", width, height);
    diffuse_arena_reset(a, mark);
    return rc ? -1 : 0;
}

int diffuse_taesd_decode(const diffuse_taesd *t, float *image, const float *latents, int height,
                         int width, diffuse_arena *a, const diffuse_trace *trace, char *err)
{
    if (!t->dec.count)
        return diffuse_fail(err, "this TAESD has no decoder (taesd_decoder.safetensors)");
    if (height < 8 || width < 8 || height % 8 || width % 8)
        return diffuse_fail(err, "TAESD: %dx%d is not a multiple of 8", width, height);
    const int lh = height / 8, lw = width / 8, lc = t->dec.in;
    const size_t mark = diffuse_arena_mark(a), n = (size_t)lc * lh * lw;
    taesd_run r = {.trace = trace, .side = "decoder", .lock = (pthread_mutex_t *)&t->lock};
    int rc = run_init(&r, &t->dec, lc, lh, lw, a);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            r.buf[0][i] = tanhf(latents[i] / 3.0f) * 3.0f;
        if (trace && trace->fn)
            trace->fn(trace->user, "decode.clamped", r.buf[0], n);
        rc = run_any(&r, &t->dec);
    }
    if (rc == 0 && (r.c != 3 || r.h != height || r.w != width))
        rc = diffuse_fail(err,
                          "TAESD: the decoder made %dx%dx%d from %dx%d latents, not "
                          "3x%dx%d",
                          r.c, r.h, r.w, lh, lw, height, width);
    else if (rc == 0)
        memcpy(image, r.buf[0], sizeof(float) * 3 * height * width);
    else
        diffuse_fail(err, "internal: TAESD work memory exhausted (%dx%d)", width, height);
    diffuse_arena_reset(a, mark);
    return rc ? -1 : 0;
}
