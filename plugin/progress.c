/* progress.c: the progress window (see progress.h): a preview of the picture
 * forming, "Step N of M" with a bar, and Cancel. The engine runs on the
 * plug-in's own thread and tells the core between steps (core.h, CoreWatch);
 * the window answers its events then, so Cancel (the button, Escape or
 * closing the window) stops the run at the next step. */
#include <string.h>

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "compat_gtk.h"
#include "progress.h"

#define PREVIEW_SIDE 256 /* pixels of the preview's longer side */

struct ProgressWindow {
    GtkWidget *dialog;
    GtkWidget *image; /* GtkImage: the latest preview */
    GtkWidget *label; /* "Step N of M" */
    GtkWidget *bar;
    gboolean cancelled;
    gboolean cancel_on_preview; /* the test hook's "cancel" */
    CoreWatch watch;
};

/* Lets the window draw and take clicks. */
static void pump(void)
{
    while (gtk_events_pending())
        gtk_main_iteration();
}

/* Any response is a cancel: the Cancel button, Escape, closing the window. */
static void on_response(GtkWidget *dialog, gint response, ProgressWindow *w)
{
    w->cancelled = TRUE;
    gtk_label_set_text(GTK_LABEL(w->label), "Cancelling...");
    gtk_dialog_set_response_sensitive(GTK_DIALOG(dialog), GTK_RESPONSE_CANCEL, FALSE);
}

static gboolean on_step(gpointer user, gint image, gint count, gint step, gint steps)
{
    ProgressWindow *w = user;
    gchar *text;

    if (!w->cancelled) {
        text = count > 1
                   ? g_strdup_printf("Step %d of %d, image %d of %d", step, steps, image + 1, count)
                   : g_strdup_printf("Step %d of %d", step, steps);
        gtk_label_set_text(GTK_LABEL(w->label), text);
        g_free(text);
        gtk_progress_bar_set_fraction(GTK_PROGRESS_BAR(w->bar),
                                      ((gdouble)image * steps + step) / ((gdouble)count * steps));
    }
    pump();
    return !w->cancelled;
}

/* rgb [height, width, 3] in [0, 1] as a pixbuf whose longer side is
 * PREVIEW_SIDE (previews without TAESD are at 1/8 of the image's size). */
static GdkPixbuf *preview_pixbuf(const gfloat *rgb, gint width, gint height)
{
    GdkPixbuf *small = gdk_pixbuf_new(GDK_COLORSPACE_RGB, FALSE, 8, width, height);
    const gint stride = gdk_pixbuf_get_rowstride(small);
    guchar *pixels = gdk_pixbuf_get_pixels(small);
    const gdouble scale = (gdouble)PREVIEW_SIDE / MAX(width, height);
    GdkPixbuf *shown;

    for (gint y = 0; y < height; y++)
        for (gint x = 0; x < width * 3; x++)
            pixels[y * stride + x] =
                (guchar)(CLAMP(rgb[(gsize)y * width * 3 + x], 0, 1) * 255 + 0.5);
    shown = gdk_pixbuf_scale_simple(small, MAX(1, (gint)(width * scale + 0.5)),
                                    MAX(1, (gint)(height * scale + 0.5)), GDK_INTERP_BILINEAR);
    g_object_unref(small);
    return shown;
}

static gboolean on_preview(gpointer user, gint image, gint step, gint steps, const gfloat *rgb,
                           gint width, gint height)
{
    ProgressWindow *w = user;
    GdkPixbuf *pixbuf = preview_pixbuf(rgb, width, height);

    gtk_image_set_from_pixbuf(GTK_IMAGE(w->image), pixbuf);
    g_object_unref(pixbuf);
    pump();
    if (w->cancel_on_preview && !w->cancelled) /* as a click on Cancel would */
        gtk_dialog_response(GTK_DIALOG(w->dialog), GTK_RESPONSE_CANCEL);
    return !w->cancelled;
}

ProgressWindow *progress_window_new(gboolean interactive, const gchar *prog_name,
                                    const gchar *title)
{
    const gchar *hook = g_getenv("DIFFUSE_PROGRESS_WINDOW");
    ProgressWindow *w;
    GtkWidget *vbox;

    if (!interactive && !(hook && (!strcmp(hook, "show") || !strcmp(hook, "cancel"))))
        return NULL;
    compat_ui_init(prog_name);
    w = g_new0(ProgressWindow, 1);
    w->cancel_on_preview = hook && !strcmp(hook, "cancel");
    w->watch = (CoreWatch){.step = on_step, .preview = on_preview, .user = w};
    w->dialog = gimp_dialog_new(title, "gimp-diffuse-progress", NULL, 0, NULL, NULL, "_Cancel",
                                GTK_RESPONSE_CANCEL, NULL);
    gimp_window_set_transient(GTK_WINDOW(w->dialog));
    g_signal_connect(w->dialog, "response", G_CALLBACK(on_response), w);
    vbox = compat_box_new(GTK_ORIENTATION_VERTICAL, 8);
    gtk_container_set_border_width(GTK_CONTAINER(vbox), 12);
    gtk_box_pack_start(GTK_BOX(gtk_dialog_get_content_area(GTK_DIALOG(w->dialog))), vbox, TRUE,
                       TRUE, 0);
    w->image = gtk_image_new();
    gtk_widget_set_size_request(w->image, PREVIEW_SIDE, PREVIEW_SIDE);
    gtk_box_pack_start(GTK_BOX(vbox), w->image, TRUE, TRUE, 0);
    w->label = gtk_label_new("Starting...");
    compat_label_set_xalign(w->label, 0.0);
    gtk_box_pack_start(GTK_BOX(vbox), w->label, FALSE, FALSE, 0);
    w->bar = gtk_progress_bar_new();
    gtk_box_pack_start(GTK_BOX(vbox), w->bar, FALSE, FALSE, 0);
    gtk_widget_show_all(w->dialog);
    pump();
    return w;
}

const CoreWatch *progress_window_watch(ProgressWindow *w)
{
    return w ? &w->watch : NULL;
}

void progress_window_free(ProgressWindow *w)
{
    if (!w)
        return;
    gtk_widget_destroy(w->dialog);
    pump();
    g_free(w);
}
