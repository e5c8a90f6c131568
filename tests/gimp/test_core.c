/* test_core.c: the plug-in core's parts that need no running GIMP: settings
 * (de)serialisation and validation, model path resolution and names, sizes,
 * resampling, layer names, the parameters text and the settings read back
 * from one (the dialogs' Copy Settings). Built once per GIMP
 * generation, linked with that generation's core objects (not its front end,
 * gimp2.c or gimp3.c) and libgimp; run by tests/test_gimp.sh. Ends with
 * "N passed, N failed". */
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "../../plugin/core.h"
#include "../../plugin/pixels.h"
#include "../test.h"

static void test_settings_round_trip(void)
{
    CoreSettings a, b;
    gchar *text;

    core_settings_default(&a);
    g_strlcpy(a.prompt, "  two lines\nwith a \\ backslash, a = sign, [group] and ünïcode\r ",
              sizeof a.prompt);
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
    a.fast_decoder = TRUE;
    g_strlcpy(a.lora, "/loras/film grain.safetensors", sizeof a.lora);
    a.lora_weight = -0.35;
    a.area = CORE_AREA_SELECTED;
    a.padding = 48;
    a.masked_content = DIFFUSE_MASKED_LATENT_NOISE;
    a.scale_to = CORE_SCALE_SELECTION;
    text = core_settings_serialize(&a);
    CHECK(strchr(text, '\r') == NULL, "a carriage return was not escaped");
    core_settings_default(&b);
    core_settings_deserialize(&b, text);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "round trip differs; text was:\n%s", text);
    g_free(text);

    /* a GLib key file: the group, then one key a field */
    text = core_settings_serialize(&a);
    CHECK(g_str_has_prefix(text, "[diffuse]\nversion=2\n"), "not a key file:\n%s", text);
    g_free(text);

    /* unknown keys are skipped, missing ones keep their value; the first
     * format's lines (no group line) read as they were written */
    core_settings_default(&b);
    core_settings_deserialize(&b, "diffuse-settings=1\nfuture-key=1\nsteps=9\n"
                                  "prompt=a\\nb \\\\ c\nfast-decoder=1\nguidance=4.5\n");
    CHECK(b.steps == 9 && b.count == 1 && b.seed == -1, "partial settings: steps %d count %d",
          b.steps, b.count);
    CHECK(!strcmp(b.prompt, "a\nb \\ c") && b.fast_decoder && b.guidance == 4.5,
          "version 1 read as '%s', fast decoder %d, guidance %g", b.prompt, b.fast_decoder,
          b.guidance);
    CHECK(b.lora[0] == '\0' && b.lora_weight == 1.0,
          "remembered values from before LoRA: '%s' at %g", b.lora, b.lora_weight);

    /* a damaged text changes nothing; a wrong value only its own field */
    core_settings_default(&b);
    core_settings_deserialize(&b, "[diffuse]\nsteps=9\nbroken line\n");
    CHECK(b.steps == 20, "a damaged key file was read: steps %d", b.steps);
    core_settings_deserialize(&b, "[diffuse]\nsteps=many\ncount=2\n");
    CHECK(b.steps == 20 && b.count == 2, "steps=many: steps %d count %d", b.steps, b.count);
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
        s = good, s.size_cond[i] = -1,
        expect_invalid(&s, CORE_TXT2IMG, core_size_cond_args[i].name);
        s = good, s.size_cond[i] = CORE_MAX_COND + 1;
        expect_invalid(&s, CORE_IMG2IMG, core_size_cond_args[i].name);
    }
    s = good, s.lora_weight = 10.5;
    expect_invalid(&s, CORE_TXT2IMG, "lora-weight: 10.5 is outside");
    s = good, s.lora_weight = NAN, expect_invalid(&s, CORE_IMG2IMG, "lora-weight");
    s = good, g_strlcpy(s.lora, "/nonexistent/x.safetensors", sizeof s.lora);
    expect_invalid(&s, CORE_TXT2IMG, "lora: there is no file /nonexistent/x.safetensors");
    s = good, g_strlcpy(s.lora, "/tmp", sizeof s.lora); /* a folder is not a LoRA */
    expect_invalid(&s, CORE_TXT2IMG, "lora: there is no file /tmp");
    s = good, s.lora_weight = -10;
    CHECK(core_settings_validate(&s, CORE_TXT2IMG, NULL), "a weight of -10 without a LoRA refused");
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
    g_setenv("XDG_DATA_HOME", dir, TRUE); /* no user copy there */
    path = core_model_resolve("", &error);
    CHECK(!path && error && g_str_has_prefix(error->message, "no default model installed") &&
              strstr(error->message, def) &&
              strstr(error->message, "choose a model file or folder"),
          "no default: %s", error ? error->message : path);
    g_clear_error(&error);
    g_mkdir_with_parents(def, 0755);
    path = core_model_resolve("", NULL);
    CHECK(path && !strcmp(path, def), "the model beside the plug-in not found: %s", path);
    g_free(path);
    g_setenv("DIFFUSE_DEFAULT_MODEL", "/env/model", TRUE);
    path = core_model_resolve("", NULL);
    CHECK(path && !strcmp(path, "/env/model"), "DIFFUSE_DEFAULT_MODEL does not come first: %s",
          path);
    g_free(path);
    g_unsetenv("XDG_DATA_HOME");
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

/* Image to Image's selected area: which area a selection suits, the padded
 * crop clipped to the layer, and the generation size at the native size. */
static void test_area(void)
{
    CoreSettings s;

    /* w, h, native -> area */
    const int area[][4] = {{200, 150, 512, CORE_AREA_SELECTED}, {255, 100, 512, CORE_AREA_SELECTED},
                           {256, 100, 512, CORE_AREA_WHOLE},    {1024, 700, 512, CORE_AREA_WHOLE},
                           {1025, 10, 512, CORE_AREA_SELECTED}, {16, 16, 64, CORE_AREA_SELECTED}};
    for (size_t i = 0; i < G_N_ELEMENTS(area); i++)
        CHECK((int)core_area_default(area[i][0], area[i][1], area[i][2]) == area[i][3],
              "area of %dx%d (native %d)", area[i][0], area[i][1], area[i][2]);

    /* x, y, w, h, padding, layer w, h -> crop x, y, w, h */
    const int crop[][11] = {{100, 80, 30, 20, 32, 1024, 768, 68, 48, 94, 84},
                            {10, 5, 30, 20, 32, 1024, 768, 0, 0, 72, 57},
                            {1000, 750, 24, 18, 32, 1024, 768, 968, 718, 56, 50},
                            {0, 0, 1024, 768, 32, 1024, 768, 0, 0, 1024, 768},
                            {40, 40, 8, 8, 0, 64, 64, 40, 40, 8, 8}};
    for (size_t i = 0; i < G_N_ELEMENTS(crop); i++) {
        const int *c = crop[i];
        int x, y, w, h;
        core_area_crop(c[0], c[1], c[2], c[3], c[4], c[5], c[6], &x, &y, &w, &h);
        CHECK(x == c[7] && y == c[8] && w == c[9] && h == c[10],
              "crop of %dx%d at %d,%d padding %d: %dx%d at %d,%d", c[2], c[3], c[0], c[1], c[4], w,
              h, x, y);
    }

    /* crop w, h, native -> engine w, h: longer side = native, aspect kept */
    const int gen[][5] = {
        {94, 84, 64, 64, 56},    {364, 264, 512, 512, 368}, {3000, 2000, 512, 512, 344},
        {4000, 10, 512, 512, 8}, {3, 2, 8, 8, 8},           {100, 100, 1024, 1024, 1024}};
    for (size_t i = 0; i < G_N_ELEMENTS(gen); i++) {
        int w, h;
        core_area_gen_size(gen[i][0], gen[i][1], gen[i][2], &w, &h);
        CHECK(w == gen[i][3] && h == gen[i][4],
              "area gen size of %dx%d (native %d): %dx%d, want %dx%d", gen[i][0], gen[i][1],
              gen[i][2], w, h, gen[i][3], gen[i][4]);
    }

    core_settings_default(&s);
    CHECK(s.area == CORE_AREA_WHOLE && s.padding == 32, "area defaults %d %d", s.area, s.padding);
    s.area = 2;
    CHECK(!core_settings_validate(&s, CORE_IMG2IMG, NULL), "area 2 accepted");
    s.area = CORE_AREA_SELECTED;
    s.padding = -1;
    CHECK(!core_settings_validate(&s, CORE_IMG2IMG, NULL), "padding -1 accepted");
    s.padding = CORE_MAX_PADDING;
    CHECK(core_settings_validate(&s, CORE_IMG2IMG, NULL), "padding %d refused", s.padding);
    CHECK(s.masked_content == DIFFUSE_MASKED_ORIGINAL, "masked content default %d",
          s.masked_content);
    s.masked_content = DIFFUSE_MASKED_KINDS;
    expect_invalid(&s, CORE_IMG2IMG, core_masked_arg.name);
    s.masked_content = -1;
    expect_invalid(&s, CORE_IMG2IMG, core_masked_arg.name);
}

/* Text to Image's scaling to the image or the selection: covers the target,
 * aspect kept, centred, the overflow cut; a value out of range refused. */
static void test_scale(void)
{
    CoreSettings s;
    /* w, h, target w, h -> scaled w, h, crop x, y */
    const int cover[][8] = {
        {64, 64, 200, 120, 200, 200, 0, 40},   {64, 64, 192, 96, 192, 192, 0, 48},
        {64, 64, 64, 64, 64, 64, 0, 0},        {512, 512, 100, 50, 100, 100, 0, 25},
        {64, 32, 100, 100, 200, 100, 50, 0},   {512, 384, 1024, 768, 1024, 768, 0, 0},
        {64, 64, 1, 3000, 3000, 3000, 1499, 0}};

    for (size_t i = 0; i < G_N_ELEMENTS(cover); i++) {
        const int *c = cover[i];
        int w, h, x, y;

        core_scale_cover(c[0], c[1], c[2], c[3], &w, &h, &x, &y);
        CHECK(w == c[4] && h == c[5] && x == c[6] && y == c[7],
              "%dx%d to cover %dx%d: %dx%d cropped at %d,%d, want %dx%d at %d,%d", c[0], c[1], c[2],
              c[3], w, h, x, y, c[4], c[5], c[6], c[7]);
        CHECK(x >= 0 && y >= 0 && x + c[2] <= w && y + c[3] <= h, "%dx%d: the crop leaves it", c[2],
              c[3]);
    }
    core_settings_default(&s);
    CHECK(s.scale_to == CORE_SCALE_NONE, "scale-to default %d", s.scale_to);
    for (gint v = 0; v < CORE_SCALE_KINDS; v++) {
        s.scale_to = v;
        CHECK(core_settings_validate(&s, CORE_TXT2IMG, NULL), "scale-to %d refused", v);
    }
    s.scale_to = CORE_SCALE_KINDS;
    expect_invalid(&s, CORE_TXT2IMG, core_scale_arg.name);
    s.scale_to = -1;
    expect_invalid(&s, CORE_TXT2IMG, core_scale_arg.name);
    CHECK(!strcmp(core_scale_names[CORE_SCALE_SELECTION], "selection") &&
              !strcmp(core_scale_labels[CORE_SCALE_NONE], "Generated size"),
          "scale-to names and labels");
}

/* The dialogs' estimate of a Text to Image run with the bundled model (run
 * from the source tree's root, as tests/test_gimp.sh does): memory and
 * seconds, which grow with the steps, the size and the unconditional pass. */
static void test_estimate(void)
{
    diffuse_model *m = core_model_load("models/default", NULL);
    CoreSettings s;
    gsize mem, mem_big;
    gdouble sec, sec_steps, sec_big, sec_guided;
    gint64 t0;

    CHECK(m != NULL, "models/default does not load (run from the source tree's root)");
    if (!m)
        return;
    core_settings_default(&s);
    s.width = s.height = 64, s.steps = 4, s.guidance = 1;
    t0 = g_get_monotonic_time();
    core_settings_estimate(m, &s, &mem, &sec);
    CHECK(mem > 0 && sec > 0, "64x64, 4 steps: %" G_GSIZE_FORMAT " bytes, %g s", mem, sec);
    s.steps = 8;
    core_settings_estimate(m, &s, &mem, &sec_steps);
    s.guidance = 7.5;
    core_settings_estimate(m, &s, &mem, &sec_guided);
    s.width = s.height = 256;
    core_settings_estimate(m, &s, &mem_big, &sec_big);
    CHECK(sec_steps > 1.5 * sec && sec_guided > 1.5 * sec_steps && sec_big > 4 * sec_guided &&
              mem_big > mem,
          "estimates do not grow: 4 steps %g s, 8 steps %g s, guided %g s, 256x256 %g s "
          "(%" G_GSIZE_FORMAT " > %" G_GSIZE_FORMAT " bytes)",
          sec, sec_steps, sec_guided, sec_big, mem_big, mem);
    /* the dialog asks at every change: a dry run, not a run */
    CHECK(g_get_monotonic_time() - t0 < 2 * G_USEC_PER_SEC, "four estimates took %.2f s",
          (g_get_monotonic_time() - t0) / 1e6);
    diffuse_model_free(m);
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
    s.size_cond[0] = s.size_cond[3] = 0;
    g_strlcpy(s.lora, "/loras/grain.safetensors", sizeof s.lora);
    s.lora_weight = 0.75; /* "0,75" in that locale */
    text = core_parameters_text(&s, CORE_TXT2IMG, 5, 64, 48);
    CHECK(g_str_has_suffix(text, "Model: model-diffusers, RNG: NV, "
                                 "LoRA: \"/loras/grain.safetensors:0.75\""),
          "LoRA parameters: %s", text);
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

/* from_parameters(text, mode): s after taking text into defaults (prompt
 * "before", model "/m/model-diffusers", seed random), ok and unused ("" for
 * NULL) in the globals below. */
static CoreSettings read_s;
static gboolean read_ok;
static gchar *read_unused;

static void from_parameters(const gchar *text, CoreMode mode)
{
    core_settings_default(&read_s);
    g_strlcpy(read_s.prompt, "before", sizeof read_s.prompt);
    g_strlcpy(read_s.model, "/m/model-diffusers", sizeof read_s.model);
    g_free(read_unused);
    read_ok = core_settings_from_parameters(&read_s, mode, text, &read_unused);
    if (!read_unused)
        read_unused = g_strdup("");
}

/* our own text, written and read: the same settings */
static void test_read_own(void)
{
    CoreSettings s;
    gchar *text;

    core_settings_default(&s);
    g_strlcpy(s.prompt, "a red circle, <lora:grain:0.5>\nsecond line", sizeof s.prompt);
    g_strlcpy(s.negative_prompt, "blurry", sizeof s.negative_prompt);
    s.steps = 7, s.guidance = 6.1, s.seed = 99, s.width = 96, s.height = 64;
    g_strlcpy(s.sampler, "dpmpp_2m", sizeof s.sampler);
    g_strlcpy(s.model, "/m/model-diffusers", sizeof s.model);
    g_strlcpy(s.lora, "/loras/a b.safetensors", sizeof s.lora);
    s.lora_weight = -0.5;
    s.size_cond[0] = 1024, s.size_cond[3] = 16;
    text = core_parameters_text(&s, CORE_TXT2IMG, 99, 96, 64);
    from_parameters(text, CORE_TXT2IMG);
    read_s.last_seed = s.last_seed;
    CHECK(read_ok && memcmp(&read_s, &s, sizeof s) == 0 && !*read_unused,
          "own text not read back whole (unused '%s'): %s", read_unused, text);
    g_free(text);
    s.strength = 0.35; /* Image to Image: the strength, not the size */
    text = core_parameters_text(&s, CORE_IMG2IMG, 99, 96, 64);
    from_parameters(text, CORE_IMG2IMG);
    CHECK(read_ok && read_s.strength == 0.35 && read_s.width == 0 &&
              !strcmp(read_unused, "Size: 96x64 (Image to Image keeps the selection's size)"),
          "img2img text: strength %g, width %d, unused '%s'", read_s.strength, read_s.width,
          read_unused);
    g_free(text);
    /* Selected area and latent noise: A1111's Only masked, its padding and masked content */
    s.area = CORE_AREA_SELECTED, s.padding = 48, s.masked_content = DIFFUSE_MASKED_LATENT_NOISE;
    text = core_parameters_text(&s, CORE_IMG2IMG, 99, 64, 48);
    CHECK(g_str_has_suffix(text, ", Masked content: latent noise, Inpaint area: Only masked, "
                                 "Masked area padding: 48"),
          "img2img text of the selected area: %s", text);
    from_parameters(text, CORE_IMG2IMG);
    CHECK(read_ok && read_s.area == CORE_AREA_SELECTED && read_s.padding == 48 &&
              read_s.masked_content == DIFFUSE_MASKED_LATENT_NOISE,
          "selected area read back: area %d, padding %d, masked content %d", read_s.area,
          read_s.padding, read_s.masked_content);
    from_parameters(text, CORE_TXT2IMG); /* Text to Image has none of them */
    CHECK(read_ok && read_s.area == CORE_AREA_WHOLE && read_s.masked_content == 0 &&
              strstr(read_unused, "Masked content: latent noise (for Image to Image)") &&
              strstr(read_unused, "Inpaint area: Only masked (for Image to Image)") &&
              strstr(read_unused, "Masked area padding: 48 (for Image to Image)"),
          "txt2img reading an img2img text: unused '%s'", read_unused);
    g_free(text);
    s.area = CORE_AREA_WHOLE, s.masked_content = DIFFUSE_MASKED_ORIGINAL;
    text = core_parameters_text(&s, CORE_IMG2IMG, 99, 64, 48);
    CHECK(!strstr(text, "Inpaint") && !strstr(text, "Masked"),
          "whole layer, original: A1111's defaults are not written: %s", text);
    g_free(text);
}

/* AUTOMATIC1111's, with keys Diffuse has no use for, reported as written */
static void test_read_a1111(void)
{
    from_parameters("masterpiece, a cat\nNegative prompt: lowres, bad hands\nSteps: 30, "
                    "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3456789, "
                    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned, Denoising "
                    "strength: 0.4, Clip skip: 2, Hires upscale: 2, Version: v1.9.4",
                    CORE_TXT2IMG);
    CHECK(read_ok && !strcmp(read_s.prompt, "masterpiece, a cat") &&
              !strcmp(read_s.negative_prompt, "lowres, bad hands") && read_s.steps == 30 &&
              read_s.guidance == 7 && read_s.seed == 3456789 && read_s.width == 512 &&
              read_s.height == 768 && !strcmp(read_s.sampler, "dpmpp_2m_karras") && !read_s.lora[0],
          "A1111 text: '%s' / '%s', %d steps, guidance %g, seed %d, %dx%d, %s", read_s.prompt,
          read_s.negative_prompt, read_s.steps, read_s.guidance, read_s.seed, read_s.width,
          read_s.height, read_s.sampler);
    CHECK(!strcmp(read_unused, "Model hash: 6ce0161689, Hires upscale: 2, Version: v1.9.4, "
                               "Clip skip: 2, Denoising strength: 0.4 (for "
                               "Image to Image), Model: v1-5-pruned (choose it in the Model row)"),
          "A1111 text, not used: '%s'", read_unused);
    /* a sampler Diffuse lacks and numbers out of the plug-in's ranges */
    from_parameters("x\nSteps: 5000, Sampler: Heun, CFG scale: 150, Seed: 4294967296, Size: "
                    "100x50, RNG: CPU",
                    CORE_TXT2IMG);
    CHECK(read_ok && read_s.steps == 20 && read_s.guidance == 7.5 && read_s.seed == -1 &&
              read_s.width == 0 && !strcmp(read_s.sampler, "euler_a") &&
              !strcmp(read_s.prompt, "x"),
          "out of range: %d steps, guidance %g, seed %d, width %d, %s", read_s.steps,
          read_s.guidance, read_s.seed, read_s.width, read_s.sampler);
    CHECK(strstr(read_unused, "Sampler: Heun") && strstr(read_unused, "CFG scale: 150") &&
              strstr(read_unused, "Seed: 4294967296") && strstr(read_unused, "Size: 100x50") &&
              strstr(read_unused, "RNG: CPU") && strstr(read_unused, "Steps: 5000"),
          "out of range, not used: '%s'", read_unused);
}

/* LoRAs: the first taken, the rest reported; no weight is 1 */
static void test_read_loras(void)
{
    from_parameters("x\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, LoRA: "
                    "\"/l/one.safetensors:0.8, /l/two.safetensors:0.5\"",
                    CORE_TXT2IMG);
    CHECK(read_ok && !strcmp(read_s.lora, "/l/one.safetensors") && read_s.lora_weight == 0.8 &&
              !strcmp(read_unused, "LoRA: /l/two.safetensors:0.5"),
          "two LoRAs: '%s' at %g, unused '%s'", read_s.lora, read_s.lora_weight, read_unused);
    from_parameters("x\nSteps: 4, Seed: 1, Size: 64x64, LoRA: \"C:\\\\l\\\\x.safetensors\"",
                    CORE_TXT2IMG);
    CHECK(read_ok && !strcmp(read_s.lora, "C:\\l\\x.safetensors") && read_s.lora_weight == 1,
          "a LoRA without weight: '%s' at %g", read_s.lora, read_s.lora_weight);
    from_parameters("x\nSteps: 4, Seed: 1, Size: 64x64, LoRA: /l/big.safetensors:50", CORE_TXT2IMG);
    CHECK(read_ok && !read_s.lora[0] && !strcmp(read_unused, "LoRA: /l/big.safetensors:50"),
          "a weight out of range: '%s', unused '%s'", read_s.lora, read_unused);
}

/* texts that are no settings leave everything as it was; odd ones do no harm */
static void test_read_odd(void)
{
    CoreSettings s, was;
    const gchar *not_settings[] = {"Created with GIMP",
                                   "",
                                   "\n\n  \n",
                                   "Negative prompt: x",
                                   "Title: t, Author: a, Date: d",
                                   "a: b\nc\nSteps: x, Sampler: , CFG scale: nan"};
    for (gsize i = 0; i < G_N_ELEMENTS(not_settings); i++) {
        from_parameters(not_settings[i], CORE_TXT2IMG);
        CHECK(!read_ok && !strcmp(read_s.prompt, "before") && !*read_unused,
              "'%s' taken for settings", not_settings[i]);
    }
    core_settings_default(&was);
    s = was;
    CHECK(!core_settings_from_parameters(&s, CORE_TXT2IMG, NULL, NULL) &&
              !memcmp(&s, &was, sizeof s),
          "NULL taken for settings");

    /* odd text: bytes that are not UTF-8, a prompt longer than the field */
    from_parameters("caf\xe9 \xff\nSteps: 4, Seed: 2, Size: 64x64, Odd\xfe key: 1", CORE_TXT2IMG);
    CHECK(read_ok && g_utf8_validate(read_s.prompt, -1, NULL) &&
              g_str_has_prefix(read_s.prompt, "caf") && g_utf8_validate(read_unused, -1, NULL) &&
              read_s.seed == 2,
          "bytes that are not UTF-8: '%s', unused '%s'", read_s.prompt, read_unused);
    GString *long_text = g_string_new(NULL);
    for (gint i = 0; i < 600; i++)
        g_string_append(long_text, "cat ");
    g_string_append(long_text, "\nSteps: 4, Seed: 2, Size: 64x64");
    from_parameters(long_text->str, CORE_TXT2IMG);
    CHECK(read_ok && strlen(read_s.prompt) == CORE_TEXT_MAX - 1 &&
              strstr(read_unused, "Prompt: the end, after 2047 bytes"),
          "a long prompt: %zu bytes, unused '%s'", strlen(read_s.prompt), read_unused);
    g_string_free(long_text, TRUE);
    g_clear_pointer(&read_unused, g_free);
}

/* A PNG file of the given chunks after the signature, each's length field
 * `length` (-1: its data's), its CRC 0 (the reader does not check them);
 * returns its path (g_free). */
typedef struct {
    const char *type, *data;
    gsize size;  /* bytes of data */
    gint length; /* -1: size */
} Chunk;
#define CHUNK(type, literal) ((Chunk){type, literal, sizeof literal - 1, -1})

static gchar *write_png(const gchar *dir, const gchar *name, const Chunk *chunks, gint n)
{
    gchar *path = g_build_filename(dir, name, NULL);
    FILE *f = fopen(path, "wb");

    fwrite("\x89PNG\r\n\x1a\n", 1, 8, f);
    for (gint i = 0; i < n; i++) {
        guint32 len = chunks[i].length < 0 ? chunks[i].size : (guint32)chunks[i].length;
        guchar be[4] = {len >> 24, len >> 16, len >> 8, len};

        fwrite(be, 1, 4, f);
        fwrite(chunks[i].type, 1, 4, f);
        fwrite(chunks[i].data, 1, chunks[i].size, f);
        fwrite("\0\0\0\0", 1, 4, f);
    }
    fclose(f);
    return path;
}

static void test_png(void)
{
    gchar *dir = g_dir_make_tmp("diffuse-png-XXXXXX", NULL);
    gchar *path, *text;
    /* tEXt is Latin-1 (\xe9 = é); Comment is passed over; the text may follow the image data */
    const Chunk latin[] = {CHUNK("IHDR", "0123456789abc"),
                           CHUNK("tEXt", "Comment\0Created with GIMP"), CHUNK("IDAT", "pixels"),
                           CHUNK("tEXt", "parameters\0caf\xe9\nSteps: 4"), CHUNK("IEND", "")};
    /* iTXt: keyword, compression flag and method, language, translated keyword, UTF-8 */
    const Chunk utf8[] = {CHUNK("iTXt", "parameters\0\0\0en\0Parameter\0gr\xc3\xbcn")};
    const Chunk zipped[] = {CHUNK("iTXt", "parameters\0\1\0\0\0x\x9c")};
    const Chunk cut[] = {{"tEXt", "parameters\0abc", 14, 4000}}; /* longer than the file */

    path = write_png(dir, "latin.png", latin, G_N_ELEMENTS(latin));
    text = core_png_parameters(path);
    CHECK(text && !strcmp(text, "caf\xc3\xa9\nSteps: 4"), "tEXt after IDAT: '%s'", text);
    g_free(text), g_unlink(path), g_free(path);
    path = write_png(dir, "utf8.png", utf8, 1);
    text = core_png_parameters(path);
    CHECK(text && !strcmp(text, "gr\xc3\xbcn"), "iTXt: '%s'", text);
    g_free(text), g_unlink(path), g_free(path);
    path = write_png(dir, "zipped.png", zipped, 1);
    text = core_png_parameters(path);
    CHECK(!text, "compressed iTXt: '%s'", text);
    g_free(text), g_unlink(path), g_free(path);
    path = write_png(dir, "cut.png", cut, 1);
    text = core_png_parameters(path);
    CHECK(!text, "a cut chunk: '%s'", text);
    g_free(text), g_unlink(path), g_free(path);
    path = g_build_filename(dir, "none.png", NULL);
    CHECK(!core_png_parameters(path), "a missing file gave a text");
    g_file_set_contents(path, "GIF89a parameters", -1, NULL);
    CHECK(!core_png_parameters(path), "a file that is no PNG gave a text");
    g_unlink(path), g_free(path);
    g_rmdir(dir);
    g_free(dir);
}

/* The samplers offered: the engine's, by its labels, and a _karras form for
 * each that takes Karras sigmas; the ids run, the texts say Karras. */
static void test_samplers(void)
{
    const CoreSampler *c;
    gint n = core_sampler_choices(&c), karras = 0;
    CoreSettings s;
    gchar *text;

    for (gint i = 0; i < n; i++) {
        const gchar *want = c[i].karras ? diffuse_sampler_karras_label(c[i].sampler)
                                        : diffuse_sampler_label(c[i].sampler);

        karras += c[i].karras;
        CHECK(want && c[i].label == want && core_sampler_find(c[i].id) == i,
              "choice %d '%s' is '%s'", i, c[i].id, c[i].label);
    }
    CHECK(n == DIFFUSE_SAMPLER_COUNT + 3 && karras == 3, "%d choices, %d Karras", n, karras);
    CHECK(core_sampler_find("dpmpp_2m_karras") >= 0 &&
              !strcmp(c[core_sampler_find("dpmpp_2m_karras")].label, "DPM++ 2M Karras") &&
              !strcmp(c[core_sampler_find("euler_a")].label, "Euler a"),
          "DPM++ 2M Karras and Euler a offered");
    CHECK(core_sampler_find("ddim_karras") < 0 && core_sampler_find("DDIM") < 0 &&
              core_sampler_find(NULL) < 0,
          "no DDIM Karras, no labels as ids");
    core_settings_default(&s);
    g_strlcpy(s.prompt, "x", sizeof s.prompt);
    g_strlcpy(s.sampler, "dpmpp_2m_karras", sizeof s.sampler);
    CHECK(core_settings_validate(&s, CORE_TXT2IMG, NULL), "dpmpp_2m_karras is a sampler");
    text = core_parameters_text(&s, CORE_TXT2IMG, 1, 64, 64);
    CHECK(strstr(text, "Sampler: DPM++ 2M, Schedule type: Karras,") != NULL, "Karras text: %s",
          text);
    g_free(text);
    g_strlcpy(s.sampler, "ddim_karras", sizeof s.sampler);
    expect_invalid(&s, CORE_TXT2IMG, "dpmpp_2m_karras");
}

int main(void)
{
    test_settings_round_trip();
    test_validate();
    test_models();
    test_sizes();
    test_area();
    test_scale();
    test_estimate();
    test_resample();
    test_texts();
    test_read_own();
    test_read_a1111();
    test_read_loras();
    test_read_odd();
    test_png();
    test_samplers();
    TEST_END();
}
