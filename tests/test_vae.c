/* test_vae.c: the AutoencoderKL of the tiny reference model, from both
 * checkpoint layouts, must reproduce diffusers' encoder and decoder (every
 * traced block, the moments and the decoded image) within 1e-4 relative, in
 * no more work memory than diffuse_vae_workspace promises; wrong configs and
 * short arenas must fail with a message, never crash. */
#include "../engine/internal.h"
#include "test.h"

#define TOL 1e-4

/* Compares each traced activation with golden "vae.<name>" when it exists. */
typedef struct trace_ctx {
    const diffuse_st_file *golden;
    const char *layout;
    int compared;   /* traced names found in golden */
    char seen[512]; /* names compared, space separated */
} trace_ctx;

/* Golden tensor as float32 (malloc'd), numel in *n; NULL when missing. */
static float *golden_get(const diffuse_st_file *g, const char *name, size_t *n)
{
    char err[DIFFUSE_ERROR_SIZE];
    const diffuse_st_tensor *t = diffuse_st_find(g, name);
    if (!t)
        return NULL;
    float *x = malloc(sizeof(float) * (size_t)t->numel);
    if (x && diffuse_st_to_f32(t, x, err)) {
        free(x);
        return NULL;
    }
    *n = (size_t)t->numel;
    return x;
}

static void compare(const char *layout, const char *name, const float *x, size_t n,
                    const float *ref, size_t nref)
{
    double abs_err = 0;
    double rel = n == nref ? test_rel_err(x, ref, n, &abs_err) : INFINITY;
    printf("  %-6s %-26s rel %.2e (abs %.2e)\n", layout, name, rel, abs_err);
    CHECK(n == nref && rel <= TOL, "%s %s: %zu vs %zu values, rel err %g", layout, name, n, nref,
          rel);
}

static void on_trace(void *user, const char *name, const float *data, size_t n)
{
    trace_ctx *c = user;
    char key[128];
    size_t nref = 0;
    snprintf(key, sizeof key, "vae.%s", name);
    float *ref = golden_get(c->golden, key, &nref);
    if (!ref)
        return;
    compare(c->layout, key, data, n, ref, nref);
    c->compared++;
    size_t len = strlen(c->seen);
    snprintf(c->seen + len, sizeof c->seen - len, "%s ", name);
    free(ref);
}

/* SD 1.x VAE layout with the tiny model's widths (vae/config.json). */
static diffuse_vae_config tiny_config(void)
{
    diffuse_vae_config cfg = {.in_channels = 3,
                              .out_channels = 3,
                              .latent_channels = 4,
                              .levels = 4,
                              .channels = {32, 32, 64, 64},
                              .layers_per_block = 2,
                              .groups = 32,
                              .scaling_factor = 0.18215f,
                              .mid_attention = true};
    return cfg;
}

/* Encode vae.image, decode vae.latent, compare everything recorded. */
static void check_golden(const diffuse_vae *vae, const diffuse_st_file *g, const char *layout)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    size_t n_img = 0, n_lat = 0, n_mom = 0, n_out = 0;
    float *image = golden_get(g, "vae.image", &n_img);
    float *latent = golden_get(g, "vae.latent", &n_lat);
    float *moments = golden_get(g, "vae.encode.moments", &n_mom);
    float *decoded = golden_get(g, "vae.decode.out", &n_out);
    CHECK(image && latent && moments && decoded, "golden VAE tensors present");
    if (!image || !latent || !moments || !decoded)
        goto done;
    size_t ws = diffuse_vae_workspace(vae, 64, 64);
    diffuse_arena a;
    CHECK(ws > 0 && diffuse_arena_init(&a, ws, err) == 0, "arena of %zu floats: %s", ws, err);
    float *mom = calloc(n_mom, sizeof(float)), *out = calloc(n_out, sizeof(float));
    trace_ctx tc = {.golden = g, .layout = layout};
    diffuse_trace tr = {on_trace, &tc};

    CHECK(diffuse_vae_encode(vae, mom, image, 64, 64, &a, &tr, err) == 0, "encode: %s", err);
    compare(layout, "vae.encode.moments", mom, n_mom, moments, n_mom);
    CHECK(tc.compared == 4, "%s encoder traces compared: %s", layout, tc.seen);
    CHECK(a.used == 0 && !a.overflow, "encode leaves the arena as it found it");
    size_t peak_enc = a.peak;

    tc.compared = 0;
    tc.seen[0] = 0;
    a.peak = 0;
    CHECK(diffuse_vae_decode(vae, out, latent, 64, 64, &a, &tr, err) == 0, "decode: %s", err);
    compare(layout, "vae.decode.out", out, n_out, decoded, n_out);
    CHECK(tc.compared == 4, "%s decoder traces compared: %s", layout, tc.seen);
    printf("  %-6s peak encode %zu, decode %zu floats; workspace %zu\n", layout, peak_enc, a.peak,
           ws);
    CHECK(peak_enc <= ws && a.peak <= ws, "peak %zu / %zu within workspace %zu", peak_enc, a.peak,
          ws);

    /* same input, same output, bit for bit */
    float *again = calloc(n_out, sizeof(float));
    CHECK(diffuse_vae_decode(vae, again, latent, 64, 64, &a, NULL, err) == 0 &&
              memcmp(again, out, sizeof(float) * n_out) == 0,
          "decode is deterministic");
    free(again);
    free(mom);
    free(out);
    diffuse_arena_free(&a);
done:
    free(image);
    free(latent);
    free(moments);
    free(decoded);
}

/* An arena smaller than the workspace fails with a message, at any size. */
static void check_short_arena(const diffuse_vae *vae)
{
    char err[DIFFUSE_ERROR_SIZE];
    size_t ws = diffuse_vae_workspace(vae, 64, 64);
    size_t sizes[3] = {16, ws / 2, ws - 4096};
    float *image = calloc(3 * 64 * 64, sizeof(float)), *mom = calloc(8 * 8 * 8, sizeof(float));
    for (int i = 0; i < 3; i++) {
        diffuse_arena a;
        if (diffuse_arena_init(&a, sizes[i], err))
            continue;
        err[0] = 0;
        CHECK(diffuse_vae_encode(vae, mom, image, 64, 64, &a, NULL, err) == -1 &&
                  strstr(err, "VAE work memory exhausted"),
              "encode, %zu floats: %s", sizes[i], err);
        err[0] = 0;
        CHECK(diffuse_vae_decode(vae, image, mom, 64, 64, &a, NULL, err) == -1 &&
                  strstr(err, "VAE work memory exhausted"),
              "decode, %zu floats: %s", sizes[i], err);
        CHECK(a.used == 0, "arena rewound after a failure");
        diffuse_arena_free(&a);
    }
    diffuse_arena a;
    if (diffuse_arena_init(&a, ws, err) == 0) {
        CHECK(diffuse_vae_decode(vae, image, mom, 60, 64, &a, NULL, err) == -1 &&
                  strstr(err, "multiple of 8"),
              "odd size: %s", err);
        CHECK(diffuse_vae_workspace(vae, 0, 64) == 0, "no workspace for an empty image");
        diffuse_arena_free(&a);
    }
    free(image);
    free(mom);
}

/* Non-square sizes run inside their workspace (ASan/valgrind watch the edges). */
static void check_non_square(const diffuse_vae *vae)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    const int h = 48, w = 80;
    size_t ws = diffuse_vae_workspace(vae, h, w);
    float *image = calloc(3 * h * w, sizeof(float));
    float *mom = calloc(8 * (h / 8) * (w / 8), sizeof(float));
    for (int i = 0; i < 3 * h * w; i++)
        image[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    diffuse_arena a;
    if (diffuse_arena_init(&a, ws, err) == 0) {
        CHECK(diffuse_vae_encode(vae, mom, image, h, w, &a, NULL, err) == 0 &&
                  diffuse_vae_decode(vae, image, mom, h, w, &a, NULL, err) == 0,
              "%dx%d: %s", w, h, err);
        /* the plan is each pass run dry: its peak exactly, its flops exactly */
        CHECK(a.peak == ws && isfinite(image[0]) && isfinite(image[3 * h * w - 1]),
              "%dx%d: peak %zu, workspace %zu", w, h, a.peak, ws);
        double f =
            diffuse_vae_plan(vae, true, h, w).flops + diffuse_vae_plan(vae, false, h, w).flops;
        CHECK(a.flops == f && diffuse_vae_plan(vae, false, h, w).flops > 0,
              "%dx%d: %.6g flops run, %.6g planned", w, h, a.flops, f);
        diffuse_arena_free(&a);
    }
    free(image);
    free(mom);
}

/* A decode in bands (tiling t) of latent [4, h/8, w/8] into image: in an
 * arena of exactly its plan, which it must fill to the float and count the
 * plan's flops. Returns diffuse_vae_decode_tiled's result. */
static int tiled_decode(const diffuse_vae *vae, float *image, const float *latent, int h, int w,
                        diffuse_vae_tiling t, int (*stop)(void *), void *user, char *err)
{
    diffuse_plan p = diffuse_vae_decode_plan(vae, h, w, t);
    diffuse_arena a;
    CHECK(p.floats != DIFFUSE_PLAN_NONE && p.flops > 0, "%dx%d bands %d keep %#x: a plan", w, h,
          t.rows, t.keep);
    if (p.floats == DIFFUSE_PLAN_NONE || diffuse_arena_init(&a, p.floats, err))
        return -1;
    int rc = diffuse_vae_decode_tiled(vae, image, latent, h, w, t, &a, NULL, stop, user, err);
    if (rc == 0)
        CHECK(a.peak == p.floats && a.flops == p.flops && a.layers == p.layers && !a.overflow,
              "%dx%d bands %d keep %#x: peak %zu, plan %zu; flops %.6g, plan %.6g", w, h, t.rows,
              t.keep, a.peak, p.floats, a.flops, p.flops);
    CHECK(a.used == 0, "the arena rewound");
    diffuse_arena_free(&a);
    return rc;
}

static int stop_after(void *user)
{
    int *left = user;
    return --*left < 0;
}

/* The decode in bands is the whole-image decode: against diffusers' image
 * and against diffuse_vae_decode at the same size, for bands of one latent
 * row up to all but one, every choice of kept levels, odd sizes; the same
 * bits at one and two threads; a stop between bands; tilings it refuses. */
static void check_tiled(const diffuse_vae *vae, const diffuse_st_file *g, const char *layout)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    size_t n_lat = 0, n_out = 0;
    float *latent = golden_get(g, "vae.latent", &n_lat);
    float *decoded = golden_get(g, "vae.decode.out", &n_out);
    if (!latent || !decoded)
        goto done;
    static const struct {
        int h, w, rows;
        unsigned keep;
    } cases[] = {{64, 64, 8, 0},    {64, 64, 8, 0xe},  {64, 64, 16, 0x2}, {64, 64, 24, 0x6},
                 {64, 64, 56, 0x4}, {64, 64, 32, 0x8}, {40, 56, 8, 0},    {40, 56, 24, 0xa},
                 {40, 56, 32, 0xe}, {8, 24, 0, 0},     {72, 16, 16, 0x6}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const int h = cases[i].h, w = cases[i].w;
        diffuse_vae_tiling t = {cases[i].rows, cases[i].keep};
        const size_t n = (size_t)3 * h * w, nl = (size_t)4 * (h / 8) * (w / 8);
        float *lat = malloc(sizeof(float) * nl), *whole = calloc(n, sizeof(float));
        float *banded = calloc(n, sizeof(float));
        for (size_t j = 0; j < nl; j++) /* the golden latent, tiled over the size */
            lat[j] = latent[j % n_lat];
        diffuse_arena a;
        if (diffuse_arena_init(&a, diffuse_vae_workspace(vae, h, w), err) == 0) {
            CHECK(diffuse_vae_decode(vae, whole, lat, h, w, &a, NULL, err) == 0, "%s", err);
            diffuse_arena_free(&a);
        }
        if (!t.rows) { /* one band row of latents: no tiling is possible */
            CHECK(diffuse_vae_decode_plan(vae, h, w, (diffuse_vae_tiling){8, 0}).floats ==
                      DIFFUSE_PLAN_NONE,
                  "%dx%d: no bands of 8 rows", w, h);
            goto next;
        }
        int rc = tiled_decode(vae, banded, lat, h, w, t, NULL, NULL, err);
        double abs_err = 0, rel = test_rel_err(banded, whole, n, &abs_err);
        printf("  %-6s %dx%d bands of %d, keep %#x: rel %.2e to the whole decode\n", layout, w, h,
               t.rows, t.keep, rel);
        CHECK(rc == 0 && rel <= 1e-5, "%s %dx%d bands %d keep %#x: %s, rel %g", layout, w, h,
              t.rows, t.keep, err, rel);
        if (h == 64 && w == 64) {
            rel = test_rel_err(banded, decoded, n, &abs_err);
            CHECK(rel <= TOL, "%s bands %d keep %#x: rel %g to diffusers", layout, t.rows, t.keep,
                  rel);
        }
        if (i == 1 || i == 7) { /* the thread count changes no bit */
            float *one = calloc(n, sizeof(float));
            diffuse_pool_set_threads(1);
            CHECK(tiled_decode(vae, one, lat, h, w, t, NULL, NULL, err) == 0 &&
                      memcmp(one, banded, sizeof(float) * n) == 0,
                  "%dx%d bands %d: one thread, the same bits", w, h, t.rows);
            diffuse_pool_set_threads(0);
            free(one);
        }
    next:
        free(lat);
        free(whole);
        free(banded);
    }
    /* stopped: after 0 bands and after 9 (in the second pass) */
    float *image = calloc(3 * 64 * 64, sizeof(float));
    for (int k = 0; k < 10; k += 9) {
        int left = k;
        err[0] = 0;
        CHECK(tiled_decode(vae, image, latent, 64, 64, (diffuse_vae_tiling){16, 0x2}, stop_after,
                           &left, err) == 1 &&
                  !strcmp(err, "cancelled"),
              "stopped after %d bands: %s", k, err);
    }
    /* refused: bands not a multiple of 8 rows, or the whole image, or negative */
    const diffuse_vae_tiling bad[] = {{12, 0}, {64, 0}, {-8, 0}, {8, 0x100}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        diffuse_arena a;
        err[0] = 0;
        CHECK(diffuse_vae_decode_plan(vae, 64, 64, bad[i]).floats == DIFFUSE_PLAN_NONE,
              "bands of %d keep %#x: no plan", bad[i].rows, bad[i].keep);
        if (diffuse_arena_init(&a, 1 << 16, err) == 0) {
            CHECK(diffuse_vae_decode_tiled(vae, image, latent, 64, 64, bad[i], &a, NULL, NULL, NULL,
                                           err) == -1 &&
                      strstr(err, "bands of"),
                  "bands of %d keep %#x: %s", bad[i].rows, bad[i].keep, err);
            diffuse_arena_free(&a);
        }
    }
    /* too small an arena: an error, never a write past it */
    diffuse_plan p = diffuse_vae_decode_plan(vae, 64, 64, (diffuse_vae_tiling){8, 0});
    diffuse_arena a;
    if (diffuse_arena_init(&a, p.floats - 16, err) == 0) {
        CHECK(diffuse_vae_decode_tiled(vae, image, latent, 64, 64, (diffuse_vae_tiling){8, 0}, &a,
                                       NULL, NULL, NULL, err) == -1 &&
                  strstr(err, "memory exhausted"),
              "a short arena: %s", err);
        diffuse_arena_free(&a);
    }
    free(image);
done:
    free(latent);
    free(decoded);
}

/* Wrong widths: the error names the first tensor whose shape disagrees. */
static void check_bad_config(diffuse_weights *w)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_vae *vae = NULL;
    diffuse_vae_config cfg = tiny_config();
    cfg.channels[1] = 64;
    CHECK(diffuse_vae_load(&cfg, w, &vae, err) == -1 && !vae &&
              strstr(err, "vae.encoder.down_blocks.1.resnets.0.conv1.weight"),
          "wrong channels: %s", err);
    cfg = tiny_config();
    cfg.latent_channels = 8;
    CHECK(diffuse_vae_load(&cfg, w, &vae, err) == -1 && strstr(err, "vae.encoder.conv_out.weight"),
          "wrong latent channels: %s", err);
    cfg = tiny_config();
    cfg.mid_attention = false;
    CHECK(diffuse_vae_load(&cfg, w, &vae, err) == 0, "loads without the mid attention: %s", err);
    if (vae) { /* and runs: the mid block is then resnet, resnet */
        diffuse_arena a;
        float *image = calloc(3 * 64 * 64, sizeof(float)), *mom = calloc(8 * 8 * 8, sizeof(float));
        if (diffuse_arena_init(&a, diffuse_vae_workspace(vae, 64, 64), err) == 0) {
            CHECK(diffuse_vae_encode(vae, mom, image, 64, 64, &a, NULL, err) == 0 &&
                      diffuse_vae_decode(vae, image, mom, 64, 64, &a, NULL, err) == 0,
                  "runs without the mid attention: %s", err);
            diffuse_arena_free(&a);
        }
        free(image);
        free(mom);
    }
    diffuse_vae_free(vae);
    cfg = tiny_config();
    cfg.channels[2] = 48;
    CHECK(diffuse_vae_load(&cfg, w, &vae, err) == -1 && strstr(err, "groups"),
          "channels not a multiple of groups: %s", err);
    cfg = tiny_config();
    cfg.levels = 0;
    CHECK(diffuse_vae_load(&cfg, w, &vae, err) == -1 && strstr(err, "levels"), "no levels: %s",
          err);
}

static void check_layout(const char *path, const char *layout, const diffuse_st_file *g)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_weights *w = NULL;
    diffuse_vae *vae = NULL;
    diffuse_vae_config cfg = tiny_config();
    CHECK(diffuse_weights_open(path, &w, err) == 0, "%s: %s", layout, err);
    if (!w)
        return;
    CHECK(diffuse_vae_load(&cfg, w, &vae, err) == 0, "%s load: %s", layout, err);
    if (vae) {
        check_golden(vae, g, layout);
        check_tiled(vae, g, layout);
        check_short_arena(vae);
        check_non_square(vae);
    }
    check_bad_config(w);
    diffuse_vae_free(vae);
    diffuse_weights_free(w);
}

int main(void)
{
    char gbuf[4096], dbuf[4096], lbuf[4096], err[DIFFUSE_ERROR_SIZE] = "";
    const char *gpath = test_shared("reference/sd1-tiny/golden.safetensors", gbuf);
    const char *dir = test_shared("reference/sd1-tiny/model-diffusers", dbuf);
    const char *ldm = test_shared("reference/sd1-tiny/model-ldm-fp16.safetensors", lbuf);
    diffuse_st_file *g = NULL;
    if (gpath)
        CHECK(diffuse_st_open(gpath, &g, err) == 0, "golden: %s", err);
    if (g && dir)
        check_layout(dir, "diff", g);
    if (g && ldm)
        check_layout(ldm, "ldm", g);
    diffuse_st_close(g);
    TEST_END();
}
