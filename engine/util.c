/* util.c: error messages and the work arena: the small pieces every other
 * module of the engine leans on (the seeded generators are in rng.c). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"

int diffuse_fail(char *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, DIFFUSE_ERROR_SIZE, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ------------------------------------------------------------------ arena */

int diffuse_arena_init(diffuse_arena *a, size_t floats, char *err)
{
    a->used = a->peak = 0;
    a->overflow = a->dry = false;
    a->flops = a->layers = 0;
    a->cap = floats;
    a->base = NULL;
    if (floats && posix_memalign((void **)&a->base, 64, floats * sizeof(float)) != 0) {
        a->base = NULL;
        a->cap = 0;
        return diffuse_fail(err, "out of memory: %zu MiB of work memory",
                            floats * sizeof(float) >> 20);
    }
    return 0;
}

int diffuse_arena_dry(diffuse_arena *a)
{
    *a = (diffuse_arena){.dry = true};
    /* 256 GiB of address space, less where it cannot be had (valgrind) */
    for (size_t bytes = (size_t)1 << 38; bytes >= (size_t)1 << 30; bytes >>= 1) {
        void *p = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            a->base = p;
            a->cap = bytes / sizeof(float);
            return 0;
        }
    }
    return -1;
}

diffuse_plan diffuse_arena_plan(diffuse_arena *a, size_t inputs, int rc)
{
    diffuse_plan p = {.floats = DIFFUSE_PLAN_NONE};
    if (!rc) {
        p.floats = a->peak - inputs;
        p.flops = a->flops;
        p.layers = a->layers;
    }
    diffuse_arena_free(a);
    return p;
}

void diffuse_arena_free(diffuse_arena *a)
{
    if (a->dry && a->base)
        munmap(a->base, a->cap * sizeof(float));
    else
        free(a->base);
    a->base = NULL;
    a->cap = a->used = 0;
}

/* Blocks are rounded to 16 floats (64 bytes) so every buffer is aligned. */
float *diffuse_arena_push(diffuse_arena *a, size_t floats)
{
    size_t n = diffuse_arena_size(floats);
    if (n > a->cap - a->used) {
        a->overflow = true;
        return NULL;
    }
    float *p = a->base + a->used;
    a->used += n;
    if (a->used > a->peak)
        a->peak = a->used;
    return p;
}

/* ------------------------------------------------------------------ json */

#include <cJSON.h>

struct cJSON *diffuse_json_load(const char *path, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        diffuse_fail(err, "%s: cannot open", path);
        return NULL;
    }
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || size > (16L << 20) || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)size + 1)) || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        free(buf);
        diffuse_fail(err, "%s: cannot read (or larger than 16 MiB)", path);
        return NULL;
    }
    fclose(f);
    buf[size] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, (size_t)size, &end, 0);
    if (!root) { /* where it stopped making sense, as line:column */
        int line = 1, col = 1;
        for (const char *c = buf; end && c < end && c < buf + size; c++)
            *c == '\n' ? (line++, col = 1) : col++;
        diffuse_fail(err, "%s: not valid JSON (line %d, column %d)", path, line, col);
    }
    free(buf);
    return root;
}

/* ------------------------------------------------------------------ clocks, memory */

double diffuse_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A "Name:  N kB" line of /proc/self/status, in bytes; 0 when absent. */
static size_t proc_status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kb = 0;
    const size_t len = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, len) == 0 && sscanf(line + len, " %llu", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return (size_t)kb * 1024;
}

size_t diffuse_rss_now(void)
{
    return proc_status_kb("VmRSS:");
}

size_t diffuse_rss_peak(void)
{
    return proc_status_kb("VmHWM:");
}

void diffuse_rss_peak_reset(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* "5": peak RSS := RSS now */
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}
