/* compat_gtk.h: the GTK calls whose form differs between GTK 2 (GIMP 2.10)
 * and GTK 3 (GIMP 3.0), in one place, so that dialog.c is written once for
 * both, as compat.h does for libgimp in core.c.
 *
 * GTK 3 deprecates GtkMisc's alignment for the label's own, and GtkHBox and
 * GtkVBox for GtkBox with an orientation; GTK 2 has only the former. GTK_MAJOR_VERSION comes from
 * gtk/gtk.h, which gimpui.h includes. */
#ifndef DIFFUSE_PLUGIN_COMPAT_GTK_H
#define DIFFUSE_PLUGIN_COMPAT_GTK_H

#include <libgimp/gimpui.h>

G_BEGIN_DECLS

/* Aligns a label's text horizontally (0 = left), centred vertically. */
static inline void compat_label_set_xalign(GtkWidget *label, gfloat xalign)
{
#if GTK_MAJOR_VERSION >= 3
    gtk_label_set_xalign(GTK_LABEL(label), xalign);
#else
    gtk_misc_set_alignment(GTK_MISC(label), xalign, 0.5);
#endif
}

/* A box, its children spaced apart by spacing pixels. */
static inline GtkWidget *compat_box_new(GtkOrientation orientation, gint spacing)
{
#if GTK_MAJOR_VERSION >= 3
    return gtk_box_new(orientation, spacing);
#else
    return orientation == GTK_ORIENTATION_HORIZONTAL ? gtk_hbox_new(FALSE, spacing)
                                                     : gtk_vbox_new(FALSE, spacing);
#endif
}

/* gimp_ui_init(), which 2.10 asks whether to preview with the GIMP's own
 * colormap (never wanted: FALSE). Calling it again does nothing. */
static inline void compat_ui_init(const gchar *prog_name)
{
#if GTK_MAJOR_VERSION >= 3
    gimp_ui_init(prog_name);
#else
    gimp_ui_init(prog_name, FALSE);
#endif
}

G_END_DECLS

#endif
