/* test_clip.c: the text encoder against transformers' output for the
 * reference model, from both checkpoint layouts. */
#include "../engine/internal.h"
#include "test.h"

static float *golden(diffuse_st_file *g, const char *name, int64_t *numel)
{
    const diffuse_st_tensor *t = diffuse_st_find(g, name);
    if (!t)
        return NULL;
    float *x = malloc(sizeof(float) * t->numel);
    if (t->dtype == DIFFUSE_DTYPE_I32) {
        for (int64_t i = 0; i < t->numel; i++) {
            int32_t v;
            memcpy(&v, t->data + 4 * i, 4);
            x[i] = (float)v;
        }
    } else {
        diffuse_st_to_f32(t, x, NULL);
    }
    *numel = t->numel;
    return x;
}

static void check_layout(const char *path, diffuse_st_file *g)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_weights *w = NULL;
    diffuse_clip *c = NULL;
    diffuse_clip_config cfg = {.prefix = "text.",
                               .vocab_size = 49408,
                               .width = 32,
                               .layers = 3,
                               .heads = 4,
                               .intermediate = 128,
                               .max_positions = 77,
                               .gelu = false,
                               .eps = 1e-5f,
                               .pad_id = 49407,
                               .eos_id = 49407,
                               .hidden_layer = 3,
                               .hidden_norm = true};
    CHECK(diffuse_weights_open(path, &w, err) == 0, "%s: %s", path, err);
    if (!w)
        return;
    CHECK(diffuse_clip_load(&cfg, w, &c, err) == 0, "load: %s", err);
    int64_t n_ids, n_ref;
    float *ids_f = golden(g, "text.input_ids", &n_ids);
    float *ref = golden(g, "text.last_hidden_state", &n_ref);
    if (c && ids_f && ref) {
        int32_t ids[2 * 77];
        for (int i = 0; i < 2 * 77; i++)
            ids[i] = (int32_t)ids_f[i];
        diffuse_arena a;
        diffuse_arena_init(&a, diffuse_clip_workspace(c, 2), err);
        float *out = malloc(sizeof(float) * n_ref);
        CHECK(diffuse_clip_forward(c, out, ids, 2, &a, err) == 0, "forward: %s", err);
        double abs;
        double rel = test_rel_err(out, ref, (size_t)n_ref, &abs);
        printf("%s text.last_hidden_state max_abs_err=%.3g rel_err=%.3g\n", path, abs, rel);
        CHECK(rel < 1e-4, "text encoder rel err %g", rel);
        /* the plan is the encoder run dry: exactly its peak and its flops */
        CHECK(!a.overflow && a.peak == a.cap, "work memory: peak %zu of %zu floats planned", a.peak,
              a.cap);
        CHECK(a.flops == diffuse_clip_plan(c, 2).flops && a.flops > 0,
              "%.6g flops run, %.6g planned", a.flops, diffuse_clip_plan(c, 2).flops);
        ids[5] = 60000;
        CHECK(diffuse_clip_forward(c, out, ids, 1, &a, err) == -1 && strstr(err, "60000"),
              "bad token id rejected: %s", err);
        free(out);
        diffuse_arena_free(&a);
    }
    diffuse_clip_free(c);
    cfg.width = 48;
    CHECK(diffuse_clip_load(&cfg, w, &c, err) == -1 && strstr(err, "token_embedding"),
          "wrong width names the tensor: %s", err);
    free(ids_f);
    free(ref);
    diffuse_weights_free(w);
}

int main(void)
{
    char b1[4096], b2[4096], b3[4096], err[DIFFUSE_ERROR_SIZE];
    const char *gpath = test_shared("reference/sd1-tiny/golden.safetensors", b1);
    const char *dir = test_shared("reference/sd1-tiny/model-diffusers", b2);
    const char *ldm = test_shared("reference/sd1-tiny/model-ldm-fp16.safetensors", b3);
    diffuse_st_file *g = NULL;
    if (gpath && dir && ldm) {
        CHECK(diffuse_st_open(gpath, &g, err) == 0, "golden: %s", err);
        if (g) {
            check_layout(dir, g);
            check_layout(ldm, g);
        }
        diffuse_st_close(g);
    }
    TEST_END();
}
