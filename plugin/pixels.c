/* pixels.c: GIMP pixels in and out of the engine (see pixels.h).
 *
 * Formats are named explicitly: "R'G'B'A float" (sRGB-encoded, straight alpha)
 * is what the engine's [0, 1] RGB means; the selection is read as linear
 * "Y float" because GIMP stores masks linearly; the original pixels are also
 * kept in the drawable's own format so that pixels outside the selection are
 * written back byte for byte, whatever the image's precision. */
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

gsize pixels_region_memory(gint width, gint height, gint gen_width, gint gen_height, gint count)
{
    gsize region = (gsize)width * height;
    gsize gen = (gsize)gen_width * gen_height;

    /* init + gen_mask, orig + mask + native (at most 16 bytes a pixel), then
     * per result the engine image, its scaled copy, the blend and two rows of
     * native output */
    return gen * 4 * sizeof(float) + region * (5 * sizeof(float) + 16) +
           (gsize)count * gen * 3 * sizeof(float) + region * (3 + 4) * sizeof(float) +
           region * 2 * 16;
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

/* The engine input: the original flattened over white (transparent parts of
 * a layer have no colour to start from), scaled to the engine size. */
static void make_init(PixelsRegion *r)
{
    gsize n = (gsize)r->width * r->height;
    float *flat = r->init;

    if (r->gen_width != r->width || r->gen_height != r->height)
        flat = g_new(float, n * 3);
    for (gsize i = 0; i < n; i++) {
        float a = CLAMP(r->orig[i * 4 + 3], 0.0f, 1.0f);

        for (gint k = 0; k < 3; k++)
            flat[i * 3 + k] = CLAMP(r->orig[i * 4 + k] * a + (1 - a), 0.0f, 1.0f);
    }
    if (flat != r->init) {
        pixels_resample(flat, r->width, r->height, r->init, r->gen_width, r->gen_height, 3);
        g_free(flat);
    }
}

gboolean pixels_region_read(CoreImage image, CoreDrawable drawable, gint native, PixelsRegion *r,
                            GError **error)
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
    pixels_gen_size(r->width, r->height, native, &r->gen_width, &r->gen_height);
    r->native_format = compat_drawable_format(drawable);
    if (!region_alloc(r, error))
        return FALSE;

    buffer = compat_drawable_buffer(drawable);
    gegl_buffer_get(buffer, GEGL_RECTANGLE(dx, dy, r->width, r->height), 1.0,
                    babl_format("R'G'B'A float"), r->orig, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    gegl_buffer_get(buffer, GEGL_RECTANGLE(dx, dy, r->width, r->height), 1.0, r->native_format,
                    r->orig_native, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    g_object_unref(buffer);

    if (read_selection(image, r))
        pixels_resample(r->mask, r->width, r->height, r->gen_mask, r->gen_width, r->gen_height, 1);
    else
        g_clear_pointer(&r->gen_mask, g_free); /* plain img2img: repaint everything */
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

/* blend [n, 4] = orig over which gen is laid with coverage m, in
 * premultiplied terms so that transparent originals do not leak colour:
 * a = a0 (1 - m) + m,  rgb = (rgb0 a0 (1 - m) + gen m) / a. */
static void blend(const PixelsRegion *r, const float *gen, float *out)
{
    gsize n = (gsize)r->width * r->height;

    for (gsize i = 0; i < n; i++) {
        const float *o = r->orig + i * 4;
        float m = CLAMP(r->mask[i], 0.0f, 1.0f);
        float a0 = CLAMP(o[3], 0.0f, 1.0f);
        float a = a0 * (1 - m) + m;

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

    if (ok && (image->width != r->width || image->height != r->height)) {
        gen = scaled = g_try_new(float, n * 3);
        ok = scaled != NULL;
        if (ok)
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
