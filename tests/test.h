/* test.h: the tiny harness every tests/test_<module>.c uses.
 *
 * CHECK(cond, fmt, ...) counts one case; a failed case prints its message.
 * TEST_END() prints the closing "N passed, N failed" line and returns the
 * exit status. test_shared() finds ../shared (or $DIFFUSE_SHARED): when the
 * data is missing, a test fails under CI=true and otherwise skips, saying what
 * is missing. */
#ifndef DIFFUSE_TEST_H
#define DIFFUSE_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int test_passed, test_failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            test_passed++;                                                                         \
        } else {                                                                                   \
            test_failed++;                                                                         \
            fprintf(stdout, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stdout, __VA_ARGS__);                                                          \
            fputc('\n', stdout);                                                                   \
        }                                                                                          \
    } while (0)

#define TEST_END()                                                                                 \
    do {                                                                                           \
        printf("%d passed, %d failed\n", test_passed, test_failed);                                \
        return test_failed ? 1 : 0;                                                                \
    } while (0)

/* Path of a file under the shared folder, or NULL after counting a failure
 * (CI=true) or printing a skip notice. buf must hold 4096 bytes. */
static inline const char *test_shared(const char *rel, char *buf)
{
    const char *root = getenv("DIFFUSE_SHARED");
    struct stat st;
    snprintf(buf, 4096, "%s/%s", root ? root : "../shared", rel);
    if (stat(buf, &st) == 0)
        return buf;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0) {
        test_failed++;
        printf("FAIL missing shared data %s (CI=true)\n", buf);
    } else {
        printf("SKIP missing shared data %s\n", buf);
    }
    return NULL;
}

/* A whole file as a NUL-terminated string (malloc'd), or NULL. */
static inline char *test_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? (char *)malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = 0;
    fclose(f);
    return s;
}

/* A valid vocab.json (malloc'd) of the 512 byte symbols (ids 0..511, GPT-2's
 * byte-to-unicode map, then each with "</w>"), `extra` entries ("" or
 * "\"tok\": id, "), and the two specials (512, 513): with a merges.txt of
 * "#version: 0.2" alone, a tokenizer of one symbol per byte. */
static inline char *test_tiny_vocab(const char *extra)
{
    size_t cap = 65536, len = 0;
    char *s = (char *)malloc(cap);
    int id = 0;
    if (!s)
        return NULL;
    len += (size_t)snprintf(s + len, cap - len, "{");
    for (int end = 0; end < 2; end++)
        for (int b = 0; b < 256; b++) {
            int cp = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? b : -1;
            if (cp < 0) {
                int more = 0;
                for (int c = 0; c < b; c++)
                    more += !((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174);
                cp = 256 + more;
            }
            len += (size_t)snprintf(s + len, cap - len, "\"\\u%04x%s\": %d, ", cp,
                                    end ? "</w>" : "", id++);
        }
    snprintf(s + len, cap - len, "%s\"<|startoftext|>\": %d, \"<|endoftext|>\": %d}", extra, id,
             id + 1);
    return s;
}

/* max |a-b| / max |b| */
static inline double test_rel_err(const float *a, const float *b, size_t n, double *max_abs)
{
    double m = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m))
            m = d; /* NaN propagates */
        if (fabs(b[i]) > mb)
            mb = fabs(b[i]);
    }
    if (max_abs)
        *max_abs = m;
    return mb > 0 ? m / mb : m;
}

#endif
