/* fuzz_weights.c: libFuzzer harness for the weight layout mapping (weights.c)
 * and what model loading reads off the weights (model.c, taesd.c): each input
 * line "NAME DTYPE D0 D1 ..." becomes a tensor of a valid single-file
 * checkpoint (zeros, contiguous), so that the fuzzer spends its time on names
 * and shapes, not on the file format (fuzz_safetensors has that). The file is
 * opened as weights, as a TAESD and as a model: each opens or is refused with
 * a message, never a crash, overflow or leak. An input whose first line is
 * "diffusers" is a diffusers folder instead: lines "unet/NAME ...",
 * "vae/NAME ...", "text_encoder/NAME ..." and "text_encoder_2/NAME ..." go
 * into those parts' files. */
#include <cJSON.h>

#include "../../engine/internal.h"
#include "fuzz.h"

#define MAX_DATA ((uint64_t)16 << 20) /* zeros behind the header, at most */

/* The checkpoint the lines describe (those that start with part, that cut
 * off, when part is not NULL) into path; false when it is not one or, for a
 * part, has no tensor. */
static bool make_file(const char *text, const char *part, const char *path)
{
    cJSON *root = cJSON_CreateObject();
    char *copy = strdup(text), *save = NULL;
    uint64_t offset = 0;
    bool ok = root && copy;
    int count = 0;
    for (char *line = strtok_r(copy, "\n", &save); ok && line; line = strtok_r(NULL, "\n", &save)) {
        char name[512], dtype[16];
        int used = 0;
        if (part && strncmp(line, part, strlen(part)) != 0)
            continue;
        line += part ? strlen(part) : 0;
        if (sscanf(line, "%511s %15s%n", name, dtype, &used) != 2)
            continue;
        count++;
        const int size = !strcmp(dtype, "F32") || !strcmp(dtype, "I32") ? 4
                         : !strcmp(dtype, "I64")                        ? 8
                         : !strcmp(dtype, "U8")                         ? 1
                                                                        : 2;
        cJSON *shape = cJSON_CreateArray();
        uint64_t bytes = (uint64_t)size;
        unsigned long long d;
        int n;
        for (const char *p = line + used; ok && sscanf(p, "%llu%n", &d, &n) == 1; p += n) {
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)d));
            ok = d <= MAX_DATA && (bytes *= d) <= MAX_DATA; /* cannot wrap: both <= 2^24 */
        }
        ok = ok && offset + bytes <= MAX_DATA;
        cJSON *t = cJSON_CreateObject(), *offs = cJSON_CreateArray();
        cJSON_AddStringToObject(t, "dtype", dtype);
        cJSON_AddItemToObject(t, "shape", shape);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(offset + (ok ? bytes : 0))));
        cJSON_AddItemToObject(t, "data_offsets", offs);
        cJSON_AddItemToObject(root, name, t);
        offset += ok ? bytes : 0;
    }
    char *header = ok && (count || !part) ? cJSON_PrintUnformatted(root) : NULL;
    FILE *f = header ? fopen(path, "wb") : NULL;
    if (f) {
        uint64_t len = strlen(header);
        uint8_t le[8];
        for (int i = 0; i < 8; i++)
            le[i] = (uint8_t)(len >> (8 * i));
        fwrite(le, 1, 8, f);
        fwrite(header, 1, len, f);
        if (offset && (fseek(f, (long)offset - 1, SEEK_CUR) != 0 || fputc(0, f) == EOF))
            abort();
        if (fclose(f) != 0)
            abort();
    }
    free(header);
    free(copy);
    cJSON_Delete(root);
    return f != NULL;
}

static void use_weight(void *user, const char *name, int ndim, const int64_t *shape)
{
    char err[DIFFUSE_ERROR_SIZE];
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (n <= ((int64_t)1 << 20))
        diffuse_weights_get(user, name, ndim, shape, err);
}

/* The folder the "diffusers" input describes, in path (made afresh). */
static void make_folder(const char *text, char *path)
{
    static const char *const parts[] = {"unet", "vae", "text_encoder", "text_encoder_2"};
    char file[4200], prefix[32];
    snprintf(path, 4096, "%s/model", fuzz_dir());
    mkdir(path, 0700);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(file, sizeof file, "%s/%s", path, parts[i]);
        mkdir(file, 0700);
        snprintf(file, sizeof file, "%s/%s/diffusion_pytorch_model.safetensors", path, parts[i]);
        snprintf(prefix, sizeof prefix, "%s/", parts[i]);
        if (!make_file(text, prefix, file))
            unlink(file); /* a part it lacks */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), path[4096], err[DIFFUSE_ERROR_SIZE];
    memcpy(text, data, size);
    text[size] = 0;
    if (strncmp(text, "diffusers\n", 10) == 0) {
        make_folder(text, path);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", fuzz_dir());
        if (!make_file(text, NULL, path)) {
            free(text);
            return 0;
        }
    }
    diffuse_weights *w;
    err[0] = 0;
    if (diffuse_weights_open(path, &w, err) == DIFFUSE_OK) {
        diffuse_weights_each(w, "", use_weight, w);
        diffuse_weights_free(w);
    } else if (!err[0]) {
        abort();
    }
    err[0] = 0;
    if (diffuse_weights_open_taesd(path, &w, err) == DIFFUSE_OK)
        diffuse_weights_free(w);
    else if (!err[0])
        abort();
    diffuse_load_params p = diffuse_load_params_default();
    p.vocab_path = fuzz_tiny_vocab();
    p.threads = 1;
    diffuse_model *m;
    err[0] = 0;
    if (diffuse_model_open(path, &p, &m, err, sizeof err) == DIFFUSE_OK) {
        diffuse_model_info info;
        diffuse_model_get_info(m, &info);
        diffuse_model_free(m);
    } else if (!err[0] || m) {
        abort();
    }
    free(text);
    return 0;
}
