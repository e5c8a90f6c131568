/* clip.c: the CLIP text encoder that turns token ids into the UNet's context.
 *
 * transformers' CLIPTextModel: token + position embeddings, pre-norm blocks
 * (LayerNorm -> causal self-attention -> residual; LayerNorm -> MLP with
 * quick_gelu (OpenAI CLIP) or gelu (OpenCLIP) -> residual), final LayerNorm.
 * SD 2.x's OpenCLIP runs one block fewer than the checkpoint holds (the
 * "penultimate layer"); the caller sets that in cfg->layers. SDXL reads the
 * penultimate state of both its encoders without the final LayerNorm, and the
 * second one's pooled output through text_projection (cfg->hidden_layer,
 * hidden_norm, projection).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct clip_block {
    diffuse_norm ln1, ln2;     /* layer_norm1/2 [width] */
    diffuse_linear q, k, v, o; /* self_attn.{q,k,v,out}_proj [width, width] */
    diffuse_linear fc1, fc2;   /* mlp [intermediate, width], [width, intermediate] */
} clip_block;

struct diffuse_clip {
    diffuse_clip_config cfg;
    diffuse_wmat token_embedding;    /* [vocab, width], rows widened as read */
    size_t widen_max;                /* floats of the largest block weight widened at use */
    const float *position_embedding; /* [max_positions, width] */
    clip_block *blocks;              /* [layers] */
    diffuse_norm final_ln;           /* [width] */
    diffuse_linear projection;       /* text_projection [projection, width]; w NULL: none */
};

static int clip_block_load(clip_block *b, diffuse_weights *w, int i, const diffuse_clip_config *c,
                           char *err)
{
    char n[160];
    const int d = c->width;
#define SUB(s) (snprintf(n, sizeof n, "%stext_model.encoder.layers.%d.%s", c->prefix, i, s), n)
    if (diffuse_norm_load(&b->ln1, w, SUB("layer_norm1"), d, err) ||
        diffuse_norm_load(&b->ln2, w, SUB("layer_norm2"), d, err) ||
        diffuse_linear_load(&b->q, w, SUB("self_attn.q_proj"), d, d, true, err) ||
        diffuse_linear_load(&b->k, w, SUB("self_attn.k_proj"), d, d, true, err) ||
        diffuse_linear_load(&b->v, w, SUB("self_attn.v_proj"), d, d, true, err) ||
        diffuse_linear_load(&b->o, w, SUB("self_attn.out_proj"), d, d, true, err) ||
        diffuse_linear_load(&b->fc1, w, SUB("mlp.fc1"), d, c->intermediate, true, err) ||
        diffuse_linear_load(&b->fc2, w, SUB("mlp.fc2"), c->intermediate, d, true, err))
        return -1;
#undef SUB
    return 0;
}

int diffuse_clip_load(const diffuse_clip_config *cfg, diffuse_weights *w, diffuse_clip **out,
                      char *err)
{
    *out = NULL;
    if (cfg->width <= 0 || cfg->heads <= 0 || cfg->width % cfg->heads || cfg->layers <= 0 ||
        cfg->max_positions != DIFFUSE_MAX_TOKENS || cfg->hidden_layer < 1 ||
        cfg->hidden_layer > cfg->layers || cfg->projection < 0)
        return diffuse_fail(err,
                            "text encoder: unsupported shape (width %d, heads %d, layers %d, "
                            "positions %d, hidden state of layer %d)",
                            cfg->width, cfg->heads, cfg->layers, cfg->max_positions,
                            cfg->hidden_layer);
    diffuse_clip *c = calloc(1, sizeof *c);
    if (!c || !(c->blocks = calloc((size_t)cfg->layers, sizeof *c->blocks))) {
        free(c);
        return diffuse_fail(err, "out of memory");
    }
    c->cfg = *cfg;
    const char *p = cfg->prefix;
    char n[160];
    int rc = 0;
    snprintf(n, sizeof n, "%stext_model.embeddings.token_embedding.weight", p);
    if (diffuse_weights_table(w, n, 2, (int64_t[]){cfg->vocab_size, cfg->width},
                              &c->token_embedding, err) ||
        !(c->position_embedding =
              diffuse_weights_getf(w, err, (int64_t[]){cfg->max_positions, cfg->width, -1},
                                   "%stext_model.embeddings.position_embedding.weight", p)))
        rc = -1;
    for (int i = 0; rc == 0 && i < cfg->layers; i++)
        rc = clip_block_load(&c->blocks[i], w, i, cfg, err);
    snprintf(n, sizeof n, "%stext_model.final_layer_norm", p);
    if (rc == 0)
        rc = diffuse_norm_load(&c->final_ln, w, n, cfg->width, err);
    snprintf(n, sizeof n, "%stext_projection", p);
    if (rc == 0 && cfg->projection)
        rc = diffuse_linear_load(&c->projection, w, n, cfg->width, cfg->projection, false, err);
    if (rc) {
        diffuse_clip_free(c);
        return -1;
    }
    c->widen_max = diffuse_weights_widen_max(w, p);
    *out = c;
    return 0;
}

void diffuse_clip_free(diffuse_clip *c)
{
    if (!c)
        return;
    free(c->blocks);
    free(c);
}

/* x [T, d] += out_proj(attention(q, k, v of ln1(x))), causal. */
static int clip_attention(const diffuse_clip *c, const clip_block *b, float *x, float *h, float *q,
                          float *k, float *v, float *scratch, diffuse_arena *a)
{
    const int t = DIFFUSE_MAX_TOKENS, d = c->cfg.width, heads = c->cfg.heads;
    if (!a->dry)
        diffuse_op_layer_norm(h, x, b->ln1.gamma, b->ln1.beta, t, d, c->cfg.eps);
    if (diffuse_linear_forward(&b->q, q, h, t, a) || diffuse_linear_forward(&b->k, k, h, t, a) ||
        diffuse_linear_forward(&b->v, v, h, t, a))
        return -1;
    if (!a->dry)
        diffuse_op_attention(h, q, d, k, v, d, t, t, heads, d / heads, true, scratch);
    diffuse_arena_count(a, diffuse_attention_flops(t, t, d));
    if (diffuse_linear_forward(&b->o, q, h, t, a))
        return -1;
    if (!a->dry)
        diffuse_op_add(x, q, (size_t)t * d);
    return 0;
}

/* x [T, d] += fc2(act(fc1(ln2(x)))) */
static int clip_mlp(const diffuse_clip *c, const clip_block *b, float *x, float *h, float *mid,
                    diffuse_arena *a)
{
    const int t = DIFFUSE_MAX_TOKENS, d = c->cfg.width;
    if (!a->dry)
        diffuse_op_layer_norm(h, x, b->ln2.gamma, b->ln2.beta, t, d, c->cfg.eps);
    if (diffuse_linear_forward(&b->fc1, mid, h, t, a))
        return -1;
    if (a->dry)
        ;
    else if (c->cfg.gelu)
        diffuse_op_gelu(mid, (size_t)t * c->cfg.intermediate);
    else
        diffuse_op_quick_gelu(mid, (size_t)t * c->cfg.intermediate);
    if (diffuse_linear_forward(&b->fc2, h, mid, t, a))
        return -1;
    if (!a->dry)
        diffuse_op_add(x, h, (size_t)t * d);
    return 0;
}

/* x [T, d] = token + position embeddings of one prompt's ids. */
static int clip_embed(const diffuse_clip *c, float *x, const int32_t *ids, char *err)
{
    const int t = DIFFUSE_MAX_TOKENS, d = c->cfg.width;
    const diffuse_wmat *te = &c->token_embedding;
    const size_t elsize = te->dtype == DIFFUSE_DTYPE_F32 ? 4 : 2;
    for (int p = 0; p < t; p++) {
        if (ids[p] < 0 || ids[p] >= c->cfg.vocab_size)
            return diffuse_fail(err, "token id %d outside the vocabulary of %d", ids[p],
                                c->cfg.vocab_size);
        diffuse_op_widen(x + (size_t)p * d, (const uint8_t *)te->data + (size_t)ids[p] * d * elsize,
                         te->dtype, (size_t)d);
        for (int j = 0; j < d; j++)
            x[(size_t)p * d + j] += c->position_embedding[(size_t)p * d + j];
    }
    return 0;
}

/* rows [T] of `stride` floats at dst = x [T, d], through final_layer_norm or not. */
static void clip_store(const diffuse_clip *c, float *dst, int stride, const float *x, bool norm,
                       float *tmp)
{
    const int t = DIFFUSE_MAX_TOKENS, d = c->cfg.width;
    if (norm) {
        diffuse_op_layer_norm(tmp, x, c->final_ln.gamma, c->final_ln.beta, t, d, c->cfg.eps);
        x = tmp;
    }
    for (int p = 0; p < t; p++)
        memcpy(dst + (size_t)p * stride, x + (size_t)p * d, sizeof(float) * d);
}

/* The one pass behind every output: the state after `hidden_layer` blocks
 * into hidden (rows `stride` apart) when hidden is set, and the pooled output
 * when pooled is set (which runs every block). */
static int clip_run(const diffuse_clip *c, const int32_t *ids, int n, int hidden_layer,
                    bool hidden_norm, float *hidden, int stride, float *pooled, diffuse_arena *a,
                    char *err)
{
    const int t = DIFFUSE_MAX_TOKENS, d = c->cfg.width;
    if (pooled && !c->projection.w.data)
        return diffuse_fail(err, "internal: this text encoder has no text_projection");
    const int layers = pooled ? c->cfg.layers : hidden_layer;
    size_t mark = diffuse_arena_mark(a);
    float *x = diffuse_arena_push(a, (size_t)t * d);                     /* [T, d] */
    float *h = diffuse_arena_push(a, (size_t)t * d);                     /* [T, d] */
    float *q = diffuse_arena_push(a, (size_t)t * d);                     /* [T, d] */
    float *k = diffuse_arena_push(a, (size_t)t * d);                     /* [T, d] */
    float *v = diffuse_arena_push(a, (size_t)t * d);                     /* [T, d] */
    float *mid = diffuse_arena_push(a, (size_t)t * c->cfg.intermediate); /* [T, 4d] */
    float *scratch = diffuse_arena_push(a, diffuse_attention_scratch(t, t, d / c->cfg.heads));
    if (!x || !h || !q || !k || !v || !mid || !scratch)
        return diffuse_fail(err, "internal: text encoder work memory exhausted");
    for (int i = 0; i < n; i++) {
        const int32_t *row = ids + (size_t)i * t;
        if (!a->dry && clip_embed(c, x, row, err))
            return -1;
        for (int l = 0; l <= layers; l++) {
            if (hidden && l == hidden_layer && !a->dry)
                clip_store(c, hidden + (size_t)i * t * stride, stride, x, hidden_norm, h);
            if (l < layers && (clip_attention(c, &c->blocks[l], x, h, q, k, v, scratch, a) ||
                               clip_mlp(c, &c->blocks[l], x, h, mid, a)))
                return diffuse_fail(err, "internal: text encoder work memory exhausted");
        }
        if (pooled) { /* transformers: the first place of the end token (0 when none) */
            int e = 0;
            while (!a->dry && e < t && row[e] != c->cfg.eos_id)
                e++;
            e = e < t ? e : 0;
            if (!a->dry)
                diffuse_op_layer_norm(h, x + (size_t)e * d, c->final_ln.gamma, c->final_ln.beta, 1,
                                      d, c->cfg.eps);
            if (diffuse_linear_forward(&c->projection, pooled + (size_t)i * c->cfg.projection, h, 1,
                                       a))
                return diffuse_fail(err, "internal: text encoder work memory exhausted");
        }
    }
    diffuse_arena_reset(a, mark);
    return 0;
}

int diffuse_clip_forward(const diffuse_clip *c, float *out, const int32_t *ids, int n,
                         diffuse_arena *a, char *err)
{
    return clip_run(c, ids, n, c->cfg.layers, true, out, c->cfg.width, NULL, a, err);
}

int diffuse_clip_hidden(const diffuse_clip *c, const int32_t *ids, int n, int layers, bool norm,
                        float *out, diffuse_arena *a, char *err)
{
    if (layers < 0 || layers > c->cfg.layers)
        return diffuse_fail(err, "text encoder: no hidden state after %d blocks (it runs %d)",
                            layers, c->cfg.layers);
    return clip_run(c, ids, n, layers, norm, out, c->cfg.width, NULL, a, err);
}

int diffuse_clip_encode(const diffuse_clip *c, const int32_t *ids, int n, float *hidden, int stride,
                        float *pooled, diffuse_arena *a, char *err)
{
    return clip_run(c, ids, n, c->cfg.hidden_layer, c->cfg.hidden_norm, hidden, stride, pooled, a,
                    err);
}

/* The encoder run dry on n prompts, every block and the projection when
 * there is one (the most any output takes). */
diffuse_plan diffuse_clip_plan(const diffuse_clip *c, int n)
{
    diffuse_arena a;
    if (n < 1 || diffuse_arena_dry(&a))
        return (diffuse_plan){.floats = DIFFUSE_PLAN_NONE};
    const size_t t = DIFFUSE_MAX_TOKENS;
    int32_t *ids = (int32_t *)diffuse_arena_push(&a, (size_t)n * t); /* never touched */
    float *out = diffuse_arena_push(&a, (size_t)n * t * c->cfg.width);
    float *pooled = diffuse_arena_push(&a, (size_t)n * (c->cfg.projection + 1));
    const size_t inputs = a.used;
    int rc = ids && out && pooled ? clip_run(c, ids, n, c->cfg.layers, true, out, c->cfg.width,
                                             c->projection.w.data ? pooled : NULL, &a, NULL)
                                  : -1;
    return diffuse_arena_plan(&a, inputs, rc);
}

size_t diffuse_clip_workspace(const diffuse_clip *c, int n)
{
    return diffuse_clip_plan(c, n).floats;
}
