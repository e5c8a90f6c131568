/* pipeline.c: text to image, image to image and masked image to image, as
 * diffusers' StableDiffusion{,XL}{,Img2Img,Inpaint}Pipeline compute them:
 * encode the prompts, start from noise (or the noised image latents), denoise
 * with classifier-free guidance, decode. All memory is taken before the
 * denoising loop starts; the loop allocates nothing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Everything one run holds besides the arena, carved from one allocation. */
typedef struct pipe_buffers {
    float *block;
    float *context;       /* [tokens[0] + tokens[1], context_dim]: negative first */
    float *pooled;        /* [nb, pooled_dim] (SDXL) */
    float *time_ids;      /* [nb, 6] (SDXL) */
    float *latents;       /* [1, C, h, w] */
    float *noise;         /* [1, C, h, w] start noise, kept for inpaint re-noising */
    float *image_latents; /* [1, C, h, w] encoded init image (scaled) */
    float *mask_latent;   /* [h, w] 1 = repaint */
    float
        *masked_latents; /* [1, C, h, w] inpainting UNet: the image with the repaint area blanked */
    float *model_in;     /* [nb, uc, h, w] */
    float *model_out;    /* [nb, C, h, w] */
    float *pixels;       /* [3, H, W] VAE input / output */
    float *moments;      /* [1, 2C, h, w] */
    float *preview;      /* [h, w, 3], or [H, W, 3] through TAESD */
    float timesteps[2];
} pipe_buffers;

typedef struct pipe_dims {
    int nb;             /* UNet batch: 2 with guidance, else 1 */
    int c, h, w;        /* latent */
    size_t latent_n;    /* c * h * w */
    int uc;             /* UNet input channels: c, or 2c + 1 for an inpainting UNet */
    bool inpaint;       /* the UNet also reads a mask and the masked image's latents */
    size_t in_n;        /* uc * h * w */
    int ctx;            /* context width */
    int pooled;         /* pooled text width, 0 but for SDXL */
    int tokens[2];      /* context rows of each UNet input: 77 per prompt chunk */
    int context_rows;   /* tokens[0] + ... tokens[nb - 1] */
    bool batched;       /* one UNet pass for the batch (the same tokens) */
    bool taesd_preview; /* previews through the model's TAESD decoder, at full size */
    size_t preview_n;   /* floats of one preview */
} pipe_dims;

/* The negative prompt as encoded: NULL for the zero conditioning. */
static const char *negative_text(const diffuse_model *m, const diffuse_run *run)
{
    return run->negative_prompt ? run->negative_prompt : diffuse_cond_zeros(m, NULL) ? NULL : "";
}

/* A prompt and its negative can differ in chunks: then, as A1111 does by
 * default, the two UNet inputs run one at a time, each with its own context. */
static int dims_of(const diffuse_model *m, const diffuse_run *run, pipe_dims *out, char *err)
{
    pipe_dims d;
    const int f = 1 << (m->vae_cfg.levels - 1);
    d.nb = run->guidance > 1.0f ? 2 : 1;
    d.c = m->vae_cfg.latent_channels;
    d.h = run->height / f;
    d.w = run->width / f;
    d.latent_n = (size_t)d.c * d.h * d.w;
    d.uc = m->unet_cfg.in_channels;
    d.inpaint = diffuse_model_inpaints(m);
    d.in_n = (size_t)d.uc * d.h * d.w;
    d.ctx = diffuse_cond_context_dim(m);
    d.pooled = diffuse_cond_pooled_dim(m);
    const char *texts[2] = {negative_text(m, run), run->prompt};
    d.context_rows = 0;
    for (int i = 0; i < d.nb; i++) {
        if (diffuse_cond_tokens(m, d.nb == 2 ? texts[i] : run->prompt, &d.tokens[i], err))
            return -1;
        d.context_rows += d.tokens[i];
    }
    d.batched = d.nb == 1 || d.tokens[0] == d.tokens[1];
    d.taesd_preview = run->preview_every > 0 && diffuse_taesd_has(m->taesd, true) &&
                      diffuse_taesd_latent_channels(m->taesd) == d.c && f == 8;
    d.preview_n = d.taesd_preview ? (size_t)3 * run->width * run->height : (size_t)3 * d.h * d.w;
    *out = d;
    return 0;
}

static int max_tokens(const pipe_dims *d)
{
    return d->nb == 2 && d->tokens[1] > d->tokens[0] ? d->tokens[1] : d->tokens[0];
}

static size_t unet_workspace(const diffuse_model *m, const pipe_dims *d)
{
    return diffuse_unet_workspace(m->unet, d->batched ? d->nb : 1, d->h, d->w, max_tokens(d));
}

/* The VAE's work: the decode (whole or in bands), and the encode of an init
 * image (an inpainting UNet encodes its masked image). */
static size_t vae_decode_floats(const diffuse_model *m, const diffuse_run *run)
{
    return diffuse_vae_decode_plan(m->vae, run->height, run->width, run->decode_tiling).floats;
}
static size_t vae_encode_floats(const diffuse_model *m, const diffuse_run *run)
{
    return diffuse_vae_plan(m->vae, true, run->height, run->width).floats;
}

static size_t arena_floats(const diffuse_model *m, const pipe_dims *d, const diffuse_run *run)
{
    size_t a = diffuse_cond_workspace(m);
    size_t u = unet_workspace(m, d);
    size_t v = run->fast_decode ? 0 : vae_decode_floats(m, run);
    if ((run->init_image || d->inpaint) && !run->fast_encode) {
        size_t e = vae_encode_floats(m, run);
        v = e > v ? e : v;
    }
    if (m->taesd && (run->fast_decode || run->fast_encode || d->taesd_preview)) {
        size_t t = diffuse_taesd_workspace(m->taesd, run->height, run->width);
        v = t > v ? t : v;
    }
    if (run->preview_every > 0 && !d->taesd_preview && !m->preview_map) {
        size_t p = diffuse_preview_fit_workspace(m);
        v = p > v ? p : v;
    }
    return ((a > u ? a : u) > v ? (a > u ? a : u) : v) + run->lora_scratch;
}

/* The run's buffers one after another from base; returns their floats.
 * With base NULL it only counts (the pointers stay NULL): one layout both
 * sizes the block and carves it. */
static size_t buffers_layout(pipe_buffers *b, const pipe_dims *d, const diffuse_run *run,
                             float *base)
{
    size_t off = 0;
#define TAKE(field, n) (b->field = base ? base + off : NULL, off += diffuse_arena_size(n))
    TAKE(context, (size_t)d->context_rows * d->ctx);
    TAKE(pooled, (size_t)d->nb * d->pooled);
    TAKE(time_ids, (size_t)d->nb * DIFFUSE_TIME_IDS);
    TAKE(latents, d->latent_n);
    TAKE(noise, d->latent_n);
    TAKE(image_latents, d->latent_n);
    TAKE(mask_latent, (size_t)d->h * d->w);
    TAKE(masked_latents, d->latent_n);
    TAKE(model_in, d->nb * d->in_n);
    TAKE(model_out, d->nb * d->latent_n);
    TAKE(pixels, (size_t)3 * run->width * run->height);
    TAKE(moments, 2 * d->latent_n);
    TAKE(preview, d->preview_n);
#undef TAKE
    return off;
}

static size_t buffers_floats(const pipe_dims *d, const diffuse_run *run)
{
    pipe_buffers counted;
    return buffers_layout(&counted, d, run, NULL);
}

static int buffers_init(pipe_buffers *b, const pipe_dims *d, const diffuse_run *run, char *err)
{
    memset(b, 0, sizeof *b);
    if (!(b->block = malloc(sizeof(float) * buffers_floats(d, run))))
        return diffuse_fail(err, "out of memory for %dx%d", run->width, run->height);
    buffers_layout(b, d, run, b->block);
    return 0;
}

/* ------------------------------------------------------------------ stages */

/* Whether x [n] holds only finite numbers: checked after every phase and step
 * (a fraction of a percent of a step's time), so that no image with NaN or
 * infinite pixels is ever made. */
static bool finite_all(const float *x, size_t n)
{
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++)
        acc += x[i] * 0.0f; /* NaN or +-inf make NaN; finite values 0 */
    return acc == 0.0f;
}

static diffuse_status nonfinite(char *err, const char *what)
{
    diffuse_fail(err,
                 "%s: the numbers went NaN or infinite (the model's weights or its "
                 "configuration hold values that cannot work); no image was made",
                 what);
    return DIFFUSE_ERR_NONFINITE;
}

/* Adds the seconds since *t0 to *field (when the run keeps stats); *t0 = now. */
static void lap(const diffuse_run *run, double *t0, double *field)
{
    double t = diffuse_now();
    if (run->stats)
        *field += t - *t0;
    *t0 = t;
}

/* *field += the GFLOP counted on `a` since it stood at f0. */
static void count_gflop(const diffuse_arena *a, double f0, double *field)
{
    if (field)
        *field += (a->flops - f0) * 1e-9;
}

/* context (and SDXL's pooled text and size ids) for [negative, prompt], or
 * [prompt] without guidance. No negative prompt at all is "" for SD 1.x/2.x,
 * zeros for SDXL (force_zeros_for_empty_prompt). */
static int encode_prompts(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                          pipe_buffers *b, diffuse_arena *a, char *err)
{
    const char *texts[2] = {negative_text(m, run), run->prompt};
    float *context = b->context;
    for (int i = 0; i < d->nb; i++) {
        const char *text = d->nb == 2 ? texts[i] : run->prompt;
        if (diffuse_cond_encode(m, text, run->clip_skip, context,
                                d->pooled ? b->pooled + (size_t)i * d->pooled : NULL, a, err))
            return -1;
        context += (size_t)d->tokens[i] * d->ctx;
        diffuse_cond_time_ids(&run->size_cond, run->width, run->height,
                              b->time_ids + (size_t)i * DIFFUSE_TIME_IDS);
    }
    diffuse_cond_release(m);
    if (run->trace && run->trace->fn) {
        run->trace->fn(run->trace->user, "context", b->context, (size_t)d->context_rows * d->ctx);
        if (d->pooled) {
            run->trace->fn(run->trace->user, "text_embeds", b->pooled, (size_t)d->nb * d->pooled);
            run->trace->fn(run->trace->user, "time_ids", b->time_ids,
                           (size_t)d->nb * DIFFUSE_TIME_IDS);
        }
    }
    return 0;
}

/* out = scaling * (mean + std * eps) of b->pixels [3, H, W] in [-1, 1], eps
 * from a "vae" draw: the posterior sample diffusers' retrieve_latents takes.
 * With TAESD: its encoder's output as it is (no posterior, no draw; scaling
 * factor 1). */
static int encode_pixels(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                         pipe_buffers *b, diffuse_arena *a, diffuse_noise *noise, float *out,
                         char *err)
{
    if (run->fast_encode)
        return diffuse_taesd_encode(m->taesd, out, b->pixels, run->height, run->width, a, NULL,
                                    err);
    if (diffuse_vae_encode(m->vae, b->moments, b->pixels, run->height, run->width, a, NULL, err) ||
        noise->draw(noise->self, out, d->latent_n, "vae", err))
        return -1;
    diffuse_weights_release(m->weights, "vae.");
    const float scale = m->vae_cfg.scaling_factor;
    for (size_t i = 0; i < d->latent_n; i++) {
        float logvar = fminf(fmaxf(b->moments[d->latent_n + i], -30.0f), 20.0f);
        float std = expf(0.5f * logvar);
        out[i] = scale * (b->moments[i] + std * out[i]);
    }
    return 0;
}

/* image_latents from the init image. */
static int encode_image(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                        pipe_buffers *b, diffuse_arena *a, diffuse_noise *noise, char *err)
{
    const size_t hw = (size_t)run->width * run->height;
    for (size_t p = 0; p < hw; p++) /* [H, W, 3] in [0, 1] -> [3, H, W] in [-1, 1] */
        for (int ch = 0; ch < 3; ch++)
            b->pixels[ch * hw + p] = 2.0f * run->init_image[p * 3 + ch] - 1.0f;
    return encode_pixels(m, run, d, b, a, noise, b->image_latents, err);
}

/* Binarised mask (>= 0.5 repaints), resized to the latent grid by nearest
 * neighbour as torch.nn.functional.interpolate does. */
static void resize_mask(const diffuse_run *run, const pipe_dims *d, float *out)
{
    for (int y = 0; y < d->h; y++)
        for (int x = 0; x < d->w; x++) {
            int sy = (int)floor(y * ((double)run->height / d->h));
            int sx = (int)floor(x * ((double)run->width / d->w));
            out[y * d->w + x] = run->mask[(size_t)sy * run->width + sx] >= 0.5f ? 1.0f : 0.0f;
        }
}

/* An inpainting UNet's extra inputs, as diffusers' StableDiffusionInpaintPipeline
 * makes them: the mask binarised at full size (>= 0.5 repaints: a feather only
 * moves the contour), the image with that area blanked, (2 image - 1)(1 - m),
 * through the VAE (a "vae" draw), and the mask at latent size by its top-left
 * pixel per cell. Without a mask (txt2img, or img2img on such a model) the
 * whole image is repainted, as A1111 does: mask 1, a blank (mid-grey) image. */
static int inpaint_inputs(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                          pipe_buffers *b, diffuse_arena *a, diffuse_noise *noise, char *err)
{
    const size_t hw = (size_t)run->width * run->height, lhw = (size_t)d->h * d->w;
    const bool keep = run->init_image && run->mask;
    for (size_t p = 0; p < hw; p++) {
        const float m_p = keep && run->mask[p] < 0.5f ? 0.0f : 1.0f;
        for (int ch = 0; ch < 3; ch++)
            b->pixels[ch * hw + p] = m_p ? 0.0f : 2.0f * run->init_image[p * 3 + ch] - 1.0f;
    }
    if (keep)
        resize_mask(run, d, b->mask_latent);
    else
        for (size_t i = 0; i < lhw; i++)
            b->mask_latent[i] = 1.0f;
    if (encode_pixels(m, run, d, b, a, noise, b->masked_latents, err))
        return -1;
    if (run->trace && run->trace->fn) {
        run->trace->fn(run->trace->user, "mask_latent", b->mask_latent, lhw);
        run->trace->fn(run->trace->user, "masked_image_latents", b->masked_latents, d->latent_n);
    }
    return 0;
}

/* The draws come in diffusers' order: [init image posterior (img2img below
 * strength 1 only), start noise, masked image posterior, step noise...]. */
static int prepare_inpaint(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                           pipe_buffers *b, diffuse_sampler_state *s, diffuse_arena *a,
                           diffuse_noise *noise, char *err)
{
    const bool from_image = run->init_image && run->strength < 1.0f;
    if ((from_image && encode_image(m, run, d, b, a, noise, err)) ||
        noise->draw(noise->self, b->noise, d->latent_n, "start", err) ||
        inpaint_inputs(m, run, d, b, a, noise, err))
        return -1;
    if (from_image) {
        diffuse_sampler_add_noise(s, 0, b->image_latents, b->noise, b->latents);
    } else {
        const float sigma = diffuse_sampler_init_sigma(s);
        for (size_t i = 0; i < d->latent_n; i++)
            b->latents[i] = b->noise[i] * sigma;
    }
    return 0;
}

static int prepare_latents(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                           pipe_buffers *b, diffuse_sampler_state *s, diffuse_arena *a,
                           diffuse_noise *noise, char *err)
{
    if (d->inpaint)
        return prepare_inpaint(m, run, d, b, s, a, noise, err);
    if (run->init_image && encode_image(m, run, d, b, a, noise, err))
        return -1;
    if (noise->draw(noise->self, b->noise, d->latent_n, "start", err))
        return -1;
    if (run->mask) {
        resize_mask(run, d, b->mask_latent);
        if (run->masked_content == DIFFUSE_MASKED_LATENT_NOISE) /* A1111's "latent noise" */
            for (int c = 0; c < d->c; c++)
                for (size_t p = 0, hw = (size_t)d->h * d->w; p < hw; p++)
                    if (b->mask_latent[p] > 0.5f)
                        b->image_latents[c * hw + p] = b->noise[c * hw + p];
        /* the inpaint pipeline also encodes the masked image: one more VAE draw
         * whose latents a 4-channel UNet never reads; take it to stay in step
         * (TAESD's encoder draws nothing) */
        if (!run->fast_encode && noise->draw(noise->self, b->latents, d->latent_n, "vae", err))
            return -1;
    }
    bool pure_noise = !run->init_image || (run->mask && run->strength >= 1.0f);
    if (pure_noise) {
        const float sigma = diffuse_sampler_init_sigma(s);
        for (size_t i = 0; i < d->latent_n; i++)
            b->latents[i] = b->noise[i] * sigma;
    } else {
        diffuse_sampler_add_noise(s, 0, b->image_latents, b->noise, b->latents);
    }
    return 0;
}

/* in [uc, h, w]: channels c.. of one UNet input, after the scaled latents */
static void inpaint_channels(const pipe_dims *d, const pipe_buffers *b, float *in)
{
    const size_t hw = (size_t)d->h * d->w;
    memcpy(in + d->latent_n, b->mask_latent, sizeof(float) * hw);
    memcpy(in + d->latent_n + hw, b->masked_latents, sizeof(float) * d->latent_n);
}

/* model_out[0] = uncond + g (cond - uncond) */
static void apply_guidance(const pipe_dims *d, float *out, float g)
{
    if (d->nb == 1)
        return;
    const float *cond = out + d->latent_n;
    for (size_t i = 0; i < d->latent_n; i++)
        out[i] = out[i] + g * (cond[i] - out[i]);
}

/* latents = (1 - mask) * noised(original) + mask * latents */
static void blend_mask(const pipe_dims *d, pipe_buffers *b, diffuse_sampler_state *s, int i,
                       int count)
{
    float *proper = b->model_in; /* free after the step */
    if (i + 1 < count)
        diffuse_sampler_add_noise(s, i + 1, b->image_latents, b->noise, proper);
    else
        memcpy(proper, b->image_latents, sizeof(float) * d->latent_n);
    const size_t hw = (size_t)d->h * d->w;
    for (int c = 0; c < d->c; c++)
        for (size_t p = 0; p < hw; p++) {
            float mk = b->mask_latent[p];
            size_t j = c * hw + p;
            b->latents[j] = (1.0f - mk) * proper[j] + mk * b->latents[j];
        }
}

/* The picture of the run so far, handed to the preview callback: the latents
 * through the model's TAESD decoder (at the image's size), else through the
 * fitted linear map (at the latent size). b->pixels is free during the loop. */
static diffuse_status preview(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                              pipe_buffers *b, diffuse_arena *a, int step, int count, char *err)
{
    int w = d->w, h = d->h;
    if (d->taesd_preview) {
        if (diffuse_taesd_decode(m->taesd, b->pixels, b->latents, run->height, run->width, a, NULL,
                                 err))
            return DIFFUSE_ERR_INTERNAL; /* the arena was sized for it */
        w = run->width;
        h = run->height;
        const size_t hw = (size_t)w * h;
        for (size_t p = 0; p < hw; p++) /* [3, H, W] -> [H, W, 3], clamped */
            for (int ch = 0; ch < 3; ch++) {
                const float v = b->pixels[ch * hw + p];
                b->preview[p * 3 + ch] = v > 0 ? (v < 1 ? v : 1) : 0;
            }
    } else {
        diffuse_preview_rgb(m, b->latents, d->h, d->w, b->preview);
    }
    if (run->preview(run->preview_user, run->image_index, step, count, b->preview, w, h)) {
        diffuse_fail(err, "cancelled");
        return DIFFUSE_ERR_CANCELLED;
    }
    return DIFFUSE_OK;
}

/* model_out = UNet(model_in) for the batch: one pass, or one per input when
 * their contexts differ in length. */
static int unet_passes(diffuse_model *m, const pipe_dims *d, pipe_buffers *b, diffuse_arena *a,
                       char *err)
{
    const int passes = d->batched ? 1 : d->nb, n = d->batched ? d->nb : 1;
    size_t row = 0;
    for (int k = 0; k < passes; k++) {
        const diffuse_unet_cond cond = {
            .context = b->context + row * d->ctx,
            .tokens = d->tokens[k],
            .text_embeds = d->pooled ? b->pooled + (size_t)k * d->pooled : NULL,
            .time_ids = d->pooled ? b->time_ids + (size_t)k * DIFFUSE_TIME_IDS : NULL};
        if (diffuse_unet_forward(m->unet, b->model_out + k * d->latent_n, b->model_in + k * d->in_n,
                                 b->timesteps + k, &cond, n, d->h, d->w, a, NULL, err))
            return -1;
        row += d->tokens[k];
    }
    return 0;
}

static diffuse_status denoise(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                              pipe_buffers *b, diffuse_sampler_state *s, diffuse_arena *a,
                              diffuse_noise *noise, char *err)
{
    const int count = diffuse_sampler_count(s);
    diffuse_stats *stats = run->stats;
    for (int i = 0; i < count; i++) {
        for (int k = 0; k < d->nb; k++) {
            diffuse_sampler_scale_input(s, i, b->latents, b->model_in + k * d->in_n);
            if (d->inpaint) /* [latents, mask, masked image latents] on the channel axis */
                inpaint_channels(d, b, b->model_in + k * d->in_n);
            b->timesteps[k] = diffuse_sampler_timestep(s, i);
        }
        const double t0 = diffuse_now(), f0 = a->flops;
        if (unet_passes(m, d, b, a, err))
            return DIFFUSE_ERR_INTERNAL; /* sizes and conditioning were checked: a sizing bug */
        if (stats) {
            stats->unet_s += diffuse_now() - t0;
            stats->unet_passes++;
            stats->unet_evals += d->nb;
            stats->unet_gflop += (a->flops - f0) * 1e-9;
        }
        apply_guidance(d, b->model_out, run->guidance);
        if (diffuse_sampler_step(s, i, b->model_out, b->latents, noise, err))
            return DIFFUSE_ERR_FORMAT;
        if (!finite_all(b->latents, d->latent_n)) {
            char what[64];
            snprintf(what, sizeof what, "denoising step %d of %d", i + 1, count);
            return nonfinite(err, what);
        }
        if (run->trace && run->trace->fn && i == 0 && d->inpaint)
            run->trace->fn(run->trace->user, "unet_input0", b->model_in, d->nb * d->in_n);
        if (run->mask && !d->inpaint) /* an inpainting UNet never mixes the image back */
            blend_mask(d, b, s, i, count);
        if (run->on_step)
            run->on_step(run->on_step_user, i, b->latents, d->latent_n);
        if (run->preview_every > 0 && ((i + 1) % run->preview_every == 0 || i + 1 == count)) {
            diffuse_status ps = preview(m, run, d, b, a, i + 1, count, err);
            if (ps != DIFFUSE_OK)
                return ps;
        }
        if (run->progress &&
            run->progress(run->progress_user, run->image_index, run->image_count, i + 1, count)) {
            diffuse_fail(err, "cancelled");
            return DIFFUSE_ERR_CANCELLED;
        }
    }
    diffuse_weights_release(m->weights, "unet.");
    return DIFFUSE_OK;
}

/* pixels_out [H, W, 3] = clamp(decode(latents / scaling) / 2 + 0.5, 0, 1);
 * with TAESD clamp(decoder(latents), 0, 1): it works in [0, 1] and on the
 * latents as the UNet makes them (diffusers' AutoencoderTiny: scaling 1). */
/* A decode in bands asks between bands whether to go on: the progress
 * callback, at the last step again. */
static int decode_stop(void *user)
{
    const diffuse_run *run = user;
    return run->progress && run->progress(run->progress_user, run->image_index, run->image_count,
                                          run->steps, run->steps);
}

static diffuse_status decode_latents(diffuse_model *m, const diffuse_run *run, const pipe_dims *d,
                                     pipe_buffers *b, diffuse_arena *a, float *pixels_out,
                                     char *err)
{
    const bool fast = run->fast_decode;
    for (size_t i = 0; !fast && i < d->latent_n; i++)
        b->latents[i] /= m->vae_cfg.scaling_factor;
    int rc =
        fast ? diffuse_taesd_decode(m->taesd, b->pixels, b->latents, run->height, run->width, a,
                                    NULL, err)
             : diffuse_vae_decode_tiled(m->vae, b->pixels, b->latents, run->height, run->width,
                                        run->decode_tiling, a, NULL, decode_stop, (void *)run, err);
    if (rc)
        return rc == 1 ? DIFFUSE_ERR_CANCELLED : DIFFUSE_ERR_INTERNAL;
    if (!fast)
        diffuse_weights_release(m->weights, "vae.");
    const size_t hw = (size_t)run->width * run->height;
    const float scale = fast ? 1.0f : 0.5f, shift = fast ? 0.0f : 0.5f;
    for (size_t p = 0; p < hw; p++)
        for (int ch = 0; ch < 3; ch++) {
            float v = b->pixels[ch * hw + p] * scale + shift;
            pixels_out[p * 3 + ch] = v < 0 ? 0 : v > 1 ? 1 : v;
        }
    return DIFFUSE_OK;
}

diffuse_status diffuse_pipeline_run(diffuse_model *m, const diffuse_run *run, diffuse_noise *noise,
                                    float *pixels_out, char *err)
{
    pipe_dims d;
    if (dims_of(m, run, &d, err))
        return DIFFUSE_ERR_ARGUMENT;
    pipe_buffers b;
    diffuse_arena a = {0};
    diffuse_sampler_state *s = NULL;
    float strength = run->init_image ? run->strength : 1.0f;
    diffuse_status st = DIFFUSE_ERR_MEMORY;
    if (buffers_init(&b, &d, run, err))
        return DIFFUSE_ERR_MEMORY;
    if (diffuse_arena_init(&a, arena_floats(m, &d, run), err))
        goto done;
    st = DIFFUSE_ERR_ARGUMENT;
    if (diffuse_sampler_create(run->sampler, run->karras, &run->schedule, run->steps, strength,
                               d.latent_n, &s, err))
        goto done;
    /* from here on, with the prompts parsed (dims_of) and the memory checked,
     * a failure is the engine's own: work memory planned too small */
    st = DIFFUSE_ERR_INTERNAL;
    double t0 = diffuse_now(), unused = 0;
    if (encode_prompts(m, run, &d, &b, &a, err))
        goto done;
    if (!finite_all(b.context, (size_t)d.context_rows * d.ctx) ||
        (d.pooled && !finite_all(b.pooled, (size_t)d.nb * d.pooled))) {
        st = nonfinite(err, "text encoder");
        goto done;
    }
    lap(run, &t0, run->stats ? &run->stats->text_s : &unused);
    count_gflop(&a, 0, run->stats ? &run->stats->text_gflop : NULL);
    double f0 = a.flops;
    if (prepare_latents(m, run, &d, &b, s, &a, noise, err))
        goto done;
    count_gflop(&a, f0, run->stats ? &run->stats->vae_gflop : NULL);
    if (!finite_all(b.latents, d.latent_n) ||
        (d.inpaint && !finite_all(b.masked_latents, d.latent_n))) {
        st = nonfinite(err, run->init_image || d.inpaint ? "image encoder (VAE)" : "start noise");
        goto done;
    }
    if (run->preview_every > 0 && !d.taesd_preview &&
        (st = diffuse_preview_fit(m, &a, err)) != DIFFUSE_OK)
        goto done; /* once per model */
    lap(run, &t0, run->stats && run->init_image ? &run->stats->vae_encode_s : &unused);
    st = denoise(m, run, &d, &b, s, &a, noise, err);
    t0 = diffuse_now();
    f0 = a.flops;
    if (st == DIFFUSE_OK)
        st = decode_latents(m, run, &d, &b, &a, pixels_out, err);
    count_gflop(&a, f0, run->stats ? &run->stats->vae_gflop : NULL);
    if (st == DIFFUSE_OK && !finite_all(b.pixels, (size_t)3 * run->width * run->height))
        st = nonfinite(err, run->fast_decode ? "image decoder (TAESD)" : "image decoder (VAE)");
    lap(run, &t0, run->stats ? &run->stats->vae_decode_s : &unused);
done:
    if (st == DIFFUSE_OK && a.overflow) { /* a sizing bug: the tests must never see it */
        diffuse_fail(err, "internal: the run's work memory was sized too small");
        st = DIFFUSE_ERR_INTERNAL;
    }
    diffuse_sampler_free(s);
    diffuse_arena_free(&a);
    free(b.block);
    return st;
}

static size_t max_of(size_t a, size_t b)
{
    return a > b ? a : b;
}

/* The run's resident peak beyond what the process holds at its start, phase by
 * phase: one phase's weights are mapped at a time (each is released when it
 * ends), while the arena's pages, once touched, stay resident: after a phase
 * it holds the most any phase so far has used. */
size_t diffuse_pipeline_memory(const diffuse_model *m, const diffuse_run *run)
{
    pipe_dims d;
    if (dims_of(m, run, &d, NULL)) /* an unreadable prompt: refused before this counts */
        return 0;
    const size_t wt = diffuse_cond_weight_bytes(m);
    const size_t wu = diffuse_weights_bytes(m->weights, "unet.");
    const size_t wv = diffuse_weights_bytes(m->weights, "vae.");
    /* a LoRA's factors stay mapped through the run; the matrices it changes
     * are widened into scratch on top of each phase's own */
    const size_t lora = sizeof(float) * run->lora_scratch;
    const size_t ac = sizeof(float) * diffuse_cond_workspace(m) + lora;
    const size_t au = sizeof(float) * unet_workspace(m, &d) + lora;
    const size_t ave = sizeof(float) * vae_encode_floats(m, run);
    const size_t avd = sizeof(float) * vae_decode_floats(m, run);
    /* TAESD's weights are float32 in memory since load: only its work counts */
    const size_t at =
        m->taesd ? sizeof(float) * diffuse_taesd_workspace(m->taesd, run->height, run->width) : 0;
    size_t touched = ac, peak = wt + ac;
    if (d.taesd_preview) /* previews decode with TAESD, beside the UNet's work */
        touched = max_of(touched, at);
    else if (run->preview_every > 0 && !m->preview_map) { /* the fit encodes with the VAE */
        touched = max_of(touched, sizeof(float) * diffuse_preview_fit_workspace(m));
        peak = max_of(peak, wv + touched);
    }
    if (run->init_image || d.inpaint) { /* an inpainting UNet encodes its masked image */
        touched = max_of(touched, run->fast_encode ? at : ave);
        peak = max_of(peak, (run->fast_encode ? 0 : wv) + touched);
    }
    touched = max_of(touched, au);
    peak = max_of(peak, wu + touched);
    touched = max_of(touched, run->fast_decode ? at : avd);
    peak = max_of(peak, (run->fast_decode ? 0 : wv) + touched);
    /* TAESD keeps its convolutions' weights in oneDNN's layouts once it has run */
    size_t kept = 0;
    if (m->taesd && (run->fast_decode || d.taesd_preview))
        kept += diffuse_taesd_pending_bytes(m->taesd, true, run->height, run->width);
    if (m->taesd && run->fast_encode && (run->init_image || d.inpaint))
        kept += diffuse_taesd_pending_bytes(m->taesd, false, run->height, run->width);
    /* sizing the convolutions above made their oneDNN primitives */
    return sizeof(float) * buffers_floats(&d, run) + peak + run->lora_bytes + kept +
           diffuse_dnnl_pending_bytes();
}

/* The prompts encoded as encode_prompts does, on a dry arena: its count. */
static diffuse_plan text_plan(const diffuse_model *m, const diffuse_run *run, const pipe_dims *d)
{
    const char *texts[2] = {negative_text(m, run), run->prompt};
    diffuse_arena a;
    if (diffuse_arena_dry(&a))
        return (diffuse_plan){.floats = DIFFUSE_PLAN_NONE};
    float *context = diffuse_arena_push(&a, (size_t)d->context_rows * d->ctx);
    float *pooled = diffuse_arena_push(&a, (size_t)d->pooled + 1);
    const size_t inputs = a.used;
    int rc = context && pooled ? 0 : -1;
    for (int i = 0; !rc && i < d->nb; i++) {
        rc = diffuse_cond_encode(m, d->nb == 2 ? texts[i] : run->prompt, run->clip_skip, context,
                                 d->pooled ? pooled : NULL, &a, NULL);
        context += (size_t)d->tokens[i] * d->ctx;
    }
    return diffuse_arena_plan(&a, inputs, rc);
}

static void plan_add(diffuse_plan *sum, diffuse_plan p, double times)
{
    sum->flops += times * p.flops;
    sum->layers += times * p.layers;
}

/* The run's phases, each counted by the dry run of its own code: the text
 * encoders on every prompt chunk, the UNet at every evaluation the sampler
 * makes (one batched pass, or one per input when their chunks differ), the
 * VAE (or TAESD) encode of an init image and the decode. Previews are left
 * out (under 2% of a step). All 0 for a run dims_of refuses. */
void diffuse_pipeline_cost(const diffuse_model *m, const diffuse_run *run,
                           diffuse_plan phase[DIFFUSE_PHASES])
{
    pipe_dims d;
    diffuse_sampler_state *s = NULL;
    for (int i = 0; i < DIFFUSE_PHASES; i++)
        phase[i] = (diffuse_plan){0};
    if (dims_of(m, run, &d, NULL) ||
        diffuse_sampler_create(run->sampler, run->karras, &run->schedule, run->steps,
                               run->init_image ? run->strength : 1.0f, d.latent_n, &s, NULL))
        return;
    const int evals = diffuse_sampler_count(s);
    diffuse_sampler_free(s);
    plan_add(&phase[DIFFUSE_PHASE_TEXT], text_plan(m, run, &d), 1);
    if (d.batched)
        plan_add(&phase[DIFFUSE_PHASE_UNET],
                 diffuse_unet_plan(m->unet, d.nb, d.h, d.w, max_tokens(&d)), evals);
    else
        for (int k = 0; k < d.nb; k++)
            plan_add(&phase[DIFFUSE_PHASE_UNET],
                     diffuse_unet_plan(m->unet, 1, d.h, d.w, d.tokens[k]), evals);
    if (run->init_image || d.inpaint)
        plan_add(&phase[run->fast_encode ? DIFFUSE_PHASE_TAESD : DIFFUSE_PHASE_VAE],
                 run->fast_encode ? diffuse_taesd_plan(m->taesd, false, run->height, run->width)
                                  : diffuse_vae_plan(m->vae, true, run->height, run->width),
                 1);
    plan_add(&phase[run->fast_decode          ? DIFFUSE_PHASE_TAESD
                    : run->decode_tiling.rows ? DIFFUSE_PHASE_VAE_BANDS
                                              : DIFFUSE_PHASE_VAE],
             run->fast_decode
                 ? diffuse_taesd_plan(m->taesd, true, run->height, run->width)
                 : diffuse_vae_decode_plan(m->vae, run->height, run->width, run->decode_tiling),
             1);
}
