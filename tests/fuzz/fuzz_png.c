/* fuzz_png.c: libFuzzer harness for the CLI's PNG reader (engine/cli/png.c,
 * --init, --mask and --from): any bytes as a file decode to pixels in [0, 1]
 * of the size the header declares (at most 256 on a side here, checked before
 * decoding), or are refused with a message; the parameters text is read or
 * refused with a message. */
#include "../../engine/cli/png.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[4096], err[512] = "";
    fuzz_file("image.png", data, size, path);
    for (int channels = 1; channels <= 3; channels += 2) {
        int w = -1, h = -1;
        err[0] = 0;
        diffuse_status why;
        float *px = png_read(path, channels, 256, &w, &h, &why, err, sizeof err);
        if (!px) {
            if (!err[0] || why == DIFFUSE_OK)
                abort();
            continue;
        }
        if (w < 1 || h < 1 || w > 256 || h > 256)
            abort();
        for (size_t i = 0; i < (size_t)w * h * channels; i++)
            if (!(px[i] >= 0.0f && px[i] <= 1.0f))
                abort();
        free(px);
    }
    err[0] = 0;
    diffuse_status why = DIFFUSE_OK;
    char *text = png_read_text(path, "parameters", &why, err, sizeof err);
    if (!text && (!err[0] || why == DIFFUSE_OK))
        abort();
    free(text);
    return 0;
}
