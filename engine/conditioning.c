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

int diffuse_cond_context_dim(const diffuse_model *m) { return m->unet_cfg.context_dim; }

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

int diffuse_cond_encode(diffuse_model *m, const char *text, float *context, float *pooled,
                        diffuse_arena *a, char *err)
{
    const int ctx = diffuse_cond_context_dim(m), pd = diffuse_cond_pooled_dim(m);
    int32_t ids[DIFFUSE_MAX_TOKENS];
    if (!text) { /* force_zeros_for_empty_prompt: no negative prompt at all */
        memset(context, 0, sizeof(float) * DIFFUSE_MAX_TOKENS * ctx);
        if (pooled)
            memset(pooled, 0, sizeof(float) * pd);
        return 0;
    }
    if (diffuse_tokenizer_encode(m->tokenizer, text, m->clip_cfg.pad_id, ids, err) ||
        diffuse_clip_encode(m->clip, ids, 1, context, ctx, NULL, a, err))
        return -1;
    if (!m->clip2)
        return 0;
    /* the second tokenizer differs only in its pad token ("!", id 0) */
    if (diffuse_tokenizer_encode(m->tokenizer, text, m->clip2_cfg.pad_id, ids, err) ||
        diffuse_clip_encode(m->clip2, ids, 1, context + m->clip_cfg.width, ctx, pooled, a, err))
        return -1;
    return 0;
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
