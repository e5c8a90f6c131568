/* fuzz_prompt.c: libFuzzer harness for A1111's prompt language (prompt.c):
 * the weights parser and the <kind:args> tag extraction on any bytes. Every
 * part's weight must be a number, every part's text a substring-built string. */
#include <stdlib.h>
#include <string.h>

#include "../../engine/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), err[DIFFUSE_ERROR_SIZE];
    memcpy(text, data, size);
    text[size] = 0;
    diffuse_prompt_part *parts;
    int n;
    if (diffuse_prompt_parse(text, &parts, &n, err) == 0) {
        size_t total = 0;
        for (int i = 0; i < n; i++)
            total += strlen(parts[i].text);
        if (n < 1 || total > strlen(text) + 5 * (size_t)n)
            abort();
        diffuse_prompt_parts_free(parts, n);
    }
    char *stripped;
    diffuse_prompt_tag *tags;
    if (diffuse_prompt_tags(text, &stripped, &tags, &n, err) == 0) {
        if (strlen(stripped) > strlen(text))
            abort();
        free(stripped);
        diffuse_prompt_tags_free(tags, n);
    }
    free(text);
    return 0;
}
