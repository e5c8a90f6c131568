/* test_preview.c: previews while a run denoises, on the bundled default model
 * (a trained VAE, so the fitted latent-to-RGB map has something to fit):
 * delivered at the asked cadence and at the last step, at 1/8 of the size, in
 * [0, 1]; the last one close to the final image shrunk to its size (a
 * measured bound); none after a cancel, which leaves no image; a cadence
 * without a callback refused by name. */
#include "../engine/internal.h"
#include "test.h"

#define MODEL "models/default"
#ifndef STEPS
#define STEPS 5
#endif

typedef struct seen {
    int calls, steps[64], w, h, cancel_at;
    float last[32 * 32 * 3];
    bool bad_range;
} seen;

static int on_preview(void *user, int image, int step, int steps, const float *rgb, int w, int h)
{
    seen *s = user;
    if (s->calls < 64)
        s->steps[s->calls] = step;
    s->calls++;
    s->w = w;
    s->h = h;
    for (int i = 0; i < w * h * 3; i++)
        s->bad_range |= !(rgb[i] >= 0 && rgb[i] <= 1);
    if (w * h * 3 <= (int)(sizeof s->last / sizeof s->last[0]))
        memcpy(s->last, rgb, sizeof(float) * w * h * 3);
    return s->cancel_at && s->calls >= s->cancel_at;
}

int main(void)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_model *m = diffuse_model_load(MODEL, NULL, err, sizeof err);
    CHECK(m != NULL, "load %s: %s", MODEL, err);
    if (!m)
        TEST_END();
    diffuse_request r = diffuse_request_default();
    r.prompt = "a red circle on a blue background";
    r.width = r.height = 256;
    r.steps = STEPS;
    r.seed = 4;
    r.guidance = 3;
    r.sampler = DIFFUSE_SAMPLER_EULER;
    diffuse_image img;

    r.preview_every = 2; /* no callback */
    CHECK(diffuse_generate(m, &r, &img, err, sizeof err) == DIFFUSE_ERR_ARGUMENT &&
              strstr(err, "preview"),
          "a cadence without a callback: '%s'", err);

    seen s = {0};
    r.preview = on_preview;
    r.preview_user = &s;
    CHECK(diffuse_generate(m, &r, &img, err, sizeof err) == DIFFUSE_OK, "run: %s", err);
    int want = 0, wrong = 0; /* every second step, and the last */
    for (int k = 1; k <= STEPS; k++)
        if (k % 2 == 0 || k == STEPS)
            wrong += want >= s.calls || s.steps[want++] != k;
    CHECK(s.calls == want && !wrong, "%d previews (%d at the wrong step), want %d", s.calls, wrong,
          want);
    CHECK(s.w == 32 && s.h == 32, "preview %dx%d, want 32x32", s.w, s.h);
    CHECK(!s.bad_range, "a preview value outside [0, 1]");
    if (s.calls == want && s.w == 32 && s.h == 32) {
        /* the last preview against the final image in 8x8 means */
        double sum = 0, worst = 0;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                for (int c = 0; c < 3; c++) {
                    double mean = 0;
                    for (int dy = 0; dy < 8; dy++)
                        for (int dx = 0; dx < 8; dx++)
                            mean += img.pixels[((size_t)(y * 8 + dy) * 256 + x * 8 + dx) * 3 + c];
                    double d = fabs(mean / 64 - s.last[(y * 32 + x) * 3 + c]);
                    sum += d;
                    worst = d > worst ? d : worst;
                }
        const double mae = sum / (32 * 32 * 3);
        printf("preview vs final image (8x8 means): mean abs error %.4f, worst %.4f\n", mae, worst);
        CHECK(mae < 0.1, "the preview strays from the image: mean abs error %.4f", mae);
    }
    diffuse_image_free(&img);

    seen c = {.cancel_at = 1};
    r.preview_user = &c;
    r.preview_every = 1;
    r.count = 2;
    diffuse_image two[2] = {{0}};
    CHECK(diffuse_generate(m, &r, two, err, sizeof err) == DIFFUSE_ERR_CANCELLED,
          "cancel from a preview: %s", err);
    CHECK(c.calls == 1, "%d previews after a cancel", c.calls - 1);
    CHECK(!two[0].pixels && !two[1].pixels, "a cancelled run left an image");
    diffuse_model_free(m);

    /* the fit's work memory is planned exactly: it runs in an arena of its
     * plan and reaches all of it (a fresh model: the map is fitted once) */
    m = diffuse_model_load(MODEL, NULL, err, sizeof err);
    diffuse_arena a;
    if (m && diffuse_arena_init(&a, diffuse_preview_fit_workspace(m), err) == 0) {
        CHECK(diffuse_preview_fit(m, &a, err) == DIFFUSE_OK, "fit: %s", err);
        CHECK(a.peak == a.cap && !a.overflow, "fit peak %zu of %zu planned", a.peak, a.cap);
        diffuse_arena_free(&a);
    }
    diffuse_model_free(m);
    TEST_END();
}
