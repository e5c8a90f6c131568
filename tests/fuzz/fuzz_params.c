/* fuzz_params.c: libFuzzer harness for the parameters text (params.c): any
 * bytes parse without a crash, and what they parse to writes back and parses
 * again to the same settings. */
#include <stdlib.h>
#include <string.h>

#include "../../engine/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), err[DIFFUSE_ERROR_SIZE];
    memcpy(text, data, size);
    text[size] = 0;
    diffuse_parameters p, q;
    if (diffuse_parameters_parse(text, &p, err, sizeof err) == DIFFUSE_OK) {
        if (p.sampler < 0)
            p.sampler = 0;
        if (p.guidance < 0)
            p.guidance = 7;
        char *again = diffuse_parameters_text(&p);
        if (!again || diffuse_parameters_parse(again, &q, err, sizeof err) != DIFFUSE_OK)
            abort();
        if (q.steps != p.steps || q.sampler != p.sampler || q.seed != p.seed ||
            q.width != p.width || q.clip_skip != (p.clip_skip > 1 ? p.clip_skip : 0) ||
            q.rng != p.rng)
            abort();
        diffuse_parameters_free(&q);
        free(again);
        diffuse_parameters_free(&p);
    }
    free(text);
    return 0;
}
