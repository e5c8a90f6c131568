/* test_conditioning.c: A1111's prompt language through the text encoders
 * (conditioning.c), on the reference models.
 *
 * Each rule is checked against the plain computation it stands for, exactly:
 * a BREAK or a prompt over 75 tokens gives the chunks' encodings one after the
 * other; weights are the plain encoding with A1111's emphasis applied; clip
 * skip N is the encoder's state N - 1 blocks before the last, through the final
 * LayerNorm (SD 1.x; SDXL ignores it); SDXL's pooled embedding comes from the
 * first chunk. Then whole runs: a prompt and a negative prompt of different
 * lengths, and the errors. */
#include "../engine/internal.h"
#include "test.h"

typedef struct encoded {
    int tokens;
    float *context; /* [tokens, ctx] */
    float *pooled;  /* [pooled] or NULL */
} encoded;

static encoded encode(diffuse_model *m, const char *text, int clip_skip)
{
    char err[DIFFUSE_ERROR_SIZE];
    encoded e = {0};
    diffuse_arena a;
    const int ctx = diffuse_cond_context_dim(m), pd = diffuse_cond_pooled_dim(m);
    if (diffuse_cond_tokens(m, text, &e.tokens, err) ||
        diffuse_arena_init(&a, diffuse_cond_workspace(m), err)) {
        CHECK(0, "\"%s\": %s", text, err);
        return e;
    }
    e.context = malloc(sizeof(float) * e.tokens * ctx);
    e.pooled = pd ? malloc(sizeof(float) * pd) : NULL;
    CHECK(diffuse_cond_encode(m, text, clip_skip, e.context, e.pooled, &a, err) == 0,
          "encode \"%s\": %s", text, err);
    CHECK(!a.overflow, "\"%s\": within the workspace", text);
    diffuse_arena_free(&a);
    return e;
}

static void encoded_free(encoded *e)
{
    free(e->context);
    free(e->pooled);
}

static bool same(const float *a, const float *b, size_t n)
{
    return a && b && memcmp(a, b, n * sizeof *a) == 0;
}

static void test_chunks(diffuse_model *m, const char *name)
{
    const size_t row = (size_t)DIFFUSE_MAX_TOKENS * diffuse_cond_context_dim(m);
    const int pd = diffuse_cond_pooled_dim(m);
    encoded both = encode(m, "a red circle BREAK on a blue background", 0);
    encoded one = encode(m, "a red circle", 0), two = encode(m, "on a blue background", 0);
    CHECK(both.tokens == 2 * DIFFUSE_MAX_TOKENS, "%s: BREAK makes 2 chunks (%d rows)", name,
          both.tokens);
    if (both.tokens == 2 * DIFFUSE_MAX_TOKENS)
        CHECK(same(both.context, one.context, row) && same(both.context + row, two.context, row),
              "%s: BREAK: the chunks encoded one after the other", name);
    if (pd)
        CHECK(same(both.pooled, one.pooled, pd), "%s: pooled from the first chunk", name);
    encoded_free(&both);
    encoded_free(&one);
    encoded_free(&two);
    /* 100 words: 75 in the first chunk, 25 in the second */
    char text[1024] = "", first[1024] = "", rest[1024] = "";
    for (int i = 0; i < 100; i++)
        strcat(i < 75 ? first : rest, i % 2 ? "red " : "circle ");
    strcat(strcpy(text, first), rest);
    encoded longp = encode(m, text, 0), a = encode(m, first, 0), b = encode(m, rest, 0);
    CHECK(longp.tokens == 2 * DIFFUSE_MAX_TOKENS && same(longp.context, a.context, row) &&
              same(longp.context + row, b.context, row),
          "%s: 100 words are chunks of 75 and 25", name);
    encoded_free(&longp);
    encoded_free(&a);
    encoded_free(&b);
}

static void test_weights(diffuse_model *m, const char *name)
{
    const int ctx = diffuse_cond_context_dim(m);
    encoded w = encode(m, "a (red:1.3) [circle]", 0), plain = encode(m, "a red circle", 0);
    float weights[DIFFUSE_MAX_TOKENS];
    for (int i = 0; i < DIFFUSE_MAX_TOKENS; i++)
        weights[i] = i == 2 ? 1.3f : i == 3 ? (float)(1 / 1.1) : 1.0f;
    if (plain.context && w.context) {
        /* each encoder's columns get their own emphasis */
        diffuse_prompt_emphasis(plain.context, ctx, m->clip_cfg.width, weights);
        if (m->clip2)
            diffuse_prompt_emphasis(plain.context + m->clip_cfg.width, ctx, m->clip2_cfg.width,
                                    weights);
        CHECK(same(w.context, plain.context, (size_t)DIFFUSE_MAX_TOKENS * ctx),
              "%s: weights are the plain encoding with A1111's emphasis", name);
    }
    encoded_free(&w);
    encoded_free(&plain);
}

static void test_clip_skip(diffuse_model *m, const char *name)
{
    char err[DIFFUSE_ERROR_SIZE];
    const int ctx = diffuse_cond_context_dim(m);
    const size_t row = (size_t)DIFFUSE_MAX_TOKENS * ctx;
    encoded s1 = encode(m, "a red circle", 1), s0 = encode(m, "a red circle", 0);
    encoded s2 = encode(m, "a red circle", 2);
    CHECK(same(s1.context, s0.context, row), "%s: clip skip 1 is no skip", name);
    if (!diffuse_cond_clip_skips(m)) {
        CHECK(same(s2.context, s0.context, row), "%s: clip skip does not apply (as A1111)", name);
    } else {
        int32_t ids[DIFFUSE_MAX_TOKENS];
        float *want = malloc(sizeof(float) * row);
        diffuse_arena a;
        diffuse_arena_init(&a, diffuse_cond_workspace(m), err);
        CHECK(diffuse_tokenizer_encode(m->tokenizer, "a red circle", m->clip_cfg.pad_id, ids,
                                       err) == 0 &&
                  diffuse_clip_hidden(m->clip, ids, 1, m->clip_cfg.layers - 1, true, want, &a,
                                      err) == 0,
              "hidden: %s", err);
        CHECK(same(s2.context, want, row) && !same(s2.context, s0.context, row),
              "%s: clip skip 2 is the penultimate state, final-normed", name);
        diffuse_arena_free(&a);
        free(want);
    }
    encoded_free(&s0);
    encoded_free(&s1);
    encoded_free(&s2);
}

static diffuse_status run(diffuse_model *m, const char *prompt, const char *negative, int clip_skip,
                          diffuse_image *img, char *err)
{
    diffuse_request r = diffuse_request_default();
    r.prompt = prompt;
    r.negative_prompt = negative;
    r.clip_skip = clip_skip;
    r.width = r.height = 64;
    r.steps = 2;
    r.seed = 5;
    return diffuse_generate(m, &r, img, err, DIFFUSE_ERROR_SIZE);
}

static void test_runs(diffuse_model *m, const char *name)
{
    char err[DIFFUSE_ERROR_SIZE], text[1024] = "";
    for (int i = 0; i < 90; i++)
        strcat(text, "blue ");
    diffuse_image a = {0}, b = {0}, c = {0};
    /* the prompt has 2 chunks, the negative 1: two UNet passes a step */
    CHECK(run(m, text, "green", 0, &a, err) == DIFFUSE_OK, "%s: long prompt: %s", name, err);
    CHECK(run(m, text, "green", 0, &b, err) == DIFFUSE_OK, "%s: again: %s", name, err);
    CHECK(run(m, "blue", "green BREAK red", 0, &c, err) == DIFFUSE_OK, "%s: long negative: %s",
          name, err);
    if (a.pixels && b.pixels) {
        const size_t n = (size_t)3 * a.width * a.height;
        bool finite = true;
        for (size_t i = 0; i < n; i++)
            finite = finite && isfinite(a.pixels[i]);
        CHECK(finite && same(a.pixels, b.pixels, n), "%s: finite and repeatable", name);
    }
    diffuse_image_free(&a);
    diffuse_image_free(&b);
    diffuse_image_free(&c);
    /* both batched (equal chunk counts), so only the context differs */
    diffuse_request r = diffuse_request_default(), l = r;
    r.prompt = r.negative_prompt = "blue";
    l.prompt = l.negative_prompt = text;
    CHECK(diffuse_request_memory(m, &l) > diffuse_request_memory(m, &r),
          "%s: a longer context counts in the memory estimate", name);
    /* errors name what is wrong */
    char *huge = malloc(200000), *p = huge;
    for (int i = 0; i < 75 * DIFFUSE_MAX_PROMPT_CHUNKS + 1; i++)
        p += sprintf(p, "a ");
    CHECK(run(m, huge, NULL, 0, &a, err) == DIFFUSE_ERR_ARGUMENT && strstr(err, "prompt") &&
              strstr(err, "chunks"),
          "%s: too long: %s", name, err);
    CHECK(run(m, "a", huge, 0, &a, err) == DIFFUSE_ERR_ARGUMENT &&
              !strncmp(err, "negative prompt", 15),
          "%s: too long a negative prompt says so: %s", name, err);
    CHECK(run(m, "(a:1.2.3)", NULL, 0, &a, err) == DIFFUSE_ERR_ARGUMENT &&
              strstr(err, "not a weight"),
          "%s: bad weight: %s", name, err);
    CHECK(run(m, "a", NULL, DIFFUSE_MAX_CLIP_SKIP + 1, &a, err) == DIFFUSE_ERR_ARGUMENT &&
              strstr(err, "clip skip"),
          "%s: clip skip out of range: %s", name, err);
    free(huge);
}

/* diffuse_request_cost counts, before a run, the GFLOP the run then counts:
 * batched and one-at-a-time guidance, img2img (an encode and fewer steps),
 * two images. */
static void test_cost(diffuse_model *m, const char *name, const char *long_prompt)
{
    char err[DIFFUSE_ERROR_SIZE];
    float init[3 * 64 * 64];
    for (int i = 0; i < 3 * 64 * 64; i++)
        init[i] = (float)(i % 7) / 7.0f;
    for (int k = 0; k < 3; k++) {
        diffuse_request r = diffuse_request_default();
        diffuse_stats st;
        r.prompt = k == 1 ? long_prompt : "blue";
        r.negative_prompt = "green";
        r.width = r.height = 64;
        r.steps = 3;
        r.count = k == 2 ? 2 : 1;
        if (k == 2) {
            r.init_image = init;
            r.strength = 0.5f;
        }
        diffuse_cost c = diffuse_request_cost(m, &r);
        diffuse_image img[2] = {{0}};
        r.stats = &st;
        CHECK(diffuse_generate(m, &r, img, err, sizeof err) == DIFFUSE_OK, "%s: %s", name, err);
        CHECK(c.seconds > 0 && c.unet_gflop > 0 && c.vae_gflop > 0 && c.text_gflop > 0,
              "%s case %d: cost %g s", name, k, c.seconds);
        CHECK(fabs(c.unet_gflop - st.unet_gflop) <= 1e-9 * st.unet_gflop &&
                  fabs(c.vae_gflop - st.vae_gflop) <= 1e-9 * st.vae_gflop &&
                  fabs(c.text_gflop - st.text_gflop) <= 1e-9 * st.text_gflop,
              "%s case %d: planned %g/%g/%g GFLOP, counted %g/%g/%g", name, k, c.text_gflop,
              c.unet_gflop, c.vae_gflop, st.text_gflop, st.unet_gflop, st.vae_gflop);
        diffuse_image_free(&img[0]);
        diffuse_image_free(&img[1]);
    }
    diffuse_request bad = diffuse_request_default();
    bad.prompt = "blue";
    bad.width = 60;
    CHECK(diffuse_request_cost(m, &bad).seconds == 0, "%s: a refused size has a cost", name);
}

/* Stops at the third call after the last step: the decode's bands ask too. */
static int stop_in_decode(void *user, int image, int count, int step, int steps)
{
    int *calls = user;
    (void)image;
    (void)count;
    return step == steps && ++*calls == 3;
}

static void on_notice(void *user, const char *message)
{
    snprintf(user, DIFFUSE_ERROR_SIZE, "%s", message);
}

/* The decode in bands through diffuse_generate: asked for (decode_rows), the
 * same pixels as the whole decode, its GFLOP planned as counted; chosen by
 * itself when the whole decode does not fit under DIFFUSE_MEMORY_LIMIT_MB
 * (and said so), refused when nothing fits; rows it cannot take. */
static void test_decode_bands(diffuse_model *m, const char *name)
{
    char err[DIFFUSE_ERROR_SIZE], note[DIFFUSE_ERROR_SIZE] = "";
    diffuse_request r = diffuse_request_default();
    diffuse_stats st;
    diffuse_image whole = {0}, banded = {0}, autob = {0};
    r.prompt = "blue";
    r.width = 256;
    r.height = 192;
    r.steps = 2;
    r.seed = 3;
    r.stats = &st;
    r.notice = on_notice;
    r.notice_user = note;
    const size_t n = (size_t)3 * r.width * r.height;
    CHECK(diffuse_generate(m, &r, &whole, err, sizeof err) == DIFFUSE_OK && !st.decode_rows &&
              !note[0],
          "%s: whole decode: %s", name, err);
    const size_t need_whole = diffuse_request_memory(m, &r);
    r.decode_rows = 32;
    diffuse_cost c = diffuse_request_cost(m, &r);
    const size_t need_bands = diffuse_request_memory(m, &r);
    CHECK(diffuse_generate(m, &r, &banded, err, sizeof err) == DIFFUSE_OK && st.decode_rows == 32 &&
              !note[0],
          "%s: decode in bands of 32 rows: %s (rows %d, notice %s)", name, err, st.decode_rows,
          note);
    CHECK(fabs(c.vae_gflop - st.vae_gflop) <= 1e-9 * st.vae_gflop,
          "%s: bands: planned %g VAE GFLOP, counted %g", name, c.vae_gflop, st.vae_gflop);
    double max = 0;
    for (size_t i = 0; whole.pixels && banded.pixels && i < n; i++)
        max = fmax(max, fabs(whole.pixels[i] - banded.pixels[i]));
    CHECK(whole.pixels && banded.pixels && max <= 2e-5, "%s: bands against whole: %g", name, max);
    printf("  %s: %dx%d needs %zu KiB whole, %zu KiB in bands of 32 rows; pixels within %.1e\n",
           name, r.width, r.height, need_whole >> 10, need_bands >> 10, max);
    diffuse_image none = {0};
    int calls = 0;
    r.progress = stop_in_decode;
    r.progress_user = &calls;
    CHECK(diffuse_generate(m, &r, &none, err, sizeof err) == DIFFUSE_ERR_CANCELLED &&
              !strcmp(err, "cancelled") && calls == 3 && !none.pixels,
          "%s: stopped in the banded decode: %s, %d calls", name, err, calls);
    r.progress = NULL;
    const int bad[] = {12, 192, 400, -8};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r.decode_rows = bad[i];
        CHECK(diffuse_generate(m, &r, &none, err, sizeof err) == DIFFUSE_ERR_ARGUMENT &&
                  strstr(err, "decode rows") && !none.pixels,
              "%s: decode rows %d: %s", name, bad[i], err);
    }
    /* automatic, under a cap between the whole decode and the least banded
     * one; sdxl-tiny's UNet needs more than its VAE, so there is none */
    r.decode_rows = 8;
    const size_t need_least = diffuse_request_memory(m, &r);
    r.decode_rows = 0;
    const size_t cap = (need_whole + need_least) / 2 >> 20;
    if (!(need_least < cap << 20 && need_whole > cap << 20)) {
        CHECK(strcmp(name, "sd1-tiny"), "%s: no cap between %zu and %zu", name, need_least,
              need_whole);
        goto out;
    }
    char capstr[32];
    snprintf(capstr, sizeof capstr, "%zu", cap);
    setenv("DIFFUSE_MEMORY_LIMIT_MB", capstr, 1);
    CHECK(diffuse_generate(m, &r, &autob, err, sizeof err) == DIFFUSE_OK && st.decode_rows > 0 &&
              strstr(note, "decoded in bands") && st.predicted_peak > 0,
          "%s: under %zu MiB: %s (rows %d, notice '%s')", name, cap, err, st.decode_rows, note);
    CHECK(diffuse_request_memory(m, &r) <= cap << 20,
          "%s: the memory told for the request is its banded decode's", name);
    max = 0;
    for (size_t i = 0; whole.pixels && autob.pixels && i < n; i++)
        max = fmax(max, fabs(whole.pixels[i] - autob.pixels[i]));
    CHECK(autob.pixels && max <= 2e-5, "%s: automatic bands against whole: %g", name, max);
    /* nothing fits: refused, quoting the least a banded decode needs */
    setenv("DIFFUSE_MEMORY_LIMIT_MB", "1", 1);
    CHECK(diffuse_generate(m, &r, &none, err, sizeof err) == DIFFUSE_ERR_MEMORY &&
              strstr(err, "in bands") && !none.pixels,
          "%s: under 1 MiB: %s", name, err);
    unsetenv("DIFFUSE_MEMORY_LIMIT_MB");
out:
    diffuse_image_free(&whole);
    diffuse_image_free(&banded);
    diffuse_image_free(&autob);
}

static void check_model(const char *path, const char *name)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_model *m = diffuse_model_load(path, NULL, err, sizeof err);
    CHECK(m != NULL, "%s: %s", path, err);
    if (!m)
        return;
    test_chunks(m, name);
    test_weights(m, name);
    test_clip_skip(m, name);
    test_runs(m, name);
    char text[1024] = "";
    for (int i = 0; i < 90; i++)
        strcat(text, "blue ");
    test_cost(m, name, text);
    test_decode_bands(m, name);
    diffuse_model_free(m);
}

int main(void)
{
    char b1[4096], b2[4096];
    const char *sd1 = test_shared("reference/sd1-tiny/model-diffusers", b1);
    const char *sdxl = test_shared("reference/sdxl-tiny/model-diffusers", b2);
    if (sd1)
        check_model(sd1, "sd1-tiny");
    if (sdxl)
        check_model(sdxl, "sdxl-tiny");
    TEST_END();
}
