/* test_safetensors.c: the safetensors reader against the fixtures that
 * tests/fixtures/make_fixtures.py writes: every malformed file is refused with a
 * message that says what is wrong (and names the file), never a crash; the
 * valid file's tensors are found and converted exactly; the half and bfloat16
 * conversions agree bit for bit with a plain reference on all 65536 inputs. */
#include <stdint.h>
#include <unistd.h>

#include "../engine/internal.h"
#include "test.h"

#define FIXTURES "tests/fixtures/"

/* ------------------------------------------------------------------ references */

/* IEEE binary16: (-1)^s 2^(e-15) 1.m, or 2^-14 0.m when e == 0. */
static float f16_reference(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -24);
    else
        v = ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v);
}

/* bfloat16: (-1)^s 2^(e-127) 1.m, or 2^-126 0.m when e == 0 (7 mantissa bits). */
static float bf16_reference(uint16_t h)
{
    int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -133);
    else
        v = ldexp(128 + m, e - 134);
    return (float)(s ? -v : v);
}

static uint32_t bits_of(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

/* Same bits, or both NaN. */
static bool same_float(float got, float want)
{
    return isnan(want) ? isnan(got) : bits_of(got) == bits_of(want);
}

static void test_half_conversions(void)
{
    int bad16 = 0, badbf = 0, first16 = -1, firstbf = -1;
    for (uint32_t h = 0; h < 65536; h++) {
        if (!same_float(diffuse_f16_to_f32((uint16_t)h), f16_reference((uint16_t)h))) {
            if (!bad16++)
                first16 = (int)h;
        }
        if (!same_float(diffuse_bf16_to_f32((uint16_t)h), bf16_reference((uint16_t)h))) {
            if (!badbf++)
                firstbf = (int)h;
        }
    }
    CHECK(bad16 == 0, "f16: %d of 65536 values differ, first 0x%04x -> %a (want %a)", bad16,
          first16, first16 >= 0 ? diffuse_f16_to_f32((uint16_t)first16) : 0.0,
          first16 >= 0 ? f16_reference((uint16_t)first16) : 0.0);
    CHECK(badbf == 0, "bf16: %d of 65536 values differ, first 0x%04x", badbf, firstbf);
    /* a NaN stays a quiet NaN of the same sign */
    CHECK(isnan(diffuse_f16_to_f32(0xfe00)) && signbit(diffuse_f16_to_f32(0xfe00)),
          "f16 0xfe00 should be a negative NaN");
}

/* ------------------------------------------------------------------ malformed files */

typedef struct bad_case {
    const char *file;
    const char *expect; /* substring of the message */
} bad_case;

static const bad_case bad_cases[] = {
    {"bad_empty.safetensors", "truncated"},
    {"bad_short.safetensors", "truncated"},
    {"bad_header_longer_than_file.safetensors", "longer than the file"},
    {"bad_header_absurd.safetensors", "absurd"},
    {"bad_header_zero.safetensors", "JSON"},
    {"bad_header_not_json.safetensors", "JSON"},
    {"bad_header_not_object.safetensors", "not a JSON object"},
    {"bad_entry_not_object.safetensors", "not an object"},
    {"bad_key_not_utf8.safetensors", "UTF-8"},
    {"bad_key_overlong_utf8.safetensors", "UTF-8"},
    {"bad_dtype_unknown.safetensors", "unknown dtype"},
    {"bad_dtype_missing.safetensors", "dtype"},
    {"bad_shape_negative.safetensors", "not a size"},
    {"bad_shape_fraction.safetensors", "not a size"},
    {"bad_shape_string.safetensors", "not a size"},
    {"bad_shape_too_many_dims.safetensors", "dimensions"},
    {"bad_shape_overflow.safetensors", "overflows"},
    {"bad_shape_overflow_bytes.safetensors", "overflows"},
    {"bad_shape_overflow_empty.safetensors", "overflows"},
    {"bad_wrong_dtype_size.safetensors", "need 16"},
    {"bad_truncated_data.safetensors", "outside the file"},
    {"bad_offsets_reversed.safetensors", "outside the file"},
    {"bad_offsets_not_pair.safetensors", "data_offsets"},
    {"bad_overlap.safetensors", "overlap"},
    {"bad_gap.safetensors", "contiguous"},
    {"bad_duplicate_key.safetensors", "appears twice"},
};

static void test_malformed(void)
{
    char err[DIFFUSE_ERROR_SIZE];
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        char path[512];
        snprintf(path, sizeof path, FIXTURES "%s", c->file);
        if (access(path, R_OK) != 0) {
            CHECK(0, "%s missing: run python3 tests/fixtures/make_fixtures.py", path);
            continue;
        }
        diffuse_st_file *f = (diffuse_st_file *)1;
        strcpy(err, "(no message)");
        diffuse_status rc = diffuse_st_open(path, &f, err);
        CHECK(rc == DIFFUSE_ERR_FORMAT && f == NULL, "%s: opened (status %d) but is malformed",
              c->file, rc);
        CHECK(strstr(err, c->expect) != NULL, "%s: message lacks \"%s\": %s", c->file, c->expect,
              err);
        /* in a diffusers folder three files are read: the message must say which */
        CHECK(strstr(err, path) != NULL, "%s: message does not name the file: %s", c->file, err);
        if (rc == 0)
            diffuse_st_close(f);
        /* a NULL err buffer is allowed */
        rc = diffuse_st_open(path, &f, NULL);
        CHECK(rc == DIFFUSE_ERR_FORMAT && f == NULL, "%s: opened with err NULL", c->file);
        if (rc == 0)
            diffuse_st_close(f);
    }
}

static void test_not_files(void)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_st_file *f = NULL;
    const char *missing = FIXTURES "does-not-exist.safetensors";
    CHECK(diffuse_st_open(missing, &f, err) == DIFFUSE_ERR_IO && !f, "a missing file opened");
    CHECK(strstr(err, missing) != NULL, "missing file: message does not name it: %s", err);
    CHECK(diffuse_st_open("tests/fixtures", &f, err) == DIFFUSE_ERR_IO && !f, "a directory opened");
    CHECK(strstr(err, "tests/fixtures") != NULL, "directory: message does not name it: %s", err);
    CHECK(diffuse_st_open("/dev/null", &f, err) == DIFFUSE_ERR_IO && !f, "/dev/null opened");
}

/* ------------------------------------------------------------------ the valid file */

/* Values as make_fixtures.py writes them. */
static const float want_f32[6] = {1.5f, -2.0f, 0.0f, -0.0f, 65504.0f, 1e-40f};
static const uint16_t f16_bits[10] = {0x3C00, 0xC000, 0x0001, 0x03FF, 0x0400,
                                      0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x8000};
static const uint16_t bf16_bits[6] = {0x3F80, 0xC040, 0x0001, 0x7F80, 0x7FC0, 0x8000};

static void check_tensor(const diffuse_st_file *f, const char *name, diffuse_dtype dtype,
                         const char *dtype_name, int ndim, const int64_t *shape, int64_t numel,
                         size_t nbytes)
{
    const diffuse_st_tensor *t = diffuse_st_find(f, name);
    CHECK(t != NULL, "tensor %s not found", name);
    if (!t)
        return;
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    CHECK(strcmp(t->name, name) == 0, "%s: name %s", name, t->name);
    CHECK(t->dtype == dtype && strcmp(t->dtype_name, dtype_name) == 0, "%s: dtype %s", name,
          t->dtype_name);
    CHECK(same, "%s: ndim %d shape [%lld, ...]", name, t->ndim, (long long)t->shape[0]);
    CHECK(t->numel == numel && t->nbytes == nbytes, "%s: numel %lld nbytes %zu", name,
          (long long)t->numel, t->nbytes);
    CHECK(t->data >= (const uint8_t *)f->map + 8 &&
              t->data + t->nbytes <= (const uint8_t *)f->map + f->map_size,
          "%s: data outside the mapping", name);
}

static void test_valid(void)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_st_file *f = NULL;
    int rc = diffuse_st_open(FIXTURES "ok_valid.safetensors", &f, err);
    CHECK(rc == 0 && f, "ok_valid.safetensors: %s", err);
    if (!f)
        return;
    CHECK(f->count == 5, "count %d, want 5 (metadata is not a tensor)", f->count);
    check_tensor(f, "weight.f32", DIFFUSE_DTYPE_F32, "F32", 2, (int64_t[]){2, 3}, 6, 24);
    check_tensor(f, "weight.f16", DIFFUSE_DTYPE_F16, "F16", 2, (int64_t[]){2, 5}, 10, 20);
    check_tensor(f, "weight.bf16", DIFFUSE_DTYPE_BF16, "BF16", 1, (int64_t[]){6}, 6, 12);
    check_tensor(f, "position_ids", DIFFUSE_DTYPE_OTHER, "I64", 2, (int64_t[]){1, 3}, 3, 24);
    check_tensor(f, "scalar", DIFFUSE_DTYPE_F32, "F32", 0, NULL, 1, 4);
    CHECK(diffuse_st_find(f, "__metadata__") == NULL, "__metadata__ found as a tensor");
    CHECK(diffuse_st_find(f, "weight") == NULL, "prefix 'weight' found");
    CHECK(diffuse_st_find(f, "weight.f32x") == NULL, "'weight.f32x' found");
    CHECK(diffuse_st_find(f, "") == NULL, "empty name found");

    float out[16];
    const diffuse_st_tensor *t = diffuse_st_find(f, "weight.f32");
    if (t && diffuse_st_to_f32(t, out, err) == 0) {
        bool ok = true;
        for (int i = 0; i < 6; i++)
            ok = ok && same_float(out[i], want_f32[i]);
        CHECK(ok, "F32 values differ");
    } else {
        CHECK(0, "F32 to_f32: %s", err);
    }
    t = diffuse_st_find(f, "weight.f16");
    if (t && diffuse_st_to_f32(t, out, err) == 0) {
        const float want[10] = {1.0f,     -2.0f,    0x1p-24f,  0x3ffp-24f, 0x1p-14f,
                                65504.0f, INFINITY, -INFINITY, NAN,        -0.0f};
        for (int i = 0; i < 10; i++)
            CHECK(same_float(out[i], want[i]) && same_float(out[i], f16_reference(f16_bits[i])),
                  "F16[%d] (0x%04x) = %a, want %a", i, f16_bits[i], out[i], want[i]);
    } else {
        CHECK(0, "F16 to_f32: %s", err);
    }
    t = diffuse_st_find(f, "weight.bf16");
    if (t && diffuse_st_to_f32(t, out, err) == 0) {
        const float want[6] = {1.0f, -3.0f, 0x1p-133f, INFINITY, NAN, -0.0f};
        for (int i = 0; i < 6; i++)
            CHECK(same_float(out[i], want[i]) && same_float(out[i], bf16_reference(bf16_bits[i])),
                  "BF16[%d] (0x%04x) = %a, want %a", i, bf16_bits[i], out[i], want[i]);
    } else {
        CHECK(0, "BF16 to_f32: %s", err);
    }
    t = diffuse_st_find(f, "scalar");
    CHECK(t && diffuse_st_to_f32(t, out, err) == 0 && out[0] == 7.0f, "scalar: %s", err);
    t = diffuse_st_find(f, "position_ids");
    if (t) {
        int64_t ids[3];
        memcpy(ids, t->data, sizeof ids);
        CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == -7, "I64 values");
        err[0] = 0;
        CHECK(diffuse_st_to_f32(t, out, err) == -1 && strstr(err, "position_ids"),
              "I64 to_f32 should fail naming the tensor: %s", err);
    }
    diffuse_st_close(f);
    diffuse_st_close(NULL);
}

static void test_other_valid(void)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_st_file *f = NULL;
    /* an empty tensor sharing its offset with the next one is legal */
    int rc = diffuse_st_open(FIXTURES "ok_zero_size.safetensors", &f, err);
    CHECK(rc == 0, "ok_zero_size.safetensors: %s", err);
    if (f) {
        const diffuse_st_tensor *t = diffuse_st_find(f, "a_empty");
        CHECK(t && t->numel == 0 && t->nbytes == 0 && t->ndim == 2, "empty tensor");
        CHECK(diffuse_st_find(f, "b") != NULL, "tensor b");
        diffuse_st_close(f);
    }
    f = NULL;
    rc = diffuse_st_open(FIXTURES "ok_no_model.safetensors", &f, err);
    CHECK(rc == 0 && f && f->count == 1 && diffuse_st_find(f, "foo"), "ok_no_model: %s", err);
    diffuse_st_close(f);
}

/* ------------------------------------------------------------------ damaged copies */

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    uint8_t *buf = malloc(4096);
    *size = buf ? fread(buf, 1, 4096, fp) : 0;
    fclose(fp);
    return buf;
}

static bool write_all(const char *path, const uint8_t *data, size_t size)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return false;
    bool ok = fwrite(data, 1, size, fp) == size;
    return fclose(fp) == 0 && ok;
}

/* Every truncation of the valid file is refused; every single-byte corruption
 * either opens or is refused with a message, without a crash (run under
 * ASan/valgrind for the full effect). */
static void test_damaged(void)
{
    size_t size = 0;
    uint8_t *orig = read_all(FIXTURES "ok_valid.safetensors", &size);
    char tmp[] = "/tmp/diffuse-st-XXXXXX";
    int fd = mkstemp(tmp);
    CHECK(orig && size > 8 && fd >= 0, "cannot set up damaged copies");
    if (!orig || size <= 8 || fd < 0) {
        free(orig);
        return;
    }
    close(fd);
    char err[DIFFUSE_ERROR_SIZE];
    int opened = 0, silent = 0;
    for (size_t n = 0; n < size; n++) {
        diffuse_st_file *f = NULL;
        write_all(tmp, orig, n);
        err[0] = 0;
        if (diffuse_st_open(tmp, &f, err) == 0) {
            opened++;
            diffuse_st_close(f);
        } else if (!err[0]) {
            silent++;
        }
    }
    CHECK(opened == 0, "%d truncated copies of ok_valid opened", opened);
    CHECK(silent == 0, "%d truncated copies refused without a message", silent);
    uint8_t *copy = malloc(size);
    const uint8_t flips[] = {0xff, 0x01, 0x80, '"', '}', '-', '9', 0};
    silent = 0;
    for (size_t i = 0; copy && i < size; i++)
        for (size_t j = 0; j < sizeof flips; j++) {
            memcpy(copy, orig, size);
            copy[i] = j == 0 ? copy[i] ^ 0xff : flips[j];
            write_all(tmp, copy, size);
            diffuse_st_file *f = NULL;
            err[0] = 0;
            if (diffuse_st_open(tmp, &f, err) == 0) {
                /* whatever opened must be self-consistent */
                for (int k = 0; k < f->count; k++) {
                    const diffuse_st_tensor *t = &f->tensors[k];
                    if (t->data < (const uint8_t *)f->map ||
                        t->data + t->nbytes > (const uint8_t *)f->map + f->map_size)
                        silent++;
                    if (t->dtype <= DIFFUSE_DTYPE_BF16 && t->numel <= 16) {
                        float out[16];
                        diffuse_st_to_f32(t, out, err);
                    }
                }
                diffuse_st_close(f);
            } else if (!err[0]) {
                silent++;
            }
        }
    CHECK(silent == 0, "%d corrupted copies refused without a message or opened inconsistent",
          silent);
    unlink(tmp);
    free(copy);
    free(orig);
}

int main(void)
{
    test_half_conversions();
    test_malformed();
    test_not_files();
    test_valid();
    test_other_valid();
    test_damaged();
    TEST_END();
}
