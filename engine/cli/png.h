/* png.h: reading and writing the CLI's PNG files through libpng. */
#ifndef DIFFUSE_CLI_PNG_H
#define DIFFUSE_CLI_PNG_H

#include <stddef.h>

#include "../diffuse.h"

/* Reads a PNG (any bit depth / color type) as [h, w, channels] floats in
 * [0, 1], channels 3 (RGB, alpha dropped) or 1 (gray, from luma); larger than
 * max_side on a side is refused from the header. Returns NULL with a message
 * in err (err_size bytes) and the kind in *why: DIFFUSE_ERR_IO (cannot be
 * opened), _FORMAT (not a PNG, or damaged), _ARGUMENT (too large), _MEMORY.
 * The caller frees the result. */
float *png_read(const char *path, int channels, int max_side, int *w, int *h, diffuse_status *why,
               char *err, size_t err_size);
/* Writes [h, w, 3] floats in [0, 1] as 8-bit RGB. Returns 0 or -1 with err. */
int png_write_rgb(const char *path, const float *rgb, int w, int h, const char *text_key,
                  const char *text, char *err, size_t err_size);
/* The text stored under key (a tEXt, zTXt or iTXt chunk before the image
 * data), malloc'd; NULL with a message in err and the kind in *why, as
 * png_read's, when there is none (DIFFUSE_ERR_ARGUMENT: a PNG without it). */
char *png_read_text(const char *path, const char *key, diffuse_status *why, char *err,
                    size_t err_size);

#endif
