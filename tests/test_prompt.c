/* test_prompt.c: A1111's prompt language (prompt.c) against A1111's outcomes.
 *
 * The parse table holds what modules/prompt_parser.py's parse_prompt_attention
 * returns for each prompt (recorded by running it; its docstring examples are
 * among them), odd cases included: unbalanced and escaped brackets, negative
 * weights, BREAK at the start, inside brackets and glued to words. The chunk
 * cases follow sd_hijack_clip.py's tokenize_line with A1111's defaults (75-id
 * chunks, comma backtrack 20), built from words whose ids are known ("a" 320,
 * "b" 321, "," 267). Then: a plain prompt gives exactly the ids the tokenizer
 * gives, weights reach the right tokens, the emphasis keeps the mean. */
#include "internal.h"
#include "test.h"

typedef struct parse_case {
    const char *prompt;
    int n;
    struct {
        const char *text;
        double weight;
    } parts[9];
} parse_case;

static const parse_case parse_cases[] = {
    {"normal text", 1, {{"normal text", 1.0}}},
    {"an (important) word", 3, {{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}},
    {"(unbalanced", 1, {{"unbalanced", 1.1}}},
    {"\\(literal\\]", 1, {{"(literal]", 1.0}}},
    {"(unnecessary)(parens)", 1, {{"unnecessaryparens", 1.1}}},
    {"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     9,
     {{"a ", 1.0},
      {"house", 1.5730000000000004},
      {" ", 1.1},
      {"on", 1.0},
      {" a ", 1.1},
      {"hill", 0.55},
      {", sun, ", 1.1},
      {"sky", 1.4641000000000006},
      {".", 1.1}}},
    {"a (red:1.3) circle, [blurry]",
     4,
     {{"a ", 1.0}, {"red", 1.3}, {" circle, ", 1.0}, {"blurry", 0.9090909090909091}}},
    {"(a:-1)", 1, {{"a", -1.0}}},
    {"((a))", 1, {{"a", 1.2100000000000002}}},
    {"[[a]]", 1, {{"a", 0.8264462809917354}}},
    {"a (b: 1.5 ) c", 3, {{"a ", 1.0}, {"b", 1.5}, {" c", 1.0}}},
    {"a :1.2) b", 1, {{"a :1.2) b", 1.0}}},
    {"a ( b:1.2 ]", 2, {{"a ", 1.0}, {" b:1.2 ]", 1.1}}},
    {"[a (b] c)", 3, {{"a ", 0.9090909090909091}, {"b", 1.0}, {" c", 1.1}}},
    {"BREAK a cat", 3, {{"", 1.0}, {"BREAK", -1.0}, {"a cat", 1.0}}},
    {"a cat BREAK", 3, {{"a cat", 1.0}, {"BREAK", -1.0}, {"", 1.0}}},
    {"a BREAK b", 3, {{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}},
    {"a BREAKb BREAK_ c", 1, {{"a BREAKb BREAK_ c", 1.0}}},
    {"(a BREAK b)", 3, {{"a", 1.1}, {"BREAK", -1.1}, {"b", 1.1}}},
    {"a  \tBREAK  \n b", 3, {{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}},
    {"x\\y", 1, {{"xy", 1.0}}},
    {"x\\", 1, {{"x", 1.0}}},
    {"\\\\(a)", 2, {{"\\", 1.0}, {"a", 1.1}}},
    {"", 1, {{"", 1.0}}},
    {"(", 1, {{"", 1.0}}},
    {")", 1, {{")", 1.0}}},
    {"]", 1, {{"]", 1.0}}},
    {"[", 1, {{"", 1.0}}},
    {":", 1, {{":", 1.0}}},
    {"(a:1.)", 1, {{"a", 1.0}}},
    {"(a:.5)", 1, {{"a", 0.5}}},
    {"(a:+2)", 1, {{"a", 2.0}}},
    {"(()a)", 1, {{"a", 1.1}}},
    {"a, BREAK, b", 3, {{"a,", 1.0}, {"BREAK", -1.0}, {", b", 1.0}}},
    {"BREAK", 3, {{"", 1.0}, {"BREAK", -1.0}, {"", 1.0}}},
    {"BREAK BREAK", 5, {{"", 1.0}, {"BREAK", -1.0}, {"", 1.0}, {"BREAK", -1.0}, {"", 1.0}}},
    {"((a) b:0.5)", 2, {{"a", 0.55}, {" b", 0.5}}},
    {"[a:0.5]", 1, {{"a:0.5", 0.9090909090909091}}},
    {"(a:1e3)", 1, {{"a:1e3", 1.1}}},
    {"\xc3\xa9"
     "BREAK",
     1,
     {{"\xc3\xa9"
       "BREAK",
       1.0}}},
    {"\xe6\x97\xa5\xe6\x9c\xac"
     "BREAK x",
     1,
     {{"\xe6\x97\xa5\xe6\x9c\xac"
       "BREAK x",
       1.0}}},
    {"a (b [c:0.5] d) e", 5, {{"a ", 1.0}, {"b ", 1.1}, {"c:0.5", 1.0}, {" d", 1.1}, {" e", 1.0}}},
};

static void test_parse(void)
{
    char err[DIFFUSE_ERROR_SIZE];
    for (size_t c = 0; c < sizeof parse_cases / sizeof *parse_cases; c++) {
        const parse_case *pc = &parse_cases[c];
        diffuse_prompt_part *parts;
        int n;
        if (diffuse_prompt_parse(pc->prompt, &parts, &n, err)) {
            CHECK(0, "parse \"%s\": %s", pc->prompt, err);
            continue;
        }
        int same = n == pc->n;
        for (int i = 0; same && i < n; i++)
            same =
                !strcmp(parts[i].text, pc->parts[i].text) && parts[i].weight == pc->parts[i].weight;
        CHECK(same, "parse \"%s\": %d parts (want %d), first \"%s\" %.17g", pc->prompt, n, pc->n,
              n ? parts[0].text : "", n ? parts[0].weight : 0.0);
        diffuse_prompt_parts_free(parts, n);
    }
    const char *bad[] = {"(a:.)", "(a:1.2.3)", "(a:-.)"};
    for (int i = 0; i < 3; i++) {
        diffuse_prompt_part *parts;
        int n;
        err[0] = 0;
        CHECK(diffuse_prompt_parse(bad[i], &parts, &n, err) == -1 && strstr(err, "not a weight"),
              "bad weight \"%s\" refused: %s", bad[i], err);
    }
}

/* "w w w ..." n times, then more words appended by the caller. */
static char *words(char *buf, const char *w, int n)
{
    for (int i = 0; i < n; i++) {
        strcat(buf, w);
        strcat(buf, " ");
    }
    return buf;
}

/* The content ids of chunk k (between <start> and the first <end>) as a string
 * of letters: a=320 -> 'a', b=321 -> 'b', ','=267 -> ',', else '?'. */
static void chunk_letters(const diffuse_prompt_chunks *c, int k, char *out)
{
    const int32_t *ids = c->ids + (size_t)k * DIFFUSE_MAX_TOKENS;
    int n = 0;
    for (int i = 1; i < DIFFUSE_MAX_TOKENS - 1 && ids[i] != 49407; i++)
        out[n++] = ids[i] == 320 ? 'a' : ids[i] == 321 ? 'b' : ids[i] == 267 ? ',' : '?';
    out[n] = 0;
}

static int chunk(const diffuse_tokenizer *tok, const char *text, int32_t pad,
                 diffuse_prompt_chunks *c)
{
    char err[DIFFUSE_ERROR_SIZE];
    if (diffuse_prompt_chunk(tok, text, pad, c, err)) {
        CHECK(0, "chunk: %s", err);
        return -1;
    }
    return 0;
}

static void expect_chunks(const diffuse_tokenizer *tok, const char *text, int count,
                          const char *const *want, const char *what)
{
    diffuse_prompt_chunks c;
    char got[DIFFUSE_MAX_TOKENS + 1];
    if (chunk(tok, text, 49407, &c))
        return;
    CHECK(c.count == count, "%s: %d chunks, want %d", what, c.count, count);
    for (int k = 0; k < c.count && k < count; k++) {
        chunk_letters(&c, k, got);
        CHECK(!strcmp(got, want[k]), "%s: chunk %d is\n  %s\nwant\n  %s", what, k, got, want[k]);
        const int32_t *ids = c.ids + (size_t)k * DIFFUSE_MAX_TOKENS;
        CHECK(ids[0] == 49406 && ids[DIFFUSE_MAX_TOKENS - 1] == 49407,
              "%s: chunk %d starts with <start> and ends with <end>", what, k);
    }
    diffuse_prompt_chunks_free(&c);
}

static char *rep(char *buf, char ch, int n)
{
    memset(buf, ch, (size_t)n);
    buf[n] = 0;
    return buf;
}

static void test_chunks(const diffuse_tokenizer *tok)
{
    char text[8192], w0[80], w1[80], w2[80];
    text[0] = 0;
    words(text, "a", 80);
    expect_chunks(tok, text, 2, (const char *[]){rep(w0, 'a', 75), rep(w1, 'a', 5)}, "80 words");
    text[0] = 0;
    words(text, "a", 75);
    expect_chunks(tok, text, 1, (const char *[]){rep(w0, 'a', 75)}, "75 words");
    text[0] = 0;
    words(text, "a", 150);
    expect_chunks(tok, text, 2, (const char *[]){rep(w0, 'a', 75), rep(w1, 'a', 75)},
                  "150 words: no empty third chunk");
    /* a comma 5 ids before the end: what follows it moves to the next chunk */
    text[0] = 0;
    strcat(words(text, "a", 70), ", ");
    words(text, "b", 10);
    strcat(rep(w0, 'a', 70), ",");
    expect_chunks(tok, text, 2, (const char *[]){w0, rep(w1, 'b', 10)}, "comma backtrack");
    /* a comma 25 ids before the end: too far, the chunk is cut at 75 */
    text[0] = 0;
    strcat(words(text, "a", 50), ", ");
    words(text, "b", 30);
    strcat(strcat(rep(w0, 'a', 50), ","), rep(w2, 'b', 24));
    expect_chunks(tok, text, 2, (const char *[]){w0, rep(w1, 'b', 6)}, "comma too far back");
    /* a comma exactly 20 back still moves the rest */
    text[0] = 0;
    strcat(words(text, "a", 55), ", ");
    words(text, "b", 30);
    strcat(rep(w0, 'a', 55), ",");
    expect_chunks(tok, text, 2, (const char *[]){w0, rep(w1, 'b', 30)}, "comma 20 back");
    expect_chunks(tok, "a BREAK b", 2, (const char *[]){"a", "b"}, "BREAK");
    expect_chunks(tok, "BREAK a", 2, (const char *[]){"", "a"}, "BREAK at the start");
    expect_chunks(tok, "a BREAK", 1, (const char *[]){"a"}, "BREAK at the end");
    expect_chunks(tok, "a BREAK BREAK b", 3, (const char *[]){"a", "", "b"}, "BREAK twice");
    expect_chunks(tok, "(a BREAK b)", 1, (const char *[]){"a?b"},
                  "BREAK inside brackets is a word");
    expect_chunks(tok, "", 1, (const char *[]){""}, "empty prompt");
    /* the longest prompt, and one id more */
    text[0] = 0;
    words(text, "a", 75 * DIFFUSE_MAX_PROMPT_CHUNKS);
    diffuse_prompt_chunks c;
    if (chunk(tok, text, 49407, &c) == 0) {
        CHECK(c.count == DIFFUSE_MAX_PROMPT_CHUNKS, "%d chunks", c.count);
        diffuse_prompt_chunks_free(&c);
    }
}

static void test_plain_and_weights(const diffuse_tokenizer *tok)
{
    char err[DIFFUSE_ERROR_SIZE];
    const char *plain[] = {"a red circle on a blue background", "", "Hello, WORLD!  x",
                           "an astronaut riding a horse!!", "<|endoftext|> a"};
    const int32_t pads[] = {49407, 0};
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++)
        for (int p = 0; p < 2; p++) {
            int32_t want[DIFFUSE_MAX_TOKENS];
            diffuse_prompt_chunks c;
            if (diffuse_tokenizer_encode(tok, plain[i], pads[p], want, err) ||
                chunk(tok, plain[i], pads[p], &c)) {
                CHECK(0, "plain \"%s\": %s", plain[i], err);
                continue;
            }
            int same = c.count == 1 && !c.weighted && !memcmp(c.ids, want, sizeof want);
            for (int k = 0; same && k < DIFFUSE_MAX_TOKENS; k++)
                same = c.weights[k] == 1.0f;
            CHECK(same, "plain \"%s\" pad %d: the tokenizer's own ids, weights 1", plain[i],
                  pads[p]);
            diffuse_prompt_chunks_free(&c);
        }
    diffuse_prompt_chunks c;
    if (chunk(tok, "a (b:1.5) [a] b", 49407, &c) == 0) {
        const float want[6] = {1.0f, 1.0f, 1.5f, (float)(1 / 1.1), 1.0f, 1.0f};
        int same = c.weighted;
        for (int k = 0; k < 6; k++)
            same = same && c.weights[k] == want[k];
        CHECK(same && c.ids[1] == 320 && c.ids[2] == 321 && c.ids[3] == 320 && c.ids[4] == 321,
              "weights on their tokens: %g %g %g %g", c.weights[1], c.weights[2], c.weights[3],
              c.weights[4]);
        diffuse_prompt_chunks_free(&c);
    }
    /* an over-long prompt is refused with a message saying so */
    char *text = malloc(200000);
    text[0] = 0;
    words(text, "a", 75 * DIFFUSE_MAX_PROMPT_CHUNKS + 1);
    err[0] = 0;
    CHECK(diffuse_prompt_chunk(tok, text, 49407, &c, err) == -1 && strstr(err, "chunks"),
          "too long: %s", err);
    memset(text, 'a', DIFFUSE_MAX_PROMPT_BYTES + 1);
    text[DIFFUSE_MAX_PROMPT_BYTES + 1] = 0;
    CHECK(diffuse_prompt_chunk(tok, text, 49407, &c, err) == -1 && strstr(err, "bytes"),
          "too many bytes: %s", err);
    free(text);
}

static void test_emphasis(void)
{
    enum { W = 8, STRIDE = 11 };
    float z[DIFFUSE_MAX_TOKENS * STRIDE], orig[DIFFUSE_MAX_TOKENS * STRIDE];
    float w[DIFFUSE_MAX_TOKENS];
    for (int i = 0; i < DIFFUSE_MAX_TOKENS * STRIDE; i++)
        z[i] = orig[i] = (float)(0.3 + sin(i * 0.7));
    for (int p = 0; p < DIFFUSE_MAX_TOKENS; p++)
        w[p] = p == 3 ? 1.5f : p == 5 ? 0.5f : 1.0f;
    diffuse_prompt_emphasis(z, STRIDE, W, w);
    double before = 0, after = 0;
    for (int p = 0; p < DIFFUSE_MAX_TOKENS; p++)
        for (int j = 0; j < W; j++) {
            before += orig[p * STRIDE + j];
            after += z[p * STRIDE + j];
        }
    CHECK(fabs(before - after) < 1e-4 * fabs(before), "mean kept: %g vs %g", before, after);
    const double k = z[0] / orig[0];
    CHECK(fabs(z[3 * STRIDE + 1] / orig[3 * STRIDE + 1] - 1.5 * k) < 1e-5 &&
              fabs(z[5 * STRIDE + 2] / orig[5 * STRIDE + 2] - 0.5 * k) < 1e-5,
          "weights scale their tokens");
    CHECK(z[W] == orig[W] && z[STRIDE - 1] == orig[STRIDE - 1], "columns past width untouched");
}

int main(void)
{
    char path[4096], err[DIFFUSE_ERROR_SIZE];
    diffuse_tokenizer *tok = NULL;
    test_parse();
    test_emphasis();
    if (test_shared("clip/bpe_simple_vocab_16e6.txt.gz", path)) {
        if (diffuse_tokenizer_load(path, &tok, err))
            CHECK(0, "load %s: %s", path, err);
        else {
            test_chunks(tok);
            test_plain_and_weights(tok);
        }
        diffuse_tokenizer_free(tok);
    }
    TEST_END();
}
