/* test_sd2_layout.c: the SD 2.x single-file layout (OpenCLIP text encoder
 * under cond_stage_model.model.*, fused in_proj, linear proj_in/proj_out, 1x1
 * conv VAE attention) read through the canonical names.
 *
 * The fixture $BUILD/fixtures/sd2-tiny-ldm.safetensors is the sd1-tiny
 * diffusers folder rewritten in that layout by tests/fixtures/make_sd2_ldm.py
 * (make test builds it), with one extra OpenCLIP block that SD 2.x skips (the
 * last real block with mlp.c_proj and attn.out_proj negated) and decoys the
 * engine must ignore. So every canonical weight must equal the folder's, bit
 * for bit, and the extra block must be loadable but never run. */
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../engine/internal.h"
#include "test.h"

#define PROMPT "a red circle on a blue background"

/* ------------------------------------------------------------------ helpers */

/* The fixture, or NULL after a failure (CI=true) or a skip notice. */
static const char *fixture_path(char *buf)
{
    const char *build = getenv("BUILD");
    struct stat st;
    snprintf(buf, 4096, "%s/fixtures/sd2-tiny-ldm.safetensors", build && *build ? build : "build");
    if (stat(buf, &st) == 0)
        return buf;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0) {
        test_failed++;
        printf("FAIL missing fixture %s (CI=true; make %s builds it)\n", buf, buf);
    } else {
        printf("SKIP missing fixture %s (make %s builds it from ../shared)\n", buf, buf);
    }
    return NULL;
}

static int strip_ones(int ndim, const int64_t *shape)
{
    while (ndim > 1 && shape[ndim - 1] == 1)
        ndim--;
    return ndim;
}

static int64_t numel_of(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

/* float32 view of a weight at its own shape, trailing 1-dims dropped. */
static const float *get_any(diffuse_weights *w, const char *name, int64_t *n, char *err)
{
    int64_t shape[DIFFUSE_MAX_DIMS];
    int nd = diffuse_weights_shape(w, name, shape);
    if (nd < 0) {
        snprintf(err, DIFFUSE_ERROR_SIZE, "missing %s", name);
        return NULL;
    }
    nd = strip_ones(nd, shape);
    *n = numel_of(nd, shape);
    return diffuse_weights_get(w, name, nd, shape, err);
}

/* Folder -> fixture, per canonical name of the folder: present, same shape up
 * to trailing ones, same float32 bits. */
typedef struct {
    diffuse_weights *dir, *fix;
    int total, missing, shape, values;
    char first[600];
} cmp_ctx;

static void note(cmp_ctx *c, int *counter, const char *what, const char *name)
{
    if (!c->missing && !c->shape && !c->values)
        snprintf(c->first, sizeof c->first, "%s: %s", name, what);
    (*counter)++;
}

static void compare_one(void *user, const char *name, int ndim, const int64_t *shape)
{
    cmp_ctx *c = user;
    char err[DIFFUSE_ERROR_SIZE] = "";
    int64_t s2[DIFFUSE_MAX_DIMS];
    c->total++;
    int nd2 = diffuse_weights_shape(c->fix, name, s2);
    if (nd2 < 0) {
        note(c, &c->missing, "missing", name);
        return;
    }
    int a = strip_ones(ndim, shape), b = strip_ones(nd2, s2);
    bool same = a == b;
    for (int i = 0; same && i < a; i++)
        same = shape[i] == s2[i];
    if (!same) {
        note(c, &c->shape, "another shape", name);
        return;
    }
    const float *x = diffuse_weights_get(c->dir, name, a, shape, err);
    const float *y = x ? diffuse_weights_get(c->fix, name, a, shape, err) : NULL;
    if (!x || !y)
        note(c, &c->shape, err, name);
    else if (memcmp(x, y, sizeof(float) * (size_t)numel_of(a, shape)) != 0)
        note(c, &c->values, "values differ", name);
}

/* Names of the fixture under a prefix that the folder lacks. */
typedef struct {
    diffuse_weights *dir;
    const char *allowed; /* extra prefix that may exist only in the fixture */
    int extra, allowed_count;
    char first[512];
} extra_ctx;

static void find_extra(void *user, const char *name, int ndim, const int64_t *shape)
{
    extra_ctx *e = user;
    if (diffuse_weights_has(e->dir, name))
        return;
    if (e->allowed && strncmp(name, e->allowed, strlen(e->allowed)) == 0) {
        e->allowed_count++;
        return;
    }
    if (!e->extra++)
        snprintf(e->first, sizeof e->first, "%s", name);
}

/* Whole file into memory (caller frees), or NULL. */
static unsigned char *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (len > 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len)) &&
        fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = len > 0 ? (size_t)len : 0;
    return buf;
}

static bool write_all(const char *path, const unsigned char *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return false;
    bool ok = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

/* ------------------------------------------------------------------ (a) weights */

static void test_weights(const char *fixture, const char *dirpath)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_weights *fix = NULL, *dir = NULL;
    CHECK(diffuse_weights_open(fixture, &fix, err) == 0, "open fixture: %s", err);
    CHECK(diffuse_weights_open(dirpath, &dir, err) == 0, "open diffusers folder: %s", err);
    if (!fix || !dir) {
        diffuse_weights_free(fix);
        diffuse_weights_free(dir);
        return;
    }
    CHECK(strcmp(diffuse_weights_layout(fix), "ldm") == 0, "layout %s",
          diffuse_weights_layout(fix));
    CHECK(diffuse_weights_openclip(fix), "OpenCLIP text encoder not recognised");
    CHECK(!diffuse_weights_openclip(dir), "a diffusers folder is not an OpenCLIP single file");
    CHECK(diffuse_weights_dtype(fix) == DIFFUSE_DTYPE_F16, "UNet dtype %d, expected F16",
          (int)diffuse_weights_dtype(fix));

    /* every canonical weight of the folder is in the fixture, same shape and bits;
     * the fixture has nothing else but the extra OpenCLIP block */
    static const char *parts[] = {"unet.", "vae.", "text."};
    for (int p = 0; p < 3; p++) {
        cmp_ctx c = {.dir = dir, .fix = fix};
        diffuse_weights_each(dir, parts[p], compare_one, &c);
        CHECK(c.total > 0 && !c.missing && !c.shape && !c.values,
              "%s: of %d weights of the folder, %d missing in the SD 2.x file, %d of another "
              "shape, %d with other values; first: %s",
              parts[p], c.total, c.missing, c.shape, c.values, c.first);
        const char *allowed = p == 2 ? "text.text_model.encoder.layers.3." : NULL;
        extra_ctx e = {.dir = dir, .allowed = allowed};
        diffuse_weights_each(fix, parts[p], find_extra, &e);
        CHECK(!e.extra, "%s: %d weights the folder lacks (decoys not ignored?); first: %s",
              parts[p], e.extra, e.first);
        if (allowed)
            CHECK(e.allowed_count == 16, "the extra OpenCLIP block gives %d weights, expected 16",
                  e.allowed_count);
        int64_t extra =
            p == 2 ? diffuse_weights_count(fix, "text.text_model.encoder.layers.3.") : 0;
        CHECK(diffuse_weights_count(fix, parts[p]) == diffuse_weights_count(dir, parts[p]) + extra,
              "%s parameter counts differ", parts[p]);
    }

    /* the layout really is SD 2.x's: linear proj_in/proj_out, 1x1 conv VAE attention */
    int64_t shp[DIFFUSE_MAX_DIMS];
    CHECK(diffuse_weights_shape(fix, "unet.mid_block.attentions.0.proj_in.weight", shp) == 2 &&
              diffuse_weights_shape(fix, "unet.down_blocks.0.attentions.1.proj_out.weight", shp) ==
                  2,
          "proj_in/proj_out are not [C, C] in the SD 2.x file");
    CHECK(diffuse_weights_shape(dir, "unet.mid_block.attentions.0.proj_in.weight", shp) == 4,
          "the folder's proj_in is a 1x1 conv");
    CHECK(diffuse_weights_shape(fix, "vae.decoder.mid_block.attentions.0.to_q.weight", shp) == 4 &&
              shp[2] == 1 && shp[3] == 1 &&
              diffuse_weights_shape(fix, "vae.encoder.mid_block.attentions.0.to_out.0.weight",
                                    shp) == 4,
          "VAE attention is not stored as 1x1 convs");
    /* in_proj split: q, k, v are row blocks of one tensor */
    CHECK(diffuse_weights_shape(fix, "text.text_model.encoder.layers.1.self_attn.k_proj.weight",
                                shp) == 2 &&
              shp[0] == 32 && shp[1] == 32,
          "k_proj from in_proj_weight has shape [%lld, %lld]", (long long)shp[0],
          (long long)shp[1]);
    CHECK(diffuse_weights_shape(fix, "text.text_model.encoder.layers.0.self_attn.v_proj.bias",
                                shp) == 1 &&
              shp[0] == 32,
          "v_proj.bias from in_proj_bias has %lld rows", (long long)shp[0]);

    /* the extra block: layer 2 with mlp.fc2 negated, attention q unchanged */
    int64_t n2 = 0, n3 = 0;
    const float *fc2_2 = get_any(fix, "text.text_model.encoder.layers.2.mlp.fc2.weight", &n2, err);
    const float *fc2_3 = get_any(fix, "text.text_model.encoder.layers.3.mlp.fc2.weight", &n3, err);
    bool negated = fc2_2 && fc2_3 && n2 == n3 && n2 > 0;
    for (int64_t i = 0; negated && i < n2; i++)
        negated = fc2_3[i] == -fc2_2[i];
    CHECK(negated, "layer 3 (the extra block) mlp.fc2 is not layer 2's negated: %s", err);
    const float *q2 =
        get_any(fix, "text.text_model.encoder.layers.2.self_attn.q_proj.weight", &n2, err);
    const float *q3 =
        get_any(fix, "text.text_model.encoder.layers.3.self_attn.q_proj.weight", &n3, err);
    CHECK(q2 && q3 && n2 == n3 && memcmp(q2, q3, sizeof(float) * (size_t)n2) == 0,
          "layer 3 q_proj is not layer 2's: %s", err);
    CHECK(!diffuse_weights_has(fix, "text.text_model.encoder.layers.4.mlp.fc1.weight"),
          "a fifth text layer appeared");

    diffuse_weights_free(fix);
    diffuse_weights_free(dir);
}

/* ------------------------------------------------------------------ (b, c, d) model */

static diffuse_model *load(const char *fixture, const char *vocab, diffuse_prediction pred,
                           char *err)
{
    diffuse_load_params p = diffuse_load_params_default();
    p.vocab_path = vocab;
    p.prediction = pred;
    return diffuse_model_load(fixture, &p, err, DIFFUSE_ERROR_SIZE);
}

static void test_info(diffuse_model *m, diffuse_model *eps)
{
    diffuse_model_info info;
    diffuse_model_get_info(m, &info);
    CHECK(info.family && strcmp(info.family, "sd2") == 0, "family %s", info.family);
    CHECK(info.layout && strcmp(info.layout, "ldm") == 0, "layout %s", info.layout);
    CHECK(info.dtype && strcmp(info.dtype, "f16") == 0, "dtype %s", info.dtype);
    CHECK(info.text_layers == 3, "text_layers %d, expected 3 (4 stored, the last skipped)",
          info.text_layers);
    CHECK(info.prediction == DIFFUSE_PREDICTION_V,
          "prediction %d, expected v (SD 2.x file default)", (int)info.prediction);
    CHECK(info.native_size == 768, "native size %d", info.native_size);
    CHECK(info.text_width == 32 && info.context_dim == 32 && info.vocab_size == 49408 &&
              info.unet_levels == 4 && info.unet_channels[0] == 32 && info.unet_channels[3] == 64 &&
              info.latent_channels == 4 && info.vae_scale == 8,
          "shapes: text %d, context %d, vocab %d, levels %d, channels %d..%d, latent %d, scale %d",
          info.text_width, info.context_dim, info.vocab_size, info.unet_levels,
          info.unet_channels[0], info.unet_channels[3], info.latent_channels, info.vae_scale);
    CHECK(m->unet_cfg.linear_proj, "the UNet's proj_in/proj_out not taken as linear");
    CHECK(m->clip_cfg.layers == 3 && m->clip_cfg.gelu && m->clip_cfg.pad_id == 0,
          "text encoder config: layers %d, gelu %d, pad %d (want 3, 1, 0)", m->clip_cfg.layers,
          (int)m->clip_cfg.gelu, (int)m->clip_cfg.pad_id);
    if (eps) {
        diffuse_model_get_info(eps, &info);
        CHECK(info.prediction == DIFFUSE_PREDICTION_EPSILON && strcmp(info.family, "sd2") == 0,
              "prediction override: %d (family %s)", (int)info.prediction, info.family);
    }
}

static void test_text(diffuse_model *m)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    int32_t ids[DIFFUSE_MAX_TOKENS];
    CHECK(diffuse_tokenizer_encode(m->tokenizer, PROMPT, m->clip_cfg.pad_id, ids, err) == 0,
          "tokenize: %s", err);
    CHECK(ids[0] == 49406 && ids[8] == 49407 && ids[9] == 0 && ids[DIFFUSE_MAX_TOKENS - 1] == 0,
          "ids %d .. %d %d .. %d: want <start> .. <end> then pad 0", ids[0], ids[8], ids[9],
          ids[DIFFUSE_MAX_TOKENS - 1]);

    /* the engine's encoder must be the 3-block one, and the 4th block must matter */
    diffuse_clip_config c3 = m->clip_cfg, c4 = m->clip_cfg;
    c3.layers = 3;
    c4.layers = 4;
    diffuse_clip *clip3 = NULL, *clip4 = NULL;
    CHECK(diffuse_clip_load(&c3, m->weights, &clip3, err) == 0, "load 3 layers: %s", err);
    CHECK(diffuse_clip_load(&c4, m->weights, &clip4, err) == 0, "load 4 layers: %s", err);
    c4.layers = 5;
    diffuse_clip *clip5 = NULL;
    CHECK(diffuse_clip_load(&c4, m->weights, &clip5, err) == -1 &&
              strstr(err, "text.text_model.encoder.layers.4."),
          "a fifth layer must be missing: %s", err);
    diffuse_clip_free(clip5);
    diffuse_arena a = {0};
    const size_t t = (size_t)DIFFUSE_MAX_TOKENS * m->clip_cfg.width;
    float *out = malloc(3 * t * sizeof(float));
    if (clip3 && clip4 && out &&
        diffuse_arena_init(&a, diffuse_clip_workspace(clip4, 1), err) == 0) {
        float *engine = out, *o3 = out + t, *o4 = out + 2 * t;
        CHECK(diffuse_clip_forward(m->clip, engine, ids, 1, &a, err) == 0, "engine's: %s", err);
        CHECK(diffuse_clip_forward(clip3, o3, ids, 1, &a, err) == 0, "3 layers: %s", err);
        CHECK(diffuse_clip_forward(clip4, o4, ids, 1, &a, err) == 0, "4 layers: %s", err);
        bool finite = true;
        for (size_t i = 0; i < 3 * t; i++)
            finite = finite && isfinite(out[i]);
        CHECK(finite, "text encoder output not finite");
        double d34, d_engine;
        double r = test_rel_err(o4, o3, t, &d34);
        test_rel_err(engine, o3, t, &d_engine);
        CHECK(d_engine == 0, "the engine's text encoder is not the 3-layer one (max diff %g)",
              d_engine);
        CHECK(r > 1e-2, "running the extra 4th block changes nothing (rel %g): test is blind", r);
    } else {
        CHECK(0, "text encoder setup: %s", err);
    }
    diffuse_arena_free(&a);
    free(out);
    diffuse_clip_free(clip3);
    diffuse_clip_free(clip4);
}

/* 64x64, 2 euler steps, seed 1: pixels finite in [0, 1]; pixels out (NULL: dropped). */
static void run_generate(diffuse_model *m, const char *what, float **pixels)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_request req = diffuse_request_default();
    req.prompt = PROMPT;
    req.steps = 2;
    req.sampler = DIFFUSE_SAMPLER_EULER;
    req.seed = 1;
    req.width = req.height = 64;
    diffuse_image img = {0};
    diffuse_status st = diffuse_generate(m, &req, &img, err, sizeof err);
    CHECK(st == DIFFUSE_OK, "%s generate: status %d: %s", what, (int)st, err);
    if (st != DIFFUSE_OK)
        return;
    CHECK(img.width == 64 && img.height == 64 && img.pixels, "%s image %dx%d", what, img.width,
          img.height);
    size_t bad = 0, n = (size_t)64 * 64 * 3;
    float lo = 1, hi = 0;
    for (size_t i = 0; img.pixels && i < n; i++) {
        float v = img.pixels[i];
        if (!(v >= 0 && v <= 1))
            bad++;
        else {
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    }
    CHECK(img.pixels && bad == 0, "%s: %zu pixels not finite in [0, 1]", what, bad);
    CHECK(hi > lo, "%s: a flat image (%g)", what, lo);
    if (pixels && img.pixels && (*pixels = malloc(n * sizeof(float))))
        memcpy(*pixels, img.pixels, n * sizeof(float));
    diffuse_image_free(&img);
}

/* ------------------------------------------------------------------ (e) damaged files */

/* Replaces the first byte of `name` in the header by 'x' (the tensor keeps its
 * data but no longer belongs to any component), as a copy at path. */
static bool write_without(const unsigned char *data, size_t size, const char *name,
                          const char *path)
{
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | data[i];
    if (size < 8 || hlen > size - 8)
        return false;
    char quoted[256];
    snprintf(quoted, sizeof quoted, "\"%s\"", name);
    unsigned char *copy = malloc(size);
    if (!copy)
        return false;
    memcpy(copy, data, size);
    unsigned char *hit = memmem(copy + 8, (size_t)hlen, quoted, strlen(quoted));
    bool ok = hit && (hit[1] = 'x', write_all(path, copy, size));
    free(copy);
    return ok;
}

/* Loads path in a child process (a crash must be a failed case, not a lost
 * run): true when the load was refused, its message in got; otherwise got
 * says what happened instead. */
static bool load_in_child(const char *path, const char *vocab, char *got, size_t size)
{
    int pipefd[2], status = 0;
    fflush(stdout);
    pid_t pid = pipe(pipefd) == 0 ? fork() : -1;
    if (pid < 0) {
        snprintf(got, size, "pipe/fork: %s", strerror(errno));
        return false;
    }
    if (pid == 0) { /* exit 0 when refused, 42 when loaded */
        char err[DIFFUSE_ERROR_SIZE] = "";
        close(pipefd[0]);
        diffuse_model *m = load(path, vocab, DIFFUSE_PREDICTION_AUTO, err);
        if (m) {
            diffuse_model_info info;
            diffuse_model_get_info(m, &info);
            snprintf(err, sizeof err,
                     "loaded: %d text layers, UNet levels with attention %d%d%d%d, "
                     "VAE mid attention %d",
                     info.text_layers, m->unet_cfg.cross_attn[0], m->unet_cfg.cross_attn[1],
                     m->unet_cfg.cross_attn[2], m->unet_cfg.cross_attn[3],
                     (int)m->vae_cfg.mid_attention);
        }
        ssize_t wr = write(pipefd[1], err, strlen(err));
        (void)wr;
        close(pipefd[1]);
        const int loaded = m != NULL;
        diffuse_model_free(m);
        _exit(loaded ? 42 : 0);
    }
    close(pipefd[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < size && (r = read(pipefd[0], got + n, size - 1 - n)) > 0)
        n += (size_t)r;
    got[n] = 0;
    close(pipefd[0]);
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        snprintf(got, size, "crashed with signal %d", WTERMSIG(status));
    else if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 42)
        snprintf(got, size, "the load exited with status %d (a sanitizer or valgrind error?)",
                 WEXITSTATUS(status));
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void test_damaged(const char *fixture, const char *vocab)
{
    char err[DIFFUSE_ERROR_SIZE] = "", path[256];
    size_t size = 0;
    unsigned char *data = read_all(fixture, &size);
    CHECK(data && size > 4096, "read %s: %s", fixture, strerror(errno));
    if (!data)
        return;

    /* truncated: the tail of the data is gone */
    snprintf(path, sizeof path, "/tmp/diffuse-sd2-truncated-%d.safetensors", (int)getpid());
    CHECK(write_all(path, data, size - 1000), "write %s", path);
    diffuse_weights *w = NULL;
    CHECK(diffuse_weights_open(path, &w, err) == DIFFUSE_ERR_FORMAT && !w && strstr(err, path) &&
              strstr(err, "outside"),
          "truncated file: %s", err);
    diffuse_model *m = load(path, vocab, DIFFUSE_PREDICTION_AUTO, err);
    CHECK(!m && strstr(err, path), "truncated file loads as a model: %s", err);
    diffuse_model_free(m);
    unlink(path);

    /* one tensor gone: the load must refuse, naming the canonical weight */
    static const struct {
        const char *tensor, *weight;
    } cases[] = {
        /* the fused OpenCLIP attention of a block that runs */
        {"cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
         "text.text_model.encoder.layers.1.self_attn.q_proj.weight"},
        {"cond_stage_model.model.transformer.resblocks.2.attn.out_proj.bias",
         "text.text_model.encoder.layers.2.self_attn.out_proj.bias"},
        /* a linear proj_out in an up level, a 1x1-conv VAE attention weight */
        {"model.diffusion_model.output_blocks.4.1.proj_out.weight",
         "unet.up_blocks.1.attentions.1.proj_out.weight"},
        {"first_stage_model.decoder.mid.attn_1.v.weight",
         "vae.decoder.mid_block.attentions.0.to_v.weight"},
        /* tensors the configuration is inferred from: a gap must not shrink
         * the model (fewer text blocks, a level or the VAE without attention)
         * nor crash the load */
        {"cond_stage_model.model.transformer.resblocks.2.mlp.c_fc.weight",
         "text.text_model.encoder.layers.2.mlp.fc1.weight"},
        {"model.diffusion_model.input_blocks.1.1.proj_in.weight",
         "unet.down_blocks.0.attentions.0.proj_in.weight"},
        {"first_stage_model.encoder.mid.attn_1.q.weight",
         "vae.encoder.mid_block.attentions.0.to_q.weight"},
        /* (NULL: any refusal that names the file) */
        {"model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "/tmp/diffuse-sd2-missing-%d.safetensors", (int)getpid());
        CHECK(write_without(data, size, cases[i].tensor, path), "write %s without %s", path,
              cases[i].tensor);
        char got[DIFFUSE_ERROR_SIZE + 64] = "";
        const bool refused = load_in_child(path, vocab, got, sizeof got);
        const bool named = cases[i].weight ? strstr(got, cases[i].weight) && strstr(got, "missing")
                                           : strstr(got, path) != NULL;
        CHECK(refused && named, "without %s: want an error naming %s, got: %s", cases[i].tensor,
              cases[i].weight ? cases[i].weight : path, got);
        unlink(path);
    }
    free(data);
}

/* ------------------------------------------------------------------ main */

int main(void)
{
    char fbuf[4096], dbuf[4096], vbuf[4096], err[DIFFUSE_ERROR_SIZE] = "";
    const char *fixture = fixture_path(fbuf);
    const char *dir = test_shared("reference/sd1-tiny/model-diffusers", dbuf);
    const char *vocab = test_shared("clip/bpe_simple_vocab_16e6.txt.gz", vbuf);
    if (fixture && dir)
        test_weights(fixture, dir);
    if (fixture && vocab) {
        diffuse_model *m = load(fixture, vocab, DIFFUSE_PREDICTION_AUTO, err);
        CHECK(m, "load %s: %s", fixture, err);
        diffuse_model *eps = load(fixture, vocab, DIFFUSE_PREDICTION_EPSILON, err);
        CHECK(eps, "load %s with prediction epsilon: %s", fixture, err);
        if (m) {
            test_info(m, eps);
            test_text(m);
            float *pv = NULL, *pe = NULL;
            run_generate(m, "v-prediction", &pv);
            if (eps)
                run_generate(eps, "epsilon", &pe);
            if (pv && pe) {
                double d;
                test_rel_err(pv, pe, (size_t)64 * 64 * 3, &d);
                CHECK(d > 1e-3, "v-prediction and epsilon runs give the same image (max diff %g)",
                      d);
            }
            free(pv);
            free(pe);
        }
        diffuse_model_free(m);
        diffuse_model_free(eps);
        test_damaged(fixture, vocab);
    }
    TEST_END();
}
