/* fuzz_vocab.c: libFuzzer harness for the two vocabulary formats the
 * tokenizer reads (tokenizer.c): a Hugging Face folder (vocab.json and
 * merges.txt: the input split at its first NUL byte) when the first byte is
 * even, else OpenAI's merges list (bpe_simple_vocab_16e6.txt, or gzipped when
 * the rest starts with gzip's magic). Each loads or is refused with a message;
 * what loads tokenizes a few texts to ids inside its vocabulary. */
#include "../../engine/internal.h"
#include "fuzz.h"

static const char *const texts[] = {"a photo of a cat", "!!, (hello:1.2) \xc3\xa9t\xc3\xa9", ""};

static void use(const diffuse_tokenizer *tok)
{
    char err[DIFFUSE_ERROR_SIZE];
    const int32_t top = diffuse_tokenizer_max_id(tok);
    for (size_t t = 0; t < sizeof texts / sizeof texts[0]; t++) {
        int32_t ids[DIFFUSE_MAX_TOKENS];
        if (diffuse_tokenizer_encode(tok, texts[t], diffuse_tokenizer_eos(tok), ids, err) != 0)
            continue; /* a vocabulary without a byte's symbol cannot spell every text */
        for (int i = 0; i < DIFFUSE_MAX_TOKENS; i++)
            if (ids[i] < 0 || ids[i] > top)
                abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char path[4096], err[DIFFUSE_ERROR_SIZE] = "";
    const uint8_t *rest = data + 1;
    const size_t n = size - 1;
    const char *load;
    if (data[0] % 2 == 0) {
        const uint8_t *nul = memchr(rest, 0, n);
        const size_t vlen = nul ? (size_t)(nul - rest) : n;
        fuzz_file("hf/vocab.json", rest, vlen, path);
        fuzz_file("hf/merges.txt", nul ? nul + 1 : rest, nul ? n - vlen - 1 : 0, path);
        snprintf(path, sizeof path, "%s/hf", fuzz_dir());
        load = path;
    } else {
        const bool gz = n >= 2 && rest[0] == 0x1f && rest[1] == 0x8b;
        load = fuzz_file(gz ? "bpe.txt.gz" : "bpe.txt", rest, n, path);
    }
    diffuse_tokenizer *tok = NULL;
    if (diffuse_tokenizer_load(load, &tok, err) == DIFFUSE_OK)
        use(tok);
    else if (!err[0] || tok)
        abort();
    diffuse_tokenizer_free(tok);
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/hf", fuzz_dir());
    return mkdir(dir, 0700);
}
