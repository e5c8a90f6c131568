/* test_model.c: what model loading reads off a diffusers folder besides the
 * tensors: the scheduler config's settings for distilled models. */
#include <stdlib.h>
#include <unistd.h>

#include "../engine/diffuse.h"
#include "test.h"

/* A copy of the reference folder (its parts linked) with its own scheduler config. */
static int make_folder(const char *src, const char *dst, const char *scheduler_json)
{
    char path[4096], target[4096];
    const char *parts[] = {"unet", "vae", "text_encoder", "tokenizer", "model_index.json"};
    if (mkdir(dst, 0700) != 0)
        return -1;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dst, parts[i]);
        if (!realpath(src, target))
            return -1;
        size_t n = strlen(target);
        snprintf(target + n, sizeof target - n, "/%s", parts[i]);
        if (symlink(target, path) != 0)
            return -1;
    }
    snprintf(path, sizeof path, "%s/scheduler", dst);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dst);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(scheduler_json, f);
    return fclose(f);
}

static void check_suggestion(const char *src, const char *json, int sampler, int steps,
                             float guidance)
{
    char dir[] = "/tmp/diffuse-model-XXXXXX", sub[4096], err[DIFFUSE_ERROR_SIZE];
    if (!mkdtemp(dir))
        return;
    snprintf(sub, sizeof sub, "%s/m", dir);
    CHECK(make_folder(src, sub, json) == 0, "could not make %s", sub);
    diffuse_model *m = diffuse_model_load(sub, NULL, err, sizeof err);
    CHECK(m != NULL, "load: %s", err);
    if (m) {
        diffuse_model_info info;
        diffuse_model_get_info(m, &info);
        CHECK(info.suggested_sampler == sampler && info.suggested_steps == steps &&
                  info.suggested_guidance == guidance,
              "%s: suggested %d / %d / %g, expected %d / %d / %g", json, info.suggested_sampler,
              info.suggested_steps, info.suggested_guidance, sampler, steps, guidance);
        diffuse_model_free(m);
    }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void)
{
    char buf[4096];
    const char *src = test_shared("reference/sd1-tiny/model-diffusers", buf);
    if (src) {
        check_suggestion(src, "{\"_class_name\": \"LCMScheduler\", \"beta_schedule\": "
                              "\"scaled_linear\"}", DIFFUSE_SAMPLER_LCM, 4, 1.0f);
        check_suggestion(src, "{\"_class_name\": \"EulerAncestralDiscreteScheduler\", "
                              "\"timestep_spacing\": \"trailing\"}", DIFFUSE_SAMPLER_EULER_A, 1,
                         0.0f);
        check_suggestion(src, "{\"_class_name\": \"EulerAncestralDiscreteScheduler\", "
                              "\"timestep_spacing\": \"leading\"}", -1, -1, -1.0f);
        check_suggestion(src, "{\"_class_name\": \"PNDMScheduler\"}", -1, -1, -1.0f);
    }
    TEST_END();
}
