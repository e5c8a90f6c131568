/* test_sampler.c: the samplers against diffusers' recorded schedules, against a
 * plain double-precision re-derivation of every step, and against the recorded
 * latents of whole pipeline runs where no UNet is needed to check them.
 *
 * Parts:
 *   1. names, parsing, config defaults;
 *   2. every run of reference/sd1-tiny/golden.json: timesteps, sigmas, the trimmed
 *      img2img/inpaint schedule, init sigma, and how many step draws a run makes;
 *   3. synthetic runs (model output = a fixed function of x and t) of all six
 *      samplers, epsilon and v-prediction, with and without Karras sigmas and
 *      strength, against test_ref_* below, written from the papers in double;
 *   4. edge cases: strength 1 / tiny, one step, too many steps, order of steps;
 *   5. golden.safetensors: first steps of samplers that share a UNet input
 *      (the model output recovered from one sampler's step reproduces the
 *      others'), and inpaint's re-noised unmasked latents (add_noise).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "internal.h"
#include "test.h"

#define NLAT 37    /* synthetic latent size: odd, small */
#define MAX_T 1000 /* training timesteps the reference supports */

/* ------------------------------------------------------------------ noise sources */

/* Deterministic N(0, 1) draws (xorshift + Box-Muller), each one logged so the
 * double reference replays exactly the same floats. */
typedef struct test_noise {
    uint64_t state;
    int calls, bad_calls;
    size_t want_n;
    float log[64][NLAT];
    int fail_at; /* draw number that fails, -1 never */
} test_noise;

static double test_uniform(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
}

static int test_draw(void *self, float *out, size_t n, const char *site, char *err)
{
    test_noise *tn = self;
    if (tn->calls == tn->fail_at)
        return diffuse_fail(err, "test noise: failing on purpose");
    if (n != tn->want_n || strcmp(site, "step") != 0)
        tn->bad_calls++;
    for (size_t j = 0; j < n; j++) {
        double u1 = test_uniform(&tn->state), u2 = test_uniform(&tn->state);
        out[j] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        if (tn->calls < 64 && j < NLAT)
            tn->log[tn->calls][j] = out[j];
    }
    tn->calls++;
    return 0;
}

static test_noise *test_noise_new(size_t n)
{
    test_noise *tn = calloc(1, sizeof *tn);
    tn->state = 0x9e3779b97f4a7c15ull;
    tn->want_n = n;
    tn->fail_at = -1;
    return tn;
}

/* ------------------------------------------------------------------ helpers */

static diffuse_sampler_state *make(diffuse_sampler kind, bool karras,
                                   const diffuse_schedule_config *cfg, int steps, float strength,
                                   size_t n)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_sampler_state *s = NULL;
    if (diffuse_sampler_create(kind, karras, cfg, steps, strength, n, &s, err))
        printf("  create %s karras=%d steps=%d strength=%g: %s\n", diffuse_sampler_name(kind),
               karras, steps, (double)strength, err);
    return s;
}

static bool uses_sigmas(diffuse_sampler k)
{
    return k == DIFFUSE_SAMPLER_EULER || k == DIFFUSE_SAMPLER_EULER_A ||
           k == DIFFUSE_SAMPLER_DPMPP_2M;
}

/* The sigma of evaluation i, read back through add_noise on latents of n
 * floats: Euler adds noise * sigma; DPM-Solver mixes alpha_t x0 + sigma_t noise
 * with sigma = sigma_t / alpha_t. */
static double sigma_of(const diffuse_sampler_state *s, diffuse_sampler kind, int i, size_t n)
{
    float *zero = calloc(n, sizeof(float)), *one = malloc(n * sizeof(float));
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    for (size_t j = 0; j < n; j++)
        one[j] = 1;
    diffuse_sampler_add_noise(s, i, zero, one, b);
    diffuse_sampler_add_noise(s, i, one, zero, a);
    double sigma = kind == DIFFUSE_SAMPLER_DPMPP_2M ? (double)b[0] / a[0] : b[0];
    free(zero), free(one), free(a), free(b);
    return sigma;
}

static bool close_rel(double a, double b, double tol)
{
    return fabs(a - b) <= tol * fmax(1.0, fabs(b));
}

/* ------------------------------------------------------------------ 1. names */

static void test_names(void)
{
    for (int k = 0; k < DIFFUSE_SAMPLER_COUNT; k++)
        CHECK(diffuse_sampler_parse(diffuse_sampler_name(k)) == k, "sampler %d round trip", k);
    const char *names[] = {"euler", "euler_a", "ddim", "dpmpp_2m", "lcm", "pndm"};
    for (int k = 0; k < 6; k++)
        CHECK(strcmp(diffuse_sampler_name(k), names[k]) == 0, "sampler name %d", k);
    const char *bad[] = {"bogus", "", "Euler", "euler ", "dpm++2m", "k_euler"};
    for (int k = 0; k < 6; k++)
        CHECK(diffuse_sampler_parse(bad[k]) == -1, "parse rejects '%s'", bad[k]);
    CHECK(diffuse_sampler_parse(NULL) == -1, "parse rejects NULL");
    CHECK(strcmp(diffuse_sampler_name(DIFFUSE_SAMPLER_COUNT), "unknown") == 0, "name of COUNT");
    /* a Karras label exactly for the samplers that take Karras sigmas: "<label> Karras" */
    for (int k = 0; k < DIFFUSE_SAMPLER_COUNT; k++) {
        char err[DIFFUSE_ERROR_SIZE], want[64];
        diffuse_sampler_state *st = NULL;
        const char *kl = diffuse_sampler_karras_label(k);
        int takes = diffuse_sampler_create(k, true, NULL, 6, 1.0f, NLAT, &st, err) == 0;

        diffuse_sampler_free(st);
        snprintf(want, sizeof want, "%s Karras", diffuse_sampler_label(k));
        CHECK(takes ? kl && strcmp(kl, want) == 0 : kl == NULL, "%s: Karras label %s",
              diffuse_sampler_name(k), kl ? kl : "none");
    }
    CHECK(diffuse_sampler_karras_label(DIFFUSE_SAMPLER_COUNT) == NULL, "Karras label of COUNT");
    const char *sp[] = {"default", "leading", "linspace", "trailing"};
    for (int k = 0; k < 4; k++) {
        CHECK(diffuse_spacing_parse(sp[k]) == k, "spacing parse %s", sp[k]);
        CHECK(strcmp(diffuse_spacing_name(k), sp[k]) == 0, "spacing name %d", k);
    }
    CHECK(diffuse_spacing_parse("lin") == -1 && diffuse_spacing_parse(NULL) == -1,
          "spacing parse rejects unknown");
    diffuse_schedule_config c = diffuse_schedule_config_default();
    CHECK(c.num_train_timesteps == 1000 && c.beta_start == 0.00085f && c.beta_end == 0.012f &&
              c.beta_schedule == DIFFUSE_BETAS_SCALED_LINEAR && c.steps_offset == 1 &&
              !c.set_alpha_to_one && c.prediction == DIFFUSE_PREDICTION_AUTO &&
              c.spacing == DIFFUSE_SPACING_DEFAULT && c.original_inference_steps == 50 &&
              c.timestep_scaling == 10.0f,
          "config defaults are Stable Diffusion's");
}

/* ------------------------------------------------------------------ 2. golden.json schedules */

static int kind_of_class(const char *cls)
{
    static const char *classes[] = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                    "DDIMScheduler",          "DPMSolverMultistepScheduler",
                                    "LCMScheduler",           "PNDMScheduler"};
    for (int k = 0; cls && k < 6; k++)
        if (strcmp(cls, classes[k]) == 0)
            return k;
    return -1;
}

static double json_num(const cJSON *obj, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* scheduler_config.json onto the engine's config; spacing from `extra` first. */
static diffuse_schedule_config golden_config(const cJSON *sc, const cJSON *extra)
{
    diffuse_schedule_config c = diffuse_schedule_config_default();
    c.num_train_timesteps = (int)json_num(sc, "num_train_timesteps", 1000);
    c.beta_start = (float)json_num(sc, "beta_start", 0.00085);
    c.beta_end = (float)json_num(sc, "beta_end", 0.012);
    c.steps_offset = (int)json_num(sc, "steps_offset", 0);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sc, "beta_schedule");
    if (cJSON_IsString(v) && strcmp(v->valuestring, "linear") == 0)
        c.beta_schedule = DIFFUSE_BETAS_LINEAR;
    c.set_alpha_to_one = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sc, "set_alpha_to_one"));
    v = cJSON_GetObjectItemCaseSensitive(sc, "prediction_type");
    c.prediction = cJSON_IsString(v) && strcmp(v->valuestring, "v_prediction") == 0
                       ? DIFFUSE_PREDICTION_V
                       : DIFFUSE_PREDICTION_EPSILON;
    for (int pass = 0; pass < 2; pass++) {
        v = cJSON_GetObjectItemCaseSensitive(pass ? extra : sc, "timestep_spacing");
        if (cJSON_IsString(v) && diffuse_spacing_parse(v->valuestring) > 0)
            c.spacing = diffuse_spacing_parse(v->valuestring);
    }
    return c;
}

/* Runs a whole schedule with model output 0.1 x and returns the step draws. */
static int count_step_draws(diffuse_sampler_state *s, size_t n)
{
    float *x = malloc(n * sizeof(float)), *m = malloc(n * sizeof(float));
    test_noise *tn = test_noise_new(n);
    diffuse_noise noise = {test_draw, tn};
    char err[DIFFUSE_ERROR_SIZE];
    for (size_t j = 0; j < n; j++)
        x[j] = 1.0f;
    for (int i = 0; i < diffuse_sampler_count(s); i++) {
        for (size_t j = 0; j < n; j++)
            m[j] = 0.1f * x[j];
        if (diffuse_sampler_step(s, i, m, x, &noise, err))
            printf("  step %d: %s\n", i, err);
    }
    int calls = tn->bad_calls ? -1 : tn->calls;
    free(tn);
    free(x);
    free(m);
    return calls;
}

/* Full schedule of one run: timesteps, sigmas (with the final 0) and init sigma. */
static void check_golden_full(const char *name, int kind, bool karras,
                              const diffuse_schedule_config *c, int steps, const cJSON *run)
{
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(run, "timesteps");
    const cJSON *sg = cJSON_GetObjectItemCaseSensitive(run, "sigmas");
    diffuse_sampler_state *s = make(kind, karras, c, steps, 1.0f, 4);
    CHECK(s != NULL, "%s: create", name);
    if (!s)
        return;
    int n = diffuse_sampler_count(s);
    CHECK(n == cJSON_GetArraySize(ts), "%s: %d timesteps, golden %d", name, n,
          cJSON_GetArraySize(ts));
    for (int i = 0; i < n && i < cJSON_GetArraySize(ts); i++) {
        double g = cJSON_GetArrayItem(ts, i)->valuedouble, t = diffuse_sampler_timestep(s, i);
        CHECK(close_rel(t, g, 1e-6), "%s: timestep %d = %.9g, golden %.9g", name, i, t, g);
    }
    if (cJSON_GetArraySize(sg) > 0) {
        CHECK(cJSON_GetArraySize(sg) == n + 1 && cJSON_GetArrayItem(sg, n)->valuedouble == 0,
              "%s: golden sigmas end in 0 after %d steps", name, n);
        for (int i = 0; i < n && i < cJSON_GetArraySize(sg); i++) {
            double g = cJSON_GetArrayItem(sg, i)->valuedouble, v = sigma_of(s, kind, i, 4);
            CHECK(fabs(v - g) <= 1e-6 * g, "%s: sigma %d = %.9g, golden %.9g", name, i, v, g);
        }
    }
    double want = kind == DIFFUSE_SAMPLER_EULER || kind == DIFFUSE_SAMPLER_EULER_A
                      ? cJSON_GetArrayItem(sg, 0)->valuedouble /* linspace and trailing */
                      : 1.0;
    CHECK(diffuse_sampler_init_sigma(s) == (float)want, "%s: init sigma %.9g, want %.9g", name,
          (double)diffuse_sampler_init_sigma(s), want);
    diffuse_sampler_free(s);
}

/* The strength-trimmed schedule: the tail of the full one, as the pipeline
 * called back, and as many step draws as diffusers made. */
static void check_golden_trimmed(const char *name, int kind, bool karras,
                                 const diffuse_schedule_config *c, int steps, float strength,
                                 const cJSON *run)
{
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(run, "timesteps");
    const cJSON *cb = cJSON_GetObjectItemCaseSensitive(run, "callback_timesteps");
    const cJSON *draws = cJSON_GetObjectItemCaseSensitive(run, "draws"), *d;
    diffuse_sampler_state *s = make(kind, karras, c, steps, strength, 8);
    if (!s)
        return;
    int n = diffuse_sampler_count(s), total = cJSON_GetArraySize(ts);
    CHECK(n == cJSON_GetArraySize(cb), "%s: %d evaluations, pipeline made %d", name, n,
          cJSON_GetArraySize(cb));
    for (int i = 0; i < n && i < cJSON_GetArraySize(cb); i++) {
        double t = diffuse_sampler_timestep(s, i);
        double g = cJSON_GetArrayItem(cb, i)->valuedouble;
        double tail = cJSON_GetArrayItem(ts, total - n + i)->valuedouble;
        CHECK(close_rel(t, g, 1e-6) && close_rel(t, tail, 1e-6),
              "%s: trimmed timestep %d = %.9g, callback %.9g, tail %.9g", name, i, t, g, tail);
    }
    int want = 0;
    cJSON_ArrayForEach(d, draws)
    {
        const cJSON *site = cJSON_GetObjectItemCaseSensitive(d, "site");
        want += cJSON_IsString(site) && strstr(site->valuestring, ":step") != NULL;
    }
    int got = count_step_draws(s, 8);
    CHECK(got == want, "%s: %d step draws of the right size and site, diffusers made %d", name, got,
          want);
    diffuse_sampler_free(s);
}

static void test_golden_schedules(void)
{
    char buf[4096];
    const char *path = test_shared("reference/sd1-tiny/golden.json", buf);
    cJSON *root = path ? diffuse_json_load(path, NULL) : NULL;
    if (path)
        CHECK(root != NULL, "golden.json parses");
    const cJSON *runs = cJSON_GetObjectItemCaseSensitive(root, "runs"), *run;
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "scheduler_config");
    int n_runs = 0;
    cJSON_ArrayForEach(run, runs)
    {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(run, "scheduler");
        const cJSON *extra = cJSON_GetObjectItemCaseSensitive(run, "scheduler_extra");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(run, "strength");
        int kind = kind_of_class(cJSON_IsString(cls) ? cls->valuestring : NULL);
        CHECK(kind >= 0, "%s: known scheduler class", run->string);
        if (kind < 0)
            continue;
        bool karras = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(extra, "use_karras_sigmas"));
        diffuse_schedule_config c = golden_config(sc, extra);
        int steps = (int)json_num(run, "steps", 0);
        float strength = cJSON_IsNumber(st) ? (float)st->valuedouble : 1.0f;
        check_golden_full(run->string, kind, karras, &c, steps, run);
        check_golden_trimmed(run->string, kind, karras, &c, steps, strength, run);
        n_runs++;
    }
    if (root)
        CHECK(n_runs >= 15, "golden.json has the %d runs expected (found %d)", 15, n_runs);
    cJSON_Delete(root);
}

/* ------------------------------------------------------------------ 3. double reference */

/* One run re-derived in double from the papers, on the engine's timesteps. */
typedef struct ref_run {
    diffuse_sampler kind;
    bool v;
    int count, ratio, draws;
    double ac[MAX_T], final_alpha;
    double t[DIFFUSE_MAX_STEPS + 2];   /* timestep of evaluation i */
    double sig[DIFFUSE_MAX_STEPS + 3]; /* sigma of evaluation i, then 0 */
    double prev_x0[NLAT];              /* dpm: previous data prediction */
    double eps[4][NLAT];               /* pndm: outputs, newest last */
    int n_eps;
    double first[NLAT]; /* pndm: sample before the first step */
} ref_run;

static double ref_train_sigma(const ref_run *r, double t)
{
    int j = (int)floor(t);
    double s0 = sqrt((1 - r->ac[j]) / r->ac[j]);
    if (t == j)
        return s0;
    double s1 = sqrt((1 - r->ac[j + 1]) / r->ac[j + 1]);
    return s0 + (s1 - s0) * (t - j);
}

/* betas = linspace(sqrt(b0), sqrt(b1), N)^2 and sigmas, all in double. */
static ref_run *ref_new(const diffuse_sampler_state *s, diffuse_sampler kind, bool karras,
                        const diffuse_schedule_config *c, int steps)
{
    ref_run *r = calloc(1, sizeof *r);
    int n = c->num_train_timesteps;
    double b0 = sqrt((double)c->beta_start), b1 = sqrt((double)c->beta_end), acc = 1;
    for (int i = 0; i < n; i++) {
        double b = b0 + i * (b1 - b0) / (n - 1);
        acc *= 1 - b * b;
        r->ac[i] = acc;
    }
    r->kind = kind;
    r->v = c->prediction == DIFFUSE_PREDICTION_V;
    r->final_alpha = c->set_alpha_to_one ? 1.0 : r->ac[0];
    r->ratio = n / steps;
    r->count = diffuse_sampler_count(s);
    for (int i = 0; i < r->count; i++) {
        r->t[i] = diffuse_sampler_timestep(s, i);
        r->sig[i] = ref_train_sigma(r, r->t[i]);
    }
    if (karras) { /* EDM eq. (5) between the sigmas of t = 0 and t = N - 1 */
        double lo = pow(ref_train_sigma(r, 0), 1 / 7.0),
               hi = pow(ref_train_sigma(r, n - 1), 1 / 7.0);
        for (int i = 0; i < r->count; i++) {
            int k = steps - r->count + i;
            r->sig[i] = pow(hi + (steps > 1 ? (double)k / (steps - 1) : 0) * (lo - hi), 7);
        }
    }
    r->sig[r->count] = 0;
    return r;
}

static double ref_abar(const ref_run *r, double t)
{
    return t >= 0 ? r->ac[(int)t] : r->final_alpha;
}

static double ref_model(double x, double t, int j)
{
    return 0.6 * sin(1.3 * x + 0.002 * t + 0.37 * j) + 0.15 * x;
}

/* The DDIM update (Song et al. eq. 12, eta 0) from t to t_prev with output m,
 * the transfer PNDM's eq. (9) must equal. */
static double ref_ddim(const ref_run *r, double x, double m, double t, double t_prev)
{
    double a = ref_abar(r, t), ap = ref_abar(r, t_prev), x0, eps;
    if (r->v) {
        x0 = sqrt(a) * x - sqrt(1 - a) * m;
        eps = sqrt(a) * m + sqrt(1 - a) * x;
    } else {
        x0 = (x - sqrt(1 - a) * m) / sqrt(a);
        eps = m;
    }
    return sqrt(ap) * x0 + sqrt(1 - ap) * eps;
}

/* Data prediction of a sigma-parameterized model (EDM's D). */
static double ref_denoise(const ref_run *r, double x, double m, double sigma)
{
    if (r->v)
        return -sigma / sqrt(sigma * sigma + 1) * m + x / (sigma * sigma + 1);
    return x - sigma * m;
}

static void ref_euler(ref_run *r, int i, double *x, const double *m, const float *noise)
{
    double s = r->sig[i], sn = r->sig[i + 1];
    double up =
        r->kind == DIFFUSE_SAMPLER_EULER_A ? sqrt(sn * sn * (s * s - sn * sn) / (s * s)) : 0;
    double down = r->kind == DIFFUSE_SAMPLER_EULER_A ? sqrt(sn * sn - up * up) : sn;
    for (int j = 0; j < NLAT; j++) {
        double d = (x[j] - ref_denoise(r, x[j], m[j], s)) / s;
        x[j] += d * (down - s) + (noise ? noise[j] * up : 0);
    }
}

/* DPM-Solver++ (Lu et al. 2022) in the lambda = -log(sigma) time of the VP
 * parameterization; first order at the ends, else 2M. */
static void ref_dpm(ref_run *r, int i, double *x, const double *m)
{
    double s = r->sig[i], sn = r->sig[i + 1];
    double a = 1 / sqrt(s * s + 1), an = 1 / sqrt(sn * sn + 1);
    double h = -log(sn) + log(s), phi = an * (exp(-h) - 1), ratio = sn / s * an / a;
    bool second = i > 0 && i < r->count - 1;
    double h0 = second ? -log(s) + log(r->sig[i - 1]) : 1;
    for (int j = 0; j < NLAT; j++) {
        double x0 = r->v ? a * x[j] - s * a * m[j] : (x[j] - s * a * m[j]) / a;
        double d1 = second ? (x0 - r->prev_x0[j]) / (h0 / h) : 0;
        x[j] = ratio * x[j] - phi * x0 - 0.5 * phi * d1;
        r->prev_x0[j] = x0;
    }
}

static void ref_lcm(ref_run *r, int i, double *x, const double *m, const float *noise)
{
    double t = r->t[i], tp = i + 1 < r->count ? r->t[i + 1] : t;
    double a = ref_abar(r, t), ap = ref_abar(r, tp), st = 10 * t;
    double c_skip = 0.25 / (st * st + 0.25), c_out = st / sqrt(st * st + 0.25);
    for (int j = 0; j < NLAT; j++) {
        double x0 =
            r->v ? sqrt(a) * x[j] - sqrt(1 - a) * m[j] : (x[j] - sqrt(1 - a) * m[j]) / sqrt(a);
        double den = c_out * x0 + c_skip * x[j];
        x[j] = noise ? sqrt(ap) * den + sqrt(1 - ap) * noise[j] : den;
    }
}

/* PLMS (Liu et al. 2022 eq. 12) over DDIM transfers; evaluation 1 redoes step 0
 * with the mean of both outputs and is not kept in the history. */
static void ref_pndm(ref_run *r, int i, double *x, const double *m)
{
    double t = r->t[i];
    if (i == 1) {
        for (int j = 0; j < NLAT; j++)
            x[j] = ref_ddim(r, r->first[j], (m[j] + r->eps[r->n_eps - 1][j]) / 2, t + r->ratio, t);
        return;
    }
    if (r->n_eps == 4)
        memmove(r->eps[0], r->eps[1], 3 * sizeof r->eps[0]);
    int n = r->n_eps < 4 ? ++r->n_eps : 4;
    memcpy(r->eps[n - 1], m, sizeof r->eps[0]);
    for (int j = 0; j < NLAT; j++) {
        const double *e1 = r->eps[n - 1], *e2 = r->eps[n > 1 ? n - 2 : 0];
        double e = n == 1   ? m[j]
                   : n == 2 ? (3 * e1[j] - e2[j]) / 2
                   : n == 3 ? (23 * e1[j] - 16 * e2[j] + 5 * r->eps[0][j]) / 12
                            : (55 * e1[j] - 59 * e2[j] + 37 * r->eps[1][j] - 9 * r->eps[0][j]) / 24;
        if (i == 0)
            r->first[j] = x[j];
        x[j] = ref_ddim(r, x[j], e, t, t - r->ratio);
    }
}

static void ref_step(ref_run *r, int i, double *x, const double *m, const test_noise *tn)
{
    bool draw =
        r->kind == DIFFUSE_SAMPLER_EULER_A || (r->kind == DIFFUSE_SAMPLER_LCM && i < r->count - 1);
    const float *noise = draw ? tn->log[r->draws++] : NULL;
    switch (r->kind) {
    case DIFFUSE_SAMPLER_EULER:
    case DIFFUSE_SAMPLER_EULER_A:
        ref_euler(r, i, x, m, noise);
        break;
    case DIFFUSE_SAMPLER_DDIM:
        for (int j = 0; j < NLAT; j++)
            x[j] = ref_ddim(r, x[j], m[j], r->t[i], r->t[i] - r->ratio);
        break;
    case DIFFUSE_SAMPLER_DPMPP_2M:
        ref_dpm(r, i, x, m);
        break;
    case DIFFUSE_SAMPLER_LCM:
        ref_lcm(r, i, x, m, noise);
        break;
    default:
        ref_pndm(r, i, x, m);
        break;
    }
}

/* Forward noising in double at evaluation i (i == count: x0 itself). */
static double ref_add_noise(const ref_run *r, int i, double x0, double noise)
{
    if (i >= r->count)
        return x0;
    double s = r->sig[i], a = ref_abar(r, r->t[i]);
    if (r->kind == DIFFUSE_SAMPLER_EULER || r->kind == DIFFUSE_SAMPLER_EULER_A)
        return x0 + noise * s;
    if (r->kind == DIFFUSE_SAMPLER_DPMPP_2M)
        return (x0 + s * noise) / sqrt(s * s + 1);
    return sqrt(a) * x0 + sqrt(1 - a) * noise;
}

/* Starting latents: txt2img noise * init_sigma, or an "image" noised by
 * add_noise at evaluation 0 (img2img). Engine floats, reference doubles. */
static void start_latents(const diffuse_sampler_state *s, const ref_run *r, bool img2img, float *x,
                          double *xd)
{
    uint64_t st = 12345;
    float noise[NLAT], img[NLAT];
    for (int j = 0; j < NLAT; j++) {
        double u1 = test_uniform(&st), u2 = test_uniform(&st);
        noise[j] = (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
        img[j] = (float)(0.8 * sin(0.7 * j));
    }
    if (img2img)
        diffuse_sampler_add_noise(s, 0, img, noise, x);
    for (int j = 0; j < NLAT; j++) {
        if (!img2img)
            x[j] = noise[j] * diffuse_sampler_init_sigma(s);
        xd[j] = img2img ? ref_add_noise(r, 0, img[j], noise[j]) : x[j];
    }
}

/* Runs the engine and the reference side by side; returns max |x - xd| / max |xd|
 * after the last step, or -1 on an engine error. */
static double run_pair(diffuse_sampler kind, bool karras, diffuse_prediction pred, int steps,
                       float strength)
{
    diffuse_schedule_config c = diffuse_schedule_config_default();
    c.prediction = pred;
    diffuse_sampler_state *s = make(kind, karras, &c, steps, strength, NLAT);
    if (!s)
        return -1;
    ref_run *r = ref_new(s, kind, karras, &c, steps);
    test_noise *tn = test_noise_new(NLAT);
    diffuse_noise noise = {test_draw, tn};
    float x[NLAT], xin[NLAT], m[NLAT];
    double xd[NLAT], md[NLAT], err_max = 0, ref_max = 0;
    char err[DIFFUSE_ERROR_SIZE];
    int rc = 0;
    start_latents(s, r, strength < 1, x, xd);
    for (int i = 0; i < r->count && !rc; i++) {
        bool euler = kind == DIFFUSE_SAMPLER_EULER || kind == DIFFUSE_SAMPLER_EULER_A;
        double scale = euler ? sqrt(r->sig[i] * r->sig[i] + 1) : 1;
        diffuse_sampler_scale_input(s, i, x, xin);
        for (int j = 0; j < NLAT; j++) {
            m[j] = (float)ref_model(xin[j], r->t[i], j);
            md[j] = ref_model(xd[j] / scale, r->t[i], j);
        }
        rc = diffuse_sampler_step(s, i, m, x, &noise, err);
        ref_step(r, i, xd, md, tn);
    }
    for (int j = 0; j < NLAT; j++) {
        err_max = fmax(err_max, fabs(x[j] - xd[j]));
        ref_max = fmax(ref_max, fabs(xd[j]));
    }
    if (rc)
        printf("  %s: %s\n", diffuse_sampler_name(kind), err);
    free(tn);
    free(r);
    diffuse_sampler_free(s);
    return rc || !(err_max == err_max) ? -1 : err_max / fmax(ref_max, 1e-30);
}

static void test_against_reference(void)
{
    static const float strengths[] = {1.0f, 0.6f};
    for (int kind = 0; kind < DIFFUSE_SAMPLER_COUNT; kind++)
        for (int karras = 0; karras <= (uses_sigmas(kind) ? 1 : 0); karras++)
            for (int pred = DIFFUSE_PREDICTION_EPSILON; pred <= DIFFUSE_PREDICTION_V; pred++)
                for (int si = 0; si < 2; si++) {
                    int steps = kind == DIFFUSE_SAMPLER_LCM ? 4 : 9;
                    double e = run_pair(kind, karras, pred, steps, strengths[si]);
                    CHECK(e >= 0 && e < 1e-5,
                          "%s karras=%d %s strength %g: engine vs double reference %.3g",
                          diffuse_sampler_name(kind), karras,
                          pred == DIFFUSE_PREDICTION_V ? "v" : "eps", (double)strengths[si], e);
                }
    /* long schedules exercise PLMS's four-output formula and 2M's history */
    CHECK(run_pair(DIFFUSE_SAMPLER_PNDM, false, DIFFUSE_PREDICTION_EPSILON, 50, 1) < 1e-5,
          "pndm 50 steps vs reference");
    CHECK(run_pair(DIFFUSE_SAMPLER_DPMPP_2M, true, DIFFUSE_PREDICTION_EPSILON, 30, 1) < 1e-5,
          "dpmpp_2m karras 30 steps vs reference");
    CHECK(run_pair(DIFFUSE_SAMPLER_EULER_A, false, DIFFUSE_PREDICTION_V, 25, 1) < 1e-5,
          "euler_a v 25 steps vs reference");
}

/* ------------------------------------------------------------------ 4. edge cases */

/* Runs every evaluation with model output 0.1 x; true when all steps succeed
 * and the latents stay finite. */
static bool run_all(diffuse_sampler_state *s)
{
    float x[NLAT], m[NLAT];
    test_noise *tn = test_noise_new(NLAT);
    diffuse_noise noise = {test_draw, tn};
    char err[DIFFUSE_ERROR_SIZE];
    bool ok = true;
    for (int j = 0; j < NLAT; j++)
        x[j] = (float)sin(j) * diffuse_sampler_init_sigma(s);
    for (int i = 0; i < diffuse_sampler_count(s) && ok; i++) {
        for (int j = 0; j < NLAT; j++)
            m[j] = 0.1f * x[j];
        ok = diffuse_sampler_step(s, i, m, x, &noise, err) == 0;
    }
    for (int j = 0; j < NLAT; j++)
        ok = ok && isfinite(x[j]);
    free(tn);
    return ok;
}

static void test_strength_edges(void)
{
    for (int kind = 0; kind < DIFFUSE_SAMPLER_COUNT; kind++) {
        int steps = 6, total = kind == DIFFUSE_SAMPLER_PNDM ? 7 : 6;
        diffuse_sampler_state *full = make(kind, false, NULL, steps, 1.0f, NLAT);
        CHECK(full && diffuse_sampler_count(full) == total, "%s strength 1: all %d evaluations",
              diffuse_sampler_name(kind), total);
        /* int(6 * 0.01) = 0 steps kept: t_start = 6, timesteps[6:] is empty, except
         * for PNDM whose 7-entry list keeps its last entry (t = 1), as diffusers */
        diffuse_sampler_state *none = make(kind, false, NULL, steps, 0.01f, NLAT);
        int left = kind == DIFFUSE_SAMPLER_PNDM ? 1 : 0;
        CHECK(none && diffuse_sampler_count(none) == left, "%s strength 0.01: %d evaluations",
              diffuse_sampler_name(kind), left);
        if (none && left) {
            CHECK(diffuse_sampler_timestep(none, 0) == 1.0f && run_all(none),
                  "pndm strength 0.01: one evaluation at t = 1 runs");
        } else if (none) {
            float x0[NLAT], nz[NLAT], out[NLAT], m[NLAT] = {0};
            char err[DIFFUSE_ERROR_SIZE];
            for (int j = 0; j < NLAT; j++) {
                x0[j] = (float)j;
                nz[j] = 1;
            }
            diffuse_sampler_add_noise(none, 0, x0, nz, out);
            CHECK(memcmp(out, x0, sizeof x0) == 0, "%s strength 0.01: add_noise(0) is x0",
                  diffuse_sampler_name(kind));
            CHECK(diffuse_sampler_step(none, 0, m, out, NULL, err) == -1 && err[0],
                  "%s strength 0.01: step 0 refused", diffuse_sampler_name(kind));
            CHECK(isnan(diffuse_sampler_timestep(none, 0)), "timestep out of range is NaN");
        }
        /* int(6 * 0.2) = 1: one evaluation (PNDM: the last two entries) */
        diffuse_sampler_state *one = make(kind, false, NULL, steps, 0.2f, NLAT);
        int want = kind == DIFFUSE_SAMPLER_PNDM ? 2 : 1;
        CHECK(one && diffuse_sampler_count(one) == want && run_all(one),
              "%s strength 0.2: %d evaluation(s) run", diffuse_sampler_name(kind), want);
        diffuse_sampler_free(full);
        diffuse_sampler_free(none);
        diffuse_sampler_free(one);
    }
    /* Python's int(steps * strength) on the decimal the user typed: 10 * 0.7 = 7 */
    diffuse_sampler_state *s = make(DIFFUSE_SAMPLER_DDIM, false, NULL, 10, 0.7f, NLAT);
    CHECK(s && diffuse_sampler_count(s) == 7, "ddim 10 steps strength 0.7: 7 evaluations");
    diffuse_sampler_free(s);
    char err[DIFFUSE_ERROR_SIZE];
    const float bad[] = {0.0f, -0.5f, 1.5f, NAN};
    for (int k = 0; k < 4; k++) {
        s = (diffuse_sampler_state *)1;
        CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_EULER, false, NULL, 6, bad[k], NLAT, &s,
                                     err) == -1 &&
                  s == NULL && strstr(err, "strength"),
              "strength %g rejected", (double)bad[k]);
    }
}

static void test_steps_edges(void)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_sampler_state *s = NULL;
    for (int kind = 0; kind < DIFFUSE_SAMPLER_COUNT; kind++)
        for (int karras = 0; karras <= (uses_sigmas(kind) ? 1 : 0); karras++) {
            s = make(kind, karras, NULL, 1, 1.0f, NLAT);
            CHECK(s && diffuse_sampler_count(s) == 1 && run_all(s), "%s karras=%d: one step runs",
                  diffuse_sampler_name(kind), karras);
            diffuse_sampler_free(s);
            CHECK(diffuse_sampler_create(kind, karras, NULL, 1001, 1.0f, NLAT, &s, err) == -1 && !s,
                  "%s: 1001 steps > 1000 training timesteps rejected (%s)",
                  diffuse_sampler_name(kind), err);
            CHECK(diffuse_sampler_create(kind, karras, NULL, 0, 1.0f, NLAT, &s, err) == -1,
                  "%s: 0 steps rejected", diffuse_sampler_name(kind));
        }
    diffuse_schedule_config c = diffuse_schedule_config_default();
    c.num_train_timesteps = 100;
    c.steps_offset = 0;
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_EULER, false, &c, 101, 1.0f, NLAT, &s, err) == -1,
          "101 steps > 100 training timesteps rejected");
    s = make(DIFFUSE_SAMPLER_DDIM, false, &c, 100, 1.0f, NLAT);
    CHECK(s && diffuse_sampler_count(s) == 100 && run_all(s), "ddim with steps = N runs");
    diffuse_sampler_free(s);
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_LCM, false, NULL, 51, 1.0f, NLAT, &s, err) == -1,
          "lcm: steps > original_inference_steps rejected");
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_DDIM, true, NULL, 6, 1.0f, NLAT, &s, err) == -1,
          "ddim with Karras sigmas rejected");
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_EULER, false, NULL, 6, 1.0f, 0, &s, err) == -1,
          "empty latent rejected");
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_COUNT, false, NULL, 6, 1.0f, 4, &s, err) == -1,
          "unknown sampler rejected");
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_EULER, false, NULL, 6, 1.0f, 4, NULL, err) == -1,
          "NULL output rejected");
    c = diffuse_schedule_config_default();
    c.beta_end = 1.5f;
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_EULER, false, &c, 6, 1.0f, 4, &s, err) == -1,
          "bad betas rejected");
}

static void test_step_protocol(void)
{
    char err[DIFFUSE_ERROR_SIZE];
    float x[NLAT], m[NLAT], before[NLAT];
    for (int j = 0; j < NLAT; j++) {
        x[j] = (float)cos(j);
        m[j] = 0.3f;
    }
    diffuse_sampler_state *s = make(DIFFUSE_SAMPLER_DPMPP_2M, false, NULL, 6, 1.0f, NLAT);
    CHECK(s && diffuse_sampler_step(s, 0, m, x, NULL, err) == 0, "dpm step 0");
    CHECK(diffuse_sampler_step(s, 2, m, x, NULL, err) == -1 && strstr(err, "order"),
          "skipping a step is refused: %s", err);
    CHECK(diffuse_sampler_step(s, 1, m, x, NULL, err) == 0, "dpm step 1 after 0");
    CHECK(diffuse_sampler_step(s, 0, m, x, NULL, err) == 0, "step 0 starts a new run");
    CHECK(diffuse_sampler_step(s, 6, m, x, NULL, err) == -1, "step past the schedule refused");
    diffuse_sampler_free(s);

    s = make(DIFFUSE_SAMPLER_EULER_A, false, NULL, 6, 1.0f, NLAT);
    memcpy(before, x, sizeof x);
    CHECK(diffuse_sampler_step(s, 0, m, x, NULL, err) == -1 && memcmp(x, before, sizeof x) == 0,
          "euler_a without a noise source refused, latents untouched");
    test_noise *tn = test_noise_new(NLAT);
    tn->fail_at = 0;
    diffuse_noise noise = {test_draw, tn};
    CHECK(diffuse_sampler_step(s, 0, m, x, &noise, err) == -1 && strstr(err, "on purpose") &&
              memcmp(x, before, sizeof x) == 0,
          "a failing draw is reported, latents untouched");
    free(tn);
    diffuse_sampler_free(s);

    /* Euler's model input is x / sqrt(sigma^2 + 1); the others pass x through */
    s = make(DIFFUSE_SAMPLER_EULER, false, NULL, 6, 1.0f, NLAT);
    float in[NLAT], sig = (float)sigma_of(s, DIFFUSE_SAMPLER_EULER, 2, NLAT);
    diffuse_sampler_scale_input(s, 2, x, in);
    CHECK(in[5] == x[5] / sqrtf(sig * sig + 1.0f), "euler scale_input");
    diffuse_sampler_free(s);
    s = make(DIFFUSE_SAMPLER_DDIM, false, NULL, 6, 1.0f, NLAT);
    diffuse_sampler_scale_input(s, 2, x, in);
    CHECK(memcmp(in, x, sizeof x) == 0, "ddim scale_input is the identity");
    diffuse_sampler_free(s);
}

/* numpy.arange(1000, 0, -1000/61) has 62 points, so diffusers' "trailing" grid
 * for 61 steps ends in timestep -1: Euler runs it (np.interp clamps the sigma),
 * DDIM cannot index alphas_cumprod with it and is refused. */
static void test_trailing_quirk(void)
{
    diffuse_schedule_config c = diffuse_schedule_config_default();
    c.spacing = DIFFUSE_SPACING_TRAILING;
    diffuse_sampler_state *s = make(DIFFUSE_SAMPLER_EULER, false, &c, 61, 1.0f, NLAT);
    CHECK(s && diffuse_sampler_count(s) == 62 && diffuse_sampler_timestep(s, 61) == -1.0f &&
              diffuse_sampler_timestep(s, 0) == 999.0f && run_all(s),
          "euler trailing 61 steps: 62 evaluations ending at timestep -1, as diffusers");
    diffuse_sampler_free(s);
    s = make(DIFFUSE_SAMPLER_EULER, false, &c, 60, 1.0f, NLAT);
    CHECK(s && diffuse_sampler_count(s) == 60 && diffuse_sampler_timestep(s, 59) == 16.0f,
          "euler trailing 60 steps: 60 evaluations ending at 16");
    diffuse_sampler_free(s);
    char err[DIFFUSE_ERROR_SIZE];
    CHECK(diffuse_sampler_create(DIFFUSE_SAMPLER_DDIM, false, &c, 61, 1.0f, NLAT, &s, err) == -1 &&
              strstr(err, "timestep"),
          "ddim trailing 61 steps refused: %s", err);
    c.spacing = DIFFUSE_SPACING_LEADING; /* Euler with "leading": init sigma sqrt(max^2 + 1) */
    s = make(DIFFUSE_SAMPLER_EULER, false, &c, 6, 1.0f, NLAT);
    double smax = sigma_of(s, DIFFUSE_SAMPLER_EULER, 0, NLAT);
    CHECK(s && fabs(diffuse_sampler_init_sigma(s) - sqrt(smax * smax + 1)) < 1e-6 * smax,
          "euler leading init sigma");
    diffuse_sampler_free(s);
}

/* ------------------------------------------------------------------ 5. golden.safetensors */

#define GLAT 256 /* [1, 4, 8, 8] */

static float *golden_tensor(const diffuse_st_file *f, const char *name)
{
    const diffuse_st_tensor *t = diffuse_st_find(f, name);
    char err[DIFFUSE_ERROR_SIZE];
    float *out = t && t->numel >= GLAT ? malloc((size_t)t->numel * sizeof(float)) : NULL;
    if (out && diffuse_st_to_f32(t, out, err)) {
        free(out);
        out = NULL;
    }
    CHECK(out != NULL, "golden tensor %s", name);
    return out;
}

static double max_rel(const float *a, const float *b, size_t n)
{
    double abs_err;
    return test_rel_err(a, b, n, &abs_err);
}

/* Replays one recorded [1, 4, 8, 8] draw. */
typedef struct replay_noise {
    const float *v;
    int calls;
} replay_noise;

static int replay_draw(void *self, float *out, size_t n, const char *site, char *err)
{
    replay_noise *r = self;
    if (!r->v || r->calls > 0 || n != GLAT || strcmp(site, "step") != 0)
        return diffuse_fail(err, "replay: no recorded draw for this request");
    memcpy(out, r->v, n * sizeof(float));
    r->calls++;
    return 0;
}

/* One engine step from x with model output m and the recorded draw (or none);
 * the relative error against the recorded latents `want`, -1 on failure. */
static double step_against(diffuse_sampler_state *s, int i, const float *m, float *x,
                           const float *draw, const float *want)
{
    char err[DIFFUSE_ERROR_SIZE];
    replay_noise r = {draw, 0};
    diffuse_noise noise = {replay_draw, &r};
    if (!s || !m || !x || !want || diffuse_sampler_step(s, i, m, x, &noise, err)) {
        printf("  step_against: %s\n", s ? err : "no sampler");
        return -1;
    }
    return max_rel(x, want, GLAT);
}

/* Euler, Euler Karras and Euler ancestral start from the same latents
 * (noise0 * init sigma) at t = 999 with the same sigma, so the UNet gave the
 * three the same output. Recover it from Euler's first step,
 * x1 = x + eps (s1 - s0), and check it makes the others' recorded first steps. */
static void check_euler_family(const diffuse_st_file *f)
{
    float *n0 = golden_tensor(f, "txt2img.euler.noise0");
    float *e1 = golden_tensor(f, "txt2img.euler.step0.latents");
    float *k1 = golden_tensor(f, "txt2img.euler_karras.step0.latents");
    float *a1 = golden_tensor(f, "txt2img.euler_a.step0.latents");
    float *ad = golden_tensor(f, "txt2img.euler_a.draw0");
    diffuse_sampler_state *eu = make(DIFFUSE_SAMPLER_EULER, false, NULL, 6, 1.0f, GLAT);
    diffuse_sampler_state *ek = make(DIFFUSE_SAMPLER_EULER, true, NULL, 6, 1.0f, GLAT);
    diffuse_sampler_state *ea = make(DIFFUSE_SAMPLER_EULER_A, false, NULL, 6, 1.0f, GLAT);
    if (n0 && e1 && k1 && a1 && ad && eu && ek && ea) {
        float x[GLAT], y[GLAT], eps[GLAT], init = diffuse_sampler_init_sigma(eu);
        double s0 = sigma_of(eu, DIFFUSE_SAMPLER_EULER, 0, GLAT),
               s1 = sigma_of(eu, DIFFUSE_SAMPLER_EULER, 1, GLAT);
        for (int j = 0; j < GLAT; j++) {
            x[j] = n0[j] * init;
            eps[j] = (float)(((double)e1[j] - x[j]) / (s1 - s0));
        }
        CHECK(init == diffuse_sampler_init_sigma(ek) && init == diffuse_sampler_init_sigma(ea),
              "euler family: one init sigma");
        memcpy(y, x, sizeof x);
        double e = step_against(eu, 0, eps, y, NULL, e1);
        CHECK(e >= 0 && e < 1e-6, "euler step 0 from its recovered output: %.3g", e);
        memcpy(y, x, sizeof x);
        e = step_against(ek, 0, eps, y, NULL, k1);
        CHECK(e >= 0 && e < 1e-6, "euler karras step 0 vs golden: %.3g", e);
        memcpy(y, x, sizeof x);
        e = step_against(ea, 0, eps, y, ad, a1);
        CHECK(e >= 0 && e < 1e-6, "euler_a step 0 (with its draw) vs golden: %.3g", e);
    }
    diffuse_sampler_free(eu);
    diffuse_sampler_free(ek);
    diffuse_sampler_free(ea);
    free(n0), free(e1), free(k1), free(a1), free(ad);
}

/* DPM-Solver++, its Karras variant and LCM all give the UNet noise0 at t = 999.
 * DPM's first step is first order, x1 = (st1/st0) x - a1 (e^-h - 1) D with
 * D = (x - st0 eps) / a0: solve it for eps, then step the other two. */
static void check_dpm_family(const diffuse_st_file *f)
{
    float *n0 = golden_tensor(f, "txt2img.dpmpp_2m.noise0");
    float *d1 = golden_tensor(f, "txt2img.dpmpp_2m.step0.latents");
    float *k1 = golden_tensor(f, "txt2img.dpmpp_2m_karras.step0.latents");
    float *l1 = golden_tensor(f, "txt2img.lcm.step0.latents");
    float *ld = golden_tensor(f, "txt2img.lcm.draw0");
    diffuse_sampler_state *dp = make(DIFFUSE_SAMPLER_DPMPP_2M, false, NULL, 6, 1.0f, GLAT);
    diffuse_sampler_state *dk = make(DIFFUSE_SAMPLER_DPMPP_2M, true, NULL, 6, 1.0f, GLAT);
    diffuse_sampler_state *lc = make(DIFFUSE_SAMPLER_LCM, false, NULL, 4, 1.0f, GLAT);
    if (n0 && d1 && k1 && l1 && ld && dp && dk && lc) {
        double s0 = sigma_of(dp, DIFFUSE_SAMPLER_DPMPP_2M, 0, GLAT),
               s1 = sigma_of(dp, DIFFUSE_SAMPLER_DPMPP_2M, 1, GLAT);
        double a0 = 1 / sqrt(s0 * s0 + 1), st0 = s0 * a0, a1 = 1 / sqrt(s1 * s1 + 1), st1 = s1 * a1;
        double h = log(a1 / st1) - log(a0 / st0);
        float eps[GLAT], y[GLAT];
        for (int j = 0; j < GLAT; j++) {
            double d = (st1 / st0 * n0[j] - d1[j]) / (a1 * (exp(-h) - 1));
            eps[j] = (float)((n0[j] - a0 * d) / st0);
        }
        memcpy(y, n0, sizeof y);
        double e = step_against(dp, 0, eps, y, NULL, d1);
        CHECK(e >= 0 && e < 1e-6, "dpmpp_2m step 0 from its recovered output: %.3g", e);
        memcpy(y, n0, sizeof y);
        e = step_against(dk, 0, eps, y, NULL, k1);
        CHECK(e >= 0 && e < 1e-6, "dpmpp_2m karras step 0 vs golden: %.3g", e);
        memcpy(y, n0, sizeof y);
        e = step_against(lc, 0, eps, y, ld, l1);
        CHECK(e >= 0 && e < 1e-6, "lcm step 0 (with its draw) vs golden: %.3g", e);
    }
    diffuse_sampler_free(dp);
    diffuse_sampler_free(dk);
    diffuse_sampler_free(lc);
    free(n0), free(d1), free(k1), free(l1), free(ld);
}

/* Solves DDIM's step i (x -> x1, eta 0) for the model output: with a, b the
 * sqrt(abar), sqrt(1 - abar) of evaluations i and i + 1 (read through add_noise),
 * x1 = b1 eps + a1 (x - b0 eps) / a0. */
static void ddim_invert(const diffuse_sampler_state *s, int i, const float *x, const float *x1,
                        float *eps)
{
    float one[GLAT], zero[GLAT] = {0}, a0[GLAT], b0[GLAT], a1[GLAT], b1[GLAT];
    for (int j = 0; j < GLAT; j++)
        one[j] = 1;
    diffuse_sampler_add_noise(s, i, one, zero, a0);
    diffuse_sampler_add_noise(s, i, zero, one, b0);
    diffuse_sampler_add_noise(s, i + 1, one, zero, a1);
    diffuse_sampler_add_noise(s, i + 1, zero, one, b1);
    double ratio = (double)a1[0] / a0[0], denom = b1[0] - (double)a1[0] * b0[0] / a0[0];
    for (int j = 0; j < GLAT; j++)
        eps[j] = (float)(((double)x1[j] - ratio * x[j]) / denom);
}

/* DDIM and PNDM give the UNet noise0 at t = 831: DDIM's recovered output must
 * make PNDM's first step. PNDM's second step evaluates at (x1_pndm, 665), where
 * DDIM evaluated at the nearly equal (x1_ddim, 665): looser tolerance. */
static void check_ddim_pndm(const diffuse_st_file *f)
{
    float *n0 = golden_tensor(f, "txt2img.ddim.noise0");
    float *d1 = golden_tensor(f, "txt2img.ddim.step0.latents");
    float *d2 = golden_tensor(f, "txt2img.ddim.step1.latents");
    float *p1 = golden_tensor(f, "txt2img.pndm.step0.latents");
    float *p2 = golden_tensor(f, "txt2img.pndm.step1.latents");
    diffuse_sampler_state *dd = make(DIFFUSE_SAMPLER_DDIM, false, NULL, 6, 1.0f, GLAT);
    diffuse_sampler_state *pn = make(DIFFUSE_SAMPLER_PNDM, false, NULL, 6, 1.0f, GLAT);
    if (n0 && d1 && d2 && p1 && p2 && dd && pn) {
        float eps[GLAT], y[GLAT];
        ddim_invert(dd, 0, n0, d1, eps);
        memcpy(y, n0, sizeof y);
        double e = step_against(dd, 0, eps, y, NULL, d1);
        CHECK(e >= 0 && e < 1e-6, "ddim step 0 from its recovered output: %.3g", e);
        memcpy(y, n0, sizeof y);
        e = step_against(pn, 0, eps, y, NULL, p1);
        CHECK(e >= 0 && e < 1e-6, "pndm step 0 vs golden: %.3g", e);
        ddim_invert(dd, 1, d1, d2, eps);
        e = step_against(pn, 1, eps, y, NULL, p2);
        CHECK(e >= 0 && e < 5e-6,
              "pndm step 1 (repeated timestep, averaged outputs) vs golden: %.3g", e);
    }
    diffuse_sampler_free(dd);
    diffuse_sampler_free(pn);
    free(n0), free(d1), free(d2), free(p1), free(p2);
}

/* Inpainting with a 4-channel UNet: after step i the pipeline overwrites the
 * unmasked latents with add_noise(image_latents, start noise, timesteps[i + 1])
 * (the image latents themselves after the last step). image_latents =
 * 0.18215 (mean + exp(logvar / 2) draw0) from the VAE moments; the latent mask
 * is the 64x64 mask sampled every 8 pixels (nearest), 0 = keep. */
static void check_inpaint(const diffuse_st_file *f, const char *tag, diffuse_sampler kind,
                          bool karras)
{
    char name[128];
    float *mom = golden_tensor(f, "vae.encode.moments");
    float *mask = golden_tensor(f, (snprintf(name, sizeof name, "inpaint.%s.mask", tag), name));
    float *d0 = golden_tensor(f, (snprintf(name, sizeof name, "inpaint.%s.draw0", tag), name));
    float *d1 = golden_tensor(f, (snprintf(name, sizeof name, "inpaint.%s.draw1", tag), name));
    diffuse_sampler_state *s = make(kind, karras, NULL, 6, 0.75f, GLAT);
    if (mom && mask && d0 && d1 && s) {
        float img[GLAT], want[GLAT];
        for (int j = 0; j < GLAT; j++) {
            float logvar = fminf(fmaxf(mom[GLAT + j], -30.0f), 20.0f);
            img[j] = 0.18215f * (mom[j] + expf(0.5f * logvar) * d0[j]);
        }
        for (int i = 0; i < diffuse_sampler_count(s); i++) {
            snprintf(name, sizeof name, "inpaint.%s.step%d.latents", tag, i);
            float *got = golden_tensor(f, name);
            diffuse_sampler_add_noise(s, i + 1, img, d1, want);
            double err = 0, mag = 0;
            int kept = 0;
            for (int j = 0; got && j < GLAT; j++) {
                int p = j % 64, y = p / 8, x = p % 8;
                if (mask[(8 * y) * 64 + 8 * x] >= 0.5f)
                    continue;
                kept++;
                err = fmax(err, fabs((double)got[j] - want[j]));
                mag = fmax(mag, fabs((double)want[j]));
            }
            CHECK(got && kept > 0 && err <= 5e-6 * mag,
                  "inpaint %s step %d: %d kept latents = add_noise(image, noise, i + 1), err %.3g",
                  tag, i, kept, err / fmax(mag, 1e-30));
            free(got);
        }
    }
    diffuse_sampler_free(s);
    free(mom), free(mask), free(d0), free(d1);
}

static void test_golden_tensors(void)
{
    char buf[4096];
    const char *path = test_shared("reference/sd1-tiny/golden.safetensors", buf);
    if (!path)
        return;
    diffuse_st_file *f = NULL;
    char err[DIFFUSE_ERROR_SIZE];
    CHECK(diffuse_st_open(path, &f, err) == 0, "open golden.safetensors: %s", err);
    if (!f)
        return;
    check_euler_family(f);
    check_dpm_family(f);
    check_ddim_pndm(f);
    check_inpaint(f, "ddim", DIFFUSE_SAMPLER_DDIM, false);
    check_inpaint(f, "euler_a", DIFFUSE_SAMPLER_EULER_A, false);
    check_inpaint(f, "dpmpp_2m_karras", DIFFUSE_SAMPLER_DPMPP_2M, true);
    diffuse_st_close(f);
}

int main(void)
{
    test_names();
    test_golden_schedules();
    test_against_reference();
    test_strength_edges();
    test_steps_edges();
    test_step_protocol();
    test_trailing_quirk();
    test_golden_tensors();
    TEST_END();
}
