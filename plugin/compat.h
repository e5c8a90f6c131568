/* compat.h: the libgimp calls whose form differs between GIMP 2.10 and 3.0,
 * in one place, so that core.c and pixels.c are written once for both.
 *
 * GIMP 2.10 names images and items by integer IDs (-1 = none); GIMP 3.0 by
 * objects (NULL = none), and renames a few getters. The core holds its
 * handles as CoreImage, CoreDrawable and CoreLayer and calls only the
 * compat_*() wrappers below for what differs; everything that is spelled the
 * same in both (progress, making parasites, GEGL buffers, babl) it calls directly.
 * GIMP_MAJOR_VERSION comes from libgimpbase/gimpversion.h, which gimp.h
 * includes; the Makefile compiles the core once per generation. */
#ifndef DIFFUSE_PLUGIN_COMPAT_H
#define DIFFUSE_PLUGIN_COMPAT_H

#include <libgimp/gimp.h>

G_BEGIN_DECLS

#if GIMP_MAJOR_VERSION >= 3

typedef GimpImage *CoreImage;
typedef GimpDrawable *CoreDrawable;
typedef GimpLayer *CoreLayer;
#define CORE_NO_DRAWABLE NULL
#define CORE_NO_LAYER NULL

static inline gint compat_image_id(CoreImage image)
{
    return gimp_image_get_id(image);
}
static inline gint compat_drawable_id(CoreDrawable drawable)
{
    return gimp_item_get_id(GIMP_ITEM(drawable));
}
static inline gboolean compat_drawable_in_image(CoreDrawable drawable, CoreImage image)
{
    GimpImage *owner = gimp_item_get_image(GIMP_ITEM(drawable));

    return owner && gimp_image_get_id(owner) == gimp_image_get_id(image);
}
static inline GimpImageBaseType compat_image_base_type(CoreImage image)
{
    return gimp_image_get_base_type(image);
}
static inline gboolean compat_image_has_floating_sel(CoreImage image)
{
    return gimp_image_get_floating_sel(image) != NULL;
}
static inline gint compat_image_width(CoreImage image)
{
    return gimp_image_get_width(image);
}
static inline gint compat_image_height(CoreImage image)
{
    return gimp_image_get_height(image);
}
static inline gboolean compat_selection_is_empty(CoreImage image)
{
    return gimp_selection_is_empty(image);
}
static inline GeglBuffer *compat_selection_buffer(CoreImage image)
{
    return gimp_drawable_get_buffer(GIMP_DRAWABLE(gimp_image_get_selection(image)));
}
static inline GeglBuffer *compat_drawable_buffer(CoreDrawable drawable)
{
    return gimp_drawable_get_buffer(drawable);
}
static inline const Babl *compat_drawable_format(CoreDrawable drawable)
{
    return gimp_drawable_get_format(drawable);
}
static inline void compat_drawable_offsets(CoreDrawable drawable, gint *x, gint *y)
{
    gimp_drawable_get_offsets(drawable, x, y);
}
static inline gboolean compat_drawable_mask_intersect(CoreDrawable drawable, gint *x, gint *y,
                                                      gint *width, gint *height)
{
    return gimp_drawable_mask_intersect(drawable, x, y, width, height);
}
static inline CoreDrawable compat_layer_drawable(CoreLayer layer)
{
    return GIMP_DRAWABLE(layer);
}
static inline CoreLayer compat_layer_new(CoreImage image, const gchar *name, gint width,
                                         gint height, GimpImageType type)
{
    return gimp_layer_new(image, name, width, height, type, 100.0, GIMP_LAYER_MODE_NORMAL);
}
static inline void compat_layer_delete(CoreLayer layer)
{
    gimp_item_delete(GIMP_ITEM(layer));
}
static inline void compat_layer_attach_parasite(CoreLayer layer, const GimpParasite *parasite)
{
    gimp_item_attach_parasite(GIMP_ITEM(layer), parasite);
}
/* Where new layers go: above the drawable's layer (the layer of a layer
 * mask), in its group; with no drawable (a txt2img run on an image with no
 * selected layer), on top of the image; above the active layer when the
 * drawable is a channel. */
static inline void compat_insert_position(CoreImage image, CoreDrawable drawable, CoreLayer *parent,
                                          gint *position)
{
    GimpLayer *layer = NULL;

    *parent = NULL;
    *position = drawable ? -1 : 0;
    if (drawable && GIMP_IS_LAYER_MASK(drawable))
        layer = gimp_layer_from_mask(GIMP_LAYER_MASK(drawable));
    else if (drawable && GIMP_IS_LAYER(drawable))
        layer = GIMP_LAYER(drawable);
    if (layer) {
        GimpItem *group = gimp_item_get_parent(GIMP_ITEM(layer));

        *parent = group ? GIMP_LAYER(group) : NULL;
        *position = gimp_image_get_item_position(image, GIMP_ITEM(layer));
    }
}
static inline gboolean compat_image_insert_layer(CoreImage image, CoreLayer layer, CoreLayer parent,
                                                 gint position)
{
    return gimp_image_insert_layer(image, layer, parent, position);
}
static inline GimpParasite *compat_item_get_parasite(CoreDrawable drawable, const gchar *name)
{
    return gimp_item_get_parasite(GIMP_ITEM(drawable), name);
}
/* A parasite's bytes up to the first NUL, as a new string. */
static inline gchar *compat_parasite_text(const GimpParasite *parasite)
{
    guint32 size = 0;
    gconstpointer data = gimp_parasite_get_data(parasite, &size);

    return data ? g_strndup(data, size) : g_strdup("");
}
/* The local file the image was imported from, else its own file (loaded,
 * saved or exported: a file-load call leaves the first unset); NULL when none. */
static inline gchar *compat_image_file_path(CoreImage image)
{
    GFile *file = gimp_image_get_imported_file(image);
    gchar *path;

    if (!file)
        file = gimp_image_get_file(image);
    path = file ? g_file_get_path(file) : NULL;
    if (file)
        g_object_unref(file);
    return path;
}

static inline gboolean compat_drawable_is_group(CoreDrawable drawable)
{
    return gimp_item_is_group(GIMP_ITEM(drawable));
}
static inline gboolean compat_drawable_is_text(CoreDrawable drawable)
{
    return gimp_item_is_text_layer(GIMP_ITEM(drawable));
}

#else /* GIMP 2.10 */

typedef gint32 CoreImage;
typedef gint32 CoreDrawable;
typedef gint32 CoreLayer;
#define CORE_NO_DRAWABLE (-1)
#define CORE_NO_LAYER (-1)

static inline gint compat_image_id(CoreImage image)
{
    return image;
}
static inline gint compat_drawable_id(CoreDrawable drawable)
{
    return drawable;
}
static inline gboolean compat_drawable_in_image(CoreDrawable drawable, CoreImage image)
{
    return gimp_item_get_image(drawable) == image;
}
static inline GimpImageBaseType compat_image_base_type(CoreImage image)
{
    return gimp_image_base_type(image);
}
static inline gboolean compat_image_has_floating_sel(CoreImage image)
{
    return gimp_image_get_floating_sel(image) != -1;
}
static inline gint compat_image_width(CoreImage image)
{
    return gimp_image_width(image);
}
static inline gint compat_image_height(CoreImage image)
{
    return gimp_image_height(image);
}
static inline gboolean compat_selection_is_empty(CoreImage image)
{
    return gimp_selection_is_empty(image);
}
static inline GeglBuffer *compat_selection_buffer(CoreImage image)
{
    return gimp_drawable_get_buffer(gimp_image_get_selection(image));
}
static inline GeglBuffer *compat_drawable_buffer(CoreDrawable drawable)
{
    return gimp_drawable_get_buffer(drawable);
}
static inline const Babl *compat_drawable_format(CoreDrawable drawable)
{
    return gimp_drawable_get_format(drawable);
}
static inline void compat_drawable_offsets(CoreDrawable drawable, gint *x, gint *y)
{
    gimp_drawable_offsets(drawable, x, y);
}
static inline gboolean compat_drawable_mask_intersect(CoreDrawable drawable, gint *x, gint *y,
                                                      gint *width, gint *height)
{
    return gimp_drawable_mask_intersect(drawable, x, y, width, height);
}
static inline CoreDrawable compat_layer_drawable(CoreLayer layer)
{
    return layer;
}
static inline CoreLayer compat_layer_new(CoreImage image, const gchar *name, gint width,
                                         gint height, GimpImageType type)
{
    return gimp_layer_new(image, name, width, height, type, 100.0, GIMP_LAYER_MODE_NORMAL);
}
static inline void compat_layer_delete(CoreLayer layer)
{
    gimp_item_delete(layer);
}
static inline void compat_layer_attach_parasite(CoreLayer layer, const GimpParasite *parasite)
{
    gimp_item_attach_parasite(layer, parasite);
}
/* Above the drawable's layer, in its group; above the active layer when the
 * drawable is a channel (parent 0, position -1). */
static inline void compat_insert_position(CoreImage image, CoreDrawable drawable, CoreLayer *parent,
                                          gint *position)
{
    gint32 layer = gimp_item_is_layer_mask(drawable) ? gimp_layer_from_mask(drawable) : drawable;

    *parent = 0;
    *position = -1;
    if (layer != -1 && gimp_item_is_layer(layer)) {
        *parent = MAX(gimp_item_get_parent(layer), 0);
        *position = gimp_image_get_item_position(image, layer);
    }
}
static inline gboolean compat_image_insert_layer(CoreImage image, CoreLayer layer, CoreLayer parent,
                                                 gint position)
{
    return gimp_image_insert_layer(image, layer, parent, position);
}
static inline GimpParasite *compat_item_get_parasite(CoreDrawable drawable, const gchar *name)
{
    return gimp_item_get_parasite(drawable, name);
}
/* A parasite's bytes up to the first NUL, as a new string. */
static inline gchar *compat_parasite_text(const GimpParasite *parasite)
{
    gconstpointer data = gimp_parasite_data(parasite);

    return data ? g_strndup(data, gimp_parasite_data_size(parasite)) : g_strdup("");
}
/* The local file the image was imported from, else its own file (loaded,
 * saved or exported: a file-load call leaves the first unset); NULL when none. */
static inline gchar *compat_image_file_path(CoreImage image)
{
    gchar *uri = gimp_image_get_imported_uri(image);
    gchar *path = uri ? g_filename_from_uri(uri, NULL, NULL) : NULL;

    g_free(uri);
    return path ? path : gimp_image_get_filename(image);
}

static inline gboolean compat_drawable_is_group(CoreDrawable drawable)
{
    return gimp_item_is_group(drawable);
}
static inline gboolean compat_drawable_is_text(CoreDrawable drawable)
{
    return gimp_item_is_text_layer(drawable);
}

#endif

/* Spelled the same in both generations, with the handle types above. */
static inline void compat_image_remove_layer(CoreImage image, CoreLayer layer)
{
    gimp_image_remove_layer(image, layer);
}
static inline void compat_undo_group_start(CoreImage image)
{
    gimp_image_undo_group_start(image);
}
static inline void compat_undo_group_end(CoreImage image)
{
    gimp_image_undo_group_end(image);
}
static inline void compat_layer_set_offsets(CoreLayer layer, gint x, gint y)
{
    gimp_layer_set_offsets(layer, x, y);
}
static inline GimpParasite *compat_image_get_parasite(CoreImage image, const gchar *name)
{
    return gimp_image_get_parasite(image, name);
}
/* The selection's bounds (x1, y1 inclusive, x2, y2 exclusive); FALSE, the
 * numbers untouched, when there is no selection. */
static inline gboolean compat_selection_bounds(CoreImage image, gint *x1, gint *y1, gint *x2,
                                               gint *y2)
{
    gboolean non_empty = FALSE;
    gint b[4];

    if (!gimp_selection_bounds(image, &non_empty, &b[0], &b[1], &b[2], &b[3]) || !non_empty)
        return FALSE;
    *x1 = b[0], *y1 = b[1], *x2 = b[2], *y2 = b[3];
    return TRUE;
}

G_END_DECLS

#endif
