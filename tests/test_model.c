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

/* A scheduler config no sampler can run fails the load naming the file (it
 * failed each run, as DIFFUSE_ERR_ARGUMENT, as if the request were at fault);
 * a request's own bad sampler settings are DIFFUSE_ERR_ARGUMENT. */
static void check_broken_schedule(const char *src)
{
    static const struct {
        const char *json, *word;
    } bad[] = {
        {"{\"num_train_timesteps\": 100000}", "no signal left"},
        {"{\"num_train_timesteps\": 1}", "num_train_timesteps 1"},
        {"{\"beta_start\": 0.5, \"beta_end\": 0.1}", "betas"},
        {"{\"steps_offset\": 5000}", "steps_offset"},
    };
    char dir[] = "/tmp/diffuse-model-XXXXXX", sub[4096], err[DIFFUSE_ERROR_SIZE], cmd[4200];
    if (!mkdtemp(dir))
        return;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(sub, sizeof sub, "%s/m%zu", dir, i);
        CHECK(make_folder(src, sub, bad[i].json) == 0, "could not make %s", sub);
        diffuse_model *m = NULL;
        diffuse_status st = diffuse_model_open(sub, NULL, &m, err, sizeof err);
        CHECK(st == DIFFUSE_ERR_FORMAT && !m && strstr(err, "scheduler/scheduler_config.json") &&
                  strstr(err, bad[i].word),
              "%s: status %d, or the message names neither the file nor '%s': %s", bad[i].json, st,
              bad[i].word, m ? "(loaded)" : err);
        diffuse_model_free(m);
    }
    snprintf(sub, sizeof sub, "%s/ok", dir);
    CHECK(make_folder(src, sub, "{}") == 0, "could not make %s", sub);
    diffuse_model *m = diffuse_model_load(sub, NULL, err, sizeof err);
    CHECK(m != NULL, "load: %s", err);
    if (m) {
        diffuse_request r = diffuse_request_default();
        r.prompt = "x";
        r.width = r.height = 64;
        r.steps = 6;
        r.sampler = DIFFUSE_SAMPLER_DDIM;
        r.karras = 1; /* DDIM has no Karras sigmas */
        diffuse_image img = {0};
        diffuse_status st = diffuse_generate(m, &r, &img, err, sizeof err);
        CHECK(st == DIFFUSE_ERR_ARGUMENT && strstr(err, "Karras") && !img.pixels,
              "DDIM with Karras sigmas: status %d, %s", st, err);
    }
    diffuse_model_free(m);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

/* The kind of a failed load (diffuse_model_open), and a message naming the problem. */
static void check_load_kinds(const char *src)
{
    char dir[] = "/tmp/diffuse-model-XXXXXX", sub[4096], path[4200], err[DIFFUSE_ERROR_SIZE];
    const struct {
        const char *path, *word;
        diffuse_status st;
    } cases[] = {
        {"/nonexistent/model", "No such file or directory", DIFFUSE_ERR_IO},
        {"tests/fixtures/ok_no_model.safetensors", "no Stable Diffusion weights",
         DIFFUSE_ERR_FORMAT},
        {"tests/fixtures/bad_header_not_json.safetensors", "JSON", DIFFUSE_ERR_FORMAT},
        {"tests/fixtures", "not a diffusers model folder", DIFFUSE_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        diffuse_model *m = (diffuse_model *)&err; /* must come back NULL */
        diffuse_status st = diffuse_model_open(cases[i].path, NULL, &m, err, sizeof err);
        CHECK(st == cases[i].st && !m && strstr(err, cases[i].path) && strstr(err, cases[i].word),
              "%s: status %d (want %d): %s", cases[i].path, st, cases[i].st, err);
    }
    if (!mkdtemp(dir))
        return;
    /* a vocabulary whose ids pass the text encoder's rows: refused at load (each
     * run failed as out of memory when the prompt held the token) */
    snprintf(sub, sizeof sub, "%s/m", dir);
    CHECK(make_folder(src, sub, "{}") == 0, "could not make %s", sub);
    snprintf(path, sizeof path, "%s/tokenizer/vocab.json", src);
    char *vocab = test_read_file(path), *x = vocab ? strstr(vocab, "\"x</w>\": 343,") : NULL;
    CHECK(x != NULL, "%s: no \"x</w>\": 343", path);
    snprintf(path, sizeof path, "%s/tokenizer", sub);
    unlink(path);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/tokenizer/vocab.json", sub);
    FILE *f = x ? fopen(path, "w") : NULL;
    if (f) {
        fprintf(f, "%.*s\"x</w>\": 60000,%s", (int)(x - vocab), vocab,
                x + strlen("\"x</w>\": 343,"));
        fclose(f);
        char target[4096];
        snprintf(path, sizeof path, "%s/tokenizer/merges.txt", src);
        snprintf(sub + strlen(sub), sizeof sub - strlen(sub), "/tokenizer/merges.txt");
        CHECK(realpath(path, target) && symlink(target, sub) == 0, "link %s", sub);
        snprintf(sub, sizeof sub, "%s/m", dir);
        diffuse_model *m = NULL;
        diffuse_status st = diffuse_model_open(sub, NULL, &m, err, sizeof err);
        CHECK(st == DIFFUSE_ERR_FORMAT && !m && strstr(err, "token ids up to 60000") &&
                  strstr(err, "49408 rows"),
              "a vocabulary past the embedding: status %d: %s", st, m ? "(loaded)" : err);
        diffuse_model_free(m);
    }
    free(vocab);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void)
{
    char buf[4096];
    test_default_paths();
    const char *src = test_shared("reference/sd1-tiny/model-diffusers", buf);
    if (src) {
        check_suggestion(src,
                         "{\"_class_name\": \"LCMScheduler\", \"beta_schedule\": "
                         "\"scaled_linear\"}",
                         DIFFUSE_SAMPLER_LCM, 4, 1.0f);
        check_suggestion(src,
                         "{\"_class_name\": \"EulerAncestralDiscreteScheduler\", "
                         "\"timestep_spacing\": \"trailing\"}",
                         DIFFUSE_SAMPLER_EULER_A, 1, 0.0f);
        check_suggestion(src,
                         "{\"_class_name\": \"EulerAncestralDiscreteScheduler\", "
                         "\"timestep_spacing\": \"leading\"}",
                         -1, -1, -1.0f);
        check_suggestion(src, "{\"_class_name\": \"PNDMScheduler\"}", -1, -1, -1.0f);
        check_broken_schedule(src);
        check_load_kinds(src);
    }
    TEST_END();
}
