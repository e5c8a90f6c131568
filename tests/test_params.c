/* test_params.c: the parameters text (params.c), written and read back, and
 * read from what AUTOMATIC1111 writes: multi-line prompts, quoted values,
 * both spellings of the Karras schedule, keys Diffuse has no use for (kept and
 * reported), values it cannot use, and text that is not parameters at all. */
#include <locale.h>

#include "../engine/internal.h"
#include "test.h"

static diffuse_parameters parse(const char *text)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_parameters p;
    CHECK(diffuse_parameters_parse(text, &p, err, sizeof err) == DIFFUSE_OK, "parse: %s", err);
    return p;
}

static bool eq(const char *a, const char *b)
{
    return a && b ? !strcmp(a, b) : a == b;
}

static void test_round_trip(void)
{
    diffuse_parameters p = {.prompt = "a (red:1.2) circle\nsecond line",
                            .negative_prompt = "blurry, dark",
                            .steps = 25,
                            .sampler = DIFFUSE_SAMPLER_DPMPP_2M,
                            .karras = 1,
                            .guidance = 6.5f,
                            .has_seed = 1,
                            .seed = 18446744073709551615ull,
                            .width = 640,
                            .height = 384,
                            .model = "my: model, v2",
                            .strength = 0.6f,
                            .clip_skip = 2,
                            .rng = DIFFUSE_RNG_TORCH_CPU,
                            .loras = "/l/film.safetensors:0.8, /l/b:1",
                            .masked_content = DIFFUSE_MASKED_LATENT_NOISE,
                            .inpaint_area = 1,
                            .padding = 48,
                            .size_cond = {1024, 768, 16, 8, 0, 0}};
    char *text = diffuse_parameters_text(&p);
    CHECK(text && strstr(text, "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5") &&
              strstr(text, "Model: \"my: model, v2\"") && strstr(text, "Clip skip: 2") &&
              strstr(text, "RNG: CPU") && strstr(text, "Original size: 1024x768") &&
              strstr(text, "LoRA: \"/l/film.safetensors:0.8, /l/b:1\"") &&
              strstr(text, "Masked content: latent noise, Inpaint area: Only masked, Masked area "
                           "padding: 48"),
          "written: %s", text);
    diffuse_parameters q = parse(text);
    CHECK(eq(q.prompt, p.prompt) && eq(q.negative_prompt, p.negative_prompt) &&
              q.steps == p.steps && q.sampler == p.sampler && q.karras == 1 &&
              q.guidance == p.guidance && q.has_seed && q.seed == p.seed && q.width == p.width &&
              q.height == p.height && eq(q.model, p.model) && q.strength == p.strength &&
              q.clip_skip == 2 && q.rng == DIFFUSE_RNG_TORCH_CPU &&
              !memcmp(&q.size_cond, &(diffuse_size_cond){1024, 768, 16, 8, 0, 0},
                      sizeof q.size_cond) &&
              !q.extra && eq(q.loras, p.loras) && q.masked_content == DIFFUSE_MASKED_LATENT_NOISE &&
              q.inpaint_area == 1 && q.padding == 48,
          "read back what was written (extra: %s)", q.extra ? q.extra : "none");
    diffuse_parameters_free(&q);
    free(text);
    /* a comma decimal point in the locale changes nothing */
    if (setlocale(LC_NUMERIC, "de_DE.UTF-8") || setlocale(LC_NUMERIC, "fr_FR.UTF-8")) {
        text = diffuse_parameters_text(&p);
        q = parse(text);
        CHECK(strstr(text, "CFG scale: 6.5,") && q.guidance == 6.5f && q.strength == 0.6f,
              "locale: %s", text);
        diffuse_parameters_free(&q);
        free(text);
        setlocale(LC_NUMERIC, "C");
    }
    p.negative_prompt = NULL;
    p.karras = 0;
    p.model = NULL;
    p.strength = 0;
    p.clip_skip = 0;
    p.rng = -1;
    p.loras = NULL;
    p.masked_content = DIFFUSE_MASKED_ORIGINAL;
    p.inpaint_area = 0;
    p.size_cond = (diffuse_size_cond){0};
    text = diffuse_parameters_text(&p);
    CHECK(text && !strstr(text, "Schedule") && !strstr(text, "Model") &&
              !strstr(text, "Denoising") && !strstr(text, "Clip") && !strstr(text, "RNG") &&
              !strstr(text, "size") && !strstr(text, "Inpaint") && !strstr(text, "padding"),
          "only what is given: %s", text);
    q = parse(text);
    CHECK(!q.negative_prompt && q.karras == -1 && q.rng == -1 && q.masked_content == -1 &&
              q.inpaint_area == -1 && q.padding == -1,
          "an empty negative reads as none; original masked content and the whole picture are "
          "not written");
    diffuse_parameters_free(&q);
    free(text);
}

static void test_a1111(void)
{
    diffuse_parameters p = parse(
        "a photo of a (cat:1.2), <lora:film:0.5>\nstudio light\n"
        "Negative prompt: ugly, blurry\nworst quality\n"
        "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 3795138445, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: "
        "735e4c3a44, Denoising strength: 0.4, Clip skip: 2, Lora hashes: \"film: 1234abcd\", "
        "Version: v1.10.1\n");
    CHECK(eq(p.prompt, "a photo of a (cat:1.2), <lora:film:0.5>\nstudio light") &&
              eq(p.negative_prompt, "ugly, blurry\nworst quality"),
          "prompt and negative: [%s] [%s]", p.prompt, p.negative_prompt);
    CHECK(p.steps == 30 && p.sampler == DIFFUSE_SAMPLER_EULER_A && p.karras == 0 &&
              p.guidance == 7 && p.seed == 3795138445ull && p.width == 512 && p.height == 768 &&
              eq(p.model, "v1-5-pruned-emaonly") && p.strength == 0.4f && p.clip_skip == 2,
          "A1111's settings");
    CHECK(p.rng == DIFFUSE_RNG_PHILOX, "A1111 without an RNG key used its GPU generator");
    CHECK(eq(p.extra, "Model hash: 6ce0161689, VAE hash: 735e4c3a44, Lora hashes: "
                      "\"film: 1234abcd\", Version: v1.10.1"),
          "unknown keys kept as written: %s", p.extra);
    diffuse_parameters_free(&p);

    /* A1111's inpainting keys (processing.py: Only masked writes its padding) */
    p = parse("x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising "
              "strength: 0.75, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32");
    CHECK(p.inpaint_area == 1 && p.padding == 32 && eq(p.extra, "Mask blur: 4"),
          "A1111's Only masked: area %d, padding %d, extra %s", p.inpaint_area, p.padding, p.extra);
    diffuse_parameters_free(&p);
    p = parse("x\nSteps: 20, Seed: 1, Inpaint area: Whole picture, Masked area padding: -3");
    CHECK(p.inpaint_area == 0 && p.padding == -1 && eq(p.extra, "Masked area padding: -3"),
          "Whole picture; a negative padding kept, not used: %s", p.extra);
    diffuse_parameters_free(&p);

    p = parse("x\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
              "RNG: NV");
    CHECK(p.sampler == DIFFUSE_SAMPLER_DPMPP_2M && p.karras == 1 && p.rng == DIFFUSE_RNG_PHILOX,
          "old A1111: Karras in the sampler's name");
    diffuse_parameters_free(&p);
    p = parse("x\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7, Seed: 1");
    CHECK(p.karras == 1, "Automatic is DPM++ 2M's Karras");
    diffuse_parameters_free(&p);
    p = parse("x\nSteps: 20, Sampler: euler_a Karras, CFG scale: 7, Seed: 1, Size: 64x64");
    CHECK(p.sampler == DIFFUSE_SAMPLER_EULER_A && p.karras == 1 && p.rng == -1,
          "Diffuse's own older text");
    diffuse_parameters_free(&p);
    p = parse("x\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Exponential, CFG scale: 7, "
              "Seed: 1, RNG: CPU");
    CHECK(p.sampler == -1 && p.karras == -1 && p.rng == DIFFUSE_RNG_TORCH_CPU &&
              eq(p.extra, "Sampler: DPM++ SDE, Schedule type: Exponential"),
          "values without a setting here are kept: %s", p.extra);
    diffuse_parameters_free(&p);
}

static void test_odd(void)
{
    diffuse_parameters p = parse("just a prompt, nothing else");
    CHECK(eq(p.prompt, "just a prompt, nothing else") && p.steps == 0 && !p.has_seed &&
              p.sampler == -1 && p.guidance < 0,
          "a prompt alone");
    diffuse_parameters_free(&p);
    p = parse("a cat\nSteps: 20, Seed: 4");
    CHECK(eq(p.prompt, "a cat\nSteps: 20, Seed: 4") && p.steps == 0,
          "fewer than three pairs: still prompt text, as A1111 reads it");
    diffuse_parameters_free(&p);
    p = parse("");
    CHECK(eq(p.prompt, "") && !p.negative_prompt, "empty text");
    diffuse_parameters_free(&p);
    p = parse("x\nSteps: abc, Seed: -5, Size: 5x, CFG scale: nan, Clip skip: 99, Denoising "
              "strength: 2, Crop offset: 1;2, \"unterminated: \"x, : , ,,");
    CHECK(p.steps == 0 && !p.has_seed && p.width == 0 && p.guidance < 0 && p.clip_skip == 0 &&
              p.strength == 0 && p.extra && strstr(p.extra, "Steps: abc") &&
              strstr(p.extra, "Seed: -5") && strstr(p.extra, "Clip skip: 99"),
          "bad values are kept, not used: %s", p.extra);
    diffuse_parameters_free(&p);
    char junk[512];
    for (int i = 0; i < 511; i++)
        junk[i] = (char)(1 + (i * 37) % 255);
    junk[511] = 0;
    p = parse(junk);
    CHECK(p.prompt != NULL, "binary junk reads as some prompt");
    diffuse_parameters_free(&p);
    char err[DIFFUSE_ERROR_SIZE];
    CHECK(diffuse_parameters_parse(NULL, &p, err, sizeof err) == DIFFUSE_ERR_ARGUMENT,
          "no text: %s", err);
}

int main(void)
{
    test_round_trip();
    test_a1111();
    test_odd();
    TEST_END();
}
