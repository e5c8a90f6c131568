/* preview.c: small pictures of a run while it denoises. The latents pass
 * through a linear map to RGB (4 latent channels and a constant to 3 colours),
 * one multiply-add per value: free beside a UNet step. No family's numbers are
 * built in: the map is fitted once per model, at the first run that asks for
 * previews, to the model's own VAE, by least squares over a few small images
 * (flat colours and gradients): each is encoded, and the decoder's picture of
 * those latents is what the map learns to stand in for, each latent cell (in
 * the UNet's scale) against the mean colour of the pixels it covers. On the
 * bundled model the last preview of a run is within 0.06-0.07 (mean absolute,
 * in [0, 1]) of the final image shrunk to 1/8 (tests/test_preview.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define FIT_IMAGES 14

/* Pixel (x, y) of fit image k in [0, 1]: eight flat colours, then gradients
 * and a four-colour quadrant picture, so every channel varies on its own. */
static void fit_colour(int k, int x, int y, int s, float rgb[3])
{
    static const float flat[8][3] = {{0, 0, 0}, {1, 1, 1}, {1, 0, 0}, {0, 1, 0},
                                     {0, 0, 1}, {1, 1, 0}, {0, 1, 1}, {0.5f, 0.5f, 0.5f}};
    const float u = (float)x / (s - 1), v = (float)y / (s - 1);
    if (k < 8) {
        memcpy(rgb, flat[k], sizeof flat[k]);
        return;
    }
    switch (k) {
    case 8:
        rgb[0] = u, rgb[1] = v, rgb[2] = 0.5f;
        break;
    case 9:
        rgb[0] = 1 - v, rgb[1] = 0.3f, rgb[2] = u;
        break;
    case 10:
        rgb[0] = 0.2f, rgb[1] = u, rgb[2] = 1 - v;
        break;
    case 11:
        rgb[0] = rgb[1] = rgb[2] = u;
        break;
    case 12:
        rgb[0] = u * v, rgb[1] = (1 - u) * v, rgb[2] = 1 - v;
        break;
    default: { /* quadrants: red, green, blue, white */
        const int q = (x >= s / 2) + 2 * (y >= s / 2);
        static const float quad[4][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {1, 1, 1}};
        memcpy(rgb, quad[q], sizeof quad[q]);
    }
    }
}

size_t diffuse_preview_fit_workspace(const diffuse_model *m)
{
    const int s = DIFFUSE_PREVIEW_FIT_SIZE, f = 1 << (m->vae_cfg.levels - 1);
    const size_t c = (size_t)m->vae_cfg.latent_channels, ls = (size_t)(s / f) * (s / f);
    /* what diffuse_preview_fit pushes, then the VAE's passes on top */
    return diffuse_arena_size((size_t)3 * s * s) + diffuse_arena_size(2 * c * ls) +
           diffuse_vae_workspace(m->vae, s, s);
}

/* Solves a x = b (n x n, n <= 9) by Gaussian elimination with partial
 * pivoting; false when singular. */
static bool solve(double *a, double *b, int n)
{
    for (int i = 0; i < n; i++) {
        int p = i;
        for (int r = i + 1; r < n; r++)
            if (fabs(a[r * n + i]) > fabs(a[p * n + i]))
                p = r;
        if (fabs(a[p * n + i]) < 1e-30)
            return false;
        for (int c = 0; c < n; c++) {
            double t = a[i * n + c];
            a[i * n + c] = a[p * n + c];
            a[p * n + c] = t;
        }
        double t = b[i];
        b[i] = b[p];
        b[p] = t;
        for (int r = i + 1; r < n; r++) {
            double q = a[r * n + i] / a[i * n + i];
            for (int c = i; c < n; c++)
                a[r * n + c] -= q * a[i * n + c];
            b[r] -= q * b[i];
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        for (int c = i + 1; c < n; c++)
            b[i] -= a[i * n + c] * b[c];
        b[i] /= a[i * n + i];
    }
    return true;
}

diffuse_status diffuse_preview_fit(diffuse_model *m, diffuse_arena *a, char *err)
{
    if (m->preview_map)
        return DIFFUSE_OK;
    const int s = DIFFUSE_PREVIEW_FIT_SIZE, f = 1 << (m->vae_cfg.levels - 1), ls = s / f;
    const int c = m->vae_cfg.latent_channels, n = c + 1;
    if (ls < 1 || c < 1 || c > 8)
        return diffuse_fail(err, "preview: %d latent channels at 1/%d cannot be fitted", c, f),
               DIFFUSE_ERR_FORMAT;
    const size_t mark = diffuse_arena_mark(a);
    float *img = diffuse_arena_push(a, (size_t)3 * s * s);           /* [3, s, s] */
    float *moments = diffuse_arena_push(a, (size_t)2 * c * ls * ls); /* [2c, ls, ls] */
    double ata[81] = {0}, aty[3][9] = {{0}};
    if (!img || !moments) {
        diffuse_arena_reset(a, mark);
        return diffuse_fail(err, "internal: preview fit work memory exhausted"), DIFFUSE_ERR_MEMORY;
    }
    for (int k = 0; k < FIT_IMAGES; k++) {
        for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++) {
                float rgb[3];
                fit_colour(k, x, y, s, rgb);
                for (int ch = 0; ch < 3; ch++) /* [0, 1] -> [-1, 1] */
                    img[((size_t)ch * s + y) * s + x] = 2.0f * rgb[ch] - 1.0f;
            }
        /* the latents of the picture, and what the decoder makes of them: the
         * map stands in for the decoder */
        if (diffuse_vae_encode(m->vae, moments, img, s, s, a, NULL, err) ||
            diffuse_vae_decode(m->vae, img, moments, s, s, a, NULL, err)) {
            diffuse_arena_reset(a, mark);
            return DIFFUSE_ERR_MEMORY; /* the arena was sized for both */
        }
        for (int cy = 0; cy < ls; cy++)
            for (int cx = 0; cx < ls; cx++) {
                double feat[9], target[3] = {0, 0, 0};
                for (int l = 0; l < c; l++) /* the posterior mean, in the UNet's scale */
                    feat[l] = moments[((size_t)l * ls + cy) * ls + cx] * m->vae_cfg.scaling_factor;
                feat[c] = 1.0;
                for (int y = cy * f; y < (cy + 1) * f; y++)
                    for (int x = cx * f; x < (cx + 1) * f; x++)
                        for (int ch = 0; ch < 3; ch++)
                            target[ch] +=
                                fmin(fmax((img[((size_t)ch * s + y) * s + x] + 1.0) / 2.0, 0), 1);
                for (int ch = 0; ch < 3; ch++)
                    target[ch] /= (double)f * f;
                for (int i = 0; i < n; i++) {
                    for (int j = 0; j < n; j++)
                        ata[i * n + j] += feat[i] * feat[j];
                    for (int ch = 0; ch < 3; ch++)
                        aty[ch][i] += feat[i] * target[ch];
                }
            }
    }
    diffuse_arena_reset(a, mark);
    diffuse_weights_release(m->weights, "vae.");
    double trace = 0;
    for (int i = 0; i < n; i++)
        trace += ata[i * n + i];
    float *map = malloc(sizeof(float) * (size_t)n * 3);
    if (!map)
        return diffuse_fail(err, "out of memory"), DIFFUSE_ERR_MEMORY;
    for (int ch = 0; ch < 3; ch++) {
        double sys[81];
        memcpy(sys, ata, sizeof sys);
        for (int i = 0; i < n; i++) /* a touch of ridge: a dead latent channel stays harmless */
            sys[i * n + i] += 1e-9 * trace + 1e-12;
        if (!solve(sys, aty[ch], n) || !isfinite(aty[ch][0])) {
            free(map); /* what the VAE made of the pictures went NaN or infinite */
            return diffuse_fail(err, "preview: the latent-to-RGB fit is singular: the VAE's "
                                     "numbers are not finite"),
                   DIFFUSE_ERR_NONFINITE;
        }
        for (int i = 0; i < n; i++)
            map[i * 3 + ch] = (float)aty[ch][i];
    }
    m->preview_map = map;
    return DIFFUSE_OK;
}

void diffuse_preview_rgb(const diffuse_model *m, const float *latents, int h, int w, float *rgb)
{
    const int c = m->vae_cfg.latent_channels;
    const float *p = m->preview_map;
    const size_t hw = (size_t)h * w;
    for (size_t q = 0; q < hw; q++)
        for (int ch = 0; ch < 3; ch++) {
            float v = p[c * 3 + ch];
            for (int l = 0; l < c; l++)
                v += latents[l * hw + q] * p[l * 3 + ch];
            rgb[q * 3 + ch] = v < 0 ? 0 : v > 1 ? 1 : isnan(v) ? 0 : v;
        }
}
