/* test_unet.c: the UNet against diffusers' UNet2DConditionModel on the sd1-tiny
 * reference model (both checkpoint layouts): output and every traced
 * intermediate at t = 999, 500, 1; error messages for mis-shaped and missing
 * weights; clean failure on a short arena; the arena bound at several sizes. */
#include "../engine/internal.h"
#include "test.h"

#define TOL 1e-4

static const char *const trace_names[] = {
    "time_embedding", "conv_in",       "down_blocks.0", "down_blocks.1",
    "down_blocks.2",  "down_blocks.3", "mid_block",     "up_blocks.0",
    "up_blocks.1",    "up_blocks.2",   "up_blocks.3",   "conv_out",
};
#define NTRACE (int)(sizeof trace_names / sizeof trace_names[0])

/* sd1-tiny/model-diffusers/unet/config.json, written out by hand. */
static diffuse_unet_config tiny_config(void)
{
    diffuse_unet_config c = {
        .in_channels = 4,
        .out_channels = 4,
        .levels = 4,
        .channels = {32, 32, 64, 64},
        .cross_attn = {true, true, true, false}, /* CrossAttnDownBlock2D x3, DownBlock2D */
        .layers_per_block = 2,
        .heads = {8, 8, 8, 8}, /* attention_head_dim 8 (legacy: heads) */
        .depth = {1, 1, 1, 0},
        .mid_depth = 1,
        .context_dim = 32,
        .linear_proj = false,
        .groups = 32,
        .eps = 1e-5f,
        .flip_sin_to_cos = true,
        .freq_shift = 0,
    };
    return c;
}

/* Golden tensor as a malloc'ed float32 copy (NULL after a failed check). */
static float *golden(const diffuse_st_file *g, const char *name, size_t *count)
{
    char err[DIFFUSE_ERROR_SIZE];
    const diffuse_st_tensor *t = diffuse_st_find(g, name);
    CHECK(t != NULL, "golden tensor %s missing", name);
    if (!t)
        return NULL;
    float *x = malloc(sizeof(float) * (size_t)t->numel);
    if (x && diffuse_st_to_f32(t, x, err)) {
        CHECK(0, "golden %s: %s", name, err);
        free(x);
        return NULL;
    }
    if (count)
        *count = (size_t)t->numel;
    return x;
}

/* Trace observer: compares each intermediate with unet.t{t}.{name}. */
typedef struct trace_ctx {
    const diffuse_st_file *gold;
    const char *layout;
    int t;
    double err[NTRACE]; /* max rel error per trace name, -1 when not seen */
} trace_ctx;

static void on_trace(void *user, const char *name, const float *data, size_t n)
{
    trace_ctx *c = user;
    char key[128];
    int k = 0;
    while (k < NTRACE && strcmp(trace_names[k], name))
        k++;
    CHECK(k < NTRACE, "unexpected trace name %s", name);
    if (k == NTRACE)
        return;
    snprintf(key, sizeof key, "unet.t%d.%s", c->t, name);
    size_t count = 0;
    float *ref = golden(c->gold, key, &count);
    if (!ref)
        return;
    CHECK(count == n, "%s %s: %zu floats traced, %zu in golden", c->layout, key, n, count);
    if (count == n) {
        c->err[k] = test_rel_err(data, ref, n, NULL);
        CHECK(c->err[k] <= TOL, "%s %s: rel err %.3g", c->layout, key, c->err[k]);
    }
    free(ref);
}

/* One layout: load, then t = 999, 500, 1 with batch 2 against the golden run. */
static void check_layout(const char *path, const diffuse_st_file *gold)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_weights *w = NULL;
    diffuse_unet *u = NULL;
    diffuse_unet_config cfg = tiny_config();
    CHECK(diffuse_weights_open(path, &w, err) == 0, "open %s: %s", path, err);
    if (!w)
        return;
    const char *layout = diffuse_weights_layout(w);
    CHECK(diffuse_unet_load(&cfg, w, &u, err) == 0, "%s load: %s", layout, err);
    size_t nx = 0, nc = 0;
    float *x = golden(gold, "unet.sample", &nx);              /* [2, 4, 8, 8] */
    float *ctx = golden(gold, "text.last_hidden_state", &nc); /* [2, 77, 32] */
    float out[2 * 4 * 8 * 8];
    diffuse_arena a = {0};
    size_t ws = u ? diffuse_unet_workspace(u, 2, 8, 8, 77) : 0;
    if (u && x && ctx && nx == 2 * 4 * 64 && nc == 2 * 77 * 32 &&
        diffuse_arena_init(&a, ws, err) == 0) {
        const int ts[3] = {999, 500, 1};
        for (int i = 0; i < 3; i++) {
            trace_ctx tc = {.gold = gold, .layout = layout, .t = ts[i]};
            for (int k = 0; k < NTRACE; k++)
                tc.err[k] = -1;
            diffuse_trace tr = {on_trace, &tc};
            float tt[2] = {(float)ts[i], (float)ts[i]};
            const diffuse_unet_cond cond = {.context = ctx, .tokens = 77};
            int rc = diffuse_unet_forward(u, out, x, tt, &cond, 2, 8, 8, &a, &tr, err);
            CHECK(rc == 0, "%s forward t=%d: %s", layout, ts[i], err);
            char key[64];
            snprintf(key, sizeof key, "unet.t%d.out", ts[i]);
            float *ref = golden(gold, key, NULL);
            double e = ref ? test_rel_err(out, ref, 2 * 4 * 64, NULL) : 1;
            CHECK(e <= TOL, "%s %s: rel err %.3g", layout, key, e);
            free(ref);
            printf("%s t=%d: out %.2e", layout, ts[i], e);
            for (int k = 0; k < NTRACE; k++) {
                CHECK(tc.err[k] >= 0, "%s t=%d: trace %s never emitted", layout, ts[i],
                      trace_names[k]);
                printf(" %s %.2e", trace_names[k], tc.err[k]);
            }
            printf("\n");
        }
        CHECK(a.used == 0, "arena not rewound: %zu floats in use", a.used);
        CHECK(a.peak <= ws && a.peak * 2 >= ws, "peak %zu vs workspace %zu", a.peak, ws);
        printf("%s n=2 8x8: peak %zu floats, workspace %zu (%.0f%%)\n", layout, a.peak, ws,
               100.0 * a.peak / ws);
    }
    diffuse_arena_free(&a);
    free(x);
    free(ctx);
    diffuse_unet_free(u);
    diffuse_weights_free(w);
}

/* A config that disagrees with the weights must name the tensor and shapes. */
static void check_load_errors(diffuse_weights *w)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_unet *u = NULL;
    diffuse_unet_config cfg = tiny_config();
    cfg.channels[1] = 64;
    CHECK(diffuse_unet_load(&cfg, w, &u, err) == -1 && u == NULL, "wrong channels loaded");
    CHECK(strstr(err, "unet.down_blocks.1.resnets.0.conv1.weight") &&
              strstr(err, "[32, 32, 3, 3]") && strstr(err, "[64, 32, 3, 3]"),
          "wrong channels: message '%s'", err);

    cfg = tiny_config();
    cfg.cross_attn[3] = true;
    err[0] = 0;
    CHECK(diffuse_unet_load(&cfg, w, &u, err) == -1 && u == NULL, "missing transformer loaded");
    CHECK(strstr(err, "missing") && strstr(err, "unet.down_blocks.3.attentions.0.norm.weight"),
          "missing tensor: message '%s'", err);

    cfg = tiny_config();
    cfg.heads[2] = 7;
    err[0] = 0;
    CHECK(diffuse_unet_load(&cfg, w, &u, err) == -1 && strstr(err, "heads"),
          "heads not dividing channels: '%s'", err);
}

static void fill(float *x, size_t n, diffuse_rng *rng)
{
    diffuse_rng_normal(rng, x, n);
}

/* Runs one random forward in an arena of `floats`; returns its status. */
static int run_random(const diffuse_unet *u, diffuse_arena *a, float *out, int n, int h, int w,
                      int tokens, const float *t, char *err)
{
    diffuse_rng rx, rc_;
    diffuse_rng_seed(&rx, 7); /* separate streams: item 0 is the same for any n */
    diffuse_rng_seed(&rc_, 8);
    float *x = malloc(sizeof(float) * n * 4 * h * w);
    float *ctx = malloc(sizeof(float) * n * tokens * 32);
    fill(x, (size_t)n * 4 * h * w, &rx);
    fill(ctx, (size_t)n * tokens * 32, &rc_);
    const diffuse_unet_cond cond = {.context = ctx, .tokens = tokens};
    int rc = diffuse_unet_forward(u, out, x, t, &cond, n, h, w, a, NULL, err);
    free(x);
    free(ctx);
    return rc;
}

/* Too small an arena fails with a message and leaves the arena rewound; the
 * exact peak is enough. */
static void check_exhaustion(const diffuse_unet *u)
{
    char err[DIFFUSE_ERROR_SIZE];
    float out[2 * 4 * 64], t[2] = {500, 500};
    size_t ws = diffuse_unet_workspace(u, 2, 8, 8, 77), peak = 0;
    size_t sizes[4] = {0, 100, ws / 4, ws / 2};
    for (int i = 0; i < 4; i++) {
        diffuse_arena a;
        err[0] = 0;
        if (diffuse_arena_init(&a, sizes[i], err))
            continue;
        int rc = run_random(u, &a, out, 2, 8, 8, 77, t, err);
        CHECK(rc == -1 && strstr(err, "internal: UNet work memory exhausted"),
              "arena of %zu floats: rc %d, '%s'", sizes[i], rc, err);
        CHECK(a.used == 0, "arena of %zu not rewound", sizes[i]);
        diffuse_arena_free(&a);
    }
    diffuse_arena a;
    if (diffuse_arena_init(&a, ws, err) == 0) {
        CHECK(run_random(u, &a, out, 2, 8, 8, 77, t, err) == 0, "full arena: %s", err);
        peak = a.peak;
        diffuse_arena_free(&a);
    }
    if (peak && diffuse_arena_init(&a, peak, err) == 0) {
        CHECK(run_random(u, &a, out, 2, 8, 8, 77, t, err) == 0, "arena of the peak: %s", err);
        diffuse_arena_free(&a);
    }
    if (peak && diffuse_arena_init(&a, peak - 16, err) == 0) {
        CHECK(run_random(u, &a, out, 2, 8, 8, 77, t, err) == -1, "peak - 16 floats succeeded");
        diffuse_arena_free(&a);
    }
}

/* The bound holds at other sizes (odd latents use the sized upsampler) and
 * batch items do not leak into one another. */
static void check_sizes(const diffuse_unet *u)
{
    const int dims[4][4] = {{1, 16, 16, 77}, {2, 12, 20, 5}, {3, 8, 8, 10}, {1, 9, 7, 1}};
    char err[DIFFUSE_ERROR_SIZE];
    float t[3] = {799.2f, 10.5f, 0};
    for (int i = 0; i < 4; i++) {
        const int n = dims[i][0], h = dims[i][1], w = dims[i][2], tok = dims[i][3];
        size_t ws = diffuse_unet_workspace(u, n, h, w, tok), len = (size_t)n * 4 * h * w;
        diffuse_arena a;
        float *out = malloc(sizeof(float) * len);
        if (diffuse_arena_init(&a, ws, err) == 0) {
            int rc = run_random(u, &a, out, n, h, w, tok, t, err);
            CHECK(rc == 0, "n=%d %dx%d: %s", n, h, w, err);
            bool finite = true;
            for (size_t j = 0; j < len; j++)
                finite = finite && isfinite(out[j]);
            CHECK(finite, "n=%d %dx%d: non-finite output", n, h, w);
            /* the plan is the forward run dry: the same pushes, the same flops */
            CHECK(a.peak == ws, "n=%d %dx%d: peak %zu vs workspace %zu", n, h, w, a.peak, ws);
            diffuse_plan p = diffuse_unet_plan(u, n, h, w, tok);
            CHECK(a.flops == p.flops && p.flops > 0 && a.layers == p.layers && p.layers > 0,
                  "n=%d %dx%d: %.6g flops and %.0f layers run, %.6g and %.0f planned", n, h, w,
                  a.flops, a.layers, p.flops, p.layers);
            printf("n=%d %dx%d tokens %d: peak %zu floats, workspace %zu (%.0f%%)\n", n, h, w, tok,
                   a.peak, ws, 100.0 * a.peak / ws);
            diffuse_arena_free(&a);
        }
        free(out);
    }
}

/* Item 0 of a batch equals the same input run alone. */
static void check_batch_independence(const diffuse_unet *u)
{
    char err[DIFFUSE_ERROR_SIZE];
    const int h = 12, w = 20, tok = 5;
    const size_t len = 4 * h * w;
    float *two = malloc(sizeof(float) * 2 * len), *one = malloc(sizeof(float) * len);
    float t[2] = {799.2f, 10.5f};
    diffuse_arena a;
    if (diffuse_arena_init(&a, diffuse_unet_workspace(u, 2, h, w, tok), err) == 0) {
        int rc = run_random(u, &a, two, 2, h, w, tok, t, err);
        rc = rc || run_random(u, &a, one, 1, h, w, tok, t, err);
        CHECK(rc == 0, "batch runs: %s", err);
        double e = test_rel_err(one, two, len, NULL);
        CHECK(e <= 1e-5, "batch item 0 differs from a single run: %.3g", e);
        diffuse_arena_free(&a);
    }
    free(two);
    free(one);
}

int main(void)
{
    char b1[4096], b2[4096], b3[4096], err[DIFFUSE_ERROR_SIZE];
    const char *gpath = test_shared("reference/sd1-tiny/golden.safetensors", b1);
    const char *dir = test_shared("reference/sd1-tiny/model-diffusers", b2);
    const char *ldm = test_shared("reference/sd1-tiny/model-ldm-fp16.safetensors", b3);
    diffuse_st_file *gold = NULL;
    if (gpath)
        CHECK(diffuse_st_open(gpath, &gold, err) == 0, "golden: %s", err);
    if (gold && dir)
        check_layout(dir, gold);
    if (gold && ldm)
        check_layout(ldm, gold);
    diffuse_weights *w = NULL;
    if (dir && diffuse_weights_open(dir, &w, err) == 0) {
        diffuse_unet_config cfg = tiny_config();
        diffuse_unet *u = NULL;
        check_load_errors(w);
        CHECK(diffuse_unet_load(&cfg, w, &u, err) == 0, "load: %s", err);
        if (u) {
            check_exhaustion(u);
            check_sizes(u);
            check_batch_independence(u);
        }
        diffuse_unet_free(u);
    }
    diffuse_weights_free(w);
    diffuse_st_close(gold);
    TEST_END();
}
