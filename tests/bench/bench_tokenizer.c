/* bench_tokenizer.c: `make bench-tokenizer`. Load time of the CLIP tokenizer
 * in both layouts it reads (vocab.json + merges.txt; OpenAI's merges list,
 * bpe_simple_vocab_16e6.txt.gz), and encode time of a typical prompt, a long
 * one (A1111-style, several hundred tokens, all of them encoded) and long
 * words (random letters, no space: BPE over one piece of that many symbols), best of
 * several runs each.
 *   bench_tokenizer HF_TOKENIZER_DIR OPENAI_GZ */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double best_load(const char *path, int reps)
{
    char err[DIFFUSE_ERROR_SIZE];
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        diffuse_tokenizer *tok = NULL;
        double t0 = now();
        if (diffuse_tokenizer_load(path, &tok, err)) {
            fprintf(stderr, "%s\n", err);
            exit(1);
        }
        double dt = now() - t0;
        best = dt < best ? dt : best;
        diffuse_tokenizer_free(tok);
    }
    return best;
}

/* Best time of encoding text, all of its ids; *count receives how many. */
static double best_encode(const diffuse_tokenizer *tok, const char *text, int reps, size_t *count)
{
    char err[DIFFUSE_ERROR_SIZE];
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        int32_t *ids = NULL;
        double t0 = now();
        if (diffuse_tokenizer_ids(tok, text, diffuse_tokenizer_eos(tok), &ids, count, err)) {
            fprintf(stderr, "%s\n", err);
            exit(1);
        }
        double dt = now() - t0;
        best = dt < best ? dt : best;
        free(ids);
    }
    return best;
}

/* n pseudo-random lower-case letters: one word, few repeated pairs */
static char *letters(size_t n)
{
    char *s = malloc(n + 1);
    uint32_t x = 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        s[i] = (char)('a' + (x >> 16) % 26);
    }
    s[n] = 0;
    return s;
}

static char *repeat(const char *unit, size_t times)
{
    size_t n = strlen(unit);
    char *s = malloc(n * times + 1);
    for (size_t i = 0; i < times; i++)
        memcpy(s + i * n, unit, n);
    s[n * times] = 0;
    return s;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s HF_TOKENIZER_DIR OPENAI_GZ\n", argv[0]);
        return 2;
    }
    char err[DIFFUSE_ERROR_SIZE];
    printf("load vocab.json + merges.txt: %.1f ms\n", 1e3 * best_load(argv[1], 15));
    printf("load OpenAI merges list:      %.1f ms\n", 1e3 * best_load(argv[2], 15));
    diffuse_tokenizer *tok = NULL;
    if (diffuse_tokenizer_load(argv[1], &tok, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const char *typical = "a photograph of an astronaut riding a horse on the moon, "
                          "highly detailed, 8k, dramatic lighting";
    char *longer = repeat("masterpiece, best quality, (ultra-detailed:1.2), a beautiful "
                          "watercolor painting of a lighthouse on a cliff at sunset, "
                          "trending on artstation, by Greg Rutkowski and Alphonse Mucha, ",
                          8);
    struct {
        const char *name;
        char *text;
    } cases[] = {
        {"typical prompt", (char *)typical},         {"long prompt", longer},
        {"a word of 40 letters", letters(40)},       {"a word of 1000 letters", letters(1000)},
        {"a word of 10000 letters", letters(10000)}, {"a word of 100000 letters", letters(100000)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = 0;
        double t = best_encode(tok, cases[i].text, i < 3 ? 200 : 3, &n);
        printf("encode %-26s (%5zu bytes, %4zu ids): %9.1f us\n", cases[i].name,
               strlen(cases[i].text), n, 1e6 * t);
    }
    for (size_t i = 1; i < sizeof cases / sizeof *cases; i++)
        free(cases[i].text);
    diffuse_tokenizer_free(tok);
    return 0;
}
