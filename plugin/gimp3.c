/* gimp3.c: the GIMP 3.0 front end of Diffuse: a GimpPlugIn subclass that
 * registers the two procedures with their arguments declared with range and
 * default, a GimpProcedureDialog, and the run. Everything else is in core.c,
 * shared with the GIMP 2.10 front end (gimp2.c), and the dialog's model and
 * LoRA rows and Copy Settings button in dialog.c.
 *
 * Procedures (the PDB contract in DESIGN.md; GIMP 3 image procedures, so the
 * drawables array stands where 2.10 has one drawable):
 *   plug-in-diffuse-txt2img (run-mode, image, drawables, prompt, negative-prompt,
 *       seed, steps, guidance, sampler, width, height, count, model)
 *   plug-in-diffuse-img2img (run-mode, image, drawables, prompt, negative-prompt,
 *       seed, steps, guidance, sampler, strength, count, model)
 * each followed by original-width, original-height, crop-left, crop-top,
 * target-width, target-height (SDXL size conditioning), empty-negative,
 * fast-decoder, lora and lora-weight (core.h), and for img2img last
 * inpaint-area (a choice, "whole-layer" by default, or "selected-area"),
 * padding (core.h, CoreArea) and masked-content (a choice, "original" by
 * default, or "latent-noise": core_masked_arg), and for txt2img last
 * scale-to (a choice, "generated" by default, "image" or "selection":
 * core_scale_arg), with defaults: GIMP 3 calls name their arguments, so
 * calls without them keep working.
 * plug-in-diffuse-txt2img-ext, -txt2img-ext2 and -img2img-ext are the same
 * procedures under the names GIMP 2.10 gives its extended forms.
 * The results go above the first drawable; txt2img also runs with none (on
 * top of the image), img2img needs exactly one. The procedure config keeps
 * the last values (GIMP saves them after a successful interactive run), with
 * auxiliary arguments that are not part of the PDB call: last-seed (the seed
 * a random run used, shown in the dialog), random-seed (the dialog's
 * Randomize box), sampler-choice (the dialog's sampler menu), configured
 * (FALSE until a first run, when the dialog takes steps, guidance and sampler
 * from the model) and opened (counts the dialog's openings, so that it sees
 * GIMP's Reset). A run that fails after the dialog's OK keeps its values for
 * the next opening (unsaved_keep). Errors come back as the GError of the
 * return values, a cancelled dialog as GIMP_PDB_CANCEL. */
#include <string.h>

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "core.h"
#include "dialog.h"
#include "progress.h"

#define PROC_TXT2IMG "plug-in-diffuse-txt2img"
#define PROC_IMG2IMG "plug-in-diffuse-img2img"
#define EXT "-ext"
#define EXT2 "-ext2"
/* core_scale_arg's label with a mnemonic of its own: Alt+L is the dialog's
 * Load Saved Settings here */
#define SCALE_LABEL N_("Scale result i_nto")
#define PLUG_IN_BINARY "diffuse"
#define MENU_PATH "<Image>/Filters/Diffuse"

typedef struct {
    GimpPlugIn parent_instance;
} Diffuse;

typedef struct {
    GimpPlugInClass parent_class;
} DiffuseClass;

#define DIFFUSE_TYPE (diffuse_get_type())
GType diffuse_get_type(void) G_GNUC_CONST;

static gboolean diffuse_set_i18n(GimpPlugIn *plug_in, const gchar *procedure_name,
                                 gchar **gettext_domain, gchar **catalog_dir);
static GList *diffuse_query_procedures(GimpPlugIn *plug_in);
static GimpProcedure *diffuse_create_procedure(GimpPlugIn *plug_in, const gchar *name);
static GimpValueArray *diffuse_run(GimpProcedure *procedure, GimpRunMode run_mode, GimpImage *image,
                                   GimpDrawable **drawables, GimpProcedureConfig *config,
                                   gpointer run_data);

G_DEFINE_TYPE(Diffuse, diffuse, GIMP_TYPE_PLUG_IN)

static void diffuse_class_init(DiffuseClass *klass)
{
    GimpPlugInClass *plug_in_class = GIMP_PLUG_IN_CLASS(klass);

    plug_in_class->query_procedures = diffuse_query_procedures;
    plug_in_class->create_procedure = diffuse_create_procedure;
    plug_in_class->set_i18n = diffuse_set_i18n;
}

static void diffuse_init(Diffuse *diffuse) {}

/* The plug-in's catalogue (core.h), with which libgimp binds and GIMP
 * translates the menu labels: GIMP 3.0 takes its folder relative to the
 * binary's, the locale/ of core_locale_dir(). */
static gboolean diffuse_set_i18n(GimpPlugIn *plug_in, const gchar *procedure_name,
                                 gchar **gettext_domain, gchar **catalog_dir)
{
    *gettext_domain = g_strdup(GETTEXT_PACKAGE);
    *catalog_dir = g_strdup("locale");
    return TRUE;
}

/* ---------------------------------------------------------------- registration */

static GList *diffuse_query_procedures(GimpPlugIn *plug_in)
{
    GList *names = NULL;
    gchar *uri = core_help_uri();
    GFile *help = g_file_new_for_uri(uri);

    /* the dialogs' Help button: the page shipped beside the binary */
    gimp_plug_in_set_help_domain(plug_in, CORE_HELP_DOMAIN, help);
    g_object_unref(help);
    g_free(uri);

    names = g_list_append(names, g_strdup(PROC_TXT2IMG));
    names = g_list_append(names, g_strdup(PROC_IMG2IMG));
    names = g_list_append(names, g_strconcat(PROC_TXT2IMG, EXT, NULL));
    names = g_list_append(names, g_strconcat(PROC_TXT2IMG, EXT2, NULL));
    return g_list_append(names, g_strconcat(PROC_IMG2IMG, EXT, NULL));
}

/* The samplers (core_sampler_choices()), by the ids the PDB takes, shown
 * by the engine's labels. */
static GimpChoice *sampler_choice(void)
{
    GimpChoice *choice = gimp_choice_new();
    const CoreSampler *c;
    gint n = core_sampler_choices(&c);

    for (gint i = 0; i < n; i++)
        gimp_choice_add(choice, c[i].id, i, c[i].label, NULL);
    return choice;
}

/* Image to Image's areas (core_area_arg), by the names the PDB takes. */
static GimpChoice *area_choice(void)
{
    return gimp_choice_new_with_values("whole-layer", CORE_AREA_WHOLE, "Whole layer", NULL,
                                       "selected-area", CORE_AREA_SELECTED, "Selected area", NULL,
                                       NULL);
}

/* Image to Image's masked content (core_masked_arg), by the names the PDB
 * takes: A1111's, hyphenated. */
static GimpChoice *masked_choice(void)
{
    return gimp_choice_new_with_values("original", DIFFUSE_MASKED_ORIGINAL, "Original", NULL,
                                       "latent-noise", DIFFUSE_MASKED_LATENT_NOISE, "Latent noise",
                                       NULL, NULL);
}

/* Text to Image's scaling (core_scale_arg), by the names the PDB takes. */
static GimpChoice *scale_choice(void)
{
    GimpChoice *choice = gimp_choice_new();

    for (gint i = 0; i < CORE_SCALE_KINDS; i++)
        gimp_choice_add(choice, core_scale_names[i], i, _(core_scale_labels[i]), NULL);
    return choice;
}

/* prompt, negative-prompt, seed, steps, guidance, sampler */
static void add_head_arguments(GimpProcedure *p, const CoreSettings *d)
{
    gimp_procedure_add_string_argument(p, "prompt", "Prompt", "What to draw", d->prompt,
                                       G_PARAM_READWRITE);
    gimp_procedure_add_string_argument(p, "negative-prompt", "Negative prompt",
                                       "What to keep out (\"\" = nothing)", d->negative_prompt,
                                       G_PARAM_READWRITE);
    gimp_procedure_add_int_argument(p, "seed", "S_eed",
                                    "Random seed (-1 = random); image i uses seed + i", -1,
                                    G_MAXINT32, d->seed, G_PARAM_READWRITE);
    gimp_procedure_add_int_argument(p, "steps", "S_teps",
                                    "Denoising steps: Turbo and LCM models need only 1 to 8", 1,
                                    CORE_MAX_STEPS, d->steps, G_PARAM_READWRITE);
    gimp_procedure_add_double_argument(p, "guidance", "G_uidance",
                                       "How closely to follow the prompt (0..100); 1 or less "
                                       "skips the negative prompt (Turbo and LCM models)",
                                       0, 100, d->guidance, G_PARAM_READWRITE);
    /* a string, not a GimpChoice: a name GIMP 3.0.4's Script-Fu cannot put
     * into a choice it replaces by the default with a warning, and the run
     * goes on; as a string it reaches the core, which refuses it by name */
    gimp_procedure_add_string_argument(p, "sampler", "Sampler", CORE_SAMPLER_BLURB, d->sampler,
                                       G_PARAM_READWRITE);
}

/* count, model, and the auxiliary arguments the config keeps */
static void add_tail_arguments(GimpProcedure *p, const CoreSettings *d)
{
    gimp_procedure_add_int_argument(p, "count", "_Batch count",
                                    "Number of images, one layer each (1..100)", 1, CORE_MAX_COUNT,
                                    d->count, G_PARAM_READWRITE);
    gimp_procedure_add_string_argument(p, "model", "Mo_del",
                                       "A .safetensors file or a diffusers folder (\"\" = the "
                                       "default model)",
                                       d->model, G_PARAM_READWRITE);
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        gimp_procedure_add_int_argument(p, core_size_cond_args[i].name,
                                        core_size_cond_args[i].label, core_size_cond_args[i].blurb,
                                        0, CORE_MAX_COND, d->size_cond[i], G_PARAM_READWRITE);
    gimp_procedure_add_boolean_argument(
        p, core_empty_negative_arg.name, core_empty_negative_arg.label,
        core_empty_negative_arg.blurb, d->empty_negative, G_PARAM_READWRITE);
    gimp_procedure_add_boolean_argument(p, core_fast_decoder_arg.name, core_fast_decoder_arg.label,
                                        core_fast_decoder_arg.blurb, d->fast_decoder,
                                        G_PARAM_READWRITE);
    /* a path, as model is: Script-Fu passes a string, "" = none */
    gimp_procedure_add_string_argument(p, core_lora_arg.name, core_lora_arg.label,
                                       core_lora_arg.blurb, d->lora, G_PARAM_READWRITE);
    gimp_procedure_add_double_argument(p, core_lora_weight_arg.name, core_lora_weight_arg.label,
                                       core_lora_weight_arg.blurb, -CORE_MAX_LORA_WEIGHT,
                                       CORE_MAX_LORA_WEIGHT, d->lora_weight, G_PARAM_READWRITE);
    gimp_procedure_add_int_aux_argument(p, "last-seed", "Last seed",
                                        "The seed the last random run used", 0, G_MAXINT32, 0,
                                        G_PARAM_READWRITE);
    gimp_procedure_add_boolean_aux_argument(
        p, "random-seed", "Randomi_ze",
        "A new random seed for every run; the seed used is in the layer name", TRUE,
        G_PARAM_READWRITE);
    gimp_procedure_add_choice_aux_argument(p, "sampler-choice", "Sa_mpler", CORE_SAMPLER_TOOLTIP,
                                           sampler_choice(), d->sampler, G_PARAM_READWRITE);
    gimp_procedure_add_boolean_aux_argument(p, "configured", "Configured",
                                            "Set after the first run: the dialog then keeps the "
                                            "steps, guidance and sampler instead of the model's",
                                            FALSE, G_PARAM_READWRITE);
    gimp_procedure_add_int_aux_argument(p, "opened", "Opened",
                                        "Counts the dialog's openings, after GIMP took its "
                                        "initial values: a Reset sets it back, which tells the "
                                        "dialog to set the model's size again",
                                        0, G_MAXINT32, 0, G_PARAM_READWRITE);
}

static GimpProcedure *diffuse_create_procedure(GimpPlugIn *plug_in, const gchar *name)
{
    CoreMode mode = g_str_has_prefix(name, PROC_IMG2IMG) ? CORE_IMG2IMG : CORE_TXT2IMG;
    const gboolean ext = g_str_has_suffix(name, EXT) || g_str_has_suffix(name, EXT2);
    CoreSettings *d; /* the defaults: the core's */
    GimpProcedure *p;

    if (strcmp(name, PROC_TXT2IMG) && strcmp(name, PROC_IMG2IMG) &&
        strcmp(name, PROC_TXT2IMG EXT) && strcmp(name, PROC_TXT2IMG EXT2) &&
        strcmp(name, PROC_IMG2IMG EXT))
        return NULL;
    d = g_new(CoreSettings, 1);
    core_settings_default(d);
    p = gimp_image_procedure_new(plug_in, name, GIMP_PDB_PROC_TYPE_PLUGIN, diffuse_run,
                                 GINT_TO_POINTER(mode), NULL);
    /* indexed images are accepted so that they get the core's clear refusal */
    gimp_procedure_set_image_types(p, "RGB*, GRAY*, INDEXED*");
    gimp_procedure_set_attribution(p, CORE_AUTHOR, CORE_COPYRIGHT, CORE_DATE);
    if (mode == CORE_TXT2IMG) {
        gimp_procedure_set_sensitivity_mask(p, GIMP_PROCEDURE_SENSITIVE_DRAWABLE |
                                                   GIMP_PROCEDURE_SENSITIVE_DRAWABLES |
                                                   GIMP_PROCEDURE_SENSITIVE_NO_DRAWABLES);
        if (!ext) {
            gimp_procedure_set_menu_label(p, N_("_Text to Image..."));
            gimp_procedure_add_menu_path(p, MENU_PATH);
        }
        gimp_procedure_set_documentation(
            p, "Generate new layers from a text prompt",
            "Runs Stable Diffusion inside the plug-in and inserts count new layers of width x "
            "height above the first drawable (on top of the image without one), named "
            "\"Diffuse: <prompt> (seed N)\", each with its settings in the parasite "
            "\"diffuse-parameters\".",
            name);
        add_head_arguments(p, d);
        gimp_procedure_add_int_argument(p, "width", "W_idth",
                                        "Width in pixels, a multiple of 8 (0 = the image's "
                                        "width)",
                                        0, CORE_MAX_SIDE, d->width, G_PARAM_READWRITE);
        gimp_procedure_add_int_argument(p, "height", "Hei_ght",
                                        "Height in pixels, a multiple of 8 (0 = the image's "
                                        "height)",
                                        0, CORE_MAX_SIDE, d->height, G_PARAM_READWRITE);
    } else {
        gimp_procedure_set_sensitivity_mask(p, GIMP_PROCEDURE_SENSITIVE_DRAWABLE);
        if (!ext) {
            gimp_procedure_set_menu_label(p, N_("_Image to Image..."));
            gimp_procedure_add_menu_path(p, MENU_PATH);
        }
        gimp_procedure_set_documentation(
            p, "Repaint the selection from a text prompt",
            "Runs Stable Diffusion on the drawable's pixels inside the selection bounds and "
            "inserts the results as new layers at the selection's position, repainted where "
            "the selection is (soft edges blend) and the original pixels elsewhere.",
            name);
        add_head_arguments(p, d);
        gimp_procedure_add_double_argument(p, "strength", "Stren_gth",
                                           "How much to change, (0, 1]: 0.3 keeps the drawing, "
                                           "1 ignores it",
                                           0, 1, d->strength, G_PARAM_READWRITE);
    }
    add_tail_arguments(p, d);
    if (mode == CORE_IMG2IMG) { /* last, so that no argument moves */
        gimp_procedure_add_choice_argument(p, core_area_arg.name, core_area_arg.label,
                                           core_area_arg.blurb, area_choice(), "whole-layer",
                                           G_PARAM_READWRITE);
        gimp_procedure_add_int_argument(p, core_padding_arg.name, core_padding_arg.label,
                                        core_padding_arg.blurb, 0, CORE_MAX_PADDING, d->padding,
                                        G_PARAM_READWRITE);
        gimp_procedure_add_choice_argument(p, core_masked_arg.name, core_masked_arg.label,
                                           core_masked_arg.blurb, masked_choice(), "original",
                                           G_PARAM_READWRITE);
    } else /* last, so that no argument moves */
        gimp_procedure_add_choice_argument(p, core_scale_arg.name, _(SCALE_LABEL),
                                           _(core_scale_arg.blurb), scale_choice(),
                                           core_scale_names[CORE_SCALE_NONE], G_PARAM_READWRITE);
    g_free(d);
    return p;
}

/* ---------------------------------------------------------------- settings */

/* Copies a string property into a settings field; a CALLING error when it
 * does not fit. */
static gboolean copy_prop(GimpProcedureConfig *config, const gchar *name, gchar *dst, gsize size,
                          GError **error)
{
    gchar *value = NULL;
    gboolean fits;

    g_object_get(config, name, &value, NULL);
    fits = strlen(value ? value : "") < size;
    if (fits)
        g_strlcpy(dst, value ? value : "", size);
    else
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING, "%s: longer than %d bytes", name,
                    (gint)size - 1);
    g_free(value);
    return fits;
}

static gboolean settings_from_config(CoreSettings *s, CoreMode mode, GimpProcedureConfig *config,
                                     GError **error)
{
    g_object_get(config, "seed", &s->seed, "last-seed", &s->last_seed, "steps", &s->steps,
                 "guidance", &s->guidance, "count", &s->count, NULL);
    if (mode == CORE_TXT2IMG) {
        g_object_get(config, "width", &s->width, "height", &s->height, NULL);
        s->scale_to = gimp_procedure_config_get_choice_id(config, core_scale_arg.name);
    } else {
        g_object_get(config, "strength", &s->strength, core_padding_arg.name, &s->padding, NULL);
        s->area = gimp_procedure_config_get_choice_id(config, core_area_arg.name);
        s->masked_content = gimp_procedure_config_get_choice_id(config, core_masked_arg.name);
    }
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        g_object_get(config, core_size_cond_args[i].name, &s->size_cond[i], NULL);
    g_object_get(config, core_empty_negative_arg.name, &s->empty_negative,
                 core_fast_decoder_arg.name, &s->fast_decoder, core_lora_weight_arg.name,
                 &s->lora_weight, NULL);
    return copy_prop(config, "prompt", s->prompt, sizeof s->prompt, error) &&
           copy_prop(config, "negative-prompt", s->negative_prompt, sizeof s->negative_prompt,
                     error) &&
           copy_prop(config, "sampler", s->sampler, sizeof s->sampler, error) &&
           copy_prop(config, "model", s->model, sizeof s->model, error) &&
           copy_prop(config, core_lora_arg.name, s->lora, sizeof s->lora, error);
}

/* ---------------------------------------------------------------- dialog */

typedef struct {
    GimpProcedureConfig *config;
    CoreMode mode;
    GtkWidget *dialog;
    GimpImage *image; /* Image to Image: the selection the area suits */
    GimpDrawable *drawable;
    GtkWidget *fast_decoder; /* its check box, sensitive when the model has one */
    DialogModel model;       /* the model row, its entry bound to the config's "model" */
    DialogLora lora;         /* the LoRA row, its entry bound to the config's "lora" */
    DialogCopy copy;         /* Copy Settings from Layer */
    GtkWidget *size[2];      /* Text to Image: the width and height fields */
    GtkWidget *size_note;    /* Text to Image: what the run costs (dialog_size_note()) */
    gint unit;               /* Text to Image: sizes are multiples of it, the model's (core.h) */
    gint image_size[2];      /* Text to Image: the size it opens with until a model loads */
    gint last_seed;          /* the seed shown while Randomize is ticked */
    guint round_idle, reset_idle; /* the pending round_sizes and after_reset, or 0 */
} Dialog;

static void to_dialog(GimpProcedureConfig *config);

static const gchar *const size_names[2] = {"width", "height"};

/* Puts a size set from elsewhere than its field (Load Saved Settings) on the
 * unit, once the change is over, so that the field shows what will run (a
 * size typed snaps in the field itself); 0 stays, the image's size. */
static gboolean round_sizes(gpointer data)
{
    Dialog *d = data;

    d->round_idle = 0;
    for (gint i = 0; i < 2; i++) {
        gint v;

        g_object_get(d->config, size_names[i], &v, NULL);
        if (v != 0 && v != core_round_to(v, d->unit))
            g_object_set(d->config, size_names[i],
                         MIN(core_round_to(v, d->unit), CORE_MAX_SIDE / d->unit * d->unit), NULL);
    }
    return G_SOURCE_REMOVE;
}

static void read_settings(CoreSettings *s, gpointer data);

/* Text to Image: the size note for the settings set (what the run would
 * cost). */
static void update_size_note(Dialog *d)
{
    CoreSettings *s;

    if (!d->size_note)
        return;
    s = g_new(CoreSettings, 1); /* ~12 KiB: not on the stack */
    read_settings(s, d);
    dialog_size_note_update(d->size_note, d->model.model, s);
    g_free(s);
}

static void size_changed(GimpProcedureConfig *config, GParamSpec *pspec, Dialog *d)
{
    if (!d->round_idle)
        d->round_idle = g_idle_add(round_sizes, d);
    update_size_note(d);
}

/* After GIMP set the config's values (Reset, Load Saved Settings): what the
 * dialog opens with for them, the native size (Image to Image: the area) of
 * the model they name. Values reset to a fresh profile's (configured FALSE:
 * Reset to Factory Defaults, or to the initial values of a first run) get
 * what the dialog opens with on a fresh profile: the model's own steps,
 * guidance, sampler and native size, and the last seed shown. The model
 * stays the one chosen: factory defaults are that model's. */
static gboolean after_reset(gpointer data)
{
    Dialog *d = data;
    gboolean configured;
    gchar *model = NULL;

    d->reset_idle = 0;
    g_object_get(d->config, "configured", &configured, "model", &model, NULL);
    if (!configured) {
        if (!(model && *model) && d->model.path)
            g_object_set(d->config, "model", d->model.path, NULL);
        g_object_set(d->config, "last-seed", d->last_seed, NULL);
        if (d->mode == CORE_TXT2IMG)
            g_object_set(d->config, "width", d->image_size[0], "height", d->image_size[1], NULL);
        to_dialog(d->config);
    }
    dialog_model_reapply(&d->model, !configured);
    g_free(model);
    return G_SOURCE_REMOVE;
}

/* GIMP's Reset and Load Saved Settings set the values at once, "opened" among
 * them (a Reset to Initial Values only those that differ, and "opened"
 * always does): after_reset once they are all set and shown. */
static void values_reset(GimpProcedureConfig *config, GParamSpec *pspec, Dialog *d)
{
    if (!d->reset_idle)
        d->reset_idle = g_idle_add(after_reset, d);
}

/* Image to Image: the area that suits the selection at the native size of the
 * model just loaded (DialogModelSize). */
static void set_model_area(gint native_size, gint unit, gpointer data)
{
    Dialog *d = data;
    CoreArea area = core_area_suggest(d->image, d->drawable, native_size);

    g_object_set(d->config, core_area_arg.name,
                 area == CORE_AREA_SELECTED ? "selected-area" : "whole-layer", NULL);
}

/* The model's steps, guidance and sampler (DialogModelDefaults). */
static void set_model_defaults(const CoreSettings *defaults, gpointer data)
{
    Dialog *d = data;

    g_object_set(d->config, "steps", defaults->steps, "guidance", defaults->guidance,
                 "sampler-choice", defaults->sampler, NULL);
}

/* The fast decoder check box is for models that have one (DialogModelOffers). */
static void set_model_offers(const diffuse_model *model, gpointer data)
{
    Dialog *d = data;
    const gboolean has = core_model_has_fast_decoder(model);

    gtk_widget_set_sensitive(d->fast_decoder, has);
    if (!has)
        g_object_set(d->config, core_fast_decoder_arg.name, FALSE, NULL);
    update_size_note(d); /* none without a model */
}

/* The model's native size and unit (DialogModelSize), Text to Image only:
 * the size fields step in the unit and snap a size typed to it, from one
 * unit up, and say so. */
static void set_model_size(gint native, gint unit, gpointer data)
{
    Dialog *d = data;
    gint n = core_round_to(MIN(native, CORE_MAX_SIDE), unit);

    d->unit = unit;
    for (gint i = 0; i < 2; i++) {
        GtkWidget *spin = gimp_label_spin_get_spin_button(GIMP_LABEL_SPIN(d->size[i]));
        gchar *tip = g_strdup_printf("%s of the new layers in pixels, a multiple of %d, the "
                                     "model's unit (a size typed goes to the nearest); the "
                                     "model's native size, %d, by default: models draw best at it",
                                     i ? "Height" : "Width", unit, native);

        g_object_set(d->size[i], "lower", (gdouble)unit, "upper",
                     (gdouble)(CORE_MAX_SIDE / unit * unit), NULL);
        gimp_label_spin_set_increments(GIMP_LABEL_SPIN(d->size[i]), unit, unit * 8);
        gtk_spin_button_set_snap_to_ticks(GTK_SPIN_BUTTON(spin), TRUE);
        gimp_help_set_help_data(d->size[i], tip, NULL);
        g_free(tip);
    }
    g_object_set(d->config, "width", n, "height", n, NULL);
    update_size_note(d);
}

/* A framed, scrolled, word-wrapped text view for a string argument, the
 * multi-line prompt of the 2.10 dialog, its title's mnemonic focusing it.
 * The view is made here, not by gimp_procedure_dialog_get_widget(): GIMP
 * checks a field's mnemonic as it makes the widget, before a text view can
 * have its title. Returns the frame's id. */
static const gchar *add_text(GimpProcedureDialog *dialog, GimpProcedureConfig *config,
                             const gchar *property, const gchar *title, const gchar *tooltip,
                             gint height)
{
    gchar *label_id = g_strconcat(property, "-label", NULL);
    gchar *start_id = g_strconcat(property, "-start", NULL);
    gchar *box_id = g_strconcat(property, "-box", NULL);
    gchar *frame_id = g_strconcat(property, "-frame", NULL);
    GtkTextBuffer *buffer = gimp_prop_text_buffer_new(G_OBJECT(config), property, -1);
    GtkWidget *view = gtk_text_view_new_with_buffer(buffer);
    GtkWidget *scroll = gtk_scrolled_window_new(NULL, NULL);
    GtkWidget *label, *start, *box;
    const gchar *id = g_intern_string(frame_id);

    g_object_unref(buffer);
    gtk_text_view_set_wrap_mode(GTK_TEXT_VIEW(view), GTK_WRAP_WORD_CHAR);
    gtk_text_view_set_accepts_tab(GTK_TEXT_VIEW(view), FALSE);
    gtk_text_view_set_left_margin(GTK_TEXT_VIEW(view), 3);
    gtk_text_view_set_right_margin(GTK_TEXT_VIEW(view), 3);
    gimp_help_set_help_data(view, tooltip, NULL);
    label = gimp_procedure_dialog_get_label(dialog, label_id, title, FALSE, TRUE);
    gtk_label_set_mnemonic_widget(GTK_LABEL(label), view);
    gtk_container_add(GTK_CONTAINER(scroll), view);
    gtk_scrolled_window_set_policy(GTK_SCROLLED_WINDOW(scroll), GTK_POLICY_NEVER,
                                   GTK_POLICY_AUTOMATIC);
    gtk_scrolled_window_set_shadow_type(GTK_SCROLLED_WINDOW(scroll), GTK_SHADOW_IN);
    gtk_widget_set_size_request(scroll, 420, height);
    gtk_widget_set_vexpand(scroll, TRUE);
    gtk_widget_show_all(scroll);
    /* a box needs one widget of the dialog's to start from: an empty label */
    start = gimp_procedure_dialog_get_label(dialog, start_id, "", FALSE, FALSE);
    box = gimp_procedure_dialog_fill_box(dialog, box_id, start_id, NULL);
    gtk_widget_hide(start);
    gtk_box_pack_start(GTK_BOX(box), scroll, TRUE, TRUE, 0);
    gimp_procedure_dialog_fill_frame(dialog, frame_id, label_id, FALSE, box_id);
    g_free(label_id);
    g_free(start_id);
    g_free(box_id);
    g_free(frame_id);
    return id;
}

/* A scale entry whose slider covers the usual values; the spin button still
 * takes the argument's full range. */
static void add_scale(GimpProcedureDialog *dialog, const gchar *property, gdouble lower,
                      gdouble upper, gint digits)
{
    GtkWidget *w = gimp_procedure_dialog_get_widget(dialog, property, GIMP_TYPE_SCALE_ENTRY);

    gimp_scale_entry_set_bounds(GIMP_SCALE_ENTRY(w), lower, upper, FALSE);
    gimp_label_spin_set_digits(GIMP_LABEL_SPIN(w), digits);
}

static void new_seed_clicked(GtkWidget *button, Dialog *d)
{
    g_object_set(d->config, "seed", g_random_int_range(0, G_MAXINT32), NULL);
}

/* Seed: [spin] [New Seed] [Randomize], as GimpRandomSeed in 2.10; the spin
 * and the button insensitive while randomizing. */
static void add_seed_row(GimpProcedureDialog *dialog, Dialog *d)
{
    GtkWidget *box, *button = gtk_button_new_with_label("New Seed");

    /* the argument's blurb tells scripts about -1; here Randomize is it */
    gimp_help_set_help_data(gimp_procedure_dialog_get_widget(dialog, "seed", G_TYPE_NONE),
                            CORE_SEED_TOOLTIP, NULL);
    box = gimp_procedure_dialog_fill_box(dialog, "seed-row", "seed", "random-seed", NULL);
    gtk_orientable_set_orientation(GTK_ORIENTABLE(box), GTK_ORIENTATION_HORIZONTAL);
    gtk_box_set_spacing(GTK_BOX(box), 6);
    gimp_help_set_help_data(button, "A new random seed, kept for the next runs", NULL);
    g_signal_connect(button, "clicked", G_CALLBACK(new_seed_clicked), d);
    gtk_box_pack_start(GTK_BOX(box), button, FALSE, FALSE, 0);
    gtk_box_reorder_child(GTK_BOX(box), button, 1);
    gtk_widget_show(button);
    g_object_bind_property(d->config, "random-seed", button, "sensitive",
                           G_BINDING_SYNC_CREATE | G_BINDING_INVERT_BOOLEAN);
    gimp_procedure_dialog_set_sensitive(dialog, "seed", TRUE, G_OBJECT(d->config), "random-seed",
                                        TRUE);
}

/* Model: [path entry] [Default] [File...] [Folder...], and the info line. */
static void add_model_row(GimpProcedureDialog *dialog, Dialog *d)
{
    GtkWidget *entry_widget = gimp_procedure_dialog_get_widget(dialog, "model", G_TYPE_NONE);
    GtkWidget *row, *box;

    d->model.dialog = d->dialog;
    d->model.entry = gimp_label_entry_get_entry(GIMP_LABEL_ENTRY(entry_widget));
    /* the argument's blurb tells scripts about ""; the entry has its own */
    gimp_help_set_help_data(entry_widget, NULL, NULL);
    d->model.apply_defaults = set_model_defaults;
    d->model.apply_size = d->mode == CORE_TXT2IMG ? set_model_size : set_model_area;
    d->model.offers = set_model_offers;
    d->model.data = d;
    row = gimp_procedure_dialog_fill_box(dialog, "model-row", "model", NULL);
    gtk_orientable_set_orientation(GTK_ORIENTABLE(row), GTK_ORIENTATION_HORIZONTAL);
    gtk_box_set_spacing(GTK_BOX(row), 4);
    gtk_widget_set_hexpand(entry_widget, TRUE);
    dialog_model_add_buttons(&d->model, row);

    box = gimp_procedure_dialog_fill_box(dialog, "model-box", "model-row", NULL);
    gtk_box_pack_start(GTK_BOX(box), dialog_model_info_new(&d->model), FALSE, FALSE, 0);
}

/* LoRA: [path entry] [File...] [None], and its weight under it. */
static void add_lora_row(GimpProcedureDialog *dialog, Dialog *d)
{
    GtkWidget *entry_widget =
        gimp_procedure_dialog_get_widget(dialog, core_lora_arg.name, G_TYPE_NONE);
    GtkWidget *row;

    add_scale(dialog, core_lora_weight_arg.name, -2, 2, 2);
    d->lora.dialog = d->dialog;
    d->lora.entry = gimp_label_entry_get_entry(GIMP_LABEL_ENTRY(entry_widget));
    d->lora.weight[0] =
        gimp_procedure_dialog_get_widget(dialog, core_lora_weight_arg.name, G_TYPE_NONE);
    row = gimp_procedure_dialog_fill_box(dialog, "lora-row", core_lora_arg.name, NULL);
    gtk_orientable_set_orientation(GTK_ORIENTABLE(row), GTK_ORIENTATION_HORIZONTAL);
    gtk_box_set_spacing(GTK_BOX(row), 4);
    gtk_widget_set_hexpand(entry_widget, TRUE);
    dialog_lora_add_buttons(&d->lora, row);
}

/* The config into s (DialogCopyRead): the arguments as OK would make them. */
static void read_settings(CoreSettings *s, gpointer data)
{
    Dialog *d = data;
    gboolean random;
    gchar *sampler = NULL;

    core_settings_default(s);
    settings_from_config(s, d->mode, d->config, NULL);
    g_object_get(d->config, "random-seed", &random, "sampler-choice", &sampler, NULL);
    if (random)
        s->seed = -1;
    if (sampler)
        g_strlcpy(s->sampler, sampler, sizeof s->sampler);
    g_free(sampler);
}

/* s into the config, and so the widgets (DialogCopyApply); the model stays. */
static void apply_settings(const CoreSettings *s, gpointer data)
{
    Dialog *d = data;

    g_object_set(d->config, "prompt", s->prompt, "negative-prompt", s->negative_prompt, "steps",
                 s->steps, "guidance", s->guidance, "sampler-choice", s->sampler,
                 core_lora_arg.name, s->lora, core_lora_weight_arg.name, s->lora_weight, NULL);
    if (s->seed >= 0)
        g_object_set(d->config, "seed", s->seed, "random-seed", FALSE, NULL);
    if (d->mode == CORE_TXT2IMG)
        g_object_set(d->config, "width", s->width, "height", s->height, NULL);
    else
        g_object_set(d->config, "strength", s->strength, core_area_arg.name,
                     s->area == CORE_AREA_SELECTED ? "selected-area" : "whole-layer",
                     core_padding_arg.name, s->padding, core_masked_arg.name,
                     s->masked_content == DIFFUSE_MASKED_LATENT_NOISE ? "latent-noise" : "original",
                     NULL);
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        g_object_set(d->config, core_size_cond_args[i].name, s->size_cond[i], NULL);
}

/* Copy Settings from Layer and its report line, above the widget whose id is
 * below (the prompt), in a box: returns its id. */
static const gchar *add_copy_row(GimpProcedureDialog *dialog, Dialog *d, GimpImage *image,
                                 GimpDrawable *drawable, const gchar *below)
{
    /* a box needs one widget to start from: no list means every argument */
    GtkWidget *box = gimp_procedure_dialog_fill_box(dialog, "copy-box", below, NULL);
    GtkWidget *row;

    d->copy =
        (DialogCopy){.mode = d->mode, .read = read_settings, .apply = apply_settings, .data = d};
    row = dialog_copy_new(&d->copy, image, drawable);
    gtk_box_pack_start(GTK_BOX(box), row, FALSE, FALSE, 0);
    gtk_box_reorder_child(GTK_BOX(box), row, 0);
    gtk_box_set_spacing(GTK_BOX(box), 6);
    return "copy-box";
}

/* SDXL's conditioning in an expander, folded: returns its id. */
static const gchar *add_sdxl(GimpProcedureDialog *dialog)
{
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        add_scale(dialog, core_size_cond_args[i].name, 0, 2048, 0);
    gimp_procedure_dialog_fill_box(dialog, "sdxl-box", core_size_cond_args[0].name,
                                   core_size_cond_args[1].name, core_size_cond_args[2].name,
                                   core_size_cond_args[3].name, core_size_cond_args[4].name,
                                   core_size_cond_args[5].name, core_empty_negative_arg.name, NULL);
    gimp_procedure_dialog_get_label(dialog, "sdxl-title", "SD_XL conditioning", FALSE, TRUE);
    gimp_procedure_dialog_fill_expander(dialog, "sdxl-expander", "sdxl-title", FALSE, "sdxl-box");
    return "sdxl-expander";
}

/* Shows the dialog; TRUE on OK, the config then holding the values. *model
 * receives the model the dialog loaded when it is the one chosen (the caller
 * frees it). */
static gboolean dialog_run(GimpProcedure *procedure, GimpProcedureConfig *config, CoreMode mode,
                           GimpImage *image, GimpDrawable *drawable, diffuse_model **model)
{
    Dialog d = {.config = config,
                .mode = mode,
                .image = image,
                .drawable = drawable,
                .unit = CORE_SIZE_UNIT};
    GimpProcedureDialog *dialog;
    const gchar *prompt, *negative;
    gboolean configured, ok;
    gint opened;
    gchar *chosen = NULL;

    gimp_ui_init(PLUG_IN_BINARY);
    g_object_get(config, "last-seed", &d.last_seed, NULL);
    if (mode == CORE_TXT2IMG)
        g_object_get(config, "width", &d.image_size[0], "height", &d.image_size[1], NULL);
    d.dialog = gimp_procedure_dialog_new(procedure, config,
                                         mode == CORE_TXT2IMG ? _("Diffuse: Text to Image")
                                                              : _("Diffuse: Image to Image"));
    dialog = GIMP_PROCEDURE_DIALOG(d.dialog);
    prompt = add_copy_row(dialog, &d, image, drawable,
                          add_text(dialog, config, "prompt", "_Prompt", CORE_PROMPT_TOOLTIP, 72));
    negative =
        add_text(dialog, config, "negative-prompt", "Negati_ve prompt", CORE_NEGATIVE_TOOLTIP, 40);
    add_seed_row(dialog, &d);
    add_scale(dialog, "steps", 1, 100, 0);
    add_scale(dialog, "guidance", 0, 20, 1);
    if (mode == CORE_TXT2IMG) {
        for (gint i = 0; i < 2; i++) {
            add_scale(dialog, size_names[i], CORE_SIZE_UNIT, 2048, 0);
            d.size[i] = gimp_procedure_dialog_get_widget(dialog, size_names[i], G_TYPE_NONE);
            g_signal_connect(config, i ? "notify::height" : "notify::width",
                             G_CALLBACK(size_changed), &d);
        }
        /* what the time depends on, besides the size */
        for (gint i = 0; i < 5; i++) {
            const gchar *const names[] = {"count", "steps", "guidance", "sampler-choice",
                                          core_fast_decoder_arg.name};
            gchar *signal = g_strconcat("notify::", names[i], NULL);

            g_signal_connect_swapped(config, signal, G_CALLBACK(update_size_note), &d);
            g_free(signal);
        }
        d.size_note = dialog_size_note_new();
        gtk_box_pack_start(
            GTK_BOX(gimp_procedure_dialog_fill_box(dialog, "size-box", "height", NULL)),
            d.size_note, FALSE, FALSE, 0);
    } else {
        add_scale(dialog, "strength", 0.01, 1, 2);
        add_scale(dialog, core_padding_arg.name, 0, 256, 0);
    }
    add_scale(dialog, "count", 1, 16, 0);
    d.fast_decoder =
        gimp_procedure_dialog_get_widget(dialog, core_fast_decoder_arg.name, G_TYPE_NONE);
    add_model_row(dialog, &d);
    add_lora_row(dialog, &d);
    if (mode == CORE_TXT2IMG)
        gimp_procedure_dialog_fill(dialog, prompt, negative, "seed-row", "steps", "guidance",
                                   "sampler-choice", "width", "size-box", core_scale_arg.name,
                                   "count", core_fast_decoder_arg.name, "model-box", "lora-row",
                                   core_lora_weight_arg.name, add_sdxl(dialog), NULL);
    else
        gimp_procedure_dialog_fill(dialog, prompt, negative, "seed-row", "steps", "guidance",
                                   "sampler-choice", "strength", core_area_arg.name,
                                   core_padding_arg.name, core_masked_arg.name, "count",
                                   core_fast_decoder_arg.name, "model-box", "lora-row",
                                   core_lora_weight_arg.name, add_sdxl(dialog), NULL);
    gtk_widget_show(d.dialog);
    g_object_get(config, "configured", &configured, NULL);
    /* a first run takes the model's own steps and guidance */
    dialog_model_update(&d.model, !configured);
    update_size_note(&d);
    g_object_get(config, "opened", &opened, NULL);
    g_object_set(config, "opened", opened == G_MAXINT32 ? 1 : opened + 1, NULL);
    g_signal_connect(config, "notify::opened", G_CALLBACK(values_reset), &d);

    ok = gimp_procedure_dialog_run(dialog);
    dialog_dump_tooltips(d.dialog);
    g_signal_handlers_disconnect_by_data(config, &d);
    if (d.round_idle)
        g_source_remove(d.round_idle);
    if (d.reset_idle)
        g_source_remove(d.reset_idle);
    if (ok)
        dialog_model_update(&d.model, FALSE); /* the model the entry names now, for the run */
    gtk_widget_destroy(d.dialog);
    dialog_copy_free(&d.copy);
    g_object_get(config, "model", &chosen, NULL);
    *model = dialog_model_take(&d.model, ok, chosen ? chosen : "");
    g_free(chosen);
    return ok;
}

/* The dialog shows the last seed used with Randomize ticked for a random
 * seed (-1), as the 2.10 dialog does, and the sampler in a menu of the
 * engine's samplers; OK turns them back into the arguments. */
static void to_dialog(GimpProcedureConfig *config)
{
    gint seed, last;
    gchar *sampler = NULL;

    g_object_get(config, "seed", &seed, "last-seed", &last, "sampler", &sampler, NULL);
    g_object_set(config, "random-seed", seed < 0, "seed", seed < 0 ? last : seed, NULL);
    if (core_sampler_find(sampler) >= 0)
        g_object_set(config, "sampler-choice", sampler, NULL);
    g_free(sampler);
}

static void from_dialog(GimpProcedureConfig *config)
{
    gboolean random;
    gchar *sampler = NULL;

    g_object_get(config, "random-seed", &random, "sampler-choice", &sampler, NULL);
    if (random)
        g_object_set(config, "seed", -1, NULL);
    g_object_set(config, "sampler", sampler, NULL);
    g_free(sampler);
}

/* ---------------------------------------------------------------- values not run */

/* GIMP keeps a dialog's values after a successful run only. Those of a run
 * that failed after OK (a model that cannot load, say) wait in a global
 * parasite, one per procedure, for its dialog to open with them next time:
 * the painter's edits are not lost. What a successful run used stays what
 * RUN-WITH-LAST-VALS repeats. */
static gchar *unsaved_name(GimpProcedure *procedure)
{
    return g_strconcat("diffuse-unsaved-", gimp_procedure_get_name(procedure), NULL);
}

static void unsaved_keep(GimpProcedure *procedure, GimpProcedureConfig *config)
{
    gchar *name = unsaved_name(procedure);
    gchar *text;
    GimpParasite *parasite;

    /* the values are the painter's: the dialog keeps them, not the model's */
    g_object_set(config, "configured", TRUE, NULL);
    text = gimp_config_serialize_to_string(GIMP_CONFIG(config), NULL);
    parasite = gimp_parasite_new(name, GIMP_PARASITE_PERSISTENT, strlen(text) + 1, text);
    gimp_attach_parasite(parasite);
    gimp_parasite_free(parasite);
    g_free(text);
    g_free(name);
}

/* The values unsaved_keep() kept into config, if any; they are then gone. */
static void unsaved_take(GimpProcedure *procedure, GimpProcedureConfig *config)
{
    gchar *name = unsaved_name(procedure);
    GimpParasite *parasite = gimp_get_parasite(name);
    guint32 size = 0;
    const gchar *text = parasite ? gimp_parasite_get_data(parasite, &size) : NULL;

    if (text && size > 0 && text[size - 1] == '\0')
        gimp_config_deserialize_string(GIMP_CONFIG(config), text, size - 1, NULL, NULL);
    if (parasite) {
        gimp_detach_parasite(name);
        gimp_parasite_free(parasite);
    }
    g_free(name);
}

/* ---------------------------------------------------------------- run */

/* Asks for the settings in the dialog; FALSE with error set when the image
 * cannot be used or the user cancels. */
static gboolean interact(GimpProcedure *procedure, GimpProcedureConfig *config, GimpImage *image,
                         GimpDrawable *drawable, CoreMode mode, diffuse_model **model,
                         GError **error)
{
    /* refuse an indexed image before showing a dialog it cannot use */
    if (!core_image_check(image, error))
        return FALSE;
    unsaved_take(procedure, config);
    if (mode == CORE_TXT2IMG) {
        gint w, h;

        core_image_default_size(image, &w, &h);
        g_object_set(config, "width", w, "height", h, NULL);
    }
    to_dialog(config);
    if (!dialog_run(procedure, config, mode, image, drawable, model)) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_CANCELLED, "cancelled");
        return FALSE;
    }
    from_dialog(config);
    return TRUE;
}

static GimpPDBStatusType status_of(const GError *error)
{
    if (!error)
        return GIMP_PDB_SUCCESS;
    return error->code == CORE_ERROR_CANCELLED ? GIMP_PDB_CANCEL
           : error->code == CORE_ERROR_CALLING ? GIMP_PDB_CALLING_ERROR
                                               : GIMP_PDB_EXECUTION_ERROR;
}

static GimpValueArray *diffuse_run(GimpProcedure *procedure, GimpRunMode run_mode, GimpImage *image,
                                   GimpDrawable **drawables, GimpProcedureConfig *config,
                                   gpointer run_data)
{
    CoreMode mode = GPOINTER_TO_INT(run_data);
    gsize n = gimp_core_object_array_get_length((GObject **)drawables);
    CoreSettings *s = g_new(CoreSettings, 1);
    diffuse_model *model = NULL;
    GError *error = NULL;
    gboolean asked = FALSE; /* the dialog said OK */
    GimpPDBStatusType status;

    gegl_init(NULL, NULL);
    core_settings_default(s);
    if (mode == CORE_IMG2IMG && n != 1)
        g_set_error(&error, CORE_ERROR, CORE_ERROR_CALLING,
                    "drawables: img2img works on one layer, %d are selected: select one", (gint)n);
    else if (run_mode == GIMP_RUN_INTERACTIVE)
        asked = interact(procedure, config, image, n ? drawables[0] : CORE_NO_DRAWABLE, mode,
                         &model, &error);
    if ((asked || (run_mode != GIMP_RUN_INTERACTIVE && !error)) &&
        settings_from_config(s, mode, config, &error)) {
        /* the picture forming, the step and Cancel: interactive runs only */
        ProgressWindow *window = progress_window_new(run_mode == GIMP_RUN_INTERACTIVE,
                                                     PLUG_IN_BINARY, "Diffuse: Generating");

        if (core_run(image, n ? drawables[0] : CORE_NO_DRAWABLE, mode, s, model,
                     progress_window_watch(window), &error))
            /* kept with the other last values, for the dialog to show */
            g_object_set(config, "last-seed", s->last_seed, "configured", TRUE, NULL);
        progress_window_free(window);
    }
    if (asked && error)
        unsaved_keep(procedure, config);
    if (model)
        diffuse_model_free(model);
    g_free(s);
    status = status_of(error);
    if (status == GIMP_PDB_CANCEL)
        g_clear_error(&error);
    return gimp_procedure_new_return_values(procedure, status, error);
}

/* gimp_main() as GIMP_MAIN() would call it, after noting where the binary
 * is: the default model is installed beside it. */
int main(int argc, char *argv[])
{
    core_process_init(argv);
    core_set_plugin_dir_of_binary(argv[0]);
    core_i18n_init();
    return gimp_main(DIFFUSE_TYPE, argc, argv);
}
