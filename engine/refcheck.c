/* refcheck.c: reproduces a reference directory recorded with diffusers and
 * transformers (format in shared/reference/README.md and DESIGN.md): the
 * tokenizer, the text encoder, the UNet at every recorded timestep, VAE
 * encode and decode, and every pipeline run with its random draws replayed,
 * for the diffusers folder and for each single-file checkpoint in it.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "internal.h"

#define TOL_MODULE 1e-4   /* max abs error / max |reference|, single modules */
#define TOL_PIPELINE 1e-3 /* final image */
#define TOL_FREE 5e-2     /* final image of a free-running run (see check_run) */

/* One denoising step from the reference's state is two UNet passes combined as
 * u + g (c - u): an error e in each pass can become (2g - 1) e, so a step is
 * held to the module tolerance times that factor (1e-4 without guidance,
 * 1.4e-3 at g = 7.5). */
static double step_tolerance(float guidance)
{
    return TOL_MODULE * (guidance > 1 ? 2.0 * guidance - 1.0 : 1.0);
}

typedef struct refcheck {
    const char *dir;
    const char *layout;
    diffuse_st_file *golden;
    cJSON *json;
    diffuse_model *model;
    void (*report)(void *user, const char *line);
    void *user;
    int passed, failed;
} refcheck;

static void report_case(refcheck *r, const char *name, double abs, double rel, double tol)
{
    char line[512];
    bool ok = rel <= tol; /* NaN fails */
    snprintf(line, sizeof line, "%s %s max_abs_err=%.3g rel_err=%.3g %s", r->layout, name, abs, rel,
             ok ? "ok" : "FAIL");
    r->report(r->user, line);
    ok ? r->passed++ : r->failed++;
}

static void report_error(refcheck *r, const char *name, const char *err)
{
    char line[1024];
    snprintf(line, sizeof line, "%s %s max_abs_err=nan rel_err=nan FAIL (%s)", r->layout, name,
             err);
    r->report(r->user, line);
    r->failed++;
}

/* Golden tensor as float32 (int32 ids converted); NULL when absent. */
static float *golden_get(refcheck *r, const char *name, int64_t *numel)
{
    const diffuse_st_tensor *t = diffuse_st_find(r->golden, name);
    float *x = t ? malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1)) : NULL;
    if (!x)
        return NULL;
    if (t->dtype == DIFFUSE_DTYPE_I32) {
        for (int64_t i = 0; i < t->numel; i++) {
            int32_t v;
            memcpy(&v, t->data + 4 * i, 4);
            x[i] = (float)v;
        }
    } else if (diffuse_st_to_f32(t, x, NULL)) {
        free(x);
        return NULL;
    }
    if (numel)
        *numel = t->numel;
    return x;
}

static void compare(refcheck *r, const char *case_name, const char *golden_name, const float *got,
                    size_t n, double tol)
{
    int64_t numel = 0;
    float *ref = golden_get(r, golden_name, &numel);
    if (!ref || (size_t)numel != n) {
        report_error(r, case_name, ref ? "size differs from the reference" : "no reference tensor");
        free(ref);
        return;
    }
    double m = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        m = (d > m || isnan(d)) ? d : m;
        mb = fabs(ref[i]) > mb ? fabs(ref[i]) : mb;
    }
    report_case(r, case_name, m, mb > 0 ? m / mb : m, tol);
    free(ref);
}

/* ------------------------------------------------------------------ tokenizer, text */

/* "tokens" (the first tokenizer) or "tokens_2" (SDXL's second, pad "!"). */
static void check_tokens(refcheck *r, const char *key, const char *case_prefix, int32_t pad_id)
{
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(r->json, key), *item;
    int i = 0;
    cJSON_ArrayForEach(item, tokens)
    {
        char name[64], err[DIFFUSE_ERROR_SIZE];
        int32_t ids[DIFFUSE_MAX_TOKENS];
        snprintf(name, sizeof name, "%s.%d", case_prefix, i++);
        if (diffuse_tokenizer_encode(r->model->tokenizer, item->string, pad_id, ids, err)) {
            report_error(r, name, err);
            continue;
        }
        int wrong = cJSON_GetArraySize(item) == DIFFUSE_MAX_TOKENS ? 0 : DIFFUSE_MAX_TOKENS;
        for (int k = 0; k < DIFFUSE_MAX_TOKENS && !wrong; k++) {
            const cJSON *v = cJSON_GetArrayItem(item, k);
            wrong += !cJSON_IsNumber(v) || v->valueint != ids[k];
        }
        report_case(r, name, wrong, wrong, 0);
    }
}

/* Golden token ids [n, 77] as int32; NULL when absent. */
static int32_t *golden_ids(refcheck *r, const char *name, int *n)
{
    int64_t count = 0;
    float *f = golden_get(r, name, &count);
    int32_t *ids =
        f && count >= DIFFUSE_MAX_TOKENS ? malloc(sizeof(int32_t) * (size_t)count) : NULL;
    for (int64_t i = 0; ids && i < count; i++)
        ids[i] = (int32_t)f[i];
    *n = (int)(count / DIFFUSE_MAX_TOKENS);
    free(f);
    return ids;
}

/* One encoder on the golden ids under `prefix` ("text", "text2"): its last
 * state, its penultimate one where recorded, the pooled output (SDXL's
 * text_embeds) where it has a projection. */
static void check_encoder(refcheck *r, const diffuse_clip *c, const char *prefix, diffuse_arena *a)
{
    char key[64], name[64], err[DIFFUSE_ERROR_SIZE];
    int n = 0;
    snprintf(key, sizeof key, "%s.input_ids", prefix);
    int32_t *ids = golden_ids(r, key, &n);
    snprintf(name, sizeof name, "%s_encoder", strcmp(prefix, "text") ? "text2" : "text");
    if (!ids || n < 1) {
        report_error(r, name, "no input ids recorded");
        free(ids);
        return;
    }
    const diffuse_clip_config *cfg =
        c == r->model->clip ? &r->model->clip_cfg : &r->model->clip2_cfg;
    const size_t out_n = (size_t)n * DIFFUSE_MAX_TOKENS * cfg->width;
    float *out = malloc(sizeof(float) * out_n);
    float *pooled = malloc(sizeof(float) * (size_t)n * (cfg->projection + 1));
    diffuse_arena_reset(a, 0);
    snprintf(key, sizeof key, "%s.last_hidden_state", prefix);
    if (diffuse_clip_forward(c, out, ids, n, a, err))
        report_error(r, name, err);
    else
        compare(r, name, key, out, out_n, TOL_MODULE);
    snprintf(key, sizeof key, "%s.penultimate", prefix);
    if (diffuse_st_find(r->golden, key)) {
        if (diffuse_clip_hidden(c, ids, n, cfg->layers - 1, false, out, a, err))
            report_error(r, key, err);
        else
            compare(r, key, key, out, out_n, TOL_MODULE);
    }
    snprintf(key, sizeof key, "%s.text_embeds", prefix);
    if (cfg->projection && diffuse_st_find(r->golden, key)) {
        if (diffuse_clip_encode(c, ids, n, NULL, 0, pooled, a, err))
            report_error(r, key, err);
        else
            compare(r, key, key, pooled, (size_t)n * cfg->projection, TOL_MODULE);
    }
    free(ids);
    free(out);
    free(pooled);
}

/* SDXL: both encoders' penultimate states side by side, the UNet's context. */
static void check_context(refcheck *r, diffuse_arena *a)
{
    diffuse_model *m = r->model;
    char err[DIFFUSE_ERROR_SIZE];
    int n1 = 0, n2 = 0;
    int32_t *ids1 = golden_ids(r, "text.input_ids", &n1),
            *ids2 = golden_ids(r, "text2.input_ids", &n2);
    const int ctx = diffuse_cond_context_dim(m);
    float *out = malloc(sizeof(float) * (size_t)(n1 > 0 ? n1 : 1) * DIFFUSE_MAX_TOKENS * ctx);
    diffuse_arena_reset(a, 0);
    if (!ids1 || !ids2 || n1 != n2)
        report_error(r, "text.context", "no text.input_ids / text2.input_ids of one batch");
    else if (diffuse_clip_encode(m->clip, ids1, n1, out, ctx, NULL, a, err) ||
             diffuse_clip_encode(m->clip2, ids2, n1, out + m->clip_cfg.width, ctx, NULL, a, err))
        report_error(r, "text.context", err);
    else
        compare(r, "text.context", "text.context", out, (size_t)n1 * DIFFUSE_MAX_TOKENS * ctx,
                TOL_MODULE);
    free(ids1);
    free(ids2);
    free(out);
}

static void check_text(refcheck *r, diffuse_arena *a)
{
    check_encoder(r, r->model->clip, "text", a);
    if (r->model->clip2) {
        check_encoder(r, r->model->clip2, "text2", a);
        check_context(r, a);
    }
}

/* ------------------------------------------------------------------ unet, vae */

typedef struct trace_ctx {
    refcheck *r;
    const char *prefix; /* golden name prefix, e.g. "unet.t999." */
} trace_ctx;

static void trace_compare(void *user, const char *name, const float *data, size_t n)
{
    trace_ctx *t = user;
    char golden[256];
    snprintf(golden, sizeof golden, "%s%s", t->prefix, name);
    if (diffuse_st_find(t->r->golden, golden))
        compare(t->r, golden, golden, data, n, TOL_MODULE);
}

static void check_unet_at(refcheck *r, int t, diffuse_arena *a)
{
    const diffuse_st_tensor *s = diffuse_st_find(r->golden, "unet.sample");
    char prefix[64], name[96], err[DIFFUSE_ERROR_SIZE];
    snprintf(prefix, sizeof prefix, "unet.t%d.", t);
    snprintf(name, sizeof name, "unet.t%d.out", t);
    /* the context the UNet was run on: unet.context where recorded (SDXL) */
    const bool own = diffuse_st_find(r->golden, "unet.context") != NULL;
    float *x = golden_get(r, "unet.sample", NULL);
    float *ctx = golden_get(r, own ? "unet.context" : "text.last_hidden_state", NULL);
    float *embeds = golden_get(r, "unet.text_embeds", NULL);
    float *time_ids = golden_get(r, "unet.time_ids", NULL);
    if (!s || s->ndim != 4 || !x || !ctx) {
        report_error(r, name, "no unet.sample / text.last_hidden_state");
        free(x);
        free(ctx);
        free(embeds);
        free(time_ids);
        return;
    }
    const int n = (int)s->shape[0], h = (int)s->shape[2], w = (int)s->shape[3];
    float *out = malloc(sizeof(float) * (size_t)s->numel * r->model->unet_cfg.out_channels /
                        r->model->unet_cfg.in_channels);
    float ts[16];
    for (int i = 0; i < n && i < 16; i++)
        ts[i] = (float)t;
    trace_ctx tc = {r, prefix};
    diffuse_trace trace = {trace_compare, &tc};
    diffuse_arena_reset(a, 0);
    const diffuse_unet_cond cond = {
        .context = ctx, .tokens = DIFFUSE_MAX_TOKENS, .text_embeds = embeds, .time_ids = time_ids};
    if (n > 16 || diffuse_unet_forward(r->model->unet, out, x, ts, &cond, n, h, w, a, &trace, err))
        report_error(r, name, n > 16 ? "batch over 16" : err);
    else
        compare(r, name, name, out, (size_t)n * r->model->unet_cfg.out_channels * h * w,
                TOL_MODULE);
    free(out);
    free(x);
    free(ctx);
    free(embeds);
    free(time_ids);
}

static void check_unet(refcheck *r, diffuse_arena *a)
{
    for (int i = 0; i < r->golden->count; i++) {
        int t, len = 0;
        const char *k = r->golden->tensors[i].name;
        if (sscanf(k, "unet.t%d.out%n", &t, &len) == 1 && len && k[len] == 0)
            check_unet_at(r, t, a);
    }
}

static void check_vae(refcheck *r, diffuse_arena *a)
{
    const diffuse_st_tensor *img = diffuse_st_find(r->golden, "vae.image");
    const diffuse_st_tensor *lat = diffuse_st_find(r->golden, "vae.latent");
    char err[DIFFUSE_ERROR_SIZE];
    if (!img || img->ndim != 4 || !lat) {
        report_error(r, "vae", "no vae.image / vae.latent");
        return;
    }
    const int h = (int)img->shape[2], w = (int)img->shape[3];
    float *x = golden_get(r, "vae.image", NULL), *z = golden_get(r, "vae.latent", NULL);
    float *moments = malloc(sizeof(float) * 2 * (size_t)lat->numel);
    float *out = malloc(sizeof(float) * (size_t)img->numel);
    trace_ctx tc = {r, "vae."};
    diffuse_trace trace = {trace_compare, &tc};
    diffuse_arena_reset(a, 0);
    if (diffuse_vae_encode(r->model->vae, moments, x, h, w, a, &trace, err))
        report_error(r, "vae.encode.moments", err);
    else
        compare(r, "vae.encode.moments", "vae.encode.moments", moments, 2 * (size_t)lat->numel,
                TOL_MODULE);
    diffuse_arena_reset(a, 0);
    if (diffuse_vae_decode(r->model->vae, out, z, h, w, a, &trace, err))
        report_error(r, "vae.decode.out", err);
    else
        compare(r, "vae.decode.out", "vae.decode.out", out, (size_t)img->numel, TOL_MODULE);
    free(x);
    free(z);
    free(moments);
    free(out);
}

/* ------------------------------------------------------------------ pipeline runs */

#define MAX_DRAWS 256

/* Replays the recorded Gaussian draws in order, checking each one's site. */
typedef struct replay {
    refcheck *r;
    char names[MAX_DRAWS][128];
    char sites[MAX_DRAWS][8];
    int count, next;
} replay;

static const char *site_kind(const char *site)
{
    if (strstr(site, "vae") && strstr(site, "sample"))
        return "vae";
    if (strstr(site, "prepare_latents"))
        return "start";
    return strstr(site, "step") ? "step" : "?";
}

static int replay_draw(void *self, float *out, size_t n, const char *site, char *err)
{
    replay *p = self;
    if (p->next >= p->count)
        return diffuse_fail(err, "draw %d (%s) was not recorded", p->next, site);
    const char *name = p->names[p->next];
    if (strcmp(p->sites[p->next], site) != 0)
        return diffuse_fail(err, "draw %s is a '%s' draw, the engine asked for '%s'", name,
                            p->sites[p->next], site);
    const diffuse_st_tensor *t = diffuse_st_find(p->r->golden, name);
    if (!t || (size_t)t->numel != n)
        return diffuse_fail(err, "draw %s: missing or not %zu values", name, n);
    p->next++;
    return diffuse_st_to_f32(t, out, err);
}

static void replay_init(replay *p, refcheck *r, const char *run, const cJSON *spec)
{
    char name[128];
    memset(p, 0, sizeof *p);
    p->r = r;
    snprintf(name, sizeof name, "%s.noise0", run);
    if (diffuse_st_find(r->golden, name)) {
        snprintf(p->names[p->count], sizeof p->names[0], "%s", name);
        snprintf(p->sites[p->count++], sizeof p->sites[0], "start");
    }
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(spec, "draws"))
    {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(d, "name");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(d, "site");
        if (p->count < MAX_DRAWS && cJSON_IsString(n) && cJSON_IsString(s)) {
            snprintf(p->names[p->count], sizeof p->names[0], "%s", n->valuestring);
            snprintf(p->sites[p->count++], sizeof p->sites[0], "%s", site_kind(s->valuestring));
        }
    }
}

typedef struct step_ctx {
    refcheck *r;
    const char *run;
    bool force; /* restart every step from the reference's latents */
    double worst_abs, worst_rel;
    int missing;
} step_ctx;

static void on_step(void *user, int i, float *latents, size_t n)
{
    step_ctx *s = user;
    char name[160];
    int64_t numel = 0;
    snprintf(name, sizeof name, "%s.step%d.latents", s->run, i);
    float *ref = golden_get(s->r, name, &numel);
    if (!ref || (size_t)numel != n) {
        s->missing++;
        free(ref);
        return;
    }
    double abs;
    double m = 0, mb = 0;
    for (size_t k = 0; k < n; k++) {
        abs = fabs((double)latents[k] - ref[k]);
        m = (abs > m || isnan(abs)) ? abs : m;
        mb = fabs(ref[k]) > mb ? fabs(ref[k]) : mb;
    }
    double rel = mb > 0 ? m / mb : m;
    if (rel > s->worst_rel || isnan(rel)) {
        s->worst_rel = rel;
        s->worst_abs = m;
    }
    if (s->force)
        memcpy(latents, ref, sizeof(float) * n);
    free(ref);
}

static int sampler_of(const char *cls)
{
    static const struct {
        const char *cls;
        diffuse_sampler s;
    } map[] = {
        {"EulerAncestralDiscreteScheduler", DIFFUSE_SAMPLER_EULER_A},
        {"EulerDiscreteScheduler", DIFFUSE_SAMPLER_EULER},
        {"DDIMScheduler", DIFFUSE_SAMPLER_DDIM},
        {"DPMSolverMultistepScheduler", DIFFUSE_SAMPLER_DPMPP_2M},
        {"LCMScheduler", DIFFUSE_SAMPLER_LCM},
        {"PNDMScheduler", DIFFUSE_SAMPLER_PNDM},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(cls, map[i].cls) == 0)
            return (int)map[i].s;
    return -1;
}

/* The run's settings; init image and mask are allocated into *img / *mask. */
static int run_of_spec(refcheck *r, const char *name, const cJSON *spec, diffuse_run *run,
                       float **img, float **mask, char *err)
{
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(spec, "scheduler");
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(spec, "scheduler_extra");
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(spec, "steps");
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(spec, "guidance_scale");
    const cJSON *strength = cJSON_GetObjectItemCaseSensitive(spec, "strength");
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(spec, "prompt");
    const cJSON *neg = cJSON_GetObjectItemCaseSensitive(spec, "negative_prompt");
    int sampler = cJSON_IsString(cls) ? sampler_of(cls->valuestring) : -1;
    if (sampler < 0 || !cJSON_IsNumber(steps) || !cJSON_IsNumber(g) || !cJSON_IsString(prompt))
        return diffuse_fail(err, "run %s: unknown scheduler or missing settings", name);
    memset(run, 0, sizeof *run);
    run->prompt = prompt->valuestring;
    run->negative_prompt = cJSON_IsString(neg) ? neg->valuestring : NULL; /* null: none given */
    const cJSON *orig = cJSON_GetObjectItemCaseSensitive(spec, "original_size");
    const cJSON *crop = cJSON_GetObjectItemCaseSensitive(spec, "crops_coords_top_left");
    const cJSON *target = cJSON_GetObjectItemCaseSensitive(spec, "target_size");
#define PAIR(j, a, b)                                                                              \
    if (cJSON_GetArraySize(j) == 2) {                                                              \
        a = cJSON_GetArrayItem(j, 0)->valueint;                                                    \
        b = cJSON_GetArrayItem(j, 1)->valueint;                                                    \
    }
    PAIR(orig, run->size_cond.original_height, run->size_cond.original_width)
    PAIR(crop, run->size_cond.crop_top, run->size_cond.crop_left)
    PAIR(target, run->size_cond.target_height, run->size_cond.target_width)
#undef PAIR
    run->steps = steps->valueint;
    run->guidance = (float)g->valuedouble;
    run->sampler = (diffuse_sampler)sampler;
    run->karras = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(extra, "use_karras_sigmas"));
    run->schedule = diffuse_schedule_config_default();
    diffuse_schedule_from_json(&run->schedule,
                               cJSON_GetObjectItemCaseSensitive(r->json, "scheduler_config"));
    diffuse_schedule_from_json(&run->schedule, extra);
    char key[160];
    snprintf(key, sizeof key, "%s.image", name);
    const diffuse_st_tensor *out = diffuse_st_find(r->golden, key);
    if (!out || out->ndim != 4)
        return diffuse_fail(err, "run %s: no %s [1, H, W, 3]", name, key);
    run->height = (int)out->shape[1];
    run->width = (int)out->shape[2];
    run->strength = cJSON_IsNumber(strength) ? (float)strength->valuedouble : 1.0f;
    if (cJSON_IsNumber(strength)) {
        int64_t n = 0;
        float *chw = golden_get(r, "vae.image", &n);
        const size_t hw = (size_t)run->width * run->height;
        if (!chw || (size_t)n != 3 * hw || !(*img = malloc(sizeof(float) * n))) {
            free(chw);
            return diffuse_fail(err, "run %s: vae.image is not [1, 3, %d, %d]", name, run->height,
                                run->width);
        }
        for (size_t p = 0; p < hw; p++) /* [3, H, W] in [-1, 1] -> [H, W, 3] in [0, 1] */
            for (int c = 0; c < 3; c++)
                (*img)[p * 3 + c] = chw[c * hw + p] / 2.0f + 0.5f;
        free(chw);
        run->init_image = *img;
        snprintf(key, sizeof key, "%s.mask", name);
        if (diffuse_st_find(r->golden, key))
            run->mask = *mask = golden_get(r, key, NULL);
    }
    return 0;
}

/* Replays one run into pixels [H, W, 3]; steps collects the per-step errors. */
static int replay_run(refcheck *r, const char *name, const cJSON *spec, diffuse_run *run,
                      step_ctx *steps, float *pixels, char *err)
{
    replay rep;
    replay_init(&rep, r, name, spec);
    run->on_step = on_step;
    run->on_step_user = steps;
    diffuse_noise noise = {replay_draw, &rep};
    if (diffuse_pipeline_run(r->model, run, &noise, pixels, err) != DIFFUSE_OK)
        return -1;
    if (rep.next != rep.count || steps->missing)
        return diffuse_fail(err, "%d of %d recorded draws used, %d steps without a reference",
                            rep.next, rep.count, steps->missing);
    return 0;
}

/* Three cases per run:
 *   <run>.steps  every step restarted from diffusers' latents after the step
 *                before (the first from the engine's own start): the worst
 *                step, at step_tolerance();
 *   <run>.image  the image decoded after those steps, at the final-image
 *                tolerance;
 *   <run>.free   the whole run left to itself, final image. Guidance 7.5 on
 *                random weights, through a UNet whose deepest level is 1x1
 *                with two values per norm group, amplifies float32 rounding
 *                from step to step: changing the last bit of exp() moves some
 *                of these errors between 1e-3 and 1e-2 while every step stays
 *                within its tolerance, so the bound is wider (see README). */
static void check_run(refcheck *r, const char *name, const cJSON *spec)
{
    char err[DIFFUSE_ERROR_SIZE], case_name[160], key[160];
    float *img = NULL, *mask = NULL, *pixels = NULL;
    diffuse_run run;
    snprintf(case_name, sizeof case_name, "%s.steps", name);
    snprintf(key, sizeof key, "%s.image", name);
    if (run_of_spec(r, name, spec, &run, &img, &mask, err)) {
        report_error(r, case_name, err);
        goto done;
    }
    const size_t npix = (size_t)3 * run.width * run.height;
    pixels = malloc(sizeof(float) * npix);
    step_ctx forced = {.r = r, .run = name, .force = true};
    char prefix[160]; /* the run's conditioning, where recorded: <run>.context, ... */
    snprintf(prefix, sizeof prefix, "%s.", name);
    trace_ctx tc = {r, prefix};
    diffuse_trace trace = {trace_compare, &tc};
    run.trace = &trace;
    if (replay_run(r, name, spec, &run, &forced, pixels, err)) {
        report_error(r, case_name, err);
        goto done;
    }
    run.trace = NULL;
    report_case(r, case_name, forced.worst_abs, forced.worst_rel, step_tolerance(run.guidance));
    snprintf(case_name, sizeof case_name, "%s.image", name);
    compare(r, case_name, key, pixels, npix, TOL_PIPELINE);
    step_ctx free_run = {.r = r, .run = name, .force = false};
    snprintf(case_name, sizeof case_name, "%s.free", name);
    if (replay_run(r, name, spec, &run, &free_run, pixels, err))
        report_error(r, case_name, err);
    else
        compare(r, case_name, key, pixels, npix, TOL_FREE);
done:
    free(img);
    free(mask);
    free(pixels);
}

/* ------------------------------------------------------------------ driver */

static size_t arena_size(refcheck *r)
{
    const diffuse_st_tensor *s = diffuse_st_find(r->golden, "unet.sample");
    const diffuse_st_tensor *img = diffuse_st_find(r->golden, "vae.image");
    size_t u = 0, v = 0, c = diffuse_clip_workspace(r->model->clip, 4);
    if (r->model->clip2 && diffuse_clip_workspace(r->model->clip2, 4) > c)
        c = diffuse_clip_workspace(r->model->clip2, 4);
    if (s && s->ndim == 4)
        u = diffuse_unet_workspace(r->model->unet, (int)s->shape[0], (int)s->shape[2],
                                   (int)s->shape[3], DIFFUSE_MAX_TOKENS);
    if (img && img->ndim == 4)
        v = diffuse_vae_workspace(r->model->vae, (int)img->shape[2], (int)img->shape[3]);
    return (u > v ? u : v) > c ? (u > v ? u : v) : c;
}

static void check_layout(refcheck *r, const char *path, const char *layout)
{
    char err[DIFFUSE_ERROR_SIZE], cfgdir[4096], tokdir[4096];
    snprintf(cfgdir, sizeof cfgdir, "%s/model-diffusers", r->dir);
    snprintf(tokdir, sizeof tokdir, "%s/model-diffusers/tokenizer", r->dir);
    diffuse_load_params p = diffuse_load_params_default();
    p.config_dir = cfgdir;
    p.vocab_path = tokdir;
    r->layout = layout;
    r->model = diffuse_model_load(path, &p, err, sizeof err);
    if (!r->model) {
        report_error(r, "load", err);
        return;
    }
    diffuse_arena a;
    if (diffuse_arena_init(&a, arena_size(r), err) == 0) {
        check_tokens(r, "tokens", "tokenizer", r->model->clip_cfg.pad_id);
        if (r->model->clip2)
            check_tokens(r, "tokens_2", "tokenizer_2", r->model->clip2_cfg.pad_id);
        check_text(r, &a);
        check_unet(r, &a);
        check_vae(r, &a);
        const cJSON *spec;
        cJSON_ArrayForEach(spec, cJSON_GetObjectItemCaseSensitive(r->json, "runs"))
            check_run(r, spec->string, spec);
    } else {
        report_error(r, "load", err);
    }
    diffuse_arena_free(&a);
    diffuse_model_free(r->model);
    r->model = NULL;
}

/* ------------------------------------------------------------------ TAESD sets */

typedef struct taesd_cmp {
    diffuse_weights *a, *b;
    double worst;
    int missing, count;
} taesd_cmp;

static void cmp_one(void *user, const char *name, int ndim, const int64_t *shape)
{
    taesd_cmp *c = user;
    int64_t other[DIFFUSE_MAX_DIMS];
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    c->count++;
    const float *x = diffuse_weights_get(c->a, name, ndim, shape, NULL);
    const float *y = diffuse_weights_shape(c->b, name, other) == ndim
                         ? diffuse_weights_get(c->b, name, ndim, shape, NULL)
                         : NULL;
    if (!x || !y) {
        c->missing++;
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)x[i] - y[i]);
        c->worst = d > c->worst || isnan(d) ? d : c->worst;
    }
}

/* Both layouts hold the same weights: every canonical tensor of one, equal in
 * the other (0 = bit-identical after widening), and as many tensors. */
static void check_taesd_layouts(refcheck *r, diffuse_taesd *a, diffuse_taesd *b)
{
    taesd_cmp c = {(diffuse_weights *)diffuse_taesd_weights(a),
                   (diffuse_weights *)diffuse_taesd_weights(b), 0, 0, 0};
    diffuse_weights_each(c.a, "taesd.", cmp_one, &c);
    r->layout = "both";
    if (c.missing || !c.count ||
        diffuse_weights_count(c.a, "taesd.") != diffuse_weights_count(c.b, "taesd."))
        report_error(r, "taesd.layouts",
                     c.count ? "the layouts hold different tensors" : "no TAESD tensors");
    else
        report_case(r, "taesd.layouts", c.worst, c.worst, 0);
}

/* One layout: encoder and decoder with their intermediates, then every run's
 * image decoded from its last recorded latents. */
static void check_taesd_model(refcheck *r, const diffuse_taesd *t, const char *layout)
{
    char err[DIFFUSE_ERROR_SIZE];
    const diffuse_st_tensor *img = diffuse_st_find(r->golden, "taesd.image");
    const diffuse_st_tensor *lat = diffuse_st_find(r->golden, "taesd.latent");
    r->layout = layout;
    if (!img || img->ndim != 4 || !lat || lat->ndim != 4) {
        report_error(r, "taesd", "no taesd.image / taesd.latent");
        return;
    }
    const int h = (int)img->shape[2], w = (int)img->shape[3];
    diffuse_arena a;
    if (diffuse_arena_init(&a, diffuse_taesd_workspace(t, h, w), err)) {
        report_error(r, "taesd", err);
        return;
    }
    float *x = golden_get(r, "taesd.image", NULL), *z = golden_get(r, "taesd.latent", NULL);
    float *latents = malloc(sizeof(float) * (size_t)lat->numel);
    float *out = malloc(sizeof(float) * (size_t)img->numel);
    trace_ctx tc = {r, "taesd."};
    diffuse_trace trace = {trace_compare, &tc};
    if (diffuse_taesd_encode(t, latents, x, h, w, &a, &trace, err))
        report_error(r, "taesd.encode.latents", err);
    else
        compare(r, "taesd.encode.latents", "taesd.encode.latents", latents, (size_t)lat->numel,
                TOL_MODULE);
    if (diffuse_taesd_decode(t, out, z, h, w, &a, &trace, err)) {
        report_error(r, "taesd.decode.out", err);
    } else { /* diffusers' decode(): 2 decoder(z) - 1 */
        for (int64_t i = 0; i < img->numel; i++)
            out[i] = 2.0f * out[i] - 1.0f;
        compare(r, "taesd.decode.out", "taesd.decode.out", out, (size_t)img->numel, TOL_MODULE);
    }
    const cJSON *spec;
    cJSON_ArrayForEach(spec, cJSON_GetObjectItemCaseSensitive(r->json, "runs"))
    {
        char key[160], name[160];
        int last = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(spec, "timesteps")) - 1;
        snprintf(key, sizeof key, "%s.step%d.latents", spec->string, last);
        snprintf(name, sizeof name, "%s.image", spec->string);
        const diffuse_st_tensor *ref = diffuse_st_find(r->golden, name);
        float *l = golden_get(r, key, NULL);
        if (!l || !ref || ref->ndim != 4 || ref->shape[1] != h || ref->shape[2] != w) {
            report_error(r, name, "no last step's latents or no [1, H, W, 3] image");
        } else if (diffuse_taesd_decode(t, out, l, h, w, &a, NULL, err)) {
            report_error(r, name, err);
        } else { /* the pipeline's image: clamp(decoder(latents), 0, 1), HWC */
            const size_t hw = (size_t)h * w;
            float *hwc = malloc(sizeof(float) * 3 * hw);
            for (size_t p = 0; p < hw; p++)
                for (int c = 0; c < 3; c++)
                    hwc[p * 3 + c] = fminf(fmaxf(out[c * hw + p], 0.0f), 1.0f);
            compare(r, name, name, hwc, 3 * hw, TOL_PIPELINE);
            free(hwc);
        }
        free(l);
    }
    free(x);
    free(z);
    free(latents);
    free(out);
    diffuse_arena_free(&a);
}

/* A TAESD set (golden.json "kind": "taesd"): the diffusers folder and
 * madebyollin's two files. Its whole SD + TAESD run is not replayed: the SD
 * model that made it is a single file whose GroupNorm group count (8) no
 * tensor records, so no engine (diffusers neither) can load it without a
 * config; the run's decode is checked from its recorded latents instead. */
static void check_taesd(refcheck *r)
{
    char path[4096], err[DIFFUSE_ERROR_SIZE];
    diffuse_taesd *t[2] = {NULL, NULL};
    static const char *const layouts[2] = {"diffusers", "original"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, i ? "%s/taesd_decoder.safetensors" : "%s/model-diffusers",
                 r->dir);
        r->layout = layouts[i];
        if (diffuse_taesd_load(path, &t[i], err)) {
            report_error(r, "load", err);
            continue;
        }
        if (strcmp(diffuse_taesd_layout(t[i]), layouts[i]) || !diffuse_taesd_has(t[i], false) ||
            !diffuse_taesd_has(t[i], true))
            report_error(r, "load", "layout not recognised by its keys, or a half missing");
        else
            report_case(r, "load", 0, 0, 0);
        check_taesd_model(r, t[i], layouts[i]);
    }
    if (t[0] && t[1])
        check_taesd_layouts(r, t[0], t[1]);
    diffuse_taesd_free(t[0]);
    diffuse_taesd_free(t[1]);
}

/* Every single-file checkpoint in the directory (not golden.safetensors). */
static void check_single_files(refcheck *r)
{
    DIR *d = opendir(r->dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") != 0 ||
            strcmp(e->d_name, "golden.safetensors") == 0)
            continue;
        char path[4096], layout[256];
        snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
        snprintf(layout, sizeof layout, "%s",
                 strstr(e->d_name, "model-ldm") == e->d_name && len <= 27 ? "ldm" : e->d_name);
        check_layout(r, path, layout);
    }
    if (d)
        closedir(d);
}

diffuse_status diffuse_refcheck(const char *dir, void (*report)(void *user, const char *line),
                                void *user, int *passed, int *failed, char *err, size_t err_size)
{
    char e[DIFFUSE_ERROR_SIZE], path[4096];
    refcheck r = {.dir = dir, .report = report, .user = user};
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    int rc = diffuse_st_open(path, &r.golden, e);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    if (rc == 0 && !(r.json = diffuse_json_load(path, e)))
        rc = -1;
    const cJSON *kind = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "kind") : NULL;
    if (rc == 0 && cJSON_IsString(kind) && strcmp(kind->valuestring, "taesd") == 0) {
        check_taesd(&r);
    } else if (rc == 0) {
        snprintf(path, sizeof path, "%s/model-diffusers", dir);
        check_layout(&r, path, "diffusers");
        check_single_files(&r);
    }
    cJSON_Delete(r.json);
    diffuse_st_close(r.golden);
    *passed = r.passed;
    *failed = r.failed;
    if (rc) {
        if (err && err_size)
            snprintf(err, err_size, "%s", e);
        return DIFFUSE_ERR_IO;
    }
    return DIFFUSE_OK;
}
