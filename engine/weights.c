/* weights.c: one canonical naming of every weight, whatever the file layout.
 *
 * Canonical names are the diffusers names with a component prefix ("unet.",
 * "vae.", "text."). A diffusers folder needs only the prefix (plus the old VAE
 * attention names); an original single-file ("LDM") checkpoint is translated
 * by the few rules below, one function per component. Tensors stay in the
 * file mapping: matrices are handed out as they are stored (diffuse_wmat),
 * and only the small vectors asked for with diffuse_weights_get (biases, norm
 * parameters), and the matrices of small components, are converted to float32,
 * once.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

typedef struct weight_entry {
    char *name; /* canonical */
    const diffuse_st_tensor *t;
    int64_t row0; /* first row of a split (OpenCLIP in_proj) */
    int ndim;
    int64_t shape[DIFFUSE_MAX_DIMS];
    int64_t numel;
    bool streamed;            /* a matrix widened at each use, its pages let go
                                 right after (diffuse_wmat_f32) */
    bool transposed;          /* a 2-D tensor stored as [in, out]: shape gives
                                 [out, in], converted (transposed) on first use */
    float *converted;         /* owned float32 copy, or NULL */
    bool viewed;              /* handed out as a matrix (diffuse_wmat) */
    diffuse_lora_delta *lora; /* LoRA deltas added at each use (borrowed), or NULL */
} weight_entry;

/* A component whose weights take at most this much as float32 (the bundled
 * 9.5M-parameter model: 38 MB) has its matrices widened once at load: the
 * memory is small, and widening them at every pass costs more than it saves. */
#define KEEP_WIDENED_BYTES ((size_t)64 << 20)

/* Components with their own phase: widening maxima and page release. "text2."
 * is SDXL's second text encoder (OpenCLIP ViT-bigG with its projection). */
#define NCOMPONENTS 5
static const char *const COMPONENTS[NCOMPONENTS] = {"text.", "text2.", "unet.", "vae.", "taesd."};

struct diffuse_weights {
    diffuse_st_file *files[4];
    int nfiles;
    size_t widen_max[NCOMPONENTS];  /* per COMPONENTS entry, floats */
    bool keep_widened[NCOMPONENTS]; /* the component is small: widen its matrices once */
    weight_entry *entries;          /* sorted by name */
    int count, cap;
    const char *layout;
    bool openclip; /* single file with an OpenCLIP text encoder */
};

/* ------------------------------------------------------------------ table */

/* The largest dimension a weight may have: far above any model's (CLIP's
 * 49,408-token vocabulary, SDXL's 10,240-wide feed-forward), and small enough
 * that the int arithmetic on sizes read off the weights (2 c + 1 latent
 * channels, the sum of two text widths) cannot overflow. An empty tensor
 * passes the file's own checks with any dimensions beside its 0. */
#define WEIGHT_MAX_DIM ((int64_t)1 << 24)

/* Its element count in *numel, each product checked; an absurd dimension
 * fails naming the file and the tensor. */
static int entry_numel(const diffuse_st_file *f, const diffuse_st_tensor *t, const int64_t *shape,
                       int64_t *numel, char *err)
{
    *numel = 1;
    for (int i = 0; i < t->ndim; i++)
        if (shape[i] < 0 || shape[i] > WEIGHT_MAX_DIM ||
            __builtin_mul_overflow(*numel, shape[i], numel))
            return diffuse_fail(err, "%s: tensor '%s': dimension %d is %lld (at most %lld)",
                                f->path, t->name, i, (long long)shape[i],
                                (long long)WEIGHT_MAX_DIM);
    return 0;
}

static int add_entry(diffuse_weights *w, const char *name, const diffuse_st_file *f,
                     const diffuse_st_tensor *t, int64_t row0, int64_t rows, char *err)
{
    if (w->count == w->cap) {
        int cap = w->cap ? w->cap * 2 : 256;
        weight_entry *e = realloc(w->entries, cap * sizeof *e);
        if (!e)
            return diffuse_fail(err, "out of memory");
        w->entries = e;
        w->cap = cap;
    }
    weight_entry *e = &w->entries[w->count];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name)))
        return diffuse_fail(err, "out of memory");
    e->t = t;
    e->row0 = row0;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    if (rows >= 0)
        e->shape[0] = rows;
    if (entry_numel(f, t, e->shape, &e->numel, err)) {
        free(e->name);
        return -1;
    }
    w->count++;
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const weight_entry *)a)->name, ((const weight_entry *)b)->name);
}

static weight_entry *find_entry(const diffuse_weights *w, const char *name)
{
    weight_entry key = {.name = (char *)name};
    return bsearch(&key, w->entries, w->count, sizeof key, cmp_entry);
}

static int finish_table(diffuse_weights *w, char *err)
{
    if (w->count > 1) /* qsort(NULL, 0) is undefined */
        qsort(w->entries, w->count, sizeof *w->entries, cmp_entry);
    for (int i = 1; i < w->count; i++)
        if (strcmp(w->entries[i - 1].name, w->entries[i].name) == 0)
            return diffuse_fail(err, "two tensors map to the weight '%s'", w->entries[i].name);
    return 0;
}

/* ------------------------------------------------------------------ rename rules */

/* Replaces the first occurrence of `from` in s (a buffer of `size`) by `to`. */
static bool replace(char *s, size_t size, const char *from, const char *to)
{
    char *p = strstr(s, from);
    if (!p)
        return false;
    char tail[512];
    snprintf(tail, sizeof tail, "%s", p + strlen(from));
    snprintf(p, size - (size_t)(p - s), "%s%s", to, tail);
    return true;
}

static bool starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* diffusers' two generations of VAE attention names: query/key/value/proj_attn. */
static void rename_vae_attention(char *s, size_t size)
{
    if (!strstr(s, ".attentions."))
        return;
    (void)(replace(s, size, ".query.", ".to_q.") || replace(s, size, ".key.", ".to_k.") ||
           replace(s, size, ".value.", ".to_v.") || replace(s, size, ".proj_attn.", ".to_out.0."));
}

static void rename_ldm_resnet(char *s, size_t size)
{
    (void)(replace(s, size, ".in_layers.0.", ".norm1.") ||
           replace(s, size, ".in_layers.2.", ".conv1.") ||
           replace(s, size, ".emb_layers.1.", ".time_emb_proj.") ||
           replace(s, size, ".out_layers.0.", ".norm2.") ||
           replace(s, size, ".out_layers.3.", ".conv2.") ||
           replace(s, size, ".skip_connection.", ".conv_shortcut."));
}

/* model.diffusion_model.* -> unet.*; `per` = layers_per_block + 1 (blocks per level). */
static bool map_ldm_unet(const char *k, int per, char *out, size_t size)
{
    int n, m, len = 0;
    if (starts(k, "time_embed.0."))
        snprintf(out, size, "unet.time_embedding.linear_1.%s", k + 13);
    else if (starts(k, "time_embed.2."))
        snprintf(out, size, "unet.time_embedding.linear_2.%s", k + 13);
    else if (starts(k, "label_emb.0.0.")) /* SDXL's added "text_time" embedding */
        snprintf(out, size, "unet.add_embedding.linear_1.%s", k + 14);
    else if (starts(k, "label_emb.0.2."))
        snprintf(out, size, "unet.add_embedding.linear_2.%s", k + 14);
    else if (starts(k, "input_blocks.0.0."))
        snprintf(out, size, "unet.conv_in.%s", k + 17);
    else if (starts(k, "out.0."))
        snprintf(out, size, "unet.conv_norm_out.%s", k + 6);
    else if (starts(k, "out.2."))
        snprintf(out, size, "unet.conv_out.%s", k + 6);
    else if (sscanf(k, "input_blocks.%d.%d.%n", &n, &m, &len) == 2 && len && n >= 1) {
        int b = (n - 1) / per, j = (n - 1) % per;
        if (j == per - 1)
            snprintf(out, size, "unet.down_blocks.%d.downsamplers.0.conv.%s", b,
                     k + len + (starts(k + len, "op.") ? 3 : 0));
        else
            snprintf(out, size, "unet.down_blocks.%d.%s.%d.%s", b, m ? "attentions" : "resnets", j,
                     k + len);
    } else if (sscanf(k, "middle_block.%d.%n", &m, &len) == 1 && len) {
        const char *part = m == 1 ? "attentions.0" : m == 0 ? "resnets.0" : "resnets.1";
        snprintf(out, size, "unet.mid_block.%s.%s", part, k + len);
    } else if (sscanf(k, "output_blocks.%d.%d.%n", &n, &m, &len) == 2 && len) {
        int b = n / per, j = n % per;
        if (m == 0)
            snprintf(out, size, "unet.up_blocks.%d.resnets.%d.%s", b, j, k + len);
        else if (m == 2 || starts(k + len, "conv."))
            snprintf(out, size, "unet.up_blocks.%d.upsamplers.0.%s", b, k + len);
        else
            snprintf(out, size, "unet.up_blocks.%d.attentions.%d.%s", b, j, k + len);
    } else {
        return false;
    }
    rename_ldm_resnet(out, size);
    return true;
}

/* The inverse of map_ldm_unet for one canonical UNet name (without "unet."):
 * the original checkpoint's name, which LoRA files for such checkpoints use.
 * up_attn(b): whether up level b has attentions (its upsampler then sits at
 * index 2, else 1). */
static bool unet_name_to_ldm(const char *k, int per, bool (*up_attn)(const void *, int),
                             const void *ctx, char *out, size_t size)
{
    int b, j, len = 0;
    char rest[384];
    if (starts(k, "time_embedding.linear_1.") || starts(k, "time_embedding.linear_2."))
        snprintf(out, size, "time_embed.%d.%s", k[22] == '1' ? 0 : 2, k + 24);
    else if (starts(k, "add_embedding.linear_1.") || starts(k, "add_embedding.linear_2."))
        snprintf(out, size, "label_emb.0.%d.%s", k[21] == '1' ? 0 : 2, k + 23);
    else if (starts(k, "conv_in."))
        snprintf(out, size, "input_blocks.0.0.%s", k + 8);
    else if (starts(k, "conv_norm_out."))
        snprintf(out, size, "out.0.%s", k + 14);
    else if (starts(k, "conv_out."))
        snprintf(out, size, "out.2.%s", k + 9);
    else if (sscanf(k, "down_blocks.%d.downsamplers.0.conv.%n", &b, &len) == 1 && len)
        snprintf(out, size, "input_blocks.%d.0.op.%s", b * per + per, k + len);
    else if (sscanf(k, "down_blocks.%d.resnets.%d.%n", &b, &j, &len) == 2 && len)
        snprintf(out, size, "input_blocks.%d.0.%s", b * per + j + 1, k + len);
    else if (sscanf(k, "down_blocks.%d.attentions.%d.%n", &b, &j, &len) == 2 && len)
        snprintf(out, size, "input_blocks.%d.1.%s", b * per + j + 1, k + len);
    else if (sscanf(k, "mid_block.resnets.%d.%n", &j, &len) == 1 && len)
        snprintf(out, size, "middle_block.%d.%s", j ? 2 : 0, k + len);
    else if (starts(k, "mid_block.attentions.0."))
        snprintf(out, size, "middle_block.1.%s", k + 23);
    else if (sscanf(k, "up_blocks.%d.upsamplers.0.%n", &b, &len) == 1 && len)
        snprintf(out, size, "output_blocks.%d.%d.%s", b * per + per - 1, up_attn(ctx, b) ? 2 : 1,
                 k + len);
    else if (sscanf(k, "up_blocks.%d.resnets.%d.%n", &b, &j, &len) == 2 && len)
        snprintf(out, size, "output_blocks.%d.0.%s", b * per + j, k + len);
    else if (sscanf(k, "up_blocks.%d.attentions.%d.%n", &b, &j, &len) == 2 && len)
        snprintf(out, size, "output_blocks.%d.1.%s", b * per + j, k + len);
    else
        return false;
    if (!strstr(k, "resnets.")) /* transformer blocks have norm1/norm2 of their own */
        return true;
    snprintf(rest, sizeof rest, "%s", out);
    (void)(replace(rest, sizeof rest, ".norm1.", ".in_layers.0.") ||
           replace(rest, sizeof rest, ".conv1.", ".in_layers.2.") ||
           replace(rest, sizeof rest, ".time_emb_proj.", ".emb_layers.1.") ||
           replace(rest, sizeof rest, ".norm2.", ".out_layers.0.") ||
           replace(rest, sizeof rest, ".conv2.", ".out_layers.3.") ||
           replace(rest, sizeof rest, ".conv_shortcut.", ".skip_connection."));
    snprintf(out, size, "%s", rest);
    return true;
}

/* first_stage_model.* -> vae.*; `levels` = number of decoder up levels. */
static bool map_ldm_vae(const char *k, int levels, char *out, size_t size)
{
    int i, j, len = 0;
    char side[8];
    if (sscanf(k, "%7[a-z].down.%d.block.%d.%n", side, &i, &j, &len) == 3 && len)
        snprintf(out, size, "vae.%s.down_blocks.%d.resnets.%d.%s", side, i, j, k + len);
    else if (sscanf(k, "%7[a-z].down.%d.downsample.%n", side, &i, &len) == 2 && len)
        snprintf(out, size, "vae.%s.down_blocks.%d.downsamplers.0.%s", side, i, k + len);
    else if (sscanf(k, "%7[a-z].up.%d.block.%d.%n", side, &i, &j, &len) == 3 && len)
        snprintf(out, size, "vae.%s.up_blocks.%d.resnets.%d.%s", side, levels - 1 - i, j, k + len);
    else if (sscanf(k, "%7[a-z].up.%d.upsample.%n", side, &i, &len) == 2 && len)
        snprintf(out, size, "vae.%s.up_blocks.%d.upsamplers.0.%s", side, levels - 1 - i, k + len);
    else if (sscanf(k, "%7[a-z].mid.block_%d.%n", side, &i, &len) == 2 && len)
        snprintf(out, size, "vae.%s.mid_block.resnets.%d.%s", side, i - 1, k + len);
    else if (sscanf(k, "%7[a-z].mid.attn_1.%n", side, &len) == 1 && len) {
        const char *r = k + len;
        const char *to = starts(r, "norm.")       ? "group_norm."
                         : starts(r, "q.")        ? "to_q."
                         : starts(r, "k.")        ? "to_k."
                         : starts(r, "v.")        ? "to_v."
                         : starts(r, "proj_out.") ? "to_out.0."
                                                  : NULL;
        if (!to)
            return false;
        snprintf(out, size, "vae.%s.mid_block.attentions.0.%s%s", side, to, strchr(r, '.') + 1);
    } else if (sscanf(k, "%7[a-z].norm_out.%n", side, &len) == 1 && len)
        snprintf(out, size, "vae.%s.conv_norm_out.%s", side, k + len);
    else
        snprintf(out, size, "vae.%s", k);
    replace(out, size, ".nin_shortcut.", ".conv_shortcut.");
    return true;
}

/* An OpenCLIP text encoder (cond_stage_model.model.* of SD 2.x, under "text.";
 * conditioner.embedders.1.model.* of SDXL, under "text2.") -> <comp>text_model.*.
 * Sets *split for the fused in_proj tensors that become q/k/v, *transposed for
 * text_projection, which OpenCLIP stores as [width, projection]. */
static bool map_openclip(const char *k, const char *comp, char *out, size_t size, bool *split,
                         bool *transposed)
{
    int i, len = 0;
    *split = *transposed = false;
    if (strcmp(k, "token_embedding.weight") == 0)
        snprintf(out, size, "%stext_model.embeddings.token_embedding.weight", comp);
    else if (strcmp(k, "positional_embedding") == 0)
        snprintf(out, size, "%stext_model.embeddings.position_embedding.weight", comp);
    else if (starts(k, "ln_final."))
        snprintf(out, size, "%stext_model.final_layer_norm.%s", comp, k + 9);
    else if (strcmp(k, "text_projection") == 0 && strcmp(comp, "text2.") == 0) {
        snprintf(out, size, "%stext_projection.weight", comp);
        *transposed = true;
    } else if (sscanf(k, "transformer.resblocks.%d.%n", &i, &len) == 1 && len) {
        const char *r = k + len;
        char rest[256];
        snprintf(rest, sizeof rest, "%s", r);
        if (starts(r, "attn.in_proj_")) {
            *split = true; /* the caller appends q/k/v */
            snprintf(rest, sizeof rest, "self_attn.%%s_proj.%s", r + 13);
        } else if (!(replace(rest, sizeof rest, "ln_1.", "layer_norm1.") ||
                     replace(rest, sizeof rest, "ln_2.", "layer_norm2.") ||
                     replace(rest, sizeof rest, "attn.out_proj.", "self_attn.out_proj.") ||
                     replace(rest, sizeof rest, "mlp.c_fc.", "mlp.fc1.") ||
                     replace(rest, sizeof rest, "mlp.c_proj.", "mlp.fc2."))) {
            return false;
        }
        snprintf(out, size, "%stext_model.encoder.layers.%d.%s", comp, i, rest);
    } else {
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ layouts */

static int add_split(diffuse_weights *w, const char *pattern, const diffuse_st_file *f,
                     const diffuse_st_tensor *t, char *err)
{
    static const char *qkv[3] = {"q", "k", "v"};
    if (t->ndim < 1 || t->shape[0] % 3)
        return diffuse_fail(err, "tensor '%s': rows not divisible by 3", t->name);
    for (int p = 0; p < 3; p++) {
        char name[512];
        snprintf(name, sizeof name, pattern, qkv[p]);
        if (add_entry(w, name, f, t, p * t->shape[0] / 3, t->shape[0] / 3, err))
            return -1;
    }
    return 0;
}

/* layers_per_block + 1, read off the first downsampler's input_blocks index. */
static int ldm_blocks_per_level(const diffuse_st_file *f)
{
    for (int n = 1; n < 64; n++) {
        char name[96];
        snprintf(name, sizeof name, "model.diffusion_model.input_blocks.%d.0.op.weight", n);
        if (diffuse_st_find(f, name))
            return n;
    }
    return 3;
}

static int ldm_vae_levels(const diffuse_st_file *f)
{
    int levels = 0;
    for (int i = 0; i < f->count; i++) {
        int l;
        if (sscanf(f->tensors[i].name, "first_stage_model.decoder.up.%d.", &l) == 1 &&
            l + 1 > levels)
            levels = l + 1;
    }
    return levels;
}

static int load_ldm(diffuse_weights *w, const diffuse_st_file *f, char *err)
{
    const int per = ldm_blocks_per_level(f), levels = ldm_vae_levels(f);
    for (int i = 0; i < f->count; i++) {
        const diffuse_st_tensor *t = &f->tensors[i];
        const char *k = t->name;
        char name[512];
        bool ok = false, split = false, transposed = false;
        int e = -1, len = 0;
        if (starts(k, "model.diffusion_model."))
            ok = map_ldm_unet(k + 22, per, name, sizeof name);
        else if (starts(k, "first_stage_model."))
            ok = map_ldm_vae(k + 18, levels, name, sizeof name);
        else if (starts(k, "cond_stage_model.transformer.")) {
            k += 29;
            snprintf(name, sizeof name, "text.%s%s", starts(k, "text_model.") ? "" : "text_model.",
                     k);
            ok = true;
        } else if (starts(k, "cond_stage_model.model.")) {
            ok = map_openclip(k + 23, "text.", name, sizeof name, &split, &transposed);
            w->openclip = w->openclip || ok;
        } else if (sscanf(k, "conditioner.embedders.%d.%n", &e, &len) == 1 && len) {
            /* SDXL: a transformers CLIP (ViT-L) and an OpenCLIP (ViT-bigG) */
            if (starts(k + len, "transformer.")) {
                k += len + 12;
                snprintf(name, sizeof name, "text.%s%s",
                         starts(k, "text_model.") ? "" : "text_model.", k);
                ok = true;
            } else if (starts(k + len, "model.")) {
                ok = map_openclip(k + len + 6, "text2.", name, sizeof name, &split, &transposed);
            }
        }
        if (!ok || t->dtype == DIFFUSE_DTYPE_OTHER)
            continue; /* EMA copies, schedule buffers, position_ids, logit_scale... */
        if (transposed && t->ndim != 2)
            return diffuse_fail(err, "tensor '%s' is not a matrix", t->name);
        if (split ? add_split(w, name, f, t, err) : add_entry(w, name, f, t, 0, -1, err))
            return -1;
        if (transposed) {
            weight_entry *te = &w->entries[w->count - 1];
            te->transposed = true;
            te->shape[0] = t->shape[1];
            te->shape[1] = t->shape[0];
        }
    }
    w->layout = "ldm";
    return 0;
}

static int load_diffusers_part(diffuse_weights *w, const diffuse_st_file *f, const char *prefix,
                               char *err)
{
    for (int i = 0; i < f->count; i++) {
        const diffuse_st_tensor *t = &f->tensors[i];
        char name[512];
        if (t->dtype == DIFFUSE_DTYPE_OTHER)
            continue;
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        if (strcmp(prefix, "vae.") == 0)
            rename_vae_attention(name, sizeof name);
        if (add_entry(w, name, f, t, 0, -1, err))
            return -1;
    }
    return 0;
}

/* The first of the usual file names that exists in dir/sub. */
static bool find_part_file(const char *dir, const char *sub, char *path, size_t size)
{
    static const char *names[] = {"diffusion_pytorch_model.safetensors", "model.safetensors",
                                  "diffusion_pytorch_model.fp16.safetensors",
                                  "model.fp16.safetensors"};
    struct stat st;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, size, "%s/%s/%s", dir, sub, names[i]);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
            return true;
    }
    return false;
}

static diffuse_status load_diffusers(diffuse_weights *w, const char *dir, char *err)
{
    /* text_encoder_2 is SDXL's; an SDXL refiner has it alone (refused with a
     * clear message by the model loader, which sees what the folder holds) */
    static const char *subs[4] = {"unet", "vae", "text_encoder", "text_encoder_2"};
    static const char *prefixes[4] = {"unet.", "vae.", "text.", "text2."};
    char path[4096];
    const bool has_text2 = find_part_file(dir, subs[3], path, sizeof path);
    for (int p = 0; p < 4; p++) {
        if (!find_part_file(dir, subs[p], path, sizeof path)) {
            if (p == 3 || (p == 2 && has_text2))
                continue;
            return diffuse_fail(err,
                                "%s: no %s/diffusion_pytorch_model.safetensors or "
                                "%s/model.safetensors: not a diffusers model folder",
                                dir, subs[p], subs[p]),
                   DIFFUSE_ERR_FORMAT;
        }
        diffuse_status st = diffuse_st_open(path, &w->files[w->nfiles], err);
        if (st != DIFFUSE_OK)
            return st;
        if (load_diffusers_part(w, w->files[w->nfiles++], prefixes[p], err))
            return DIFFUSE_ERR_FORMAT;
    }
    w->layout = "diffusers";
    return DIFFUSE_OK;
}

/* ------------------------------------------------------------------ TAESD */

/* madebyollin's files: nn.Sequential indices, "{i}.weight" for a conv,
 * "{i}.conv.{0,2,4}.*" for a block. The encoder's index is diffusers'; the
 * decoder's is one more (its index 0 is the tanh clamp). */
static int add_taesd_original(diffuse_weights *w, const diffuse_st_file *f, bool decoder, char *err)
{
    for (int i = 0; i < f->count; i++) {
        const diffuse_st_tensor *t = &f->tensors[i];
        int idx, len = 0;
        char name[512];
        if (t->dtype == DIFFUSE_DTYPE_OTHER)
            continue;
        if (sscanf(t->name, "%d.%n", &idx, &len) != 1 || !len || (decoder && idx < 1))
            return diffuse_fail(err, "%s: tensor '%s' is not a TAESD layer", f->path, t->name);
        snprintf(name, sizeof name, "taesd.%s.layers.%d.%s", decoder ? "decoder" : "encoder",
                 decoder ? idx - 1 : idx, t->name + len);
        if (add_entry(w, name, f, t, 0, -1, err))
            return -1;
    }
    return 0;
}

/* Which half an original file holds: the encoder's first conv is index 0,
 * the decoder has none at 0 (the clamp). -1: neither. */
static int taesd_half(const diffuse_st_file *f)
{
    if (diffuse_st_find(f, "0.weight"))
        return 0;
    return diffuse_st_find(f, "1.weight") ? 1 : -1;
}

/* The other half's file beside path: ..._encoder.safetensors <-> _decoder. */
static bool taesd_sibling(const char *path, bool decoder, char *out, size_t size)
{
    const char *from = decoder ? "_decoder." : "_encoder.",
               *to = decoder ? "_encoder." : "_decoder.";
    const char *slash = strrchr(path, '/'), *p = strstr(slash ? slash : path, from);
    struct stat st;
    if (!p)
        return false;
    snprintf(out, size, "%.*s%s%s", (int)(p - path), path, to, p + strlen(from));
    return stat(out, &st) == 0 && S_ISREG(st.st_mode);
}

static diffuse_status open_taesd_file(diffuse_weights *w, const char *path, bool sibling, char *err)
{
    diffuse_st_file *f;
    if (w->nfiles >= 4)
        return diffuse_fail(err, "%s: too many TAESD files", path), DIFFUSE_ERR_FORMAT;
    diffuse_status st = diffuse_st_open(path, &f, err);
    if (st != DIFFUSE_OK)
        return st;
    w->files[w->nfiles++] = f;
    bool diffusers = false;
    for (int i = 0; i < f->count; i++)
        diffusers = diffusers || starts(f->tensors[i].name, "encoder.layers.") ||
                    starts(f->tensors[i].name, "decoder.layers.");
    if (diffusers) {
        w->layout = "diffusers";
        return load_diffusers_part(w, f, "taesd.", err) ? DIFFUSE_ERR_FORMAT : DIFFUSE_OK;
    }
    const int half = taesd_half(f);
    if (half < 0)
        return diffuse_fail(err, "%s: not a TAESD file (no encoder or decoder layers)", path),
               DIFFUSE_ERR_FORMAT;
    w->layout = "original";
    if (add_taesd_original(w, f, half == 1, err))
        return DIFFUSE_ERR_FORMAT;
    char other[4096];
    if (sibling && taesd_sibling(path, half == 1, other, sizeof other))
        return open_taesd_file(w, other, false, err);
    return DIFFUSE_OK;
}

/* The table sorted and checked, small components marked for widening once;
 * *out = w on success, w freed on failure (rc != 0 on entry: already failed). */
static diffuse_status weights_done(diffuse_weights *w, diffuse_status st, const char *path,
                                   diffuse_weights **out, char *err)
{
    if (st == DIFFUSE_OK && finish_table(w, err))
        st = DIFFUSE_ERR_FORMAT;
    for (int c = 0; st == DIFFUSE_OK && c < NCOMPONENTS;
         c++) /* widening per use pays off for big ones */
        w->keep_widened[c] =
            (size_t)diffuse_weights_count(w, COMPONENTS[c]) * sizeof(float) <= KEEP_WIDENED_BYTES;
    if (st == DIFFUSE_OK && w->count == 0)
        st = (diffuse_fail(err, "%s: holds no Stable Diffusion weights", path), DIFFUSE_ERR_FORMAT);
    if (st != DIFFUSE_OK) {
        diffuse_weights_free(w);
        return st;
    }
    *out = w;
    return DIFFUSE_OK;
}

/* An empty store in *w for path, which must exist; *dir: whether it is a folder. */
static diffuse_status weights_new(const char *path, bool *dir, diffuse_weights **w, char *err)
{
    struct stat st;
    *w = NULL;
    if (stat(path, &st) != 0)
        return diffuse_fail(err, "%s: %s", path, strerror(errno)), DIFFUSE_ERR_IO;
    *dir = S_ISDIR(st.st_mode);
    if (!(*w = calloc(1, sizeof **w)))
        return diffuse_fail(err, "out of memory"), DIFFUSE_ERR_MEMORY;
    return DIFFUSE_OK;
}

diffuse_status diffuse_weights_open_taesd(const char *path, diffuse_weights **out, char *err)
{
    bool dir;
    diffuse_weights *w;
    *out = NULL;
    diffuse_status st = weights_new(path, &dir, &w, err);
    if (st != DIFFUSE_OK)
        return st;
    char file[4096];
    if (dir) {
        static const char *names[] = {
            "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
            "taesd_decoder.safetensors",           "taesd_encoder.safetensors",
            "taesdxl_decoder.safetensors",         "taesdxl_encoder.safetensors"};
        size_t i = 0;
        for (; i < sizeof names / sizeof names[0]; i++) {
            struct stat fs;
            snprintf(file, sizeof file, "%s/%s", path, names[i]);
            if (stat(file, &fs) == 0 && S_ISREG(fs.st_mode))
                break;
        }
        st = i < sizeof names / sizeof names[0]
                 ? open_taesd_file(w, file, true, err)
                 : (diffuse_fail(err,
                                 "%s: no TAESD here (diffusion_pytorch_model.safetensors, or "
                                 "taesd_encoder/taesd_decoder.safetensors)",
                                 path),
                    DIFFUSE_ERR_FORMAT);
    } else {
        st = open_taesd_file(w, path, true, err);
    }
    return weights_done(w, st, path, out, err);
}

diffuse_status diffuse_weights_open(const char *path, diffuse_weights **out, char *err)
{
    bool dir;
    diffuse_weights *w;
    *out = NULL;
    diffuse_status st = weights_new(path, &dir, &w, err);
    if (st != DIFFUSE_OK)
        return st;
    if (dir) {
        st = load_diffusers(w, path, err);
    } else {
        st = diffuse_st_open(path, &w->files[0], err);
        if (st == DIFFUSE_OK) {
            w->nfiles = 1;
            st = load_ldm(w, w->files[0], err) ? DIFFUSE_ERR_FORMAT : DIFFUSE_OK;
        }
    }
    return weights_done(w, st, path, out, err);
}

void diffuse_weights_free(diffuse_weights *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->count; i++) {
        free(w->entries[i].name);
        free(w->entries[i].converted);
    }
    free(w->entries);
    for (int i = 0; i < w->nfiles; i++)
        diffuse_st_close(w->files[i]);
    free(w);
}

/* ------------------------------------------------------------------ access */

bool diffuse_weights_has(const diffuse_weights *w, const char *name)
{
    return find_entry(w, name) != NULL;
}

int diffuse_weights_shape(const diffuse_weights *w, const char *name,
                          int64_t shape[DIFFUSE_MAX_DIMS])
{
    const weight_entry *e = find_entry(w, name);
    if (!e)
        return -1;
    memcpy(shape, e->shape, sizeof e->shape);
    return e->ndim;
}

static void format_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size)
        snprintf(buf + n, size - n, "]");
}

/* Equal up to trailing 1-sized dims of the stored tensor. */
static bool shape_matches(const weight_entry *e, int ndim, const int64_t *shape)
{
    if (e->ndim < ndim)
        return false;
    for (int i = 0; i < e->ndim; i++)
        if (i < ndim ? e->shape[i] != shape[i] : e->shape[i] != 1)
            return false;
    return true;
}

static weight_entry *checked_entry(diffuse_weights *w, const char *name, int ndim,
                                   const int64_t *shape, char *err);

/* m[rows, cols] -> m[cols, rows]; false when out of memory. */
static bool transpose_in_place(float *m, int64_t rows, int64_t cols)
{
    const size_t n = (size_t)(rows * cols);
    float *t = malloc(sizeof(float) * (n ? n : 1));
    if (!t)
        return false;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            t[c * rows + r] = m[r * cols + c];
    memcpy(m, t, sizeof(float) * n);
    free(t);
    return true;
}

const float *diffuse_weights_get(diffuse_weights *w, const char *name, int ndim,
                                 const int64_t *shape, char *err)
{
    weight_entry *e = checked_entry(w, name, ndim, shape, err);
    if (!e)
        return NULL;
    const size_t row = e->ndim ? (size_t)(e->numel / e->shape[0]) : 0;
    const uint8_t *data = e->t->data;
    if (e->t->dtype == DIFFUSE_DTYPE_F32 && ((uintptr_t)data & 3) == 0 && !e->transposed)
        return (const float *)data + e->row0 * row;
    if (e->converted)
        return e->converted;
    diffuse_st_tensor view = *e->t;
    view.numel = e->numel;
    view.data = data + e->row0 * row * (e->t->nbytes / (size_t)(e->t->numel ? e->t->numel : 1));
    if (!(e->converted = malloc(sizeof(float) * (size_t)(e->numel ? e->numel : 1)))) {
        diffuse_fail(err, "out of memory converting '%s'", name);
        return NULL;
    }
    if (diffuse_st_to_f32(&view, e->converted, err)) {
        free(e->converted);
        e->converted = NULL;
        return NULL;
    }
    if (e->transposed && !transpose_in_place(e->converted, e->shape[1], e->shape[0])) {
        free(e->converted);
        e->converted = NULL;
        diffuse_fail(err, "out of memory converting '%s'", name);
        return NULL;
    }
    return e->converted;
}

/* The entry of `name` with the expected shape, or NULL with a message. */
static weight_entry *checked_entry(diffuse_weights *w, const char *name, int ndim,
                                   const int64_t *shape, char *err)
{
    weight_entry *e = find_entry(w, name);
    if (!e) {
        diffuse_fail(err, "missing weight '%s' (%s layout)", name, w->layout);
        return NULL;
    }
    if (e->numel == 0) { /* a zero dimension: nothing a layer can use */
        char have[128];
        format_shape(have, sizeof have, e->ndim, e->shape);
        diffuse_fail(err, "weight '%s' is empty (shape %s)", name, have);
        return NULL;
    }
    if (!shape_matches(e, ndim, shape)) {
        char want[128], have[128];
        format_shape(want, sizeof want, ndim, shape);
        format_shape(have, sizeof have, e->ndim, e->shape);
        diffuse_fail(err, "weight '%s' has shape %s, expected %s", name, have, want);
        return NULL;
    }
    return e;
}

static int mat_view(diffuse_weights *w, const char *name, int ndim, const int64_t *shape,
                    diffuse_wmat *out, bool widened_whole, char *err)
{
    memset(out, 0, sizeof *out);
    weight_entry *e = checked_entry(w, name, ndim, shape, err);
    if (!e)
        return -1;
    const size_t elsize = e->t->nbytes / (size_t)(e->t->numel ? e->t->numel : 1);
    const size_t row = e->ndim ? (size_t)(e->numel / e->shape[0]) : 0;
    out->data = e->t->data + e->row0 * row * elsize;
    out->dtype = e->t->dtype;
    out->numel = (size_t)e->numel;
    out->in_place = out->dtype == DIFFUSE_DTYPE_F32 && ((uintptr_t)out->data & 3) == 0;
    if (out->dtype != DIFFUSE_DTYPE_F32 && out->dtype != DIFFUSE_DTYPE_F16 &&
        out->dtype != DIFFUSE_DTYPE_BF16)
        return diffuse_fail(err, "weight '%s' is %s, not a float type", name, e->t->dtype_name);
    if (e->transposed) { /* a small projection: converted and transposed once */
        const float *f = diffuse_weights_get(w, name, ndim, shape, err);
        if (!f)
            return -1;
        *out = (diffuse_wmat){.data = f,
                              .dtype = DIFFUSE_DTYPE_F32,
                              .in_place = true,
                              .numel = out->numel,
                              .lora = &e->lora};
        e->viewed = true;
        return 0;
    }
    /* matrices take LoRA deltas; tables (embeddings, read a row at a time) do not */
    e->viewed = e->viewed || widened_whole;
    out->lora = widened_whole ? &e->lora : NULL;
    for (int c = 0; widened_whole && !out->in_place && c < NCOMPONENTS; c++) {
        if (!starts(name, COMPONENTS[c]))
            continue;
        if (w->keep_widened[c]) { /* converted once, owned by w, used in place from then on */
            const float *f = diffuse_weights_get(w, name, ndim, shape, err);
            if (!f)
                return -1;
            *out = (diffuse_wmat){.data = f,
                                  .dtype = DIFFUSE_DTYPE_F32,
                                  .in_place = true,
                                  .numel = out->numel,
                                  .lora = out->lora};
        } else {
            e->streamed = true;
            if (out->numel > w->widen_max[c])
                w->widen_max[c] = out->numel;
        }
    }
    return 0;
}

int diffuse_weights_mat(diffuse_weights *w, const char *name, int ndim, const int64_t *shape,
                        diffuse_wmat *out, char *err)
{
    return mat_view(w, name, ndim, shape, out, true, err);
}

int diffuse_weights_table(diffuse_weights *w, const char *name, int ndim, const int64_t *shape,
                          diffuse_wmat *out, char *err)
{
    return mat_view(w, name, ndim, shape, out, false, err);
}

/* The name a printf-style lookup asks for, and the rank of its -1-terminated dims. */
static int format_lookup(char *name, size_t size, const int64_t *dims, const char *fmt, va_list ap)
{
    vsnprintf(name, size, fmt, ap);
    int ndim = 0;
    while (ndim < DIFFUSE_MAX_DIMS && dims[ndim] >= 0)
        ndim++;
    return ndim;
}

int diffuse_weights_matf(diffuse_weights *w, diffuse_wmat *out, char *err, const int64_t *dims,
                         const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int ndim = format_lookup(name, sizeof name, dims, fmt, ap);
    va_end(ap);
    return diffuse_weights_mat(w, name, ndim, dims, out, err);
}

size_t diffuse_weights_widen_max(const diffuse_weights *w, const char *prefix)
{
    for (int c = 0; c < NCOMPONENTS; c++)
        if (strcmp(prefix, COMPONENTS[c]) == 0)
            return w->widen_max[c];
    return 0;
}

size_t diffuse_weights_bytes(const diffuse_weights *w, const char *prefix)
{
    size_t n = 0, streamed = 0;
    for (int i = 0; i < w->count; i++) {
        const weight_entry *e = &w->entries[i];
        if (!starts(e->name, prefix))
            continue;
        /* a streamed matrix is mapped only while it is widened: the largest
         * one counts; a split tensor counts once */
        const size_t bytes = e->row0 == 0 && !e->streamed ? e->t->nbytes : 0;
        const size_t once = e->streamed && e->t->numel
                                ? (size_t)e->numel * (e->t->nbytes / (size_t)e->t->numel)
                                : 0;
        n += bytes;
        streamed = once > streamed ? once : streamed;
    }
    return n + streamed;
}

void diffuse_map_release(const void *data, size_t bytes)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    /* whole pages inside the range only: its neighbours may still be in use */
    uintptr_t b = ((uintptr_t)data + page - 1) & ~(page - 1);
    uintptr_t end = ((uintptr_t)data + bytes) & ~(page - 1);
    if (end > b)
        madvise((void *)b, end - b, MADV_DONTNEED);
}

void diffuse_weights_release(const diffuse_weights *w, const char *prefix)
{
    for (int i = 0; i < w->count; i++) {
        const weight_entry *e = &w->entries[i];
        if (starts(e->name, prefix) && e->row0 == 0)
            diffuse_map_release(e->t->data, e->t->nbytes);
    }
}

const float *diffuse_weights_getf(diffuse_weights *w, char *err, const int64_t *dims,
                                  const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int ndim = format_lookup(name, sizeof name, dims, fmt, ap);
    va_end(ap);
    return diffuse_weights_get(w, name, ndim, dims, err);
}

const char *diffuse_weights_layout(const diffuse_weights *w)
{
    return w->layout;
}

bool diffuse_weights_openclip(const diffuse_weights *w)
{
    return w->openclip;
}

diffuse_dtype diffuse_weights_dtype(const diffuse_weights *w)
{
    int counts[DIFFUSE_DTYPE_OTHER + 1] = {0}, best = 0;
    for (int i = 0; i < w->count; i++)
        if (starts(w->entries[i].name, "unet."))
            counts[w->entries[i].t->dtype]++;
    for (int d = 1; d <= DIFFUSE_DTYPE_OTHER; d++)
        if (counts[d] > counts[best])
            best = d;
    return (diffuse_dtype)best;
}

int64_t diffuse_weights_count(const diffuse_weights *w, const char *prefix)
{
    int64_t n = 0;
    for (int i = 0; i < w->count; i++)
        if (starts(w->entries[i].name, prefix))
            n += w->entries[i].numel;
    return n;
}

int diffuse_weights_max_index(const diffuse_weights *w, const char *prefix)
{
    int n = 0;
    const size_t len = strlen(prefix);
    for (int i = 0; i < w->count; i++) {
        int k;
        if (starts(w->entries[i].name, prefix) &&
            sscanf(w->entries[i].name + len, "%d.", &k) == 1 && k >= 0 && k + 1 > n)
            n = k + 1;
    }
    return n;
}

void diffuse_weights_each(const diffuse_weights *w, const char *prefix,
                          void (*fn)(void *user, const char *name, int ndim, const int64_t *shape),
                          void *user)
{
    for (int i = 0; i < w->count; i++)
        if (starts(w->entries[i].name, prefix))
            fn(user, w->entries[i].name, w->entries[i].ndim, w->entries[i].shape);
}

/* ------------------------------------------------------------------ LoRA */

static bool has_up_attention(const void *ctx, int b)
{
    char name[96];
    snprintf(name, sizeof name, "unet.up_blocks.%d.attentions.0.proj_in.weight", b);
    return find_entry(ctx, name) != NULL;
}

bool diffuse_weights_ldm_unet_name(const diffuse_weights *w, const char *canonical, int per,
                                   char *out, size_t size)
{
    return starts(canonical, "unet.") &&
           unet_name_to_ldm(canonical + 5, per, has_up_attention, w, out, size);
}

bool diffuse_weights_unet_from_ldm(const char *ldm, int per, char *out, size_t size)
{
    return map_ldm_unet(ldm, per, out, size);
}

void diffuse_weights_each_matrix(const diffuse_weights *w,
                                 void (*fn)(void *user, const char *name, int64_t rows,
                                            int64_t numel),
                                 void *user)
{
    for (int i = 0; i < w->count; i++)
        if (w->entries[i].viewed)
            fn(user, w->entries[i].name, w->entries[i].shape[0], w->entries[i].numel);
}

int diffuse_weights_lora_push(diffuse_weights *w, const char *name, diffuse_lora_delta *d)
{
    weight_entry *e = find_entry(w, name);
    if (!e || !e->viewed)
        return -1;
    d->next = e->lora;
    e->lora = d;
    return 0;
}

void diffuse_weights_lora_clear(diffuse_weights *w)
{
    for (int i = 0; i < w->count; i++)
        w->entries[i].lora = NULL;
}
