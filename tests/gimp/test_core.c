/* test_core.c: the plug-in core's parts that need no running GIMP: settings
 * (de)serialisation and validation, model path resolution and names, sizes,
 * resampling, layer names and the parameters text. Built once per GIMP
 * generation, linked with that generation's core objects (not its front end,
 * gimp2.c or gimp3.c) and libgimp; run by tests/test_gimp.sh. Ends with
 * "N passed, N failed". */
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../plugin/core.h"
#include "../../plugin/pixels.h"
#include "../test.h"

static void test_settings_round_trip(void)
{
    CoreSettings a, b;
    gchar *text;

    core_settings_default(&a);
    g_strlcpy(a.prompt, "two lines\nwith a \\ backslash, a = sign and ünïcode\r", sizeof a.prompt);
    g_strlcpy(a.negative_prompt, "blurry", sizeof a.negative_prompt);
    a.seed = 123456789;
    a.last_seed = 42;
    a.steps = 7;
    a.guidance = 3.25;
    g_strlcpy(a.sampler, "dpmpp_2m", sizeof a.sampler);
    a.width = 640;
    a.height = 448;
    a.count = 3;
    a.strength = 0.35;
    g_strlcpy(a.model, "/models/with space/v1-5.safetensors", sizeof a.model);
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        a.size_cond[i] = 100 + 8 * i;
    a.empty_negative = TRUE;
    text = core_settings_serialize(&a);
    CHECK(strchr(text, '\r') == NULL, "a carriage return was not escaped");
    core_settings_default(&b);
    core_settings_deserialize(&b, text);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "round trip differs; text was:\n%s", text);
    g_free(text);

    /* unknown keys are skipped, missing ones keep their value */
    core_settings_default(&b);
    core_settings_deserialize(&b, "future-key=1\nsteps=9\nbroken line\n");
    CHECK(b.steps == 9 && b.count == 1 && b.seed == -1, "partial settings: steps %d count %d",
          b.steps, b.count);
}

/* validate must fail with CORE_ERROR_CALLING and a message holding word */
static void expect_invalid(const CoreSettings *s, CoreMode mode, const char *word)
{
    GError *error = NULL;
    gboolean ok = core_settings_validate(s, mode, &error);

    CHECK(!ok && error && error->code == CORE_ERROR_CALLING && strstr(error->message, word),
          "validate: want an error naming '%s', got %s", word, error ? error->message : "none");
    g_clear_error(&error);
}

static void test_validate(void)
{
    CoreSettings good, s;
    GError *error = NULL;

    core_settings_default(&good);
    g_strlcpy(good.prompt, "a cat", sizeof good.prompt);
    CHECK(core_settings_validate(&good, CORE_TXT2IMG, &error), "defaults refused: %s",
          error ? error->message : "");
    g_clear_error(&error);
    good.width = 512; /* 0 = the image's size is also fine */
    CHECK(core_settings_validate(&good, CORE_TXT2IMG, NULL), "512x0 refused");

    s = good, s.width = 63, expect_invalid(&s, CORE_TXT2IMG, "63x0 is not possible");
    s = good, s.height = 100000, expect_invalid(&s, CORE_TXT2IMG, "size");
    s = good, s.height = -8, expect_invalid(&s, CORE_TXT2IMG, "size");
    s = good, s.steps = 0, expect_invalid(&s, CORE_TXT2IMG, "steps");
    s = good, s.steps = 1001, expect_invalid(&s, CORE_IMG2IMG, "steps");
    s = good, s.guidance = -1, expect_invalid(&s, CORE_TXT2IMG, "guidance");
    s = good, s.guidance = NAN, expect_invalid(&s, CORE_TXT2IMG, "guidance");
    s = good, s.count = 0, expect_invalid(&s, CORE_TXT2IMG, "count");
    s = good, s.seed = -2, expect_invalid(&s, CORE_TXT2IMG, "seed");
    s = good, g_strlcpy(s.sampler, "heun", sizeof s.sampler);
    expect_invalid(&s, CORE_TXT2IMG, "sampler");
    s = good, s.strength = 0, expect_invalid(&s, CORE_IMG2IMG, "strength");
    s = good, s.strength = 1.5, expect_invalid(&s, CORE_IMG2IMG, "strength");
    s = good, s.width = 63; /* img2img has no size argument */
    CHECK(core_settings_validate(&s, CORE_IMG2IMG, NULL), "img2img checked the width");
    s = good, memcpy(s.prompt, "\xff\xfe", 3), expect_invalid(&s, CORE_TXT2IMG, "UTF-8");
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++) { /* named by their PDB names */
        s = good, s.size_cond[i] = -1, expect_invalid(&s, CORE_TXT2IMG, core_size_cond_args[i].name);
        s = good, s.size_cond[i] = CORE_MAX_COND + 1;
        expect_invalid(&s, CORE_IMG2IMG, core_size_cond_args[i].name);
    }
}

static void test_models(void)
{
    GError *error = NULL;
    gchar *dir = g_dir_make_tmp("diffuse-core-XXXXXX", NULL);
    gchar *models = g_build_filename(dir, "models", NULL);
    gchar *def = g_build_filename(models, "default", NULL);
    gchar *path;

    g_unsetenv("DIFFUSE_DEFAULT_MODEL");
    core_set_plugin_dir(dir);
    path = core_model_resolve("", &error);
    CHECK(!path && error &&
              !strcmp(error->message, "no default model installed; choose a model file or folder"),
          "no default: %s", error ? error->message : path);
    g_clear_error(&error);
    g_setenv("DIFFUSE_DEFAULT_MODEL", "/env/model", TRUE);
    path = core_model_resolve("", NULL);
    CHECK(path && !strcmp(path, "/env/model"), "DIFFUSE_DEFAULT_MODEL not used: %s", path);
    g_free(path);
    g_mkdir_with_parents(def, 0755);
    path = core_model_resolve("", NULL);
    CHECK(path && !strcmp(path, def), "the model beside the plug-in comes first: %s", path);
    g_free(path);
    path = core_model_resolve("/my/model", NULL);
    CHECK(path && !strcmp(path, "/my/model"), "a path is taken as it is: %s", path);
    g_free(path);
    CHECK(!core_model_load("/nonexistent/m.safetensors", &error) && error &&
              strstr(error->message, "cannot load the model") &&
              strstr(error->message, "/nonexistent/m.safetensors"),
          "a missing model: %s", error ? error->message : "loaded");
    g_clear_error(&error);
    rmdir(def);
    rmdir(models);
    rmdir(dir);
    g_free(def);
    g_free(models);
    g_free(dir);
    g_unsetenv("DIFFUSE_DEFAULT_MODEL");
    core_set_plugin_dir(NULL);

    const char *names[][2] = {{"", "default"},
                              {"/a/b/v1-5-pruned.safetensors", "v1-5-pruned"},
                              {"/a/model-diffusers/", "model-diffusers"},
                              {"sd_turbo", "sd_turbo"}};
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        gchar *name = core_model_display_name(names[i][0]);
        CHECK(!strcmp(name, names[i][1]), "display name of '%s': %s", names[i][0], name);
        g_free(name);
    }

    CoreSettings s;
    core_settings_default(&s);
    core_settings_model_defaults(&s, NULL, "/models/SD-Turbo.safetensors");
    CHECK(s.steps <= 8 && s.guidance <= 1, "turbo defaults: %d steps, guidance %g", s.steps,
          s.guidance);
    core_settings_model_defaults(&s, NULL, "/models/lcm-dreamshaper");
    CHECK(s.steps <= 8 && s.guidance <= 1 && !strcmp(s.sampler, "lcm"), "lcm defaults");
    core_settings_model_defaults(&s, NULL, "/models/v1-5.safetensors");
    CHECK(s.steps >= 20 && s.guidance > 1, "sd defaults: %d steps", s.steps);
}

static void test_sizes(void)
{
    const int rounds[][2] = {{63, 64}, {4, 8}, {0, 8}, {100, 104}, {99, 96}, {2048, 2048}};
    for (size_t i = 0; i < G_N_ELEMENTS(rounds); i++)
        CHECK(core_round8(rounds[i][0]) == rounds[i][1], "round8(%d) = %d", rounds[i][0],
              core_round8(rounds[i][0]));

    /* region w, h, native -> engine w, h */
    const int gen[][5] = {{64, 64, 64, 64, 64},      {48, 56, 64, 56, 64},
                          {100, 80, 512, 512, 408},  {640, 480, 512, 640, 480},
                          {5000, 100, 64, 2048, 40}, {3, 2, 8, 8, 8}};
    for (size_t i = 0; i < G_N_ELEMENTS(gen); i++) {
        int w, h;
        pixels_gen_size(gen[i][0], gen[i][1], gen[i][2], &w, &h);
        CHECK(w == gen[i][3] && h == gen[i][4], "gen size of %dx%d (native %d): %dx%d, want %dx%d",
              gen[i][0], gen[i][1], gen[i][2], w, h, gen[i][3], gen[i][4]);
    }
}

static void test_resample(void)
{
    float src[4 * 3 * 2], same[4 * 3 * 2], up[8 * 6 * 2], flat[5 * 7];
    float one[2 * 2] = {0.25f, 0.25f, 0.25f, 0.25f};

    for (int i = 0; i < 24; i++)
        src[i] = (float)i / 23;
    pixels_resample(src, 4, 3, same, 4, 3, 2);
    CHECK(memcmp(src, same, sizeof src) == 0, "resampling to the same size changed pixels");
    pixels_resample(one, 2, 2, flat, 5, 7, 1);
    int constant = 1;
    for (int i = 0; i < 35; i++)
        constant &= flat[i] == 0.25f;
    CHECK(constant, "a constant image did not stay constant");
    pixels_resample(src, 4, 3, up, 8, 6, 2);
    int monotonic = 1; /* src rises along x, so must every upsampled row */
    for (int y = 0; y < 6; y++)
        for (int x = 1; x < 8; x++)
            monotonic &= up[(y * 8 + x) * 2] >= up[(y * 8 + x - 1) * 2];
    CHECK(monotonic, "upsampling broke a gradient");
}

static void test_texts(void)
{
    CoreSettings s;
    gchar *text, *name;
    char long_prompt[200];

    core_settings_default(&s);
    g_strlcpy(s.prompt, "a red circle", sizeof s.prompt);
    g_strlcpy(s.negative_prompt, "blurry", sizeof s.negative_prompt);
    s.steps = 4;
    s.guidance = 7.5;
    g_strlcpy(s.model, "/m/model-diffusers", sizeof s.model);
    setlocale(LC_NUMERIC, "de_DE.UTF-8"); /* where printf would write 7,5 (if installed) */
    text = core_parameters_text(&s, CORE_TXT2IMG, 5, 64, 48);
    CHECK(!strcmp(text, "a red circle\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, "
                        "CFG scale: 7.5, Seed: 5, Size: 64x48, Model: model-diffusers, RNG: NV"),
          "txt2img parameters: %s", text);
    g_free(text);
    s.strength = 0.6;
    text = core_parameters_text(&s, CORE_IMG2IMG, 18446744073709551615ull, 8, 8);
    CHECK(g_str_has_suffix(text, "Seed: 18446744073709551615, Size: 8x8, Model: model-diffusers, "
                                 "Denoising strength: 0.6, RNG: NV"),
          "img2img parameters: %s", text);
    g_free(text);
    s.size_cond[0] = 1024, s.size_cond[3] = 32; /* SDXL: what differs from the defaults */
    text = core_parameters_text(&s, CORE_TXT2IMG, 5, 64, 48);
    CHECK(g_str_has_suffix(text, "Model: model-diffusers, Original size: 1024x48, "
                                 "Crop offset: \"0,32\", RNG: NV"),
          "SDXL parameters: %s", text);
    g_free(text);
    setlocale(LC_NUMERIC, "C");

    name = core_layer_name("  a red\ncircle\t ", 7);
    CHECK(!strcmp(name, "Diffuse: a red circle (seed 7)"), "layer name: %s", name);
    g_free(name);
    memset(long_prompt, 'x', sizeof long_prompt - 1);
    long_prompt[sizeof long_prompt - 1] = '\0';
    name = core_layer_name(long_prompt, 1);
    CHECK(strlen(name) == strlen("Diffuse: ") + CORE_LAYER_NAME_CHARS + 3 + strlen(" (seed 1)") &&
              strstr(name, "x... (seed 1)"),
          "long prompt name: %s", name);
    g_free(name);
}

int main(void)
{
    test_settings_round_trip();
    test_validate();
    test_models();
    test_sizes();
    test_resample();
    test_texts();
    TEST_END();
}
