/* bench.c: `make bench`. Measures this machine's sgemm peak, then the engine's
 * kernels at Stable Diffusion 1.5's level-0 shapes (64x64 latents, 320
 * channels, 8 heads of 40) as a fraction of that peak, then one whole 512x512
 * run of the reference model with its wall time and peak memory, then the
 * TAESD decoder (the reference's real-size random weights) on a 64x64x4
 * latent to a 512x512 image. `bench taesd [reps]` runs only the last. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <cblas.h>

#include "bench.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process (every thread), user and system. */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* Best of `reps` runs of fn, in seconds. */
#define BEST_OF(reps, best, body)                                                                  \
    do {                                                                                           \
        best = 1e30;                                                                               \
        for (int r_ = 0; r_ < (reps); r_++) {                                                      \
            double t0_ = now();                                                                    \
            body;                                                                                  \
            double dt_ = now() - t0_;                                                              \
            best = dt_ < best ? dt_ : best;                                                        \
        }                                                                                          \
    } while (0)

static double sgemm_peak(void)
{
    const int n = 1536;
    float *a = random_floats((size_t)n * n, 1), *b = random_floats((size_t)n * n, 2);
    float *c = malloc(sizeof(float) * n * n);
    double best;
    BEST_OF(5, best,
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                        c, n));
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * n / best / 1e9;
}

static void report(const char *what, double flops, double seconds, double peak)
{
    double g = flops / seconds / 1e9;
    printf("%-44s %8.2f ms %8.1f GFLOP/s %5.1f%% of sgemm peak\n", what, seconds * 1e3, g,
           100.0 * g / peak);
}

static void bench_kernels(double peak)
{
    const int hw = 64 * 64, c = 320, heads = 8, dh = 40, t = 77;
    float *x = random_floats((size_t)c * hw, 3), *w = random_floats((size_t)c * c * 9, 4);
    float *y = malloc(sizeof(float) * c * hw), *q = random_floats((size_t)hw * c, 5);
    diffuse_conv g = diffuse_conv_3x3(c, c, 64, 64, 1);
    float *scratch = malloc(sizeof(float) * diffuse_conv_scratch(&g, 1));
    double s;
    BEST_OF(3, s, diffuse_op_conv2d(y, x, w, NULL, &g, 1, scratch));
    report("conv 3x3 320->320 at 64x64", 2.0 * c * c * 9 * hw, s, peak);
    BEST_OF(3, s, diffuse_op_linear(y, q, w, NULL, hw, c, c));
    report("linear 4096x320 . 320x320", 2.0 * hw * c * c, s, peak);
    float *att_scratch = malloc(sizeof(float) * diffuse_attention_scratch(hw, hw, dh));
    BEST_OF(2, s, diffuse_op_attention(y, q, c, q, q, c, hw, hw, heads, dh, false, att_scratch));
    report("self-attention 4096 tokens, 8 heads x 40", 4.0 * hw * hw * c, s, peak);
    BEST_OF(3, s, diffuse_op_attention(y, q, c, q, q, c, hw, t, heads, dh, false, att_scratch));
    report("cross-attention 4096 x 77 tokens", 4.0 * hw * t * c, s, peak);
    free(x);
    free(w);
    free(y);
    free(q);
    free(scratch);
    free(att_scratch);
}

static int bench_generate(const char *model_path)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_model *m = diffuse_model_load(model_path, NULL, err, sizeof err);
    if (!m) {
        printf("skip whole run: %s\n", err);
        return 0;
    }
    diffuse_request r = diffuse_request_default();
    r.prompt = "a red circle on a blue background";
    r.negative_prompt = "blurry";
    r.steps = 20;
    r.seed = 1;
    diffuse_image img;
    double t0 = now();
    diffuse_status st = diffuse_generate(m, &r, &img, err, sizeof err);
    double dt = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (st == DIFFUSE_OK) {
        printf("%s 512x512, 20 steps euler_a, cfg 7.5: %.1f s (%.2f s/step), peak RSS %.0f MiB\n",
               model_path, dt, dt / r.steps, ru.ru_maxrss / 1024.0);
        diffuse_image_free(&img);
    } else {
        printf("whole run failed: %s\n", err);
    }
    diffuse_model_free(m);
    return st == DIFFUSE_OK ? 0 : 1;
}

/* TAESD's decoder, 64x64x4 latents to 512x512, best of `reps` (after one
 * warm-up run that makes oneDNN's primitives). */
static int bench_taesd(const char *path, int reps, double peak)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_taesd *t;
    if (diffuse_taesd_load(path, &t, err) != DIFFUSE_OK) {
        printf("skip TAESD: %s\n", err);
        return 0;
    }
    const int size = 512, lc = diffuse_taesd_latent_channels(t);
    float *lat = random_floats((size_t)lc * (size / 8) * (size / 8), 7);
    float *img = malloc(sizeof(float) * 3 * size * size);
    diffuse_arena a;
    if (diffuse_arena_init(&a, diffuse_taesd_workspace(t, size, size), err)) {
        printf("skip TAESD: %s\n", err);
        return 1;
    }
    int rc = diffuse_taesd_decode(t, img, lat, size, size, &a, NULL, err);
    const double flops = a.flops;
    double s = 1e30, worst = 0, cpu_best = 1e30;
    for (int r = 0; r < reps && rc == 0; r++) {
        double t0 = now(), c0 = cpu_seconds();
        rc = diffuse_taesd_decode(t, img, lat, size, size, &a, NULL, err);
        double dt = now() - t0, dc = cpu_seconds() - c0;
        s = dt < s ? dt : s;
        worst = dt > worst ? dt : worst;
        cpu_best = dc < cpu_best ? dc : cpu_best;
    }
    if (rc == 0) {
        char what[64];
        snprintf(what, sizeof what, "TAESD decode 64x64x4 -> %dx%d", size, size);
        report(what, flops, s, peak);
        printf("  (best of %d, worst %.2f ms; least CPU time %.2f ms, all threads; %.1f dense "
               "GFLOP; peak arena %.1f MiB)\n",
               reps, worst * 1e3, cpu_best * 1e3, flops / 1e9, a.peak * sizeof(float) / 1048576.0);
    } else {
        printf("TAESD decode failed: %s\n", err);
    }
    diffuse_arena_free(&a);
    free(lat);
    free(img);
    diffuse_taesd_free(t);
    return rc ? 1 : 0;
}

#define TAESD_REF "../shared/reference/taesd/model-diffusers"

int main(int argc, char **argv)
{
    diffuse_process_init(argv); /* as the CLI and the plug-ins run */
    double peak = sgemm_peak();
    printf("sgemm peak (1536^3, %d OpenBLAS threads): %.1f GFLOP/s\n", openblas_get_num_threads(),
           peak);
    if (argc > 1 && strcmp(argv[1], "taesd") == 0)
        return bench_taesd(TAESD_REF, argc > 2 ? atoi(argv[2]) : 5, peak);
    bench_kernels(peak);
    if (argc > 1 && strcmp(argv[1], "kernels") == 0) /* the kernels alone */
        return 0;
    int rc = bench_generate(argc > 1 ? argv[1] : "../shared/reference/sd1-tiny/model-diffusers");
    return bench_taesd(TAESD_REF, 5, peak) || rc;
}
