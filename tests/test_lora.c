/* test_lora.c: LoRA files (lora.c) on the reference models, every format.
 *
 * The files come from tests/fixtures/make_loras.py (built by make into
 * $BUILD/fixtures/loras), with map.json naming the model weight each module
 * changes, paired by value rather than by the engine's renaming rules. For every
 * module of every format the matrix the engine uses is checked against
 * W + weight * (alpha / rank) * up . down computed here in double. Then whole
 * runs: weight 0 is exactly the image without the LoRA, two formats holding the
 * same change give the same image, a prompt tag equals the request's list, the
 * model is unchanged afterwards; and files that match only some modules,
 * nothing, or in a way Diffuse does not apply. */
#include <cJSON.h>

#include "../engine/internal.h"
#include "test.h"

static char dir[4096];

static float *tensor_f32(const diffuse_st_file *f, const char *name, int64_t *numel)
{
    const diffuse_st_tensor *t = diffuse_st_find(f, name);
    if (!t)
        return NULL;
    float *x = malloc(sizeof(float) * (size_t)t->numel);
    diffuse_st_to_f32(t, x, NULL);
    *numel = t->numel;
    return x;
}

/* The factor names of one module, whichever format the file has. */
static bool factor_names(const diffuse_st_file *f, const char *key, char *down, char *up,
                         char *alpha)
{
    static const char *const pairs[][2] = {{".lora_down.weight", ".lora_up.weight"},
                                           {".lora_A.weight", ".lora_B.weight"},
                                           {".down.weight", ".up.weight"}};
    for (int i = 0; i < 3; i++) {
        sprintf(down, "%s%s", key, pairs[i][0]);
        sprintf(up, "%s%s", key, pairs[i][1]);
        if (diffuse_st_find(f, down)) {
            sprintf(alpha, "%s.alpha", key);
            return true;
        }
    }
    return false;
}

/* max |engine - direct| / max |direct| over one module's matrix. */
static double module_error(diffuse_model *m, const diffuse_st_file *f, const char *key,
                           const char *canonical, float weight, diffuse_arena *a)
{
    char down_n[600], up_n[600], alpha_n[600], err[DIFFUSE_ERROR_SIZE];
    int64_t shape[DIFFUSE_MAX_DIMS], nd = 0, nu = 0, na = 0;
    int ndim = diffuse_weights_shape(m->weights, canonical, shape);
    if (ndim < 2 || !factor_names(f, key, down_n, up_n, alpha_n))
        return 1e9;
    diffuse_wmat view, plain;
    if (diffuse_weights_mat(m->weights, canonical, ndim, shape, &view, err))
        return 1e9;
    plain = view;
    plain.lora = NULL;
    float *down = tensor_f32(f, down_n, &nd), *up = tensor_f32(f, up_n, &nu);
    float *alpha = tensor_f32(f, alpha_n, &na);
    if (!down || !up || !nu || !nd) {
        free(down);
        free(up);
        free(alpha);
        return 1e9;
    }
    const int64_t out = shape[0], rank = nu / out, in = nd / rank;
    const double scale = weight * (alpha ? alpha[0] : (double)rank) / (double)rank;
    size_t mark = diffuse_arena_mark(a);
    const float *w = diffuse_wmat_f32(&plain, a);
    float *w0 = malloc(sizeof(float) * (size_t)(out * in));
    memcpy(w0, w, sizeof(float) * (size_t)(out * in));
    diffuse_arena_reset(a, mark);
    const float *got = diffuse_wmat_f32(&view, a);
    double max_err = 0, max_ref = 0;
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            double d = 0;
            for (int64_t r = 0; r < rank; r++)
                d += (double)up[o * rank + r] * down[r * in + i];
            double want = w0[o * in + i] + scale * d;
            double e = fabs(got[o * in + i] - want);
            max_err = e > max_err ? e : max_err;
            max_ref = fabs(want) > max_ref ? fabs(want) : max_ref;
        }
    diffuse_arena_reset(a, mark);
    free(w0);
    free(down);
    free(up);
    free(alpha);
    return max_err / (max_ref > 0 ? max_ref : 1);
}

static void notice(void *user, const char *message)
{
    snprintf(user, DIFFUSE_ERROR_SIZE, "%s", message);
}

/* Every module of one file, applied at `weight`, against the direct sum. */
static void check_file(diffuse_model *m, const cJSON *maps, const char *file, float weight)
{
    char path[4200], err[DIFFUSE_ERROR_SIZE], told[DIFFUSE_ERROR_SIZE] = "";
    snprintf(path, sizeof path, "%s/%s", dir, file);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(maps, file);
    diffuse_lora_set *set = NULL;
    diffuse_lora l = {.path = path, .weight = weight, .unet_weight = weight};
    diffuse_st_file *f = NULL;
    CHECK(map && diffuse_st_open(path, &f, err) == 0, "%s: %s", file, err);
    CHECK(diffuse_lora_set_open(m, &l, 1, notice, told, &set, err) == 0, "%s: %s", file, err);
    CHECK(!told[0], "%s: every module matches, nothing to tell: %s", file, told);
    if (!set || !f || !map) {
        diffuse_lora_set_close(set);
        diffuse_st_close(f);
        return;
    }
    diffuse_arena a;
    diffuse_arena_init(&a, 4 * diffuse_lora_set_scratch(set), err);
    double worst = 0;
    int checked = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, map)
    {
        double e = module_error(m, f, it->string, it->valuestring, weight, &a);
        worst = e > worst ? e : worst;
        checked++;
        if (e > 1e-5)
            printf("  %s -> %s: rel err %g\n", it->string, it->valuestring, e);
    }
    printf("%s: %d modules, worst rel err %.3g\n", file, checked, worst);
    CHECK(checked == cJSON_GetArraySize(map) && checked > 0 && worst < 1e-5,
          "%s: every module is W + weight * alpha / rank * up . down (worst %g)", file, worst);
    diffuse_arena_free(&a);
    diffuse_lora_set_close(set);
    diffuse_st_close(f);
}

typedef struct run_opts {
    const char *prompt;
    const diffuse_lora *loras;
    int lora_count;
    char *told;
} run_opts;

static diffuse_status run(diffuse_model *m, run_opts o, diffuse_image *img, char *err)
{
    diffuse_request r = diffuse_request_default();
    r.prompt = o.prompt ? o.prompt : "a red circle";
    r.width = r.height = 64;
    r.steps = 2;
    r.seed = 3;
    r.loras = o.loras;
    r.lora_count = o.lora_count;
    r.lora_dir = dir;
    r.notice = o.told ? notice : NULL;
    r.notice_user = o.told;
    memset(img, 0, sizeof *img);
    return diffuse_generate(m, &r, img, err, DIFFUSE_ERROR_SIZE);
}

static bool same_image(const diffuse_image *a, const diffuse_image *b)
{
    return a->pixels && b->pixels &&
           !memcmp(a->pixels, b->pixels, sizeof(float) * 3 * (size_t)a->width * a->height);
}

static diffuse_lora file_lora(char *path, const char *file, float w)
{
    sprintf(path, "%s/%s", dir, file);
    return (diffuse_lora){.path = path, .weight = w, .unet_weight = w};
}

static void check_runs(diffuse_model *m)
{
    char err[DIFFUSE_ERROR_SIZE], p1[4200], p2[4200], told[DIFFUSE_ERROR_SIZE] = "";
    diffuse_image base, zero, kohya, peft, tag, after, partial;
    diffuse_lora k0 = file_lora(p1, "sd1-kohya.safetensors", 0.0f);
    CHECK(run(m, (run_opts){0}, &base, err) == DIFFUSE_OK, "base: %s", err);
    CHECK(run(m, (run_opts){.loras = &k0, .lora_count = 1}, &zero, err) == DIFFUSE_OK, "w0: %s",
          err);
    CHECK(same_image(&base, &zero), "weight 0 is exactly the image without the LoRA");
    diffuse_lora k1 = file_lora(p1, "sd1-kohya.safetensors", 1.0f);
    diffuse_lora pf = file_lora(p2, "sd1-peft.safetensors", 1.0f);
    CHECK(run(m, (run_opts){.loras = &k1, .lora_count = 1}, &kohya, err) == DIFFUSE_OK, "%s", err);
    CHECK(run(m, (run_opts){.loras = &pf, .lora_count = 1}, &peft, err) == DIFFUSE_OK, "%s", err);
    CHECK(kohya.pixels && !same_image(&base, &kohya), "the LoRA changes the image");
    CHECK(same_image(&kohya, &peft), "kohya and PEFT files of one change: the same image");
    CHECK(run(m, (run_opts){.prompt = "a red circle <lora:sd1-kohya:1>"}, &tag, err) == DIFFUSE_OK,
          "tag: %s", err);
    CHECK(same_image(&kohya, &tag), "<lora:NAME:1> in the prompt is the same LoRA");
    CHECK(run(m, (run_opts){0}, &after, err) == DIFFUSE_OK && same_image(&base, &after),
          "the model is unchanged after a LoRA run");
    diffuse_lora pa = file_lora(p1, "sd1-partial.safetensors", 1.0f);
    CHECK(run(m, (run_opts){.loras = &pa, .lora_count = 1, .told = told}, &partial, err) ==
                  DIFFUSE_OK &&
              strstr(told, "2 of its 6 modules match nothing"),
          "a partial match goes ahead and says so: %s", told);
    told[0] = 0;
    diffuse_image other;
    CHECK(run(m, (run_opts){.prompt = "a <hypernet:x:1> circle", .told = told}, &other, err) ==
                  DIFFUSE_OK &&
              strstr(told, "<hypernet:x:1>"),
          "other extra networks are left out and named: %s", told);
    diffuse_image_free(&other);
    diffuse_request small = diffuse_request_default(), big = small;
    small.prompt = "a";
    big.prompt = "a <lora:sd1-kohya:1>";
    big.lora_dir = dir;
    CHECK(diffuse_request_memory(m, &big) > diffuse_request_memory(m, &small),
          "the memory estimate counts the LoRA");
    const struct {
        const char *file, *prompt, *word;
        diffuse_status st;
    } bad[] = {
        {"sd1-nomatch.safetensors", NULL, "none of its modules", DIFFUSE_ERR_ARGUMENT},
        {"sd1-loha.safetensors", NULL, "LoHa", DIFFUSE_ERR_FORMAT},
        {"sd1-wrongshape.safetensors", NULL, "does not fit", DIFFUSE_ERR_ARGUMENT},
        {"sd1-hugerank.safetensors", NULL, "does not fit", DIFFUSE_ERR_ARGUMENT},
        {"sdxl-kohya.safetensors", NULL, "sdxl-kohya", DIFFUSE_ERR_ARGUMENT},
        {"missing.safetensors", NULL, "missing.safetensors", DIFFUSE_ERR_IO},
        {"map.json", NULL, "map.json", DIFFUSE_ERR_FORMAT}, /* not a safetensors file */
        {NULL, "a <lora:missing:1>", "cannot read", DIFFUSE_ERR_IO},
        {NULL, "a <lora:sd1-kohya:x>", "<lora:NAME:WEIGHT>", DIFFUSE_ERR_ARGUMENT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        diffuse_lora l = bad[i].file ? file_lora(p1, bad[i].file, 1.0f) : (diffuse_lora){0};
        diffuse_image img;
        err[0] = 0;
        diffuse_status st = run(
            m, (run_opts){.prompt = bad[i].prompt, .loras = &l, .lora_count = bad[i].file ? 1 : 0},
            &img, err);
        CHECK(st == bad[i].st && strstr(err, bad[i].word) && !img.pixels, "%s: status %d, \"%s\"",
              bad[i].file ? bad[i].file : bad[i].prompt, st, err);
    }
    diffuse_image *all[] = {&base, &zero, &kohya, &peft, &tag, &after, &partial};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        diffuse_image_free(all[i]);
}

int main(void)
{
    char b1[4096], b2[4096], b3[4096], b4[4096], err[DIFFUSE_ERROR_SIZE];
    diffuse_load_params lp = diffuse_load_params_default();
    lp.vocab_path = test_shared("clip/bpe_simple_vocab_16e6.txt.gz", b4);
    const char *sd1 = test_shared("reference/sd1-tiny/model-diffusers", b1);
    const char *sd1_ldm = test_shared("reference/sd1-tiny/model-ldm-fp16.safetensors", b3);
    const char *xl = test_shared("reference/sdxl-tiny/model-diffusers", b2);
    snprintf(dir, sizeof dir, "%s/fixtures/loras", getenv("BUILD") ? getenv("BUILD") : "build");
    char map_path[4200];
    snprintf(map_path, sizeof map_path, "%s/map.json", dir);
    char *text = sd1 && xl ? test_read_file(map_path) : NULL;
    if (sd1 && xl)
        CHECK(text != NULL, "%s: run make (tests/fixtures/make_loras.py)", map_path);
    cJSON *maps = text ? cJSON_Parse(text) : NULL;
    const char *sd1_files[] = {"sd1-kohya.safetensors", "sd1-peft.safetensors",
                               "sd1-kohya-ldm.safetensors", "sd1-diffusers-old.safetensors"};
    for (int layout = 0; maps && layout < 2; layout++) { /* both model layouts take them */
        diffuse_model *m = diffuse_model_load(layout ? sd1_ldm : sd1, &lp, err, sizeof err);
        CHECK(m != NULL, "load: %s", err);
        for (int i = 0; m && i < 4; i++)
            check_file(m, maps, sd1_files[i], i == 2 ? 0.7f : 1.0f);
        if (m && layout == 0)
            check_runs(m);
        diffuse_model_free(m);
    }
    diffuse_model *x = maps ? diffuse_model_load(xl, &lp, err, sizeof err) : NULL;
    if (maps)
        CHECK(x != NULL, "load sdxl: %s", err);
    if (x)
        check_file(x, maps, "sdxl-kohya.safetensors", 0.8f);
    diffuse_model_free(x);
    cJSON_Delete(maps);
    free(text);
    TEST_END();
}
