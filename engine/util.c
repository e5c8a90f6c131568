/* util.c: error messages, the seeded random generator and the work arena:
 * the small pieces every other module of the engine leans on. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* ------------------------------------------------------------------ random */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void diffuse_rng_seed(diffuse_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
    rng->has_spare = 0;
    rng->spare = 0;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** (Blackman & Vigna 2018). */
uint64_t diffuse_rng_next(diffuse_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double diffuse_rng_uniform(diffuse_rng *rng)
{
    /* 53 random bits, shifted off zero so log() is finite */
    return ((double)(diffuse_rng_next(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Box-Muller: two uniforms give two independent N(0, 1) values. */
void diffuse_rng_normal(diffuse_rng *rng, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (rng->has_spare) {
            rng->has_spare = 0;
            out[i] = (float)rng->spare;
            continue;
        }
        double u1 = diffuse_rng_uniform(rng), u2 = diffuse_rng_uniform(rng);
        double r = sqrt(-2.0 * log(u1));
        out[i] = (float)(r * cos(2.0 * M_PI * u2));
        rng->spare = r * sin(2.0 * M_PI * u2);
        rng->has_spare = 1;
    }
}

/* ------------------------------------------------------------------ arena */

int diffuse_arena_init(diffuse_arena *a, size_t floats, char *err)
{
    a->used = a->peak = 0;
    a->overflow = false;
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

void diffuse_arena_free(diffuse_arena *a)
{
    free(a->base);
    a->base = NULL;
    a->cap = a->used = 0;
}

/* Blocks are rounded to 16 floats (64 bytes) so every buffer is aligned. */
float *diffuse_arena_push(diffuse_arena *a, size_t floats)
{
    size_t n = (floats + 15) & ~(size_t)15;
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
    cJSON *root = cJSON_ParseWithLength(buf, (size_t)size);
    free(buf);
    if (!root)
        diffuse_fail(err, "%s: malformed JSON", path);
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

size_t diffuse_rss_now(void) { return proc_status_kb("VmRSS:"); }

size_t diffuse_rss_peak(void) { return proc_status_kb("VmHWM:"); }

void diffuse_rss_peak_reset(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* "5": peak RSS := RSS now */
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}
