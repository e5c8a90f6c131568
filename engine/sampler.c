/* sampler.c: noise schedules and denoising steps of the six samplers.
 *
 * Each sampler reproduces one huggingface diffusers scheduler number for number,
 * as the Stable Diffusion pipelines drive it:
 *
 *   euler     EulerDiscreteScheduler            (Karras et al. 2022, EDM)
 *   euler_a   EulerAncestralDiscreteScheduler   (k-diffusion's ancestral Euler)
 *   ddim      DDIMScheduler, eta = 0            (Song et al. 2020)
 *   dpmpp_2m  DPMSolverMultistepScheduler, dpmsolver++, order 2, midpoint,
 *             lower_order_final, final sigma 0  (Lu et al. 2022)
 *   lcm       LCMScheduler                      (Luo et al. 2023)
 *   pndm      PNDMScheduler, skip_prk_steps     (Liu et al. 2022, PLMS)
 *
 * Schedule math copies the dtype of every intermediate of the reference:
 * betas and alphas_cumprod are float32 tensors (torch.linspace's CPU kernel,
 * a cumprod accumulated in double), timestep grids are numpy float64 (linspace,
 * arange and round as numpy computes them), np.interp runs in double on float32
 * sigmas, Karras sigmas are float64 and the stored schedule is float32. The
 * per-step scalars are float32 0-dim tensors in diffusers, so they are floats
 * here, and every latent formula keeps diffusers' operation order so that the
 * float32 rounding matches.
 *
 * Indexing: the full schedule has `total` entries; img2img keeps the tail from
 * `begin` = t_start (get_timesteps + set_begin_index). Evaluation i of a run is
 * schedule entry k = begin + i, which is diffusers' step_index.
 *
 * Not in diffusers: euler_a with Karras sigmas (EulerAncestralDiscreteScheduler
 * has no such option); it takes EulerDiscreteScheduler's Karras schedule.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Latent formulas round like torch's separate elementwise kernels: no fused
 * multiply-add (GCC fuses nothing in ISO C mode; clang is told here). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define MAX_TRAIN_TIMESTEPS 100000

/* ------------------------------------------------------------------ names */

static const char *const sampler_names[DIFFUSE_SAMPLER_COUNT] = {
    "euler", "euler_a", "ddim", "dpmpp_2m", "lcm", "pndm",
};
/* what AUTOMATIC1111 calls them, in its parameters text and menus */
static const char *const sampler_labels[DIFFUSE_SAMPLER_COUNT] = {
    "Euler", "Euler a", "DDIM", "DPM++ 2M", "LCM", "PLMS",
};

/* ... and with Karras sigmas, for the samplers that take them (uses_sigmas) */
static const char *const sampler_karras_labels[DIFFUSE_SAMPLER_COUNT] = {
    "Euler Karras", "Euler a Karras", NULL, "DPM++ 2M Karras", NULL, NULL,
};

static const char *const spacing_names[] = {"default", "leading", "linspace", "trailing"};
#define SPACING_COUNT ((int)(sizeof spacing_names / sizeof spacing_names[0]))

const char *diffuse_sampler_name(diffuse_sampler sampler)
{
    if ((int)sampler < 0 || sampler >= DIFFUSE_SAMPLER_COUNT)
        return "unknown";
    return sampler_names[sampler];
}

int diffuse_sampler_parse(const char *name)
{
    for (int i = 0; name && i < DIFFUSE_SAMPLER_COUNT; i++)
        if (strcmp(name, sampler_names[i]) == 0)
            return i;
    return -1;
}

const char *diffuse_sampler_label(diffuse_sampler sampler)
{
    if ((int)sampler < 0 || sampler >= DIFFUSE_SAMPLER_COUNT)
        return "unknown";
    return sampler_labels[sampler];
}

const char *diffuse_sampler_karras_label(diffuse_sampler sampler)
{
    if ((int)sampler < 0 || sampler >= DIFFUSE_SAMPLER_COUNT)
        return NULL;
    return sampler_karras_labels[sampler];
}

int diffuse_sampler_from_label(const char *label)
{
    for (int i = 0; label && i < DIFFUSE_SAMPLER_COUNT; i++)
        if (strcmp(label, sampler_labels[i]) == 0)
            return i;
    return diffuse_sampler_parse(label);
}

const char *diffuse_spacing_name(diffuse_spacing spacing)
{
    if ((int)spacing < 0 || (int)spacing >= SPACING_COUNT)
        return "unknown";
    return spacing_names[spacing];
}

int diffuse_spacing_parse(const char *name)
{
    for (int i = 0; name && i < SPACING_COUNT; i++)
        if (strcmp(name, spacing_names[i]) == 0)
            return i;
    return -1;
}

/* Stable Diffusion 1.x/2.x scheduler_config.json values. */
diffuse_schedule_config diffuse_schedule_config_default(void)
{
    diffuse_schedule_config c = {
        .num_train_timesteps = 1000,
        .beta_start = 0.00085f,
        .beta_end = 0.012f,
        .beta_schedule = DIFFUSE_BETAS_SCALED_LINEAR,
        .steps_offset = 1,
        .set_alpha_to_one = false,
        .prediction = DIFFUSE_PREDICTION_AUTO,
        .spacing = DIFFUSE_SPACING_DEFAULT,
        .original_inference_steps = 50,
        .timestep_scaling = 10.0f,
    };
    return c;
}

/* ------------------------------------------------------------------ state */

struct diffuse_sampler_state {
    diffuse_sampler kind;
    bool v_pred;             /* v-prediction, else epsilon */
    diffuse_spacing spacing; /* resolved, never DEFAULT */
    int num_train;           /* training timesteps N */
    int steps;               /* num_inference_steps as requested */
    int total;               /* entries in the full schedule (PNDM: steps + 1) */
    int begin;               /* first entry run: t_start of get_timesteps */
    int count;               /* evaluations: total - begin */
    int ratio;               /* N // steps: DDIM/PNDM distance to the previous timestep */
    float init_sigma;        /* init_noise_sigma */
    float final_alpha;       /* alphas_cumprod "before" t = 0: 1 or alphas_cumprod[0] */
    float timestep_scaling;  /* LCM */
    float *alphas_cumprod;   /* [N] */
    float *timesteps;        /* [steps + 2], total used: the UNet's timestep per entry */
    float *sigmas;           /* [steps + 2], total + 1 used: Euler/DPM sigmas, final 0; or NULL */
    size_t latent_n;
    int taken;               /* steps taken in the current run */
    float *block;            /* every latent-sized buffer below, one allocation */
    float *noise;            /* [latent_n] euler_a / lcm draw */
    float *x0_prev, *x0_cur; /* [latent_n] dpmpp_2m data predictions, previous and current */
    float *ets[4];           /* [latent_n] pndm model outputs, oldest first */
    int n_ets;               /* pndm outputs kept, at most 4 */
    float *cur_sample;       /* [latent_n] pndm sample before its first step */
};

/* ------------------------------------------------------------------ numpy and torch arithmetic */

/* The double Python holds for a config or argument value given in decimal: the
 * shortest decimal that reads back as the same float, read as a double. */
static double decimal_double(float f)
{
    char buf[40];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        if (strtof(buf, NULL) == f)
            return strtod(buf, NULL);
    }
    return f;
}

/* numpy.linspace(start, stop, num, endpoint)[i]: i * step + start in double,
 * the last point exactly stop. */
static double np_linspace(double start, double stop, int num, bool endpoint, int i)
{
    int div = endpoint ? num - 1 : num;
    if (endpoint && num > 1 && i == num - 1)
        return stop;
    if (div <= 0)
        return start;
    return i * ((stop - start) / div) + start;
}

/* numpy.arange(start, stop, step) for floats: ceil((stop - start) / step)
 * values; numpy stores start and start + step, then fills start + i * delta with
 * delta = (start + step) - start. Returns the length, -1 past cap. */
static int np_arange(double start, double stop, double step, double *out, int cap)
{
    double len = ceil((stop - start) / step);
    if (!(len > 0))
        return 0;
    if (len > cap)
        return -1;
    double second = start + step, delta = second - start;
    for (int i = 0; i < (int)len; i++)
        out[i] = i == 0 ? start : i == 1 ? second : start + i * delta;
    return (int)len;
}

/* torch.linspace(start, end, n, dtype=float32)[i] as ATen's CPU kernel: a float
 * step, the first half counted up from start, the second down from end. The
 * reference build fuses start + step * i into one multiply-add; the reference
 * data shows it (unfused, beta[600] of SD's schedule lands on a rounding tie
 * and sigma(599.4) comes out one ulp off). */
static float torch_linspace_f32(float start, float end, int n, int i)
{
    float step = (end - start) / (float)(n - 1);
    if (i < n / 2)
        return fmaf(step, (float)i, start);
    return fmaf(-step, (float)(n - 1 - i), end);
}

/* numpy.interp(x, arange(n), fp) in double for float32 fp. */
static double np_interp(double x, const float *fp, int n)
{
    if (x <= 0)
        return fp[0];
    if (x >= n - 1)
        return fp[n - 1];
    int j = (int)floor(x);
    if (x == j)
        return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - j) + fp[j];
}

/* ------------------------------------------------------------------ training schedule */

/* betas (scaled_linear: linspace of square roots, squared), alphas = 1 - betas,
 * alphas_cumprod as torch.cumprod on the CPU: a double accumulator, each
 * output rounded to float32. */
static void make_alphas_cumprod(const diffuse_schedule_config *c, float *ac)
{
    double b0 = decimal_double(c->beta_start), b1 = decimal_double(c->beta_end);
    bool scaled = c->beta_schedule == DIFFUSE_BETAS_SCALED_LINEAR;
    float start = (float)(scaled ? sqrt(b0) : b0), end = (float)(scaled ? sqrt(b1) : b1);
    double acc = 1.0;
    for (int i = 0; i < c->num_train_timesteps; i++) {
        float beta = torch_linspace_f32(start, end, c->num_train_timesteps, i);
        if (scaled)
            beta = beta * beta;
        acc *= (double)(1.0f - beta);
        ac[i] = (float)acc;
    }
}

/* sigma = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, float32 as torch. */
static float train_sigma(float ac)
{
    return sqrtf((1.0f - ac) / ac);
}

/* EDM eq. (5): sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
 * rho = 7, in double as diffusers' _convert_to_karras. */
static void karras_sigmas(double smin, double smax, int n, double *out)
{
    double rho = 7.0, min_inv = pow(smin, 1.0 / rho), max_inv = pow(smax, 1.0 / rho);
    for (int i = 0; i < n; i++)
        out[i] = pow(max_inv + np_linspace(0.0, 1.0, n, true, i) * (min_inv - max_inv), rho);
}

/* diffusers' _sigma_to_t: the timestep whose log-sigma brackets log(sigma),
 * linearly interpolated. log_sigmas are float32 (np.log of a float32 array);
 * log(sigma) and the weights are float64, low - high is a float32 difference. */
static double sigma_to_t(double sigma, const float *log_sigmas, int n)
{
    double ls = log(fmax(sigma, 1e-10));
    int low = 0;
    for (int j = 0; j < n; j++)
        if (ls - (double)log_sigmas[j] >= 0)
            low = j;
    if (low > n - 2)
        low = n - 2;
    float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = ((double)lo - ls) / (double)(lo - hi);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * low + w * (low + 1);
}

/* ------------------------------------------------------------------ timestep grids */

/* The descending grid of a "linspace", "leading" or "trailing" spacing as
 * DDIM, PNDM and Euler build it (Lin et al. 2023, table 2). linspace points are
 * rounded unless `exact_linspace` (Euler keeps them as float32). Returns the
 * length or -1. */
static int spaced_grid(diffuse_spacing sp, int n_train, int steps, int offset, bool exact_linspace,
                       double *out, int cap)
{
    if (sp == DIFFUSE_SPACING_LINSPACE) {
        for (int j = 0; j < steps; j++) {
            double t = np_linspace(0.0, n_train - 1, steps, true, steps - 1 - j);
            out[j] = exact_linspace ? (double)(float)t : rint(t);
        }
        return steps;
    }
    if (sp == DIFFUSE_SPACING_LEADING) {
        int ratio = n_train / steps;
        for (int j = 0; j < steps; j++)
            out[j] = (double)(steps - 1 - j) * ratio + offset;
        return steps;
    }
    int len = np_arange(n_train, 0.0, -((double)n_train / steps), out, cap);
    for (int j = 0; j < len; j++)
        out[j] = rint(out[j]) - 1;
    return len;
}

/* DPMSolverMultistepScheduler's grid: steps + 1 points with the last dropped. */
static int dpm_grid(diffuse_spacing sp, int n_train, int steps, int offset, double *out, int cap)
{
    int last = n_train; /* lambda_min_clipped = -inf clips nothing */
    if (sp == DIFFUSE_SPACING_LINSPACE) {
        for (int j = 0; j < steps; j++)
            out[j] = rint(np_linspace(0.0, last - 1, steps + 1, true, steps - j));
        return steps;
    }
    if (sp == DIFFUSE_SPACING_LEADING) {
        int ratio = last / (steps + 1);
        for (int j = 0; j < steps; j++)
            out[j] = (double)(steps - j) * ratio + offset;
        return steps;
    }
    int len = np_arange(last, 0.0, -((double)n_train / steps), out, cap);
    for (int j = 0; j < len; j++)
        out[j] = rint(out[j]) - 1;
    return len;
}

/* ------------------------------------------------------------------ schedules per sampler */

/* Scratch for building a schedule; freed at the end of create. */
typedef struct schedule_build {
    const diffuse_schedule_config *cfg;
    bool karras;
    float *train_sigmas; /* [N] sigma of every training timestep, float32 */
    float *log_sigmas;   /* [N] their float32 logs */
    double *grid;        /* [cap] timesteps in double */
    double *sig;         /* [cap] sigmas in double */
    int cap;
} schedule_build;

/* Largest stored sigma: init_noise_sigma, plus the unit variance of the data
 * under "leading" spacing (diffusers' Euler property). */
static float euler_init_sigma(const diffuse_sampler_state *s)
{
    float max = 0;
    for (int k = 0; k <= s->total; k++)
        if (s->sigmas[k] > max)
            max = s->sigmas[k];
    if (s->spacing == DIFFUSE_SPACING_LINSPACE || s->spacing == DIFFUSE_SPACING_TRAILING)
        return max;
    return sqrtf(max * max + 1.0f);
}

/* Euler and Euler ancestral: float32 timesteps, sigmas interpolated at them;
 * with Karras sigmas (EDM eq. 5) between the first and last interpolated sigma,
 * timesteps come back from sigma_to_t. A final sigma 0 closes the schedule. */
static int euler_schedule(diffuse_sampler_state *s, schedule_build *b, char *err)
{
    int n_train = s->num_train;
    int n = spaced_grid(s->spacing, n_train, s->steps, b->cfg->steps_offset, true, b->grid, b->cap);
    if (n < 1)
        return diffuse_fail(err, "sampler: empty timestep schedule for %d steps", s->steps);
    for (int j = 0; j < n; j++)
        b->sig[j] = np_interp(b->grid[j], b->train_sigmas, n_train);
    if (b->karras) {
        double smin = b->sig[n - 1], smax = b->sig[0];
        n = s->steps;
        karras_sigmas(smin, smax, n, b->sig);
        for (int j = 0; j < n; j++)
            b->grid[j] = sigma_to_t(b->sig[j], b->log_sigmas, n_train);
    }
    for (int j = 0; j < n; j++) {
        s->timesteps[j] = (float)b->grid[j];
        s->sigmas[j] = (float)b->sig[j];
    }
    s->sigmas[n] = 0.0f;
    s->total = n;
    s->init_sigma = euler_init_sigma(s);
    return 0;
}

/* DPM-Solver++: integer timesteps; Karras sigmas span the whole training range
 * and their timesteps are rounded; otherwise sigmas are interpolated. */
static int dpm_schedule(diffuse_sampler_state *s, schedule_build *b, char *err)
{
    int n_train = s->num_train;
    int n = dpm_grid(s->spacing, n_train, s->steps, b->cfg->steps_offset, b->grid, b->cap);
    if (n < 1)
        return diffuse_fail(err, "sampler: empty timestep schedule for %d steps", s->steps);
    if (b->karras) {
        n = s->steps;
        karras_sigmas(b->train_sigmas[0], b->train_sigmas[n_train - 1], n, b->sig);
        for (int j = 0; j < n; j++)
            b->grid[j] = rint(sigma_to_t(b->sig[j], b->log_sigmas, n_train));
    } else {
        for (int j = 0; j < n; j++)
            b->sig[j] = np_interp(b->grid[j], b->train_sigmas, n_train);
    }
    for (int j = 0; j < n; j++) {
        s->timesteps[j] = (float)b->grid[j];
        s->sigmas[j] = (float)b->sig[j];
    }
    s->sigmas[n] = 0.0f;
    s->total = n;
    s->init_sigma = 1.0f;
    return 0;
}

/* DDIM: the spaced integer grid as is. PNDM with skip_prk_steps (PLMS): the
 * same grid with its second entry repeated, for the Heun-like second step. */
static int ddim_pndm_schedule(diffuse_sampler_state *s, schedule_build *b, char *err)
{
    int n = spaced_grid(s->spacing, s->num_train, s->steps, b->cfg->steps_offset, false, b->grid,
                        b->cap);
    if (n < 1)
        return diffuse_fail(err, "sampler: empty timestep schedule for %d steps", s->steps);
    int k = 0;
    for (int j = 0; j < n; j++) {
        s->timesteps[k++] = (float)b->grid[j];
        if (s->kind == DIFFUSE_SAMPLER_PNDM && j == 1)
            s->timesteps[k++] = (float)b->grid[j];
    }
    s->total = k;
    s->init_sigma = 1.0f;
    return 0;
}

/* LCM: `steps` evenly spaced indices into the distillation schedule
 * (k, 2k, ..., original_steps * k) - 1 with k = N // original_steps. */
static int lcm_schedule(diffuse_sampler_state *s, schedule_build *b, char *err)
{
    int orig = b->cfg->original_inference_steps, k = s->num_train / orig;
    if (s->steps > orig)
        return diffuse_fail(
            err, "sampler: lcm takes at most original_inference_steps = %d steps, not %d", orig,
            s->steps);
    for (int j = 0; j < s->steps; j++) {
        int q = (int)floor(np_linspace(0.0, orig, s->steps, false, j));
        s->timesteps[j] = (float)((orig - q) * k - 1);
    }
    s->total = s->steps;
    s->init_sigma = 1.0f;
    return 0;
}

/* ------------------------------------------------------------------ create */

static bool uses_sigmas(diffuse_sampler kind)
{
    return kind == DIFFUSE_SAMPLER_EULER || kind == DIFFUSE_SAMPLER_EULER_A ||
           kind == DIFFUSE_SAMPLER_DPMPP_2M;
}

static int check_config(const diffuse_schedule_config *c, char *err)
{
    int n = c->num_train_timesteps;
    if (n < 2 || n > MAX_TRAIN_TIMESTEPS)
        return diffuse_fail(err, "sampler: num_train_timesteps %d outside [2, %d]", n,
                            MAX_TRAIN_TIMESTEPS);
    if (!(c->beta_start > 0 && c->beta_start <= c->beta_end && c->beta_end < 1))
        return diffuse_fail(err, "sampler: betas %g..%g must satisfy 0 < start <= end < 1",
                            (double)c->beta_start, (double)c->beta_end);
    if (c->beta_schedule != DIFFUSE_BETAS_SCALED_LINEAR && c->beta_schedule != DIFFUSE_BETAS_LINEAR)
        return diffuse_fail(err, "sampler: unknown beta schedule %d", (int)c->beta_schedule);
    if (c->steps_offset < 0 || c->steps_offset >= n)
        return diffuse_fail(err, "sampler: steps_offset %d outside [0, %d)", c->steps_offset, n);
    if ((int)c->prediction < 0 || c->prediction > DIFFUSE_PREDICTION_V)
        return diffuse_fail(err, "sampler: unknown prediction type %d", (int)c->prediction);
    if ((int)c->spacing < 0 || (int)c->spacing >= SPACING_COUNT)
        return diffuse_fail(err, "sampler: unknown timestep spacing %d", (int)c->spacing);
    if (c->original_inference_steps < 1 || c->original_inference_steps > n)
        return diffuse_fail(err, "sampler: original_inference_steps %d outside [1, %d]",
                            c->original_inference_steps, n);
    if (!(c->timestep_scaling > 0 && isfinite(c->timestep_scaling)))
        return diffuse_fail(err, "sampler: timestep_scaling %g must be positive",
                            (double)c->timestep_scaling);
    return 0;
}

static int check_request(diffuse_sampler kind, bool karras, const diffuse_schedule_config *c,
                         int steps, float strength, size_t latent_n, char *err)
{
    if ((int)kind < 0 || kind >= DIFFUSE_SAMPLER_COUNT)
        return diffuse_fail(err, "sampler: unknown sampler %d", (int)kind);
    if (karras && !uses_sigmas(kind))
        return diffuse_fail(err, "sampler: %s has no Karras sigmas (euler, euler_a, dpmpp_2m do)",
                            sampler_names[kind]);
    if (check_config(c, err))
        return -1;
    int max_steps =
        c->num_train_timesteps < DIFFUSE_MAX_STEPS ? c->num_train_timesteps : DIFFUSE_MAX_STEPS;
    if (steps < 1 || steps > max_steps)
        return diffuse_fail(err, "sampler: %d steps outside [1, %d] (num_train_timesteps %d)",
                            steps, max_steps, c->num_train_timesteps);
    if (!(strength > 0 && strength <= 1))
        return diffuse_fail(err, "sampler: strength %g outside (0, 1]", (double)strength);
    if (latent_n == 0 || latent_n > SIZE_MAX / (8 * sizeof(float))) /* 5 buffers at most */
        return diffuse_fail(err, "sampler: latent size %zu out of range", latent_n);
    return 0;
}

/* The class defaults of diffusers where the config names no spacing. */
static diffuse_spacing resolve_spacing(diffuse_sampler kind, diffuse_spacing sp)
{
    if (sp != DIFFUSE_SPACING_DEFAULT)
        return sp;
    return uses_sigmas(kind) ? DIFFUSE_SPACING_LINSPACE : DIFFUSE_SPACING_LEADING;
}

/* get_timesteps of the img2img and inpaint pipelines: keep the last
 * min(int(steps * strength), steps) steps. */
static void apply_strength(diffuse_sampler_state *s, float strength)
{
    int init = (int)(s->steps * decimal_double(strength));
    if (init > s->steps)
        init = s->steps;
    int t_start = s->steps - init > 0 ? s->steps - init : 0;
    s->begin = t_start < s->total ? t_start : s->total;
    s->count = s->total - s->begin;
}

/* Integer schedules index alphas_cumprod: every timestep a run reaches must be
 * a training timestep (diffusers raises IndexError otherwise). */
static int check_timesteps(const diffuse_sampler_state *s, char *err)
{
    if (uses_sigmas(s->kind))
        return 0;
    for (int k = s->begin; k < s->total; k++) {
        float t = s->timesteps[k];
        /* PNDM's second step evaluates at the next timestep and steps from t + ratio */
        if (s->kind == DIFFUSE_SAMPLER_PNDM && k == s->begin + 1)
            t += (float)s->ratio;
        if (t < 0 || t > s->num_train - 1)
            return diffuse_fail(err,
                                "sampler: %s with %d steps reaches timestep %g outside [0, %d]",
                                sampler_names[s->kind], s->steps, (double)t, s->num_train - 1);
    }
    return 0;
}

static int build_schedule(diffuse_sampler_state *s, const diffuse_schedule_config *c, bool karras,
                          char *err)
{
    int n = s->num_train, cap = s->steps + 2;
    schedule_build b = {.cfg = c, .karras = karras, .cap = cap};
    b.train_sigmas = malloc(2 * (size_t)n * sizeof(float));
    b.grid = malloc(2 * (size_t)cap * sizeof(double));
    if (!b.train_sigmas || !b.grid) {
        free(b.train_sigmas);
        free(b.grid);
        return diffuse_fail(err, "sampler: out of memory");
    }
    b.log_sigmas = b.train_sigmas + n;
    b.sig = b.grid + cap;
    for (int t = 0; t < n; t++) {
        b.train_sigmas[t] = train_sigma(s->alphas_cumprod[t]);
        b.log_sigmas[t] = (float)log((double)b.train_sigmas[t]);
    }
    int rc;
    if (s->kind == DIFFUSE_SAMPLER_EULER || s->kind == DIFFUSE_SAMPLER_EULER_A)
        rc = euler_schedule(s, &b, err);
    else if (s->kind == DIFFUSE_SAMPLER_DPMPP_2M)
        rc = dpm_schedule(s, &b, err);
    else if (s->kind == DIFFUSE_SAMPLER_LCM)
        rc = lcm_schedule(s, &b, err);
    else
        rc = ddim_pndm_schedule(s, &b, err);
    free(b.train_sigmas);
    free(b.grid);
    return rc;
}

/* Latent-sized buffers: euler_a/lcm a noise draw, dpmpp_2m two data
 * predictions, pndm four model outputs and the first sample. */
static int alloc_buffers(diffuse_sampler_state *s, char *err)
{
    int nbuf = 0;
    if (s->kind == DIFFUSE_SAMPLER_EULER_A || s->kind == DIFFUSE_SAMPLER_LCM)
        nbuf = 1;
    else if (s->kind == DIFFUSE_SAMPLER_DPMPP_2M)
        nbuf = 2;
    else if (s->kind == DIFFUSE_SAMPLER_PNDM)
        nbuf = 5;
    if (nbuf == 0)
        return 0;
    s->block = calloc((size_t)nbuf * s->latent_n, sizeof(float));
    if (!s->block)
        return diffuse_fail(err, "sampler: out of memory for %d latent buffers", nbuf);
    float *p = s->block;
    if (nbuf == 1)
        s->noise = p;
    if (nbuf == 2) {
        s->x0_prev = p;
        s->x0_cur = p + s->latent_n;
    }
    for (int j = 0; nbuf == 5 && j < 4; j++)
        s->ets[j] = p + (size_t)j * s->latent_n;
    if (nbuf == 5)
        s->cur_sample = p + 4 * s->latent_n;
    return 0;
}

static int init_state(diffuse_sampler_state *s, diffuse_sampler kind, bool karras,
                      const diffuse_schedule_config *c, int steps, float strength, char *err)
{
    s->kind = kind;
    s->v_pred = c->prediction == DIFFUSE_PREDICTION_V;
    s->spacing = resolve_spacing(kind, c->spacing);
    s->num_train = c->num_train_timesteps;
    s->steps = steps;
    s->ratio = s->num_train / steps;
    s->timestep_scaling = c->timestep_scaling;
    s->alphas_cumprod = malloc((size_t)s->num_train * sizeof(float));
    s->timesteps = malloc((size_t)(steps + 2) * sizeof(float));
    if (uses_sigmas(kind))
        s->sigmas = malloc((size_t)(steps + 2) * sizeof(float));
    if (!s->alphas_cumprod || !s->timesteps || (uses_sigmas(kind) && !s->sigmas))
        return diffuse_fail(err, "sampler: out of memory");
    make_alphas_cumprod(c, s->alphas_cumprod);
    /* a schedule whose signal runs out (float32 alphas_cumprod reaching 0, as
     * scaled_linear betas over ~70,000 steps do) has no finite noise level */
    for (int t = 0; t < s->num_train; t++)
        if (!(s->alphas_cumprod[t] > 0.0f) || !isfinite(s->alphas_cumprod[t]))
            return diffuse_fail(err,
                                "sampler: the noise schedule has no signal left at step %d "
                                "of %d (alphas_cumprod %g): num_train_timesteps or the betas "
                                "in scheduler_config.json are not a usable schedule",
                                t, s->num_train, s->alphas_cumprod[t]);
    s->final_alpha = c->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    if (build_schedule(s, c, karras, err))
        return -1;
    apply_strength(s, strength);
    if (check_timesteps(s, err))
        return -1;
    return alloc_buffers(s, err);
}

int diffuse_sampler_create(diffuse_sampler kind, bool karras, const diffuse_schedule_config *cfg,
                           int steps, float strength, size_t latent_n, diffuse_sampler_state **out,
                           char *err)
{
    if (!out)
        return diffuse_fail(err, "sampler: no output pointer");
    *out = NULL;
    diffuse_schedule_config def = diffuse_schedule_config_default();
    const diffuse_schedule_config *c = cfg ? cfg : &def;
    if (check_request(kind, karras, c, steps, strength, latent_n, err))
        return -1;
    diffuse_sampler_state *s = calloc(1, sizeof *s);
    if (!s)
        return diffuse_fail(err, "sampler: out of memory");
    s->latent_n = latent_n;
    if (init_state(s, kind, karras, c, steps, strength, err)) {
        diffuse_sampler_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void diffuse_sampler_free(diffuse_sampler_state *s)
{
    if (!s)
        return;
    free(s->alphas_cumprod);
    free(s->timesteps);
    free(s->sigmas);
    free(s->block);
    free(s);
}

/* ------------------------------------------------------------------ queries */

int diffuse_sampler_count(const diffuse_sampler_state *s)
{
    return s ? s->count : 0;
}

float diffuse_sampler_timestep(const diffuse_sampler_state *s, int i)
{
    if (!s || i < 0 || i >= s->count)
        return NAN;
    return s->timesteps[s->begin + i];
}

float diffuse_sampler_init_sigma(const diffuse_sampler_state *s)
{
    return s ? s->init_sigma : 1.0f;
}

/* ------------------------------------------------------------------ model input, add_noise */

/* Euler samplers give the UNet x / sqrt(sigma^2 + 1), the others x itself. */
void diffuse_sampler_scale_input(const diffuse_sampler_state *s, int i, const float *x, float *out)
{
    bool scale = s && i >= 0 && i < s->count &&
                 (s->kind == DIFFUSE_SAMPLER_EULER || s->kind == DIFFUSE_SAMPLER_EULER_A);
    if (!scale) {
        if (s && out != x)
            memmove(out, x, s->latent_n * sizeof(float));
        return;
    }
    float sigma = s->sigmas[s->begin + i];
    float denom = sqrtf(sigma * sigma + 1.0f);
    for (size_t j = 0; j < s->latent_n; j++)
        out[j] = x[j] / denom;
}

/* add_noise of each scheduler at schedule entry begin + i:
 *   Euler:             x0 + noise * sigma
 *   DPM-Solver:        alpha_t x0 + sigma_t noise,
 *                      alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t
 *   DDIM, LCM, PNDM:   sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (DDPM's) */
void diffuse_sampler_add_noise(const diffuse_sampler_state *s, int i, const float *x0,
                               const float *noise, float *out)
{
    if (!s)
        return;
    size_t n = s->latent_n;
    if (i < 0 || i >= s->count) {
        if (out != x0)
            memmove(out, x0, n * sizeof(float));
        return;
    }
    int k = s->begin + i;
    if (s->kind == DIFFUSE_SAMPLER_EULER || s->kind == DIFFUSE_SAMPLER_EULER_A) {
        float sigma = s->sigmas[k];
        for (size_t j = 0; j < n; j++)
            out[j] = x0[j] + noise[j] * sigma;
        return;
    }
    float a, b;
    if (s->kind == DIFFUSE_SAMPLER_DPMPP_2M) {
        float sigma = s->sigmas[k];
        a = 1.0f / sqrtf(sigma * sigma + 1.0f);
        b = sigma * a;
    } else {
        float abar = s->alphas_cumprod[(int)s->timesteps[k]];
        a = sqrtf(abar);
        b = sqrtf(1.0f - abar);
    }
    for (size_t j = 0; j < n; j++)
        out[j] = a * x0[j] + b * noise[j];
}

/* ------------------------------------------------------------------ steps */

/* Euler, Karras et al. 2022 (EDM) Algorithm 2 without churn (gamma = 0):
 * x0 = D(x; sigma), d = (x - x0) / sigma, x' = x + d (sigma_next - sigma).
 * x0 = x - sigma eps, or with v-prediction x0 = c_out v + x / (sigma^2 + 1). */
static void step_euler(const diffuse_sampler_state *s, int k, const float *m, float *x)
{
    float sigma = s->sigmas[k], dt = s->sigmas[k + 1] - sigma;
    float c_out = -sigma / sqrtf(sigma * sigma + 1.0f), c_div = sigma * sigma + 1.0f;
    for (size_t j = 0; j < s->latent_n; j++) {
        float x0 = s->v_pred ? m[j] * c_out + x[j] / c_div : x[j] - sigma * m[j];
        float d = (x[j] - x0) / sigma;
        x[j] = x[j] + d * dt;
    }
}

/* Ancestral Euler (k-diffusion's sample_euler_ancestral, the ancestral split of
 * Song et al. 2021's reverse SDE step): go down to sigma_down deterministically,
 * then add fresh noise of deviation sigma_up, where
 * sigma_up = sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2) and
 * sigma_down = sqrt(sigma_to^2 - sigma_up^2). One draw every step. */
static void step_euler_a(const diffuse_sampler_state *s, int k, const float *m, float *x)
{
    float sigma = s->sigmas[k], to = s->sigmas[k + 1];
    float up = sqrtf(to * to * (sigma * sigma - to * to) / (sigma * sigma));
    float down = sqrtf(to * to - up * up), dt = down - sigma;
    float c_out = -sigma / sqrtf(sigma * sigma + 1.0f), c_div = sigma * sigma + 1.0f;
    for (size_t j = 0; j < s->latent_n; j++) {
        float x0 = s->v_pred ? m[j] * c_out + x[j] / c_div : x[j] - sigma * m[j];
        float d = (x[j] - x0) / sigma;
        float prev = x[j] + d * dt;
        x[j] = prev + s->noise[j] * up;
    }
}

/* alphas_cumprod at a timestep, the final alpha before t = 0. */
static float abar_at(const diffuse_sampler_state *s, int t)
{
    return t >= 0 ? s->alphas_cumprod[t] : s->final_alpha;
}

/* DDIM, Song et al. 2020 eq. (12) with sigma_t = 0 (eta = 0):
 * x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, x0 = (x - sqrt(1 - a) eps) / sqrt(a).
 * The previous timestep is t - N // steps whatever the spacing, as in diffusers. */
static void step_ddim(const diffuse_sampler_state *s, int k, const float *m, float *x)
{
    int t = (int)s->timesteps[k];
    float a = s->alphas_cumprod[t], a_prev = abar_at(s, t - s->ratio);
    float b = 1.0f - a;
    float sa = sqrtf(a), sb = sqrtf(b), sa_prev = sqrtf(a_prev);
    float dir = sqrtf(1.0f - a_prev); /* minus std_dev_t^2 = (eta sqrt(variance))^2 = 0 */
    for (size_t j = 0; j < s->latent_n; j++) {
        float x0, eps;
        if (s->v_pred) {
            x0 = sa * x[j] - sb * m[j];
            eps = sa * m[j] + sb * x[j];
        } else {
            x0 = (x[j] - sb * m[j]) / sa;
            eps = m[j];
        }
        x[j] = sa_prev * x0 + dir * eps;
    }
}

/* DPM-Solver's VP conversions: alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t,
 * lambda = log(alpha_t) - log(sigma_t) (the half log-SNR). */
typedef struct vp {
    float alpha, sigma, lambda;
} vp;

static vp vp_at(float sigma)
{
    vp v;
    v.alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    v.sigma = sigma * v.alpha;
    v.lambda = logf(v.alpha) - logf(v.sigma);
    return v;
}

/* DPM-Solver++(2M), Lu et al. 2022, Algorithm 2 with the data prediction
 * x0 = (x - sigma_t eps) / alpha_t (v: alpha_t x - sigma_t v). The first step of
 * a run and the last step of the schedule (final sigma 0) are first order,
 * x' = (sigma_t / sigma_s) x - alpha_t (e^-h - 1) x0, which equals DDIM; the
 * others add the midpoint correction -0.5 alpha_t (e^-h - 1) D1 with
 * D1 = (x0 - x0_prev) / r0, r0 = h_prev / h. */
static void step_dpmpp_2m(diffuse_sampler_state *s, int k, const float *m, float *x)
{
    vp cur = vp_at(s->sigmas[k]), next = vp_at(s->sigmas[k + 1]);
    float *x0 = s->x0_cur;
    for (size_t j = 0; j < s->latent_n; j++)
        x0[j] =
            s->v_pred ? cur.alpha * x[j] - cur.sigma * m[j] : (x[j] - cur.sigma * m[j]) / cur.alpha;
    float h = next.lambda - cur.lambda;
    float ratio = next.sigma / cur.sigma, c = next.alpha * (expf(-h) - 1.0f);
    if (s->taken == 0 || k == s->total - 1) {
        for (size_t j = 0; j < s->latent_n; j++)
            x[j] = ratio * x[j] - c * x0[j];
    } else {
        vp prev = vp_at(s->sigmas[k - 1]);
        float h0 = cur.lambda - prev.lambda, r0 = h0 / h;
        float inv_r0 = 1.0f / r0, half_c = 0.5f * c;
        const float *x0_prev = s->x0_prev;
        for (size_t j = 0; j < s->latent_n; j++) {
            float d1 = inv_r0 * (x0[j] - x0_prev[j]);
            x[j] = ratio * x[j] - c * x0[j] - half_c * d1;
        }
    }
    s->x0_cur = s->x0_prev;
    s->x0_prev = x0;
}

/* LCM, Luo et al. 2023, Algorithm 1 (multistep latent consistency sampling):
 * the consistency function f(x, t) = c_skip x + c_out x0 with the boundary
 * scalings of consistency models at t' = t * timestep_scaling, sigma_data = 0.5,
 * c_skip = 0.25 / (t'^2 + 0.25), c_out = t' / sqrt(t'^2 + 0.25); then, except
 * on the last step, noise the result back to the next timestep (one draw). */
static void step_lcm(const diffuse_sampler_state *s, int k, const float *m, float *x, bool last)
{
    int t = (int)s->timesteps[k];
    int t_prev = k + 1 < s->total ? (int)s->timesteps[k + 1] : t;
    float a = s->alphas_cumprod[t], a_prev = abar_at(s, t_prev);
    float sa = sqrtf(a), sb = sqrtf(1.0f - a);
    float sa_prev = sqrtf(a_prev), sb_prev = sqrtf(1.0f - a_prev);
    float st = (float)t * s->timestep_scaling;
    float c_skip = 0.25f / (st * st + 0.25f), c_out = st / sqrtf(st * st + 0.25f);
    for (size_t j = 0; j < s->latent_n; j++) {
        float x0 = s->v_pred ? sa * x[j] - sb * m[j] : (x[j] - sb * m[j]) / sa;
        float denoised = c_out * x0 + c_skip * x[j];
        x[j] = last ? denoised : sa_prev * denoised + sb_prev * s->noise[j];
    }
}

/* PLMS noise estimate at element j, Liu et al. 2022 eq. (12): order 0 the new
 * output, order 1 its mean with the first one (the second, Heun-like step),
 * then the Adams-Bashforth combinations of the last 2, 3 and 4 outputs. */
static inline float plms_estimate(const diffuse_sampler_state *s, int order, const float *m,
                                  size_t j)
{
    int n = s->n_ets;
    switch (order) {
    case 0:
        return m[j];
    case 1:
        return (m[j] + s->ets[n - 1][j]) / 2;
    case 2:
        return (3 * s->ets[n - 1][j] - s->ets[n - 2][j]) / 2;
    case 3:
        return (23 * s->ets[n - 1][j] - 16 * s->ets[n - 2][j] + 5 * s->ets[n - 3][j]) / 12;
    default:
        return (float)(1.0 / 24.0) * (55 * s->ets[n - 1][j] - 59 * s->ets[n - 2][j] +
                                      37 * s->ets[n - 3][j] - 9 * s->ets[n - 4][j]);
    }
}

/* PNDM's transfer, Liu et al. 2022 eq. (9): from `sample` at t with noise
 * estimate e to t_prev,
 *   x' = sqrt(a'/a) x - (a' - a) e / (a sqrt(1 - a') + sqrt(a (1 - a) a')).
 * v-prediction turns the combined estimate into noise first, against `sample`. */
static void pndm_transfer(const diffuse_sampler_state *s, int t, int t_prev, int order,
                          const float *m, const float *sample, float *out)
{
    float a = s->alphas_cumprod[t], a_prev = abar_at(s, t_prev);
    float b = 1.0f - a, b_prev = 1.0f - a_prev;
    float sa = sqrtf(a), sb = sqrtf(b);
    float coeff = sqrtf(a_prev / a);
    float denom = a * sqrtf(b_prev) + sqrtf(a * b * a_prev);
    float diff = a_prev - a;
    for (size_t j = 0; j < s->latent_n; j++) {
        float e = plms_estimate(s, order, m, j);
        if (s->v_pred)
            e = sa * e + sb * sample[j];
        out[j] = coeff * sample[j] - diff * e / denom;
    }
}

/* Keeps the last three model outputs and appends m (diffusers' ets list). */
static void pndm_push(diffuse_sampler_state *s, const float *m)
{
    if (s->n_ets == 4) {
        float *oldest = s->ets[0];
        memmove(s->ets, s->ets + 1, 3 * sizeof s->ets[0]);
        s->ets[3] = oldest;
        s->n_ets = 3;
    }
    memcpy(s->ets[s->n_ets++], m, s->latent_n * sizeof(float));
}

/* PLMS with skip_prk_steps (diffusers' step_plms). Counter c = steps taken:
 * c = 0 steps with the first output alone and keeps the sample; c = 1 is given
 * the repeated timestep and redoes that first step from the kept sample with
 * the mean of both outputs; later steps use up to four past outputs. */
static void step_pndm(diffuse_sampler_state *s, int k, const float *m, float *x)
{
    int c = s->taken, t = (int)s->timesteps[k], t_prev = t - s->ratio;
    if (c != 1) {
        pndm_push(s, m);
    } else {
        t_prev = t;
        t = t + s->ratio;
    }
    if (s->n_ets == 1 && c == 0) {
        memcpy(s->cur_sample, x, s->latent_n * sizeof(float));
        pndm_transfer(s, t, t_prev, 0, m, x, x);
    } else if (s->n_ets == 1 && c == 1) {
        pndm_transfer(s, t, t_prev, 1, m, s->cur_sample, x);
    } else {
        pndm_transfer(s, t, t_prev, s->n_ets, m, x, x);
    }
}

/* Model evaluation i of a run: i = 0 starts a new run (clears the multistep
 * history); later evaluations must come in order. */
int diffuse_sampler_step(diffuse_sampler_state *s, int i, const float *model_out, float *latents,
                         diffuse_noise *noise, char *err)
{
    if (!s || !model_out || !latents)
        return diffuse_fail(err, "sampler: step without state or buffers");
    if (i < 0 || i >= s->count)
        return diffuse_fail(err, "sampler: step %d outside [0, %d)", i, s->count);
    if (i == 0) {
        s->taken = 0;
        s->n_ets = 0;
    } else if (i != s->taken) {
        return diffuse_fail(err, "sampler: step %d after %d steps; steps must come in order", i,
                            s->taken);
    }
    int k = s->begin + i;
    bool last = k == s->steps - 1; /* LCM: num_inference_steps - 1 */
    bool draws = s->kind == DIFFUSE_SAMPLER_EULER_A || (s->kind == DIFFUSE_SAMPLER_LCM && !last);
    if (draws) {
        if (!noise || !noise->draw)
            return diffuse_fail(err, "sampler: %s needs a noise source", sampler_names[s->kind]);
        if (noise->draw(noise->self, s->noise, s->latent_n, "step", err))
            return -1;
    }
    switch (s->kind) {
    case DIFFUSE_SAMPLER_EULER:
        step_euler(s, k, model_out, latents);
        break;
    case DIFFUSE_SAMPLER_EULER_A:
        step_euler_a(s, k, model_out, latents);
        break;
    case DIFFUSE_SAMPLER_DDIM:
        step_ddim(s, k, model_out, latents);
        break;
    case DIFFUSE_SAMPLER_DPMPP_2M:
        step_dpmpp_2m(s, k, model_out, latents);
        break;
    case DIFFUSE_SAMPLER_LCM:
        step_lcm(s, k, model_out, latents, last);
        break;
    default:
        step_pndm(s, k, model_out, latents);
        break;
    }
    s->taken = i + 1;
    return 0;
}
