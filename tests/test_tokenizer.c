/* test_tokenizer.c: the CLIP tokenizer against transformers' ids.
 *
 * Every prompt of golden.json "tokens" (CLIPTokenizer, 77 ids) is encoded with
 * both vocabulary sources, the HF tokenizer folder and OpenAI's
 * bpe_simple_vocab_16e6.txt.gz, and "tokens_openai" (simple_tokenizer, no
 * start/end) is checked too. Then the other path forms, concurrent encoding,
 * and the failures: missing files, malformed vocab.json / merges, bad text. */
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <zlib.h>

#include "internal.h"
#include "test.h"

#define EOT 49407

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Prints the first difference; returns 1 when all n ids agree. */
static int same_ids(const int32_t *got, const cJSON *want, int n, const char *what,
                    const char *prompt)
{
    if (cJSON_GetArraySize(want) < n)
        return 0;
    for (int i = 0; i < n; i++) {
        int w = cJSON_GetArrayItem(want, i)->valueint;
        if (got[i] != w) {
            printf("  %s \"%.40s\": id %d is %d, want %d\n", what, prompt, i, got[i], w);
            return 0;
        }
    }
    return 1;
}

static diffuse_tokenizer *load_ok(const char *path, const char *what)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_tokenizer *tok = NULL;
    double t0 = now_ms();
    int rc = path ? (int)diffuse_tokenizer_load(path, &tok, err) : -1;
    if (!path)
        return NULL;
    printf("load %s: %.1f ms\n", what, now_ms() - t0);
    CHECK(rc == 0 && tok, "load %s: %s", path, err);
    if (tok) {
        CHECK(diffuse_tokenizer_bos(tok) == 49406, "%s bos %d", what, diffuse_tokenizer_bos(tok));
        CHECK(diffuse_tokenizer_eos(tok) == EOT, "%s eos %d", what, diffuse_tokenizer_eos(tok));
    }
    return tok;
}

/* All golden "tokens" prompts through one tokenizer. */
static void check_golden(const diffuse_tokenizer *tok, const cJSON *golden, const char *what)
{
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(golden, "tokens");
    const cJSON *item;
    int count = 0;
    cJSON_ArrayForEach(item, tokens)
    {
        char err[DIFFUSE_ERROR_SIZE] = "";
        int32_t ids[DIFFUSE_MAX_TOKENS];
        int rc = diffuse_tokenizer_encode(tok, item->string, EOT, ids, err);
        CHECK(rc == 0, "%s encode \"%s\": %s", what, item->string, err);
        CHECK(rc == 0 && same_ids(ids, item, DIFFUSE_MAX_TOKENS, what, item->string),
              "%s: \"%.60s\" differs from transformers", what, item->string);
        count++;
    }
    CHECK(count >= 8, "golden.json has only %d token prompts", count);
}

/* "tokens_openai": simple_tokenizer ids without <start>/<end>; the engine
 * keeps the first 75. Reports where transformers and OpenAI disagree. */
static void check_openai(const diffuse_tokenizer *tok, const cJSON *golden)
{
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(golden, "tokens");
    const cJSON *openai = cJSON_GetObjectItemCaseSensitive(golden, "tokens_openai");
    const cJSON *item;
    cJSON_ArrayForEach(item, openai)
    {
        int32_t ids[DIFFUSE_MAX_TOKENS];
        char err[DIFFUSE_ERROR_SIZE] = "";
        int n = cJSON_GetArraySize(item), keep = n < 75 ? n : 75;
        diffuse_tokenizer_encode(tok, item->string, EOT, ids, err);
        CHECK(same_ids(ids + 1, item, keep, "openai", item->string) && ids[keep + 1] == EOT,
              "openai ids of \"%.60s\"", item->string);
        const cJSON *hf = cJSON_GetObjectItemCaseSensitive(tokens, item->string);
        int agree = hf && cJSON_GetArraySize(hf) == DIFFUSE_MAX_TOKENS;
        for (int i = 0; agree && i < keep; i++)
            agree =
                cJSON_GetArrayItem(hf, i + 1)->valueint == cJSON_GetArrayItem(item, i)->valueint;
        if (!agree)
            printf("note: transformers and OpenAI differ on \"%s\"\n", item->string);
    }
}

static void check_encode(const diffuse_tokenizer *tok, const char *text, const int32_t *want, int n,
                         int32_t pad)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    int32_t ids[DIFFUSE_MAX_TOKENS];
    int rc = diffuse_tokenizer_encode(tok, text, pad, ids, err);
    int ok = rc == 0;
    for (int i = 0; ok && i < DIFFUSE_MAX_TOKENS; i++)
        ok = ids[i] == (i < n ? want[i] : pad);
    CHECK(ok, "encode \"%.40s\" (rc %d %s): got %d %d %d %d %d ...", text, rc, err, ids[0], ids[1],
          ids[2], ids[3], ids[4]);
}

static void check_known(const diffuse_tokenizer *tok)
{
    static const int32_t cat[] = {49406, 320, 1125, 539, 320, 2368, 49407};
    check_encode(tok, "a photo of a cat", cat, 7, EOT);
    check_encode(tok, "  A\tPHOTO\n\nof a CAT ", cat, 7, 0); /* pad is the caller's */
    static const int32_t special[] = {49406, 320, 49407, 2368, 49407};
    check_encode(tok, "a<|endoftext|>cat", special, 5, EOT);
    /* transformers matches specials as written: upper case is plain text */
    static const int32_t upper[] = {49406, 320, 27, 347, 40786, 4160, 91, 285, 49407};
    check_encode(tok, "a <|ENDOFTEXT|>", upper, 9, EOT);
    static const int32_t empty[] = {49406, 49407};
    check_encode(tok, " \t\n ", empty, 2, EOT);
    /* pad "!" (id 0, the OpenCLIP tokenizers of SD 2.x and SDXL): every "!" is
     * that added token, split out before BPE (sdxl-tiny's tokens_2) */
    static const int32_t bang_eot[] = {49406, 3306, 748, 1002, 256, 49407};
    check_encode(tok, "hello!! world !", bang_eot, 6, EOT);
    static const int32_t bang_0[] = {49406, 3306, 0, 0, 1002, 0, 49407};
    check_encode(tok, "hello!! world !", bang_0, 7, 0);
}

/* The second tokenizer's ids, sdxl-tiny's "tokens_2": pad "!" = 0. */
static void check_golden_pad0(const diffuse_tokenizer *tok, const cJSON *golden)
{
    const cJSON *item;
    int count = 0;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(golden, "tokens_2"))
    {
        char err[DIFFUSE_ERROR_SIZE] = "";
        int32_t ids[DIFFUSE_MAX_TOKENS];
        int rc = diffuse_tokenizer_encode(tok, item->string, 0, ids, err);
        CHECK(rc == 0 && same_ids(ids, item, DIFFUSE_MAX_TOKENS, "tokens_2", item->string),
              "pad 0: \"%.60s\" differs from transformers' tokenizer_2 (%s)", item->string, err);
        count++;
    }
    CHECK(count >= 8, "sdxl-tiny golden.json has only %d tokens_2 prompts", count);
}

/* A 60,000-letter word: BPE stays fast and the truncation keeps <end>. */
static void check_long(const diffuse_tokenizer *tok)
{
    size_t n = 60000;
    char *text = malloc(n + 1), err[DIFFUSE_ERROR_SIZE] = "";
    int32_t ids[DIFFUSE_MAX_TOKENS];
    for (size_t i = 0; i < n; i++)
        text[i] = "abcdefghij"[(i * 7 + i / 13) % 10];
    text[n] = 0;
    double t0 = now_ms();
    int rc = diffuse_tokenizer_encode(tok, text, EOT, ids, err);
    printf("encode of one %zu-letter word: %.1f ms\n", n, now_ms() - t0);
    CHECK(rc == 0 && ids[0] == 49406 && ids[75] != EOT && ids[76] == EOT, "long word: %s", err);
    free(text);
    text = malloc((2u << 20) + 1);
    memset(text, 'a', 2u << 20);
    text[2u << 20] = 0;
    rc = diffuse_tokenizer_encode(tok, text, EOT, ids, err);
    CHECK(rc == -1 && strstr(err, "longer"), "2 MiB prompt: rc %d, %s", rc, err);
    free(text);
}

typedef struct worker {
    const diffuse_tokenizer *tok;
    const cJSON *golden;
    int bad;
} worker;

static void *worker_run(void *arg)
{
    worker *w = arg;
    const cJSON *item;
    for (int round = 0; round < 20; round++) {
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(w->golden, "tokens"))
        {
            int32_t ids[DIFFUSE_MAX_TOKENS];
            char err[DIFFUSE_ERROR_SIZE];
            for (int i = 0; i < DIFFUSE_MAX_TOKENS; i++)
                ids[i] = -1;
            if (diffuse_tokenizer_encode(w->tok, item->string, EOT, ids, err) != 0)
                w->bad++;
            for (int i = 0; i < DIFFUSE_MAX_TOKENS; i++)
                w->bad += ids[i] != cJSON_GetArrayItem(item, i)->valueint;
        }
    }
    return NULL;
}

static void check_threads(const diffuse_tokenizer *tok, const cJSON *golden)
{
    pthread_t th[4];
    worker w[4];
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){tok, golden, 0};
        pthread_create(&th[i], NULL, worker_run, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        bad += w[i].bad;
    }
    CHECK(bad == 0, "concurrent encodes: %d wrong ids", bad);
}

/* vocab.json path, merges.txt path (HF pair), a lone merges.txt (rebuilt the
 * OpenAI way) and the public diffuse_tokenize. */
static void check_paths(const char *folder, const char *tmp)
{
    static const int32_t cat[] = {49406, 320, 1125, 539, 320, 2368, 49407};
    char path[4096], err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_tokenizer *tok;
    const char *files[] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", folder, files[i]);
        tok = load_ok(path, files[i]);
        if (tok)
            check_encode(tok, "a photo of a cat", cat, 7, EOT);
        diffuse_tokenizer_free(tok);
    }
    snprintf(path, sizeof path, "%s/merges.txt", folder);
    char *merges = test_read_file(path);
    snprintf(path, sizeof path, "%s/merges.txt", tmp);
    write_text(path, merges ? merges : "");
    free(merges);
    tok = load_ok(path, "lone merges.txt");
    if (tok)
        check_encode(tok, "a photo of a cat", cat, 7, EOT);
    diffuse_tokenizer_free(tok);
    unlink(path);

    int32_t ids[DIFFUSE_MAX_TOKENS];
    diffuse_status st = diffuse_tokenize(folder, "a photo of a cat", ids, err, sizeof err);
    CHECK(st == DIFFUSE_OK && ids[5] == 2368 && ids[6] == EOT && ids[76] == EOT,
          "diffuse_tokenize: %d %s", st, err);
}

/* ------------------------------------------------------------------ failures */

/* Loads path, which must fail as `kind` with a message containing `want`. */
static void expect_fail_as(const char *path, diffuse_status kind, const char *want)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_tokenizer *tok = (diffuse_tokenizer *)&err; /* must come back NULL */
    diffuse_status st = diffuse_tokenizer_load(path, &tok, err);
    CHECK(st == kind && tok == NULL && strstr(err, want),
          "load %s: status %d (want %d), \"%s\", want \"%s\"", path, st, kind, err, want);
}

/* ... a malformed vocabulary: DIFFUSE_ERR_FORMAT. */
static void expect_fail(const char *path, const char *want)
{
    expect_fail_as(path, DIFFUSE_ERR_FORMAT, want);
}

/* A folder holding a vocab.json and a merges.txt with the given contents. */
static void expect_fail_hf(const char *tmp, const char *vocab, const char *merges, const char *want)
{
    char v[4096], m[4096];
    snprintf(v, sizeof v, "%s/vocab.json", tmp);
    snprintf(m, sizeof m, "%s/merges.txt", tmp);
    write_text(v, vocab);
    write_text(m, merges);
    expect_fail(tmp, want);
    unlink(v);
    unlink(m);
}

static void check_load_errors(const char *tmp)
{
    char path[4096];
    expect_fail_as("/nonexistent/tokenizer", DIFFUSE_ERR_IO, "cannot open");
    expect_fail_as(tmp, DIFFUSE_ERR_IO, "no vocab.json"); /* empty folder */
    snprintf(path, sizeof path, "%s/vocab.json", tmp);
    write_text(path, "{\"a\": 0}");
    expect_fail_as(tmp, DIFFUSE_ERR_IO, "no merges"); /* vocab.json alone */
    unlink(path);
    expect_fail_hf(tmp, "{\"a\": 0, ", "#version: 0.2\n", "not valid JSON");
    expect_fail_hf(tmp, "[1, 2]", "#version: 0.2\n", "expected an object");
    expect_fail_hf(tmp, "{\"a\": 1.5}", "#version: 0.2\n", "no valid id");
    expect_fail_hf(tmp, "{\"a\": -3}", "#version: 0.2\n", "no valid id");
    expect_fail_hf(tmp, "{\"a\": \"x\"}", "#version: 0.2\n", "no valid id");
    expect_fail_hf(tmp, "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\na b\nbad line here\n",
                   "merges.txt line 3: expected two tokens");
    expect_fail_hf(tmp, "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\na  b\n", "line 2");
    expect_fail_hf(tmp, "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\nab\n", "line 2");
    expect_fail_hf(tmp, "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\na b\nx y\n",
                   "line 3: token \"x\" is not in the vocabulary");
    expect_fail_hf(tmp, "{\"a\": 0, \"b\": 1}", "#version: 0.2\na b\n", "\"ab\" is not in");
    expect_fail_hf(tmp, "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\na b\n",
                   "lacks the symbol of byte 0x00");
}

static void check_tiny_vocab(const char *tmp)
{
    char v[4096], m[4096], err[DIFFUSE_ERROR_SIZE] = "";
    snprintf(v, sizeof v, "%s/vocab.json", tmp);
    snprintf(m, sizeof m, "%s/merges.txt", tmp);
    char *vocab = test_tiny_vocab("\"a</w>\": 0, ");
    write_text(v, vocab);
    write_text(m, "#version: 0.2\n");
    free(vocab);
    diffuse_tokenizer *tok = NULL;
    int rc = diffuse_tokenizer_load(tmp, &tok, err);
    CHECK(rc == 0, "tiny vocabulary: %s", err);
    if (tok) {
        /* no merges: one symbol per byte; "a</w>" is listed twice, last id wins */
        static const int32_t want[] = {512, 97, 354, 0, 513};
        check_encode(tok, "ab a", want, 5, 513);
    }
    diffuse_tokenizer_free(tok);
    unlink(v);
    unlink(m);
}

/* OpenAI-style lists: plain or gzip, too short, malformed, truncated gzip. */
static void check_list_errors(const char *tmp, const char *gz_path)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/bpe.txt", tmp);
    write_text(path, "\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\n");
    expect_fail(path, "2 merges, CLIP needs 48894");
    write_text(path, "\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h e\n");
    expect_fail(path, "bpe.txt line 3: expected two tokens");
    char *longline = malloc(5000);
    memset(longline, 'x', 4999);
    longline[4999] = 0;
    longline[0] = '#';
    longline[1] = '\n';
    write_text(path, longline);
    expect_fail(path, "line 2: longer than");
    free(longline);
    unlink(path);
    if (!gz_path)
        return;
    /* the first 50 KB of the real list's compressed stream: ~17,000 lines */
    char *gz = malloc(50000);
    FILE *f = fopen(gz_path, "rb");
    size_t n = f ? fread(gz, 1, 50000, f) : 0;
    if (f)
        fclose(f);
    snprintf(path, sizeof path, "%s/cut.txt.gz", tmp);
    f = fopen(path, "wb");
    if (f) {
        fwrite(gz, 1, n, f);
        fclose(f);
    }
    free(gz);
    expect_fail(path, "cannot decompress line");
    unlink(path);
}

static void check_text_errors(const diffuse_tokenizer *tok, const char *folder)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    int32_t ids[DIFFUSE_MAX_TOKENS];
    int rc = diffuse_tokenizer_encode(tok, "caf\xc3 au lait", EOT, ids, err);
    CHECK(rc == -1 && err[0], "invalid UTF-8: rc %d", rc);
    rc = diffuse_tokenizer_encode(tok, NULL, EOT, ids, err);
    CHECK(rc == -1, "NULL text accepted");
    diffuse_status st = diffuse_tokenize("/nonexistent", "a", ids, err, sizeof err);
    CHECK(st == DIFFUSE_ERR_IO && strstr(err, "/nonexistent"), "tokenize missing: %d %s", st, err);
    char small[16];
    st = diffuse_tokenize("/nonexistent", "a", ids, small, sizeof small);
    CHECK(st == DIFFUSE_ERR_IO && strlen(small) == sizeof small - 1, "small err buffer");
    st = diffuse_tokenize(folder, "\xff", ids, err, sizeof err);
    CHECK(st == DIFFUSE_ERR_ARGUMENT, "tokenize invalid UTF-8: %d", st);
    st = diffuse_tokenize(NULL, "a", ids, err, sizeof err);
    CHECK(st == DIFFUSE_ERR_ARGUMENT, "tokenize NULL path: %d", st);
}

int main(void)
{
    char buf1[4096], buf2[4096], buf3[4096], buf4[4096];
    const char *xl_path = test_shared("reference/sdxl-tiny/golden.json", buf4);
    cJSON *xl = xl_path ? diffuse_json_load(xl_path, NULL) : NULL;
    CHECK(!xl_path || xl, "cannot parse %s", xl_path);
    const char *golden_path = test_shared("reference/sd1-tiny/golden.json", buf1);
    const char *folder = test_shared("reference/sd1-tiny/model-diffusers/tokenizer", buf2);
    const char *gz = test_shared("clip/bpe_simple_vocab_16e6.txt.gz", buf3);
    char tmp[] = "/tmp/test_tokenizer.XXXXXX";
    if (!mkdtemp(tmp)) {
        printf("FAIL mkdtemp\n");
        return 1;
    }
    cJSON *golden = golden_path ? diffuse_json_load(golden_path, NULL) : NULL;
    CHECK(!golden_path || golden, "cannot parse %s", golden_path);

    diffuse_tokenizer *hf = load_ok(folder, "HF folder");
    diffuse_tokenizer *openai = load_ok(gz, "OpenAI .gz");
    const diffuse_tokenizer *any = hf ? hf : openai;
    if (golden && hf)
        check_golden(hf, golden, "HF folder");
    if (golden && openai) {
        check_golden(openai, golden, "OpenAI .gz");
        check_openai(openai, golden);
    }
    if (any) {
        check_known(any);
        check_long(any);
    }
    if (golden && any)
        check_threads(any, golden);
    if (xl && hf)
        check_golden_pad0(hf, xl);
    if (xl && openai)
        check_golden_pad0(openai, xl);
    if (folder)
        check_paths(folder, tmp);
    check_load_errors(tmp);
    check_tiny_vocab(tmp);
    check_list_errors(tmp, gz);
    if (any && folder)
        check_text_errors(any, folder);
    diffuse_tokenizer_free(hf);
    diffuse_tokenizer_free(openai);
    cJSON_Delete(golden);
    cJSON_Delete(xl);
    rmdir(tmp);
    TEST_END();
}
