/* test_weights.c: both checkpoint layouts of the reference model must give the
 * same canonical weights (names, shapes and values). */
#include <unistd.h>

#include "../engine/internal.h"
#include "test.h"

typedef struct {
    diffuse_weights *other;
    int missing, mismatched, total;
    char first[512];
} cmp_ctx;

static void compare_one(void *user, const char *name, int ndim, const int64_t *shape)
{
    cmp_ctx *c = user;
    char err[DIFFUSE_ERROR_SIZE];
    int64_t s2[DIFFUSE_MAX_DIMS];
    c->total++;
    int nd2 = diffuse_weights_shape(c->other, name, s2);
    if (nd2 < 0) {
        if (!c->missing++)
            snprintf(c->first, sizeof c->first, "missing %s", name);
        return;
    }
    /* conv 1x1 vs linear: compare without trailing ones */
    int a = ndim, b = nd2;
    while (a > 1 && shape[a - 1] == 1)
        a--;
    while (b > 1 && s2[b - 1] == 1)
        b--;
    bool same = a == b;
    for (int i = 0; same && i < a; i++)
        same = shape[i] == s2[i];
    const float *x = same ? diffuse_weights_get(c->other, name, a, shape, err) : NULL;
    if (!x) {
        if (!c->mismatched++)
            snprintf(c->first, sizeof c->first, "shape %s", name);
        return;
    }
}

/* A single-file checkpoint of header json alone (every tensor empty) at path. */
static bool write_header_only(const char *path, const char *json)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return false;
    uint64_t n = strlen(json);
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(n >> (8 * i));
    bool ok = fwrite(len, 1, 8, f) == 8 && fwrite(json, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* #17 D11: an empty tensor passes the file's checks with any dimension beside
 * its 0; the weight table refuses a dimension the engine's int arithmetic
 * cannot take (it was read as a latent channel count of 2^31 - 1, and 2 c + 1
 * overflowed), naming the file and the tensor. */
static void test_absurd_dimensions(void)
{
    static const struct {
        const char *tensor, *shape, *dim;
    } cases[] = {
        {"first_stage_model.decoder.conv_in.weight", "[0, 2147483647, 3, 3]",
         "dimension 1 is 2147483647"},
        {"model.diffusion_model.input_blocks.0.0.weight", "[4294967296, 0]",
         "dimension 0 is 4294967296"},
        /* split three ways (OpenCLIP in_proj): the rows of each third */
        {"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "[0, 16777217]",
         "dimension 1 is 16777217"},
    };
    char path[] = "/tmp/diffuse-weights-XXXXXX", err[DIFFUSE_ERROR_SIZE], json[512];
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0)
        return;
    close(fd);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(json, sizeof json,
                 "{\"%s\": {\"dtype\": \"F16\", \"shape\": %s, "
                 "\"data_offsets\": [0, 0]}}",
                 cases[i].tensor, cases[i].shape);
        diffuse_weights *w = NULL;
        strcpy(err, "(no message)");
        CHECK(write_header_only(path, json), "cannot write %s", path);
        CHECK(diffuse_weights_open(path, &w, err) == DIFFUSE_ERR_FORMAT && !w, "%s %s opened",
              cases[i].tensor, cases[i].shape);
        CHECK(strstr(err, path) && strstr(err, cases[i].tensor) && strstr(err, cases[i].dim),
              "%s %s: message names neither the file, the tensor nor the dimension: %s",
              cases[i].tensor, cases[i].shape, err);
        diffuse_weights_free(w);
    }
    /* the largest dimension taken, in an empty tensor: opens, and is refused as empty on use */
    snprintf(json, sizeof json,
             "{\"first_stage_model.decoder.conv_in.weight\": {\"dtype\": "
             "\"F32\", \"shape\": [0, 16777216], \"data_offsets\": [0, 0]}}");
    diffuse_weights *w = NULL;
    CHECK(write_header_only(path, json) && diffuse_weights_open(path, &w, err) == 0, "2^24: %s",
          err);
    CHECK(w &&
              !diffuse_weights_get(w, "vae.decoder.conv_in.weight", 2, (int64_t[]){0, 16777216},
                                   err) &&
              strstr(err, "is empty"),
          "empty weight used: %s", err);
    diffuse_weights_free(w);
    unlink(path);
}

int main(void)
{
    char buf[4096], buf2[4096], err[DIFFUSE_ERROR_SIZE];
    const char *dir = test_shared("reference/sd1-tiny/model-diffusers", buf);
    const char *ldm = test_shared("reference/sd1-tiny/model-ldm-fp16.safetensors", buf2);
    if (dir && ldm) {
        diffuse_weights *wd = NULL, *wl = NULL;
        CHECK(diffuse_weights_open(dir, &wd, err) == 0, "diffusers: %s", err);
        CHECK(diffuse_weights_open(ldm, &wl, err) == 0, "ldm: %s", err);
        if (wd && wl) {
            const char *parts[3] = {"unet.", "vae.", "text."};
            for (int p = 0; p < 3; p++) {
                cmp_ctx c = {.other = wl};
                diffuse_weights_each(wd, parts[p], compare_one, &c);
                CHECK(c.total > 0 && !c.missing && !c.mismatched,
                      "%s diffusers->ldm: %d of %d missing, %d mismatched; first: %s", parts[p],
                      c.missing, c.total, c.mismatched, c.first);
                cmp_ctx r = {.other = wd};
                diffuse_weights_each(wl, parts[p], compare_one, &r);
                CHECK(!r.missing && !r.mismatched, "%s ldm->diffusers: %d missing; first: %s",
                      parts[p], r.missing, r.first);
                CHECK(diffuse_weights_count(wd, parts[p]) == diffuse_weights_count(wl, parts[p]),
                      "%s parameter counts differ", parts[p]);
            }
            /* values: fp16 file holds exactly the fp32 values */
            int64_t shp[DIFFUSE_MAX_DIMS];
            const char *names[] = {
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "vae.decoder.up_blocks.0.resnets.2.conv2.weight",
                "vae.encoder.mid_block.attentions.0.to_q.weight",
                "unet.up_blocks.1.upsamplers.0.conv.weight",
                "text.text_model.encoder.layers.2.mlp.fc1.bias"};
            for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
                int nd = diffuse_weights_shape(wd, names[i], shp);
                while (nd > 1 && shp[nd - 1] == 1)
                    nd--;
                const float *a = nd > 0 ? diffuse_weights_get(wd, names[i], nd, shp, err) : NULL;
                const float *b = nd > 0 ? diffuse_weights_get(wl, names[i], nd, shp, err) : NULL;
                int64_t n = 1;
                for (int d = 0; d < nd; d++)
                    n *= shp[d];
                CHECK(a && b && memcmp(a, b, sizeof(float) * n) == 0, "values of %s differ",
                      names[i]);
            }
            int64_t bad[2] = {3, 3};
            CHECK(!diffuse_weights_get(wd, "unet.conv_in.weight", 2, bad, err) &&
                      strstr(err, "unet.conv_in.weight") && strstr(err, "expected [3, 3]"),
                  "shape error names the tensor: %s", err);
            CHECK(!diffuse_weights_get(wd, "unet.nope.weight", 2, bad, err) &&
                      strstr(err, "missing"),
                  "missing error: %s", err);
        }
        diffuse_weights_free(wd);
        diffuse_weights_free(wl);
    }
    CHECK(diffuse_weights_open("/nonexistent/model", &(diffuse_weights *){NULL}, err) ==
                  DIFFUSE_ERR_IO &&
              strstr(err, "/nonexistent/model"),
          "missing path: %s", err);
    CHECK(diffuse_weights_open("/tmp", &(diffuse_weights *){NULL}, err) == DIFFUSE_ERR_FORMAT &&
              strstr(err, "not a diffusers model folder"),
          "not a model folder: %s", err);
    test_absurd_dimensions();
    TEST_END();
}
