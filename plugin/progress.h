/* progress.h: the progress window of both GIMP front ends: while an
 * interactive run goes, the picture forming (the engine's previews, core.h's
 * CoreWatch), the step it is at and a Cancel button. It only shows: the image
 * is not touched until the run is over (core.c's stage 4), so a cancel leaves
 * nothing behind, neither a layer nor an undo step. Batch runs show none,
 * unless $DIFFUSE_PROGRESS_WINDOW asks for it (a test hook, with a display):
 * "show", or "cancel" to press Cancel when the first preview has been shown.
 * Compiled once per GIMP generation, as dialog.c is; the GTK calls that
 * differ are in compat_gtk.h.
 *
 *     ProgressWindow *w = progress_window_new(interactive, "Diffuse: Text to Image");
 *     ok = core_run(image, drawable, mode, s, model, progress_window_watch(w), &error);
 *     progress_window_free(w);                     // w may be NULL: no window
 */
#ifndef DIFFUSE_PLUGIN_PROGRESS_H
#define DIFFUSE_PLUGIN_PROGRESS_H

#include <libgimp/gimpui.h>

#include "core.h"

G_BEGIN_DECLS

typedef struct ProgressWindow ProgressWindow;

/* A shown window for an interactive run (or one the test hook asks for);
 * NULL otherwise. gimp_ui_init() is called here when it was not yet. */
ProgressWindow *progress_window_new(gboolean interactive, const gchar *prog_name,
                                    const gchar *title);
/* What core_run() reports to; NULL for a NULL window. Owned by the window. */
const CoreWatch *progress_window_watch(ProgressWindow *w);
/* Closes the window; NULL is ignored. */
void progress_window_free(ProgressWindow *w);

G_END_DECLS

#endif
