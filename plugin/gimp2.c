/* gimp2.c: the GIMP 2.10 front end of Diffuse: registration (query), run
 * modes (run) and the GTK2 dialog. Everything else is in core.c, which a GIMP
 * 3.0 front end shares, and the dialog's model and LoRA rows and Copy Settings
 * button in dialog.c.
 *
 * Procedures (the PDB contract in DESIGN.md):
 *   plug-in-diffuse-txt2img (run-mode, image, drawable, prompt, negative-prompt,
 *       seed, steps, guidance, sampler, width, height, count, model)
 *   plug-in-diffuse-img2img (run-mode, image, drawable, prompt, negative-prompt,
 *       seed, steps, guidance, sampler, strength, count, model)
 *   plug-in-diffuse-txt2img-ext, plug-in-diffuse-img2img-ext: the same, then
 *       original-width, original-height, crop-left, crop-top, target-width,
 *       target-height (SDXL size conditioning), empty-negative and
 *       fast-decoder (core.h);
 *       GIMP 2.10 calls take every argument, so the additions are procedures
 *       of their own and the first two keep their signature;
 *   plug-in-diffuse-txt2img-ext2: -ext's, then scale-to (0 generated size, 1
 *       the image, 2 the selection's bounds: core_scale_arg), -ext keeping
 *       its signature in turn.
 * A LoRA file comes from the dialog's LoRA row (and so RUN-WITH-LAST-VALS);
 * the procedures' arguments stay as they are, and scripts name LoRAs in the
 * prompt, <lora:NAME:WEIGHT> (NAME.safetensors in the LoRA folder, or a path).
 * So do Image to Image's inpaint area and padding (core.h, CoreArea) and its
 * masked content (core_masked_arg): the dialog's menus, the remembered
 * settings; whole layer and original for PDB calls.
 * Errors come back as the status plus a second return value holding the
 * message, GIMP 2.10's convention, so that Script-Fu and the error console
 * show it. */
#include <string.h>

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "core.h"
#include "dialog.h"
#include "progress.h"

#define PROC_TXT2IMG "plug-in-diffuse-txt2img"
#define PROC_IMG2IMG "plug-in-diffuse-img2img"
#define EXT "-ext" /* the extended forms: PROC_TXT2IMG EXT, PROC_IMG2IMG EXT */
#define N_EXT (CORE_SIZE_COND_ARGS + 2)
#define EXT2 "-ext2" /* Text to Image's second extended form: -ext's arguments, then scale-to */
#define PLUG_IN_BINARY "diffuse"
#define PLUG_IN_ROLE "gimp-diffuse"
#define MENU_PATH "<Image>/Filters/Diffuse"
/* Last values: each procedure keeps its own under its name (the -ext form
 * shares its procedure's), so that Text to Image's steps do not turn up in
 * Image to Image; before version 2 both shared LEGACY_DATA_KEY, which a
 * procedure with none of its own still starts from. */
#define LEGACY_DATA_KEY "plug-in-diffuse"

static void query(void);
static void run(const gchar *name, gint nparams, const GimpParam *param, gint *nreturn_vals,
                GimpParam **return_vals);

const GimpPlugInInfo PLUG_IN_INFO = {NULL, NULL, query, run};

/* ---------------------------------------------------------------- registration */

#define ARGS_HEAD                                                                                  \
    {GIMP_PDB_INT32, "run-mode",                                                                   \
     "The run mode { RUN-INTERACTIVE (0), RUN-NONINTERACTIVE (1), "                                \
     "RUN-WITH-LAST-VALS (2) }"},                                                                  \
        {GIMP_PDB_IMAGE, "image", "Input image"},                                                  \
        {GIMP_PDB_DRAWABLE, "drawable", "Input drawable: the new layers go above it"},             \
        {GIMP_PDB_STRING, "prompt", "What to draw"},                                               \
        {GIMP_PDB_STRING, "negative-prompt", "What to keep out (\"\" = nothing)"},                 \
        {GIMP_PDB_INT32, "seed", "Random seed (-1 = random); image i uses seed + i"},              \
        {GIMP_PDB_INT32, "steps", "Denoising steps (1..1000)"},                                    \
        {GIMP_PDB_FLOAT, "guidance", "Guidance scale (0..100; <= 1 skips the negative prompt)"},   \
    {                                                                                              \
        GIMP_PDB_STRING, "sampler", CORE_SAMPLER_BLURB                                             \
    }

#define ARGS_TAIL                                                                                  \
    {GIMP_PDB_INT32, "count", "Number of images, one layer each (1..100)"},                        \
    {                                                                                              \
        GIMP_PDB_STRING, "model",                                                                  \
            "A .safetensors file or a diffusers folder (\"\" = the "                               \
            "default model)"                                                                       \
    }

/* The scale-to argument of plug-in-diffuse-txt2img-ext2, by number. */
#define SCALE_BLURB                                                                                \
    "Scale the new layers with GIMP's resampling (the context's interpolation) to: 0 the "         \
    "generated size (no scaling), 1 the image, 2 the selection's bounds (the image without a "     \
    "selection); they fill it, the aspect kept, centred, what overflows cut"

/* One procedure in the Diffuse menu, the two differing only in what is
 * passed, and its extended forms (no menu entry): the arguments, then the
 * eight of core.h (-ext), then for Text to Image (ext2) scale-to (-ext2). */
static void install(const gchar *name, const gchar *blurb, const gchar *help, const gchar *label,
                    const GimpParamDef *args, gint nargs, gboolean ext2)
{
    GimpParamDef *ext = g_new(GimpParamDef, nargs + N_EXT + 1);
    gchar *ext_name = g_strconcat(name, EXT, NULL);
    gchar *ext_help = g_strconcat(help,
                                  " The -ext form takes SDXL's size conditioning, "
                                  "whether an empty negative prompt is a prompt, and the fast "
                                  "decoder.",
                                  NULL);

    gimp_install_procedure(name, blurb, help, CORE_AUTHOR, CORE_COPYRIGHT, CORE_DATE, label,
                           "RGB*, GRAY*, INDEXED*", GIMP_PLUGIN, nargs, 0, args, NULL);
    gimp_plugin_menu_register(name, MENU_PATH);
    memcpy(ext, args, sizeof *ext * nargs);
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        ext[nargs + i] = (GimpParamDef){GIMP_PDB_INT32, (gchar *)core_size_cond_args[i].name,
                                        (gchar *)core_size_cond_args[i].blurb};
    ext[nargs + CORE_SIZE_COND_ARGS] =
        (GimpParamDef){GIMP_PDB_INT32, (gchar *)core_empty_negative_arg.name,
                       (gchar *)core_empty_negative_arg.blurb};
    ext[nargs + CORE_SIZE_COND_ARGS + 1] = (GimpParamDef){
        GIMP_PDB_INT32, (gchar *)core_fast_decoder_arg.name, (gchar *)core_fast_decoder_arg.blurb};
    gimp_install_procedure(ext_name, blurb, ext_help, CORE_AUTHOR, CORE_COPYRIGHT, CORE_DATE, NULL,
                           "RGB*, GRAY*, INDEXED*", GIMP_PLUGIN, nargs + N_EXT, 0, ext, NULL);
    g_free(ext_help);
    g_free(ext_name);
    if (ext2) {
        ext_name = g_strconcat(name, EXT2, NULL);
        ext_help = g_strconcat(help,
                               " The -ext2 form takes -ext's arguments, then scale-to: the new "
                               "layers scaled to the image or the selection's bounds.",
                               NULL);
        ext[nargs + N_EXT] =
            (GimpParamDef){GIMP_PDB_INT32, (gchar *)core_scale_arg.name, (gchar *)SCALE_BLURB};
        gimp_install_procedure(ext_name, blurb, ext_help, CORE_AUTHOR, CORE_COPYRIGHT, CORE_DATE,
                               NULL, "RGB*, GRAY*, INDEXED*", GIMP_PLUGIN, nargs + N_EXT + 1, 0,
                               ext, NULL);
        g_free(ext_help);
        g_free(ext_name);
    }
    g_free(ext);
}

static void query(void)
{
    gchar *help = core_help_uri();

    static const GimpParamDef txt2img_args[] = {
        ARGS_HEAD,
        {GIMP_PDB_INT32, "width", "Width in pixels, a multiple of 8 (0 = the image's width)"},
        {GIMP_PDB_INT32, "height", "Height in pixels, a multiple of 8 (0 = the image's height)"},
        ARGS_TAIL};
    static const GimpParamDef img2img_args[] = {
        ARGS_HEAD, {GIMP_PDB_FLOAT, "strength", "How much to change, (0, 1]"}, ARGS_TAIL};

    install(PROC_TXT2IMG, "Generate new layers from a text prompt",
            "Runs Stable Diffusion inside the plug-in and inserts count new layers of width x "
            "height above the drawable, named \"Diffuse: <prompt> (seed N)\", each with its "
            "settings in the parasite \"diffuse-parameters\".",
            N_("_Text to Image..."), txt2img_args, G_N_ELEMENTS(txt2img_args), TRUE);
    install(PROC_IMG2IMG, "Repaint the selection from a text prompt",
            "Runs Stable Diffusion on the drawable's pixels inside the selection bounds and "
            "inserts the results as new layers at the selection's position, repainted where "
            "the selection is (soft edges blend) and the original pixels elsewhere.",
            N_("_Image to Image..."), img2img_args, G_N_ELEMENTS(img2img_args), FALSE);
    /* the dialogs' Help button: the page shipped beside the binary */
    gimp_plugin_help_register(CORE_HELP_DOMAIN, help);
    g_free(help);
    /* GIMP translates the menu labels with the plug-in's catalogue */
    help = core_locale_dir();
    gimp_plugin_domain_register(GETTEXT_PACKAGE, help);
    g_free(help);
}

/* ---------------------------------------------------------------- arguments */

/* Copies a PDB string (NULL = "") into a settings field; too long is a
 * calling error naming the argument. */
static gboolean copy_arg(gchar *dst, gsize size, const gchar *value, const gchar *name,
                         GError **error)
{
    if (!value)
        value = "";
    if (strlen(value) >= size) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING, "%s: longer than %d bytes", name,
                    (gint)size - 1);
        return FALSE;
    }
    g_strlcpy(dst, value, size);
    return TRUE;
}

/* ext: 0 for the plain procedures, 1 for -ext, 2 for -ext2. */
static gboolean settings_from_args(CoreSettings *s, CoreMode mode, gint ext, gint nparams,
                                   const GimpParam *p, GError **error)
{
    gint base = mode == CORE_TXT2IMG ? 13 : 12, want = base + (ext ? N_EXT : 0) + (ext == 2);
    gint tail = mode == CORE_TXT2IMG ? 11 : 10; /* index of count */

    if (nparams != want) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING, "expected %d arguments, got %d", want,
                    nparams);
        return FALSE;
    }
    s->seed = p[5].data.d_int32;
    s->steps = p[6].data.d_int32;
    s->guidance = p[7].data.d_float;
    if (mode == CORE_TXT2IMG) {
        s->width = p[9].data.d_int32;
        s->height = p[10].data.d_int32;
    } else
        s->strength = p[9].data.d_float;
    s->count = p[tail].data.d_int32;
    for (gint i = 0; ext && i < CORE_SIZE_COND_ARGS; i++)
        s->size_cond[i] = p[base + i].data.d_int32;
    if (ext) {
        s->empty_negative = p[base + CORE_SIZE_COND_ARGS].data.d_int32 != 0;
        s->fast_decoder = p[base + CORE_SIZE_COND_ARGS + 1].data.d_int32 != 0;
    }
    if (ext == 2)
        s->scale_to = p[base + N_EXT].data.d_int32;
    return copy_arg(s->prompt, sizeof s->prompt, p[3].data.d_string, "prompt", error) &&
           copy_arg(s->negative_prompt, sizeof s->negative_prompt, p[4].data.d_string,
                    "negative-prompt", error) &&
           copy_arg(s->sampler, sizeof s->sampler, p[8].data.d_string, "sampler", error) &&
           copy_arg(s->model, sizeof s->model, p[tail + 1].data.d_string, "model", error);
}

/* The key a procedure's last values are kept under. */
static const gchar *data_key(CoreMode mode)
{
    return mode == CORE_TXT2IMG ? PROC_TXT2IMG : PROC_IMG2IMG;
}

static gboolean load_data(CoreSettings *s, const gchar *key)
{
    gint size = gimp_get_data_size(key);
    gchar *text;

    if (size <= 0)
        return FALSE;
    text = g_malloc0(size + 1);
    if (gimp_get_data(key, text))
        core_settings_deserialize(s, text);
    g_free(text);
    return TRUE;
}

static gboolean load_last_values(CoreSettings *s, CoreMode mode)
{
    return load_data(s, data_key(mode)) || load_data(s, LEGACY_DATA_KEY);
}

static void save_last_values(const CoreSettings *s, CoreMode mode)
{
    gchar *text = core_settings_serialize(s);

    gimp_set_data(data_key(mode), text, strlen(text) + 1);
    g_free(text);
}

/* ---------------------------------------------------------------- dialog */

typedef struct {
    CoreSettings *s;
    CoreMode mode;
    GtkWidget *dialog;
    GtkTextBuffer *prompt, *negative;
    guint32 seed; /* gimp_random_seed_new() writes these two */
    gboolean random_seed;
    GtkWidget *seed_box; /* GimpRandomSeed */
    GtkObject *steps, *guidance, *strength, *count, *width, *height, *lora_weight;
    GtkObject *size_cond[CORE_SIZE_COND_ARGS];
    GtkWidget *empty_negative, *fast_decoder;
    GtkWidget *sampler; /* GtkComboBoxText */
    GtkWidget *area;    /* Image to Image: GtkComboBoxText of the CoreArea values */
    GtkObject *padding;
    GtkWidget *masked;      /* Image to Image: GtkComboBoxText of diffuse_masked_content */
    GtkWidget *scale_to;    /* Text to Image: GtkComboBoxText of the CoreScaleTo values */
    gint unit;              /* Text to Image: sizes are multiples of it, the model's (core.h) */
    GtkWidget *size_note;   /* Text to Image: what the run costs (dialog_size_note()) */
    gboolean shown;         /* every widget is made: the note can read them */
    gint32 image, drawable; /* Image to Image: the selection the area suits */
    DialogModel model;      /* the model row */
    DialogLora lora;        /* the LoRA row */
    DialogCopy copy;        /* Copy Settings from Layer */
} Dialog;

static GtkTextBuffer *add_text_view(GtkWidget *box, const gchar *title, const gchar *text,
                                    gint height, const gchar *tooltip)
{
    GtkWidget *frame = gimp_frame_new(title);
    GtkWidget *scroll = gtk_scrolled_window_new(NULL, NULL);
    GtkWidget *view = gtk_text_view_new();
    GtkWidget *label;

    gtk_scrolled_window_set_policy(GTK_SCROLLED_WINDOW(scroll), GTK_POLICY_NEVER,
                                   GTK_POLICY_AUTOMATIC);
    gtk_scrolled_window_set_shadow_type(GTK_SCROLLED_WINDOW(scroll), GTK_SHADOW_IN);
    gtk_widget_set_size_request(scroll, 420, height);
    gtk_text_view_set_wrap_mode(GTK_TEXT_VIEW(view), GTK_WRAP_WORD_CHAR);
    gimp_help_set_help_data(view, tooltip, NULL);
    gtk_text_buffer_set_text(gtk_text_view_get_buffer(GTK_TEXT_VIEW(view)), text, -1);
    gtk_container_add(GTK_CONTAINER(scroll), view);
    gtk_container_add(GTK_CONTAINER(frame), scroll);
    /* the title's mnemonic focuses the text */
    label = gtk_frame_get_label_widget(GTK_FRAME(frame));
    gtk_label_set_text_with_mnemonic(GTK_LABEL(label), title);
    gtk_label_set_mnemonic_widget(GTK_LABEL(label), view);
    gtk_box_pack_start(GTK_BOX(box), frame, TRUE, TRUE, 0);
    return gtk_text_view_get_buffer(GTK_TEXT_VIEW(view));
}

/* Copies text into a settings field, cut at a character boundary. */
static void take_text(gchar *dst, gsize size, GtkTextBuffer *buffer)
{
    GtkTextIter start, end;
    gchar *text;
    const gchar *bad;

    gtk_text_buffer_get_bounds(buffer, &start, &end);
    text = gtk_text_buffer_get_text(buffer, &start, &end, FALSE);
    g_strlcpy(dst, text, size);
    if (!g_utf8_validate(dst, -1, &bad))
        dst[bad - dst] = '\0';
    g_free(text);
}

static GtkObject *add_scale(GtkWidget *table, gint row, const gchar *label, gdouble value,
                            gdouble lower, gdouble upper, gdouble step, gint digits, gdouble max,
                            const gchar *tooltip)
{
    return gimp_scale_entry_new(GTK_TABLE(table), 0, row, label, 200, 6, value, lower, upper, step,
                                step * 10, digits, max <= upper, lower, MAX(max, upper), tooltip,
                                NULL);
}

static void read_settings(CoreSettings *s, gpointer data);

/* Text to Image: the size note for the settings shown (what the run would
 * cost), once every field is there. */
static void update_size_note(Dialog *d)
{
    CoreSettings *s;

    if (!d->size_note || !d->shown)
        return;
    s = g_new(CoreSettings, 1); /* ~12 KiB: not on the stack */
    *s = *d->s;
    read_settings(s, d);
    dialog_size_note_update(d->size_note, d->model.model, s);
    g_free(s);
}

/* Keeps a size adjustment on multiples of the model's unit. */
static void round_to_unit(GtkAdjustment *adj, Dialog *d)
{
    gdouble v = gtk_adjustment_get_value(adj);

    if (v != core_round_to(v, d->unit))
        gtk_adjustment_set_value(adj, MIN(core_round_to(v, d->unit), CORE_MAX_SIDE));
    update_size_note(d);
}

/* The model's steps, guidance and sampler (DialogModelDefaults). */
static void set_model_defaults(const CoreSettings *defaults, gpointer data)
{
    Dialog *d = data;

    gtk_adjustment_set_value(GTK_ADJUSTMENT(d->steps), defaults->steps);
    gtk_adjustment_set_value(GTK_ADJUSTMENT(d->guidance), defaults->guidance);
    gtk_combo_box_set_active(GTK_COMBO_BOX(d->sampler),
                             MAX(0, core_sampler_find(defaults->sampler)));
}

/* The model's native size and unit (DialogModelSize), Text to Image only:
 * the sizes step in the unit. */
static void set_model_size(gint native, gint unit, gpointer data)
{
    Dialog *d = data;
    gint n = core_round_to(MIN(native, CORE_MAX_SIDE), unit);

    d->unit = unit;
    gtk_adjustment_set_step_increment(GTK_ADJUSTMENT(d->width), unit);
    gtk_adjustment_set_step_increment(GTK_ADJUSTMENT(d->height), unit);
    gtk_adjustment_set_value(GTK_ADJUSTMENT(d->width), n);
    gtk_adjustment_set_value(GTK_ADJUSTMENT(d->height), n);
    update_size_note(d);
}

/* Image to Image: the area that suits the selection at the native size of the
 * model just loaded (DialogModelSize). */
static void set_model_area(gint native, gint unit, gpointer data)
{
    Dialog *d = data;

    gtk_combo_box_set_active(GTK_COMBO_BOX(d->area),
                             core_area_suggest(d->image, d->drawable, native));
}

/* The fast decoder check box is for models that have one (DialogModelOffers). */
static void set_model_offers(const diffuse_model *model, gpointer data)
{
    Dialog *d = data;
    const gboolean has = core_model_has_fast_decoder(model);

    gtk_widget_set_sensitive(d->fast_decoder, has);
    update_size_note(d); /* none without a model */
}

/* Model: [path entry] [Default] [File...] [Folder...], and the info line. */
static void add_model_row(Dialog *d, GtkWidget *table, gint row)
{
    GtkWidget *hbox = gtk_hbox_new(FALSE, 4), *label;

    d->model.dialog = d->dialog;
    d->model.entry = gtk_entry_new();
    d->model.apply_defaults = set_model_defaults;
    d->model.apply_size = d->mode == CORE_TXT2IMG ? set_model_size : set_model_area;
    d->model.offers = set_model_offers;
    d->model.data = d;
    gtk_entry_set_text(GTK_ENTRY(d->model.entry), d->s->model);
    gtk_box_pack_start(GTK_BOX(hbox), d->model.entry, TRUE, TRUE, 0);
    dialog_model_add_buttons(&d->model, hbox);
    label =
        gimp_table_attach_aligned(GTK_TABLE(table), 0, row, "_Model:", 0.0, 0.5, hbox, 2, FALSE);
    gtk_label_set_mnemonic_widget(GTK_LABEL(label), d->model.entry); /* not the row */
    gtk_table_attach(GTK_TABLE(table), dialog_model_info_new(&d->model), 1, 3, row + 1, row + 2,
                     GTK_EXPAND | GTK_FILL, GTK_FILL, 0, 0);
}

/* The samplers by the engine's labels ("DPM++ 2M Karras"), in core_sampler_choices()
 * order: the active index is a choice's. */
static GtkWidget *add_sampler_combo(Dialog *d, GtkWidget *table, gint row)
{
    GtkWidget *combo = gtk_combo_box_text_new();
    const CoreSampler *c;
    gint n = core_sampler_choices(&c);

    for (gint i = 0; i < n; i++)
        gtk_combo_box_text_append_text(GTK_COMBO_BOX_TEXT(combo), c[i].label);
    gtk_combo_box_set_active(GTK_COMBO_BOX(combo), MAX(0, core_sampler_find(d->s->sampler)));
    gimp_help_set_help_data(combo, CORE_SAMPLER_TOOLTIP, NULL);
    gimp_table_attach_aligned(GTK_TABLE(table), 0, row, "S_ampler:", 0.0, 0.5, combo, 2, FALSE);
    return combo;
}

/* Image to Image: Inpaint area [Whole layer|Selected area], its padding and
 * Masked content [Original|Latent noise]; returns the next row. */
static gint add_area_rows(Dialog *d, GtkWidget *table, gint row)
{
    gchar *label = g_strconcat(core_area_arg.label, ":", NULL);

    d->area = gtk_combo_box_text_new();
    gtk_combo_box_text_append_text(GTK_COMBO_BOX_TEXT(d->area), "Whole layer");
    gtk_combo_box_text_append_text(GTK_COMBO_BOX_TEXT(d->area), "Selected area");
    gtk_combo_box_set_active(GTK_COMBO_BOX(d->area), d->s->area == CORE_AREA_SELECTED);
    gimp_help_set_help_data(d->area, core_area_arg.blurb, NULL);
    gimp_table_attach_aligned(GTK_TABLE(table), 0, row++, label, 0.0, 0.5, d->area, 2, FALSE);
    g_free(label);
    label = g_strconcat(core_padding_arg.label, ":", NULL);
    d->padding = add_scale(table, row++, label, d->s->padding, 0, 256, 1, 0, CORE_MAX_PADDING,
                           core_padding_arg.blurb);
    g_free(label);
    label = g_strconcat(core_masked_arg.label, ":", NULL);
    d->masked = gtk_combo_box_text_new(); /* in diffuse_masked_content's order */
    gtk_combo_box_text_append_text(GTK_COMBO_BOX_TEXT(d->masked), "Original");
    gtk_combo_box_text_append_text(GTK_COMBO_BOX_TEXT(d->masked), "Latent noise");
    gtk_combo_box_set_active(GTK_COMBO_BOX(d->masked), d->s->masked_content);
    gimp_help_set_help_data(d->masked, core_masked_arg.blurb, NULL);
    gimp_table_attach_aligned(GTK_TABLE(table), 0, row++, label, 0.0, 0.5, d->masked, 2, FALSE);
    g_free(label);
    return row;
}

/* Text to Image: Scale result into [Generated size|Image|Selection bounds]. */
static void add_scale_row(Dialog *d, GtkWidget *table, gint row)
{
    gchar *label = g_strconcat(_(core_scale_arg.label), ":", NULL);

    d->scale_to = gtk_combo_box_text_new(); /* in CoreScaleTo's order */
    for (gint i = 0; i < CORE_SCALE_KINDS; i++)
        gtk_combo_box_text_append_text(GTK_COMBO_BOX_TEXT(d->scale_to), _(core_scale_labels[i]));
    gtk_combo_box_set_active(GTK_COMBO_BOX(d->scale_to), d->s->scale_to);
    gimp_help_set_help_data(d->scale_to, _(core_scale_arg.blurb), NULL);
    gimp_table_attach_aligned(GTK_TABLE(table), 0, row, label, 0.0, 0.5, d->scale_to, 2, FALSE);
    g_free(label);
}

static void add_seed_row(Dialog *d, GtkWidget *table, gint row)
{
    GtkWidget *seed;

    d->seed = d->s->seed >= 0 ? d->s->seed : d->s->last_seed;
    d->random_seed = d->s->seed < 0;
    seed = gimp_random_seed_new(&d->seed, &d->random_seed);
    gtk_adjustment_set_upper(GTK_ADJUSTMENT(GIMP_RANDOM_SEED_SPINBUTTON_ADJ(seed)), G_MAXINT32);
    /* the widget draws a fresh seed when randomizing; show the last one used,
     * so that a liked result can be repeated by unticking Randomize */
    gtk_adjustment_set_value(GTK_ADJUSTMENT(GIMP_RANDOM_SEED_SPINBUTTON_ADJ(seed)),
                             d->s->seed >= 0 ? d->s->seed : d->s->last_seed);
    gimp_help_set_help_data(GIMP_RANDOM_SEED_SPINBUTTON(seed), CORE_SEED_TOOLTIP, NULL);
    gimp_help_set_help_data(GIMP_RANDOM_SEED_TOGGLE(seed),
                            "A new random seed for every run; the seed used is in the layer name",
                            NULL);
    gimp_table_attach_aligned(GTK_TABLE(table), 0, row, "S_eed:", 0.0, 0.5, seed, 2, FALSE);
    d->seed_box = seed;
}

/* LoRA: [path entry] [File...] [None], and its weight under it. */
static void add_lora_rows(Dialog *d, GtkWidget *table, gint row)
{
    GtkWidget *hbox = gtk_hbox_new(FALSE, 4);
    gchar *label = g_strconcat(core_lora_weight_arg.label, ":", NULL);

    d->lora_weight = add_scale(table, row + 1, label, d->s->lora_weight, -2, 2, 0.05, 2,
                               CORE_MAX_LORA_WEIGHT, core_lora_weight_arg.blurb);
    d->lora.dialog = d->dialog;
    d->lora.entry = gtk_entry_new();
    /* the scale entry's widgets: label, scale and spin button */
    d->lora.weight[0] = GIMP_SCALE_ENTRY_LABEL(d->lora_weight);
    d->lora.weight[1] = GIMP_SCALE_ENTRY_SCALE(d->lora_weight);
    d->lora.weight[2] = GIMP_SCALE_ENTRY_SPINBUTTON(d->lora_weight);
    gtk_entry_set_text(GTK_ENTRY(d->lora.entry), d->s->lora);
    gtk_box_pack_start(GTK_BOX(hbox), d->lora.entry, TRUE, TRUE, 0);
    dialog_lora_add_buttons(&d->lora, hbox);
    gimp_table_attach_aligned(GTK_TABLE(table), 0, row, "LoRA:", 0.0, 0.5, hbox, 2, FALSE);
    g_free(label);
}

/* The settings table; returns it for the caller to pack. */
static GtkWidget *make_table(Dialog *d)
{
    GtkWidget *table = gtk_table_new(16, 3, FALSE);
    CoreSettings *s = d->s;
    gint row = 0;

    gtk_table_set_col_spacings(GTK_TABLE(table), 6);
    gtk_table_set_row_spacings(GTK_TABLE(table), 4);
    add_seed_row(d, table, row++);
    d->steps = add_scale(table, row++, "_Steps:", s->steps, 1, 100, 1, 0, CORE_MAX_STEPS,
                         "Denoising steps: Turbo and LCM models need only 1 to 8");
    d->guidance = add_scale(table, row++, "_Guidance:", s->guidance, 0, 20, 0.5, 1, 100,
                            "How closely to follow the prompt; 1 or less skips the negative "
                            "prompt (Turbo and LCM models)");
    d->sampler = add_sampler_combo(d, table, row++);
    if (d->mode == CORE_TXT2IMG) {
        d->width = add_scale(
            table, row++, "Wi_dth:", s->width, 8, 2048, 8, 0, CORE_MAX_SIDE,
            "Multiples of 8; the model's native size by default (models draw best at it)");
        d->height = add_scale(
            table, row++, "He_ight:", s->height, 8, 2048, 8, 0, CORE_MAX_SIDE,
            "Multiples of 8; the model's native size by default (models draw best at it)");
        g_signal_connect(d->width, "value-changed", G_CALLBACK(round_to_unit), d);
        g_signal_connect(d->height, "value-changed", G_CALLBACK(round_to_unit), d);
        d->size_note = dialog_size_note_new();
        gtk_table_attach(GTK_TABLE(table), d->size_note, 1, 3, row, row + 1, GTK_EXPAND | GTK_FILL,
                         GTK_FILL, 0, 0);
        row++;
        add_scale_row(d, table, row++);
    } else {
        d->strength = add_scale(table, row++, "S_trength:", s->strength, 0.01, 1, 0.05, 2, 1,
                                "How much of the selection to repaint: 0.3 keeps the drawing, "
                                "1 ignores it");
        row = add_area_rows(d, table, row);
    }
    d->count = add_scale(table, row++, "Co_unt:", s->count, 1, 16, 1, 0, CORE_MAX_COUNT,
                         "Images to make, one new layer each");
    if (d->mode == CORE_TXT2IMG) { /* what the time depends on, besides the size */
        GtkObject *const changes[] = {d->count, d->steps, d->guidance};

        for (gsize i = 0; i < G_N_ELEMENTS(changes); i++)
            g_signal_connect_swapped(changes[i], "value-changed", G_CALLBACK(update_size_note), d);
    }
    d->fast_decoder = gtk_check_button_new_with_mnemonic(core_fast_decoder_arg.label);
    gtk_toggle_button_set_active(GTK_TOGGLE_BUTTON(d->fast_decoder), s->fast_decoder);
    gimp_help_set_help_data(d->fast_decoder, core_fast_decoder_arg.blurb, NULL);
    gtk_table_attach(GTK_TABLE(table), d->fast_decoder, 1, 3, row, row + 1, GTK_FILL, GTK_FILL, 0,
                     0);
    row++;
    if (d->mode == CORE_TXT2IMG) {
        g_signal_connect_swapped(d->sampler, "changed", G_CALLBACK(update_size_note), d);
        g_signal_connect_swapped(d->fast_decoder, "toggled", G_CALLBACK(update_size_note), d);
    }
    add_model_row(d, table, row);
    add_lora_rows(d, table, row + 2);
    return table;
}

/* SDXL: the size conditioning and the empty negative prompt, folded away. */
static GtkWidget *make_sdxl(Dialog *d)
{
    GtkWidget *expander = gtk_expander_new_with_mnemonic("SD_XL conditioning");
    GtkWidget *table = gtk_table_new(CORE_SIZE_COND_ARGS + 1, 3, FALSE);

    gtk_table_set_col_spacings(GTK_TABLE(table), 6);
    gtk_table_set_row_spacings(GTK_TABLE(table), 4);
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++) {
        gchar *label = g_strconcat(core_size_cond_args[i].label, ":", NULL);

        d->size_cond[i] = add_scale(table, i, label, d->s->size_cond[i], 0, 2048, 8, 0,
                                    CORE_MAX_COND, core_size_cond_args[i].blurb);
        g_free(label);
    }
    d->empty_negative = gtk_check_button_new_with_mnemonic(core_empty_negative_arg.label);
    gtk_toggle_button_set_active(GTK_TOGGLE_BUTTON(d->empty_negative), d->s->empty_negative);
    gimp_help_set_help_data(d->empty_negative, core_empty_negative_arg.blurb, NULL);
    gtk_table_attach(GTK_TABLE(table), d->empty_negative, 0, 3, CORE_SIZE_COND_ARGS,
                     CORE_SIZE_COND_ARGS + 1, GTK_FILL, GTK_FILL, 0, 0);
    gtk_container_add(GTK_CONTAINER(expander), table);
    return expander;
}

/* The dialog's values into s (DialogCopyRead, and OK into d->s). */
static void read_settings(CoreSettings *s, gpointer data)
{
    Dialog *d = data;

    take_text(s->prompt, sizeof s->prompt, d->prompt);
    take_text(s->negative_prompt, sizeof s->negative_prompt, d->negative);
    s->seed = d->random_seed ? -1 : (gint32)MIN(d->seed, (guint32)G_MAXINT32);
    s->steps = gtk_adjustment_get_value(GTK_ADJUSTMENT(d->steps));
    s->guidance = gtk_adjustment_get_value(GTK_ADJUSTMENT(d->guidance));
    {
        const CoreSampler *c;
        gint n = core_sampler_choices(&c), i = gtk_combo_box_get_active(GTK_COMBO_BOX(d->sampler));

        g_strlcpy(s->sampler, c[CLAMP(i, 0, n - 1)].id, sizeof s->sampler);
    }
    s->count = gtk_adjustment_get_value(GTK_ADJUSTMENT(d->count));
    if (d->mode == CORE_TXT2IMG) {
        s->width = core_round_to(gtk_adjustment_get_value(GTK_ADJUSTMENT(d->width)), d->unit);
        s->height = core_round_to(gtk_adjustment_get_value(GTK_ADJUSTMENT(d->height)), d->unit);
        s->scale_to =
            CLAMP(gtk_combo_box_get_active(GTK_COMBO_BOX(d->scale_to)), 0, CORE_SCALE_KINDS - 1);
    } else {
        s->strength = gtk_adjustment_get_value(GTK_ADJUSTMENT(d->strength));
        s->area = gtk_combo_box_get_active(GTK_COMBO_BOX(d->area)) == 1 ? CORE_AREA_SELECTED
                                                                        : CORE_AREA_WHOLE;
        s->padding = gtk_adjustment_get_value(GTK_ADJUSTMENT(d->padding));
        s->masked_content = gtk_combo_box_get_active(GTK_COMBO_BOX(d->masked)) == 1
                                ? DIFFUSE_MASKED_LATENT_NOISE
                                : DIFFUSE_MASKED_ORIGINAL;
    }
    g_strlcpy(s->model, gtk_entry_get_text(GTK_ENTRY(d->model.entry)), sizeof s->model);
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        s->size_cond[i] = gtk_adjustment_get_value(GTK_ADJUSTMENT(d->size_cond[i]));
    s->empty_negative = gtk_toggle_button_get_active(GTK_TOGGLE_BUTTON(d->empty_negative));
    /* insensitive: the model has none, so it is not asked for */
    s->fast_decoder = gtk_widget_is_sensitive(d->fast_decoder) &&
                      gtk_toggle_button_get_active(GTK_TOGGLE_BUTTON(d->fast_decoder));
    g_strlcpy(s->lora, gtk_entry_get_text(GTK_ENTRY(d->lora.entry)), sizeof s->lora);
    s->lora_weight = gtk_adjustment_get_value(GTK_ADJUSTMENT(d->lora_weight));
}

/* s into the dialog's widgets (DialogCopyApply); the model stays. */
static void apply_settings(const CoreSettings *s, gpointer data)
{
    Dialog *d = data;

    gtk_text_buffer_set_text(d->prompt, s->prompt, -1);
    gtk_text_buffer_set_text(d->negative, s->negative_prompt, -1);
    if (s->seed >= 0) {
        gtk_toggle_button_set_active(GTK_TOGGLE_BUTTON(GIMP_RANDOM_SEED_TOGGLE(d->seed_box)),
                                     FALSE);
        gtk_adjustment_set_value(GTK_ADJUSTMENT(GIMP_RANDOM_SEED_SPINBUTTON_ADJ(d->seed_box)),
                                 s->seed);
    }
    gtk_adjustment_set_value(GTK_ADJUSTMENT(d->steps), s->steps);
    gtk_adjustment_set_value(GTK_ADJUSTMENT(d->guidance), s->guidance);
    gtk_combo_box_set_active(GTK_COMBO_BOX(d->sampler), MAX(0, core_sampler_find(s->sampler)));
    if (d->mode == CORE_TXT2IMG) {
        gtk_adjustment_set_value(GTK_ADJUSTMENT(d->width), s->width);
        gtk_adjustment_set_value(GTK_ADJUSTMENT(d->height), s->height);
    } else {
        gtk_adjustment_set_value(GTK_ADJUSTMENT(d->strength), s->strength);
        gtk_combo_box_set_active(GTK_COMBO_BOX(d->area), s->area == CORE_AREA_SELECTED);
        gtk_adjustment_set_value(GTK_ADJUSTMENT(d->padding), s->padding);
        gtk_combo_box_set_active(GTK_COMBO_BOX(d->masked), s->masked_content);
    }
    for (gint i = 0; i < CORE_SIZE_COND_ARGS; i++)
        gtk_adjustment_set_value(GTK_ADJUSTMENT(d->size_cond[i]), s->size_cond[i]);
    gtk_entry_set_text(GTK_ENTRY(d->lora.entry), s->lora);
    gtk_adjustment_set_value(GTK_ADJUSTMENT(d->lora_weight), s->lora_weight);
}

/* Shows the dialog; TRUE on OK with s filled in. *model receives the model
 * the dialog loaded when it is the one chosen (the caller frees it). image
 * and drawable: where Copy Settings looks. */
static gboolean dialog_run(CoreSettings *s, CoreMode mode, const gchar *proc, gboolean first_time,
                           gint32 image, gint32 drawable, diffuse_model **model)
{
    Dialog d = {.s = s, .mode = mode, .unit = CORE_SIZE_UNIT, .image = image, .drawable = drawable};
    GtkWidget *vbox;
    gboolean ok;

    gimp_ui_init(PLUG_IN_BINARY, FALSE);
    d.dialog = gimp_dialog_new(mode == CORE_TXT2IMG ? _("Diffuse: Text to Image")
                                                    : _("Diffuse: Image to Image"),
                               PLUG_IN_ROLE, NULL, 0, gimp_standard_help_func, proc, "_Cancel",
                               GTK_RESPONSE_CANCEL, "_OK", GTK_RESPONSE_OK, NULL);
    gtk_dialog_set_alternative_button_order(GTK_DIALOG(d.dialog), GTK_RESPONSE_OK,
                                            GTK_RESPONSE_CANCEL, -1);
    gimp_window_set_transient(GTK_WINDOW(d.dialog));

    vbox = gtk_vbox_new(FALSE, 12);
    gtk_container_set_border_width(GTK_CONTAINER(vbox), 12);
    gtk_box_pack_start(GTK_BOX(gtk_dialog_get_content_area(GTK_DIALOG(d.dialog))), vbox, TRUE, TRUE,
                       0);
    d.copy = (DialogCopy){.mode = mode, .read = read_settings, .apply = apply_settings, .data = &d};
    gtk_box_pack_start(GTK_BOX(vbox), dialog_copy_new(&d.copy, image, drawable), FALSE, FALSE, 0);
    d.prompt = add_text_view(vbox, "_Prompt", s->prompt, 72, CORE_PROMPT_TOOLTIP);
    d.negative =
        add_text_view(vbox, "Negati_ve prompt", s->negative_prompt, 40, CORE_NEGATIVE_TOOLTIP);
    gtk_box_pack_start(GTK_BOX(vbox), make_table(&d), FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(vbox), make_sdxl(&d), FALSE, FALSE, 0);
    gtk_widget_show_all(d.dialog);
    d.shown = TRUE;
    dialog_model_update(&d.model, first_time);
    update_size_note(&d);

    ok = gimp_dialog_run(GIMP_DIALOG(d.dialog)) == GTK_RESPONSE_OK;
    dialog_dump_tooltips(d.dialog);
    if (ok)
        read_settings(s, &d);
    gtk_widget_destroy(d.dialog);
    dialog_copy_free(&d.copy);
    *model = dialog_model_take(&d.model, ok, s->model);
    return ok;
}

/* ---------------------------------------------------------------- run */

/* Settings for this run mode; FALSE with error set when there are none. */
static gboolean get_settings(CoreSettings *s, CoreMode mode, const gchar *proc, gint nparams,
                             const GimpParam *param, diffuse_model **model, GError **error)
{
    gint32 image = param[1].data.d_image;
    gboolean first;

    switch (param[0].data.d_int32) {
    case GIMP_RUN_INTERACTIVE:
        first = !load_last_values(s, mode);
        if (mode == CORE_TXT2IMG)
            core_image_default_size(image, &s->width, &s->height);
        /* refuse an indexed image before showing a dialog it cannot use */
        if (!core_image_check(image, error))
            return FALSE;
        if (!dialog_run(s, mode, proc, first, image, param[2].data.d_drawable, model)) {
            g_set_error(error, CORE_ERROR, CORE_ERROR_CANCELLED, "cancelled");
            return FALSE;
        }
        save_last_values(s, mode); /* kept even if the run fails, so nothing typed is lost */
        return TRUE;

    case GIMP_RUN_NONINTERACTIVE:
        return settings_from_args(s, mode,
                                  g_str_has_suffix(proc, EXT2)  ? 2
                                  : g_str_has_suffix(proc, EXT) ? 1
                                                                : 0,
                                  nparams, param, error);

    case GIMP_RUN_WITH_LAST_VALS:
        load_last_values(s, mode);
        return TRUE;

    default:
        g_set_error(error, CORE_ERROR, CORE_ERROR_CALLING, "run-mode: %d is unknown",
                    param[0].data.d_int32);
        return FALSE;
    }
}

/* The status for an error, and the message as the second return value. */
static void set_error(GimpParam *values, gint *nreturn_vals, GError *error)
{
    static gchar *message;

    values[0].data.d_status = error->code == CORE_ERROR_CANCELLED ? GIMP_PDB_CANCEL
                              : error->code == CORE_ERROR_CALLING ? GIMP_PDB_CALLING_ERROR
                                                                  : GIMP_PDB_EXECUTION_ERROR;
    if (error->code == CORE_ERROR_CANCELLED)
        return;
    g_free(message);
    message = g_strdup(error->message);
    values[1].type = GIMP_PDB_STRING;
    values[1].data.d_string = message;
    *nreturn_vals = 2;
}

static void run(const gchar *name, gint nparams, const GimpParam *param, gint *nreturn_vals,
                GimpParam **return_vals)
{
    static GimpParam values[2];
    CoreMode mode = g_str_has_prefix(name, PROC_IMG2IMG) ? CORE_IMG2IMG : CORE_TXT2IMG;
    GimpRunMode run_mode = nparams > 0 ? param[0].data.d_int32 : GIMP_RUN_NONINTERACTIVE;
    CoreSettings *s = g_new(CoreSettings, 1);
    diffuse_model *model = NULL;
    GError *error = NULL;

    *nreturn_vals = 1;
    *return_vals = values;
    values[0].type = GIMP_PDB_STATUS;
    values[0].data.d_status = GIMP_PDB_SUCCESS;

    gegl_init(NULL, NULL);
    core_settings_default(s);
    if (nparams < 3)
        g_set_error(&error, CORE_ERROR, CORE_ERROR_CALLING, "expected at least 3 arguments");
    else if (get_settings(s, mode, name, nparams, param, &model, &error)) {
        /* the picture forming, the step and Cancel: interactive runs only */
        ProgressWindow *window = progress_window_new(run_mode == GIMP_RUN_INTERACTIVE,
                                                     PLUG_IN_BINARY, "Diffuse: Generating");
        gboolean ok = core_run(param[1].data.d_image, param[2].data.d_drawable, mode, s, model,
                               progress_window_watch(window), &error);

        progress_window_free(window);
        if (ok && run_mode == GIMP_RUN_INTERACTIVE)
            save_last_values(s, mode); /* now with the seed a random run used */
        if (ok && run_mode != GIMP_RUN_NONINTERACTIVE)
            gimp_displays_flush();
    }
    if (error)
        set_error(values, nreturn_vals, error);
    g_clear_error(&error);
    if (model)
        diffuse_model_free(model);
    g_free(s);
}

/* gimp_main() as MAIN() would call it, after noting where the binary is: the
 * default model is installed beside it. */
int main(int argc, char *argv[])
{
    core_process_init(argv);
    core_set_plugin_dir_of_binary(argv[0]);
    core_i18n_init();
    return gimp_main(&PLUG_IN_INFO, argc, argv);
}
