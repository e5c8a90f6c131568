/* fuzz_tokenizer.c: libFuzzer harness for the CLIP tokenizer's text side
 * (tokenizer.c): any bytes as a prompt give 77 ids inside the vocabulary
 * (<start> first, <end> at the end of the text or the last place) or are
 * refused with a message; the untruncated ids come too. The vocabulary is CLIP's own from ../shared
 * (DIFFUSE_SHARED), else the tiny one of fuzz.h. The first byte picks the pad
 * token, <end> or "!" (SD 2.x and SDXL's second encoder). */
#include "../../engine/internal.h"
#include "fuzz.h"

static diffuse_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[4096], err[DIFFUSE_ERROR_SIZE];
    const char *shared = getenv("DIFFUSE_SHARED");
    snprintf(path, sizeof path, "%s/clip/bpe_simple_vocab_16e6.txt.gz",
             shared ? shared : "../shared");
    if (diffuse_tokenizer_load(path, &tok, err) != DIFFUSE_OK &&
        diffuse_tokenizer_load(fuzz_tiny_vocab(), &tok, err) != DIFFUSE_OK)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *text = malloc(size), err[DIFFUSE_ERROR_SIZE] = "";
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    const int32_t bos = diffuse_tokenizer_bos(tok), eos = diffuse_tokenizer_eos(tok);
    const int32_t pad = data[0] & 1 ? diffuse_tokenizer_id(tok, "!") : eos,
                  top = diffuse_tokenizer_max_id(tok);
    int32_t ids[DIFFUSE_MAX_TOKENS];
    if (diffuse_tokenizer_encode(tok, text, pad < 0 ? eos : pad, ids, err) == 0) {
        bool ended = false;
        for (int i = 0; i < DIFFUSE_MAX_TOKENS; i++) {
            if (ids[i] < 0 || ids[i] > top || (i == 0 && ids[i] != bos))
                abort();
            ended = ended || ids[i] == eos;
        }
        if (!ended)
            abort();
        int32_t *all;
        size_t n;
        if (diffuse_tokenizer_ids(tok, text, pad < 0 ? eos : pad, &all, &n, err) != 0)
            abort(); /* the same text, untruncated */
        free(all);
    } else if (!err[0]) {
        abort();
    }
    free(text);
    return 0;
}
