/* dialog.h: what the dialogs of both GIMP front ends share: the model row, a
 * path entry with Default, File... and Folder... buttons and an info line
 * under it, and the model loaded for the path, which the run takes when it is
 * the one chosen, so that OK does not load it twice; the LoRA row, a path
 * entry with File... and None buttons beside the weight; and the Copy
 * Settings button, which fills the dialog from the settings recorded on the
 * active layer, in the image's comment or in the PNG file it was opened from
 * (core_parameters_find()).
 *
 * The rest of the two dialogs differs: gimp2.c builds a GTK2 table by hand,
 * gimp3.c has GimpProcedureDialog build the widgets from the procedure's
 * arguments. Each front end makes the entry its own way (gimp3.c's is bound
 * to the config's "model") and lays out the row; the behaviour is here.
 * Compiled once per GIMP generation, as core.c is; the GTK calls that differ
 * are in compat_gtk.h.
 *
 *     DialogModel m = {.dialog = dialog, .entry = gtk_entry_new(),
 *                      .apply_defaults = set_steps_guidance_sampler, .data = d};
 *     gtk_box_pack_start(GTK_BOX(hbox), m.entry, TRUE, TRUE, 0);
 *     dialog_model_add_buttons(&m, hbox);
 *     ... place dialog_model_info_new(&m) under it, show the dialog
 *     dialog_model_update(&m, first_time);
 *     ... run the dialog
 *     *model = dialog_model_take(&m, ok, chosen_path);
 */
#ifndef DIFFUSE_PLUGIN_DIALOG_H
#define DIFFUSE_PLUGIN_DIALOG_H

#include <libgimp/gimpui.h>

#include "core.h"

G_BEGIN_DECLS

/* Sets the dialog's steps, guidance and sampler to defaults, which suit the
 * model just loaded; data is DialogModel.data. */
typedef void (*DialogModelDefaults)(const CoreSettings *defaults, gpointer data);
/* Sets the dialog's width and height (Text to Image) to the native size of
 * the model just loaded: the dialog starts from it and follows the model.
 * unit: the multiple of pixels its sizes must be (diffuse_model_info's
 * vae_scale, which the engine checks requests against). */
typedef void (*DialogModelSize)(gint native_size, gint unit, gpointer data);
/* Tells the dialog what the model just loaded offers (a fast decoder, ...);
 * model NULL when none loaded. */
typedef void (*DialogModelOffers)(const diffuse_model *model, gpointer data);

typedef struct {
    GtkWidget *dialog;    /* the plug-in's dialog, the file choosers' parent */
    GtkWidget *entry;     /* GtkEntry: the model's path ("" = the default model) */
    GtkWidget *info;      /* the line under it: the model's info or why it failed */
    diffuse_model *model; /* loaded for path, to show its info and run it */
    gchar *path;
    DialogModelDefaults apply_defaults;
    DialogModelSize apply_size; /* NULL: the dialog has no size (Image to Image) */
    DialogModelOffers offers;   /* NULL: nothing depends on it */
    gpointer data;
} DialogModel;

/* Ties m->entry to the model (its tooltip; Enter loads the model named,
 * leaving it refreshes the info line) and packs the Default, File... and
 * Folder... buttons into box, after what it holds. */
void dialog_model_add_buttons(DialogModel *m, GtkWidget *box);
/* The info line, empty, into m->info; the caller places it. */
GtkWidget *dialog_model_info_new(DialogModel *m);
/* (Re)loads the model named in the entry for its info line (the whole
 * message when it cannot be loaded, OK insensitive until a model loads), and
 * sets the size to its native one (apply_size); with apply_defaults, also
 * sets steps, guidance and sampler to suit it. */
void dialog_model_update(DialogModel *m, gboolean apply_defaults);
/* Sets again what dialog_model_update() sets from the model it loaded, after
 * the dialog's values were reset; loads the model first when the entry names
 * another. */
void dialog_model_reapply(DialogModel *m, gboolean apply_defaults);
/* After the dialog: the model it loaded when ok and it is the one chosen (the
 * caller frees it), else NULL, the model freed. Frees m's path. */
diffuse_model *dialog_model_take(DialogModel *m, gboolean ok, const gchar *chosen);

/* What a Text to Image run of s costs, from the engine's own estimates
 * (core_settings_estimate(): its size, count, steps, guidance, sampler and
 * decoder): "About 12 s and 800 MiB of memory (5000 MiB free).", and above
 * the model's native size first "Larger than the model's native 512x512:
 * models draw best at their native size."; NULL without a model. g_free(). */
gchar *dialog_size_note(const diffuse_model *model, const CoreSettings *s);
/* "0.04 s", "2.5 s", "12 s", "3 min 05 s", "1 h 02 min"; g_free(). */
gchar *dialog_time_text(gdouble seconds);
/* A wrapping label for it, hidden while there is nothing to say, and its update. */
GtkWidget *dialog_size_note_new(void);
void dialog_size_note_update(GtkWidget *label, const diffuse_model *model, const CoreSettings *s);

/* With DIFFUSE_DIALOG_DUMP naming a file, appends to it "dialog<tab>TITLE",
 * "ok<tab>sensitive" (or insensitive), the tooltip of every widget the dialog
 * shows, one a line ("TYPE<tab>TOOLTIP"; "untipped<tab>TYPE" for a field
 * shown without one, its own or its container's), what each menu offers
 * ("choices<tab>A|B|...") and the choice it shows ("active<tab>B"), and the text
 * of its own lines ("diffuse-model-info<tab>
 * TEXT"): what a painter sees there, for the dialog tests. */
void dialog_dump_tooltips(GtkWidget *dialog);

/* ---------------------------------------------------------------- LoRA row */

typedef struct {
    GtkWidget *dialog;    /* the file chooser's parent */
    GtkWidget *entry;     /* GtkEntry: the LoRA file ("" = none) */
    GtkWidget *weight[3]; /* the weight's widgets (unused ones NULL): sensitive while a
                           * file is named */
} DialogLora;

/* Ties l->entry to the weight and packs the File... and None buttons into
 * box, after what it holds. */
void dialog_lora_add_buttons(DialogLora *l, GtkWidget *box);

/* ---------------------------------------------------------------- copy settings */

/* The dialog's values into s (a random seed as -1), and s into the dialog's
 * widgets (a seed of -1 leaving Randomize as it is); data is DialogCopy.data. */
typedef void (*DialogCopyRead)(CoreSettings *s, gpointer data);
typedef void (*DialogCopyApply)(const CoreSettings *s, gpointer data);

typedef struct {
    CoreMode mode;
    DialogCopyRead read;
    DialogCopyApply apply;
    gpointer data;
    gchar *text; /* the settings found (core_parameters_find), NULL: none */
    CoreParametersSource source;
    GtkWidget *button; /* Copy Settings from Layer, sensitive when there is a text */
    GtkWidget *report; /* the line under it: what was taken and what not */
} DialogCopy;

/* Looks for the settings and returns a new box with the button and the
 * report line, for the caller to place. */
GtkWidget *dialog_copy_new(DialogCopy *c, CoreImage image, CoreDrawable drawable);
void dialog_copy_free(DialogCopy *c);

G_END_DECLS

#endif
