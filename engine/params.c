/* params.c: the "parameters" text Stable Diffusion tools store in a PNG,
 * written and read back (AUTOMATIC1111's format, which ComfyUI readers and
 * civitai also read):
 *
 *   <prompt, one or more lines>
 *   Negative prompt: <one or more lines>
 *   Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1,
 *   Size: 512x512, Model: name, Denoising strength: 0.75, Clip skip: 2, RNG: NV,
 *   Inpaint area: Only masked, Masked area padding: 32
 *
 * The last line is "key: value" pairs; a value holding ',', ':' or a newline
 * is a JSON string. A1111 finds that line by its pairs (three or more), and so
 * does the reader here; lines before "Negative prompt:" are the prompt.
 */
#include <ctype.h>
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "internal.h"

#define NEGATIVE "Negative prompt:"

/* ------------------------------------------------------------------ writing */

typedef struct text_buf {
    char *s;
    size_t n, cap;
    bool failed;
} text_buf;

static void put(text_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->failed || len < 0) {
        b->failed = true;
        return;
    }
    if (b->n + (size_t)len + 1 > b->cap) {
        size_t cap = (b->n + (size_t)len + 1) * 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->failed = true;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)len;
}

/* A1111's quote(): as it is, or a JSON string when it holds , : or a newline. */
static void put_value(text_buf *b, const char *key, const char *value)
{
    if (!strpbrk(value, ",:\n") && value[0] != '"') { /* a leading quote would read as JSON */
        put(b, ", %s: %s", key, value);
        return;
    }
    cJSON *str = cJSON_CreateString(value);
    char *quoted = str ? cJSON_PrintUnformatted(str) : NULL;
    if (quoted)
        put(b, ", %s: %s", key, quoted);
    else
        b->failed = true;
    cJSON_free(quoted);
    cJSON_Delete(str);
}

/* %g with a '.' whatever the locale's decimal point (buf: 32 bytes). */
static const char *number(char *buf, float v)
{
    snprintf(buf, 32, "%g", v);
    const char *point = localeconv()->decimal_point;
    char *p = point && point[0] && point[0] != '.' ? strchr(buf, point[0]) : NULL;
    if (p)
        *p = '.';
    return buf;
}

char *diffuse_parameters_text(const diffuse_parameters *p)
{
    text_buf b = {0};
    put(&b, "%s\n" NEGATIVE " %s\nSteps: %d, Sampler: %s", p->prompt ? p->prompt : "",
        p->negative_prompt ? p->negative_prompt : "", p->steps,
        diffuse_sampler_label((diffuse_sampler)p->sampler));
    if (p->karras > 0)
        put(&b, ", Schedule type: Karras");
    char cfg[32], strength[32];
    put(&b, ", CFG scale: %s, Seed: %llu, Size: %dx%d", number(cfg, p->guidance),
        (unsigned long long)p->seed, p->width, p->height);
    if (p->model)
        put_value(&b, "Model", p->model);
    if (p->strength > 0)
        put(&b, ", Denoising strength: %s", number(strength, p->strength));
    if (p->clip_skip > 1)
        put(&b, ", Clip skip: %d", p->clip_skip);
    const diffuse_size_cond *s = &p->size_cond; /* SDXL's, where not the defaults */
    const int ow = s->original_width ? s->original_width : p->width,
              oh = s->original_height ? s->original_height : p->height,
              tw = s->target_width ? s->target_width : p->width,
              th = s->target_height ? s->target_height : p->height;
    if (ow != p->width || oh != p->height)
        put(&b, ", Original size: %dx%d", ow, oh);
    if (s->crop_left || s->crop_top) {
        char crop[32];
        snprintf(crop, sizeof crop, "%d,%d", s->crop_left, s->crop_top);
        put_value(&b, "Crop offset", crop);
    }
    if (tw != p->width || th != p->height)
        put(&b, ", Target size: %dx%d", tw, th);
    if (p->rng >= 0)
        put(&b, ", RNG: %s", diffuse_rng_kind_a1111((diffuse_rng_kind)p->rng));
    if (p->loras && *p->loras)
        put_value(&b, "LoRA", p->loras);
    if (p->masked_content == DIFFUSE_MASKED_LATENT_NOISE)
        put(&b, ", Masked content: latent noise");
    if (p->inpaint_area == 1) /* A1111 writes both, only for Only masked */
        put(&b, ", Inpaint area: Only masked, Masked area padding: %d", p->padding);
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* ------------------------------------------------------------------ reading */

static bool key_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == ' ' || c == '-' || c == '/';
}

/* A1111's re_param at s: \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$).
 * Returns the bytes matched (0: none) and the key and raw value spans. */
static size_t param_at(const char *s, const char **key, size_t *klen, const char **val,
                       size_t *vlen)
{
    size_t i = 0;
    while (isspace((unsigned char)s[i]))
        i++;
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
        return 0;
    size_t k = i++;
    while (key_char(s[i]))
        i++;
    if (i - k < 2 || s[i] != ':')
        return 0;
    *key = s + k;
    *klen = i - k;
    i++;
    while (isspace((unsigned char)s[i]))
        i++;
    *val = s + i;
    if (s[i] == '"') { /* a JSON string, when a comma or the end follows it */
        size_t j = i + 1;
        while (s[j] && s[j] != '"')
            j += s[j] == '\\' && s[j + 1] ? 2 : 1;
        if (s[j] == '"' && j > i + 1 && (s[j + 1] == ',' || !s[j + 1])) {
            *vlen = j + 1 - i;
            return j + 1 + (s[j + 1] == ',');
        }
    }
    size_t j = i;
    while (s[j] && s[j] != ',')
        j++;
    *vlen = j - i;
    return j + (s[j] == ',');
}

static int count_params(const char *line)
{
    int n = 0;
    const char *k, *v;
    size_t kl, vl;
    for (size_t i = 0; line[i];) {
        size_t m = param_at(line + i, &k, &kl, &v, &vl);
        n += m > 0;
        i += m ? m : 1;
    }
    return n;
}

static char *dup_span(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* A value as A1111 reads it: a JSON string unquoted, else as written. */
static char *unquote(const char *v, size_t n)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        char *raw = dup_span(v, n);
        cJSON *j = raw ? cJSON_Parse(raw) : NULL;
        free(raw);
        if (cJSON_IsString(j)) {
            char *s = strdup(j->valuestring);
            cJSON_Delete(j);
            return s;
        }
        cJSON_Delete(j);
    }
    return dup_span(v, n);
}

/* Python's int() and float() take spaces around the number, as A1111 reads it. */
static bool only_space(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return !*s;
}

static bool read_long(const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (end == v || !only_space(end) || errno || x < lo || x > hi)
        return false;
    *out = x;
    return true;
}

/* "WxH" or "X,Y" with both parts in 0..hi. */
static bool read_pair(const char *v, char sep, int *a, int *b)
{
    long long x, y;
    const char *mid = strchr(v, sep);
    if (!mid)
        return false;
    char *first = dup_span(v, (size_t)(mid - v));
    bool ok = first && read_long(first, 0, DIFFUSE_MAX_SIZE_COND, &x) &&
              read_long(mid + 1, 0, DIFFUSE_MAX_SIZE_COND, &y);
    free(first);
    if (ok) {
        *a = (int)x;
        *b = (int)y;
    }
    return ok;
}

/* A finite number written with '.', whatever the locale. */
static bool read_float(const char *v, float *out)
{
    char buf[64];
    size_t n = strlen(v);
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, v, n + 1);
    struct lconv *lc = localeconv();
    char *dot = strchr(buf, '.');
    if (dot && lc->decimal_point[0] && lc->decimal_point[0] != '.')
        *dot = lc->decimal_point[0];
    char *end;
    errno = 0;
    double x = strtod(buf, &end);
    if (end == buf || !only_space(end) || errno || !isfinite(x))
        return false;
    *out = (float)x;
    return true;
}

/* What the last line said beyond single keys: A1111 1.9+ writes the Karras
 * schedule as its own key, older versions (and Diffuse before) as a sampler
 * suffix; "Automatic" is DPM++ 2M's own default, Karras. */
typedef struct parse_state {
    int schedule; /* -1 not given, 0 plain, 1 Karras, 2 automatic */
    bool version; /* an A1111 "Version" key: its RNG default is the GPU's */
} parse_state;

static bool read_sampler(diffuse_parameters *p, const char *v, parse_state *st)
{
    size_t n = strlen(v);
    char *name = strdup(v);
    if (!name)
        return false;
    if (n > 7 && !strcmp(v + n - 7, " Karras")) {
        name[n - 7] = 0;
        st->schedule = 1;
    }
    int s = diffuse_sampler_from_label(name);
    free(name);
    if (s < 0)
        return false;
    p->sampler = s;
    return true;
}

/* One "key: value" pair into p; false when the key or its value is not one
 * Diffuse uses. */
static bool read_param(diffuse_parameters *p, const char *key, const char *v, parse_state *st)
{
    long long x;
    if (!strcmp(key, "Steps") && read_long(v, 1, DIFFUSE_MAX_STEPS, &x))
        return p->steps = (int)x, true;
    if (!strcmp(key, "Sampler"))
        return read_sampler(p, v, st);
    if (!strcmp(key, "Schedule type") &&
        (!strcmp(v, "Karras") || !strcmp(v, "Automatic") || !strcmp(v, "Uniform")))
        return st->schedule = v[0] == 'K' ? 1 : v[0] == 'A' ? 2 : 0, true;
    float f;
    if (!strcmp(key, "CFG scale") && read_float(v, &f) && f >= 0)
        return p->guidance = f, true;
    if (!strcmp(key, "Seed")) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        if (end == v || !only_space(end) || errno || strchr(v, '-'))
            return false;
        p->seed = s;
        return p->has_seed = 1, true;
    }
    if (!strcmp(key, "Size"))
        return read_pair(v, 'x', &p->width, &p->height);
    if (!strcmp(key, "Model")) /* a key given twice: the last one counts */
        return free((char *)p->model), (p->model = strdup(v)) != NULL;
    if (!strcmp(key, "Denoising strength") && read_float(v, &f) && f > 0 && f <= 1)
        return p->strength = f, true;
    if (!strcmp(key, "Clip skip") && read_long(v, 1, DIFFUSE_MAX_CLIP_SKIP, &x))
        return p->clip_skip = (int)x, true;
    if (!strcmp(key, "RNG")) {
        diffuse_rng_kind k;
        return diffuse_rng_kind_parse(v, &k) == 0 ? (p->rng = (int)k, true) : false;
    }
    diffuse_size_cond *s = &p->size_cond;
    if (!strcmp(key, "Original size"))
        return read_pair(v, 'x', &s->original_width, &s->original_height);
    if (!strcmp(key, "Crop offset"))
        return read_pair(v, ',', &s->crop_left, &s->crop_top);
    if (!strcmp(key, "Target size"))
        return read_pair(v, 'x', &s->target_width, &s->target_height);
    if (!strcmp(key, "Masked content") && (!strcmp(v, "original") || !strcmp(v, "latent noise")))
        return p->masked_content =
                   v[0] == 'l' ? DIFFUSE_MASKED_LATENT_NOISE : DIFFUSE_MASKED_ORIGINAL,
               true;
    if (!strcmp(key, "Inpaint area") && (!strcmp(v, "Only masked") || !strcmp(v, "Whole picture")))
        return p->inpaint_area = v[0] == 'O', true;
    if (!strcmp(key, "Masked area padding") && read_long(v, 0, DIFFUSE_MAX_SIDE, &x))
        return p->padding = (int)x, true;
    if (!strcmp(key, "LoRA"))
        return free((char *)p->loras), (p->loras = strdup(v)) != NULL;
    if (!strcmp(key, "Version"))
        st->version = true;
    return false;
}

/* Appends "key: value" (as written) to p->extra. */
static int keep_extra(diffuse_parameters *p, const char *key, size_t klen, const char *val,
                      size_t vlen)
{
    size_t old = p->extra ? strlen(p->extra) : 0;
    char *e = realloc((char *)p->extra, old + klen + vlen + 5);
    if (!e)
        return -1;
    sprintf(e + old, "%s%.*s: %.*s", old ? ", " : "", (int)klen, key, (int)vlen, val);
    p->extra = e;
    return 0;
}

static int parse_last_line(diffuse_parameters *p, const char *line)
{
    parse_state st = {.schedule = -1};
    const char *k, *v;
    size_t kl, vl;
    for (size_t i = 0; line[i];) {
        size_t m = param_at(line + i, &k, &kl, &v, &vl);
        if (!m) {
            i++;
            continue;
        }
        i += m;
        char *key = dup_span(k, kl), *value = unquote(v, vl);
        bool used = key && value && read_param(p, key, value, &st);
        int rc = key && value && (used || keep_extra(p, k, kl, v, vl) == 0) ? 0 : -1;
        free(key);
        free(value);
        if (rc)
            return -1;
    }
    if (st.schedule >= 0)
        p->karras =
            st.schedule == 1 || (st.schedule == 2 && p->sampler == DIFFUSE_SAMPLER_DPMPP_2M);
    if (p->rng < 0 && st.version) /* A1111 leaves out its default, the GPU's generator */
        p->rng = DIFFUSE_RNG_PHILOX;
    return 0;
}

/* Appends line to *field, joined by a newline (A1111's multi-line prompts). */
static int add_line(const char **field, const char *line, size_t n)
{
    size_t old = *field ? strlen(*field) : 0;
    char *s = realloc((char *)*field, old + n + 2);
    if (!s)
        return -1;
    if (*field)
        s[old++] = '\n';
    memcpy(s + old, line, n);
    s[old + n] = 0;
    *field = s;
    return 0;
}

static size_t strip(const char **s, size_t n)
{
    while (n && isspace((unsigned char)**s))
        (*s)++, n--;
    while (n && isspace((unsigned char)(*s)[n - 1]))
        n--;
    return n;
}

static int parse_lines(diffuse_parameters *p, const char *text)
{
    size_t n = strlen(text);
    n = strip(&text, n);
    const char *end = text + n, *last = text;
    for (const char *q = text; q < end; q++) /* the last line */
        if (*q == '\n')
            last = q + 1;
    char *last_line = dup_span(last, (size_t)(end - last));
    if (!last_line)
        return -1;
    bool params = count_params(last_line) >= 3;
    const char *body_end = params ? last : end;
    bool negative = false;
    int rc = 0;
    for (const char *line = text; rc == 0 && line < body_end;) {
        const char *nl = memchr(line, '\n', (size_t)(body_end - line));
        const char *stop = nl ? nl : body_end, *s = line;
        size_t len = strip(&s, (size_t)(stop - line));
        if (len >= strlen(NEGATIVE) && !strncmp(s, NEGATIVE, strlen(NEGATIVE))) {
            negative = true;
            s += strlen(NEGATIVE);
            len = strip(&s, len - strlen(NEGATIVE));
        }
        rc = add_line(negative ? &p->negative_prompt : &p->prompt, s, len);
        line = stop + 1;
    }
    if (rc == 0 && params)
        rc = parse_last_line(p, last_line);
    free(last_line);
    return rc;
}

diffuse_status diffuse_parameters_parse(const char *text, diffuse_parameters *p, char *err,
                                        size_t err_size)
{
    *p = (diffuse_parameters){.sampler = -1,
                              .karras = -1,
                              .guidance = -1,
                              .rng = -1,
                              .masked_content = -1,
                              .inpaint_area = -1,
                              .padding = -1};
    if (!text || parse_lines(p, text) || (!p->prompt && !(p->prompt = strdup("")))) {
        diffuse_parameters_free(p);
        if (err && err_size)
            snprintf(err, err_size, "%s", text ? "out of memory" : "parameters: no text");
        return text ? DIFFUSE_ERR_MEMORY : DIFFUSE_ERR_ARGUMENT;
    }
    if (p->negative_prompt && !*p->negative_prompt) { /* empty reads as none */
        free((char *)p->negative_prompt);
        p->negative_prompt = NULL;
    }
    return DIFFUSE_OK;
}

void diffuse_parameters_free(diffuse_parameters *p)
{
    free((char *)p->prompt);
    free((char *)p->negative_prompt);
    free((char *)p->model);
    free((char *)p->extra);
    free((char *)p->loras);
    memset(p, 0, sizeof *p);
}
