/* fuzz_config.c: libFuzzer harness for the model folder's JSON files
 * (util.c's reader, model.c's scheduler_config.json fields) and the schedules
 * they make (sampler.c): any bytes as a scheduler_config.json are read or
 * refused with a message naming the place; a schedule that is read either
 * makes every sampler, whose steps run with finite numbers, or is refused with
 * a message, never a crash or undefined arithmetic. The first input byte picks
 * the step count and Karras sigmas; the rest is the file. */
#include <cJSON.h>

#include "../../engine/internal.h"
#include "fuzz.h"

#define N 4 /* floats in a latent */

static int draw(void *self, float *out, size_t n, const char *site, char *err)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (float)(i % 3) - 1.0f;
    return 0;
}

static void run_sampler(diffuse_sampler kind, bool karras, int steps,
                        const diffuse_schedule_config *c)
{
    char err[DIFFUSE_ERROR_SIZE] = "";
    diffuse_sampler_state *s;
    if (diffuse_sampler_create(kind, karras, c, steps, 1.0f, N, &s, err)) {
        if (!err[0] || s)
            abort();
        return;
    }
    float x[N], in[N], out[N] = {0.1f, -0.2f, 0.3f, 0.0f};
    for (int i = 0; i < N; i++)
        x[i] = diffuse_sampler_init_sigma(s) * ((float)i - 1.5f);
    diffuse_noise noise = {draw, NULL};
    for (int i = 0; i < diffuse_sampler_count(s); i++) {
        diffuse_sampler_scale_input(s, i, x, in);
        (void)diffuse_sampler_timestep(s, i);
        if (diffuse_sampler_step(s, i, out, x, &noise, err))
            abort(); /* a schedule that was made must run */
    }
    diffuse_sampler_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char path[4096], err[DIFFUSE_ERROR_SIZE] = "";
    fuzz_file("scheduler_config.json", data + 1, size - 1, path);
    cJSON *json = diffuse_json_load(path, err);
    if (!json) {
        if (!strstr(err, path))
            abort();
        return 0;
    }
    diffuse_schedule_config c = diffuse_schedule_config_default();
    diffuse_schedule_from_json(&c, json);
    cJSON_Delete(json);
    const int steps = 1 + data[0] % 64;
    for (int k = 0; k < DIFFUSE_SAMPLER_COUNT; k++)
        run_sampler((diffuse_sampler)k, data[0] & 0x80, steps, &c);
    return 0;
}
