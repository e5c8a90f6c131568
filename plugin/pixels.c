/* pixels.c: GIMP pixels in and out of the engine (see pixels.h).
 *
 * Formats are named explicitly: "R'G'B'A float" (sRGB-encoded, straight alpha)
 * is what the engine's [0, 1] RGB means; the selection is read as linear
 * "Y float" because GIMP stores masks linearly; the original pixels are also
 * kept in the drawable's own format so that pixels outside the selection are
 * written back byte for byte, whatever the image's precision. The selected
 * area (core.h, CoreArea) is scaled to and from the model's size by GEGL
 * (gegl:scale-size, LoHalo/NoHalo) in premultiplied linear light; the whole
 * layer keeps its bilinear resampling of a few pixels, as before. */
#include <math.h>
#include <string.h>

#include <libgimp/gimp.h>

#include "core.h"
#include "pixels.h"

/* ---------------------------------------------------------------- sizes */

void pixels_gen_size(gint width, gint height, gint native, gint *gen_width, gint *gen_height)
{
    gint longer = MAX(width, height);
    gdouble target = CLAMP(longer, MAX(native, 8), CORE_DEFAULT_MAX_SIDE);
    gdouble scale = target / longer;

    *gen_width = CLAMP(core_round8(width * scale), 8, CORE_MAX_SIDE);
    *gen_height = CLAMP(core_round8(height * scale), 8, CORE_MAX_SIDE);
}

gsize pixels_region_memory(gint width, gint height, gint gen_width, gint gen_height, gint count,
                           gsize crop_pixels)
{
    gsize region = (gsize)width * height;
    gsize gen = (gsize)gen_width * gen_height;

    /* init + gen_mask, orig + mask + native (at most 16 bytes a pixel), then
     * per result the engine image, its scaled copy, the blend and two rows of
     * native output */
    return gen * 4 * sizeof(float) + region * (5 * sizeof(float) + 16) +
           (gsize)count * gen * 3 * sizeof(float) + region * (3 + 4) * sizeof(float) +
           region * 2 * 16 +
           /* selected area: the crop read, flattened and in GEGL's buffer, its
            * mask twice, and the engine image in a GEGL buffer to scale back */
           crop_pixels * 16 * sizeof(float) + gen * 4 * sizeof(float);
}

gsize pixels_babl_memory(const Babl *format, gsize pixels)
{
    gint major, minor, micro;
    const gchar *lut = g_getenv("BABL_LUT");

    babl_get_version(&major, &minor, &micro);
    if ((major > 0 || minor > 1 || micro >= 114) && lut && !strcmp(lut, "0"))
        return 0; /* turned off */
    if (babl_format_get_bytes_per_pixel(format) / babl_format_get_n_components(format) > 2 ||
        pixels < 128 * 256)
        return 0;
    return (gsize)256 * 256 * 256 * 16 + (gsize)2 * 48 * 1024 * 1024;
}

/* ---------------------------------------------------------------- GEGL scaling */

/* dst = the roi (in the scaled image's coordinates) of src [sh, sw] scaled to
 * dw x dh by gegl:scale-size, both in format. The pixels are resampled in
 * work, a linear premultiplied format ("RaGaBaA float", "YaA float"): the
 * abyss around the source is transparent, and un-premultiplying on the way
 * out keeps the edges' colours. LoHalo shrinks, NoHalo enlarges, as GIMP's
 * own scaling recommends. */
static void scale_gegl(const void *src, gint sw, gint sh, const Babl *format, const Babl *work,
                       gint dw, gint dh, const GeglRectangle *roi, void *dst)
{
    GeglBuffer *buffer = gegl_buffer_new(GEGL_RECTANGLE(0, 0, sw, sh), work);
    GeglNode *graph = gegl_node_new();
    GeglNode *source, *scale;
    GeglSamplerType sampler =
        (gint64)dw * dh < (gint64)sw * sh ? GEGL_SAMPLER_LOHALO : GEGL_SAMPLER_NOHALO;

    gegl_buffer_set(buffer, GEGL_RECTANGLE(0, 0, sw, sh), 0, format, src, GEGL_AUTO_ROWSTRIDE);
    source = gegl_node_new_child(graph, "operation", "gegl:buffer-source", "buffer", buffer, NULL);
    scale = gegl_node_new_child(graph, "operation", "gegl:scale-size", "x", (gdouble)dw, "y",
                                (gdouble)dh, "sampler", sampler, NULL);
    gegl_node_link(source, scale);
    gegl_node_blit(scale, 1.0, roi, format, dst, GEGL_AUTO_ROWSTRIDE, GEGL_BLIT_DEFAULT);
    g_object_unref(graph);
    g_object_unref(buffer);
}

/* ---------------------------------------------------------------- resampling */

/* Bilinear at pixel centres: x_src = (x + 0.5) sw / dw - 0.5, clamped at the
 * edges. Enough for the factors used here (the engine size is within a few
 * pixels of the region, or a plain up/down scale to the model's size). */
void pixels_resample(const float *src, gint sw, gint sh, float *dst, gint dw, gint dh, gint c)
{
    for (gint y = 0; y < dh; y++) {
        gdouble fy = CLAMP((y + 0.5) * sh / dh - 0.5, 0, sh - 1);
        gint y0 = (gint)fy, y1 = MIN(y0 + 1, sh - 1);
        gfloat wy = fy - y0;

        for (gint x = 0; x < dw; x++) {
            gdouble fx = CLAMP((x + 0.5) * sw / dw - 0.5, 0, sw - 1);
            gint x0 = (gint)fx, x1 = MIN(x0 + 1, sw - 1);
            gfloat wx = fx - x0;

            for (gint k = 0; k < c; k++) {
                gfloat a = src[((gsize)y0 * sw + x0) * c + k];
                gfloat b = src[((gsize)y0 * sw + x1) * c + k];
                gfloat d = src[((gsize)y1 * sw + x0) * c + k];
                gfloat e = src[((gsize)y1 * sw + x1) * c + k];

                dst[((gsize)y * dw + x) * c + k] =
                    (a * (1 - wx) + b * wx) * (1 - wy) + (d * (1 - wx) + e * wx) * wy;
            }
        }
    }
}

/* ---------------------------------------------------------------- reading */

static gboolean region_alloc(PixelsRegion *r, GError **error)
{
    gsize n = (gsize)r->width * r->height;
    gsize gen = (gsize)r->gen_width * r->gen_height;

    r->init = g_try_new(float, gen * 3);
    r->gen_mask = g_try_new(float, gen);
    r->orig = g_try_new(float, n * 4);
    r->mask = g_try_new(float, n);
    r->orig_native = g_try_malloc(n * babl_format_get_bytes_per_pixel(r->native_format));
    if (r->init && r->gen_mask && r->orig && r->mask && r->orig_native)
        return TRUE;

    g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION, "not enough memory to read a %dx%d region",
                r->width, r->height);
    return FALSE;
}

/* The soft selection over the region; 1 everywhere without a selection. */
static gboolean read_selection(CoreImage image, PixelsRegion *r)
{
    gsize n = (gsize)r->width * r->height;
    GeglBuffer *buffer;

    if (compat_selection_is_empty(image)) {
        for (gsize i = 0; i < n; i++)
            r->mask[i] = 1.0f;
        return FALSE;
    }
    buffer = compat_selection_buffer(image);
    gegl_buffer_get(buffer, GEGL_RECTANGLE(r->x, r->y, r->width, r->height), 1.0,
                    babl_format("Y float"), r->mask, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    g_object_unref(buffer);
    return TRUE;
}

/* Opaque over white: rgb a + (1 - a), for n "R'G'B'A float" pixels into
 * "R'G'B' float". */
static void flatten(const float *rgba, gsize n, float *rgb)
{
    for (gsize i = 0; i < n; i++) {
        float a = CLAMP(rgba[i * 4 + 3], 0.0f, 1.0f);

        for (gint k = 0; k < 3; k++)
            rgb[i * 3 + k] = CLAMP(rgba[i * 4 + k] * a + (1 - a), 0.0f, 1.0f);
    }
}

/* The engine input: the original flattened over white (transparent parts of
 * a layer have no colour to start from), scaled to the engine size. */
static void make_init(PixelsRegion *r)
{
    gsize n = (gsize)r->width * r->height;
    float *flat = r->init;

    if (r->gen_width != r->width || r->gen_height != r->height)
        flat = g_new(float, n * 3);
    flatten(r->orig, n, flat);
    if (flat != r->init) {
        pixels_resample(flat, r->width, r->height, r->init, r->gen_width, r->gen_height, 3);
        g_free(flat);
    }
}

/* The selected area's engine input and mask: the padded crop of the drawable
 * and of the selection, scaled to the generation size with GEGL. */
static gboolean read_area(CoreImage image, GeglBuffer *buffer, PixelsRegion *r, gint ox, gint oy,
                          GError **error)
{
    gsize n = (gsize)r->crop_width * r->crop_height;
    float *rgba = g_try_new(float, n * 4), *rgb = g_try_new(float, n * 3);
    float *mask = g_try_new(float, n);
    const GeglRectangle gen = {0, 0, r->gen_width, r->gen_height};
    GeglBuffer *selection;

    if (!rgba || !rgb || !mask) {
        g_free(rgba);
        g_free(rgb);
        g_free(mask);
        g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION,
                    "not enough memory to read a %dx%d area", r->crop_width, r->crop_height);
        return FALSE;
    }
    gegl_buffer_get(buffer, GEGL_RECTANGLE(r->crop_x, r->crop_y, r->crop_width, r->crop_height),
                    1.0, babl_format("R'G'B'A float"), rgba, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    flatten(rgba, n, rgb);
    scale_gegl(rgb, r->crop_width, r->crop_height, babl_format("R'G'B' float"),
               babl_format("RaGaBaA float"), r->gen_width, r->gen_height, &gen, r->init);
    selection = compat_selection_buffer(image);
    gegl_buffer_get(selection,
                    GEGL_RECTANGLE(ox + r->crop_x, oy + r->crop_y, r->crop_width, r->crop_height),
                    1.0, babl_format("Y float"), mask, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    g_object_unref(selection);
    scale_gegl(mask, r->crop_width, r->crop_height, babl_format("Y float"),
               babl_format("YaA float"), r->gen_width, r->gen_height, &gen, r->gen_mask);
    g_free(rgba);
    g_free(rgb);
    g_free(mask);
    return TRUE;
}

/* The selected area's crop and generation size; FALSE without a selection
 * (the whole layer is the area then). */
static gboolean place_area(CoreImage image, GeglBuffer *buffer, gint dx, gint dy, gint native,
                           gint padding, PixelsRegion *r)
{
    if (compat_selection_is_empty(image))
        return FALSE;
    r->area = TRUE;
    core_area_crop(dx, dy, r->width, r->height, padding, gegl_buffer_get_width(buffer),
                   gegl_buffer_get_height(buffer), &r->crop_x, &r->crop_y, &r->crop_width,
                   &r->crop_height);
    r->crop_dx = dx - r->crop_x;
    r->crop_dy = dy - r->crop_y;
    core_area_gen_size(r->crop_width, r->crop_height, native, &r->gen_width, &r->gen_height);
    return TRUE;
}

gboolean pixels_region_read(CoreImage image, CoreDrawable drawable, gint native, CoreArea area,
                            gint padding, PixelsRegion *r, GError **error)
{
    gint dx, dy, ox, oy;
    GeglBuffer *buffer;

    memset(r, 0, sizeof *r);
    if (!compat_drawable_mask_intersect(drawable, &dx, &dy, &r->width, &r->height) ||
        r->width < 1 || r->height < 1) {
        g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION,
                    "the selection does not touch the active layer");
        return FALSE;
    }
    compat_drawable_offsets(drawable, &ox, &oy);
    r->x = ox + dx;
    r->y = oy + dy;
    buffer = compat_drawable_buffer(drawable);
    if (area != CORE_AREA_SELECTED || !place_area(image, buffer, dx, dy, native, padding, r))
        pixels_gen_size(r->width, r->height, native, &r->gen_width, &r->gen_height);
    r->native_format = compat_drawable_format(drawable);
    r->keep_alpha = compat_drawable_is_text(drawable);
    if (!region_alloc(r, error) || (r->area && !read_area(image, buffer, r, ox, oy, error))) {
        g_object_unref(buffer);
        return FALSE;
    }
    gegl_buffer_get(buffer, GEGL_RECTANGLE(dx, dy, r->width, r->height), 1.0,
                    babl_format("R'G'B'A float"), r->orig, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    gegl_buffer_get(buffer, GEGL_RECTANGLE(dx, dy, r->width, r->height), 1.0, r->native_format,
                    r->orig_native, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    g_object_unref(buffer);

    if (!read_selection(image, r))
        g_clear_pointer(&r->gen_mask, g_free); /* plain img2img: repaint everything */
    else if (!r->area)
        pixels_resample(r->mask, r->width, r->height, r->gen_mask, r->gen_width, r->gen_height, 1);
    if (!r->area)
        make_init(r);
    return TRUE;
}

void pixels_region_free(PixelsRegion *r)
{
    g_free(r->init);
    g_free(r->gen_mask);
    g_free(r->orig);
    g_free(r->mask);
    g_free(r->orig_native);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- writing */

void pixels_write_image(CoreLayer layer, const diffuse_image *image)
{
    GeglBuffer *buffer = compat_drawable_buffer(compat_layer_drawable(layer));

    gegl_buffer_set(buffer, GEGL_RECTANGLE(0, 0, image->width, image->height), 0,
                    babl_format("R'G'B' float"), image->pixels, GEGL_AUTO_ROWSTRIDE);
    g_object_unref(buffer); /* flushes the tiles to GIMP */
}

void pixels_write_scaled(CoreLayer layer, const diffuse_image *image, gint target_w, gint target_h,
                         GeglSamplerType sampler)
{
    GeglBuffer *layer_buffer = compat_drawable_buffer(compat_layer_drawable(layer));
    GeglBuffer *source = gegl_buffer_new(GEGL_RECTANGLE(0, 0, image->width, image->height),
                                         babl_format("RaGaBaA float"));
    GeglNode *graph = gegl_node_new();
    GeglNode *read, *scale, *shift, *crop, *write;
    gint scaled_w, scaled_h, crop_x, crop_y;

    core_scale_cover(image->width, image->height, target_w, target_h, &scaled_w, &scaled_h, &crop_x,
                     &crop_y);
    gegl_buffer_set(source, GEGL_RECTANGLE(0, 0, image->width, image->height), 0,
                    babl_format("R'G'B' float"), image->pixels, GEGL_AUTO_ROWSTRIDE);
    read = gegl_node_new_child(graph, "operation", "gegl:buffer-source", "buffer", source, NULL);
    /* clamped: the picture's edges stay opaque, as GIMP's Scale Layer keeps them */
    scale = gegl_node_new_child(graph, "operation", "gegl:scale-size", "x", (gdouble)scaled_w, "y",
                                (gdouble)scaled_h, "sampler", sampler, "abyss-policy",
                                GEGL_ABYSS_CLAMP, NULL);
    shift = gegl_node_new_child(graph, "operation", "gegl:translate", "x", (gdouble)-crop_x, "y",
                                (gdouble)-crop_y, NULL);
    crop = gegl_node_new_child(graph, "operation", "gegl:crop", "width", (gdouble)target_w,
                               "height", (gdouble)target_h, NULL);
    write =
        gegl_node_new_child(graph, "operation", "gegl:write-buffer", "buffer", layer_buffer, NULL);
    gegl_node_link_many(read, scale, shift, crop, write, NULL);
    gegl_node_process(write);
    g_object_unref(graph);
    g_object_unref(source);
    g_object_unref(layer_buffer); /* flushes the tiles to GIMP */
}

/* blend [n, 4] = orig over which gen is laid with coverage m, in
 * premultiplied terms so that transparent originals do not leak colour:
 * a = a0 (1 - m) + m,  rgb = (rgb0 a0 (1 - m) + gen m) / a.
 * With keep_alpha (a text layer: its letters' shape is the picture) the
 * colour is repainted inside the original's alpha, which stays:
 * a = a0,  rgb = rgb0 (1 - m) + gen m. */
static void blend(const PixelsRegion *r, const float *gen, float *out)
{
    gsize n = (gsize)r->width * r->height;

    for (gsize i = 0; i < n; i++) {
        const float *o = r->orig + i * 4;
        float m = CLAMP(r->mask[i], 0.0f, 1.0f);
        float a0 = CLAMP(o[3], 0.0f, 1.0f);
        float a = a0 * (1 - m) + m;

        if (r->keep_alpha) {
            for (gint k = 0; k < 3; k++)
                out[i * 4 + k] = o[k] * (1 - m) + gen[i * 3 + k] * m;
            out[i * 4 + 3] = a0;
            continue;
        }
        for (gint k = 0; k < 3; k++)
            out[i * 4 + k] = a > 0 ? (o[k] * a0 * (1 - m) + gen[i * 3 + k] * m) / a : o[k];
        out[i * 4 + 3] = a;
    }
}

/* dst (layer format) = the original where m == 0, else the blend. Both are
 * converted with babl, as GEGL itself would, so untouched pixels keep their
 * exact bytes. */
static void to_layer_format(const PixelsRegion *r, const float *blended, const Babl *format,
                            guint8 *dst, guint8 *tmp)
{
    gsize n = (gsize)r->width * r->height;
    gint bpp = babl_format_get_bytes_per_pixel(format);

    babl_process(babl_fish(r->native_format, format), r->orig_native, dst, n);
    babl_process(babl_fish(babl_format("R'G'B'A float"), format), blended, tmp, n);
    for (gsize i = 0; i < n; i++)
        if (r->mask[i] > 0)
            memcpy(dst + i * bpp, tmp + i * bpp, bpp);
}

gboolean pixels_write_blended(CoreLayer layer, const PixelsRegion *r, const diffuse_image *image,
                              GError **error)
{
    gsize n = (gsize)r->width * r->height;
    const Babl *format = compat_drawable_format(compat_layer_drawable(layer));
    gint bpp = babl_format_get_bytes_per_pixel(format);
    float *gen = image->pixels;
    float *scaled = NULL, *blended = g_try_new(float, n * 4);
    guint8 *dst = g_try_malloc(n * bpp), *tmp = g_try_malloc(n * bpp);
    gboolean ok = blended && dst && tmp;

    if (ok && (r->area || image->width != r->width || image->height != r->height)) {
        gen = scaled = g_try_new(float, n * 3);
        ok = scaled != NULL;
        if (ok && r->area) /* the crop's size, the region's part of it */
            scale_gegl(image->pixels, image->width, image->height, babl_format("R'G'B' float"),
                       babl_format("RaGaBaA float"), r->crop_width, r->crop_height,
                       GEGL_RECTANGLE(r->crop_dx, r->crop_dy, r->width, r->height), scaled);
        else if (ok)
            pixels_resample(image->pixels, image->width, image->height, scaled, r->width, r->height,
                            3);
    }
    if (ok) {
        GeglBuffer *buffer = compat_drawable_buffer(compat_layer_drawable(layer));

        blend(r, gen, blended);
        to_layer_format(r, blended, format, dst, tmp);
        gegl_buffer_set(buffer, GEGL_RECTANGLE(0, 0, r->width, r->height), 0, format, dst,
                        GEGL_AUTO_ROWSTRIDE);
        g_object_unref(buffer);
    } else
        g_set_error(error, CORE_ERROR, CORE_ERROR_EXECUTION,
                    "not enough memory to compose a %dx%d layer", r->width, r->height);
    g_free(scaled);
    g_free(blended);
    g_free(dst);
    g_free(tmp);
    return ok;
}
