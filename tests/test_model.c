/* test_model.c: what model loading reads off a diffusers folder besides the
 * tensors: the scheduler config's settings for distilled models. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* diffuse_default_model_path's order: $DIFFUSE_DEFAULT_MODEL, the program's
 * own copies in its order, the user's data folder; an I/O error naming every
 * place when there is none. And the LoRA folder's. */
static void test_default_paths(void)
{
    char dir[] = "/tmp/diffuse-paths-XXXXXX", a[256], b[256], user[256], path[4096], err[1024];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(user, sizeof user, "%s/diffuse/models/default", dir);
    const char *beside[] = {a, b, NULL};
    unsetenv("DIFFUSE_DEFAULT_MODEL");
    setenv("XDG_DATA_HOME", dir, 1);
    diffuse_status st = diffuse_default_model_path(beside, path, sizeof path, err, sizeof err);
    CHECK(st == DIFFUSE_ERR_IO && strstr(err, a) && strstr(err, b) && strstr(err, user) &&
              strstr(err, "DIFFUSE_DEFAULT_MODEL"),
          "no default model: status %d, %s", st, err);
    CHECK(mkdir(b, 0755) == 0 && mkdir(user, 0755) != 0, "mkdir"); /* user's needs its parents */
    st = diffuse_default_model_path(beside, path, sizeof path, err, sizeof err);
    CHECK(st == DIFFUSE_OK && strcmp(path, b) == 0, "the second copy: %s", path);
    CHECK(mkdir(a, 0755) == 0, "mkdir");
    st = diffuse_default_model_path(beside, path, sizeof path, err, sizeof err);
    CHECK(st == DIFFUSE_OK && strcmp(path, a) == 0, "the first copy comes first: %s", path);
    char parent[256];
    snprintf(parent, sizeof parent, "%s/diffuse", dir);
    snprintf(path, sizeof path, "%s/diffuse/models", dir);
    CHECK(mkdir(parent, 0755) == 0 && mkdir(path, 0755) == 0 && mkdir(user, 0755) == 0, "mkdir");
    st = diffuse_default_model_path(NULL, path, sizeof path, err, sizeof err);
    CHECK(st == DIFFUSE_OK && strcmp(path, user) == 0, "the user's copy: %s", path);
    setenv("DIFFUSE_DEFAULT_MODEL", "/env/model", 1);
    st = diffuse_default_model_path(beside, path, sizeof path, err, sizeof err);
    CHECK(st == DIFFUSE_OK && strcmp(path, "/env/model") == 0, "the variable comes first: %s",
          path);
    unsetenv("DIFFUSE_DEFAULT_MODEL");
    unsetenv("DIFFUSE_LORA_DIR");
    diffuse_default_lora_dir(path, sizeof path);
    snprintf(a, sizeof a, "%s/diffuse/loras", dir);
    CHECK(strcmp(path, a) == 0, "LoRA folder %s, want %s", path, a);
    setenv("DIFFUSE_LORA_DIR", "/my/loras", 1);
    diffuse_default_lora_dir(path, sizeof path);
    CHECK(strcmp(path, "/my/loras") == 0, "DIFFUSE_LORA_DIR not used: %s", path);
    unsetenv("DIFFUSE_LORA_DIR");
    unsetenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    diffuse_default_lora_dir(path, sizeof path);
    snprintf(a, sizeof a, "%s/.local/share/diffuse/loras", home ? home : "");
    CHECK(strcmp(path, a) == 0, "LoRA folder without XDG_DATA_HOME: %s", path);
    snprintf(path, sizeof path, "%s/diffuse/models", dir);
    rmdir(user), rmdir(path), rmdir(parent), rmdir(a), rmdir(b);
    snprintf(a, sizeof a, "%s/a", dir);
    rmdir(a), rmdir(dir);
}

int main(void)
{
    char buf[4096];
    test_default_paths();
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
