/* unet.c: the denoising network of Stable Diffusion 1.x, 2.x and XL,
 * diffusers' UNet2DConditionModel: sinusoidal timestep embedding (plus SDXL's
 * added embedding of the pooled text and the size and crop ids), a down path
 * of ResNet blocks and cross-attention transformers (as many blocks deep as
 * the weights hold, per level), a mid block, and an up path that consumes the
 * down path's skip connections in reverse.
 *
 * Weights are resolved once at load into the structs below (pointers into the
 * weight store). The forward pass allocates nothing: every buffer comes from
 * the caller's arena. diffuse_unet_workspace() and diffuse_unet_plan() run
 * the same forward on a dry arena, which computes nothing: every compute site
 * below tests a->dry.
 *
 * Layout: NCHW for the convolutional parts, [T, C] tokens (one batch item at a
 * time) inside the transformers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define UNET_MAX_LAYERS 8 /* resnets in one up block (layers_per_block + 1) */
/* skips: conv_in, every down resnet, every downsampler */
#define UNET_MAX_SKIPS (1 + DIFFUSE_MAX_LEVELS * UNET_MAX_LAYERS)
#define UNET_TF_EPS 1e-6f /* Transformer2DModel GroupNorm */
#define UNET_LN_EPS 1e-5f /* BasicTransformerBlock LayerNorms */

/* ------------------------------------------------------------------ model */

/* diffusers Attention: heads are column slices of the projections. */
typedef struct unet_attention {
    diffuse_linear q;    /* to_q [C, C], no bias */
    diffuse_linear k, v; /* to_k, to_v [C, kv_dim], no bias (kv_dim = C or context_dim) */
    diffuse_linear out;  /* to_out.0 [C, C] with bias */
} unet_attention;

/* BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward,
 * each after a LayerNorm and added back to the tokens. */
typedef struct unet_basic_block {
    diffuse_norm norm1, norm2, norm3; /* LayerNorm [C], eps 1e-5 */
    unet_attention attn1;             /* self-attention */
    unet_attention attn2;             /* cross-attention over the context */
    diffuse_linear ff_in;             /* ff.net.0.proj [8C, C]: hidden then gate */
    diffuse_linear ff_out;            /* ff.net.2 [C, 4C] */
} unet_basic_block;

/* Transformer2DModel: GroupNorm -> proj_in -> blocks -> proj_out -> + input. */
typedef struct unet_transformer {
    diffuse_norm norm;        /* GroupNorm(groups, C), eps 1e-6 */
    diffuse_linear proj_in;   /* [C, C]: a 1x1 conv or a linear, the same math on tokens */
    diffuse_linear proj_out;  /* [C, C] */
    unet_basic_block *blocks; /* [depth], owned */
    int depth;                /* transformer_depth */
    int c, heads, groups;     /* channels C, attention heads (head_dim C / heads), norm groups */
} unet_transformer;

/* One down block (layers_per_block resnets) or up block (layers_per_block + 1). */
typedef struct unet_level {
    int nres;                                /* resnets in the block */
    int cout;                                /* block_out_channels of the level */
    diffuse_resnet resnets[UNET_MAX_LAYERS]; /* [nres]; up: cin = hidden + skip channels */
    bool has_attn;                           /* a transformer after each resnet */
    unet_transformer attn[UNET_MAX_LAYERS];  /* [nres] when has_attn */
    diffuse_conv2d sampler;                  /* down: stride-2 conv, up: conv after 2x nearest;
                                                w NULL on the last level */
} unet_level;

struct diffuse_unet {
    diffuse_unet_config cfg;             /* hyper-parameters, copied at load */
    size_t widen_max;                    /* floats of the largest weight widened at use */
    int temb_dim;                        /* 4 * channels[0] */
    diffuse_linear time_1;               /* time_embedding.linear_1 [temb, c0] */
    diffuse_linear time_2;               /* time_embedding.linear_2 [temb, temb] */
    diffuse_linear add_1, add_2;         /* add_embedding.linear_{1,2} [temb, add_in], [temb,
                                            temb]; w NULL without "text_time" */
    diffuse_conv2d conv_in;              /* [c0, in_channels, 3, 3] */
    unet_level down[DIFFUSE_MAX_LEVELS]; /* [levels] down_blocks */
    diffuse_resnet mid_res[2];           /* mid_block.resnets.{0,1} */
    unet_transformer mid_attn;           /* mid_block.attentions.0 */
    unet_level up[DIFFUSE_MAX_LEVELS];   /* up[b] mirrors down level levels-1-b */
    diffuse_norm norm_out;               /* conv_norm_out, followed by SiLU */
    diffuse_conv2d conv_out;             /* [out_channels, c0, 3, 3] */
};

/* ------------------------------------------------------------------ loading */

/* "name.s" in buf; canonical names are far shorter than the buffers. */
static const char *subname(char *buf, size_t size, const char *name, const char *s)
{
    int k = snprintf(buf, size, "%s.%s", name, s);
    return k >= 0 && (size_t)k < size ? buf : "(name too long)";
}

/* A weight under the current `name`, in the caller's buffer `n`. */
#define SUB(s) subname(n, sizeof n, name, s)

static int load_attention(unet_attention *at, diffuse_weights *w, const char *name, int c,
                          int kv_dim, char *err)
{
    char n[256];
    if (diffuse_linear_load(&at->q, w, SUB("to_q"), c, c, false, err) ||
        diffuse_linear_load(&at->k, w, SUB("to_k"), kv_dim, c, false, err) ||
        diffuse_linear_load(&at->v, w, SUB("to_v"), kv_dim, c, false, err) ||
        diffuse_linear_load(&at->out, w, SUB("to_out.0"), c, c, true, err))
        return -1;
    return 0;
}

static int load_basic_block(unet_basic_block *b, diffuse_weights *w, const char *name, int c,
                            int context_dim, char *err)
{
    char n[256];
    if (diffuse_norm_load(&b->norm1, w, SUB("norm1"), c, err) ||
        load_attention(&b->attn1, w, SUB("attn1"), c, c, err) ||
        diffuse_norm_load(&b->norm2, w, SUB("norm2"), c, err) ||
        load_attention(&b->attn2, w, SUB("attn2"), c, context_dim, err) ||
        diffuse_norm_load(&b->norm3, w, SUB("norm3"), c, err) ||
        diffuse_linear_load(&b->ff_in, w, SUB("ff.net.0.proj"), c, 8 * c, true, err) ||
        diffuse_linear_load(&b->ff_out, w, SUB("ff.net.2"), 4 * c, c, true, err))
        return -1;
    return 0;
}

static int load_transformer(unet_transformer *t, diffuse_weights *w, const char *name, int c,
                            int heads, const diffuse_unet_config *cfg, char *err)
{
    char n[256];
    t->c = c;
    t->heads = heads;
    t->groups = cfg->groups;
    if (diffuse_norm_load(&t->norm, w, SUB("norm"), c, err) ||
        diffuse_linear_load(&t->proj_in, w, SUB("proj_in"), c, c, true, err) ||
        diffuse_linear_load(&t->proj_out, w, SUB("proj_out"), c, c, true, err))
        return -1;
    snprintf(n, sizeof n, "%s.transformer_blocks.", name);
    t->depth = diffuse_weights_max_index(w, n); /* a gap is a missing weight below */
    if (t->depth < 1 || t->depth > 64)
        return diffuse_fail(err, "%s: %d transformer blocks (1 to 64 supported)", name, t->depth);
    if (!(t->blocks = calloc((size_t)t->depth, sizeof *t->blocks)))
        return diffuse_fail(err, "out of memory loading %s", name);
    for (int i = 0; i < t->depth; i++) {
        snprintf(n, sizeof n, "%s.transformer_blocks.%d", name, i);
        if (load_basic_block(&t->blocks[i], w, n, c, cfg->context_dim, err))
            return -1;
    }
    return 0;
}

/* CrossAttnDownBlock2D / DownBlock2D number l. */
static int load_down(diffuse_unet *u, int l, diffuse_weights *w, int temb, char *err)
{
    const diffuse_unet_config *cfg = &u->cfg;
    unet_level *lv = &u->down[l];
    char n[256];
    lv->nres = cfg->layers_per_block;
    lv->cout = cfg->channels[l];
    lv->has_attn = cfg->cross_attn[l];
    for (int i = 0; i < lv->nres; i++) {
        int cin = i == 0 ? cfg->channels[l ? l - 1 : 0] : lv->cout;
        snprintf(n, sizeof n, "unet.down_blocks.%d.resnets.%d", l, i);
        if (diffuse_resnet_load(&lv->resnets[i], w, n, cin, lv->cout, temb, cfg->groups, cfg->eps,
                                err))
            return -1;
        snprintf(n, sizeof n, "unet.down_blocks.%d.attentions.%d", l, i);
        if (lv->has_attn && load_transformer(&lv->attn[i], w, n, lv->cout, cfg->heads[l], cfg, err))
            return -1;
    }
    snprintf(n, sizeof n, "unet.down_blocks.%d.downsamplers.0.conv", l);
    if (l < cfg->levels - 1 && diffuse_conv2d_load(&lv->sampler, w, n, lv->cout, lv->cout, 3, err))
        return -1;
    return 0;
}

/* CrossAttnUpBlock2D / UpBlock2D number b, mirroring down level l. Channels as
 * in diffusers: resnet i takes (i == 0 ? prev_output : out) + skip channels,
 * the skip being `out` except for the last resnet, whose skip comes from the
 * level below (channels[l-1], or channels[0] for the conv_in skip). */
static int load_up(diffuse_unet *u, int b, diffuse_weights *w, int temb, char *err)
{
    const diffuse_unet_config *cfg = &u->cfg;
    const int L = cfg->levels, l = L - 1 - b;
    const int prev = cfg->channels[b == 0 ? L - 1 : l + 1];
    const int skip_last = cfg->channels[l ? l - 1 : 0];
    unet_level *lv = &u->up[b];
    char n[256];
    lv->nres = cfg->layers_per_block + 1;
    lv->cout = cfg->channels[l];
    lv->has_attn = cfg->cross_attn[l];
    for (int i = 0; i < lv->nres; i++) {
        int cin = (i == 0 ? prev : lv->cout) + (i == lv->nres - 1 ? skip_last : lv->cout);
        snprintf(n, sizeof n, "unet.up_blocks.%d.resnets.%d", b, i);
        if (diffuse_resnet_load(&lv->resnets[i], w, n, cin, lv->cout, temb, cfg->groups, cfg->eps,
                                err))
            return -1;
        snprintf(n, sizeof n, "unet.up_blocks.%d.attentions.%d", b, i);
        if (lv->has_attn && load_transformer(&lv->attn[i], w, n, lv->cout, cfg->heads[l], cfg, err))
            return -1;
    }
    snprintf(n, sizeof n, "unet.up_blocks.%d.upsamplers.0.conv", b);
    if (b < L - 1 && diffuse_conv2d_load(&lv->sampler, w, n, lv->cout, lv->cout, 3, err))
        return -1;
    return 0;
}

static int check_config(const diffuse_unet_config *cfg, char *err)
{
    if (cfg->levels < 1 || cfg->levels > DIFFUSE_MAX_LEVELS)
        return diffuse_fail(err, "UNet config: %d levels (1 to %d supported)", cfg->levels,
                            DIFFUSE_MAX_LEVELS);
    if (cfg->layers_per_block < 1 || cfg->layers_per_block >= UNET_MAX_LAYERS)
        return diffuse_fail(err, "UNet config: layers_per_block %d (1 to %d supported)",
                            cfg->layers_per_block, UNET_MAX_LAYERS - 1);
    if (cfg->in_channels < 1 || cfg->out_channels < 1 || cfg->context_dim < 1 || cfg->groups < 1 ||
        !(cfg->eps > 0))
        return diffuse_fail(err, "UNet config: invalid channels, context, groups or eps");
    if (cfg->add_in &&
        (cfg->add_time_dim < 1 || cfg->add_in <= DIFFUSE_TIME_IDS * cfg->add_time_dim))
        return diffuse_fail(err,
                            "UNet config: added embedding of %d inputs cannot hold %d time "
                            "ids of %d",
                            cfg->add_in, DIFFUSE_TIME_IDS, cfg->add_time_dim);
    for (int l = 0; l < cfg->levels; l++) {
        int c = cfg->channels[l], h = cfg->heads[l];
        if (c < 1 || c > 1 << 16 || c % cfg->groups)
            return diffuse_fail(err,
                                "UNet config: level %d has %d channels (a multiple of %d "
                                "groups expected)",
                                l, c, cfg->groups);
        if (h < 1 || c % h)
            return diffuse_fail(err, "UNet config: level %d: %d heads do not divide %d channels", l,
                                h, c);
    }
    return 0;
}

int diffuse_unet_load(const diffuse_unet_config *cfg, diffuse_weights *w, diffuse_unet **out,
                      char *err)
{
    *out = NULL;
    if (check_config(cfg, err))
        return -1;
    diffuse_unet *u = calloc(1, sizeof *u);
    if (!u)
        return diffuse_fail(err, "out of memory loading the UNet");
    u->cfg = *cfg;
    const int L = cfg->levels, c0 = cfg->channels[0], ct = cfg->channels[L - 1];
    const int temb = u->temb_dim = 4 * c0;
    int rc =
        diffuse_linear_load(&u->time_1, w, "unet.time_embedding.linear_1", c0, temb, true, err) ||
        diffuse_linear_load(&u->time_2, w, "unet.time_embedding.linear_2", temb, temb, true, err) ||
        diffuse_conv2d_load(&u->conv_in, w, "unet.conv_in", cfg->in_channels, c0, 3, err) ||
        (cfg->add_in &&
         (diffuse_linear_load(&u->add_1, w, "unet.add_embedding.linear_1", cfg->add_in, temb, true,
                              err) ||
          diffuse_linear_load(&u->add_2, w, "unet.add_embedding.linear_2", temb, temb, true, err)));
    for (int l = 0; !rc && l < L; l++)
        rc = load_down(u, l, w, temb, err);
    rc = rc ||
         diffuse_resnet_load(&u->mid_res[0], w, "unet.mid_block.resnets.0", ct, ct, temb,
                             cfg->groups, cfg->eps, err) ||
         load_transformer(&u->mid_attn, w, "unet.mid_block.attentions.0", ct, cfg->heads[L - 1],
                          cfg, err) ||
         diffuse_resnet_load(&u->mid_res[1], w, "unet.mid_block.resnets.1", ct, ct, temb,
                             cfg->groups, cfg->eps, err);
    for (int b = 0; !rc && b < L; b++)
        rc = load_up(u, b, w, temb, err);
    rc = rc || diffuse_norm_load(&u->norm_out, w, "unet.conv_norm_out", c0, err) ||
         diffuse_conv2d_load(&u->conv_out, w, "unet.conv_out", c0, cfg->out_channels, 3, err);
    if (rc) {
        diffuse_unet_free(u);
        return -1;
    }
    u->widen_max = diffuse_weights_widen_max(w, "unet.");
    *out = u;
    return 0;
}

void diffuse_unet_free(diffuse_unet *u)
{
    if (!u)
        return;
    for (int l = 0; l < DIFFUSE_MAX_LEVELS; l++)
        for (int i = 0; i < UNET_MAX_LAYERS; i++) {
            free(u->down[l].attn[i].blocks);
            free(u->up[l].attn[i].blocks);
        }
    free(u->mid_attn.blocks);
    free(u);
}

#undef SUB

/* ------------------------------------------------------------------ sizes */

/* What diffuse_arena_push really takes: blocks of 16 floats. */

static size_t max_sz(size_t a, size_t b)
{
    return a > b ? a : b;
}

/* Spatial size after the stride-2, pad-1, 3x3 downsampler. */
static int half_size(int s)
{
    return (s - 1) / 2 + 1;
}

/* Latent size at each level: hs[l] x ws[l]. */
static void level_sizes(int h, int w, int levels, int *hs, int *ws)
{
    hs[0] = h;
    ws[0] = w;
    for (int l = 1; l < levels; l++) {
        hs[l] = half_size(hs[l - 1]);
        ws[l] = half_size(ws[l - 1]);
    }
}

/* Largest activation of the mid and up paths (an up block's output, or its
 * upsampled output): the size of each ping-pong buffer. */
static size_t pingpong_floats(const diffuse_unet *u, int n, const int *hs, const int *ws)
{
    const int L = u->cfg.levels;
    size_t pp = (size_t)n * u->cfg.channels[L - 1] * hs[L - 1] * ws[L - 1];
    for (int b = 0; b < L; b++) {
        const int l = L - 1 - b;
        pp = max_sz(pp, (size_t)n * u->up[b].cout * hs[l] * ws[l]);
        if (u->up[b].sampler.w.data)
            pp = max_sz(pp, (size_t)n * u->up[b].cout * hs[l - 1] * ws[l - 1]);
    }
    return pp;
}

/* ------------------------------------------------------------------ transformer */

/* out [T, C] = to_out(attention(to_q(x), to_k(ctx), to_v(ctx))) for x [T, C],
 * ctx [S, kv_dim]; heads are column slices of q, k, v (no copies). */
static int attention_forward(const unet_attention *at, float *out, const float *x, const float *ctx,
                             int t, int s, int heads, diffuse_arena *a)
{
    const int c = at->q.out;
    size_t mark = diffuse_arena_mark(a);
    float *q = diffuse_arena_push(a, (size_t)t * c); /* [T, C] */
    float *k = diffuse_arena_push(a, (size_t)s * c); /* [S, C] */
    float *v = diffuse_arena_push(a, (size_t)s * c); /* [S, C] */
    float *o = diffuse_arena_push(a, (size_t)t * c); /* [T, C] */
    float *scratch = diffuse_arena_push(a, diffuse_attention_scratch(t, s, c / heads));
    if (!q || !k || !v || !o || !scratch)
        return -1;
    if (diffuse_linear_forward(&at->q, q, x, t, a) ||
        diffuse_linear_forward(&at->k, k, ctx, s, a) ||
        diffuse_linear_forward(&at->v, v, ctx, s, a))
        return -1;
    if (!a->dry)
        diffuse_op_attention(o, q, c, k, v, c, t, s, heads, c / heads, false, scratch);
    diffuse_arena_count(a, diffuse_attention_flops(t, s, c));
    if (diffuse_linear_forward(&at->out, out, o, t, a))
        return -1;
    diffuse_arena_reset(a, mark);
    return 0;
}

/* out [T, C] = ff.net.2(hidden * gelu(gate)), [hidden | gate] = ff.net.0.proj(x):
 * the GEGLU product is packed in place into the first T x 4C floats. */
static int feed_forward(const unet_basic_block *b, float *out, const float *x, int t,
                        diffuse_arena *a)
{
    const int c4 = b->ff_out.in;
    size_t mark = diffuse_arena_mark(a);
    float *f = diffuse_arena_push(a, (size_t)t * 2 * c4); /* [T, 8C] */
    if (!f)
        return -1;
    if (diffuse_linear_forward(&b->ff_in, f, x, t, a))
        return -1;
    if (!a->dry)
        diffuse_op_geglu(f, t, c4);
    if (diffuse_linear_forward(&b->ff_out, out, f, t, a)) /* f now [T, 4C] */
        return -1;
    diffuse_arena_reset(a, mark);
    return 0;
}

/* h [T, C] += attn1(norm1 h); += attn2(norm2 h, ctx); += ff(norm3 h). nrm is
 * [T, C] scratch. */
static int basic_block_forward(const unet_basic_block *b, float *h, float *nrm, const float *ctx,
                               int t, int s, int heads, diffuse_arena *a)
{
    const int c = b->norm1.c;
    const size_t tc = (size_t)t * c;
    size_t mark = diffuse_arena_mark(a);
    float *y = diffuse_arena_push(a, tc); /* [T, C] */
    if (!y)
        return -1;
    const diffuse_norm *norms[3] = {&b->norm1, &b->norm2, &b->norm3};
    for (int i = 0; i < 3; i++) { /* h += attn1(norm1 h); attn2(norm2 h, ctx); ff(norm3 h) */
        if (!a->dry)
            diffuse_op_layer_norm(nrm, h, norms[i]->gamma, norms[i]->beta, t, c, UNET_LN_EPS);
        int rc = i == 0   ? attention_forward(&b->attn1, y, nrm, nrm, t, t, heads, a)
                 : i == 1 ? attention_forward(&b->attn2, y, nrm, ctx, t, s, heads, a)
                          : feed_forward(b, y, nrm, t, a);
        if (rc)
            return -1;
        if (!a->dry)
            diffuse_op_add(h, y, tc);
    }
    diffuse_arena_reset(a, mark);
    return 0;
}

/* x [n, C, H, W] += proj_out(blocks(proj_in(groupnorm(x)))), one batch item
 * at a time; context [n, S, context_dim]. */
static int transformer_forward(const unet_transformer *tf, float *x, const float *context, int n,
                               int hw, int s, int context_dim, diffuse_arena *a)
{
    const int c = tf->c;
    const size_t tc = (size_t)hw * c;
    size_t mark = diffuse_arena_mark(a);
    float *h = diffuse_arena_push(a, tc);   /* [T, C] tokens */
    float *nrm = diffuse_arena_push(a, tc); /* [T, C] */
    float *img = diffuse_arena_push(a, tc); /* [C, T], only between blocks */
    if (!h || !nrm || !img)
        return -1;
    for (int i = 0; i < n; i++) {
        float *xi = x + (size_t)i * tc;                           /* [C, H, W] */
        const float *ctx = context + (size_t)i * s * context_dim; /* [S, context_dim] */
        if (!a->dry) {
            diffuse_op_group_norm(img, xi, tf->norm.gamma, tf->norm.beta, 1, c, hw, tf->groups,
                                  UNET_TF_EPS, false);
            diffuse_op_transpose(nrm, img, 1, c, hw); /* [T, C] */
        }
        if (diffuse_linear_forward(&tf->proj_in, h, nrm, hw, a))
            return -1;
        for (int d = 0; d < tf->depth; d++)
            if (basic_block_forward(&tf->blocks[d], h, nrm, ctx, hw, s, tf->heads, a))
                return -1;
        if (diffuse_linear_forward(&tf->proj_out, nrm, h, hw, a))
            return -1;
        if (!a->dry) {
            diffuse_op_transpose(img, nrm, 1, hw, c); /* [C, T] */
            diffuse_op_add(xi, img, tc);
        }
    }
    diffuse_arena_reset(a, mark);
    return 0;
}

/* ------------------------------------------------------------------ forward */

/* State of one forward pass, so the block helpers stay short. */
typedef struct unet_run {
    const diffuse_unet *u;
    int n, tokens;        /* batch, context tokens */
    const float *context; /* [n, tokens, context_dim] */
    const diffuse_unet_cond *cond;
    float *temb_act; /* [n, temb] time embedding after SiLU */
    diffuse_arena *a;
    const diffuse_trace *trace;
    char stage[32];              /* block being run, for error messages */
    int nskip;                   /* skip connections held */
    float *skip[UNET_MAX_SKIPS]; /* [n, skip_c, skip_h, skip_w] each, in the arena */
    int skip_c[UNET_MAX_SKIPS], skip_h[UNET_MAX_SKIPS], skip_w[UNET_MAX_SKIPS];
} unet_run;

static void emit(const unet_run *r, const char *name, const float *data, size_t count)
{
    if (r->trace && r->trace->fn && !r->a->dry)
        r->trace->fn(r->trace->user, name, data, count);
}

static void push_skip(unet_run *r, float *x, int c, int h, int w)
{
    r->skip[r->nskip] = x;
    r->skip_c[r->nskip] = c;
    r->skip_h[r->nskip] = h;
    r->skip_w[r->nskip++] = w;
}

/* emb [n, dim] = [cos | sin](t * exp(-ln(10000) i / (half - shift))) with
 * flip_sin_to_cos (else [sin | cos]); float32 throughout as diffusers'
 * get_timestep_embedding, a zero column when dim is odd. Rows are `stride`
 * floats apart (dim for a plain [n, dim] table). */
static void timestep_embedding(const diffuse_unet_config *cfg, float *emb, const float *timestep,
                               int n, int dim, int stride)
{
    const int half = dim / 2;
    const float lnmax = (float)-log(10000.0);
    for (int b = 0; b < n; b++) {
        float *e = emb + (size_t)b * stride;
        for (int i = 0; i < half; i++) {
            float freq = expf(lnmax * (float)i / (float)(half - cfg->freq_shift));
            float arg = timestep[b] * freq;
            e[cfg->flip_sin_to_cos ? half + i : i] = sinf(arg);
            e[cfg->flip_sin_to_cos ? i : half + i] = cosf(arg);
        }
        if (dim % 2)
            e[dim - 1] = 0.0f;
    }
}

/* SDXL: temb [n, temb] += add_embedding([text_embeds | sinusoid(time_ids)]),
 * add_embedding = linear_2(silu(linear_1(.))), each of the six ids embedded
 * in add_time_dim values as the timestep is. */
static int added_embedding(unet_run *r, float *temb)
{
    const diffuse_unet *u = r->u;
    const diffuse_unet_config *cfg = &u->cfg;
    const int n = r->n, td = u->temb_dim, tdim = cfg->add_time_dim;
    const int pooled = cfg->add_in - DIFFUSE_TIME_IDS * tdim;
    size_t mark = diffuse_arena_mark(r->a);
    float *in = diffuse_arena_push(r->a, (size_t)n * cfg->add_in);              /* [n, add_in] */
    float *ids = diffuse_arena_push(r->a, (size_t)n * DIFFUSE_TIME_IDS * tdim); /* [6n, tdim] */
    float *mid = diffuse_arena_push(r->a, (size_t)n * td);                      /* [n, temb] */
    float *aug = diffuse_arena_push(r->a, (size_t)n * td);                      /* [n, temb] */
    if (!in || !ids || !mid || !aug)
        return -1;
    if (!r->a->dry) {
        timestep_embedding(cfg, ids, r->cond->time_ids, n * DIFFUSE_TIME_IDS, tdim, tdim);
        emit(r, "add_time_proj", ids, (size_t)n * DIFFUSE_TIME_IDS * tdim);
        for (int b = 0; b < n; b++) {
            memcpy(in + (size_t)b * cfg->add_in, r->cond->text_embeds + (size_t)b * pooled,
                   sizeof(float) * pooled);
            memcpy(in + (size_t)b * cfg->add_in + pooled, ids + (size_t)b * DIFFUSE_TIME_IDS * tdim,
                   sizeof(float) * DIFFUSE_TIME_IDS * tdim);
        }
    }
    if (diffuse_linear_forward(&u->add_1, mid, in, n, r->a))
        return -1;
    if (!r->a->dry)
        diffuse_op_silu(mid, (size_t)n * td);
    if (diffuse_linear_forward(&u->add_2, aug, mid, n, r->a))
        return -1;
    emit(r, "add_embedding", aug, (size_t)n * td);
    if (!r->a->dry)
        diffuse_op_add(temb, aug, (size_t)n * td);
    diffuse_arena_reset(r->a, mark);
    return 0;
}

/* temb_act [n, temb] = silu(linear_2(silu(linear_1(sinusoid(t)))) [+ added]);
 * the trace sees linear_2's output before the SiLU the resnets apply. */
static int time_embedding(unet_run *r, const float *timestep)
{
    const diffuse_unet *u = r->u;
    const int n = r->n, c0 = u->cfg.channels[0], td = u->temb_dim;
    float *temb = diffuse_arena_push(r->a, (size_t)n * td); /* [n, temb] */
    r->temb_act = diffuse_arena_push(r->a, (size_t)n * td); /* [n, temb] */
    size_t mark = diffuse_arena_mark(r->a);
    float *sinus = diffuse_arena_push(r->a, (size_t)n * c0); /* [n, c0] */
    if (!temb || !r->temb_act || !sinus)
        return -1;
    if (!r->a->dry)
        timestep_embedding(&u->cfg, sinus, timestep, n, c0, c0);
    if (diffuse_linear_forward(&u->time_1, r->temb_act, sinus, n, r->a))
        return -1;
    if (!r->a->dry)
        diffuse_op_silu(r->temb_act, (size_t)n * td);
    if (diffuse_linear_forward(&u->time_2, temb, r->temb_act, n, r->a))
        return -1;
    emit(r, "time_embedding", temb, (size_t)n * td);
    diffuse_arena_reset(r->a, mark);
    if (u->cfg.add_in && added_embedding(r, temb))
        return -1;
    if (!r->a->dry) {
        memcpy(r->temb_act, temb, sizeof(float) * n * td);
        diffuse_op_silu(r->temb_act, (size_t)n * td);
    }
    diffuse_arena_reset(r->a, mark);
    return 0;
}

/* Down block l: *x [n, C_in, *h, *w] -> [n, C_l, h', w'] (h' halved unless the
 * last level). Every resnet(+transformer) output and the downsampler output
 * stay in the arena as skips; *x ends on the last of them. */
static int down_block(unet_run *r, int l, float **x, int *h, int *w)
{
    const unet_level *lv = &r->u->down[l];
    const int n = r->n, c = lv->cout;
    snprintf(r->stage, sizeof r->stage, "down_blocks.%d", l);
    for (int i = 0; i < lv->nres; i++) {
        float *y = diffuse_arena_push(r->a, (size_t)n * c * *h * *w); /* [n, C, h, w] */
        if (!y || diffuse_resnet_forward(&lv->resnets[i], y, *x, r->temb_act, n, *h, *w, r->a))
            return -1;
        if (lv->has_attn && transformer_forward(&lv->attn[i], y, r->context, n, *h * *w, r->tokens,
                                                r->u->cfg.context_dim, r->a))
            return -1;
        push_skip(r, y, c, *h, *w);
        *x = y;
    }
    if (lv->sampler.w.data) {
        const int oh = half_size(*h), ow = half_size(*w);
        float *y = diffuse_arena_push(r->a, (size_t)n * c * oh * ow); /* [n, C, h/2, w/2] */
        if (!y || diffuse_conv2d_forward(&lv->sampler, y, *x, n, *h, *w, 2, r->a))
            return -1;
        push_skip(r, y, c, oh, ow);
        *x = y;
        *h = oh;
        *w = ow;
    }
    emit(r, r->stage, *x, (size_t)n * c * *h * *w);
    return 0;
}

/* y [n, C, h, w] = resnet(transformer(resnet(x))); t [n, C, h, w] scratch. */
static int mid_block(unet_run *r, float *y, float *t, const float *x, int h, int w)
{
    const diffuse_unet *u = r->u;
    snprintf(r->stage, sizeof r->stage, "mid_block");
    if (diffuse_resnet_forward(&u->mid_res[0], t, x, r->temb_act, r->n, h, w, r->a) ||
        transformer_forward(&u->mid_attn, t, r->context, r->n, h * w, r->tokens, u->cfg.context_dim,
                            r->a) ||
        diffuse_resnet_forward(&u->mid_res[1], y, t, r->temb_act, r->n, h, w, r->a))
        return -1;
    emit(r, r->stage, y, (size_t)r->n * u->mid_res[1].cout * h * w);
    return 0;
}

/* Nearest-neighbour resize [n*c, h, w] -> [n*c, oh, ow] with torch's rule
 * src = floor(dst * in / out): the upsampler's path when a latent side is not
 * a multiple of 2^(levels-1) and diffusers passes the skip's size. */
static void resize_nearest(float *y, const float *x, int nc, int h, int w, int oh, int ow)
{
    const float sy = (float)h / oh, sx = (float)w / ow;
    for (int p = 0; p < nc; p++)
        for (int oy = 0; oy < oh; oy++) {
            int iy = (int)floorf(oy * sy);
            iy = iy < h - 1 ? iy : h - 1;
            for (int ox = 0; ox < ow; ox++) {
                int ix = (int)floorf(ox * sx);
                ix = ix < w - 1 ? ix : w - 1;
                y[((size_t)p * oh + oy) * ow + ox] = x[((size_t)p * h + iy) * w + ix];
            }
        }
}

/* pp[*cur] [n, *c, h, w] -> pp[other] [n, C, oh, ow] = conv(upsample(x)),
 * (oh, ow) the size of the next skip. */
static int upsample(unet_run *r, const unet_level *lv, float *pp[2], int *cur, int *h, int *w)
{
    const int n = r->n, c = lv->cout;
    const int oh = r->skip_h[r->nskip - 1], ow = r->skip_w[r->nskip - 1];
    size_t mark = diffuse_arena_mark(r->a);
    float *big = diffuse_arena_push(r->a, (size_t)n * c * oh * ow); /* [n, C, oh, ow] */
    if (!big)
        return -1;
    if (r->a->dry)
        ;
    else if (oh == 2 * *h && ow == 2 * *w)
        diffuse_op_upsample2x(big, pp[*cur], n, c, *h, *w);
    else
        resize_nearest(big, pp[*cur], n * c, *h, *w, oh, ow);
    if (diffuse_conv2d_forward(&lv->sampler, pp[!*cur], big, n, oh, ow, 1, r->a))
        return -1;
    diffuse_arena_reset(r->a, mark);
    *cur = !*cur;
    *h = oh;
    *w = ow;
    return 0;
}

/* Up block b: the hidden state pp[*cur] [n, *c, h, w] meets the skips popped
 * in reverse; each resnet reads the channel concatenation [hidden, skip]
 * and writes the other ping-pong buffer. */
static int up_block(unet_run *r, int b, float *pp[2], int *cur, int *c, int *h, int *w)
{
    const unet_level *lv = &r->u->up[b];
    const int n = r->n;
    const size_t hw = (size_t)*h * *w;
    snprintf(r->stage, sizeof r->stage, "up_blocks.%d", b);
    for (int i = 0; i < lv->nres; i++) {
        const int k = --r->nskip, cs = r->skip_c[k];
        size_t mark = diffuse_arena_mark(r->a);
        float *cat = diffuse_arena_push(r->a, (size_t)n * (*c + cs) * hw); /* [n, c + cs, h, w] */
        if (!cat)
            return -1;
        for (int j = 0; !r->a->dry && j < n; j++) {
            float *dst = cat + (size_t)j * (*c + cs) * hw;
            memcpy(dst, pp[*cur] + (size_t)j * *c * hw, sizeof(float) * *c * hw);
            memcpy(dst + (size_t)*c * hw, r->skip[k] + (size_t)j * cs * hw,
                   sizeof(float) * cs * hw);
        }
        if (diffuse_resnet_forward(&lv->resnets[i], pp[!*cur], cat, r->temb_act, n, *h, *w, r->a))
            return -1;
        diffuse_arena_reset(r->a, mark);
        *cur = !*cur;
        *c = lv->cout;
        if (lv->has_attn && transformer_forward(&lv->attn[i], pp[*cur], r->context, n, (int)hw,
                                                r->tokens, r->u->cfg.context_dim, r->a))
            return -1;
    }
    if (lv->sampler.w.data && upsample(r, lv, pp, cur, h, w))
        return -1;
    emit(r, r->stage, pp[*cur], (size_t)n * *c * *h * *w);
    return 0;
}

/* The whole network on a prepared run; -1 when the arena runs out. */
static int run_all(unet_run *r, float *out, const float *x, const float *timestep, int h, int w)
{
    const diffuse_unet *u = r->u;
    const diffuse_unet_config *cfg = &u->cfg;
    const int n = r->n, L = cfg->levels;
    int hs[DIFFUSE_MAX_LEVELS], ws[DIFFUSE_MAX_LEVELS];
    level_sizes(h, w, L, hs, ws);
    snprintf(r->stage, sizeof r->stage, "time_embedding");
    if (time_embedding(r, timestep))
        return -1;

    /* conv_in: [n, in, h, w] -> [n, c0, h, w], the first skip */
    snprintf(r->stage, sizeof r->stage, "conv_in");
    float *cur = diffuse_arena_push(r->a, (size_t)n * cfg->channels[0] * h * w);
    if (!cur || diffuse_conv2d_forward(&u->conv_in, cur, x, n, h, w, 1, r->a))
        return -1;
    emit(r, "conv_in", cur, (size_t)n * cfg->channels[0] * h * w);
    push_skip(r, cur, cfg->channels[0], h, w);

    int hl = h, wl = w; /* cur: [n, C_l, hl, wl] */
    for (int l = 0; l < L; l++)
        if (down_block(r, l, &cur, &hl, &wl))
            return -1;

    /* mid and up paths alternate between two buffers of the largest activation */
    const size_t ppf = pingpong_floats(u, n, hs, ws);
    float *pp[2] = {diffuse_arena_push(r->a, ppf), diffuse_arena_push(r->a, ppf)};
    int pc = 0, c = cfg->channels[L - 1];
    if (!pp[0] || !pp[1] || mid_block(r, pp[0], pp[1], cur, hl, wl))
        return -1;
    for (int b = 0; b < L; b++)
        if (up_block(r, b, pp, &pc, &c, &hl, &wl))
            return -1;

    /* conv_norm_out + SiLU, conv_out: [n, c0, h, w] -> [n, out, h, w] */
    snprintf(r->stage, sizeof r->stage, "conv_out");
    if (!r->a->dry)
        diffuse_op_group_norm(pp[!pc], pp[pc], u->norm_out.gamma, u->norm_out.beta, n, c, h * w,
                              cfg->groups, cfg->eps, true);
    if (diffuse_conv2d_forward(&u->conv_out, out, pp[!pc], n, h, w, 1, r->a))
        return -1;
    emit(r, "conv_out", out, (size_t)n * cfg->out_channels * h * w);
    return 0;
}

/* The plan of a pass: run_all on a dry arena, after its inputs. */
diffuse_plan diffuse_unet_plan(const diffuse_unet *u, int n, int h, int w, int tokens)
{
    const diffuse_unet_config *cfg = &u->cfg;
    diffuse_arena a;
    if (n < 1 || h < 1 || w < 1 || tokens < 1 || diffuse_arena_dry(&a))
        return (diffuse_plan){.floats = DIFFUSE_PLAN_NONE};
    const size_t px = (size_t)n * h * w;
    float *x = diffuse_arena_push(&a, px * cfg->in_channels);
    float *out = diffuse_arena_push(&a, px * cfg->out_channels);
    float *t = diffuse_arena_push(&a, (size_t)n);
    diffuse_unet_cond cond = {.context =
                                  diffuse_arena_push(&a, (size_t)n * tokens * cfg->context_dim),
                              .tokens = tokens,
                              .text_embeds = diffuse_arena_push(&a, (size_t)n * (cfg->add_in + 1)),
                              .time_ids = diffuse_arena_push(&a, (size_t)n * DIFFUSE_TIME_IDS)};
    const size_t inputs = a.used;
    unet_run r = {
        .u = u, .n = n, .tokens = tokens, .context = cond.context, .cond = &cond, .a = &a};
    int rc = x && out && t && cond.time_ids ? run_all(&r, out, x, t, h, w) : -1;
    return diffuse_arena_plan(&a, inputs, rc);
}

size_t diffuse_unet_workspace(const diffuse_unet *u, int n, int h, int w, int tokens)
{
    return diffuse_unet_plan(u, n, h, w, tokens).floats;
}

int diffuse_unet_forward(const diffuse_unet *u, float *out, const float *x, const float *timestep,
                         const diffuse_unet_cond *cond, int n, int h, int w, diffuse_arena *a,
                         const diffuse_trace *trace, char *err)
{
    const int tokens = cond->tokens;
    if (n < 1 || h < 1 || w < 1 || tokens < 1 || h > 1 << 14 || w > 1 << 14)
        return diffuse_fail(err, "UNet: invalid input size n=%d %dx%d, %d context tokens", n, h, w,
                            tokens);
    if (u->cfg.add_in && (!cond->text_embeds || !cond->time_ids))
        return diffuse_fail(err, "UNet: this model is conditioned on a pooled text embedding "
                                 "and size ids (SDXL), and none were given");
    for (int i = 0; i < n; i++)
        if (!isfinite(timestep[i]))
            return diffuse_fail(err, "UNet: timestep %d is not finite", i);
    const size_t mark = diffuse_arena_mark(a);
    unet_run r = {.u = u,
                  .n = n,
                  .tokens = tokens,
                  .context = cond->context,
                  .cond = cond,
                  .a = a,
                  .trace = trace};
    int rc = run_all(&r, out, x, timestep, h, w);
    diffuse_arena_reset(a, mark);
    if (rc)
        return diffuse_fail(err,
                            "internal: UNet work memory exhausted, or a oneDNN call refused, in %s "
                            "(arena of %zu floats, %zu needed for n=%d %dx%d)",
                            r.stage, a->cap, diffuse_unet_workspace(u, n, h, w, tokens), n, h, w);
    return 0;
}
