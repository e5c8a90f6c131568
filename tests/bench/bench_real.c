/* bench_real.c: `make bench-sd15` and `make bench-sdxl`. Stable Diffusion at
 * real scale, on a random-weight checkpoint with every tensor name and shape of
 * SD 1.5 or SDXL base (tests/bench/make_sd15.py, make_sdxl.py write them once
 * into a cache folder):
 *
 *     bench_real MODEL.safetensors VOCAB [SIZE...]
 *
 * First this machine's sgemm peak (OpenBLAS, 1536^3, best of 5), then per
 * size: model load, the text encoder (one prompt), one batch-1 UNet pass
 * (seconds, dense-equivalent GFLOP/s and its ratio to the peak), VAE encode and
 * decode, each the median of `reps` runs with the peak resident set of the
 * phase; last, one whole generate call (1 step, guidance 7) with its own peak
 * and the peak the memory check predicted. Dense-equivalent: every
 * convolution and matrix product counted as plain multiply-adds, whatever
 * algorithm ran (the engine counts them as it runs). BENCH_REPS sets the
 * runs per figure (3); BENCH_UNET_ONLY stops after the UNet (for profiling). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "bench.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double sgemm_peak(void)
{
    const int n = 1536;
    float *a = random_floats((size_t)n * n, 1), *b = random_floats((size_t)n * n, 2);
    float *c = malloc(sizeof(float) * n * n);
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = diffuse_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
        double dt = diffuse_now() - t0;
        best = dt < best ? dt : best;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * n / best / 1e9;
}

#define MIB(b) ((double)(b) / 1048576.0)

/* One phase: median seconds of reps runs, its flops, and the resident peak. */
typedef struct phase {
    double s, gflop;
    size_t peak;
} phase;

static void print_phase(const char *name, const phase *p, double peak_gflops)
{
    printf("  %-14s %8.2f s", name, p->s);
    if (p->gflop > 0)
        printf("  %7.1f GFLOP/s  %5.3f of sgemm peak", p->gflop / p->s,
               p->gflop / p->s / peak_gflops);
    else
        printf("  %38s", "");
    printf("  peak RSS %6.0f MiB\n", MIB(p->peak));
}

/* The VAE decode in bands (BENCH_BANDS=1; =plans: the plans alone): every tiling's plan against the
 * whole decode's, then a run of the fastest that needs at most 0.8 of the
 * whole decode's memory and of the one that needs the least, each against the
 * whole image (`whole`, just decoded from `latent`). */
static int bench_bands(diffuse_model *m, int size, const float *latent, const float *whole,
                       double peak)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_vae_tiling t[DIFFUSE_VAE_TILINGS];
    diffuse_plan p[DIFFUSE_VAE_TILINGS];
    const diffuse_plan w = diffuse_vae_decode_plan(m->vae, size, size, (diffuse_vae_tiling){0});
    const int n = diffuse_vae_tilings(m->vae, size, size, 0, t, p, DIFFUSE_VAE_TILINGS);
    int fast = -1, least = -1;
    printf("  vae decode in bands (plans): whole image %.0f MiB of work memory, %.0f GFLOP\n",
           MIB(sizeof(float) * w.floats), w.flops * 1e-9);
    for (int i = 0; i < n; i++) {
        printf("    bands of %4d rows, keeping levels %#x: %6.0f MiB (%.3f), %5.2fx the flops\n",
               t[i].rows, t[i].keep, MIB(sizeof(float) * p[i].floats),
               (double)p[i].floats / w.floats, p[i].flops / w.flops);
        if (fast < 0 && 5 * p[i].floats <= 4 * w.floats)
            fast = i;
        if (least < 0 || p[i].floats < p[least].floats)
            least = i;
    }
    if (!latent) /* plans only */
        return 0;
    const int pick[2] = {fast, getenv("BENCH_BANDS_LEAST") ? least : -1};
    const size_t px = (size_t)3 * size * size;
    float *image = malloc(sizeof(float) * px);
    for (int k = 0; k < 2 && image; k++) {
        const int i = pick[k];
        diffuse_arena a;
        if (i < 0 || (k && i == fast) || diffuse_arena_init(&a, p[i].floats, err))
            continue;
        diffuse_rss_peak_reset();
        double t0 = diffuse_now();
        int rc = diffuse_vae_decode_tiled(m->vae, image, latent, size, size, t[i], &a, NULL, NULL,
                                          NULL, err);
        phase ph = {diffuse_now() - t0, a.flops * 1e-9, diffuse_rss_peak()};
        diffuse_arena_free(&a);
        diffuse_weights_release(m->weights, "vae.");
        if (rc) {
            free(image);
            return -1;
        }
        double d = 0, mx = 0;
        for (size_t j = 0; j < px; j++) {
            d = fabs(image[j] - whole[j]) > d ? fabs(image[j] - whole[j]) : d;
            mx = fabs(whole[j]) > mx ? fabs(whole[j]) : mx;
        }
        char name[64];
        snprintf(name, sizeof name, "bands %d/%#x", t[i].rows, t[i].keep);
        print_phase(name, &ph, peak);
        printf("  %-14s max |difference| to the whole decode %.2e of its max %.2f\n", "", d, mx);
    }
    free(image);
    return 0;
}

static int bench_size(diffuse_model *m, int size, int reps, double peak)
{
    char err[DIFFUSE_ERROR_SIZE];
    const int f = 1 << (m->vae_cfg.levels - 1), h = size / f, w = size / f;
    const int lc = m->vae_cfg.latent_channels, ctx = diffuse_cond_context_dim(m);
    const int pd = diffuse_cond_pooled_dim(m);
    diffuse_arena a = {0};
    size_t need = diffuse_cond_workspace(m),
           nu = diffuse_unet_workspace(m->unet, 1, h, w, DIFFUSE_MAX_TOKENS);
    const size_t nv = diffuse_vae_workspace(m->vae, size, size);
    need = need > nu ? need : nu;
    need = need > nv ? need : nv;
    float *latent = random_floats((size_t)lc * h * w, 3), *out = malloc(sizeof(float) * lc * h * w);
    float *image = malloc(sizeof(float) * 3 * size * size),
          *moments = malloc(sizeof(float) * 2 * lc * h * w);
    float *context = malloc(sizeof(float) * DIFFUSE_MAX_TOKENS * ctx);
    float *pooled = malloc(sizeof(float) * (pd + 1)), time_ids[DIFFUSE_TIME_IDS];
    diffuse_cond_time_ids(&(diffuse_size_cond){0}, size, size, time_ids);
    int rc = -1;
    if (diffuse_arena_init(&a, need, err)) {
        printf("  %dx%d: %s\n", size, size, err);
        goto done;
    }
    printf("%dx%d (latent %dx%d), median of %d:\n", size, size, w, h, reps);
    const char *bands = getenv("BENCH_BANDS");
    if (bands && !strcmp(bands, "plans")) { /* only what the tilings would take */
        rc = bench_bands(m, size, NULL, NULL, peak);
        goto done;
    }
    double t[16];
    phase p;
    /* text encoder */
    diffuse_weights_release(m->weights, "");
    diffuse_rss_peak_reset();
    for (int r = 0; r < reps; r++) {
        double t0 = diffuse_now();
        if (diffuse_cond_encode(m, "a photograph of an astronaut riding a horse", 0, context,
                                pd ? pooled : NULL, &a, err))
            goto fail;
        t[r] = diffuse_now() - t0;
    }
    p = (phase){median(t, reps), 0, diffuse_rss_peak()};
    print_phase("text encoder", &p, peak);
    diffuse_cond_release(m);
    /* UNet: one batch-1 pass */
    const diffuse_unet_cond cond = {.context = context,
                                    .tokens = DIFFUSE_MAX_TOKENS,
                                    .text_embeds = pd ? pooled : NULL,
                                    .time_ids = pd ? time_ids : NULL};
    diffuse_rss_peak_reset();
    float timestep = 500.0f;
    for (int r = 0; r < reps; r++) {
        double t0 = diffuse_now(), f0 = a.flops;
        if (diffuse_unet_forward(m->unet, out, latent, &timestep, &cond, 1, h, w, &a, NULL, err))
            goto fail;
        t[r] = diffuse_now() - t0;
        p.gflop = (a.flops - f0) * 1e-9;
    }
    p.s = median(t, reps);
    p.peak = diffuse_rss_peak();
    print_phase("unet pass", &p, peak);
    diffuse_weights_release(m->weights, "unet.");
    if (getenv("BENCH_UNET_ONLY")) { /* for profiling the UNet alone */
        rc = 0;
        goto done;
    }
    /* VAE */
    for (int dir = 0; dir < 2; dir++) {
        diffuse_rss_peak_reset();
        for (int r = 0; r < reps; r++) {
            double t0 = diffuse_now(), f0 = a.flops;
            if (dir ? diffuse_vae_decode(m->vae, image, latent, size, size, &a, NULL, err)
                    : diffuse_vae_encode(m->vae, moments, image, size, size, &a, NULL, err))
                goto fail;
            t[r] = diffuse_now() - t0;
            p.gflop = (a.flops - f0) * 1e-9;
        }
        p.s = median(t, reps);
        p.peak = diffuse_rss_peak();
        print_phase(dir ? "vae decode" : "vae encode", &p, peak);
        diffuse_weights_release(m->weights, "vae.");
    }
    diffuse_arena_free(&a);
    if (getenv("BENCH_BANDS") && bench_bands(m, size, latent, image, peak))
        goto fail;
    /* the whole pipeline once, through the public entry point */
    diffuse_request req = diffuse_request_default();
    diffuse_stats st;
    diffuse_image img;
    req.prompt = "a photograph of an astronaut riding a horse";
    req.width = req.height = size;
    req.steps = 1;
    req.guidance = 7.0f;
    req.seed = 1;
    req.stats = &st;
    if (diffuse_generate(m, &req, &img, err, sizeof err) != DIFFUSE_OK)
        goto fail;
    diffuse_image_free(&img);
    printf("  generate, 1 step, guidance 7: text %.2f s, unet %.2f s (batch 2), decode %.2f s; "
           "peak RSS %.0f MiB, predicted %.0f MiB (%+.1f%%)\n",
           st.text_s, st.unet_s, st.vae_decode_s, MIB(st.peak_rss), MIB(st.predicted_peak),
           100.0 * ((double)st.predicted_peak / (double)st.peak_rss - 1.0));
    rc = 0;
    goto done;
fail:
    printf("  failed: %s\n", err);
done:
    diffuse_arena_free(&a);
    free(latent);
    free(out);
    free(image);
    free(moments);
    free(context);
    free(pooled);
    return rc;
}

int main(int argc, char **argv)
{
    diffuse_process_init(argv); /* as the CLI and the plug-ins run */
    if (argc < 3) {
        fprintf(stderr, "usage: bench_real MODEL.safetensors VOCAB [SIZE...]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* lines as they come, also into a file */
    /* BENCH_CPU=avx2: the engine's AVX2 kernels on an AVX-512 machine; with
     * ONEDNN_MAX_CPU_ISA=AVX2 and OPENBLAS_CORETYPE=Haswell, an AVX2 machine's
     * code (not its clocks or caches) */
    if (getenv("BENCH_CPU") && strcmp(getenv("BENCH_CPU"), "avx2") == 0)
        diffuse_cpu_cap(DIFFUSE_CPU_AVX2);
    const char *reps_env = getenv("BENCH_REPS");
    const int reps = reps_env && atoi(reps_env) > 0 && atoi(reps_env) <= 16 ? atoi(reps_env) : 3;
    openblas_set_num_threads(diffuse_cpu_count()); /* OpenBLAS's own threads for the peak */
    const int blas_threads = openblas_get_num_threads();
    double peak = sgemm_peak();
    diffuse_pool_set_threads(0); /* the engine's pool from here on */
    printf("sgemm peak (1536^3, %d OpenBLAS threads, best of 5): %.1f GFLOP/s; %d engine threads; "
           "vector path %s\n",
           blas_threads, peak, diffuse_pool_threads(),
           (const char *[]){"base", "avx2", "avx512"}[diffuse_cpu_path()]);
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_load_params lp = diffuse_load_params_default();
    lp.vocab_path = argv[2];
    double t0 = diffuse_now();
    diffuse_model *m = diffuse_model_load(argv[1], &lp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "bench_real: %s\n", err);
        return 1;
    }
    printf("load %s: %.2f s, resident after load %.0f MiB\n", argv[1], diffuse_now() - t0,
           MIB(diffuse_rss_now()));
    int rc = 0;
    for (int i = 3; i < argc; i++)
        rc |= bench_size(m, atoi(argv[i]), reps, peak);
    if (argc == 3)
        rc |= bench_size(m, 512, reps, peak);
    diffuse_model_free(m);
    return rc ? 1 : 0;
}
