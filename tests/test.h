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

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            test_passed++;                                                 \
        } else {                                                           \
            test_failed++;                                                 \
            fprintf(stdout, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stdout, __VA_ARGS__);                                  \
            fputc('\n', stdout);                                           \
        }                                                                  \
    } while (0)

#define TEST_END()                                                         \
    do {                                                                   \
        printf("%d passed, %d failed\n", test_passed, test_failed);        \
        return test_failed ? 1 : 0;                                        \
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

/* max |a-b| / max |b| */
static inline double test_rel_err(const float *a, const float *b, size_t n, double *max_abs)
{
    double m = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    if (max_abs) *max_abs = m;
    return mb > 0 ? m / mb : m;
}

#endif
