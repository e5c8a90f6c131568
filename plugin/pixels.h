/* pixels.h: GIMP pixels in and out of the engine's float images, for core.c.
 *
 * The engine wants [h, w, 3] sRGB-encoded RGB in [0, 1] at multiples of 8; GIMP
 * holds drawables of any type, precision and colour space with a soft
 * selection. Everything is read up front through GEGL buffers in explicit babl
 * formats, so that the image may change while the engine runs without the
 * result mixing two states, and written back only into new layers. */
#ifndef DIFFUSE_PLUGIN_PIXELS_H
#define DIFFUSE_PLUGIN_PIXELS_H

#include <libgimp/gimp.h>

#include "compat.h"
#include "diffuse.h"

G_BEGIN_DECLS

/* The img2img source: the drawable inside the selection bounds. */
typedef struct {
    gint x, y, width, height;   /* region in image coordinates: where the layer goes */
    gint gen_width, gen_height; /* the size the engine runs at, multiples of 8 */
    float *init;                /* [gen_height, gen_width, 3] engine input, alpha over white */
    float *gen_mask;            /* [gen_height, gen_width] 1 = repaint; NULL without a selection */
    float *orig;                /* [height, width, 4] "R'G'B'A float" original pixels */
    float *mask;                /* [height, width] soft selection, 1 = repaint */
    guint8 *orig_native;        /* [height, width] original pixels in native_format */
    const Babl *native_format;  /* the drawable's own format */
    gboolean area;              /* selected area: the engine sees the crop, scaled by GEGL */
    gint crop_x, crop_y;        /* selected area: the padded crop in drawable coordinates */
    gint crop_width, crop_height;
    gint crop_dx, crop_dy; /* where the region lies in the crop */
    gboolean keep_alpha;   /* a text layer: the result keeps the original's alpha */
} PixelsRegion;

/* The engine size for a w x h region: scaled up to the model's native size
 * when smaller (small selections get the model's full detail), down to
 * CORE_DEFAULT_MAX_SIDE when larger, then rounded to multiples of 8. */
void pixels_gen_size(gint width, gint height, gint native, gint *gen_width, gint *gen_height);
/* Bytes babl takes for a moment when a drawable of this format and its
 * selection have `pixels` converted (read, and composed back): babl (before
 * 0.1.114, where BABL_LUT=0 turns it off, as core_process_init() does) speeds
 * up each conversion from a format of 1 to 4 bytes a pixel that has
 * converted 32768 pixels with a table of up to 16M entries, and times its
 * first one with a 256 MiB table and two 48 MiB buffers. Images of 8 and 16
 * bits a channel have such formats (their selection masks at least); 0 for
 * 32-bit ones and other babl versions. */
gsize pixels_babl_memory(const Babl *format, gsize pixels);
/* Bytes pixels_region_read() and the compositing need for count results
 * (the crop's pixels: 0 for the whole-layer area). */
gsize pixels_region_memory(gint width, gint height, gint gen_width, gint gen_height, gint count,
                           gsize crop_pixels);
/* Reads the drawable inside the selection bounds and the soft selection.
 * native is the model's training size (see pixels_gen_size). With area
 * CORE_AREA_SELECTED and a selection, the engine's input is instead the
 * bounds grown by padding (core_area_crop()) scaled with GEGL to
 * core_area_gen_size(); the region (the layer) stays the selection bounds,
 * since the padding lies outside the selection, where the layer keeps the
 * original pixels anyway. */
gboolean pixels_region_read(CoreImage image, CoreDrawable drawable, gint native, CoreArea area,
                            gint padding, PixelsRegion *region, GError **error);
void pixels_region_free(PixelsRegion *region);

/* Writes a txt2img result into a new layer of the same size; GEGL converts
 * RGB to the layer's type (RGB or grey) and precision. */
void pixels_write_image(CoreLayer layer, const diffuse_image *image);
/* Writes a txt2img result into a new layer of target_w x target_h, scaled by
 * GEGL with sampler to cover it, aspect kept, centred, what overflows cut
 * (core_scale_cover()); the pixels are resampled as GIMP scales layers, in
 * linear premultiplied light, the picture's edges clamped. */
void pixels_write_scaled(CoreLayer layer, const diffuse_image *image, gint target_w, gint target_h,
                         GeglSamplerType sampler);
/* Writes an img2img result: the engine output scaled back to the region and
 * blended with the original by the soft mask, out = orig (1 - m) + gen m, so
 * that pixels outside the selection are the original bytes. */
gboolean pixels_write_blended(CoreLayer layer, const PixelsRegion *region,
                              const diffuse_image *image, GError **error);

/* dst [dh, dw, c] = src [sh, sw, c] sampled bilinearly at pixel centres. */
void pixels_resample(const float *src, gint sw, gint sh, float *dst, gint dw, gint dh, gint c);

G_END_DECLS

#endif
