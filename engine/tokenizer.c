/* tokenizer.c: the CLIP byte-level BPE tokenizer, prompt text -> 77 token ids.
 *
 * Reproduces HuggingFace transformers' CLIPTokenizer (the tokenizers backend,
 * which is what the golden ids come from) and OpenAI's simple_tokenizer:
 *
 *   0. cut out "<|startoftext|>" / "<|endoftext|>" as written (they become their
 *      ids directly) and treat the text between them as follows;
 *   1. normalise: Unicode NFC, every run of \s collapsed to one space, lower case;
 *   2. split with CLIP's pattern
 *        <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *        [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *      (unmatched characters, i.e. spaces, are dropped);
 *   3. write each piece's UTF-8 bytes as GPT-2 "byte unicode" symbols, the last
 *      one with "</w>" appended, and apply the BPE merges, lowest rank first;
 *   4. <start> ids... <end>, truncated to 77 with <end> kept last, then padding.
 *
 * Where simple_tokenizer.py disagrees, transformers is followed: no ftfy fix or
 * html.unescape, special tokens only as written (OpenAI lowers "<|ENDOFTEXT|>"
 * into one), case-sensitive contractions (OpenAI's re.IGNORECASE reads "'\u017f"
 * as "'s"), lower-casing per character (no final-sigma rule).
 *
 * The vocabulary comes from vocab.json + merges.txt (HF layout) or is rebuilt
 * from the OpenAI merges list (bpe_simple_vocab_16e6.txt.gz) exactly as
 * simple_tokenizer.py builds it: 256 byte symbols, the same with "</w>", the
 * first 48894 merges joined, then <|startoftext|> and <|endoftext|>.
 *
 * Tokens live in one string blob indexed by an open-addressing hash table;
 * merges are a second table (left id, right id) -> (rank, merged id), so BPE
 * works on integers only. Nothing is cached after loading: encode() only reads
 * the tokenizer, so any number of threads may encode with one tokenizer.
 *
 * Why our own hash tables and heap, measured (`make bench-tokenizer`, best of
 * 15 loads / 200 encodes, 2 shared cores, -O3) against the simpler form that
 * passes the same tests: sorted arrays + binary search for vocabulary and
 * merges, and the plain BPE loop (scan all adjacent pairs for the lowest rank,
 * join it, repeat):
 *   load, vocab.json + merges.txt (49,408 + 48,894)  16-17 ms   simpler 54-57 ms
 *   load, bpe_simple_vocab_16e6.txt.gz               15-16 ms   simpler 62-87 ms
 *   encode, 20-token prompt                          5.1 us     simpler 6.7 us
 *   encode, 328-token prompt                         76 us      simpler 105 us
 *   encode, one 1,000-letter word                    0.11 ms    simpler 14-26 ms
 *   encode, one 100,000-letter word                  20-27 ms   simpler 16-21 s
 * Every run loads the tokenizer, where sorting 49k strings costs 3-4x the
 * hashing; and a pasted word without spaces (a URL, a base64 string: prompts
 * are up to TOK_MAX_TEXT bytes) is quadratic in the plain loop, seconds of a
 * frozen dialog, against n log n with the heap.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>
#include <utf8proc.h>
#include <zlib.h>

#include "internal.h"

#define TOK_MAX_VOCAB (1 << 20)              /* entries in vocab.json, and the largest id */
#define TOK_MAX_MERGES (1 << 20)             /* merge lines read from merges.txt */
#define TOK_MAX_TOKEN 1024                   /* bytes in one token string */
#define TOK_MAX_JSON (64u << 20)             /* bytes of vocab.json */
#define TOK_MAX_BLOB (256u << 20)            /* bytes of all token strings together */
#define TOK_MAX_TEXT (1 << 20)               /* bytes of one prompt */
#define TOK_OPENAI_MERGES (49152 - 256 - 2)  /* merges simple_tokenizer.py keeps */
#define TOK_CONTENT (DIFFUSE_MAX_TOKENS - 2) /* ids between <start> and <end> */
#define TOK_PATH 4096

static const char TOK_BOS[] = "<|startoftext|>";
static const char TOK_EOS[] = "<|endoftext|>";
static const char TOK_EOW[] = "</w>";

/* (Hash tables rather than sorted arrays: see the measurements above.) */
typedef struct tok_slot {
    uint32_t off; /* string offset in the blob */
    uint32_t len; /* bytes; UINT32_MAX marks an empty slot */
    int32_t id;
} tok_slot;

typedef struct tok_pair {
    uint64_t key;   /* left id << 32 | right id; UINT64_MAX = empty */
    int32_t rank;   /* line index of the merge: lower merges first */
    int32_t merged; /* id of the joined token */
} tok_pair;

typedef struct tok_merge {
    uint32_t left, right; /* blob offsets of the two halves */
    int line;             /* 1-based line in the merges file, for messages */
} tok_merge;

typedef struct tok_merges {
    tok_merge *items;
    size_t count, cap;
} tok_merges;

struct diffuse_tokenizer {
    char *blob; /* every token string, each NUL-terminated */
    size_t blob_len, blob_cap;
    tok_slot *vocab; /* string -> id, vocab_mask + 1 slots */
    size_t vocab_mask;
    tok_pair *pairs; /* (left, right) -> rank, merged; pair_mask + 1 slots */
    size_t pair_mask;
    int32_t byte_id[256];     /* symbol of byte b inside a word */
    int32_t byte_end_id[256]; /* symbol of byte b + "</w>", a word's last one */
    int32_t bos, eos;
    diffuse_status why; /* while loading: the kind of the last failure */
};

/* ------------------------------------------------------------------ tables */

/* FNV-1a, 64 bits. */
static uint64_t tok_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

/* Slots for `count` keys at a load factor of at most one half. */
static size_t tok_table_size(size_t count)
{
    size_t size = 16;
    while (size < 2 * count)
        size *= 2;
    return size;
}

static int tok_oom(diffuse_tokenizer *tok, char *err)
{
    tok->why = DIFFUSE_ERR_MEMORY;
    return diffuse_fail(err, "tokenizer: out of memory");
}

/* Copies n bytes plus a NUL into the blob; *off receives their offset. */
static int tok_blob_add(diffuse_tokenizer *tok, const char *s, size_t n, uint32_t *off, char *err)
{
    if (tok->blob_len + n + 1 > tok->blob_cap) {
        size_t cap = tok->blob_cap ? tok->blob_cap : 1 << 16;
        while (cap < tok->blob_len + n + 1)
            cap *= 2;
        if (cap > TOK_MAX_BLOB)
            return diffuse_fail(err, "tokenizer: token strings exceed %u MiB", TOK_MAX_BLOB >> 20);
        char *blob = realloc(tok->blob, cap);
        if (!blob)
            return tok_oom(tok, err);
        tok->blob = blob;
        tok->blob_cap = cap;
    }
    memcpy(tok->blob + tok->blob_len, s, n);
    tok->blob[tok->blob_len + n] = 0;
    *off = (uint32_t)tok->blob_len;
    tok->blob_len += n + 1;
    return 0;
}

static int tok_vocab_init(diffuse_tokenizer *tok, size_t count, char *err)
{
    size_t size = tok_table_size(count);
    tok->vocab = malloc(size * sizeof *tok->vocab);
    if (!tok->vocab)
        return tok_oom(tok, err);
    for (size_t i = 0; i < size; i++)
        tok->vocab[i] = (tok_slot){0, UINT32_MAX, -1};
    tok->vocab_mask = size - 1;
    return 0;
}

/* The slot holding s, or the empty slot where it would go. */
static tok_slot *tok_vocab_slot(const diffuse_tokenizer *tok, const char *s, size_t n)
{
    size_t i = (size_t)tok_hash(s, n) & tok->vocab_mask;
    for (;; i = (i + 1) & tok->vocab_mask) {
        tok_slot *slot = &tok->vocab[i];
        if (slot->len == UINT32_MAX)
            return slot;
        if (slot->len == n && memcmp(tok->blob + slot->off, s, n) == 0)
            return slot;
    }
}

static int32_t tok_vocab_get(const diffuse_tokenizer *tok, const char *s, size_t n)
{
    return tok_vocab_slot(tok, s, n)->id;
}

/* Maps s to id; a later entry for the same string wins, as in a Python dict.
 * The caller keeps the number of distinct keys within the table's sizing. */
static int tok_vocab_put(diffuse_tokenizer *tok, const char *s, size_t n, int32_t id, char *err)
{
    tok_slot *slot = tok_vocab_slot(tok, s, n);
    if (slot->len == UINT32_MAX) {
        uint32_t off;
        if (tok_blob_add(tok, s, n, &off, err))
            return -1;
        slot->off = off;
        slot->len = (uint32_t)n;
    }
    slot->id = id;
    return 0;
}

static tok_pair *tok_pair_slot(const diffuse_tokenizer *tok, uint64_t key)
{
    size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & tok->pair_mask;
    for (;; i = (i + 1) & tok->pair_mask) {
        tok_pair *pair = &tok->pairs[i];
        if (pair->key == key || pair->key == UINT64_MAX)
            return pair;
    }
}

static uint64_t tok_pair_key(int32_t left, int32_t right)
{
    return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

/* ------------------------------------------------------------------ files */

/* The GPT-2 byte -> code point table: printable Latin-1 bytes keep their code
 * point, the other 68 bytes take 256, 257, ... in byte order. order[] lists the
 * bytes the way simple_tokenizer enumerates them (printable ones first). */
static void tok_byte_table(uint32_t cp[256], uint8_t order[256])
{
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) {
            cp[b] = (uint32_t)b;
            order[n++] = (uint8_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
            cp[b] = 256u + (uint32_t)extra++;
            order[n++] = (uint8_t)b;
        }
    }
}

/* UTF-8 of byte b's symbol, optionally with "</w>"; returns the length. */
static size_t tok_byte_symbol(const uint32_t cp[256], int b, int end, char out[8])
{
    size_t n = (size_t)utf8proc_encode_char((utf8proc_int32_t)cp[b], (utf8proc_uint8_t *)out);
    if (end) {
        memcpy(out + n, TOK_EOW, 4);
        n += 4;
    }
    return n;
}

static int tok_read_file(diffuse_tokenizer *tok, const char *path, char **data, size_t *size,
                         char *err)
{
    struct stat st;
    FILE *f = fopen(path, "rb");
    if (!f || fstat(fileno(f), &st) != 0) {
        tok->why = DIFFUSE_ERR_IO;
        int rc = diffuse_fail(err, "cannot open %s: %s", path, strerror(errno));
        if (f)
            fclose(f);
        return rc;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > TOK_MAX_JSON) {
        fclose(f);
        return diffuse_fail(err, "%s is larger than %u MiB", path, TOK_MAX_JSON >> 20);
    }
    size_t want = (size_t)st.st_size;
    char *buf = malloc(want + 1);
    size_t n = buf ? fread(buf, 1, want, f) : 0;
    fclose(f);
    if (!buf)
        return tok_oom(tok, err);
    if (n != want) {
        free(buf);
        tok->why = DIFFUSE_ERR_IO;
        return diffuse_fail(err, "cannot read %s: %zu of %zu bytes", path, n, want);
    }
    *data = buf;
    *size = n;
    return 0;
}

/* vocab.json: one object of "token": id with 0 <= id < TOK_MAX_VOCAB. */
static int tok_load_json(diffuse_tokenizer *tok, const cJSON *root, const char *path, char *err)
{
    int count = cJSON_GetArraySize(root);
    if (!cJSON_IsObject(root) || count < 1 || count > TOK_MAX_VOCAB)
        return diffuse_fail(err, "%s: expected an object of 1 to %d token ids", path,
                            TOK_MAX_VOCAB);
    if (tok_vocab_init(tok, (size_t)count, err))
        return -1;
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        double v = cJSON_IsNumber(item) ? item->valuedouble : -1;
        size_t n = strlen(item->string);
        if (!(v >= 0 && v < TOK_MAX_VOCAB) || v != (double)(int32_t)v)
            return diffuse_fail(err, "%s: token \"%.64s\" has no valid id (0 to %d)", path,
                                item->string, TOK_MAX_VOCAB - 1);
        if (n == 0 || n > TOK_MAX_TOKEN)
            return diffuse_fail(err, "%s: a token is empty or longer than %d bytes", path,
                                TOK_MAX_TOKEN);
        if (tok_vocab_put(tok, item->string, n, (int32_t)v, err))
            return -1;
    }
    return 0;
}

static int tok_read_vocab(diffuse_tokenizer *tok, const char *path, char *err)
{
    char *data = NULL;
    size_t size = 0;
    if (tok_read_file(tok, path, &data, &size, err))
        return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(data, size, &end, 0);
    int rc;
    if (!root)
        rc = diffuse_fail(err, "%s: not valid JSON near byte %ld", path,
                          end ? (long)(end - data) : 0L);
    else
        rc = tok_load_json(tok, root, path, err);
    cJSON_Delete(root);
    free(data);
    return rc;
}

/* One merges line, "left right" with the newline removed. Blank lines are
 * skipped, as the trailing one of every merges file must be. */
static int tok_parse_merge(diffuse_tokenizer *tok, char *line, const char *path, int lineno,
                           tok_merges *list, char *err)
{
    size_t n = strcspn(line, "\r\n");
    line[n] = 0;
    if (n == 0)
        return 0;
    char *space = strchr(line, ' ');
    if (!space || space == line || !space[1] || strchr(space + 1, ' '))
        return diffuse_fail(err, "%s line %d: expected two tokens separated by one space", path,
                            lineno);
    if (space - line > TOK_MAX_TOKEN || strlen(space + 1) > TOK_MAX_TOKEN)
        return diffuse_fail(err, "%s line %d: a token is longer than %d bytes", path, lineno,
                            TOK_MAX_TOKEN);
    if (list->count == list->cap) {
        size_t cap = list->cap ? 2 * list->cap : 1 << 16;
        tok_merge *items = realloc(list->items, cap * sizeof *items);
        if (!items)
            return tok_oom(tok, err);
        list->items = items;
        list->cap = cap;
    }
    tok_merge *m = &list->items[list->count];
    if (tok_blob_add(tok, line, (size_t)(space - line), &m->left, err) ||
        tok_blob_add(tok, space + 1, strlen(space + 1), &m->right, err))
        return -1;
    m->line = lineno;
    list->count++;
    return 0;
}

/* Next line of gz into line[size]: 1, 0 at the end, -1 on a decompression
 * error (a cut gzip stream hands back its partial last line first; zlib's
 * message names the file) or on a line that does not fit. */
static int tok_gz_line(gzFile gz, char *line, int size, const char *path, int lineno, char *err)
{
    int zerr = Z_OK;
    if (!gzgets(gz, line, size)) {
        const char *zmsg = gzerror(gz, &zerr);
        if (zerr == Z_OK || zerr == Z_STREAM_END)
            return 0;
        return diffuse_fail(err, "cannot decompress line %d: %s", lineno, zmsg);
    }
    size_t n = strlen(line);
    if (n > 0 && line[n - 1] == '\n')
        return 1;
    if (n == (size_t)size - 1)
        return diffuse_fail(err, "%s line %d: longer than %d bytes", path, lineno, size - 2);
    const char *zmsg = gzerror(gz, &zerr);
    if (zerr != Z_OK && zerr != Z_STREAM_END)
        return diffuse_fail(err, "cannot decompress line %d: %s", lineno, zmsg);
    return 1;
}

/* Reads up to `limit` merges. openai: the first line is a header whatever it
 * says (simple_tokenizer drops it); otherwise "#version" lines are skipped.
 * gzread reads plain text files as they are, so both layouts go through here. */
static int tok_read_merges(diffuse_tokenizer *tok, const char *path, int openai, size_t limit,
                           tok_merges *list, char *err)
{
    errno = 0;
    gzFile gz = gzopen(path, "rb");
    if (!gz) {
        tok->why = DIFFUSE_ERR_IO;
        return diffuse_fail(err, "cannot open %s: %s", path, errno ? strerror(errno) : "zlib");
    }
    char line[2 * TOK_MAX_TOKEN + 8];
    int lineno = 0, rc = 0;
    while (rc == 0 && list->count < limit) {
        rc = tok_gz_line(gz, line, (int)sizeof line, path, ++lineno, err);
        if (rc <= 0)
            break;
        if ((openai && lineno == 1) || (!openai && strncmp(line, "#version", 8) == 0))
            rc = 0;
        else
            rc = tok_parse_merge(tok, line, path, lineno, list, err);
    }
    if (rc == 0 && !openai && list->count == limit &&
        tok_gz_line(gz, line, (int)sizeof line, path, ++lineno, err) != 0)
        rc = diffuse_fail(err, "%s: more than %zu merges", path, limit);
    gzclose(gz);
    return rc < 0 ? -1 : 0;
}

/* ------------------------------------------------------------------ building */

/* simple_tokenizer's vocabulary: bytes, bytes + "</w>", the merges joined,
 * then <start> and <end>; ids in that order, a repeated string keeps the last. */
static int tok_build_openai(diffuse_tokenizer *tok, const tok_merges *list, char *err)
{
    uint32_t cp[256];
    uint8_t order[256];
    char sym[8], joined[2 * TOK_MAX_TOKEN + 1];
    int32_t id = 0;
    tok_byte_table(cp, order);
    if (tok_vocab_init(tok, 512 + list->count + 2, err))
        return -1;
    for (int end = 0; end < 2; end++)
        for (int i = 0; i < 256; i++)
            if (tok_vocab_put(tok, sym, tok_byte_symbol(cp, order[i], end, sym), id++, err))
                return -1;
    for (size_t i = 0; i < list->count; i++) {
        const char *left = tok->blob + list->items[i].left;
        const char *right = tok->blob + list->items[i].right;
        int n = snprintf(joined, sizeof joined, "%s%s", left, right);
        if (tok_vocab_put(tok, joined, (size_t)n, id++, err))
            return -1;
    }
    if (tok_vocab_put(tok, TOK_BOS, strlen(TOK_BOS), id++, err))
        return -1;
    return tok_vocab_put(tok, TOK_EOS, strlen(TOK_EOS), id, err);
}

/* (left, right) -> (rank, merged) for every merge; all three tokens must be
 * in the vocabulary, as the tokenizers library requires. */
static int tok_build_pairs(diffuse_tokenizer *tok, const tok_merges *list, const char *path,
                           char *err)
{
    size_t size = tok_table_size(list->count);
    char joined[2 * TOK_MAX_TOKEN + 1];
    tok->pairs = malloc(size * sizeof *tok->pairs);
    if (!tok->pairs)
        return tok_oom(tok, err);
    for (size_t i = 0; i < size; i++)
        tok->pairs[i] = (tok_pair){UINT64_MAX, -1, -1};
    tok->pair_mask = size - 1;
    for (size_t i = 0; i < list->count; i++) {
        const tok_merge *m = &list->items[i];
        const char *left = tok->blob + m->left, *right = tok->blob + m->right;
        int n = snprintf(joined, sizeof joined, "%s%s", left, right);
        int32_t a = tok_vocab_get(tok, left, strlen(left));
        int32_t b = tok_vocab_get(tok, right, strlen(right));
        int32_t ab = tok_vocab_get(tok, joined, (size_t)n);
        if (a < 0 || b < 0 || ab < 0)
            return diffuse_fail(err, "%s line %d: token \"%.64s\" is not in the vocabulary", path,
                                m->line,
                                a < 0   ? left
                                : b < 0 ? right
                                        : joined);
        tok_pair *pair = tok_pair_slot(tok, tok_pair_key(a, b));
        *pair = (tok_pair){tok_pair_key(a, b), (int32_t)i, ab};
    }
    return 0;
}

/* Ids of the 512 starting symbols and of <start> / <end>. */
static int tok_find_base(diffuse_tokenizer *tok, const char *path, char *err)
{
    uint32_t cp[256];
    uint8_t order[256];
    char sym[8];
    tok_byte_table(cp, order);
    for (int b = 0; b < 256; b++) {
        tok->byte_id[b] = tok_vocab_get(tok, sym, tok_byte_symbol(cp, b, 0, sym));
        tok->byte_end_id[b] = tok_vocab_get(tok, sym, tok_byte_symbol(cp, b, 1, sym));
        if (tok->byte_id[b] < 0 || tok->byte_end_id[b] < 0)
            return diffuse_fail(err, "%s: the vocabulary lacks the symbol of byte 0x%02x", path, b);
    }
    tok->bos = tok_vocab_get(tok, TOK_BOS, strlen(TOK_BOS));
    tok->eos = tok_vocab_get(tok, TOK_EOS, strlen(TOK_EOS));
    if (tok->bos < 0 || tok->eos < 0)
        return diffuse_fail(err, "%s: the vocabulary lacks %s", path,
                            tok->bos < 0 ? TOK_BOS : TOK_EOS);
    return 0;
}

static int tok_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Sets vocab (empty for the OpenAI list) and merges from the user's path. */
static int tok_resolve(diffuse_tokenizer *tok, const char *path, char vocab[TOK_PATH],
                       char merges[TOK_PATH], char *err)
{
    struct stat st;
    tok->why = DIFFUSE_ERR_IO;
    if (strlen(path) + sizeof "/vocab.json" > TOK_PATH)
        return diffuse_fail(err, "tokenizer path too long: %.200s...", path);
    if (stat(path, &st) != 0)
        return diffuse_fail(err, "cannot open tokenizer %s: %s", path, strerror(errno));
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    int dir_len = S_ISDIR(st.st_mode) ? (int)strlen(path) : (int)(base - path);
    const char *sep = S_ISDIR(st.st_mode) ? "/" : "";
    size_t base_len = strlen(base);
    int json = !S_ISDIR(st.st_mode) && base_len >= 5 && strcmp(base + base_len - 5, ".json") == 0;
    snprintf(vocab, TOK_PATH, "%.*s%svocab.json", dir_len, path, sep);
    snprintf(merges, TOK_PATH, "%.*s%smerges.txt", dir_len, path, sep);
    if (json)
        snprintf(vocab, TOK_PATH, "%s", path);
    if (!S_ISDIR(st.st_mode) && !json && !(strcmp(base, "merges.txt") == 0 && tok_exists(vocab))) {
        vocab[0] = 0; /* an OpenAI-style merges list, gzip or plain */
        snprintf(merges, TOK_PATH, "%s", path);
    }
    if (vocab[0] && !tok_exists(vocab))
        return diffuse_fail(err, "tokenizer %s: no vocab.json at %s", path, vocab);
    if (!tok_exists(merges))
        return diffuse_fail(err, "tokenizer %s: no merges file at %s", path, merges);
    tok->why = DIFFUSE_ERR_FORMAT;
    return 0;
}

/* Everything but the allocation of tok: resolve, read, build. */
static int tok_load(diffuse_tokenizer *tok, const char *path, char *err)
{
    char vocab[TOK_PATH], merges[TOK_PATH];
    tok_merges list = {0};
    if (tok_resolve(tok, path, vocab, merges, err))
        return -1;
    int openai = vocab[0] == 0;
    int rc = openai ? 0 : tok_read_vocab(tok, vocab, err);
    if (rc == 0)
        rc = tok_read_merges(tok, merges, openai, openai ? TOK_OPENAI_MERGES : TOK_MAX_MERGES,
                             &list, err);
    if (rc == 0 && openai && list.count < TOK_OPENAI_MERGES)
        rc = diffuse_fail(err, "%s: %zu merges, CLIP needs %d", merges, list.count,
                          TOK_OPENAI_MERGES);
    if (rc == 0 && openai)
        rc = tok_build_openai(tok, &list, err);
    if (rc == 0)
        rc = tok_build_pairs(tok, &list, merges, err);
    if (rc == 0)
        rc = tok_find_base(tok, vocab[0] ? vocab : merges, err);
    free(list.items);
    return rc;
}

static int tok_load_status(const char *path, diffuse_tokenizer **out, diffuse_status *why,
                           char *err)
{
    *why = DIFFUSE_ERR_ARGUMENT;
    if (!out)
        return diffuse_fail(err, "diffuse_tokenizer_load: out is NULL");
    *out = NULL;
    if (!path)
        return diffuse_fail(err, "diffuse_tokenizer_load: path is NULL");
    diffuse_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        *why = DIFFUSE_ERR_MEMORY;
        return diffuse_fail(err, "tokenizer: out of memory");
    }
    if (tok_load(tok, path, err)) {
        *why = tok->why;
        diffuse_tokenizer_free(tok);
        return -1;
    }
    *out = tok;
    return 0;
}

diffuse_status diffuse_tokenizer_load(const char *path, diffuse_tokenizer **out, char *err)
{
    diffuse_status why;
    return tok_load_status(path, out, &why, err) ? why : DIFFUSE_OK;
}

void diffuse_tokenizer_free(diffuse_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->blob);
    free(tok->vocab);
    free(tok->pairs);
    free(tok);
}

int32_t diffuse_tokenizer_bos(const diffuse_tokenizer *tok)
{
    return tok->bos;
}

int32_t diffuse_tokenizer_eos(const diffuse_tokenizer *tok)
{
    return tok->eos;
}

int32_t diffuse_tokenizer_max_id(const diffuse_tokenizer *tok)
{
    int32_t most = -1;
    for (size_t i = 0; i <= tok->vocab_mask; i++)
        if (tok->vocab[i].len != UINT32_MAX && tok->vocab[i].id > most)
            most = tok->vocab[i].id;
    return most;
}

/* ------------------------------------------------------------------ text */

/* \s as oniguruma and the regex module define it: White_Space. */
static int tok_is_space(int32_t c)
{
    if ((c >= 9 && c <= 13) || c == 0x85)
        return 1;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

static int tok_is_letter(int32_t c)
{
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static int tok_is_number(int32_t c)
{
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

/* NFC, whitespace runs -> " ", lower case (per code point, full mapping as
 * Rust's char::to_lowercase: U+0130 is the one character that grows).
 * *out: [*n] code points, malloc'd. */
static int tok_normalize(const char *text, size_t len, int32_t **out, size_t *n_out, char *err)
{
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t nb = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &nfc,
                                       UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (nb < 0)
        return diffuse_fail(err, "prompt: %s", utf8proc_errmsg(nb));
    int32_t *cp = malloc((2 * (size_t)nb + 1) * sizeof *cp);
    if (!cp) {
        free(nfc);
        return diffuse_fail(err, "tokenizer: out of memory");
    }
    size_t n = 0;
    int in_space = 0;
    for (utf8proc_ssize_t i = 0; i < nb;) {
        utf8proc_int32_t c;
        i += utf8proc_iterate(nfc + i, nb - i, &c); /* valid: utf8proc wrote it */
        if (tok_is_space(c)) {
            if (!in_space)
                cp[n++] = ' ';
            in_space = 1;
            continue;
        }
        in_space = 0;
        if (c == 0x130) {
            cp[n++] = 'i';
            cp[n++] = 0x307;
        } else {
            cp[n++] = utf8proc_tolower(c);
        }
    }
    free(nfc);
    *out = cp;
    *n_out = n;
    return 0;
}

/* Length of the pre-tokenizer match at cp[i], 0 when cp[i] is a space. The
 * pattern's two special-token alternatives never fire here: the specials are
 * cut out of the raw text before normalising (tok_next_special), and an
 * upper-case "<|ENDOFTEXT|>" lowered into one is split like any text by the
 * GPT-2 pattern of transformers' ByteLevel step, which is what omitting them
 * does. Case-sensitive, as in tokenizers (OpenAI's re.IGNORECASE also takes
 * "'\u017f" for "'s"). */
static size_t tok_match(const int32_t *cp, size_t i, size_t n)
{
    static const char *const literal[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < sizeof literal / sizeof *literal; k++) {
        size_t len = strlen(literal[k]), j = 0;
        while (j < len && i + j < n && cp[i + j] == (uint8_t)literal[k][j])
            j++;
        if (j == len)
            return len;
    }
    size_t j = i;
    if (tok_is_letter(cp[i])) {
        while (j < n && tok_is_letter(cp[j]))
            j++;
        return j - i;
    }
    if (tok_is_number(cp[i]))
        return 1;
    while (j < n && !tok_is_space(cp[j]) && !tok_is_letter(cp[j]) && !tok_is_number(cp[j]))
        j++;
    return j - i;
}

/* ------------------------------------------------------------------ BPE */

/* (A heap rather than the plain quadratic loop: see the measurements at the
 * top.) Work space for pieces of up to cap bytes (one symbol per byte); grown, never
 * shrunk, within one encode call. */
typedef struct tok_bpe {
    uint8_t *bytes;       /* [cap] the piece's UTF-8 */
    int32_t *sym;         /* [cap] symbol id per position, -1 once merged away */
    int32_t *prev, *next; /* [cap] the living symbols as a list, -1 at the ends */
    uint64_t *heap;       /* [3 * cap] rank << 32 | position, a min-heap */
    uint32_t *batch;      /* [3 * cap] positions popped with the current rank */
    size_t cap, heap_len;
} tok_bpe;

static void tok_bpe_free(tok_bpe *w)
{
    free(w->bytes);
    free(w->sym);
    free(w->prev);
    free(w->next);
    free(w->heap);
    free(w->batch);
}

static int tok_bpe_reserve(tok_bpe *w, size_t m, char *err)
{
    if (m <= w->cap)
        return 0;
    size_t cap = m > 2 * w->cap ? m : 2 * w->cap;
    tok_bpe_free(w);
    *w = (tok_bpe){0};
    w->bytes = malloc(cap);
    w->sym = malloc(cap * sizeof *w->sym);
    w->prev = malloc(cap * sizeof *w->prev);
    w->next = malloc(cap * sizeof *w->next);
    w->heap = malloc(3 * cap * sizeof *w->heap);
    w->batch = malloc(3 * cap * sizeof *w->batch);
    if (!w->bytes || !w->sym || !w->prev || !w->next || !w->heap || !w->batch)
        return diffuse_fail(err, "tokenizer: out of memory");
    w->cap = cap;
    return 0;
}

static void tok_heap_push(tok_bpe *w, uint64_t v)
{
    size_t i = w->heap_len++;
    while (i > 0 && w->heap[(i - 1) / 2] > v) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = v;
}

static uint64_t tok_heap_pop(tok_bpe *w)
{
    uint64_t top = w->heap[0], v = w->heap[--w->heap_len];
    size_t i = 0, n = w->heap_len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && w->heap[c + 1] < w->heap[c])
            c++;
        if (w->heap[c] >= v)
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = v;
    return top;
}

/* The merge of the symbols at p and after it, or NULL. */
static const tok_pair *tok_bpe_pair(const diffuse_tokenizer *tok, const tok_bpe *w, int32_t p)
{
    if (p < 0 || w->sym[p] < 0 || w->next[p] < 0)
        return NULL;
    const tok_pair *pair = tok_pair_slot(tok, tok_pair_key(w->sym[p], w->sym[w->next[p]]));
    return pair->key == UINT64_MAX ? NULL : pair;
}

static void tok_bpe_push(const diffuse_tokenizer *tok, tok_bpe *w, int32_t p)
{
    const tok_pair *pair = tok_bpe_pair(tok, w, p);
    if (pair)
        tok_heap_push(w, (uint64_t)(uint32_t)pair->rank << 32 | (uint32_t)p);
}

/* Joins p with its successor if that pair still has this rank. */
static int tok_bpe_merge(const diffuse_tokenizer *tok, tok_bpe *w, int32_t p, int32_t rank)
{
    const tok_pair *pair = tok_bpe_pair(tok, w, p);
    if (!pair || pair->rank != rank)
        return 0;
    int32_t q = w->next[p];
    w->sym[p] = pair->merged;
    w->sym[q] = -1;
    w->next[p] = w->next[q];
    if (w->next[q] >= 0)
        w->prev[w->next[q]] = p;
    return 1;
}

/* simple_tokenizer.bpe(): while some adjacent pair has a rank, take the lowest
 * and join every occurrence left to right without overlap. The heap holds
 * every adjacency that has a rank (plus stale ones, checked when popped), so
 * one round pops all entries of the lowest rank in position order. At most
 * m - 1 joins, each pushing two entries: the heap never exceeds 3m. */
static void tok_bpe_run(const diffuse_tokenizer *tok, tok_bpe *w, size_t m)
{
    for (size_t i = 0; i < m; i++) {
        w->sym[i] = i + 1 == m ? tok->byte_end_id[w->bytes[i]] : tok->byte_id[w->bytes[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 == m ? -1 : (int32_t)i + 1;
    }
    w->heap_len = 0;
    for (size_t i = 0; i + 1 < m; i++)
        tok_bpe_push(tok, w, (int32_t)i);
    while (w->heap_len) {
        uint32_t rank = (uint32_t)(w->heap[0] >> 32);
        size_t popped = 0, joined = 0;
        while (w->heap_len && (uint32_t)(w->heap[0] >> 32) == rank)
            w->batch[popped++] = (uint32_t)tok_heap_pop(w);
        for (size_t k = 0; k < popped; k++)
            if (tok_bpe_merge(tok, w, (int32_t)w->batch[k], (int32_t)rank))
                w->batch[joined++] = w->batch[k];
        for (size_t k = 0; k < joined; k++) {
            tok_bpe_push(tok, w, w->prev[w->batch[k]]);
            tok_bpe_push(tok, w, (int32_t)w->batch[k]);
        }
    }
}

/* Token ids as they are made: at most `limit`, the rest dropped. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap, limit;
} tok_ids;

static int tok_ids_push(tok_ids *out, int32_t id, char *err)
{
    if (out->n >= out->limit)
        return 0;
    if (out->n == out->cap) {
        size_t cap = out->cap ? 2 * out->cap : 64;
        int32_t *v = realloc(out->v, cap * sizeof *v);
        if (!v)
            return diffuse_fail(err, "out of memory");
        out->v = v;
        out->cap = cap;
    }
    out->v[out->n++] = id;
    return 0;
}

/* Appends the ids of one pre-tokenized piece. */
static int tok_encode_piece(const diffuse_tokenizer *tok, const int32_t *cp, size_t len, tok_bpe *w,
                            tok_ids *out, char *err)
{
    if (tok_bpe_reserve(w, 4 * len, err))
        return -1;
    size_t m = 0;
    for (size_t i = 0; i < len; i++)
        m += (size_t)utf8proc_encode_char(cp[i], w->bytes + m);
    tok_bpe_run(tok, w, m);
    for (int32_t p = 0; p >= 0 && out->n < out->limit; p = w->next[p])
        if (tok_ids_push(out, w->sym[p], err))
            return -1;
    return 0;
}

/* Normalises, splits and encodes len bytes of text holding no special token. */
static int tok_encode_segment(const diffuse_tokenizer *tok, const char *text, size_t len,
                              tok_bpe *w, tok_ids *out, char *err)
{
    int32_t *cp = NULL;
    size_t n = 0;
    int rc = 0;
    if (len == 0)
        return 0;
    if (tok_normalize(text, len, &cp, &n, err))
        return -1;
    for (size_t i = 0; rc == 0 && i < n && out->n < out->limit;) {
        size_t piece = tok_match(cp, i, n);
        if (piece == 0)
            i++;
        else
            rc = tok_encode_piece(tok, cp + i, piece, w, out, err);
        i += piece;
    }
    free(cp);
    return rc;
}

/* The first "<|startoftext|>" or "<|endoftext|>" written in s, or the pad
 * token's text when it is a special token of its own (pad_text, "!" in the
 * OpenCLIP tokenizers of SD 2.x and SDXL, else NULL), matched as transformers
 * matches added tokens: on the raw text, case-sensitively. Returns its start
 * (the terminating NUL when none) and its id and length. */
static const char *tok_next_special(const diffuse_tokenizer *tok, const char *s,
                                    const char *pad_text, int32_t pad_id, int32_t *id, size_t *len)
{
    const char *found[3] = {strstr(s, TOK_BOS), strstr(s, TOK_EOS),
                            pad_text ? strstr(s, pad_text) : NULL};
    const int32_t ids[3] = {tok->bos, tok->eos, pad_id};
    const size_t lens[3] = {strlen(TOK_BOS), strlen(TOK_EOS), pad_text ? strlen(pad_text) : 0};
    int best = -1;
    for (int i = 0; i < 3; i++)
        if (found[i] && (best < 0 || found[i] < found[best]))
            best = i;
    *id = best >= 0 ? ids[best] : tok->eos;
    *len = best >= 0 ? lens[best] : 0;
    return best >= 0 ? found[best] : s + strlen(s);
}

/* Byte offset of the first invalid UTF-8 sequence, or -1. */
static long tok_bad_utf8(const char *text, size_t len)
{
    const utf8proc_uint8_t *s = (const utf8proc_uint8_t *)text;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t n = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &c);
        if (n <= 0)
            return (long)i;
        i += (size_t)n;
    }
    return -1;
}

/* The ids of text without <start>/<end>, at most out->limit of them. */
static int tok_encode_text(const diffuse_tokenizer *tok, const char *text, int32_t pad_id,
                           tok_ids *out, char *err)
{
    size_t len = strlen(text);
    long bad = len > TOK_MAX_TEXT ? -1 : tok_bad_utf8(text, len);
    if (len > TOK_MAX_TEXT)
        return diffuse_fail(err, "prompt is longer than %d bytes", TOK_MAX_TEXT);
    if (bad >= 0)
        return diffuse_fail(err, "prompt is not valid UTF-8 at byte %ld", bad);
    int32_t special;
    int rc = 0;
    tok_bpe w = {0};
    /* a pad token other than <|endoftext|> is "!" (id 0): transformers treats
     * it as an added token, so every "!" in the text becomes that id */
    const char *pad_text = pad_id != tok->eos && pad_id == tok_vocab_get(tok, "!", 1) ? "!" : NULL;
    for (const char *s = text; rc == 0 && *s && out->n < out->limit;) {
        size_t special_len;
        const char *next = tok_next_special(tok, s, pad_text, pad_id, &special, &special_len);
        rc = tok_encode_segment(tok, s, (size_t)(next - s), &w, out, err);
        if (rc == 0 && special_len)
            rc = tok_ids_push(out, special, err);
        s = next + special_len;
    }
    tok_bpe_free(&w);
    return rc;
}

int diffuse_tokenizer_encode(const diffuse_tokenizer *tok, const char *text, int32_t pad_id,
                             int32_t ids[DIFFUSE_MAX_TOKENS], char *err)
{
    if (!tok || !text || !ids)
        return diffuse_fail(err, "diffuse_tokenizer_encode: tok, text and ids are required");
    int32_t content[TOK_CONTENT];
    tok_ids out = {.v = content, .cap = TOK_CONTENT, .limit = TOK_CONTENT};
    if (tok_encode_text(tok, text, pad_id, &out, err))
        return -1;
    const int count = (int)out.n;
    ids[0] = tok->bos;
    memcpy(ids + 1, content, (size_t)count * sizeof *ids);
    ids[count + 1] = tok->eos;
    for (int i = count + 2; i < DIFFUSE_MAX_TOKENS; i++)
        ids[i] = pad_id;
    return 0;
}

int diffuse_tokenizer_ids(const diffuse_tokenizer *tok, const char *text, int32_t pad_id,
                          int32_t **ids, size_t *n, char *err)
{
    tok_ids out = {.limit = SIZE_MAX};
    *ids = NULL;
    *n = 0;
    if (tok_encode_text(tok, text, pad_id, &out, err)) {
        free(out.v);
        return -1;
    }
    *ids = out.v;
    *n = out.n;
    return 0;
}

int32_t diffuse_tokenizer_id(const diffuse_tokenizer *tok, const char *token)
{
    return tok_vocab_get(tok, token, strlen(token));
}

diffuse_status diffuse_tokenize(const char *vocab_path, const char *text,
                                int32_t ids[DIFFUSE_MAX_TOKENS], char *err, size_t err_size)
{
    char msg[DIFFUSE_ERROR_SIZE] = "";
    diffuse_tokenizer *tok = NULL;
    diffuse_status status = DIFFUSE_OK;
    if (!text || !ids) {
        diffuse_fail(msg, "diffuse_tokenize: text and ids are required");
        status = DIFFUSE_ERR_ARGUMENT;
    } else if (tok_load_status(vocab_path, &tok, &status, msg) == 0) {
        status = DIFFUSE_OK;
        if (diffuse_tokenizer_encode(tok, text, diffuse_tokenizer_eos(tok), ids, msg))
            status = DIFFUSE_ERR_ARGUMENT;
    }
    diffuse_tokenizer_free(tok);
    if (status != DIFFUSE_OK && err && err_size)
        snprintf(err, err_size, "%s", msg);
    return status;
}
