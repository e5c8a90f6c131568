/* conditioning.c: what a model family feeds its UNet besides the latents and
 * the timestep, from a prompt and the run's sizes.
 *
 * SD 1.x / 2.x: the context is one CLIP encoder's final-normed last state.
 * SDXL: the context is the penultimate states of its two encoders side by
 * side ([77, 768 + 1280]); the pooled embedding is the second encoder's
 * projected end-token state; six size and crop numbers (diffusers' add_time_ids)
 * go with them. With force_zeros_for_empty_prompt, a run without any negative
 * prompt gets zeros for the unconditional context and pooled embedding.
 */
#include <string.h>

#include "internal.h"

int diffuse_cond_context_dim(const diffuse_model *m)
{
    return m->unet_cfg.context_dim;
}

int diffuse_cond_pooled_dim(const diffuse_model *m)
{
    return m->clip2 ? m->clip2_cfg.projection : 0;
}

size_t diffuse_cond_workspace(const diffuse_model *m)
{
    size_t a = diffuse_clip_workspace(m->clip, 1);
    size_t b = m->clip2 ? diffuse_clip_workspace(m->clip2, 1) : 0;
    return a > b ? a : b;
}

size_t diffuse_cond_weight_bytes(const diffuse_model *m)
{
    return diffuse_weights_bytes(m->weights, "text.") + diffuse_weights_bytes(m->weights, "text2.");
}

void diffuse_cond_release(const diffuse_model *m)
{
    diffuse_weights_release(m->weights, "text.");
    diffuse_weights_release(m->weights, "text2.");
}

bool diffuse_cond_zeros(const diffuse_model *m, const char *negative_prompt)
{
    return !negative_prompt && m->force_zeros;
}

/* Grows c to `count` chunks with A1111's empty chunk (<start>, <end>, then
 * the pad id; weights 1): SDXL's two encoders must see as many. */
static void cond_grow(diffuse_prompt_chunks *c, int count, int32_t bos, int32_t eos, int32_t pad)
{
    const int t = DIFFUSE_MAX_TOKENS;
    for (; c->count < count; c->count++) {
        int32_t *ids = c->ids + (size_t)c->count * t;
        float *w = c->weights + (size_t)c->count * t;
        for (int i = 0; i < t; i++) {
            ids[i] = i == 0 ? bos : i == 1 || pad == eos ? eos : pad;
            w[i] = 1.0f;
        }
    }
}

int diffuse_cond_tokens(const diffuse_model *m, const char *text, int *tokens, char *err)
{
    diffuse_prompt_chunks c;
    *tokens = DIFFUSE_MAX_TOKENS;
    if (!text)
        return 0;
    if (diffuse_prompt_chunk(m->tokenizer, text, m->clip_cfg.pad_id, &c, err))
        return -1;
    int count = c.count;
    diffuse_prompt_chunks_free(&c);
    if (m->clip2) { /* "!" is a token of its own there: the counts can differ */
        if (diffuse_prompt_chunk(m->tokenizer, text, m->clip2_cfg.pad_id, &c, err))
            return -1;
        count = c.count > count ? c.count : count;
        diffuse_prompt_chunks_free(&c);
    }
    *tokens = count * DIFFUSE_MAX_TOKENS;
    return 0;
}

/* One encoder's states for every chunk into context (columns from `col`),
 * weighted by A1111's emphasis; pooled (SDXL) from the first chunk. Clip skip
 * N (SD 1.x, as A1111 defines it): the state N - 1 blocks before the last,
 * through the final LayerNorm. */
static int cond_encoder(const diffuse_model *m, const diffuse_clip *clip, int width, int col,
                        const diffuse_prompt_chunks *c, int clip_skip, float *context,
                        float *pooled, diffuse_arena *a, char *err)
{
    const int t = DIFFUSE_MAX_TOKENS, ctx = diffuse_cond_context_dim(m);
    float *out = context + col;
    if (clip_skip > 1 && diffuse_cond_clip_skips(m)) {
        if (diffuse_clip_hidden(clip, c->ids, c->count, m->clip_cfg.layers + 1 - clip_skip, true,
                                out, a, err))
            return -1;
    } else if (diffuse_clip_encode(clip, c->ids, 1, out, ctx, pooled, a, err) ||
               (c->count > 1 && diffuse_clip_encode(clip, c->ids + t, c->count - 1,
                                                    out + (size_t)t * ctx, ctx, NULL, a, err))) {
        return -1;
    }
    for (int k = 0; c->weighted && !a->dry && k < c->count; k++)
        diffuse_prompt_emphasis(out + (size_t)k * t * ctx, ctx, width, c->weights + (size_t)k * t);
    return 0;
}

bool diffuse_cond_clip_skips(const diffuse_model *m)
{
    /* SD 1.x: one encoder whose context is its final-normed last state. A1111
     * ignores clip skip for SD 2.x (the penultimate state already) and SDXL */
    return !strcmp(m->family, "sd1") && !m->clip2 && m->clip_cfg.hidden_norm &&
           m->clip_cfg.hidden_layer == m->clip_cfg.layers &&
           m->clip_cfg.width == diffuse_cond_context_dim(m);
}

int diffuse_cond_encode(const diffuse_model *m, const char *text, int clip_skip, float *context,
                        float *pooled, diffuse_arena *a, char *err)
{
    const int ctx = diffuse_cond_context_dim(m), pd = diffuse_cond_pooled_dim(m);
    if (!text && a->dry)
        return 0;
    if (!text) { /* force_zeros_for_empty_prompt: no negative prompt at all */
        memset(context, 0, sizeof(float) * DIFFUSE_MAX_TOKENS * ctx);
        if (pooled)
            memset(pooled, 0, sizeof(float) * pd);
        return 0;
    }
    diffuse_prompt_chunks c1 = {0}, c2 = {0};
    int rc = diffuse_prompt_chunk(m->tokenizer, text, m->clip_cfg.pad_id, &c1, err);
    if (rc == 0 && m->clip2)
        rc = diffuse_prompt_chunk(m->tokenizer, text, m->clip2_cfg.pad_id, &c2, err);
    if (rc == 0 && m->clip2) { /* both encoders see as many chunks */
        const int32_t bos = diffuse_tokenizer_bos(m->tokenizer),
                      eos = diffuse_tokenizer_eos(m->tokenizer);
        int n = c1.count > c2.count ? c1.count : c2.count;
        cond_grow(&c1, n, bos, eos, m->clip_cfg.pad_id);
        cond_grow(&c2, n, bos, eos, m->clip2_cfg.pad_id);
    }
    if (rc == 0)
        rc = cond_encoder(m, m->clip, m->clip_cfg.width, 0, &c1, clip_skip, context,
                          m->clip2 ? NULL : pooled, a, err);
    /* the second encoder (SDXL) fills the columns after the first's */
    if (rc == 0 && m->clip2)
        rc = cond_encoder(m, m->clip2, m->clip2_cfg.width, m->clip_cfg.width, &c2, 0, context,
                          pooled, a, err);
    diffuse_prompt_chunks_free(&c1);
    diffuse_prompt_chunks_free(&c2);
    return rc;
}

void diffuse_cond_time_ids(const diffuse_size_cond *s, int width, int height,
                           float ids[DIFFUSE_TIME_IDS])
{
    ids[0] = (float)(s->original_height > 0 ? s->original_height : height);
    ids[1] = (float)(s->original_width > 0 ? s->original_width : width);
    ids[2] = (float)s->crop_top;
    ids[3] = (float)s->crop_left;
    ids[4] = (float)(s->target_height > 0 ? s->target_height : height);
    ids[5] = (float)(s->target_width > 0 ? s->target_width : width);
}
