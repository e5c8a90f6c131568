/* prompt.c: AUTOMATIC1111's prompt language, text -> chunks of 77 token ids
 * with a weight per token (modules/prompt_parser.py and sd_hijack_clip.py with
 * their default settings, re-implemented).
 *
 * Weights: "(a)" x1.1, "[a]" /1.1, "(a:1.3)" x1.3, nested brackets multiply,
 * brackets still open at the end apply to the end; "\(", "\)", "\[", "\]",
 * "\\" are the literal characters, a lone "\" vanishes. "BREAK" as a word of
 * its own (outside brackets) ends the chunk. Runs of equal weight are joined,
 * then every piece is tokenized on its own.
 *
 * Chunks: 75 ids each, with <start> before and <end> after, padded with <end>
 * (then, for tokenizers whose pad is not <end>, everything after the first
 * <end> becomes the pad id). When a chunk is full and a comma lies within its
 * last 20 ids, the ids after that comma move to the next chunk.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "internal.h"

#define PROMPT_CHUNK (DIFFUSE_MAX_TOKENS - 2) /* ids between <start> and <end> */
#define PROMPT_BACKTRACK 20                   /* A1111's comma_padding_backtrack */
#define PROMPT_ROUND 1.1                      /* "(a)" */

/* ------------------------------------------------------------------ parsing */

typedef struct prompt_parts {
    diffuse_prompt_part *v;
    int n, cap;
} prompt_parts;

static int parts_add(prompt_parts *p, const char *text, size_t len, double weight, char *err)
{
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 16;
        diffuse_prompt_part *v = realloc(p->v, (size_t)cap * sizeof *v);
        if (!v)
            return diffuse_fail(err, "out of memory");
        p->v = v;
        p->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return diffuse_fail(err, "out of memory");
    memcpy(copy, text, len);
    copy[len] = 0;
    p->v[p->n++] = (diffuse_prompt_part){copy, weight};
    return 0;
}

/* Python's re \s on ASCII, which is what prompts use around BREAK and weights. */
static bool is_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* Python's \w on the code point that starts or ends at s[i] (letters, digits, '_'). */
static bool word_at(const char *s, size_t len, size_t i, bool before)
{
    if (before) { /* step back to the start of the previous code point */
        if (i == 0)
            return false;
        do
            i--;
        while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80);
    } else if (i >= len) {
        return false;
    }
    utf8proc_int32_t c;
    if (utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &c) <= 0)
        return false;
    if (c == '_')
        return true;
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

/* re.split(r"\s*\bBREAK\b\s*", text): the pieces, with a BREAK marker
 * (weight -1) between them. */
static int add_text(prompt_parts *p, const char *s, size_t len, char *err)
{
    size_t start = 0;
    for (size_t i = 0; i + 5 <= len; i++) {
        if (memcmp(s + i, "BREAK", 5) || word_at(s, len, i, true) || word_at(s, len, i + 5, false))
            continue;
        size_t a = i, b = i + 5;
        while (a > start && is_space(s[a - 1]))
            a--;
        while (b < len && is_space(s[b]))
            b++;
        if (parts_add(p, s + start, a - start, 1.0, err) ||
            parts_add(p, "BREAK", 5, DIFFUSE_PROMPT_BREAK, err))
            return -1;
        start = b;
        i = b - 1;
    }
    return parts_add(p, s + start, len - start, 1.0, err);
}

static void multiply_from(prompt_parts *p, int start, double m)
{
    for (int i = start; i < p->n; i++)
        p->v[i].weight *= m;
}

/* ":" \s* ([+-]?[.\d]+) \s* ")" at s: its length (0: no match) and the number. */
static size_t weight_at(const char *s, size_t len, const char **num, size_t *num_len)
{
    size_t i = 1, j;
    while (i < len && is_space(s[i]))
        i++;
    j = i;
    if (j < len && (s[j] == '+' || s[j] == '-'))
        j++;
    size_t digits = j;
    while (j < len && (s[j] == '.' || isdigit((unsigned char)s[j])))
        j++;
    if (j == digits)
        return 0;
    *num = s + i;
    *num_len = j - i;
    while (j < len && is_space(s[j]))
        j++;
    return j < len && s[j] == ')' ? j + 1 : 0;
}

/* Python's float() on what the weight pattern matched ("1.", ".5", "+2"; not
 * "." or "1.2.3"). */
static int parse_weight(const char *num, size_t len, double *out, char *err)
{
    char buf[64];
    size_t dots = 0, digits = 0;
    for (size_t i = 0; i < len; i++) {
        dots += num[i] == '.';
        digits += isdigit((unsigned char)num[i]) != 0;
    }
    if (len >= sizeof buf || dots > 1 || digits == 0)
        return diffuse_fail(err,
                            "prompt: \"%.*s\" is not a weight (a number like 1.2 after "
                            "the colon)",
                            (int)(len < 40 ? len : 40), num);
    memcpy(buf, num, len);
    buf[len] = 0;
    *out = strtod(buf, NULL);
    return 0;
}

/* One match of A1111's re_attention at s[0..len): its length and what it does. */
static int parse_step(prompt_parts *p, const char *s, size_t len, int *round, int *nr, int *square,
                      int *ns, size_t *used, char *err)
{
    static const char specials[] = "\\()[]:";
    const char *num;
    size_t num_len, w;
    double weight = 1;
    *used = 1;
    if (s[0] == '\\') { /* \( \) \[ \] \\ are the character; a lone \ is nothing */
        bool escaped = len > 1 && strchr("()[]\\", s[1]);
        *used = escaped ? 2 : 1;
        return parts_add(p, s + 1, escaped ? 1 : 0, 1.0, err);
    }
    if (s[0] == '(' || s[0] == '[') {
        (s[0] == '(' ? round : square)[s[0] == '(' ? (*nr)++ : (*ns)++] = p->n;
        return 0;
    }
    if (s[0] == ':' && (w = weight_at(s, len, &num, &num_len))) {
        *used = w;
        if (*nr == 0)
            return add_text(p, s, w, err);
        if (parse_weight(num, num_len, &weight, err))
            return -1;
        multiply_from(p, round[--(*nr)], weight);
        return 0;
    }
    if (s[0] == ')' && *nr) {
        multiply_from(p, round[--(*nr)], PROMPT_ROUND);
        return 0;
    }
    if (s[0] == ']' && *ns) {
        multiply_from(p, square[--(*ns)], 1 / PROMPT_ROUND);
        return 0;
    }
    if (strchr(specials, s[0]))
        return add_text(p, s, 1, err);
    while (*used < len && !strchr(specials, s[*used]))
        (*used)++;
    return add_text(p, s, *used, err);
}

/* Joins neighbours of equal weight, as A1111 does before tokenizing. */
static int merge_equal(prompt_parts *p, char *err)
{
    int i = 0;
    while (i + 1 < p->n) {
        diffuse_prompt_part *a = &p->v[i], *b = &p->v[i + 1];
        if (a->weight != b->weight) {
            i++;
            continue;
        }
        size_t la = strlen(a->text), lb = strlen(b->text);
        char *t = realloc(a->text, la + lb + 1);
        if (!t)
            return diffuse_fail(err, "out of memory");
        memcpy(t + la, b->text, lb + 1);
        a->text = t;
        free(b->text);
        memmove(b, b + 1, (size_t)(p->n - i - 2) * sizeof *b);
        p->n--;
    }
    return 0;
}

int diffuse_prompt_parse(const char *text, diffuse_prompt_part **parts, int *n, char *err)
{
    const size_t len = strlen(text);
    prompt_parts p = {0};
    int *round = NULL, *square = NULL, nr = 0, ns = 0, rc = 0;
    *parts = NULL;
    *n = 0;
    if (len > DIFFUSE_MAX_PROMPT_BYTES)
        return diffuse_fail(err, "prompt: %zu bytes, the most is %d", len,
                            DIFFUSE_MAX_PROMPT_BYTES);
    if (!(round = malloc((len + 1) * sizeof *round)) ||
        !(square = malloc((len + 1) * sizeof *square)))
        rc = diffuse_fail(err, "out of memory");
    for (size_t i = 0, used; rc == 0 && i < len; i += used)
        rc = parse_step(&p, text + i, len - i, round, &nr, square, &ns, &used, err);
    for (int i = 0; rc == 0 && i < nr; i++) /* unclosed, in the order they opened */
        multiply_from(&p, round[i], PROMPT_ROUND);
    for (int i = 0; rc == 0 && i < ns; i++)
        multiply_from(&p, square[i], 1 / PROMPT_ROUND);
    if (rc == 0 && p.n == 0)
        rc = parts_add(&p, "", 0, 1.0, err);
    if (rc == 0)
        rc = merge_equal(&p, err);
    free(round);
    free(square);
    if (rc) {
        diffuse_prompt_parts_free(p.v, p.n);
        return -1;
    }
    *parts = p.v;
    *n = p.n;
    return 0;
}

void diffuse_prompt_parts_free(diffuse_prompt_part *parts, int n)
{
    for (int i = 0; parts && i < n; i++)
        free(parts[i].text);
    free(parts);
}

/* ------------------------------------------------------------------ chunks */

/* The chunk being filled: up to 75 ids and their weights. */
typedef struct chunk_fill {
    int32_t ids[PROMPT_CHUNK];
    float w[PROMPT_CHUNK];
    int len;
    int last_comma; /* index of the last comma in it, -1: none */
} chunk_fill;

/* Closes the chunk being filled: <start> ids <end> padding into out. */
static int chunk_close(diffuse_prompt_chunks *out, chunk_fill *c, int32_t bos, int32_t eos,
                       int32_t pad, char *err)
{
    const int t = DIFFUSE_MAX_TOKENS;
    if (out->count == DIFFUSE_MAX_PROMPT_CHUNKS)
        return diffuse_fail(err, "prompt: longer than %d chunks of %d tokens",
                            DIFFUSE_MAX_PROMPT_CHUNKS, PROMPT_CHUNK);
    int32_t *ids = out->ids + (size_t)out->count * t;
    float *w = out->weights + (size_t)out->count * t;
    ids[0] = bos;
    w[0] = 1.0f;
    for (int i = 0; i < PROMPT_CHUNK; i++) {
        ids[1 + i] = i < c->len ? c->ids[i] : i == c->len ? eos : pad;
        w[1 + i] = i < c->len ? c->w[i] : 1.0f;
    }
    ids[t - 1] = c->len == PROMPT_CHUNK ? eos : pad;
    w[t - 1] = 1.0f;
    out->count++;
    c->len = 0;
    c->last_comma = -1;
    return 0;
}

typedef struct chunk_ctx {
    diffuse_prompt_chunks *out;
    chunk_fill fill;
    int32_t bos, eos, pad, comma;
} chunk_ctx;

/* Adds one id of weight w, closing the chunk first when it is full (and moving
 * the ids after a comma in its last 20 to the next one). */
static int chunk_push(chunk_ctx *k, int32_t id, float w, char *err)
{
    chunk_fill *c = &k->fill;
    if (id == k->comma) {
        c->last_comma = c->len;
    } else if (c->len == PROMPT_CHUNK && c->last_comma >= 0 &&
               c->len - c->last_comma <= PROMPT_BACKTRACK) {
        const int from = c->last_comma + 1, moved = c->len - from;
        int32_t ids[PROMPT_CHUNK];
        float ws[PROMPT_CHUNK];
        memcpy(ids, c->ids + from, (size_t)moved * sizeof *ids);
        memcpy(ws, c->w + from, (size_t)moved * sizeof *ws);
        c->len = from;
        if (chunk_close(k->out, c, k->bos, k->eos, k->pad, err))
            return -1;
        memcpy(c->ids, ids, (size_t)moved * sizeof *ids);
        memcpy(c->w, ws, (size_t)moved * sizeof *ws);
        c->len = moved;
    }
    if (c->len == PROMPT_CHUNK && chunk_close(k->out, c, k->bos, k->eos, k->pad, err))
        return -1;
    c->ids[c->len] = id;
    c->w[c->len++] = w;
    return 0;
}

static int chunk_parts(const diffuse_tokenizer *tok, const diffuse_prompt_part *parts, int n,
                       chunk_ctx *k, char *err)
{
    for (int i = 0; i < n; i++) {
        if (parts[i].weight == DIFFUSE_PROMPT_BREAK && !strcmp(parts[i].text, "BREAK")) {
            if (chunk_close(k->out, &k->fill, k->bos, k->eos, k->pad, err))
                return -1;
            continue;
        }
        int32_t *ids;
        size_t m;
        if (diffuse_tokenizer_ids(tok, parts[i].text, k->pad, &ids, &m, err))
            return -1;
        int rc = 0;
        for (size_t j = 0; rc == 0 && j < m; j++)
            rc = chunk_push(k, ids[j], (float)parts[i].weight, err);
        free(ids);
        if (rc)
            return -1;
        if (parts[i].weight != 1.0)
            k->out->weighted = true;
    }
    if (k->fill.len || k->out->count == 0)
        return chunk_close(k->out, &k->fill, k->bos, k->eos, k->pad, err);
    return 0;
}

int diffuse_prompt_chunk(const diffuse_tokenizer *tok, const char *text, int32_t pad_id,
                         diffuse_prompt_chunks *out, char *err)
{
    diffuse_prompt_part *parts;
    int n;
    memset(out, 0, sizeof *out);
    if (diffuse_prompt_parse(text, &parts, &n, err))
        return -1;
    const size_t cap = (size_t)DIFFUSE_MAX_PROMPT_CHUNKS * DIFFUSE_MAX_TOKENS;
    out->ids = malloc(cap * sizeof *out->ids);
    out->weights = malloc(cap * sizeof *out->weights);
    chunk_ctx k = {.out = out,
                   .fill = {.last_comma = -1},
                   .bos = diffuse_tokenizer_bos(tok),
                   .eos = diffuse_tokenizer_eos(tok),
                   .pad = pad_id,
                   .comma = diffuse_tokenizer_id(tok, ",</w>")};
    int rc = out->ids && out->weights ? chunk_parts(tok, parts, n, &k, err)
                                      : diffuse_fail(err, "out of memory");
    diffuse_prompt_parts_free(parts, n);
    if (rc)
        diffuse_prompt_chunks_free(out);
    return rc;
}

void diffuse_prompt_chunks_free(diffuse_prompt_chunks *c)
{
    free(c->ids);
    free(c->weights);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------------ emphasis */

void diffuse_prompt_emphasis(float *z, int stride, int width, const float *weights)
{
    const int t = DIFFUSE_MAX_TOKENS;
    double before = 0, after = 0;
    for (int p = 0; p < t; p++)
        for (int j = 0; j < width; j++)
            before += z[(size_t)p * stride + j];
    for (int p = 0; p < t; p++)
        for (int j = 0; j < width; j++) {
            z[(size_t)p * stride + j] *= weights[p];
            after += z[(size_t)p * stride + j];
        }
    if (after == 0)
        return;
    const float k = (float)(before / after);
    for (int p = 0; p < t; p++)
        for (int j = 0; j < width; j++)
            z[(size_t)p * stride + j] *= k;
}

/* ------------------------------------------------------------------ extra networks */

/* A1111's extra networks, <(\w+):([^>]+)>: out of the text, into tags. */
int diffuse_prompt_tags(const char *text, char **stripped, diffuse_prompt_tag **tags, int *n,
                        char *err)
{
    const size_t len = strlen(text);
    char *out = malloc(len + 1);
    diffuse_prompt_tag *list = NULL;
    int count = 0, cap = 0;
    size_t o = 0;
    *stripped = NULL;
    *tags = NULL;
    *n = 0;
    if (!out)
        return diffuse_fail(err, "out of memory");
    for (size_t i = 0; i < len;) {
        size_t k = i + 1;
        while (k < len && (isalnum((unsigned char)text[k]) || text[k] == '_'))
            k++;
        const char *close =
            k > i + 1 && k < len && text[k] == ':' && k + 1 < len && text[k + 1] != '>'
                ? strchr(text + k + 1, '>')
                : NULL;
        if (text[i] != '<' || !close) {
            out[o++] = text[i++];
            continue;
        }
        if (count == cap) {
            cap = cap ? 2 * cap : 4;
            diffuse_prompt_tag *l = realloc(list, (size_t)cap * sizeof *l);
            if (!l) {
                free(out);
                diffuse_prompt_tags_free(list, count);
                return diffuse_fail(err, "out of memory");
            }
            list = l;
        }
        diffuse_prompt_tag *t = &list[count];
        t->kind = strndup(text + i + 1, k - i - 1);
        t->args = strndup(text + k + 1, (size_t)(close - text - k - 1));
        t->text = strndup(text + i, (size_t)(close - text + 1 - i));
        count++;
        if (!t->kind || !t->args || !t->text) {
            free(out);
            diffuse_prompt_tags_free(list, count);
            return diffuse_fail(err, "out of memory");
        }
        i = (size_t)(close - text) + 1;
    }
    out[o] = 0;
    *stripped = out;
    *tags = list;
    *n = count;
    return 0;
}

void diffuse_prompt_tags_free(diffuse_prompt_tag *tags, int n)
{
    for (int i = 0; tags && i < n; i++) {
        free(tags[i].kind);
        free(tags[i].args);
        free(tags[i].text);
    }
    free(tags);
}
