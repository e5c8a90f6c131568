/* core.c: settings, model resolution and the run itself for the Diffuse GIMP
 * plug-in, shared by every GIMP front end (see core.h), and the settings read
 * back from a parameters text (a layer's, an image comment's or a PNG's) for
 * the dialogs; compiled once per GIMP generation, the calls that differ
 * between them behind compat.h.
 *
 * A run has four stages, and only the last touches the image:
 *   1. check the image and the settings (indexed images, floating selections
 *      and bad arguments are refused with a message before any work);
 *   2. read the source pixels (img2img) and check the memory the request needs
 *      against MemAvailable, so the plug-in refuses instead of being killed;
 *   3. run the engine, reporting each denoising step to GIMP's progress and
 *      to the front end's CoreWatch (the progress window: previews, Cancel);
 *   4. make every result layer, then insert them all in one undo group.
 * GIMP kills the plug-in when the user cancels its progress; since nothing is
 * inserted before stage 4, a kill at any earlier point leaves the image as it
 * was. */
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib/gstdio.h>
#include <libgimp/gimp.h>

#include "core.h"
#include "pixels.h"

#define PARASITE_NAME "diffuse-parameters"

static gchar *plugin_dir;

G_DEFINE_QUARK(diffuse - plugin - error - quark, core_error)

/* ---------------------------------------------------------------- settings */

const CoreArg core_size_cond_args[CORE_SIZE_COND_ARGS] = {
    {"original-width", "_1 Original width",
     "SDXL size conditioning: the width the picture should "
     "look as if it was taken at (0 = the generated width)"},
    {"original-height", "_2 Original height",
     "SDXL size conditioning: the original height (0 = "
     "the generated height)"},
    {"crop-left", "_3 Crop left",
     "SDXL crop conditioning: pixels cropped off the left (0 = a "
     "centred, uncropped picture)"},
    {"crop-top", "_4 Crop top", "SDXL crop conditioning: pixels cropped off the top"},
    {"target-width", "_5 Target width",
     "SDXL size conditioning: the target width (0 = the "
     "generated width)"},
    {"target-height", "_6 Target height",
     "SDXL size conditioning: the target height (0 = the "
     "generated height)"},
};

const CoreArg core_empty_negative_arg = {
    "empty-negative", "_7 Encode a blank negative prompt",
    "With an SDXL model, an empty negative prompt means none (a zero unconditional branch, as "
    "diffusers does) unless this is set: then the empty text is encoded as a prompt"};

const CoreArg core_fast_decoder_arg = {
    "fast-decoder", "_Fast decoder (TAESD)",
    "Decode the image with the tiny autoencoder found beside the model (a taesd folder or "
    "taesd_decoder.safetensors): many times faster than the model's VAE, with less detail"};

const CoreArg core_lora_arg = {
    "lora", "LoR_A",
    "A LoRA .safetensors file (kohya/A1111 or diffusers names) to apply to the model, empty for "
    "none; prompt tags <lora:NAME:WEIGHT> apply more"};

const CoreArg core_lora_weight_arg = {
    "lora-weight", "LoRA _weight",
    "How strongly the LoRA applies: 1 as trained, 0 not at all, below 0 the opposite"};

const CoreArg core_area_arg = {
    "inpaint-area", "_Inpaint area",
    "Image to Image: whole-layer generates the selection's bounds at about their own size; "
    "selected-area (A1111's \"Only masked\") grows them by the padding, scales that crop to "
    "the model's native size, generates there and scales the result back"};

const CoreArg core_padding_arg = {
    "padding", "Mas_k padding",
    "Selected area: pixels of context around the selection's bounds (clipped to the layer)"};

const CoreArg core_masked_arg = {
    "masked-content", "Masked co_ntent",
    "Image to Image with a plain model: what the selection starts from, original (the image) "
    "or latent-noise (noise, so that a strength near 1 paints something new); inpainting "
    "models read the selection themselves"};

const CoreArg core_scale_arg = {
    "scale-to", N_("Scale resu_lt into"),
    N_("Text to Image: generate at the width and height, then let GIMP scale the new layers "
       "(its resampling, the default interpolation) to the image or to the selection's bounds "
       "(the image when nothing is selected): the picture fills them, its proportions kept, "
       "centred, what overflows cut. Models draw best at their native size: this replaces "
       "generating at a huge size")};

const gchar *const core_scale_labels[CORE_SCALE_KINDS] = {N_("Generated size"), N_("Image"),
                                                          N_("Selection bounds")};
const gchar *const core_scale_names[CORE_SCALE_KINDS] = {"generated", "image", "selection"};

void core_scale_cover(gint w, gint h, gint target_w, gint target_h, gint *scaled_w, gint *scaled_h,
                      gint *crop_x, gint *crop_y)
{
    /* the larger factor covers; each side at least the target's */
    const gdouble f = MAX((gdouble)target_w / w, (gdouble)target_h / h);

    *scaled_w = MAX(target_w, (gint)(w * f + 0.5));
    *scaled_h = MAX(target_h, (gint)(h * f + 0.5));
    *crop_x = (*scaled_w - target_w) / 2;
    *crop_y = (*scaled_h - target_h) / 2;
}

void core_settings_default(CoreSettings *s)
{
    memset(s, 0, sizeof *s);
    s->seed = -1;
    s->steps = 20;
    s->guidance = 7.5;
    g_strlcpy(s->sampler, "euler_a", sizeof s->sampler);
    s->count = 1;
    s->strength = 0.75;
    s->lora_weight = 1.0;
    s->area = CORE_AREA_WHOLE;
    s->padding = CORE_DEFAULT_PADDING;
    s->masked_content = DIFFUSE_MASKED_ORIGINAL;
}

/* The remembered settings are a GLib key file, one group; each field of
 * CoreSettings that is remembered has one row here, read and written alike. */
#define SETTINGS_GROUP "diffuse"
#define SETTINGS_VERSION 2 /* 1: our own "key=value" lines, read as a key file */

typedef enum { FIELD_TEXT, FIELD_INT, FIELD_DOUBLE, FIELD_BOOL } FieldKind;

typedef struct {
    const gchar *key;   /* or, for a PDB argument's setting, */
    const CoreArg *arg; /* the argument, whose name is the key */
    FieldKind kind;
    gsize offset, size; /* size: FIELD_TEXT's buffer */
} SettingsField;

#define TEXT(key, f)                                                                               \
    {                                                                                              \
        key, NULL, FIELD_TEXT, G_STRUCT_OFFSET(CoreSettings, f), sizeof((CoreSettings *)0)->f      \
    }
#define NUM(key, kind, f)                                                                          \
    {                                                                                              \
        key, NULL, kind, G_STRUCT_OFFSET(CoreSettings, f), 0                                       \
    }
#define ARG(arg, kind, f, size)                                                                    \
    {                                                                                              \
        NULL, &arg, kind, G_STRUCT_OFFSET(CoreSettings, f), size                                   \
    }

static const SettingsField settings_fields[] = {
    TEXT("prompt", prompt),
    TEXT("negative-prompt", negative_prompt),
    NUM("seed", FIELD_INT, seed),
    NUM("last-seed", FIELD_INT, last_seed),
    NUM("steps", FIELD_INT, steps),
    NUM("guidance", FIELD_DOUBLE, guidance),
    TEXT("sampler", sampler),
    NUM("width", FIELD_INT, width),
    NUM("height", FIELD_INT, height),
    NUM("count", FIELD_INT, count),
    NUM("strength", FIELD_DOUBLE, strength),
    TEXT("model", model),
    ARG(core_size_cond_args[0], FIELD_INT, size_cond[0], 0),
    ARG(core_size_cond_args[1], FIELD_INT, size_cond[1], 0),
    ARG(core_size_cond_args[2], FIELD_INT, size_cond[2], 0),
    ARG(core_size_cond_args[3], FIELD_INT, size_cond[3], 0),
    ARG(core_size_cond_args[4], FIELD_INT, size_cond[4], 0),
    ARG(core_size_cond_args[5], FIELD_INT, size_cond[5], 0),
    ARG(core_empty_negative_arg, FIELD_BOOL, empty_negative, 0),
    ARG(core_fast_decoder_arg, FIELD_BOOL, fast_decoder, 0),
    ARG(core_lora_arg, FIELD_TEXT, lora, sizeof((CoreSettings *)0)->lora),
    ARG(core_lora_weight_arg, FIELD_DOUBLE, lora_weight, 0),
    ARG(core_area_arg, FIELD_INT, area, 0),
    ARG(core_padding_arg, FIELD_INT, padding, 0),
    ARG(core_masked_arg, FIELD_INT, masked_content, 0),
    ARG(core_scale_arg, FIELD_INT, scale_to, 0),
};
G_STATIC_ASSERT(CORE_SIZE_COND_ARGS == 6);
#undef TEXT
#undef NUM
#undef ARG

static const gchar *field_key(const SettingsField *f)
{
    return f->arg ? f->arg->name : f->key;
}

gchar *core_settings_serialize(const CoreSettings *s)
{
    GKeyFile *kf = g_key_file_new();
    const gchar *base = (const gchar *)s;

    g_key_file_set_integer(kf, SETTINGS_GROUP, "version", SETTINGS_VERSION);
    for (gsize i = 0; i < G_N_ELEMENTS(settings_fields); i++) {
        const SettingsField *f = &settings_fields[i];
        const void *p = base + f->offset;

        switch (f->kind) {
        case FIELD_TEXT:
            g_key_file_set_string(kf, SETTINGS_GROUP, field_key(f), p);
            break;
        case FIELD_INT:
            g_key_file_set_integer(kf, SETTINGS_GROUP, field_key(f), *(const gint32 *)p);
            break;
        case FIELD_DOUBLE: /* g_ascii_dtostr: the same in every locale */
            g_key_file_set_double(kf, SETTINGS_GROUP, field_key(f), *(const gdouble *)p);
            break;
        case FIELD_BOOL:
            g_key_file_set_boolean(kf, SETTINGS_GROUP, field_key(f), *(const gboolean *)p);
            break;
        }
    }
    gchar *text = g_key_file_to_data(kf, NULL, NULL);
    g_key_file_free(kf);
    return text;
}

/* One field from the key file; a missing or unreadable key leaves it as it was. */
static void settings_read_field(GKeyFile *kf, const SettingsField *f, gchar *base)
{
    GError *error = NULL;
    void *p = base + f->offset;

    if (f->kind == FIELD_TEXT) {
        gchar *v = g_key_file_get_string(kf, SETTINGS_GROUP, field_key(f), NULL);
        if (v)
            g_strlcpy(p, v, f->size);
        g_free(v);
        return;
    }
    if (f->kind == FIELD_DOUBLE) {
        gdouble v = g_key_file_get_double(kf, SETTINGS_GROUP, field_key(f), &error);
        if (!error)
            *(gdouble *)p = v;
    } else if (f->kind == FIELD_INT) {
        gint v = g_key_file_get_integer(kf, SETTINGS_GROUP, field_key(f), &error);
        if (!error)
            *(gint32 *)p = v;
    } else {
        gboolean v = g_key_file_get_boolean(kf, SETTINGS_GROUP, field_key(f), &error);
        if (!error)
            *(gboolean *)p = v;
    }
    g_clear_error(&error);
}

void core_settings_deserialize(CoreSettings *s, const gchar *text)
{
    GKeyFile *kf = g_key_file_new();
    /* version 1 had no group line; its escapes (\\, \n, \r) are the key file's */
    gchar *data = g_str_has_prefix(text, "[") ? g_strdup(text)
                                              : g_strconcat("[" SETTINGS_GROUP "]\n", text, NULL);

    if (g_key_file_load_from_data(kf, data, strlen(data), G_KEY_FILE_NONE, NULL))
        for (gsize i = 0; i < G_N_ELEMENTS(settings_fields); i++)
            settings_read_field(kf, &settings_fields[i], (gchar *)s);
    g_key_file_free(kf);
    g_free(data);
}

gint core_sampler_choices(const CoreSampler **choices)
{
    static CoreSampler table[2 * DIFFUSE_SAMPLER_COUNT];
    static gint n;

    if (!n)
        for (gint i = 0; i < DIFFUSE_SAMPLER_COUNT; i++) {
            const char *karras = diffuse_sampler_karras_label(i);

            table[n] = (CoreSampler){.label = diffuse_sampler_label(i), .sampler = i};
            g_strlcpy(table[n++].id, diffuse_sampler_name(i), sizeof table[0].id);
            if (!karras)
                continue;
            table[n] = (CoreSampler){.label = karras, .sampler = i, .karras = TRUE};
            g_snprintf(table[n++].id, sizeof table[0].id, "%s%s", diffuse_sampler_name(i),
                       CORE_KARRAS_SUFFIX);
        }
    *choices = table;
    return n;
}

gint core_sampler_find(const gchar *id)
{
    const CoreSampler *c;
    gint n = core_sampler_choices(&c);

    for (gint i = 0; id && i < n; i++)
        if (!strcmp(id, c[i].id))
            return i;
    return -1;
}

/* "euler, euler_a, ... or pndm": the ids, for messages; g_free(). */
static gchar *sampler_ids(void)
{
    const CoreSampler *c;
    gint n = core_sampler_choices(&c);
    GString *text = g_string_new(NULL);

    for (gint i = 0; i < n; i++)
        g_string_append_printf(text, "%s%s", i == 0 ? "" : i == n - 1 ? " or " : ", ", c[i].id);
    return g_string_free(text, FALSE);
}

static gboolean size_ok(gint v)
{
    return v == 0 || (v >= 8 && v <= CORE_MAX_SIDE && v % 8 == 0);
}

#define CALLING_ERROR(...) (g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING, __VA_ARGS__), FALSE)

gboolean core_settings_validate(const CoreSettings *s, CoreMode mode, GError **error)
{
    if (!g_utf8_validate(s->prompt, -1, NULL) || !g_utf8_validate(s->negative_prompt, -1, NULL))
        return CALLING_ERROR("prompt: not valid UTF-8 text");
    if (s->seed < -1)
        return CALLING_ERROR("seed: %d is not possible: use 0 or more, or -1 for a random seed",
                             s->seed);
    if (s->steps < 1 || s->steps > CORE_MAX_STEPS)
        return CALLING_ERROR("steps: %d is outside 1..%d", s->steps, CORE_MAX_STEPS);
    if (!isfinite(s->guidance) || s->guidance < 0 || s->guidance > 100)
        return CALLING_ERROR("guidance: %g is outside 0..100", s->guidance);
    if (core_sampler_find(s->sampler) < 0) {
        gchar *ids = sampler_ids();

        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING, "sampler: \"%s\" is not one of %s",
                    s->sampler, ids);
        g_free(ids);
        return FALSE;
    }
    if (s->count < 1 || s->count > CORE_MAX_COUNT)
        return CALLING_ERROR("count: %d is outside 1..%d", s->count, CORE_MAX_COUNT);
    if (mode == CORE_TXT2IMG && (!size_ok(s->width) || !size_ok(s->height)))
        return CALLING_ERROR("size: %dx%d is not possible: width and height must be multiples "
                             "of 8 from 8 to %d (0 = the image's size)",
                             s->width, s->height, CORE_MAX_SIDE);
    if (mode == CORE_IMG2IMG && !(s->strength > 0 && s->strength <= 1))
        return CALLING_ERROR("strength: %g is outside (0, 1]", s->strength);
    if (s->area != CORE_AREA_WHOLE && s->area != CORE_AREA_SELECTED)
        return CALLING_ERROR("%s: %d is neither whole-layer (0) nor selected-area (1)",
                             core_area_arg.name, s->area);
    if (s->padding < 0 || s->padding > CORE_MAX_PADDING)
        return CALLING_ERROR("%s: %d is outside 0..%d", core_padding_arg.name, s->padding,
                             CORE_MAX_PADDING);
    if (s->masked_content < 0 || s->masked_content >= DIFFUSE_MASKED_KINDS)
        return CALLING_ERROR("%s: %d is neither original (0) nor latent-noise (1)",
                             core_masked_arg.name, s->masked_content);
    if (s->scale_to < 0 || s->scale_to >= CORE_SCALE_KINDS)
        return CALLING_ERROR("%s: %d is none of generated (0), image (1) and selection (2)",
                             core_scale_arg.name, s->scale_to);
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        if (s->size_cond[i] < 0 || s->size_cond[i] > CORE_MAX_COND)
            return CALLING_ERROR("%s: %d is outside 0..%d", core_size_cond_args[i].name,
                                 s->size_cond[i], CORE_MAX_COND);
    if (!isfinite(s->lora_weight) || fabs(s->lora_weight) > CORE_MAX_LORA_WEIGHT)
        return CALLING_ERROR("%s: %g is outside %g..%g", core_lora_weight_arg.name, s->lora_weight,
                             -CORE_MAX_LORA_WEIGHT, CORE_MAX_LORA_WEIGHT);
    if (s->lora[0] && !g_file_test(s->lora, G_FILE_TEST_IS_REGULAR))
        return CALLING_ERROR("%s: there is no file %s: choose a LoRA .safetensors file, or none",
                             core_lora_arg.name, s->lora);
    return TRUE;
}

gchar *core_lora_folder(void)
{
    gchar path[4096];

    diffuse_default_lora_dir(path, sizeof path);
    return g_strdup(path);
}

/* ---------------------------------------------------------------- models */

void core_process_init(char **argv)
{
    diffuse_process_init(argv); /* may run the plug-in again, in place */
    g_setenv("BABL_LUT", "0", FALSE);
}

void core_set_plugin_dir(const gchar *dir)
{
    g_free(plugin_dir);
    plugin_dir = g_strdup(dir);
}

void core_set_plugin_dir_of_binary(const gchar *argv0)
{
    gchar *exe = g_file_read_link("/proc/self/exe", NULL);
    gchar *dir = g_path_get_dirname(exe ? exe : argv0);

    core_set_plugin_dir(dir);
    g_free(dir);
    g_free(exe);
}

gchar *core_locale_dir(void)
{
    return g_build_filename(plugin_dir ? plugin_dir : ".", "locale", NULL);
}

void core_i18n_init(void)
{
    gchar *dir = core_locale_dir();

    setlocale(LC_MESSAGES, "");
    bindtextdomain(GETTEXT_PACKAGE, dir);
    bind_textdomain_codeset(GETTEXT_PACKAGE, "UTF-8");
    g_free(dir);
}

gchar *core_help_uri(void)
{
    gchar *path = g_build_filename(plugin_dir ? plugin_dir : ".", "help", NULL);
    gchar *uri = g_filename_to_uri(path, NULL, NULL);

    g_free(path);
    return uri;
}

gchar *core_model_resolve(const gchar *model, GError **error)
{
    gchar *own = plugin_dir ? g_build_filename(plugin_dir, "models", "default", NULL) : NULL;
    const char *beside[] = {own, NULL};
    gchar path[4096], err[DIFFUSE_ERROR_SIZE];
    diffuse_status st;

    if (model && *model) {
        g_free(own);
        return g_strdup(model);
    }
    /* the copy installed beside the plug-in, found in the engine's order */
    st = diffuse_default_model_path(beside, path, sizeof path, err, sizeof err);
    g_free(own);
    if (st == DIFFUSE_OK)
        return g_strdup(path);
    g_set_error_literal(error, CORE_ERROR, CORE_ERROR_EXECUTION, err);
    return NULL;
}

diffuse_model *core_model_load(const gchar *model, GError **error)
{
    gchar err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_load_params params = diffuse_load_params_default();
    gchar *path = core_model_resolve(model, error);
    diffuse_model *m = NULL;
    diffuse_status st;

    if (!path)
        return NULL;
    st = diffuse_model_open(path, &params, &m, err, sizeof err);
    if (!m)
        /* the engine's message names the file. A model the caller named that
         * cannot be read or is none is a bad argument; the default model's
         * failing, or memory, is the run's */
        g_set_error(error, CORE_ERROR,
                    model && *model && (st == DIFFUSE_ERR_IO || st == DIFFUSE_ERR_FORMAT)
                        ? CORE_ERROR_CALLING
                        : CORE_ERROR_EXECUTION,
                    "cannot load the model: %s", err[0] ? err : path);
    g_free(path);
    return m;
}

static gchar *count_text(gint64 n)
{
    if (n >= 1000000000)
        return g_strdup_printf("%.2fG", n / 1e9);
    if (n >= 1000000)
        return g_strdup_printf("%.1fM", n / 1e6);
    return g_strdup_printf("%.0fK", n / 1e3);
}

gboolean core_model_has_fast_decoder(const diffuse_model *m)
{
    diffuse_model_info info;

    if (!m)
        return FALSE;
    diffuse_model_get_info(m, &info);
    return info.has_fast_decoder != 0;
}

gchar *core_model_describe(const diffuse_model *m)
{
    diffuse_model_info info;
    gchar *params, *text;

    diffuse_model_get_info(m, &info);
    params = count_text(info.params_unet + info.params_vae + info.params_text);
    text = g_strdup_printf("%s, %dx%d native, %s parameters, %s", info.family_name,
                           info.native_size, info.native_size, params, info.dtype);
    g_free(params);
    return text;
}

gchar *core_model_display_name(const gchar *model)
{
    gchar *path, *base;

    if (!model || !*model)
        return g_strdup("default");
    path = g_strdup(model);
    while (strlen(path) > 1 && g_str_has_suffix(path, G_DIR_SEPARATOR_S))
        path[strlen(path) - 1] = '\0';
    base = g_path_get_basename(path);
    g_free(path);
    if (g_str_has_suffix(base, ".safetensors"))
        base[strlen(base) - strlen(".safetensors")] = '\0';
    return base;
}

/* A model's own settings: a diffusers folder names them in model_index.json
 * ("_diffuse_defaults", as the default model does) or, for distilled models
 * (SD-Turbo, LCM: few steps, no guidance), in its scheduler config (the
 * engine's suggested settings); single files carry nothing that says so, so
 * their names are the hint. */
void core_settings_model_defaults(CoreSettings *s, const diffuse_model *m, const gchar *model)
{
    gchar *name = core_model_display_name(model);
    gchar *lower = g_ascii_strdown(name, -1);
    diffuse_model_info info;

    if (m)
        diffuse_model_get_info(m, &info);
    if (m && info.suggested_sampler >= 0) {
        s->steps = info.suggested_steps;
        s->guidance = info.suggested_guidance;
        g_strlcpy(s->sampler, diffuse_sampler_name((diffuse_sampler)info.suggested_sampler),
                  sizeof s->sampler);
    } else if (strstr(lower, "turbo")) {
        s->steps = 4;
        s->guidance = 1.0;
        g_strlcpy(s->sampler, "euler_a", sizeof s->sampler);
    } else if (strstr(lower, "lcm")) {
        s->steps = 4;
        s->guidance = 1.0;
        g_strlcpy(s->sampler, "lcm", sizeof s->sampler);
    } else {
        s->steps = 20;
        s->guidance = 7.5;
        g_strlcpy(s->sampler, "euler_a", sizeof s->sampler);
    }
    g_free(lower);
    g_free(name);
}

/* ---------------------------------------------------------------- images */

gboolean core_image_check(CoreImage image, GError **error)
{
    if (compat_image_base_type(image) == GIMP_INDEXED) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION,
                    "Diffuse needs an RGB or grayscale image: Image > Mode > RGB");
        return FALSE;
    }
    if (compat_image_has_floating_sel(image)) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION,
                    "the image has a floating selection: anchor it or make it a new layer "
                    "first (Layer > Anchor Layer)");
        return FALSE;
    }
    return TRUE;
}

gint core_round_to(gdouble v, gint unit)
{
    return MAX(unit, (gint)floor(v / unit + 0.5) * unit);
}

gint core_round8(gdouble v)
{
    return core_round_to(v, CORE_SIZE_UNIT);
}

CoreArea core_area_default(gint width, gint height, gint native)
{
    gint longer = MAX(width, height);

    return longer * 2 < native || longer > native * 2 ? CORE_AREA_SELECTED : CORE_AREA_WHOLE;
}

CoreArea core_area_suggest(CoreImage image, CoreDrawable drawable, gint native)
{
    gint x, y, w, h;

    if (drawable == CORE_NO_DRAWABLE || compat_selection_is_empty(image) ||
        !compat_drawable_mask_intersect(drawable, &x, &y, &w, &h))
        return CORE_AREA_WHOLE;
    return core_area_default(w, h, native);
}

void core_area_crop(gint x, gint y, gint w, gint h, gint padding, gint bounds_w, gint bounds_h,
                    gint *cx, gint *cy, gint *cw, gint *ch)
{
    *cx = MAX(x - padding, 0);
    *cy = MAX(y - padding, 0);
    *cw = MIN(x + w + padding, bounds_w) - *cx;
    *ch = MIN(y + h + padding, bounds_h) - *cy;
}

void core_area_gen_size(gint width, gint height, gint native, gint *gen_width, gint *gen_height)
{
    gdouble scale = (gdouble)MAX(native, 8) / MAX(MAX(width, height), 1);

    *gen_width = CLAMP(core_round8(width * scale), 8, CORE_MAX_SIDE);
    *gen_height = CLAMP(core_round8(height * scale), 8, CORE_MAX_SIDE);
}

void core_image_default_size(CoreImage image, gint *width, gint *height)
{
    gint w = compat_image_width(image);
    gint h = compat_image_height(image);
    gdouble scale = MIN(1.0, (gdouble)CORE_DEFAULT_MAX_SIDE / MAX(w, h));

    *width = MIN(core_round8(w * scale), CORE_DEFAULT_MAX_SIDE);
    *height = MIN(core_round8(h * scale), CORE_DEFAULT_MAX_SIDE);
}

/* ---------------------------------------------------------------- parameters */

gchar *core_parameters_text(const CoreSettings *s, CoreMode mode, guint64 seed, gint width,
                            gint height)
{
    gchar *model = core_model_display_name(s->model);
    gchar weight[G_ASCII_DTOSTR_BUF_SIZE];
    /* "PATH:WEIGHT", as the CLI's --lora records it */
    gchar *lora =
        s->lora[0] ? g_strconcat(s->lora, ":",
                                 g_ascii_formatd(weight, sizeof weight, "%g", s->lora_weight), NULL)
                   : NULL;
    const gboolean i2i = mode == CORE_IMG2IMG;
    const CoreSampler *samplers, *sampler;

    core_sampler_choices(&samplers);
    sampler = &samplers[MAX(0, core_sampler_find(s->sampler))];
    diffuse_parameters p = {.prompt = s->prompt,
                            .negative_prompt = s->negative_prompt,
                            .steps = s->steps,
                            .sampler = sampler->sampler,
                            .karras = sampler->karras,
                            .guidance = (float)s->guidance,
                            .has_seed = 1,
                            .seed = seed,
                            .width = width,
                            .height = height,
                            .model = model,
                            .strength = i2i ? (float)s->strength : 0,
                            .rng = DIFFUSE_RNG_PHILOX,
                            .size_cond = {s->size_cond[0], s->size_cond[1], s->size_cond[2],
                                          s->size_cond[3], s->size_cond[4], s->size_cond[5]},
                            .loras = lora,
                            .masked_content = i2i ? s->masked_content : -1,
                            /* Image to Image's Selected area is A1111's "Only masked" */
                            .inpaint_area = i2i && s->area == CORE_AREA_SELECTED,
                            .padding = s->padding};
    char *text = diffuse_parameters_text(&p); /* the engine keeps the format */
    gchar *out = g_strdup(text ? text : "");
    free(text);
    g_free(lora);
    g_free(model);
    return out;
}

gchar *core_layer_name(const gchar *prompt, guint64 seed)
{
    gchar **words = g_strsplit_set(prompt, " \t\r\n", -1);
    gchar *line, *name;
    GString *joined = g_string_new(NULL);

    for (gchar **w = words; *w; w++)
        if (**w)
            g_string_append_printf(joined, "%s%s", joined->len ? " " : "", *w);
    g_strfreev(words);
    if (g_utf8_strlen(joined->str, -1) > CORE_LAYER_NAME_CHARS) {
        gchar *cut = g_utf8_substring(joined->str, 0, CORE_LAYER_NAME_CHARS);

        g_string_assign(joined, cut);
        g_string_append(joined, "...");
        g_free(cut);
    }
    line = g_string_free(joined, FALSE);
    name = g_strdup_printf("Diffuse: %s (seed %" G_GUINT64_FORMAT ")", line, seed);
    g_free(line);
    return name;
}

/* ---------------------------------------------------------------- reading settings back */

/* Whether the engine found a line of settings (A1111's: three or more "Key:
 * value" pairs, Steps and Seed among them) and not only a prompt: a comment
 * of other keys ("Title: ..., Author: ...") is not taken for one. */
static gboolean has_settings(const diffuse_parameters *p)
{
    return p->steps || p->sampler >= 0 || p->karras >= 0 || p->guidance >= 0 || p->has_seed ||
           p->width || p->height || p->model || p->strength > 0 || p->clip_skip || p->rng >= 0 ||
           p->loras;
}

/* Appends one "Key: value" to the list of what was not used. */
static void not_used(GString *list, const gchar *format, ...) G_GNUC_PRINTF(2, 3);
static void not_used(GString *list, const gchar *format, ...)
{
    va_list args;

    if (list->len)
        g_string_append(list, ", ");
    va_start(args, format);
    g_string_append_vprintf(list, format, args);
    va_end(args);
}

/* Copies text (NULL = "") into a settings field, cut at a character
 * boundary; FALSE when it had to be cut. */
static gboolean take_text(gchar *dst, gsize size, const gchar *text)
{
    const gchar *end;

    g_strlcpy(dst, text ? text : "", size);
    if (!g_utf8_validate(dst, -1, &end))
        dst[end - dst] = '\0';
    return !text || strlen(text) < size;
}

/* A float of the text as the double its "%g" says: 6.1, not 6.0999999. */
static gdouble decimal(float v)
{
    gchar buf[G_ASCII_DTOSTR_BUF_SIZE];

    return g_ascii_strtod(g_ascii_formatd(buf, sizeof buf, "%g", v), NULL);
}

/* Steps, guidance, sampler and seed, where the text gives them. */
static void take_sampling(CoreSettings *s, const diffuse_parameters *p, GString *unused)
{
    gchar buf[G_ASCII_DTOSTR_BUF_SIZE];

    if (p->steps >= 1 && p->steps <= CORE_MAX_STEPS)
        s->steps = p->steps;
    else if (p->steps)
        not_used(unused, "Steps: %d", p->steps);
    if (p->guidance >= 0 && p->guidance <= 100)
        s->guidance = decimal(p->guidance);
    else if (p->guidance > 100)
        not_used(unused, "CFG scale: %s", g_ascii_formatd(buf, sizeof buf, "%g", p->guidance));
    if (p->sampler >= 0 && p->sampler < DIFFUSE_SAMPLER_COUNT) {
        const gboolean karras = p->karras > 0 && diffuse_sampler_karras_label(p->sampler);

        g_snprintf(s->sampler, sizeof s->sampler, "%s%s",
                   diffuse_sampler_name((diffuse_sampler)p->sampler),
                   karras ? CORE_KARRAS_SUFFIX : "");
    }
    if (p->karras > 0 && !(p->sampler >= 0 && diffuse_sampler_karras_label(p->sampler)))
        not_used(unused, "Schedule type: Karras");
    if (p->has_seed && p->seed <= G_MAXINT32)
        s->seed = (gint32)p->seed;
    else if (p->has_seed)
        not_used(unused, "Seed: %" G_GUINT64_FORMAT " (the plug-in's seeds go up to %d)", p->seed,
                 G_MAXINT32);
    if (p->clip_skip > 1)
        not_used(unused, "Clip skip: %d", p->clip_skip);
    if (p->rng >= 0 && p->rng != DIFFUSE_RNG_PHILOX)
        not_used(unused, "RNG: %s", diffuse_rng_kind_a1111((diffuse_rng_kind)p->rng));
}

/* Size (Text to Image), strength (Image to Image), SDXL's conditioning, and
 * the model's name, which says which model to choose. */
static void take_image(CoreSettings *s, CoreMode mode, const diffuse_parameters *p, GString *unused)
{
    gchar buf[G_ASCII_DTOSTR_BUF_SIZE];
    gchar *model = core_model_display_name(s->model);
    const diffuse_size_cond *c = &p->size_cond;

    if (mode == CORE_TXT2IMG && p->width && p->height && size_ok(p->width) && size_ok(p->height)) {
        s->width = p->width;
        s->height = p->height;
    } else if (p->width || p->height)
        not_used(unused, "Size: %dx%d%s", p->width, p->height,
                 mode == CORE_IMG2IMG ? " (Image to Image keeps the selection's size)" : "");
    if (p->strength > 0 && mode == CORE_IMG2IMG)
        s->strength = decimal(p->strength);
    else if (p->strength > 0)
        not_used(unused, "Denoising strength: %s (for Image to Image)",
                 g_ascii_formatd(buf, sizeof buf, "%g", p->strength));
    /* a size the text gives as the image's own is the default, 0 */
    s->size_cond[0] = c->original_width == p->width ? 0 : c->original_width;
    s->size_cond[1] = c->original_height == p->height ? 0 : c->original_height;
    s->size_cond[2] = c->crop_left, s->size_cond[3] = c->crop_top;
    s->size_cond[4] = c->target_width == p->width ? 0 : c->target_width;
    s->size_cond[5] = c->target_height == p->height ? 0 : c->target_height;
    if (p->model && strcmp(p->model, model))
        not_used(unused, "Model: %s (choose it in the Model row)", p->model);
    g_free(model);
}

/* Image to Image's masked content, inpaint area and padding, where given. */
static void take_inpaint(CoreSettings *s, CoreMode mode, const diffuse_parameters *p,
                         GString *unused)
{
    const gboolean i2i = mode == CORE_IMG2IMG;

    if (p->masked_content >= 0 && i2i)
        s->masked_content = p->masked_content;
    else if (p->masked_content == DIFFUSE_MASKED_LATENT_NOISE)
        not_used(unused, "Masked content: latent noise (for Image to Image)");
    if (p->inpaint_area >= 0 && i2i)
        s->area = p->inpaint_area ? CORE_AREA_SELECTED : CORE_AREA_WHOLE;
    else if (p->inpaint_area > 0)
        not_used(unused, "Inpaint area: Only masked (for Image to Image)");
    if (p->padding >= 0 && p->padding <= CORE_MAX_PADDING && i2i)
        s->padding = p->padding;
    else if (p->padding >= 0)
        not_used(unused, "Masked area padding: %d%s", p->padding,
                 i2i ? "" : " (for Image to Image)");
}

/* "PATH:WEIGHT, ...": the first that fits the settings (none when the text
 * names none), the rest reported. Each is split at its last colon when a
 * number follows it, as the CLI's --lora does; without one it applies fully. */
static void take_loras(CoreSettings *s, const gchar *loras, GString *unused)
{
    gchar **items = g_strsplit(loras ? loras : "", ",", -1);
    gboolean taken = FALSE;

    s->lora[0] = '\0';
    s->lora_weight = 1.0;
    for (gchar **item = items; *item; item++) {
        gchar *path = g_strstrip(*item), *written = g_strdup(path);
        gchar *colon = strrchr(path, ':'), *end = NULL;
        gdouble weight = colon ? g_ascii_strtod(colon + 1, &end) : 1.0;

        if (colon && end > colon + 1 && !*end && isfinite(weight))
            *colon = '\0';
        else
            weight = 1.0;
        if (!taken && *path && strlen(path) < sizeof s->lora &&
            fabs(weight) <= CORE_MAX_LORA_WEIGHT) {
            g_strlcpy(s->lora, path, sizeof s->lora);
            s->lora_weight = weight;
            taken = TRUE;
        } else if (*written)
            not_used(unused, "LoRA: %s", written);
        g_free(written);
    }
    g_strfreev(items);
}

gboolean core_settings_from_parameters(CoreSettings *s, CoreMode mode, const gchar *text,
                                       gchar **unused)
{
    /* odd bytes become U+FFFD first, so every field is text GTK can show */
    gchar *valid = g_utf8_make_valid(text ? text : "", -1);
    diffuse_parameters p;
    GString *list;
    gboolean ok = diffuse_parameters_parse(valid, &p, NULL, 0) == DIFFUSE_OK;

    g_free(valid);
    if (unused)
        *unused = NULL;
    if (!ok || !has_settings(&p)) {
        if (ok)
            diffuse_parameters_free(&p);
        return FALSE;
    }
    list = g_string_new(p.extra); /* other tools' keys, as written */
    if (!take_text(s->prompt, sizeof s->prompt, p.prompt))
        not_used(list, "Prompt: the end, after %d bytes", CORE_TEXT_MAX - 1);
    if (!take_text(s->negative_prompt, sizeof s->negative_prompt, p.negative_prompt))
        not_used(list, "Negative prompt: the end, after %d bytes", CORE_TEXT_MAX - 1);
    take_sampling(s, &p, list);
    take_image(s, mode, &p, list);
    take_inpaint(s, mode, &p, list);
    take_loras(s, p.loras, list);
    diffuse_parameters_free(&p);
    if (unused && list->len)
        *unused = g_utf8_make_valid(list->str, -1);
    g_string_free(list, TRUE);
    return TRUE;
}

/* text (taken, may be NULL) when it holds settings, else NULL. */
static gchar *if_settings(gchar *text)
{
    CoreSettings *probe = g_new(CoreSettings, 1);

    core_settings_default(probe);
    if (text && !core_settings_from_parameters(probe, CORE_TXT2IMG, text, NULL))
        g_clear_pointer(&text, g_free);
    g_free(probe);
    return text;
}

/* A parasite's text, the parasite freed; NULL for none. */
static gchar *parasite_text(GimpParasite *parasite)
{
    gchar *text = parasite ? compat_parasite_text(parasite) : NULL;

    if (parasite)
        gimp_parasite_free(parasite);
    return text;
}

/* The "parameters" text of the PNG the image was opened from; NULL for none. */
static gchar *imported_png_text(CoreImage image)
{
    gchar *path = compat_image_file_path(image);
    gchar *text = path ? core_png_parameters(path) : NULL;

    g_free(path);
    return text;
}

gchar *core_parameters_find(CoreImage image, CoreDrawable drawable, CoreParametersSource *source)
{
    gchar *text = NULL;

    *source = CORE_FROM_LAYER;
    if (drawable != CORE_NO_DRAWABLE)
        text = if_settings(parasite_text(compat_item_get_parasite(drawable, PARASITE_NAME)));
    if (!text) {
        *source = CORE_FROM_COMMENT;
        text = if_settings(parasite_text(compat_image_get_parasite(image, "gimp-comment")));
    }
    if (!text) {
        *source = CORE_FROM_FILE;
        text = if_settings(imported_png_text(image));
    }
    return text;
}

#define PNG_TEXT_MAX (1 << 20) /* bytes of a text chunk read; longer ones are passed over */

static guint32 read_be32(const guchar *b)
{
    return (guint32)b[0] << 24 | (guint32)b[1] << 16 | (guint32)b[2] << 8 | b[3];
}

/* A tEXt (Latin-1) or uncompressed iTXt (UTF-8) chunk's text when its keyword
 * is "parameters"; NULL otherwise. */
static gchar *chunk_parameters(const guchar *type, const gchar *data, gsize size)
{
    static const gchar key[] = "parameters"; /* with its NUL, the separator */
    const gchar *text, *end = data + size;

    if (size < sizeof key || memcmp(data, key, sizeof key))
        return NULL;
    text = data + sizeof key;
    if (!memcmp(type, "tEXt", 4))
        return g_convert(text, end - text, "UTF-8", "ISO-8859-1", NULL, NULL, NULL);
    /* iTXt: compression flag and method, language tag, translated keyword, text */
    if (end - text < 2 || text[0] != 0)
        return NULL;
    text += 2;
    for (gint field = 0; field < 2 && text; field++) {
        const gchar *nul = memchr(text, 0, end - text);

        text = nul ? nul + 1 : NULL;
    }
    return text ? g_utf8_make_valid(text, end - text) : NULL;
}

gchar *core_png_parameters(const gchar *path)
{
    static const guchar signature[8] = {137, 'P', 'N', 'G', '\r', '\n', 26, '\n'};
    FILE *f = g_fopen(path, "rb");
    guchar head[8]; /* a chunk's length and type */
    gchar *text = NULL;

    if (!f)
        return NULL;
    if (fread(head, 1, 8, f) == 8 && !memcmp(head, signature, 8))
        while (!text && fread(head, 1, 8, f) == 8 && memcmp(head + 4, "IEND", 4)) {
            guint32 size = read_be32(head);
            gboolean wanted = (!memcmp(head + 4, "tEXt", 4) || !memcmp(head + 4, "iTXt", 4)) &&
                              size <= PNG_TEXT_MAX;
            gchar *data = wanted ? g_malloc(size) : NULL;

            if (wanted && fread(data, 1, size, f) == size)
                text = chunk_parameters(head + 4, data, size);
            g_free(data);
            if (fseek(f, wanted ? 4 : (long)size + 4, SEEK_CUR)) /* the data and CRC */
                break;
        }
    fclose(f);
    return text;
}

/* ---------------------------------------------------------------- the run */

/* What one run carries from stage to stage. */
typedef struct {
    CoreImage image;
    CoreDrawable drawable; /* CORE_NO_DRAWABLE: txt2img on top of the image */
    CoreMode mode;
    CoreSettings s;       /* the settings with seed and size resolved */
    diffuse_model *model; /* borrowed or owned_model */
    diffuse_model *owned_model;
    PixelsRegion region; /* img2img source */
    diffuse_request req;
    diffuse_lora lora;     /* s.lora, when named */
    GString *notices;      /* what the engine told while the run went ahead */
    diffuse_image *images; /* [s.count], filled by the engine */
    gboolean generated;
    const CoreWatch *watch;  /* NULL, or the front end's window */
    gsize rss_start;         /* bytes resident when stage 2 began */
    gsize need;              /* bytes the request adds: the memory check's estimate */
    gint place_x, place_y;   /* txt2img: where the layers go, centred (place()) */
    gint target_w, target_h; /* txt2img: their size, the generated one unless scaled (place()) */
} Job;

/* The engine's notices (a LoRA that matches only part of the model, a prompt
 * tag it leaves out) are kept and shown in one message when the run is over:
 * libgimp is talked to from the plug-in's own thread only, and diffuse.h does
 * not say which thread tells them. */
static void on_notice(void *user, const char *message)
{
    Job *job = user;

    g_string_append_printf(job->notices, "%s%s", job->notices->len ? "\n" : "", message);
}

static int on_progress(void *user, int image, int count, int step, int steps)
{
    const Job *job = user;
    gchar text[128];

    if (step < steps)
        g_snprintf(text, sizeof text, "Diffuse: step %d/%d (image %d/%d)", step, steps, image + 1,
                   count);
    else /* the decode runs (a decode in bands asks again between its bands) */
        g_snprintf(text, sizeof text, "Diffuse: decoding (image %d/%d)", image + 1, count);
    gimp_progress_set_text(text);
    gimp_progress_update(((gdouble)image * steps + step) / ((gdouble)count * steps));
    /* GIMP's own progress cancels by killing the plug-in (the file comment);
     * the front end's window asks to stop */
    return job->watch && job->watch->step &&
           !job->watch->step(job->watch->user, image, count, step, steps);
}

static int on_preview(void *user, int image, int step, int steps, const float *rgb, int width,
                      int height)
{
    const CoreWatch *watch = ((const Job *)user)->watch;

    return !watch->preview(watch->user, image, step, steps, rgb, width, height);
}

static gboolean check_memory(Job *job, GError **error)
{
    const diffuse_request *r = &job->req;
    gsize need = diffuse_request_memory(job->model, r);
    gsize have = diffuse_memory_available(); /* the engine's, with its cap */

    if (job->mode == CORE_IMG2IMG)
        need += pixels_region_memory(job->region.width, job->region.height, r->width, r->height,
                                     r->count,
                                     (gsize)job->region.crop_width * job->region.crop_height) +
                pixels_babl_memory(job->region.native_format,
                                   MAX((gsize)job->region.width * job->region.height,
                                       (gsize)job->region.crop_width * job->region.crop_height));
    else /* and for scaling one (pixels_write_scaled()) */
        need +=
            (gsize)r->count * r->width * r->height * 3 * sizeof(float) +
            (job->s.scale_to != CORE_SCALE_NONE ? (gsize)r->width * r->height * 4 * sizeof(float)
                                                : 0);
    job->need = need;
    if (have && need > have) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION,
                    "%dx%d needs %" G_GSIZE_FORMAT " MiB of memory, only %" G_GSIZE_FORMAT
                    " MiB are available: choose a smaller size or selection, or fewer images",
                    r->width, r->height, need >> 20, have >> 20);
        return FALSE;
    }
    return TRUE;
}

/* The request s makes: text, seed, sampling, size and count (the caller
 * adds the rest); the strings are s's. s->sampler must be valid, or it is
 * taken as the first. */
static void request_from_settings(const CoreSettings *s, diffuse_request *r)
{
    const CoreSampler *samplers;
    const gint i = MAX(0, core_sampler_find(s->sampler)); /* validated for a run */

    *r = diffuse_request_default();
    r->prompt = s->prompt;
    /* "" means none given unless the settings say it is a prompt (SDXL) */
    r->negative_prompt = s->negative_prompt[0] || s->empty_negative ? s->negative_prompt : NULL;
    r->size_cond = (diffuse_size_cond){.original_width = s->size_cond[0],
                                       .original_height = s->size_cond[1],
                                       .crop_left = s->size_cond[2],
                                       .crop_top = s->size_cond[3],
                                       .target_width = s->size_cond[4],
                                       .target_height = s->size_cond[5]};
    r->fast_decode = s->fast_decoder;
    r->seed = (guint64)MAX(0, s->seed);
    r->steps = s->steps;
    r->guidance = s->guidance;
    core_sampler_choices(&samplers);
    r->sampler = samplers[i].sampler;
    r->karras = samplers[i].karras;
    r->count = s->count;
    r->width = s->width;
    r->height = s->height;
}

void core_settings_estimate(const diffuse_model *model, const CoreSettings *s, gsize *memory,
                            gdouble *seconds)
{
    diffuse_request r;

    request_from_settings(s, &r);
    r.count = MAX(1, r.count);
    *memory = diffuse_request_memory(model, &r);
    *seconds = diffuse_request_seconds(model, &r);
}

/* Stage 2: fills job->req (and job->region for img2img). */
static gboolean prepare(Job *job, GError **error)
{
    diffuse_request *r = &job->req;

    job->rss_start = diffuse_rss_now();
    request_from_settings(&job->s, r);
    r->progress = on_progress;
    r->progress_user = job;
    if (job->watch && job->watch->preview) { /* before the memory check: previews cost some */
        r->preview = on_preview;
        r->preview_user = job;
        r->preview_every = MAX(1, job->s.steps / CORE_PREVIEWS);
    }
    r->notice = on_notice;
    r->notice_user = job;
    if (job->s.lora[0]) {
        const float w = (float)job->s.lora_weight;

        job->lora = (diffuse_lora){.path = job->s.lora, .weight = w, .unet_weight = w};
        r->loras = &job->lora;
        r->lora_count = 1;
    }
    if (job->mode == CORE_IMG2IMG) {
        diffuse_model_info info;

        diffuse_model_get_info(job->model, &info);
        if (!pixels_region_read(job->image, job->drawable, info.native_size, job->s.area,
                                job->s.padding, &job->region, error))
            return FALSE;
        r->width = job->region.gen_width;
        r->height = job->region.gen_height;
        r->init_image = job->region.init;
        r->mask = job->region.gen_mask;
        r->masked_content = (diffuse_masked_content)job->s.masked_content;
        r->strength = job->s.strength;
    }
    return check_memory(job, error);
}

/* Stage 3. */
static gboolean generate(Job *job, GError **error)
{
    gchar err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_status st;

    job->images = g_new0(diffuse_image, job->s.count);
    gimp_progress_init("Diffuse");
    st = diffuse_generate(job->model, &job->req, job->images, err, sizeof err);
    if (st == DIFFUSE_OK) {
        job->generated = TRUE;
        return TRUE;
    }
    g_set_error(error, CORE_ERROR,
                st == DIFFUSE_ERR_CANCELLED  ? CORE_ERROR_CANCELLED
                : st == DIFFUSE_ERR_ARGUMENT ? CORE_ERROR_CALLING
                                             : CORE_ERROR_EXECUTION,
                "%s", err);
    return FALSE;
}

/* The GEGL sampler of the plug-in's context's interpolation, GIMP's default
 * (Preferences, Tool Options) unless a script set another: what GIMP's own
 * Scale Layer would use. */
static GeglSamplerType context_sampler(void)
{
    switch (gimp_context_get_interpolation()) {
    case GIMP_INTERPOLATION_NONE:
        return GEGL_SAMPLER_NEAREST;
    case GIMP_INTERPOLATION_LINEAR:
        return GEGL_SAMPLER_LINEAR;
    case GIMP_INTERPOLATION_NOHALO:
        return GEGL_SAMPLER_NOHALO;
    case GIMP_INTERPOLATION_LOHALO:
        return GEGL_SAMPLER_LOHALO;
    default:
        return GEGL_SAMPLER_CUBIC;
    }
}

/* A new layer holding result i, not yet in the image; CORE_NO_LAYER on
 * failure. */
static CoreLayer make_layer(Job *job, gint i, GError **error)
{
    const diffuse_image *img = &job->images[i];
    gboolean gray = compat_image_base_type(job->image) == GIMP_GRAY;
    gboolean i2i = job->mode == CORE_IMG2IMG;
    gint w = i2i ? job->region.width : job->target_w;
    gint h = i2i ? job->region.height : job->target_h;
    gchar *name = core_layer_name(job->s.prompt, img->seed);
    gchar *text = core_parameters_text(&job->s, job->mode, img->seed, img->width, img->height);
    CoreLayer layer;
    GimpParasite *parasite;

    layer = compat_layer_new(job->image, name, w, h, gray ? GIMP_GRAYA_IMAGE : GIMP_RGBA_IMAGE);
    g_free(name);
    if (layer == CORE_NO_LAYER) {
        g_free(text);
        g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION, "cannot create a %dx%d layer", w, h);
        return CORE_NO_LAYER;
    }
    if (i2i && !pixels_write_blended(layer, &job->region, img, error)) {
        g_free(text);
        compat_layer_delete(layer);
        return CORE_NO_LAYER;
    }
    if (!i2i && (w != img->width || h != img->height))
        pixels_write_scaled(layer, img, w, h, context_sampler());
    else if (!i2i)
        pixels_write_image(layer, img);
    compat_layer_set_offsets(layer, i2i ? job->region.x : job->place_x,
                             i2i ? job->region.y : job->place_y);
    parasite = gimp_parasite_new(PARASITE_NAME, GIMP_PARASITE_PERSISTENT | GIMP_PARASITE_UNDOABLE,
                                 strlen(text) + 1, text);
    compat_layer_attach_parasite(layer, parasite);
    gimp_parasite_free(parasite);
    g_free(text);
    return layer;
}

/* Text to Image's layers are centred on the selection's bounds, or on the
 * image without a selection (a larger layer overhangs it evenly); scaled
 * (core_scale_arg), they are the image or the selection's bounds (the image
 * without a selection). */
static void place(Job *job)
{
    gint x1 = 0, y1 = 0, x2 = compat_image_width(job->image), y2 = compat_image_height(job->image);

    if (job->s.scale_to != CORE_SCALE_IMAGE)
        compat_selection_bounds(job->image, &x1, &y1, &x2, &y2);
    job->target_w = job->s.scale_to == CORE_SCALE_NONE ? job->s.width : x2 - x1;
    job->target_h = job->s.scale_to == CORE_SCALE_NONE ? job->s.height : y2 - y1;
    job->place_x = x1 + (x2 - x1 - job->target_w) / 2;
    job->place_y = y1 + (y2 - y1 - job->target_h) / 2;
}

/* Stage 4: every layer is made first; only then does the image change, in
 * one undo group, the first image ending on top. */
static gboolean insert_results(Job *job, GError **error)
{
    gint n = job->s.count, made = 0, inserted = 0, position;
    CoreLayer *layers = g_new(CoreLayer, n);
    CoreLayer parent;

    if (job->mode == CORE_TXT2IMG)
        place(job);
    for (; made < n; made++)
        if ((layers[made] = make_layer(job, made, error)) == CORE_NO_LAYER)
            break;
    if (made == n) {
        /* above the drawable's layer, in its group (compat.h) */
        compat_insert_position(job->image, job->drawable, &parent, &position);
        compat_undo_group_start(job->image);
        for (gint i = n - 1; i >= 0; i--, inserted++)
            if (!compat_image_insert_layer(job->image, layers[i], parent, position))
                break;
        if (inserted < n) /* take back the few that went in; the rest are deleted below */
            for (gint i = n - 1; i > n - 1 - inserted; i--)
                compat_image_remove_layer(job->image, layers[i]);
        compat_undo_group_end(job->image);
        if (inserted < n)
            g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION, "cannot insert the new layers");
    }
    if (made < n || inserted < n)
        for (gint i = 0; i < made - inserted; i++)
            compat_layer_delete(layers[i]);
    g_free(layers);
    return made == n && inserted == n;
}

/* An empty prompt: the default model draws only what a prompt describes, so
 * it is refused; a Stable Diffusion model draws unconditioned, which may be
 * meant, so the run goes ahead and the painter is told (job->notices). */
static gboolean prompt_check(Job *job, const CoreSettings *settings, GError **error)
{
    gchar *text = g_strstrip(g_strdup(settings->prompt));
    const gboolean empty = !*text;

    g_free(text);
    if (empty && !settings->model[0]) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING,
                    _("prompt: the default model needs a prompt, such as \"%s\""),
                    CORE_EXAMPLE_PROMPT);
        return FALSE;
    }
    if (empty)
        on_notice(job, _("The prompt is empty: the model draws without one (unconditioned), "
                         "something of its own choosing"));
    return TRUE;
}

static gboolean start(Job *job, const CoreSettings *settings, GError **error)
{
    if (job->drawable == CORE_NO_DRAWABLE && job->mode == CORE_IMG2IMG) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING,
                    "drawables: img2img needs one layer to start from: select it first");
        return FALSE;
    }
    if (job->drawable != CORE_NO_DRAWABLE && !compat_drawable_in_image(job->drawable, job->image)) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING, "drawable: %d is not in image %d",
                    compat_drawable_id(job->drawable), compat_image_id(job->image));
        return FALSE;
    }
    if (job->mode == CORE_IMG2IMG && compat_drawable_is_group(job->drawable)) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING,
                    _("drawable: Image to Image works on a layer's pixels, and a layer group "
                      "has none of its own: select a layer in the group, or merge the group "
                      "first"));
        return FALSE;
    }
    if (!core_image_check(job->image, error) ||
        !core_settings_validate(settings, job->mode, error) || !prompt_check(job, settings, error))
        return FALSE;
    job->s = *settings;
    if (job->s.seed < 0)
        job->s.seed = g_random_int_range(0, G_MAXINT32);
    if (job->mode == CORE_TXT2IMG && (job->s.width == 0 || job->s.height == 0)) {
        gint w, h;

        core_image_default_size(job->image, &w, &h);
        job->s.width = job->s.width ? job->s.width : w;
        job->s.height = job->s.height ? job->s.height : h;
    }
    if (!job->model) {
        gimp_progress_init("Diffuse: loading the model");
        job->model = job->owned_model = core_model_load(job->s.model, error);
    }
    return job->model != NULL;
}

/* With $DIFFUSE_VERBOSE set, one line on stderr: the peak the memory check
 * predicted (the resident set when stage 2 began plus its estimate) and the
 * plug-in's real peak resident set (VmHWM) so far. */
static void report_memory(const Job *job)
{
    g_printerr("diffuse: memory: predicted peak %" G_GSIZE_FORMAT " bytes (%" G_GSIZE_FORMAT
               " resident + %" G_GSIZE_FORMAT " estimated), peak %" G_GSIZE_FORMAT " bytes\n",
               job->rss_start + job->need, job->rss_start, job->need, diffuse_rss_peak());
}

gboolean core_run(CoreImage image, CoreDrawable drawable, CoreMode mode, CoreSettings *settings,
                  diffuse_model *model, const CoreWatch *watch, GError **error)
{
    Job *job = g_new0(Job, 1); /* ~8 KiB of settings: not on the stack */
    gboolean ok;

    job->image = image;
    job->drawable = drawable;
    job->mode = mode;
    job->model = model;
    job->watch = watch;
    job->notices = g_string_new(NULL);
    ok = start(job, settings, error) && prepare(job, error) && generate(job, error) &&
         insert_results(job, error);
    if (job->notices->len) /* told, not lost, whatever became of the run */
        gimp_message(job->notices->str);
    if (job->need && g_getenv("DIFFUSE_VERBOSE")) /* as the CLI's --verbose: for tests */
        report_memory(job);
    g_string_free(job->notices, TRUE);
    if (ok) {
        gimp_progress_update(1.0);
        settings->last_seed = job->s.seed;
    }
    if (job->generated)
        for (gint i = 0; i < job->s.count; i++)
            diffuse_image_free(&job->images[i]);
    g_free(job->images);
    pixels_region_free(&job->region);
    if (job->owned_model)
        diffuse_model_free(job->owned_model);
    g_free(job);
    return ok;
}
