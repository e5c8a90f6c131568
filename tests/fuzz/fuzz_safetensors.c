/* fuzz_safetensors.c: libFuzzer harness for the safetensors reader
 * (safetensors.c): any bytes as a file open or are refused with a message;
 * what opens is self-consistent (every tensor inside the file, its size the
 * product of its shape), and its float tensors convert. */
#include "../../engine/internal.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[4096], err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_st_file *f;
    fuzz_file("model.safetensors", data, size, path);
    if (diffuse_st_open(path, &f, err) != DIFFUSE_OK) {
        if (!err[0] || f)
            abort();
        return 0;
    }
    const uint8_t *begin = (const uint8_t *)f->map, *end = begin + f->map_size;
    for (int i = 0; i < f->count; i++) {
        const diffuse_st_tensor *t = &f->tensors[i];
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++)
            n *= t->shape[d];
        if (n != t->numel || t->data < begin + 8 || t->data + t->nbytes > end ||
            diffuse_st_find(f, t->name) != t)
            abort();
        float *out =
            t->dtype <= DIFFUSE_DTYPE_BF16 ? malloc(sizeof(float) * (size_t)(n ? n : 1)) : NULL;
        if (out && diffuse_st_to_f32(t, out, err) != 0)
            abort();
        free(out);
    }
    diffuse_st_close(f);
    return 0;
}
