/* png.c: PNG in and out for the command-line tool, on libpng's simplified API. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <png.h>

#include "png.h"

/* libpng allocates a chunk's declared length before reading it: a chunk that
 * declares more than the file holds (a few hundred bytes declaring 2 GB of
 * text) is refused here, from the chunk headers, before libpng sees it. The
 * file is left at its start; a file that is no PNG is left to libpng to say so. */
static bool chunks_fit(FILE *f, const char *path, char *err, size_t err_size)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t head[8];
    struct stat st;
    bool ok = true;
    if (fstat(fileno(f), &st) != 0 || fread(head, 1, 8, f) != 8 || memcmp(head, sig, 8) != 0) {
        rewind(f);
        return true;
    }
    for (off_t at = 8; ok && at + 8 <= st.st_size;) {
        if (fseeko(f, at, SEEK_SET) != 0 || fread(head, 1, 8, f) != 8)
            break;
        const uint32_t len =
            (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
        if ((off_t)len + 12 > st.st_size - at) {
            const bool named =
                isalpha(head[4]) && isalpha(head[5]) && isalpha(head[6]) && isalpha(head[7]);
            snprintf(err, err_size,
                     "%s: damaged PNG: its %.4s chunk declares %lu bytes, the "
                     "file holds %lld more",
                     path, named ? (const char *)head + 4 : "next", (unsigned long)len,
                     (long long)(st.st_size - at - 12));
            ok = false;
        }
        if (memcmp(head + 4, "IEND", 4) == 0)
            break;
        at += (off_t)len + 12;
    }
    rewind(f);
    return ok;
}

float *png_read(const char *path, int channels, int max_side, int *w, int *h, diffuse_status *why,
                char *err, size_t err_size)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        *why = DIFFUSE_ERR_IO;
        return NULL;
    }
    *why = DIFFUSE_ERR_FORMAT;
    if (!chunks_fit(f, path, err, err_size)) {
        fclose(f);
        return NULL;
    }
    if (!png_image_begin_read_from_stdio(&img, f)) {
        snprintf(err, err_size, "%s: cannot read PNG: %s", path, img.message);
        fclose(f);
        return NULL;
    }
    if (img.width > (png_uint_32)max_side || img.height > (png_uint_32)max_side) {
        /* checked from the header, before anything is decoded or allocated */
        snprintf(err, err_size, "%s: the image is %ux%u, larger than %d pixels on a side", path,
                 (unsigned)img.width, (unsigned)img.height, max_side);
        *why = DIFFUSE_ERR_ARGUMENT;
        png_image_free(&img);
        fclose(f);
        return NULL;
    }
    img.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    size_t n = (size_t)img.width * img.height * channels;
    unsigned char *buf = malloc(n ? n : 1);
    float *out = malloc(sizeof(float) * (n ? n : 1));
    if (!buf || !out || !png_image_finish_read(&img, NULL, buf, 0, NULL)) {
        snprintf(err, err_size, "%s: cannot decode PNG: %s", path,
                 buf && out ? img.message : "out of memory");
        *why = buf && out ? DIFFUSE_ERR_FORMAT : DIFFUSE_ERR_MEMORY;
        png_image_free(&img);
        fclose(f);
        free(buf);
        free(out);
        return NULL;
    }
    fclose(f);
    for (size_t i = 0; i < n; i++)
        out[i] = buf[i] / 255.0f;
    *w = (int)img.width;
    *h = (int)img.height;
    free(buf);
    return out;
}

/* Written under a temporary name beside path, then renamed over it: a reader
 * (or a crash) never sees half a file. */
int png_write_rgb(const char *path, const float *rgb, int w, int h, const char *text_key,
                  const char *text, char *err, size_t err_size)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.part-%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    png_structp png = f ? png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL) : NULL;
    png_infop info = png ? png_create_info_struct(png) : NULL;
    unsigned char *row = malloc((size_t)w * 3);
    if (!f || !png || !info || !row || setjmp(png_jmpbuf(png))) {
        snprintf(err, err_size, "%s: cannot write PNG", path);
        if (png)
            png_destroy_write_struct(&png, info ? &info : NULL);
        if (f) {
            fclose(f);
            unlink(tmp);
        }
        free(row);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (text_key && text) { /* tEXt is Latin-1: other text goes in iTXt, as UTF-8 */
        bool ascii = true;
        for (const char *c = text; *c && ascii; c++)
            ascii = (unsigned char)*c < 0x80;
        png_text t = {.compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE,
                      .key = (char *)text_key,
                      .text = (char *)text,
                      .lang = (char *)"",
                      .lang_key = (char *)""};
        png_set_text(png, info, &t, 1);
    }
    png_write_info(png, info);
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w * 3; x++) {
            float v = rgb[(size_t)y * w * 3 + x];
            row[x] = (unsigned char)lrintf((v > 0 ? (v < 1 ? v : 1) : 0) * 255.0f); /* NaN: 0 */
        }
        png_write_row(png, row);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        snprintf(err, err_size, "%s: cannot write PNG", path);
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The text chunks come before the image data in the files Stable Diffusion
 * tools write: only those are read (no pixels are decoded). */
char *png_read_text(const char *path, const char *key, diffuse_status *why, char *err,
                    size_t err_size)
{
    FILE *f = fopen(path, "rb");
    png_structp png = f ? png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL) : NULL;
    png_infop info = png ? png_create_info_struct(png) : NULL;
    char *out = NULL;
    *why = DIFFUSE_ERR_FORMAT;
    if (!f) {
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        *why = DIFFUSE_ERR_IO;
        goto done;
    }
    if (!chunks_fit(f, path, err, err_size))
        goto done;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        snprintf(err, err_size, "%s: cannot read PNG", path);
        goto done;
    }
    png_init_io(png, f);
    png_read_info(png, info);
    png_textp texts;
    int n = 0;
    png_get_text(png, info, &texts, &n);
    *why = DIFFUSE_ERR_ARGUMENT;
    for (int i = 0; i < n && !out; i++)
        if (!strcmp(texts[i].key, key) && !(out = strdup(texts[i].text)))
            snprintf(err, err_size, "out of memory"), *why = DIFFUSE_ERR_MEMORY;
    if (!out && *why == DIFFUSE_ERR_ARGUMENT)
        snprintf(err, err_size, "%s: no \"%s\" text in this PNG", path, key);
done:
    if (png)
        png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    if (f)
        fclose(f);
    return out;
}
