/* test_taesd.c: the tiny autoencoder beyond what `diffuse refcheck` proves on
 * the reference set (both layouts, every recorded activation): the banded,
 * threaded forward against a direct whole-image computation at an awkward
 * size (72x136, one band and many), the same bits at 1 and 2 threads, load
 * errors (no file, not a TAESD, one half only), and the pipeline's fast
 * decode and encode through diffuse_generate. */
#include <unistd.h>

#include "../engine/internal.h"
#include "test.h"

/* Direct reference: whole-image convs (diffuse_op_conv2d_ref) in double-free
 * float, nearest upsample as a copy, the same layer rules as taesd.c. */
typedef struct ref_act {
    float *x;
    int c, h, w;
} ref_act;

static void ref_conv(ref_act *a, const diffuse_weights *w, const char *name, int stride)
{
    char n[256];
    int64_t shape[DIFFUSE_MAX_DIMS];
    snprintf(n, sizeof n, "%s.weight", name);
    diffuse_weights_shape(w, n, shape);
    const float *wt = diffuse_weights_get((diffuse_weights *)w, n, 4, shape, NULL);
    snprintf(n, sizeof n, "%s.bias", name);
    const float *b = diffuse_weights_has(w, n)
                         ? diffuse_weights_get((diffuse_weights *)w, n, 1, shape, NULL)
                         : NULL;
    diffuse_conv c = diffuse_conv_3x3(a->c, (int)shape[0], a->h, a->w, stride);
    const int oh = diffuse_conv_out_h(&c), ow = diffuse_conv_out_w(&c);
    float *y = malloc(sizeof(float) * c.cout * oh * ow);
    diffuse_op_conv2d_ref(y, a->x, wt, b, &c, 1);
    free(a->x);
    *a = (ref_act){y, c.cout, oh, ow};
}

static void ref_relu(ref_act *a)
{
    for (size_t i = 0; i < (size_t)a->c * a->h * a->w; i++)
        a->x[i] = a->x[i] > 0 ? a->x[i] : 0;
}

static void ref_half(ref_act *a, const diffuse_weights *w, const char *side, bool decoder)
{
    char prefix[64], name[128], probe[160];
    snprintf(prefix, sizeof prefix, "taesd.%s.layers.", side);
    const int count = diffuse_weights_max_index(w, prefix);
    for (int i = 0; i < count; i++) {
        snprintf(name, sizeof name, "%s%d", prefix, i);
        snprintf(probe, sizeof probe, "%s.weight", name);
        if (diffuse_weights_has(w, probe)) {
            ref_conv(a, w, name, !decoder && i > 0 && i < count - 1 ? 2 : 1);
            continue;
        }
        snprintf(probe, sizeof probe, "%s.conv.0.weight", name);
        if (diffuse_weights_has(w, probe)) { /* relu(c3(relu(c2(relu(c1 x)))) + x) */
            ref_act t = {malloc(sizeof(float) * a->c * a->h * a->w), a->c, a->h, a->w};
            memcpy(t.x, a->x, sizeof(float) * a->c * a->h * a->w);
            for (int k = 0; k < 3; k++) {
                snprintf(probe, sizeof probe, "%s.conv.%d", name, 2 * k);
                ref_conv(&t, w, probe, 1);
                if (k < 2)
                    ref_relu(&t);
            }
            for (size_t j = 0; j < (size_t)a->c * a->h * a->w; j++)
                a->x[j] += t.x[j];
            ref_relu(a);
            free(t.x);
        } else if (decoder && i == 1) {
            ref_relu(a);
        } else { /* nearest 2x */
            float *y = malloc(sizeof(float) * a->c * 4 * a->h * a->w);
            for (int c = 0; c < a->c; c++)
                for (int r = 0; r < 2 * a->h; r++)
                    for (int q = 0; q < 2 * a->w; q++)
                        y[((size_t)c * 2 * a->h + r) * 2 * a->w + q] =
                            a->x[((size_t)c * a->h + r / 2) * a->w + q / 2];
            free(a->x);
            *a = (ref_act){y, a->c, 2 * a->h, 2 * a->w};
        }
    }
}

static float *randn(size_t n, uint64_t seed, float scale)
{
    diffuse_rng rng;
    float *x = malloc(sizeof(float) * n);
    diffuse_rng_seed(&rng, seed);
    diffuse_rng_normal(&rng, x, n);
    for (size_t i = 0; i < n; i++)
        x[i] *= scale;
    return x;
}

static void check_direct(const diffuse_taesd *t)
{
    char err[DIFFUSE_ERROR_SIZE];
    const int h = 40, w = 72; /* latents 5x9: odd, and several bands at every size */
    const diffuse_weights *wt = diffuse_taesd_weights(t);
    float *lat = randn((size_t)4 * 5 * 9, 11, 1.5f), *img = randn((size_t)3 * h * w, 12, 0.5f);
    float *out[2] = {malloc(sizeof(float) * 3 * h * w), malloc(sizeof(float) * 3 * h * w)};
    float *enc[2] = {malloc(sizeof(float) * 4 * 5 * 9), malloc(sizeof(float) * 4 * 5 * 9)};
    diffuse_arena a;
    CHECK(diffuse_arena_init(&a, diffuse_taesd_workspace(t, h, w), err) == 0, "arena: %s", err);
    /* the blocked path keeps its weights in oneDNN's layouts from the first run on */
    const size_t kept = diffuse_taesd_pending_bytes(t, true, h, w);
    const char *conv = getenv("DIFFUSE_CONV");
    CHECK(kept > 0 || !diffuse_dnnl_block() || (conv && strcmp(conv, "im2col") == 0),
          "no TAESD weights to keep with oneDNN");
    for (int threads = 1; threads <= 2; threads++) {
        diffuse_pool_set_threads(threads);
        CHECK(diffuse_taesd_decode(t, out[threads - 1], lat, h, w, &a, NULL, err) == 0,
              "decode at %d threads: %s", threads, err);
        CHECK(diffuse_taesd_encode(t, enc[threads - 1], img, h, w, &a, NULL, err) == 0,
              "encode at %d threads: %s", threads, err);
    }
    diffuse_pool_set_threads(0);
    CHECK(memcmp(out[0], out[1], sizeof(float) * 3 * h * w) == 0,
          "decode differs between 1 and 2 threads");
    CHECK(memcmp(enc[0], enc[1], sizeof(float) * 4 * 5 * 9) == 0,
          "encode differs between 1 and 2 threads");
    CHECK(diffuse_taesd_pending_bytes(t, true, h, w) == 0 &&
              diffuse_taesd_pending_bytes(t, false, h, w) == 0,
          "TAESD weights still to keep after a decode and an encode");
    /* each half counts the flops and layers its plan says, on either path */
    for (int banded = 0; banded <= 1; banded++) {
        if (banded)
            setenv("DIFFUSE_TAESD", "banded", 1);
        for (int dec = 0; dec <= 1; dec++) {
            diffuse_plan p = diffuse_taesd_plan(t, dec, h, w);
            const double f0 = a.flops, l0 = a.layers;
            CHECK((dec ? diffuse_taesd_decode(t, out[1], lat, h, w, &a, NULL, err)
                       : diffuse_taesd_encode(t, enc[1], img, h, w, &a, NULL, err)) == 0,
                  "%s: %s", dec ? "decode" : "encode", err);
            CHECK(a.flops - f0 == p.flops && a.layers - l0 == p.layers && p.flops > 0,
                  "%s %s: %.6g flops, %.0f layers run; %.6g, %.0f planned",
                  banded ? "banded" : "default", dec ? "decode" : "encode", a.flops - f0,
                  a.layers - l0, p.flops, p.layers);
        }
        unsetenv("DIFFUSE_TAESD");
    }
    /* another size runs without the kept weights (they are for 40x72) */
    {
        float *lat2 = randn((size_t)4 * 3 * 2, 13, 1.5f),
              *out2 = malloc(sizeof(float) * 3 * 24 * 16);
        CHECK(diffuse_taesd_decode(t, out2, lat2, 24, 16, &a, NULL, err) == 0, "decode 16x24: %s",
              err);
        ref_act d2 = {malloc(sizeof(float) * 4 * 3 * 2), 4, 3, 2};
        for (int i = 0; i < 4 * 3 * 2; i++)
            d2.x[i] = tanhf(lat2[i] / 3.0f) * 3.0f;
        ref_half(&d2, wt, "decoder", true);
        double e2 = test_rel_err(out2, d2.x, (size_t)3 * 24 * 16, NULL);
        CHECK(e2 < 1e-5, "decode at 16x24 against the direct computation: rel err %.3g", e2);
        free(lat2);
        free(out2);
        free(d2.x);
    }
    ref_act d = {malloc(sizeof(float) * 4 * 5 * 9), 4, 5, 9};
    for (int i = 0; i < 4 * 5 * 9; i++)
        d.x[i] = tanhf(lat[i] / 3.0f) * 3.0f;
    ref_half(&d, wt, "decoder", true);
    CHECK(d.c == 3 && d.h == h && d.w == w, "reference decoder made %dx%dx%d", d.c, d.h, d.w);
    double e = test_rel_err(out[0], d.x, (size_t)3 * h * w, NULL);
    CHECK(e < 1e-5, "decode at %dx%d against the direct computation: rel err %.3g", w, h, e);
    /* another backend at the size whose weights are kept: other layouts, not those */
    diffuse_conv_set_backend(DIFFUSE_CONV_DIRECT);
    CHECK(diffuse_taesd_decode(t, out[1], lat, h, w, &a, NULL, err) == 0, "decode: %s", err);
    diffuse_conv_set_backend(DIFFUSE_CONV_AUTO);
    e = test_rel_err(out[1], d.x, (size_t)3 * h * w, NULL);
    CHECK(e < 1e-5, "decode with the direct backend after the default: rel err %.3g", e);
    ref_act x = {malloc(sizeof(float) * 3 * h * w), 3, h, w};
    for (int i = 0; i < 3 * h * w; i++)
        x.x[i] = (img[i] + 1.0f) / 2.0f;
    ref_half(&x, wt, "encoder", false);
    CHECK(x.c == 4 && x.h == 5 && x.w == 9, "reference encoder made %dx%dx%d", x.c, x.h, x.w);
    e = test_rel_err(enc[0], x.x, (size_t)4 * 5 * 9, NULL);
    CHECK(e < 1e-5, "encode at %dx%d against the direct computation: rel err %.3g", w, h, e);
    /* a short arena fails cleanly */
    diffuse_arena small;
    if (diffuse_arena_init(&small, diffuse_taesd_workspace(t, h, w) / 2, err) == 0) {
        CHECK(diffuse_taesd_decode(t, out[0], lat, h, w, &small, NULL, err) == -1 &&
                  strstr(err, "memory"),
              "short arena: '%s'", err);
        diffuse_arena_free(&small);
    }
    CHECK(diffuse_taesd_decode(t, out[0], lat, 60, w, &a, NULL, err) == -1 && strstr(err, "60"),
          "a height of 60 accepted: '%s'", err);
    diffuse_arena_free(&a);
    free(d.x);
    free(x.x);
    free(lat);
    free(img);
    for (int i = 0; i < 2; i++) {
        free(out[i]);
        free(enc[i]);
    }
}

static void check_load_errors(const char *dir, const char *tmp)
{
    char err[DIFFUSE_ERROR_SIZE] = "", path[4096], src[4096];
    diffuse_taesd *t = NULL;
    CHECK(diffuse_taesd_load("/nonexistent/taesd", &t, err) == DIFFUSE_ERR_IO && !t &&
              strstr(err, "/nonexistent/taesd"),
          "missing path: '%s'", err);
    CHECK(diffuse_taesd_load("tests/fixtures/ok_valid.safetensors", &t, err) ==
                  DIFFUSE_ERR_FORMAT &&
              !t && strstr(err, "not a TAESD"),
          "a safetensors that is no TAESD: '%s'", err);
    CHECK(diffuse_taesd_load("tests/fixtures", &t, err) == DIFFUSE_ERR_FORMAT && !t &&
              strstr(err, "no TAESD"),
          "a folder without one: '%s'", err);
    /* the decoder alone: decodes, refuses to encode */
    snprintf(path, sizeof path, "%s/taesd_decoder.safetensors", dir);
    if (!realpath(path, src)) /* the link's target: absolute */
        snprintf(src, sizeof src, "%s", path);
    snprintf(path, sizeof path, "%s/only_decoder.safetensors", tmp);
    CHECK(symlink(src, path) == 0, "symlink %s", path);
    CHECK(diffuse_taesd_load(path, &t, err) == 0, "decoder alone: %s", err);
    if (t) {
        CHECK(diffuse_taesd_has(t, true) && !diffuse_taesd_has(t, false),
              "halves of a decoder file");
        diffuse_arena a;
        float img[3 * 64], lat[4];
        if (diffuse_arena_init(&a, diffuse_taesd_workspace(t, 8, 8), err) == 0) {
            CHECK(diffuse_taesd_encode(t, lat, img, 8, 8, &a, NULL, err) == -1 &&
                      strstr(err, "no encoder"),
                  "encode without an encoder: '%s'", err);
            diffuse_arena_free(&a);
        }
        diffuse_taesd_free(t);
    }
    unlink(path);
}

/* diffuse_generate with fast decode: deterministic, in range, not the VAE's
 * image; without a TAESD it is refused by name. */
static void check_pipeline(const char *model_dir, const char *taesd_dir)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_load_params p = diffuse_load_params_default();
    diffuse_model *plain = diffuse_model_load(model_dir, &p, err, sizeof err);
    p.taesd_path = taesd_dir;
    diffuse_model *fast = diffuse_model_load(model_dir, &p, err, sizeof err);
    CHECK(plain && fast, "load: %s", err);
    if (!plain || !fast)
        goto done;
    diffuse_request r = diffuse_request_default();
    r.prompt = "a red circle on a blue background";
    r.width = r.height = 64;
    r.steps = 3;
    r.seed = 9;
    diffuse_image vae, taesd, again;
    r.fast_decode = 1;
    CHECK(diffuse_generate(plain, &r, &vae, err, sizeof err) == DIFFUSE_ERR_ARGUMENT &&
              strstr(err, "TAESD"),
          "fast decode without a TAESD: '%s'", err);
    r.fast_decode = 0;
    CHECK(diffuse_generate(fast, &r, &vae, err, sizeof err) == DIFFUSE_OK, "vae: %s", err);
    r.fast_decode = 1;
    CHECK(diffuse_generate(fast, &r, &taesd, err, sizeof err) == DIFFUSE_OK, "taesd: %s", err);
    CHECK(diffuse_generate(fast, &r, &again, err, sizeof err) == DIFFUSE_OK, "again: %s", err);
    size_t n = (size_t)3 * 64 * 64, out = 0;
    for (size_t i = 0; i < n; i++)
        out += !(taesd.pixels[i] >= 0 && taesd.pixels[i] <= 1);
    CHECK(out == 0, "%zu values outside [0, 1] (or NaN)", out);
    CHECK(memcmp(taesd.pixels, again.pixels, sizeof(float) * n) == 0, "same seed, other pixels");
    CHECK(memcmp(taesd.pixels, vae.pixels, sizeof(float) * n) != 0, "TAESD gave the VAE's image");
    /* img2img through the TAESD encoder */
    r.init_image = vae.pixels;
    r.strength = 0.5f;
    r.fast_encode = 1;
    diffuse_image i2i;
    diffuse_stats st;
    diffuse_cost cost = diffuse_request_cost(fast, &r);
    r.stats = &st;
    CHECK(diffuse_generate(fast, &r, &i2i, err, sizeof err) == DIFFUSE_OK, "fast img2img: %s", err);
    /* the cost planned before: TAESD's encode and decode, as the run counted them */
    CHECK(cost.vae_gflop == st.vae_gflop && cost.unet_gflop == st.unet_gflop && cost.seconds > 0,
          "fast img2img: planned %g/%g GFLOP, counted %g/%g", cost.unet_gflop, cost.vae_gflop,
          st.unet_gflop, st.vae_gflop);
    diffuse_image_free(&i2i);
    diffuse_image_free(&vae);
    diffuse_image_free(&taesd);
    diffuse_image_free(&again);
done:
    diffuse_model_free(plain);
    diffuse_model_free(fast);
}

int main(void)
{
    char buf[4096], buf2[4096], err[DIFFUSE_ERROR_SIZE];
    const char *dir = test_shared("reference/taesd", buf);
    const char *model = test_shared("reference/sd1-tiny/model-diffusers", buf2);
    char tmp[] = "/tmp/test_taesd.XXXXXX";
    if (!mkdtemp(tmp)) {
        printf("FAIL mkdtemp\n");
        return 1;
    }
    if (dir) {
        char path[4096];
        diffuse_taesd *t = NULL;
        snprintf(path, sizeof path, "%s/model-diffusers", dir);
        CHECK(diffuse_taesd_load(path, &t, err) == 0, "load %s: %s", path, err);
        if (t)
            check_direct(t);
        diffuse_taesd_free(t);
        check_load_errors(dir, tmp);
        if (model)
            check_pipeline(model, path);
    }
    rmdir(tmp);
    TEST_END();
}
