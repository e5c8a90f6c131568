/* dialog.c: what both front ends' dialogs share (see dialog.h): the model
 * row (loading the model the entry names, its info line, the Default, File...
 * and Folder... buttons, and handing the loaded model to the run), the LoRA
 * row's buttons, and the Copy Settings button. Compiled once per GIMP
 * generation, the GTK calls that differ behind compat_gtk.h.
 *
 * The model is loaded while the dialog is open, so that the info line can
 * say what it is (or why it cannot be used) and its defaults can fill in
 * steps, guidance and sampler before the user runs it. */
#include <stdio.h>
#include <string.h>

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "compat_gtk.h"
#include "core.h"
#include "dialog.h"

/* What the model loaded (m->model, may be NULL) sets in the dialog. */
static void model_apply(DialogModel *m, gboolean apply_defaults)
{
    if (m->offers)
        m->offers(m->model, m->data);
    if (m->model && m->apply_size) {
        diffuse_model_info mi;

        diffuse_model_get_info(m->model, &mi);
        m->apply_size(mi.native_size, mi.vae_scale, m->data);
    }
    if (m->model && apply_defaults) {
        CoreSettings *tmp = g_new0(CoreSettings, 1);

        core_settings_model_defaults(tmp, m->model, m->path);
        m->apply_defaults(tmp, m->data);
        g_free(tmp);
    }
}

void dialog_model_update(DialogModel *m, gboolean apply_defaults)
{
    const gchar *path = gtk_entry_get_text(GTK_ENTRY(m->entry));
    GError *error = NULL;
    gchar *info;

    if (m->path && !strcmp(path, m->path))
        return;
    if (m->model)
        diffuse_model_free(m->model);
    g_free(m->path);
    m->path = g_strdup(path);
    /* OK runs a model that loaded, not one that cannot */
    gtk_dialog_set_response_sensitive(GTK_DIALOG(m->dialog), GTK_RESPONSE_OK, FALSE);
    gtk_label_set_text(GTK_LABEL(m->info), _("Loading the model..."));
    /* the entry may change while the label is drawn: load the copy */
    while (gtk_events_pending())
        gtk_main_iteration();
    m->model = core_model_load(m->path, &error);
    info = m->model ? core_model_describe(m->model) : g_strdup(error->message);
    /* the whole message: the label wraps, and its tooltip holds it too */
    gtk_label_set_text(GTK_LABEL(m->info), info);
    gimp_help_set_help_data(m->info, m->model ? NULL : info, NULL);
    gtk_dialog_set_response_sensitive(GTK_DIALOG(m->dialog), GTK_RESPONSE_OK, m->model != NULL);
    g_free(info);
    g_clear_error(&error);
    model_apply(m, apply_defaults);
}

gchar *dialog_time_text(gdouble seconds)
{
    const gint whole = (gint)(seconds + 0.5);

    if (seconds < 0.995) /* the bundled model's, a tenth of a second */
        return g_strdup_printf(_("%.2f s"), seconds);
    if (seconds < 9.95)
        return g_strdup_printf(_("%.1f s"), seconds);
    if (whole < 60)
        return g_strdup_printf(_("%d s"), whole);
    if (whole < 3600)
        return g_strdup_printf(_("%d min %02d s"), whole / 60, whole % 60);
    return g_strdup_printf(_("%d h %02d min"), whole / 3600, whole % 3600 / 60);
}

gchar *dialog_size_note(const diffuse_model *model, const CoreSettings *s)
{
    diffuse_model_info mi;
    gsize need, have = diffuse_memory_available();
    gdouble seconds;
    gchar *cost, *note;

    if (!model)
        return NULL;
    diffuse_model_get_info(model, &mi);
    core_settings_estimate(model, s, &need, &seconds);
    if (seconds > 0) {
        gchar *time = dialog_time_text(seconds);

        cost = g_strdup_printf(_("About %s and %d MiB of memory"), time, (gint)(need >> 20));
        g_free(time);
    } else /* a size the engine would refuse: no time to tell */
        cost = g_strdup_printf(_("About %d MiB of memory"), (gint)(need >> 20));
    if (have && need > have)
        note = g_strdup_printf(_("%s, only %d MiB are free: it will be refused."), cost,
                               (gint)(have >> 20));
    else if (have)
        note = g_strdup_printf(_("%s (%d MiB free)."), cost, (gint)(have >> 20));
    else
        note = g_strdup_printf("%s.", cost);
    g_free(cost);
    if (s->width > mi.native_size || s->height > mi.native_size) {
        gchar *larger = g_strdup_printf(_("Larger than the model's native %dx%d: models draw "
                                          "best at their native size. %s"),
                                        mi.native_size, mi.native_size, note);

        g_free(note);
        note = larger;
    }
    return note;
}

GtkWidget *dialog_size_note_new(void)
{
    GtkWidget *label = gtk_label_new("");

    gtk_widget_set_name(label, "diffuse-size-note");
    compat_label_set_xalign(label, 0.0);
    gtk_label_set_line_wrap(GTK_LABEL(label), TRUE);
    gimp_label_set_attributes(GTK_LABEL(label), PANGO_ATTR_STYLE, PANGO_STYLE_ITALIC, -1);
    return label;
}

void dialog_size_note_update(GtkWidget *label, const diffuse_model *model, const CoreSettings *s)
{
    gchar *note = dialog_size_note(model, s);

    gtk_label_set_text(GTK_LABEL(label), note ? note : "");
    gtk_widget_set_visible(label, note != NULL);
    g_free(note);
}

void dialog_model_reapply(DialogModel *m, gboolean apply_defaults)
{
    if (m->path && !strcmp(gtk_entry_get_text(GTK_ENTRY(m->entry)), m->path))
        model_apply(m, apply_defaults);
    else
        dialog_model_update(m, apply_defaults);
}

/* "choices<tab>A|B|...": the texts a visible menu offers. */
static void dump_choices(GtkWidget *widget, FILE *f)
{
    GtkTreeModel *model = gtk_combo_box_get_model(GTK_COMBO_BOX(widget));
    GtkTreeIter iter;
    gint column = -1;
    gboolean more = model && gtk_tree_model_get_iter_first(model, &iter);

    if (GIMP_IS_STRING_COMBO_BOX(widget))
        g_object_get(widget, "label-column", &column, NULL);
    else if (GIMP_IS_INT_COMBO_BOX(widget))
        column = GIMP_INT_STORE_LABEL;
    else if (GTK_IS_COMBO_BOX_TEXT(widget))
        column = 0; /* its "text" */
    if (column < 0 || !gtk_widget_get_visible(widget))
        return;
    fputs("choices\t", f);
    for (gboolean first = TRUE; more; more = gtk_tree_model_iter_next(model, &iter)) {
        gchar *label = NULL;

        gtk_tree_model_get(model, &iter, column, &label, -1);
        fprintf(f, "%s%s", first ? "" : "|", label ? label : "");
        g_free(label);
        first = FALSE;
    }
    fputs("\n", f);
    if (gtk_combo_box_get_active_iter(GTK_COMBO_BOX(widget), &iter)) { /* the one shown */
        gchar *label = NULL;

        gtk_tree_model_get(model, &iter, column, &label, -1);
        fprintf(f, "active\t%s\n", label ? label : "");
        g_free(label);
    }
}

/* A field a painter fills in: text, a number, a menu or a check box. */
static gboolean is_field(GtkWidget *widget)
{
    return GTK_IS_TEXT_VIEW(widget) || GTK_IS_ENTRY(widget) || GTK_IS_COMBO_BOX(widget) ||
           GTK_IS_CHECK_BUTTON(widget);
}

/* Whether hovering the widget shows a tooltip: its own or a container's. */
static gboolean has_tooltip(GtkWidget *widget)
{
    for (; widget && !GTK_IS_WINDOW(widget); widget = gtk_widget_get_parent(widget)) {
        gchar *tip = gtk_widget_get_tooltip_text(widget);

        g_free(tip);
        if (tip)
            return TRUE;
    }
    return FALSE;
}

static void dump_tooltips(GtkWidget *widget, gpointer data)
{
    gchar *tip = gtk_widget_get_visible(widget) ? gtk_widget_get_tooltip_text(widget) : NULL;

    if (gtk_widget_is_drawable(widget) && is_field(widget) && !has_tooltip(widget))
        fprintf(data, "untipped\t%s\n", G_OBJECT_TYPE_NAME(widget));
    if (tip) {
        g_strdelimit(tip, "\t\n", ' ');
        fprintf(data, "%s\t%s\n", G_OBJECT_TYPE_NAME(widget), tip);
        g_free(tip);
    }
    if (GTK_IS_COMBO_BOX(widget))
        dump_choices(widget, data);
    /* the dialog's own lines (diffuse-model-info, diffuse-size-note): their text */
    if (GTK_IS_LABEL(widget) && gtk_widget_get_visible(widget) &&
        g_str_has_prefix(gtk_widget_get_name(widget), "diffuse-"))
        fprintf(data, "%s\t%s\n", gtk_widget_get_name(widget),
                gtk_label_get_text(GTK_LABEL(widget)));
    if (GTK_IS_CONTAINER(widget))
        gtk_container_forall(GTK_CONTAINER(widget), dump_tooltips, data);
}

void dialog_dump_tooltips(GtkWidget *dialog)
{
    const gchar *path = g_getenv("DIFFUSE_DIALOG_DUMP");
    FILE *f = path && *path ? fopen(path, "a") : NULL;

    if (f) {
        GtkWidget *ok = gtk_dialog_get_widget_for_response(GTK_DIALOG(dialog), GTK_RESPONSE_OK);

        fprintf(f, "dialog\t%s\n", gtk_window_get_title(GTK_WINDOW(dialog)));
        if (ok)
            fprintf(f, "ok\t%s\n", gtk_widget_is_sensitive(ok) ? "sensitive" : "insensitive");
        dump_tooltips(dialog, f);
        fclose(f);
    }
}

static void model_entry_activate(GtkWidget *entry, DialogModel *m)
{
    dialog_model_update(m, TRUE);
}

/* Leaving the entry (clicking OK, say) only refreshes the info line: steps
 * and guidance the user has set are not replaced behind their back. */
static gboolean model_entry_focus_out(GtkWidget *entry, GdkEvent *event, DialogModel *m)
{
    dialog_model_update(m, FALSE);
    return FALSE;
}

static void model_default_clicked(GtkWidget *button, DialogModel *m)
{
    gtk_entry_set_text(GTK_ENTRY(m->entry), "");
    dialog_model_update(m, TRUE);
}

static void choose_model(DialogModel *m, GtkFileChooserAction action)
{
    gboolean folder = action == GTK_FILE_CHOOSER_ACTION_SELECT_FOLDER;
    GtkWidget *chooser = gtk_file_chooser_dialog_new(
        folder ? "Choose a diffusers model folder" : "Choose a .safetensors model file",
        GTK_WINDOW(m->dialog), action, "_Cancel", GTK_RESPONSE_CANCEL, "_Open", GTK_RESPONSE_ACCEPT,
        NULL);
    const gchar *current = gtk_entry_get_text(GTK_ENTRY(m->entry));

    if (!folder) {
        GtkFileFilter *filter = gtk_file_filter_new();

        gtk_file_filter_set_name(filter, "Safetensors checkpoints");
        gtk_file_filter_add_pattern(filter, "*.safetensors");
        gtk_file_chooser_add_filter(GTK_FILE_CHOOSER(chooser), filter);
    }
    if (*current)
        gtk_file_chooser_set_filename(GTK_FILE_CHOOSER(chooser), current);
    if (gtk_dialog_run(GTK_DIALOG(chooser)) == GTK_RESPONSE_ACCEPT) {
        gchar *path = gtk_file_chooser_get_filename(GTK_FILE_CHOOSER(chooser));

        gtk_entry_set_text(GTK_ENTRY(m->entry), path ? path : "");
        g_free(path);
        dialog_model_update(m, TRUE);
    }
    gtk_widget_destroy(chooser);
}

static void model_file_clicked(GtkWidget *button, DialogModel *m)
{
    choose_model(m, GTK_FILE_CHOOSER_ACTION_OPEN);
}

static void model_folder_clicked(GtkWidget *button, DialogModel *m)
{
    choose_model(m, GTK_FILE_CHOOSER_ACTION_SELECT_FOLDER);
}

static void add_button(GtkWidget *box, const gchar *label, const gchar *tooltip, GCallback callback,
                       DialogModel *m)
{
    GtkWidget *button = gtk_button_new_with_mnemonic(label);

    gimp_help_set_help_data(button, tooltip, NULL);
    g_signal_connect(button, "clicked", callback, m);
    gtk_box_pack_start(GTK_BOX(box), button, FALSE, FALSE, 0);
    gtk_widget_show(button);
}

void dialog_model_add_buttons(DialogModel *m, GtkWidget *box)
{
    gimp_help_set_help_data(m->entry,
                            "A .safetensors file or a diffusers folder; "
                            "empty for the default model",
                            NULL);
    gtk_editable_set_position(GTK_EDITABLE(m->entry), -1); /* the name, not the folders */
    g_signal_connect(m->entry, "activate", G_CALLBACK(model_entry_activate), m);
    g_signal_connect(m->entry, "focus-out-event", G_CALLBACK(model_entry_focus_out), m);
    add_button(box, "Default", "Use the default model", G_CALLBACK(model_default_clicked), m);
    add_button(box, "File...", "Choose a .safetensors file", G_CALLBACK(model_file_clicked), m);
    add_button(box, "Folder...", "Choose a diffusers folder", G_CALLBACK(model_folder_clicked), m);
}

GtkWidget *dialog_model_info_new(DialogModel *m)
{
    m->info = gtk_label_new("");
    gtk_widget_set_name(m->info, "diffuse-model-info");
    compat_label_set_xalign(m->info, 0.0);
    gtk_label_set_line_wrap(GTK_LABEL(m->info), TRUE); /* an error shows whole */
    gimp_label_set_attributes(GTK_LABEL(m->info), PANGO_ATTR_STYLE, PANGO_STYLE_ITALIC, -1);
    gtk_widget_show(m->info);
    return m->info;
}

diffuse_model *dialog_model_take(DialogModel *m, gboolean ok, const gchar *chosen)
{
    diffuse_model *model = NULL;

    if (ok && m->model && !g_strcmp0(m->path, chosen))
        model = m->model;
    else if (m->model)
        diffuse_model_free(m->model);
    m->model = NULL;
    g_free(m->path);
    m->path = NULL;
    return model;
}

/* ---------------------------------------------------------------- LoRA row */

static void lora_changed(GtkWidget *entry, DialogLora *l)
{
    for (guint i = 0; i < G_N_ELEMENTS(l->weight); i++)
        if (l->weight[i])
            gtk_widget_set_sensitive(l->weight[i], *gtk_entry_get_text(GTK_ENTRY(entry)) != '\0');
}

/* A .safetensors file, starting from the one named or the LoRA folder. */
static void lora_file_clicked(GtkWidget *button, DialogLora *l)
{
    GtkWidget *chooser = gtk_file_chooser_dialog_new(
        "Choose a LoRA .safetensors file", GTK_WINDOW(l->dialog), GTK_FILE_CHOOSER_ACTION_OPEN,
        "_Cancel", GTK_RESPONSE_CANCEL, "_Open", GTK_RESPONSE_ACCEPT, NULL);
    GtkFileFilter *filter = gtk_file_filter_new();
    const gchar *current = gtk_entry_get_text(GTK_ENTRY(l->entry));
    gchar *folder = core_lora_folder();

    gtk_file_filter_set_name(filter, "LoRA files (.safetensors)");
    gtk_file_filter_add_pattern(filter, "*.safetensors");
    gtk_file_chooser_add_filter(GTK_FILE_CHOOSER(chooser), filter);
    if (*current)
        gtk_file_chooser_set_filename(GTK_FILE_CHOOSER(chooser), current);
    else if (g_file_test(folder, G_FILE_TEST_IS_DIR))
        gtk_file_chooser_set_current_folder(GTK_FILE_CHOOSER(chooser), folder);
    if (gtk_dialog_run(GTK_DIALOG(chooser)) == GTK_RESPONSE_ACCEPT) {
        gchar *path = gtk_file_chooser_get_filename(GTK_FILE_CHOOSER(chooser));

        gtk_entry_set_text(GTK_ENTRY(l->entry), path ? path : "");
        g_free(path);
    }
    gtk_widget_destroy(chooser);
    g_free(folder);
}

static void lora_none_clicked(GtkWidget *button, DialogLora *l)
{
    gtk_entry_set_text(GTK_ENTRY(l->entry), "");
}

void dialog_lora_add_buttons(DialogLora *l, GtkWidget *box)
{
    gchar *folder = core_lora_folder();
    gchar *tip = g_strdup_printf("A LoRA .safetensors file to apply to the model; empty for none. "
                                 "Prompt tags <lora:NAME:WEIGHT> apply NAME.safetensors from %s",
                                 folder);
    GtkWidget *file = gtk_button_new_with_label("File...");
    GtkWidget *none = gtk_button_new_with_label("None");

    gimp_help_set_help_data(l->entry, tip, NULL);
    gtk_editable_set_position(GTK_EDITABLE(l->entry), -1); /* the name, not the folders */
    g_signal_connect(l->entry, "changed", G_CALLBACK(lora_changed), l);
    lora_changed(l->entry, l);
    gimp_help_set_help_data(file, "Choose a LoRA file", NULL);
    g_signal_connect(file, "clicked", G_CALLBACK(lora_file_clicked), l);
    gimp_help_set_help_data(none, "Apply no LoRA file", NULL);
    g_signal_connect(none, "clicked", G_CALLBACK(lora_none_clicked), l);
    gtk_box_pack_start(GTK_BOX(box), file, FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(box), none, FALSE, FALSE, 0);
    gtk_widget_show(file);
    gtk_widget_show(none);
    g_free(tip);
    g_free(folder);
}

/* ---------------------------------------------------------------- copy settings */

/* The button's label and tooltip, and the report's name, for each source. */
static const struct {
    const gchar *label, *tooltip, *where;
} copy_sources[] = {
    [CORE_FROM_LAYER] = {"Cop_y Settings from Layer",
                         "Fill in the prompt, seed, steps and the other settings that made the "
                         "active layer",
                         "the layer"},
    [CORE_FROM_COMMENT] = {"Cop_y Settings from Image Comment",
                           "Fill in the prompt, seed, steps and the other settings written in "
                           "the image's comment",
                           "the image's comment"},
    [CORE_FROM_FILE] = {"Cop_y Settings from PNG File",
                        "Fill in the prompt, seed, steps and the other settings that a Stable "
                        "Diffusion tool wrote into the PNG file this image was opened from",
                        "the PNG file"},
};

static void copy_clicked(GtkWidget *button, DialogCopy *c)
{
    const gchar *where = copy_sources[c->source].where;
    CoreSettings *s = g_new(CoreSettings, 1);
    gchar *unused = NULL, *report;

    c->read(s, c->data);
    if (core_settings_from_parameters(s, c->mode, c->text, &unused)) {
        c->apply(s, c->data);
        report = unused ? g_strdup_printf("Settings copied from %s. Not used: %s.", where, unused)
                        : g_strdup_printf("Settings copied from %s.", where);
    } else /* found as settings, so not seen here; said all the same */
        report = g_strdup_printf("No settings Diffuse can read in %s.", where);
    gtk_label_set_text(GTK_LABEL(c->report), report);
    gtk_widget_show(c->report);
    g_free(report);
    g_free(unused);
    g_free(s);
}

GtkWidget *dialog_copy_new(DialogCopy *c, CoreImage image, CoreDrawable drawable)
{
    GtkWidget *box = compat_box_new(GTK_ORIENTATION_VERTICAL, 4);
    GtkWidget *row = compat_box_new(GTK_ORIENTATION_HORIZONTAL, 0);

    c->text = core_parameters_find(image, drawable, &c->source);
    if (!c->text)
        c->source = CORE_FROM_LAYER;
    c->button = gtk_button_new_with_mnemonic(copy_sources[c->source].label);
    gimp_help_set_help_data(c->button,
                            c->text ? copy_sources[c->source].tooltip
                                    : "No settings to copy: the active layer was not made by "
                                      "Diffuse, and neither the image's comment nor the PNG "
                                      "file it was opened from holds any",
                            NULL);
    gtk_widget_set_sensitive(c->button, c->text != NULL);
    g_signal_connect(c->button, "clicked", G_CALLBACK(copy_clicked), c);
    /* under the button, shown once there is something to report */
    c->report = gtk_label_new("");
    compat_label_set_xalign(c->report, 0.0);
    gtk_label_set_line_wrap(GTK_LABEL(c->report), TRUE);
    gimp_label_set_attributes(GTK_LABEL(c->report), PANGO_ATTR_STYLE, PANGO_STYLE_ITALIC, -1);
    gtk_widget_set_no_show_all(c->report, TRUE);
    gtk_box_pack_start(GTK_BOX(row), c->button, FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(box), row, FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(box), c->report, FALSE, FALSE, 0);
    gtk_widget_show_all(box);
    return box;
}

void dialog_copy_free(DialogCopy *c)
{
    g_free(c->text);
    c->text = NULL;
}
