/* generate.c: the public entry point diffuse_generate(): checks a request up
 * front (sizes, steps, memory), then runs the pipeline once per image with a
 * seeded generator of its own. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

#include "internal.h"

#define MAX_COUNT 100

diffuse_request diffuse_request_default(void)
{
    return (diffuse_request){.prompt = "",
                             .negative_prompt = NULL,
                             .seed = 0,
                             .steps = 20,
                             .guidance = 7.5f,
                             .sampler = DIFFUSE_SAMPLER_EULER_A,
                             .width = 512,
                             .height = 512,
                             .count = 1,
                             .strength = 0.75f,
                             .rng = DIFFUSE_RNG_PHILOX};
}

/* Seeded Gaussian draws for real runs (the refcheck replays recorded ones):
 * each call is one randn of the generator's tool. */
static int rng_draw(void *self, float *out, size_t n, const char *site, char *err)
{
    diffuse_generator_normal(self, out, n);
    return 0;
}

size_t diffuse_memory_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    size_t have = (size_t)kb * 1024;
    const char *limit = getenv("DIFFUSE_MEMORY_LIMIT_MB"); /* the user's own cap */
    if (limit && *limit) {
        size_t cap = (size_t)strtoull(limit, NULL, 10) << 20;
        have = have && have < cap ? have : cap;
    }
    return have;
}

/* ------------------------------------------------------------------ LoRAs */

/* What a request's LoRAs come to: its own list plus the prompt's <lora:...>
 * tags, applied to the model until closed, and the prompt without its tags. */
typedef struct request_loras {
    char *prompt; /* the text the encoder reads */
    diffuse_lora *list;
    char **paths; /* the tags' files, owned */
    int n;
    diffuse_lora_set *set;
    diffuse_vae_tiling tiling; /* how the VAE decodes (choose_tiling) */
} request_loras;

static bool parse_weight(const char *s, float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || fabs(v) > 100)
        return false;
    *out = (float)v;
    return true;
}

/* <lora:NAME>, <lora:NAME:W> or <lora:NAME:TE:UNET> -> file and weights. */
static diffuse_status tag_lora(const diffuse_prompt_tag *t, const char *dir, diffuse_lora *l,
                               char **path, char *err)
{
    char *args = strdup(t->args), *w1 = NULL, *w2 = NULL;
    if (!args)
        return diffuse_fail(err, "out of memory"), DIFFUSE_ERR_MEMORY;
    if ((w1 = strchr(args, ':')) && (*w1++ = 0, (w2 = strchr(w1, ':'))))
        *w2++ = 0;
    l->weight = l->unet_weight = 1.0f;
    diffuse_status st = DIFFUSE_OK;
    if ((w1 && !parse_weight(w1, &l->weight)) || (w2 && !parse_weight(w2, &l->unet_weight)))
        st = DIFFUSE_ERR_ARGUMENT;
    else if (!w2)
        l->unet_weight = l->weight;
    const size_t n = strlen(args);
    const bool ext = n > 12 && !strcmp(args + n - 12, ".safetensors");
    *path = NULL;
    if (st == DIFFUSE_OK && *args && (*path = malloc(strlen(dir) + n + 16)))
        sprintf(*path, "%s%s%s%s", args[0] == '/' ? "" : dir, args[0] == '/' ? "" : "/", args,
                ext ? "" : ".safetensors");
    if (st != DIFFUSE_OK || !*args)
        diffuse_fail(err,
                     "prompt: %s: expected <lora:NAME>, <lora:NAME:WEIGHT> or "
                     "<lora:NAME:TEXT_WEIGHT:UNET_WEIGHT> (weights between -100 and 100)",
                     t->text),
            st = DIFFUSE_ERR_ARGUMENT;
    else if (!*path)
        diffuse_fail(err, "out of memory"), st = DIFFUSE_ERR_MEMORY;
    else if (access(*path, R_OK) != 0)
        diffuse_fail(err, "prompt: %s: cannot read %s: %s", t->text, *path, strerror(errno)),
            st = DIFFUSE_ERR_IO;
    if (st != DIFFUSE_OK) {
        free(*path);
        *path = NULL;
    }
    free(args);
    return st;
}

static void loras_close(request_loras *l)
{
    diffuse_lora_set_close(l->set);
    for (int i = 0; l->paths && i < l->n; i++)
        free(l->paths[i]);
    free(l->paths);
    free(l->list);
    free(l->prompt);
    memset(l, 0, sizeof *l);
}

static diffuse_status loras_from_tags(const diffuse_request *r, diffuse_prompt_tag *tags, int n,
                                      request_loras *l, char *err)
{
    char dir[4096];
    if (r->lora_dir)
        snprintf(dir, sizeof dir, "%s", r->lora_dir);
    else
        diffuse_default_lora_dir(dir, sizeof dir);
    for (int i = 0; i < n; i++) {
        if (strcmp(tags[i].kind, "lora") && strcmp(tags[i].kind, "lyco")) {
            char msg[DIFFUSE_ERROR_SIZE];
            snprintf(msg, sizeof msg,
                     "prompt: %s is left out: of A1111's extra networks "
                     "Diffuse applies LoRA only",
                     tags[i].text);
            if (r->notice)
                r->notice(r->notice_user, msg);
            continue;
        }
        diffuse_status st = tag_lora(&tags[i], dir, &l->list[l->n], &l->paths[l->n], err);
        if (st != DIFFUSE_OK)
            return st;
        l->list[l->n].path = l->paths[l->n];
        l->n++;
    }
    return DIFFUSE_OK;
}

/* The request's LoRAs, the tags taken out of its prompt (not applied yet);
 * notices only when `tell`. */
static diffuse_status loras_resolve(const diffuse_request *r, bool tell, request_loras *l,
                                    char *err)
{
    diffuse_prompt_tag *tags = NULL;
    int ntags = 0;
    memset(l, 0, sizeof *l);
    if (r->lora_count < 0 || r->lora_count > DIFFUSE_MAX_LORAS || (r->lora_count && !r->loras))
        return diffuse_fail(err, "loras: %d given (at most %d, with a list)", r->lora_count,
                            DIFFUSE_MAX_LORAS),
               DIFFUSE_ERR_ARGUMENT;
    if (!r->prompt)
        return DIFFUSE_OK;
    if (diffuse_prompt_tags(r->prompt, &l->prompt, &tags, &ntags, err))
        return DIFFUSE_ERR_MEMORY;
    const int cap = r->lora_count + ntags;
    l->list = calloc((size_t)(cap ? cap : 1), sizeof *l->list);
    l->paths = calloc((size_t)(cap ? cap : 1), sizeof *l->paths);
    diffuse_status st = l->list && l->paths ? DIFFUSE_OK : DIFFUSE_ERR_MEMORY;
    if (st != DIFFUSE_OK)
        diffuse_fail(err, "out of memory");
    for (int i = 0; st == DIFFUSE_OK && i < r->lora_count; i++)
        l->list[l->n++] = r->loras[i];
    diffuse_request quiet = *r;
    quiet.notice = tell ? r->notice : NULL;
    if (st == DIFFUSE_OK)
        st = loras_from_tags(&quiet, tags, ntags, l, err);
    diffuse_prompt_tags_free(tags, ntags);
    if (st != DIFFUSE_OK)
        loras_close(l);
    return st;
}

/* What the LoRAs add to a run, from their files alone: the factors' bytes,
 * mapped through the run, and arena floats for the largest module's matrix
 * widened with its factors beside it (what the applied set needs, or more). */
static void loras_memory(const request_loras *l, size_t *scratch, size_t *bytes)
{
    *scratch = *bytes = 0;
    for (int i = 0; i < l->n; i++) {
        diffuse_st_file *f;
        if (diffuse_st_open(l->list[i].path, &f, NULL))
            continue; /* reported when applied */
        for (int t = 0; t < f->count; t++)
            *bytes += f->tensors[t].nbytes;
        size_t need = diffuse_lora_file_scratch(f);
        *scratch = need > *scratch ? need : *scratch;
        diffuse_st_close(f);
    }
}

static size_t request_memory(const diffuse_model *m, const diffuse_request *r,
                             const request_loras *l);

static void choose_tiling(const diffuse_model *m, const diffuse_request *r, request_loras *l);

static diffuse_status check_request(const diffuse_model *m, const diffuse_request *r,
                                    request_loras *l, char *err)
{
    const int f = 1 << (m->vae_cfg.levels - 1);
    if (!r->prompt)
        return diffuse_fail(err, "prompt: missing"), DIFFUSE_ERR_ARGUMENT;
    if (r->width < f || r->height < f || r->width % f || r->height % f ||
        r->width > DIFFUSE_MAX_SIDE || r->height > DIFFUSE_MAX_SIDE)
        return diffuse_fail(err,
                            "size: %dx%d is not possible: width and height must be "
                            "multiples of %d between %d and %d",
                            r->width, r->height, f, f, DIFFUSE_MAX_SIDE),
               DIFFUSE_ERR_ARGUMENT;
    if (r->steps < 1 || r->steps > DIFFUSE_MAX_STEPS)
        return diffuse_fail(err, "steps: %d is outside 1..%d", r->steps, DIFFUSE_MAX_STEPS),
               DIFFUSE_ERR_ARGUMENT;
    if (!isfinite(r->guidance) || r->guidance < 0 || r->guidance > DIFFUSE_MAX_GUIDANCE)
        return diffuse_fail(err, "guidance: %g is outside 0..%d", r->guidance,
                            DIFFUSE_MAX_GUIDANCE),
               DIFFUSE_ERR_ARGUMENT;
    if (r->count < 1 || r->count > MAX_COUNT)
        return diffuse_fail(err, "count: %d is outside 1..%d", r->count, MAX_COUNT),
               DIFFUSE_ERR_ARGUMENT;
    if ((unsigned)r->sampler >= DIFFUSE_SAMPLER_COUNT)
        return diffuse_fail(err, "sampler: unknown"), DIFFUSE_ERR_ARGUMENT;
    if (r->init_image && !(r->strength > 0 && r->strength <= 1))
        return diffuse_fail(err, "strength: %g is outside (0, 1]", r->strength),
               DIFFUSE_ERR_ARGUMENT;
    const diffuse_size_cond *sc = &r->size_cond;
    const int sizes[6] = {sc->original_width, sc->original_height, sc->crop_left,
                          sc->crop_top,       sc->target_width,    sc->target_height};
    static const char *const size_names[6] = {"original size", "original size", "crop offset",
                                              "crop offset",   "target size",   "target size"};
    for (int i = 0; i < 6; i++)
        if (sizes[i] < 0 || sizes[i] > DIFFUSE_MAX_SIZE_COND)
            return diffuse_fail(err, "%s: %d is outside 0..%d", size_names[i], sizes[i],
                                DIFFUSE_MAX_SIZE_COND),
                   DIFFUSE_ERR_ARGUMENT;
    if ((r->fast_decode && !diffuse_taesd_has(m->taesd, true)) ||
        (r->fast_encode && !diffuse_taesd_has(m->taesd, false)))
        return diffuse_fail(err,
                            "%s: this model has no tiny autoencoder (TAESD) %s: give one "
                            "when loading it (--decoder PATH), or put a taesd folder or "
                            "taesd_decoder.safetensors beside it",
                            r->fast_decode ? "fast decode" : "fast encode",
                            r->fast_decode ? "decoder" : "encoder"),
               DIFFUSE_ERR_ARGUMENT;
    if ((r->fast_decode || r->fast_encode) &&
        (diffuse_taesd_latent_channels(m->taesd) != m->vae_cfg.latent_channels || f != 8))
        return diffuse_fail(err,
                            "%s: the TAESD works on %d latent channels at 1/8, the model's "
                            "latents are %d channels at 1/%d",
                            r->fast_decode ? "fast decode" : "fast encode",
                            diffuse_taesd_latent_channels(m->taesd), m->vae_cfg.latent_channels, f),
               DIFFUSE_ERR_ARGUMENT;
    if (r->preview_every < 0 || (r->preview_every > 0 && !r->preview))
        return diffuse_fail(err, "preview: every %d steps%s", r->preview_every,
                            r->preview_every > 0 ? " without a preview callback"
                                                 : " is not a "
                                                   "cadence"),
               DIFFUSE_ERR_ARGUMENT;
    if (r->clip_skip < 0 || r->clip_skip > DIFFUSE_MAX_CLIP_SKIP ||
        (r->clip_skip > 1 && diffuse_cond_clip_skips(m) && r->clip_skip > m->clip_cfg.layers))
        return diffuse_fail(err, "clip skip: %d is outside 1..%d", r->clip_skip,
                            diffuse_cond_clip_skips(m) && m->clip_cfg.layers < DIFFUSE_MAX_CLIP_SKIP
                                ? m->clip_cfg.layers
                                : DIFFUSE_MAX_CLIP_SKIP),
               DIFFUSE_ERR_ARGUMENT;
    int tokens;
    if (diffuse_cond_tokens(m, l->prompt, &tokens, err))
        return DIFFUSE_ERR_ARGUMENT;
    if (r->negative_prompt && diffuse_cond_tokens(m, r->negative_prompt, &tokens, err)) {
        char why[DIFFUSE_ERROR_SIZE];
        snprintf(why, sizeof why, "%s", err);
        return diffuse_fail(err, "negative %s", why), DIFFUSE_ERR_ARGUMENT;
    }
    if ((unsigned)r->rng >= DIFFUSE_RNG_KINDS)
        return diffuse_fail(err, "rng: unknown generator %d", (int)r->rng), DIFFUSE_ERR_ARGUMENT;
    if ((unsigned)r->masked_content >= DIFFUSE_MASKED_KINDS)
        return diffuse_fail(err, "masked content: unknown kind %d", (int)r->masked_content),
               DIFFUSE_ERR_ARGUMENT;
    if (r->mask && !r->init_image)
        return diffuse_fail(err, "mask: needs an init image"), DIFFUSE_ERR_ARGUMENT;
    if (r->decode_rows < 0 ||
        (r->decode_rows && !r->fast_decode && (r->decode_rows % f || r->decode_rows >= r->height)))
        return diffuse_fail(err,
                            "decode rows: %d is not possible: bands are a multiple of %d rows, "
                            "fewer than the image's %d (or 0: automatic)",
                            r->decode_rows, f, r->height),
               DIFFUSE_ERR_ARGUMENT;
    choose_tiling(m, r, l);
    size_t need = request_memory(m, r, l), have = diffuse_memory_available();
    if (have && need > have)
        return diffuse_fail(err,
                            "size: %dx%d needs %zu MiB of working memory%s, only %zu MiB are "
                            "available",
                            r->width, r->height, need >> 20,
                            l->tiling.rows ? " (its decode in bands)" : "", have >> 20),
               DIFFUSE_ERR_MEMORY;
    return DIFFUSE_OK;
}

/* The VAE decode of a request that passed every other check: whole, or in
 * bands (r->decode_rows, or when the whole decode would not fit in the
 * memory there is: the fewest flops that fit; none fitting, the least
 * memory, for the error to quote). */
static void choose_tiling(const diffuse_model *m, const diffuse_request *r, request_loras *l)
{
    diffuse_vae_tiling t[DIFFUSE_VAE_TILINGS];
    diffuse_plan p[DIFFUSE_VAE_TILINGS];
    l->tiling = (diffuse_vae_tiling){0};
    const size_t have = diffuse_memory_available();
    if (r->fast_decode || (!r->decode_rows && (!have || request_memory(m, r, l) <= have)))
        return;
    const int n =
        diffuse_vae_tilings(m->vae, r->height, r->width, r->decode_rows, t, p, DIFFUSE_VAE_TILINGS);
    size_t least = (size_t)-1;
    int best = -1;
    for (int i = 0; i < n; i++) {
        l->tiling = t[i];
        const size_t need = request_memory(m, r, l);
        if (!have || need <= have)
            return;
        if (need < least) {
            least = need;
            best = i;
        }
    }
    l->tiling = best >= 0 ? t[best] : (diffuse_vae_tiling){0};
}

static diffuse_run run_of(const diffuse_model *m, const diffuse_request *r, const request_loras *l)
{
    diffuse_run run = {.prompt = r->prompt,
                       .negative_prompt = r->negative_prompt,
                       .size_cond = r->size_cond,
                       .clip_skip = r->clip_skip,
                       .steps = r->steps,
                       .guidance = r->guidance,
                       .sampler = r->sampler,
                       .karras = r->karras,
                       .schedule = m->schedule,
                       .width = r->width,
                       .height = r->height,
                       .init_image = r->init_image,
                       .strength = r->strength,
                       .mask = r->mask,
                       .masked_content = r->masked_content,
                       .fast_decode = r->fast_decode != 0,
                       .fast_encode = r->fast_encode != 0,
                       .decode_tiling = l->tiling,
                       .progress = r->progress,
                       .preview_every = r->preview ? r->preview_every : 0,
                       .preview = r->preview,
                       .preview_user = r->preview_user,
                       .progress_user = r->progress_user,
                       .image_count = r->count,
                       .stats = r->stats};
    if (r->spacing != DIFFUSE_SPACING_DEFAULT)
        run.schedule.spacing = r->spacing;
    run.prompt = l->prompt;
    loras_memory(l, &run.lora_scratch, &run.lora_bytes);
    return run;
}

static size_t request_memory(const diffuse_model *m, const diffuse_request *r,
                             const request_loras *l)
{
    diffuse_run run = run_of(m, r, l);
    return diffuse_pipeline_memory(m, &run) + (size_t)r->width * r->height * 3 * sizeof(float);
}

size_t diffuse_request_memory(const diffuse_model *m, const diffuse_request *r)
{
    request_loras l;
    if (loras_resolve(r, false, &l, NULL) != DIFFUSE_OK)
        return 0; /* refused before anything is allocated */
    choose_tiling(m, r, &l);
    size_t need = request_memory(m, r, &l);
    loras_close(&l);
    return need;
}

/* The share of gemm_rate() (below: the engine's own sgemm, what the estimate
 * divides by) each phase reaches, dense-equivalent, on SD 1.5 at 512x512 on
 * the 2-core AVX-512 machine of 2026-12-07 (quiet; `diffuse generate
 * --verbose`, 1 step, guidance 7, two runs, gemm_rate 231-248 GFLOP/s): the
 * text encoder 92-133 GFLOP/s, a guided UNet evaluation 234-255 (oneDNN's
 * convolutions and matrix products; Winograd at 64x64), the VAE decode
 * 249. Elementwise work, attention and the sampler are in them; the oneDNN
 * kernels run above the engine's sgemm. Small models (the bundled one) run
 * their small layers below it: their estimates come out short. */
#define COST_SHARE_TEXT 0.45
#define COST_SHARE_UNET 1.0
#define COST_SHARE_VAE 1.0
/* TAESD's 64-channel layers on Winograd F(4x4,3x3) in oneDNN's blocked
 * layout: 671 GFLOP/s dense-equivalent (`bench taesd`, the same hour), which
 * counts every multiply the direct convolution would make. */
#define COST_SHARE_TAESD 2.8
/* The VAE decode in bands: oneDNN's direct convolution without Winograd on
 * sub-bands (vae.c), 0.71 of the sgemm peak where the whole decode reached
 * 0.85 in the same run (`BENCH_BANDS=1 bench_real`, 512x512, bands of 32
 * rows): 0.84 of the whole decode's share. */
#define COST_SHARE_VAE_BANDS 0.84

/* GFLOP/s of the engine's own sgemm (diffuse_gemm, on its pool's threads
 * as they are set), best of 3 products of 768^3 after one to warm up. */
static double gemm_rate(void)
{
    const int n = 768;
    float *a = calloc((size_t)3 * n * n, sizeof(float));
    double best = 0;
    if (!a)
        return 0;
    for (int i = 0; i < 4; i++) {
        double t0 = diffuse_now();
        diffuse_gemm(false, false, n, n, n, 1.0f, a, n, a + (size_t)n * n, n, 0.0f,
                     a + (size_t)2 * n * n, n);
        double dt = diffuse_now() - t0, r = dt > 0 ? 2.0 * n * n * n / dt * 1e-9 : 0;
        best = i && r > best ? r : best;
    }
    free(a);
    return best;
}

diffuse_cost diffuse_request_cost(const diffuse_model *m, const diffuse_request *r)
{
    static double rate; /* measured once per process and thread count */
    static int rate_threads = -1;
    diffuse_cost c = {0};
    request_loras l;
    if (loras_resolve(r, false, &l, NULL) != DIFFUSE_OK)
        return c;
    diffuse_pool_set_threads(m->threads);
    if (check_request(m, r, &l, NULL) == DIFFUSE_OK) {
        diffuse_run run = run_of(m, r, &l);
        diffuse_plan phase[DIFFUSE_PHASES];
        diffuse_pipeline_cost(m, &run, phase);
        c.text_gflop = r->count * phase[DIFFUSE_PHASE_TEXT].flops * 1e-9;
        c.unet_gflop = r->count * phase[DIFFUSE_PHASE_UNET].flops * 1e-9;
        const double vae = r->count * phase[DIFFUSE_PHASE_VAE].flops * 1e-9,
                     taesd = r->count * phase[DIFFUSE_PHASE_TAESD].flops * 1e-9,
                     bands = r->count * phase[DIFFUSE_PHASE_VAE_BANDS].flops * 1e-9;
        c.vae_gflop = vae + taesd + bands; /* as diffuse_stats counts them */
        if (rate_threads != diffuse_pool_threads()) {
            rate = gemm_rate();
            rate_threads = diffuse_pool_threads();
        }
        if (rate > 0)
            c.seconds =
                (c.text_gflop / COST_SHARE_TEXT + c.unet_gflop / COST_SHARE_UNET +
                 vae / COST_SHARE_VAE + taesd / COST_SHARE_TAESD + bands / COST_SHARE_VAE_BANDS) /
                rate;
    }
    loras_close(&l);
    return c;
}

double diffuse_request_seconds(const diffuse_model *m, const diffuse_request *r)
{
    return diffuse_request_cost(m, r).seconds;
}

diffuse_status diffuse_generate(diffuse_model *m, const diffuse_request *r, diffuse_image *images,
                                char *err, size_t err_size)
{
    char e[DIFFUSE_ERROR_SIZE] = "";
    diffuse_pool_set_threads(m->threads); /* before sizing: attention scratch is per thread */
    if (r->stats) {
        memset(r->stats, 0, sizeof *r->stats);
        diffuse_rss_peak_reset();
        r->stats->predicted_peak = diffuse_rss_now() + diffuse_request_memory(m, r);
    }
    request_loras loras = {0};
    diffuse_status st = r->prompt ? loras_resolve(r, true, &loras, e)
                                  : (diffuse_fail(e, "prompt: missing"), DIFFUSE_ERR_ARGUMENT);
    if (st == DIFFUSE_OK && (st = check_request(m, r, &loras, e)) == DIFFUSE_OK && loras.n)
        st =
            diffuse_lora_set_open(m, loras.list, loras.n, r->notice, r->notice_user, &loras.set, e);
    if (st == DIFFUSE_OK && loras.tiling.rows && !r->decode_rows && r->notice) {
        char note[DIFFUSE_ERROR_SIZE];
        snprintf(note, sizeof note,
                 "decode: the whole %dx%d image does not fit in the %zu MiB available, so it is "
                 "decoded in bands of %d rows: the same image, more slowly",
                 r->width, r->height, diffuse_memory_available() >> 20, loras.tiling.rows);
        r->notice(r->notice_user, note);
    }
    if (r->stats)
        r->stats->decode_rows = loras.tiling.rows;
    int done = 0;
    for (; st == DIFFUSE_OK && done < r->count; done++) {
        diffuse_image *img = &images[done];
        img->width = r->width;
        img->height = r->height;
        img->seed = r->seed + (uint64_t)done;
        img->pixels = malloc(sizeof(float) * 3 * r->width * r->height);
        if (!img->pixels) {
            st = DIFFUSE_ERR_MEMORY;
            diffuse_fail(e, "out of memory");
            break;
        }
        diffuse_generator rng;
        diffuse_generator_seed(&rng, r->rng, img->seed);
        diffuse_noise noise = {rng_draw, &rng};
        diffuse_run run = run_of(m, r, &loras);
        run.image_index = done;
        st = diffuse_pipeline_run(m, &run, &noise, img->pixels, e);
        if (st != DIFFUSE_OK)
            diffuse_image_free(img);
    }
    if (r->stats)
        r->stats->peak_rss = diffuse_rss_peak();
    loras_close(&loras);
    if (st != DIFFUSE_OK) {
        for (int i = 0; i < done && i < r->count; i++)
            diffuse_image_free(&images[i]);
        if (err && err_size)
            snprintf(err, err_size, "%s", e);
    }
    return st;
}

void diffuse_image_free(diffuse_image *image)
{
    if (!image)
        return;
    free(image->pixels);
    image->pixels = NULL;
}
