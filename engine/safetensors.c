/* safetensors.c: a strict reader for the .safetensors format.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON mapping each
 * tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets relative
 * to the byte after the header), then the data. The whole file is mapped
 * read-only; tensors point into the mapping. Nothing read from the file is
 * trusted: sizes are bounded and every product is overflow-checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>
#include <utf8proc.h>

#include "internal.h"

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's own bound */

typedef struct {
    const char *name;
    int size;
    diffuse_dtype dtype;
} st_dtype_info;

static const st_dtype_info st_dtypes[] = {
    {"F32", 4, DIFFUSE_DTYPE_F32},       {"F16", 2, DIFFUSE_DTYPE_F16},
    {"BF16", 2, DIFFUSE_DTYPE_BF16},     {"I32", 4, DIFFUSE_DTYPE_I32},
    {"F64", 8, DIFFUSE_DTYPE_OTHER},     {"I64", 8, DIFFUSE_DTYPE_OTHER},
    {"U64", 8, DIFFUSE_DTYPE_OTHER},     {"U32", 4, DIFFUSE_DTYPE_OTHER},
    {"I16", 2, DIFFUSE_DTYPE_OTHER},     {"U16", 2, DIFFUSE_DTYPE_OTHER},
    {"I8", 1, DIFFUSE_DTYPE_OTHER},      {"U8", 1, DIFFUSE_DTYPE_OTHER},
    {"BOOL", 1, DIFFUSE_DTYPE_OTHER},    {"F8_E4M3", 1, DIFFUSE_DTYPE_OTHER},
    {"F8_E5M2", 1, DIFFUSE_DTYPE_OTHER},
};

static const st_dtype_info *st_dtype_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0)
            return &st_dtypes[i];
    return NULL;
}

static bool valid_utf8(const char *s)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t len = (utf8proc_ssize_t)strlen(s);
    while (len > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p, len, &cp);
        if (n <= 0)
            return false;
        p += n;
        len -= n;
    }
    return true;
}

/* Reads one number that must be an exact non-negative integer below 2^53. */
static bool json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return false;
    double v = item->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != (double)(uint64_t)v)
        return false;
    *out = (uint64_t)v;
    return true;
}

static int st_parse_shape(diffuse_st_tensor *t, const cJSON *shape, int elsize, char *err)
{
    if (!cJSON_IsArray(shape))
        return diffuse_fail(err, "tensor '%s': shape is not a list", t->name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > DIFFUSE_MAX_DIMS)
        return diffuse_fail(err, "tensor '%s': %d dimensions (at most %d)", t->name, ndim,
                            DIFFUSE_MAX_DIMS);
    /* span: the product with zero dimensions counted as 1, so that the limit
     * does not hang on the order of the dimensions ([0, 2^40, 2^40] is as
     * absurd as [2^40, 2^40, 0]) and every partial product of a shape that
     * passes fits in int64 */
    uint64_t span = 1, bytes;
    bool empty = false;
    const cJSON *d;
    int i = 0;
    cJSON_ArrayForEach(d, shape)
    {
        uint64_t v;
        if (!json_uint(d, &v))
            return diffuse_fail(err, "tensor '%s': dimension %d is not a size", t->name, i);
        if (__builtin_mul_overflow(span, v ? v : 1, &span) || span > (uint64_t)INT64_MAX / 8)
            return diffuse_fail(err, "tensor '%s': shape overflows", t->name);
        empty = empty || v == 0;
        t->shape[i++] = (int64_t)v;
    }
    const uint64_t numel = empty ? 0 : span;
    if (__builtin_mul_overflow(numel, (uint64_t)elsize, &bytes))
        return diffuse_fail(err, "tensor '%s': shape overflows", t->name);
    t->ndim = ndim;
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)bytes;
    return 0;
}

static int st_parse_tensor(diffuse_st_tensor *t, const cJSON *item, const uint8_t *data,
                           uint64_t data_size, char *err)
{
    if (!cJSON_IsObject(item))
        return diffuse_fail(err, "tensor '%s': entry is not an object", t->name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    const st_dtype_info *info = cJSON_IsString(dtype) ? st_dtype_lookup(dtype->valuestring) : NULL;
    if (!info)
        return diffuse_fail(err, "tensor '%s': unknown dtype", t->name);
    t->dtype = info->dtype;
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", info->name);
    if (st_parse_shape(t, cJSON_GetObjectItemCaseSensitive(item, "shape"), info->size, err))
        return -1;
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &end))
        return diffuse_fail(err, "tensor '%s': data_offsets is not [begin, end]", t->name);
    if (begin > end || end > data_size)
        return diffuse_fail(
            err, "tensor '%s': data [%llu, %llu) lies outside the file's %llu data bytes", t->name,
            (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
    if (end - begin != t->nbytes)
        return diffuse_fail(err, "tensor '%s': %llu data bytes, but shape and dtype %s need %zu",
                            t->name, (unsigned long long)(end - begin), t->dtype_name, t->nbytes);
    t->data = data + begin;
    return 0;
}

/* By offset; at one offset, empty tensors first. */
static int cmp_by_offset(const void *a, const void *b)
{
    const diffuse_st_tensor *x = a, *y = b;
    if (x->data != y->data)
        return (x->data > y->data) - (x->data < y->data);
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const diffuse_st_tensor *)a)->name, ((const diffuse_st_tensor *)b)->name);
}

/* As the format requires, each tensor starts where the one before it ends (no
 * overlap, no gap); names must be unique. */
static int st_check_layout(diffuse_st_file *f, const uint8_t *data, char *err)
{
    qsort(f->tensors, f->count, sizeof *f->tensors, cmp_by_offset);
    const uint8_t *next = data;
    for (int i = 0; i < f->count; i++) {
        const diffuse_st_tensor *t = &f->tensors[i];
        if (t->data < next)
            return diffuse_fail(err, "tensors '%s' and '%s' overlap", f->tensors[i - 1].name,
                                t->name);
        if (t->data > next)
            return diffuse_fail(
                err, "tensor '%s' is not contiguous with the data before it (%zu unused bytes)",
                t->name, (size_t)(t->data - next));
        next = t->data + t->nbytes;
    }
    qsort(f->tensors, f->count, sizeof *f->tensors, cmp_by_name);
    for (int i = 1; i < f->count; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return diffuse_fail(err, "tensor '%s' appears twice", f->tensors[i].name);
    return 0;
}

static int st_parse_header(diffuse_st_file *f, const char *json, size_t len, char *err)
{
    const uint8_t *data = (const uint8_t *)f->map + 8 + len;
    uint64_t data_size = f->map_size - 8 - len;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return diffuse_fail(err, "%s: the header is not a JSON object", f->path);
    }
    f->tensors = calloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *f->tensors);
    int rc = f->tensors ? 0 : diffuse_fail(err, "out of memory");
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        if (rc)
            break;
        if (!item->string || !valid_utf8(item->string)) {
            rc = diffuse_fail(err, "%s: a tensor name is not valid UTF-8", f->path);
            break;
        }
        if (strcmp(item->string, "__metadata__") == 0)
            continue;
        diffuse_st_tensor *t = &f->tensors[f->count++];
        t->name = strdup(item->string);
        if (!t->name)
            rc = diffuse_fail(err, "out of memory");
        else
            rc = st_parse_tensor(t, item, data, data_size, err);
    }
    cJSON_Delete(root);
    if (rc == 0)
        rc = st_check_layout(f, data, err);
    return rc;
}

static diffuse_status st_map(diffuse_st_file *f, char *err)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return diffuse_fail(err, "%s: %s", f->path, strerror(errno)), DIFFUSE_ERR_IO;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return diffuse_fail(err, "%s: not a regular file", f->path), DIFFUSE_ERR_IO;
    }
    if (st.st_size < 8) {
        close(fd);
        return diffuse_fail(err, "%s: truncated (%lld bytes, no header)", f->path,
                            (long long)st.st_size),
               DIFFUSE_ERR_FORMAT;
    }
    f->map_size = (size_t)st.st_size;
    f->map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return diffuse_fail(err, "%s: cannot map: %s", f->path, strerror(errno)), DIFFUSE_ERR_IO;
    }
    return DIFFUSE_OK;
}

diffuse_status diffuse_st_open(const char *path, diffuse_st_file **out, char *err)
{
    *out = NULL;
    diffuse_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return diffuse_fail(err, "out of memory"), DIFFUSE_ERR_MEMORY;
    }
    diffuse_status st = st_map(f, err);
    if (st != DIFFUSE_OK) {
        diffuse_st_close(f);
        return st;
    }
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = (len << 8) | ((const uint8_t *)f->map)[i];
    int rc;
    if (len > ST_MAX_HEADER)
        rc = diffuse_fail(err,
                          "%s: header length %llu is absurd (limit %u): not a safetensors file?",
                          path, (unsigned long long)len, ST_MAX_HEADER);
    else if (len > f->map_size - 8)
        rc = diffuse_fail(
            err, "%s: header of %llu bytes is longer than the file (%zu bytes): truncated?", path,
            (unsigned long long)len, f->map_size);
    else
        rc = st_parse_header(f, (const char *)f->map + 8, (size_t)len, err);
    if (rc && err && strncmp(err, path, strlen(path)) != 0) { /* name the file */
        char msg[DIFFUSE_ERROR_SIZE];
        snprintf(msg, sizeof msg, "%s", err);
        diffuse_fail(err, "%s: %s", path, msg);
    }
    if (rc) {
        diffuse_st_close(f);
        return DIFFUSE_ERR_FORMAT;
    }
    *out = f;
    return DIFFUSE_OK;
}

void diffuse_st_close(diffuse_st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->count; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    if (f->map)
        munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

const diffuse_st_tensor *diffuse_st_find(const diffuse_st_file *f, const char *name)
{
    diffuse_st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, f->count, sizeof *f->tensors, cmp_by_name);
}

/* IEEE half -> float, subnormals and inf/nan included. */
float diffuse_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while (!(mant & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float diffuse_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int diffuse_st_to_f32(const diffuse_st_tensor *t, float *dst, char *err)
{
    if (t->dtype != DIFFUSE_DTYPE_F32 && t->dtype != DIFFUSE_DTYPE_F16 &&
        t->dtype != DIFFUSE_DTYPE_BF16)
        return diffuse_fail(err, "tensor '%s': dtype %s is not a float type", t->name,
                            t->dtype_name);
    diffuse_op_widen(dst, t->data, t->dtype, (size_t)t->numel);
    return 0;
}
