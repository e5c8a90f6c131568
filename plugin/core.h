/* core.h: the part of the Diffuse GIMP plug-in that does not depend on how a
 * GIMP generation registers procedures or builds dialogs.
 *
 * A front end (gimp2.c for GIMP 2.10, gimp3.c for GIMP 3.0) collects a
 * CoreSettings from its arguments, its dialog or its remembered values, then
 * calls core_run(). The core is compiled once per GIMP generation: the image
 * and item handles (IDs in 2.10, objects in 3.0) and the few calls spelled
 * differently are in compat.h. The core reads the image through GEGL buffers in explicit
 * babl formats, runs the engine (diffuse.h, the only engine header used here),
 * and inserts the results as new layers in one undo group, only after every
 * image exists, so that a failure, a cancel or a killed plug-in never leaves a
 * half-made change.
 *
 *     CoreSettings s;
 *     core_settings_default (&s);
 *     g_strlcpy (s.prompt, "a red circle on a blue background", sizeof s.prompt);
 *     GError *error = NULL;
 *     if (! core_run (image, drawable, CORE_TXT2IMG, &s, NULL, &error))
 *       ... error->code is a CoreErrorCode, error->message says what went wrong
 */
#ifndef DIFFUSE_PLUGIN_CORE_H
#define DIFFUSE_PLUGIN_CORE_H

/* Translations: the messages a painter reads are marked _() (N_() where
 * GIMP translates them itself: menu labels), looked up in the plug-in's own
 * catalogue, GETTEXT_PACKAGE, shipped beside the binary in locale/ (GIMP's
 * plug-in domain pattern: the front ends register the domain with GIMP). */
#define GETTEXT_PACKAGE "gimp-plug-in-diffuse"
#include <glib/gi18n-lib.h>
#include <libgimp/gimp.h>

#include "compat.h"
#include "diffuse.h"

G_BEGIN_DECLS

#define CORE_TEXT_MAX 2048         /* bytes of a prompt, with its NUL */
#define CORE_PATH_MAX 4096         /* bytes of a model path, with its NUL */
#define CORE_MAX_SIDE 4096         /* largest width or height the engine accepts */
#define CORE_DEFAULT_MAX_SIDE 2048 /* largest default size taken from an image */
#define CORE_MAX_COUNT 100         /* images per run, as the engine allows */
#define CORE_MAX_STEPS 1000

typedef enum { CORE_TXT2IMG, CORE_IMG2IMG } CoreMode;

/* Who made the procedures, as both GIMPs' registrations say it. */
#define CORE_AUTHOR "Diffuse developers"
#define CORE_COPYRIGHT "Copyright 2026 Diffuse developers"
#define CORE_DATE "2026"
/* A prompt the default model draws (its language: DESIGN.md), for messages. */
#define CORE_EXAMPLE_PROMPT "a red circle on a blue background"

/* SDXL's size conditioning, in the order of the procedures' arguments (after
 * model) and of CoreSettings.size_cond: diffusers' original_size, crop
 * coordinates and target_size, 0 = the generated image's own size / no crop.
 * Other families ignore them. The names are the PDB's and the remembered
 * settings' keys. */
#define CORE_SIZE_COND_ARGS 6
#define CORE_MAX_COND DIFFUSE_MAX_SIZE_COND
typedef struct {
    const gchar *name, *label, *blurb;
} CoreArg;
extern const CoreArg core_size_cond_args[CORE_SIZE_COND_ARGS];
/* The boolean argument after them: an empty negative prompt is encoded as a
 * prompt ("") instead of meaning none, which SDXL models (diffusers'
 * force_zeros_for_empty_prompt) answer with zeros. SD 1.x/2.x: the same. */
extern const CoreArg core_empty_negative_arg;
/* Then: decode with the model's tiny autoencoder (TAESD, found beside the
 * model) instead of its VAE: much faster, less detail. */
extern const CoreArg core_fast_decoder_arg;
/* A LoRA file applied to the model for the run ("" = none) and its weight (1 =
 * as trained, 0 = not at all, negative = the opposite): GIMP 3.0's last named
 * arguments and the dialogs' LoRA row. GIMP 2.10's procedures keep their
 * arguments; its scripts name LoRAs in the prompt, <lora:NAME:WEIGHT>. */
#define CORE_MAX_LORA_WEIGHT 10.0 /* weights from -10 to 10 */
extern const CoreArg core_lora_arg;
extern const CoreArg core_lora_weight_arg;

/* Image to Image's inpaint area, as A1111's "Inpaint area": the selection's
 * bounds at about their own size (today's behaviour, "whole-layer"), or the
 * bounds grown by a padding and scaled so their longer side is the model's
 * native size ("selected-area", A1111's "Only masked"). GIMP 3.0's named
 * arguments inpaint-area (a choice, default whole-layer) and padding; the
 * dialogs of both GIMPs. */
typedef enum { CORE_AREA_WHOLE, CORE_AREA_SELECTED } CoreArea;
#define CORE_DEFAULT_PADDING 32
#define CORE_MAX_PADDING 1024
extern const CoreArg core_area_arg;
extern const CoreArg core_padding_arg;
/* Image to Image with a plain (4-channel) model: what the selection starts
 * from, A1111's "Masked content": the image ("original", the default) or the
 * start noise ("latent noise", which lets a strength near 1 paint something
 * new); a diffuse_masked_content. GIMP 3.0's named argument masked-content (a
 * choice after padding); the dialogs of both GIMPs. */
extern const CoreArg core_masked_arg;

/* Text to Image: what the new layers are scaled to once generated, with
 * GIMP's own resampling (GEGL, the interpolation of the plug-in's context:
 * the painter's default, or what a script set with
 * gimp-context-set-interpolation), instead of generating at a huge size:
 * the generated size (no scaling, the default), the image, or the selection's
 * bounds (the image without a selection). The layer fills the target: the
 * picture is scaled, its aspect kept, until it covers the target, centred,
 * and what overflows is cut (a 64x64 picture for a 200x120 image: 200x200,
 * rows 40 to 159 kept), so that it is exactly the target's size and place
 * and never distorted; a size in the target's proportions loses nothing.
 * GIMP 3.0's named argument scale-to (a choice: generated, image,
 * selection); GIMP 2.10's plug-in-diffuse-txt2img-ext2 (0, 1, 2); the
 * dialogs of both GIMPs. */
typedef enum { CORE_SCALE_NONE, CORE_SCALE_IMAGE, CORE_SCALE_SELECTION } CoreScaleTo;
#define CORE_SCALE_KINDS 3
extern const CoreArg core_scale_arg;
/* The labels of the dialogs' menu, in CoreScaleTo's order (N_(): translate
 * them with _()), and the PDB's names of GIMP 3.0's choice. */
extern const gchar *const core_scale_labels[CORE_SCALE_KINDS];
extern const gchar *const core_scale_names[CORE_SCALE_KINDS];
/* The scaling of a w x h picture to a target_w x target_h target: scaled to
 * *scaled_w x *scaled_h (aspect kept, covering the target), of which the
 * target_w x target_h rectangle at (*crop_x, *crop_y) is kept. */
void core_scale_cover(gint w, gint h, gint target_w, gint target_h, gint *scaled_w, gint *scaled_h,
                      gint *crop_x, gint *crop_y);

/* The samplers the dialogs offer and the sampler argument takes: each of the
 * engine's by its name ("euler_a"), and those that take Karras sigmas also
 * with CORE_KARRAS_SUFFIX ("dpmpp_2m_karras"), in the engine's order, each
 * shown by the engine's label ("Euler a", "DPM++ 2M Karras"). The ids are
 * the PDB's and the remembered settings'; older calls' names keep working. */
#define CORE_KARRAS_SUFFIX "_karras"
typedef struct {
    gchar id[24];       /* "dpmpp_2m_karras" */
    const gchar *label; /* the engine's: diffuse_sampler_label / _karras_label */
    diffuse_sampler sampler;
    gboolean karras;
} CoreSampler;
#define CORE_SAMPLER_BLURB                                                                         \
    "euler, euler_a, ddim, dpmpp_2m, lcm or pndm; euler, euler_a and dpmpp_2m also with "          \
    "Karras sigmas as euler_karras, euler_a_karras and dpmpp_2m_karras"
#define CORE_SAMPLER_TOOLTIP                                                                       \
    "How the noise is taken away step by step; Karras: the same sampler with Karras et al.'s "     \
    "noise levels, often cleaner in few steps"
/* The dialogs' tooltips for what both show alike. */
#define CORE_PROMPT_TOOLTIP                                                                        \
    "What to draw; the default model knows scenes such as \"" CORE_EXAMPLE_PROMPT "\""
#define CORE_NEGATIVE_TOOLTIP "What to keep out; empty for nothing"
#define CORE_SEED_TOOLTIP                                                                          \
    "The seed of the first image (image i uses seed + i); while Randomize is ticked, the "         \
    "seed the last run used: untick it to make that image again"
/* The choices (a table made once); returns how many. */
gint core_sampler_choices(const CoreSampler **choices);
/* The index of the choice id names, -1 for none. */
gint core_sampler_find(const gchar *id);

/* What a run needs to know. Fixed-size strings keep the struct flat for the
 * dialog; core_settings_serialize() is what gets remembered between runs. */
typedef struct {
    gchar prompt[CORE_TEXT_MAX];
    gchar negative_prompt[CORE_TEXT_MAX];
    gint32 seed;      /* -1 = random */
    gint32 last_seed; /* the seed a random run used last; the dialog shows it */
    gint32 steps;
    gdouble guidance;           /* <= 1 skips the unconditional pass */
    gchar sampler[24];          /* a CoreSampler id: "euler_a", "dpmpp_2m_karras", ... */
    gint32 width, height;       /* txt2img size in pixels, multiples of 8; 0 = the image's */
    gint32 count;               /* images (layers) per run */
    gdouble strength;           /* img2img: how much of the schedule to run, (0, 1] */
    gchar model[CORE_PATH_MAX]; /* a .safetensors file or a diffusers folder; "" = default */
    gint32 size_cond[CORE_SIZE_COND_ARGS]; /* SDXL: see core_size_cond_args */
    gboolean empty_negative;   /* "" is a negative prompt, not none: core_empty_negative_arg */
    gboolean fast_decoder;     /* TAESD for the final image: core_fast_decoder_arg */
    gchar lora[CORE_PATH_MAX]; /* a LoRA .safetensors file; "" = none: core_lora_arg */
    gdouble lora_weight;       /* its weight, 1 by default: core_lora_weight_arg */
    gint32 area;               /* img2img: a CoreArea, core_area_arg */
    gint32 padding;            /* img2img, selected area: pixels around the selection */
    gint32 masked_content;     /* img2img: a diffuse_masked_content, core_masked_arg */
    gint32 scale_to;           /* txt2img: a CoreScaleTo, core_scale_arg */
} CoreSettings;

/* Error codes in CORE_ERROR; front ends map them to PDB statuses. */
typedef enum {
    CORE_ERROR_CALLING,   /* a bad argument: GIMP_PDB_CALLING_ERROR */
    CORE_ERROR_EXECUTION, /* the run failed: GIMP_PDB_EXECUTION_ERROR */
    CORE_ERROR_CANCELLED  /* the user stopped it: GIMP_PDB_CANCEL */
} CoreErrorCode;

#define CORE_ERROR (core_error_quark())
GQuark core_error_quark(void);

/* ---------------------------------------------------------------- settings */

void core_settings_default(CoreSettings *s);
/* A GLib key file (group "diffuse", one key a field); free with g_free(). */
gchar *core_settings_serialize(const CoreSettings *s);
/* Reads what serialize wrote, and the first version's "key=value" lines;
 * unknown keys are skipped, missing or unreadable ones keep their current
 * value (so older remembered values still load); a text that is no key file
 * changes nothing. */
void core_settings_deserialize(CoreSettings *s, const gchar *text);
/* Checks ranges (and that a LoRA file is there) before anything runs;
 * CORE_ERROR_CALLING names the argument. */
gboolean core_settings_validate(const CoreSettings *s, CoreMode mode, GError **error);
/* The folder where the prompt's <lora:NAME:WEIGHT> tags find NAME.safetensors,
 * the engine's default: $DIFFUSE_LORA_DIR, else $XDG_DATA_HOME/diffuse/loras
 * (~/.local/share/diffuse/loras). Free with g_free(). */
gchar *core_lora_folder(void);

/* ---------------------------------------------------------------- models */

/* Called first in main(), before GEGL starts, with main's argv: the
 * engine's diffuse_process_init (the convolutions' threads wait passively;
 * it may run the plug-in again, in place), then turns off babl's 8-bit
 * conversion tables (BABL_LUT=0, unless the environment says otherwise).
 * babl builds one of 16M entries (64-256 MiB) per format pair that converts
 * enough pixels, after a 256 MiB timing probe: some 350 MiB for a moment,
 * most of a run's peak, to speed up conversions the plug-in makes once. */
void core_process_init(char **argv);
/* The folder holding the plug-in binary: "" models resolve to
 * <dir>/models/default there. Call once at start-up. */
void core_set_plugin_dir(const gchar *dir);
/* The same for the folder of the running binary (/proc/self/exe, else argv0),
 * where the plug-in is installed with its default model. */
void core_set_plugin_dir_of_binary(const gchar *argv0);
/* The plug-in's help domain: the pages shipped beside the binary, in
 * help/<language>/ (gimp-help.xml maps each procedure's help id, its name,
 * to its page), which GIMP's Help button shows. core_help_uri(): their
 * file:// URI; g_free(). */
#define CORE_HELP_DOMAIN "org.diffuse.plug-in"
gchar *core_help_uri(void);
/* The folder of the catalogues (<dir>/locale, beside the binary: GIMP 3.0
 * wants it there, named relative to the binary's); g_free().
 * core_i18n_init(), once the plug-in's folder is known: binds GETTEXT_PACKAGE
 * there, in UTF-8, and takes the messages' language from the environment
 * (LC_MESSAGES only: numbers stay as the C locale writes them). */
gchar *core_locale_dir(void);
void core_i18n_init(void);
/* The path to load for `model` ("" = the default model); NULL and an error
 * when no default model is installed. Free with g_free(). */
gchar *core_model_resolve(const gchar *model, GError **error);
diffuse_model *core_model_load(const gchar *model, GError **error);
/* Whether the model (may be NULL) has a tiny autoencoder for fast_decoder. */
gboolean core_model_has_fast_decoder(const diffuse_model *m);
/* "SD 1.x, 512x512 native, 1.07G parameters, f16"; free with g_free(). */
gchar *core_model_describe(const diffuse_model *m);
/* "default" or the file or folder name without .safetensors; g_free(). */
gchar *core_model_display_name(const gchar *model);
/* Steps, guidance and sampler that suit the model: Turbo and LCM distilled
 * models want few steps and guidance <= 1. */
void core_settings_model_defaults(CoreSettings *s, const diffuse_model *m, const gchar *model);

/* ---------------------------------------------------------------- images */

/* Refuses indexed images and floating selections with a message. */
gboolean core_image_check(CoreImage image, GError **error);
/* The image size rounded to the nearest multiples of 8, at most
 * CORE_DEFAULT_MAX_SIDE on its longer side (aspect kept). */
void core_image_default_size(CoreImage image, gint *width, gint *height);
/* Width and height are multiples of a model's unit, diffuse_model_info's
 * vae_scale (pixels per latent cell), which the engine checks requests
 * against; CORE_SIZE_UNIT is it for every model Diffuse loads, what the
 * PDB's sizes and a dialog without a model go by. */
#define CORE_SIZE_UNIT 8
/* v to the nearest multiple of unit, at least unit. */
gint core_round_to(gdouble v, gint unit);
gint core_round8(gdouble v); /* core_round_to(v, CORE_SIZE_UNIT) */

/* The area a selection of w x h pixels suits: CORE_AREA_SELECTED when its
 * longer side is under half or over twice the native size, else
 * CORE_AREA_WHOLE. The dialogs start from it. */
CoreArea core_area_default(gint width, gint height, gint native);
/* core_area_default() of the selection's bounds on the drawable;
 * CORE_AREA_WHOLE without a selection. */
CoreArea core_area_suggest(CoreImage image, CoreDrawable drawable, gint native);
/* The crop of CORE_AREA_SELECTED: the selection bounds (x, y, w, h) grown by
 * padding on each side, clipped to a bounds_w x bounds_h drawable. */
void core_area_crop(gint x, gint y, gint w, gint h, gint padding, gint bounds_w, gint bounds_h,
                    gint *cx, gint *cy, gint *cw, gint *ch);
/* The generation size of a w x h crop: its longer side scaled to native,
 * aspect kept, both sides multiples of 8 from 8 to CORE_MAX_SIDE. */
void core_area_gen_size(gint width, gint height, gint native, gint *gen_width, gint *gen_height);

/* ---------------------------------------------------------------- running */

/* What a front end shows while a run goes, besides GIMP's progress bar (the
 * progress window, progress.h). Called on the plug-in's thread between
 * denoising steps, which is when a window can answer its events; a FALSE
 * return stops the run, which fails with CORE_ERROR_CANCELLED. */
typedef struct {
    /* after each step of image (0 .. count-1) */
    gboolean (*step)(gpointer user, gint image, gint count, gint step, gint steps);
    /* about CORE_PREVIEWS times an image: the run so far, rgb [height, width, 3]
     * in [0, 1], sRGB-encoded (diffuse_preview_fn); NULL: no previews asked */
    gboolean (*preview)(gpointer user, gint image, gint step, gint steps, const gfloat *rgb,
                        gint width, gint height);
    gpointer user;
} CoreWatch;
#define CORE_PREVIEWS 10 /* previews per image; each costs a small fraction of a step */

/* Generates and inserts the layers above `drawable`. `model` may be a model
 * the front end has already loaded for the same settings->model (borrowed),
 * or NULL. txt2img also takes CORE_NO_DRAWABLE (GIMP 3.0, an image with no
 * selected layer): the layers then go on top of the image. watch: NULL, or
 * what to tell while it runs (borrowed). On success settings->last_seed holds
 * the seed of the first image. */
gboolean core_run(CoreImage image, CoreDrawable drawable, CoreMode mode, CoreSettings *settings,
                  diffuse_model *model, const CoreWatch *watch, GError **error);

/* What a Text to Image run of s would cost with model, before it runs (the
 * dialogs' size note): *memory, the bytes the engine's request adds
 * (diffuse_request_memory), and *seconds, the engine's estimate of its time
 * on this machine (diffuse_request_seconds: loading and previews left out;
 * 0 for a request the engine would refuse). */
void core_settings_estimate(const diffuse_model *model, const CoreSettings *s, gsize *memory,
                            gdouble *seconds);

/* The parasite text of one result (Stable Diffusion tools' format). */
gchar *core_parameters_text(const CoreSettings *s, CoreMode mode, guint64 seed, gint width,
                            gint height);

/* ---------------------------------------------------------------- reading settings back */

/* Takes into s what a parameters text (core_parameters_text()'s, or another
 * Stable Diffusion tool's, read by the engine) says: prompt, negative prompt,
 * seed, steps, guidance, sampler, size (Text to Image), strength (Image to
 * Image), SDXL's conditioning and the first LoRA; the rest of s stays as it
 * was. FALSE, s untouched, when the text holds no line of settings (an
 * ordinary image comment). *unused (may be NULL) receives what the text says
 * and s cannot take, as "Key: value, ..." (other tools' keys, a sampler
 * Diffuse lacks, values out of range, a second LoRA), or NULL; g_free() it.
 * Any text is safe to pass. */
gboolean core_settings_from_parameters(CoreSettings *s, CoreMode mode, const gchar *text,
                                       gchar **unused);
/* Where a dialog can take settings from, first found first: */
typedef enum {
    CORE_FROM_LAYER,   /* the drawable's "diffuse-parameters" parasite: a layer Diffuse made */
    CORE_FROM_COMMENT, /* the image's "gimp-comment": a PNG's "Comment" text, or typed in */
    CORE_FROM_FILE     /* the "parameters" text of the PNG the image was opened from: GIMP
                        * keeps only "Comment", Stable Diffusion tools write "parameters" */
} CoreParametersSource;
/* The first of them that holds settings, NULL when none does; *source says
 * which it was. drawable may be CORE_NO_DRAWABLE. Free with g_free(). */
gchar *core_parameters_find(CoreImage image, CoreDrawable drawable, CoreParametersSource *source);
/* The "parameters" text of a PNG file, as UTF-8, from an uncompressed tEXt or
 * iTXt chunk (as AUTOMATIC1111 and Diffuse write it); NULL when the file has
 * none, cannot be read or is no PNG. */
gchar *core_png_parameters(const gchar *path);

/* "Diffuse: <prompt> (seed N)", the prompt on one line, cut after
 * CORE_LAYER_NAME_CHARS characters with "...". Free with g_free(). */
#define CORE_LAYER_NAME_CHARS 60
gchar *core_layer_name(const gchar *prompt, guint64 seed);

G_END_DECLS

#endif
