/* lora.c: LoRA files applied to a model for one request, without copying it.
 *
 * A LoRA stores, per weight matrix W [out, in] it changes, two small factors
 * down [rank, in] and up [out, rank] (a convolution's W [out, in, k, k]:
 * down [rank, in, k, k], up [out, rank, 1, 1], LoCon), and optionally alpha:
 *
 *     W' = W + weight * (alpha / rank) * up . down          (alpha = rank when absent)
 *
 * The factors stay in the LoRA file's mapping; each becomes a delta on its
 * matrix's list (weights.c), added when the matrix is widened for use
 * (diffuse_wmat_f32), so the model is never copied or changed.
 *
 * File formats, by the names of their tensors:
 *   kohya / A1111   lora_unet_<module>.lora_down.weight, .lora_up.weight, .alpha;
 *                   lora_te_ (SD 1.x/2.x), lora_te1_ / lora_te2_ (SDXL) for the
 *                   text encoders; <module> is the diffusers name or the original
 *                   checkpoint's (input_blocks_4_1_...), dots written as '_'
 *   diffusers/PEFT  unet.<module>.lora_A.weight / lora_B.weight (text_encoder.,
 *                   text_encoder_2.), or .lora.down/.lora.up, or the attention
 *                   processor names (attn1.processor.to_q_lora.down.weight)
 * Module names are matched against every weight matrix of the model, under
 * each naming. LyCORIS' LoHa/LoKr and DoRA change W otherwise: refused.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* One target name as a LoRA file may spell it -> the model's canonical name. */
typedef struct lora_name {
    char *key;
    char *canonical;
    int64_t rows, numel;
} lora_name;

struct diffuse_lora_set {
    diffuse_st_file **files;
    int nfiles;
    diffuse_lora_delta *deltas;
    int ndeltas, cap;
    size_t scratch;   /* floats diffuse_wmat_f32 may need beyond the model's own */
    size_t bytes;     /* bytes of the factors, read from the mappings */
    lora_name *names; /* sorted by key */
    int nnames, names_cap;
    bool failed; /* out of memory while building names */
    diffuse_weights *weights;
};

/* ------------------------------------------------------------------ names */

static bool starts(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static void add_name(diffuse_lora_set *s, const char *key, const char *canonical, int64_t rows,
                     int64_t numel)
{
    if (s->failed)
        return;
    if (s->nnames == s->names_cap) {
        int cap = s->names_cap ? 2 * s->names_cap : 1024;
        lora_name *n = realloc(s->names, (size_t)cap * sizeof *n);
        if (!n) {
            s->failed = true;
            return;
        }
        s->names = n;
        s->names_cap = cap;
    }
    lora_name *n = &s->names[s->nnames];
    n->key = strdup(key);
    n->canonical = strdup(canonical);
    n->rows = rows;
    n->numel = numel;
    if (!n->key || !n->canonical) {
        free(n->key);
        free(n->canonical);
        s->failed = true;
        return;
    }
    s->nnames++;
}

/* "prefix" + path with '.' -> '_', the ".weight" suffix dropped. */
static void kohya(char *out, size_t size, const char *prefix, const char *path)
{
    snprintf(out, size, "%s%s", prefix, path);
    size_t n = strlen(out);
    if (n > 7 && !strcmp(out + n - 7, ".weight"))
        out[n - 7] = 0;
    for (char *c = out + strlen(prefix); *c; c++)
        if (*c == '.')
            *c = '_';
}

typedef struct names_ctx {
    diffuse_lora_set *s;
    const diffuse_model *m;
    int per; /* UNet blocks per level + 1 */
} names_ctx;

/* Every spelling of one model matrix a LoRA file may use. */
static void name_matrix(void *user, const char *canonical, int64_t rows, int64_t numel)
{
    names_ctx *c = user;
    char key[512], ldm[512];
    const size_t n = strlen(canonical);
    if (n < 8 || strcmp(canonical + n - 7, ".weight"))
        return;
    if (starts(canonical, "unet.")) {
        kohya(key, sizeof key, "lora_unet_", canonical + 5);
        add_name(c->s, key, canonical, rows, numel);
        if (diffuse_weights_ldm_unet_name(c->m->weights, canonical, c->per, ldm, sizeof ldm)) {
            kohya(key, sizeof key, "lora_unet_", ldm);
            add_name(c->s, key, canonical, rows, numel);
        }
        snprintf(key, sizeof key, "unet.%.*s", (int)(n - 12), canonical + 5);
        add_name(c->s, key, canonical, rows, numel);
    } else if (starts(canonical, "text.") || starts(canonical, "text2.")) {
        const bool second = canonical[4] == '2', xl = c->m->clip2 != NULL;
        const char *path = canonical + (second ? 6 : 5);
        kohya(key, sizeof key, second ? "lora_te2_" : xl ? "lora_te1_" : "lora_te_", path);
        add_name(c->s, key, canonical, rows, numel);
        snprintf(key, sizeof key, "%s%.*s", second ? "text_encoder_2." : "text_encoder.",
                 (int)(strlen(path) - 7), path);
        add_name(c->s, key, canonical, rows, numel);
    }
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const lora_name *)a)->key, ((const lora_name *)b)->key);
}

static const lora_name *find_name(const diffuse_lora_set *s, const char *key)
{
    lora_name k = {.key = (char *)key};
    return bsearch(&k, s->names, (size_t)s->nnames, sizeof k, cmp_name);
}

/* ------------------------------------------------------------------ files */

/* A module of the file: its factors' tensors and how the file names it. */
typedef struct lora_module {
    char key[512]; /* module name as find_name looks it up */
    const diffuse_st_tensor *down, *up, *alpha;
} lora_module;

/* The module whose down factor `name` is, or false for any other tensor. */
static bool module_of(const diffuse_st_file *f, const char *name, lora_module *mod)
{
    static const char *const downs[][2] = {{".lora_down.weight", ".lora_up.weight"},
                                           {".lora_A.weight", ".lora_B.weight"},
                                           {".lora.down.weight", ".lora.up.weight"},
                                           {"_lora.down.weight", "_lora.up.weight"}};
    const size_t n = strlen(name);
    char up[600];
    for (int i = 0; i < 4; i++) {
        const size_t dl = strlen(downs[i][0]);
        if (n <= dl || strcmp(name + n - dl, downs[i][0]) || n - dl >= sizeof mod->key)
            continue;
        snprintf(mod->key, sizeof mod->key, "%.*s%s", (int)(n - dl), name, i == 3 ? "_lora" : "");
        snprintf(up, sizeof up, "%.*s%s", (int)(n - dl), name, downs[i][1]);
        mod->down = diffuse_st_find(f, name);
        mod->up = diffuse_st_find(f, up);
        snprintf(up, sizeof up, "%s.alpha", mod->key);
        mod->alpha = diffuse_st_find(f, up);
        return true;
    }
    return false;
}

/* diffusers' spellings onto the model's: the "base_model.model." of PEFT and
 * the attention processors' to_q_lora ... to_out_lora. */
static void normalize_key(char *key, size_t size)
{
    static const char *const procs[][2] = {{".processor.to_q_lora", ".to_q"},
                                           {".processor.to_k_lora", ".to_k"},
                                           {".processor.to_v_lora", ".to_v"},
                                           {".processor.to_out_lora", ".to_out.0"}};
    char tmp[512];
    if (starts(key, "base_model.model.")) {
        snprintf(tmp, sizeof tmp, "%s", key + 17);
        snprintf(key, size, "%s", tmp);
    }
    for (int i = 0; i < 4; i++) {
        char *p = strstr(key, procs[i][0]);
        if (p && !p[strlen(procs[i][0])]) {
            *p = 0;
            snprintf(tmp, sizeof tmp, "%s%s", key, procs[i][1]);
            snprintf(key, size, "%s", tmp);
        }
    }
    size_t n = strlen(key);
    if (n > 5 && !strcmp(key + n - 5, "_lora"))
        key[n - 5] = 0;
}

static bool float_tensor(const diffuse_st_tensor *t)
{
    return t->dtype == DIFFUSE_DTYPE_F32 || t->dtype == DIFFUSE_DTYPE_F16 ||
           t->dtype == DIFFUSE_DTYPE_BF16;
}

static float alpha_of(const diffuse_st_tensor *t, float fallback)
{
    float a;
    if (!t || t->numel != 1 || !float_tensor(t) || diffuse_st_to_f32(t, &a, NULL) || !isfinite(a))
        return fallback;
    return a;
}

/* ------------------------------------------------------------------ applying */

/* The next delta: the array is sized for every module before the first is
 * pushed, so the matrices' lists can point into it. */
static diffuse_lora_delta *new_delta(diffuse_lora_set *s)
{
    return s->ndeltas < s->cap ? &s->deltas[s->ndeltas++] : NULL;
}

/* Checks one module's factors against its matrix and makes its delta. */
static int module_delta(diffuse_lora_set *s, const lora_module *mod, const lora_name *t,
                        float weight, const char *file, char *err)
{
    const diffuse_st_tensor *d = mod->down, *u = mod->up;
    if (!u)
        return diffuse_fail(err, "LoRA %s: %s has a down factor and no up factor", file, mod->key);
    if (!float_tensor(d) || !float_tensor(u) || d->ndim < 2 || u->ndim < 2)
        return diffuse_fail(err, "LoRA %s: %s: the factors are not float matrices", file, mod->key);
    /* products checked: an empty factor passes the file's checks with any rank */
    const int64_t rank = d->shape[0], in = d->numel / (rank ? rank : 1);
    int64_t up_numel, down_numel, w_numel;
    if (rank < 1 || rank > INT_MAX || u->shape[0] != t->rows ||
        __builtin_mul_overflow(t->rows, rank, &up_numel) || u->numel != up_numel ||
        __builtin_mul_overflow(rank, in, &down_numel) || down_numel != d->numel ||
        __builtin_mul_overflow(t->rows, in, &w_numel) || w_numel != t->numel)
        return diffuse_fail(err,
                            "LoRA %s: %s does not fit the model's %s (up %lld x %lld, "
                            "down %lld x %lld; the weight is %lld x %lld): a LoRA for another "
                            "model?",
                            file, mod->key, t->canonical, (long long)u->shape[0],
                            (long long)(u->numel / (u->shape[0] ? u->shape[0] : 1)),
                            (long long)rank, (long long)in, (long long)t->rows,
                            (long long)(t->numel / t->rows));
    diffuse_lora_delta *delta = new_delta(s);
    if (!delta)
        return diffuse_fail(err, "internal: LoRA deltas miscounted");
    *delta =
        (diffuse_lora_delta){.down = d->data,
                             .up = u->data,
                             .down_dtype = d->dtype,
                             .up_dtype = u->dtype,
                             .rank = (int)rank,
                             .out = (int)t->rows,
                             .in = in,
                             .scale = weight * alpha_of(mod->alpha, (float)rank) / (float)rank};
    if (diffuse_weights_lora_push(s->weights, t->canonical, delta))
        return diffuse_fail(err, "internal: %s takes no LoRA", t->canonical);
    size_t need = (size_t)t->numel + (size_t)down_numel + (size_t)up_numel + 48;
    s->scratch = need > s->scratch ? need : s->scratch;
    s->bytes += d->nbytes + u->nbytes;
    return 0;
}

/* What one file holds, as counts for the notices. */
typedef struct file_report {
    int modules, applied, unmatched, unsupported;
    char first_unmatched[160], first_unsupported[160];
} file_report;

static bool unsupported_tensor(const char *name)
{
    return strstr(name, ".hada_") || strstr(name, ".lokr_") || strstr(name, ".dora_scale") ||
           strstr(name, ".diff");
}

static int apply_file(diffuse_lora_set *s, const diffuse_st_file *f, const diffuse_lora *l,
                      file_report *r, char *err)
{
    lora_module mod;
    for (int i = 0; i < f->count; i++) {
        const char *name = f->tensors[i].name;
        if (unsupported_tensor(name)) {
            if (!r->unsupported++)
                snprintf(r->first_unsupported, sizeof r->first_unsupported, "%s", name);
            continue;
        }
        if (!module_of(f, name, &mod))
            continue;
        r->modules++;
        normalize_key(mod.key, sizeof mod.key);
        const lora_name *t = find_name(s, mod.key);
        if (!t) {
            if (!r->unmatched++)
                snprintf(r->first_unmatched, sizeof r->first_unmatched, "%s", mod.key);
            continue;
        }
        const bool text = starts(t->canonical, "text");
        if (module_delta(s, &mod, t, text ? l->weight : l->unet_weight, l->path, err))
            return -1;
        r->applied++;
    }
    return 0;
}

static diffuse_status report_file(const file_report *r, const diffuse_lora *l,
                                  void (*notice)(void *, const char *), void *user, char *err)
{
    char msg[DIFFUSE_ERROR_SIZE];
    if (r->unsupported)
        return diffuse_fail(err,
                            "LoRA %s: %d tensors of a kind Diffuse does not apply (LoHa, "
                            "LoKr, DoRA or full differences, e.g. %s)",
                            l->path, r->unsupported, r->first_unsupported),
               DIFFUSE_ERR_FORMAT;
    if (!r->applied)
        return diffuse_fail(
                   err, "LoRA %s: %s", l->path,
                   r->modules ? "none of its modules matches this model (a LoRA for another model "
                                "family?)"
                              : "no LoRA factors in this file (lora_down/lora_up or "
                                "lora_A/lora_B)"),
               r->modules ? DIFFUSE_ERR_ARGUMENT : DIFFUSE_ERR_FORMAT;
    if (r->unmatched && notice) {
        snprintf(msg, sizeof msg,
                 "LoRA %s: %d of its %d modules match nothing in this model "
                 "and are left out (e.g. %s)",
                 l->path, r->unmatched, r->modules, r->first_unmatched);
        notice(user, msg);
    }
    return DIFFUSE_OK;
}

size_t diffuse_lora_file_scratch(const diffuse_st_file *f)
{
    size_t most = 0;
    lora_module mod;
    for (int i = 0; i < f->count; i++) {
        if (!module_of(f, f->tensors[i].name, &mod) || !mod.up || mod.down->ndim < 1 ||
            mod.down->shape[0] < 1)
            continue;
        /* the matrix W [out, in] widened, with its factors beside it */
        const size_t rank = (size_t)mod.down->shape[0], in = (size_t)mod.down->numel / rank;
        const size_t out = (size_t)mod.up->numel / rank;
        size_t w;
        if (__builtin_mul_overflow(out, in, &w))
            continue; /* no model has such a matrix: module_delta refuses it, naming it */
        const size_t need = w + (size_t)mod.down->numel + (size_t)mod.up->numel + 48;
        most = need > most ? need : most;
    }
    return most;
}

/* Modules in a file: an upper bound on its deltas. */
static int count_modules(const diffuse_st_file *f)
{
    int n = 0;
    lora_module mod;
    for (int i = 0; i < f->count; i++)
        n += module_of(f, f->tensors[i].name, &mod);
    return n;
}

static int build_names(diffuse_lora_set *s, const diffuse_model *m, char *err)
{
    names_ctx c = {.s = s, .m = m, .per = m->unet_cfg.layers_per_block + 1};
    diffuse_weights_each_matrix(m->weights, name_matrix, &c);
    if (s->failed)
        return diffuse_fail(err, "out of memory");
    if (s->nnames > 1)
        qsort(s->names, (size_t)s->nnames, sizeof *s->names, cmp_name);
    return 0;
}

diffuse_status diffuse_lora_set_open(diffuse_model *m, const diffuse_lora *loras, int n,
                                     void (*notice)(void *, const char *), void *user,
                                     diffuse_lora_set **out, char *err)
{
    *out = NULL;
    diffuse_lora_set *s = calloc(1, sizeof *s);
    if (!s || !(s->files = calloc((size_t)(n ? n : 1), sizeof *s->files))) {
        free(s);
        return diffuse_fail(err, "out of memory"), DIFFUSE_ERR_MEMORY;
    }
    s->weights = m->weights;
    diffuse_status st = build_names(s, m, err) ? DIFFUSE_ERR_MEMORY : DIFFUSE_OK;
    for (int i = 0; st == DIFFUSE_OK && i < n; i++, s->nfiles++)
        if (diffuse_st_open(loras[i].path, &s->files[i], err)) /* unreadable, or malformed */
            st = access(loras[i].path, R_OK) ? DIFFUSE_ERR_IO : DIFFUSE_ERR_FORMAT;
        else
            s->cap += count_modules(s->files[i]);
    if (st == DIFFUSE_OK && !(s->deltas = calloc((size_t)(s->cap ? s->cap : 1), sizeof *s->deltas)))
        st = (diffuse_fail(err, "out of memory"), DIFFUSE_ERR_MEMORY);
    for (int i = 0; st == DIFFUSE_OK && i < n; i++) {
        file_report r = {0};
        /* a module that does not fit: a LoRA for another model */
        st = apply_file(s, s->files[i], &loras[i], &r, err) ? DIFFUSE_ERR_ARGUMENT : DIFFUSE_OK;
        if (st == DIFFUSE_OK)
            st = report_file(&r, &loras[i], notice, user, err);
    }
    if (st != DIFFUSE_OK) {
        diffuse_lora_set_close(s);
        return st;
    }
    *out = s;
    return DIFFUSE_OK;
}

size_t diffuse_lora_set_scratch(const diffuse_lora_set *s)
{
    return s ? s->scratch : 0;
}
size_t diffuse_lora_set_bytes(const diffuse_lora_set *s)
{
    return s ? s->bytes : 0;
}

void diffuse_lora_set_close(diffuse_lora_set *s)
{
    if (!s)
        return;
    diffuse_weights_lora_clear(s->weights);
    for (int i = 0; i < s->nfiles; i++)
        diffuse_st_close(s->files[i]);
    for (int i = 0; i < s->nnames; i++) {
        free(s->names[i].key);
        free(s->names[i].canonical);
    }
    free(s->names);
    free(s->files);
    free(s->deltas);
    free(s);
}

/* W [out, in] += scale * up [out, rank] . down [rank, in], the factors widened
 * into scratch from the arena. */
int diffuse_lora_add(const diffuse_lora_delta *d, float *w, diffuse_arena *a)
{
    const size_t mark = diffuse_arena_mark(a);
    float *down = diffuse_arena_push(a, (size_t)d->rank * (size_t)d->in);
    float *up = diffuse_arena_push(a, (size_t)d->out * (size_t)d->rank);
    if (!down || !up)
        return -1;
    diffuse_op_widen(down, d->down, d->down_dtype, (size_t)d->rank * (size_t)d->in);
    diffuse_op_widen(up, d->up, d->up_dtype, (size_t)d->out * (size_t)d->rank);
    diffuse_gemm(false, false, d->out, (int)d->in, d->rank, d->scale, up, d->rank, down, (int)d->in,
                 1.0f, w, (int)d->in);
    diffuse_arena_reset(a, mark);
    return 0;
}
