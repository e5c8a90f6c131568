/* model.c: opening a checkpoint as a model: weights, hyper-parameters read off
 * the tensors themselves (config.json files only where the tensors cannot say,
 * e.g. head counts), tokenizer, and the three model parts. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "internal.h"

static bool file_exists(const char *path)
{
    return diffuse_path_exists(path);
}

/* Dimension d of a weight, or -1 when missing. */
static int64_t dim_of(const diffuse_weights *w, int d, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int64_t dim_of(const diffuse_weights *w, int d, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t shape[DIFFUSE_MAX_DIMS];
    int nd = diffuse_weights_shape(w, name, shape);
    return nd > d ? shape[d] : -1;
}

/* Largest i + 1 such that the formatted name with i exists (i from 0). */
static int count_of(const diffuse_weights *w, const char *fmt)
{
    int n = 0;
    for (;; n++) {
        char name[256];
        snprintf(name, sizeof name, fmt, n);
        if (!diffuse_weights_has(w, name))
            return n;
    }
}

/* Highest i + 1 over weights named <prefix><i>.*: blocks counted this way make a
 * missing tensor in the middle an error at load, not a silently smaller model. */
static int max_index(const diffuse_weights *w, const char *prefix)
{
    return diffuse_weights_max_index(w, prefix);
}

/* An int or the l-th element of a list, from a config object; fallback when absent. */
static int json_int_at(const cJSON *cfg, const char *key, int l, int fallback)
{
    const cJSON *v = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, key) : NULL;
    if (cJSON_IsArray(v))
        v = cJSON_GetArrayItem(v, l);
    return cJSON_IsNumber(v) ? v->valueint : fallback;
}

/* A JSON file the folder may have: *out NULL when it has none; one that is
 * there but cannot be read or parsed fails, naming the file and the place. */
static int optional_json(const char *path, cJSON **out, char *err)
{
    *out = NULL;
    if (!file_exists(path))
        return 0;
    return (*out = diffuse_json_load(path, err)) ? 0 : -1;
}

static int load_part_config(const char *dir, const char *part, cJSON **out, char *err)
{
    char path[4096];
    *out = NULL;
    if (!dir)
        return 0;
    snprintf(path, sizeof path, "%s/%s/config.json", dir, part);
    return optional_json(path, out, err);
}

/* ------------------------------------------------------------------ unet */

static int infer_unet(diffuse_model *m, const cJSON *cfg, char *err)
{
    diffuse_unet_config *u = &m->unet_cfg;
    const diffuse_weights *w = m->weights;
    memset(u, 0, sizeof *u);
    u->levels = count_of(w, "unet.down_blocks.%d.resnets.0.conv1.weight");
    u->in_channels = (int)dim_of(w, 1, "unet.conv_in.weight");
    u->out_channels = (int)dim_of(w, 0, "unet.conv_out.weight");
    if (u->levels < 1 || u->levels > DIFFUSE_MAX_LEVELS || u->in_channels < 1 ||
        u->out_channels < 1)
        return diffuse_fail(err, "%s: no UNet found (unet.conv_in / down_blocks missing)", m->path);
    u->layers_per_block = count_of(w, "unet.down_blocks.0.resnets.%d.conv1.weight");
    for (int l = 0; l < u->levels; l++) {
        u->channels[l] = (int)dim_of(w, 0, "unet.down_blocks.%d.resnets.0.conv1.weight", l);
        char prefix[64];
        snprintf(prefix, sizeof prefix, "unet.down_blocks.%d.attentions.", l);
        u->cross_attn[l] =
            diffuse_weights_count(w, prefix) > 0; /* any weight: a gap is an error later */
    }
    const char *attn = "unet.mid_block.attentions.0";
    u->context_dim = (int)dim_of(w, 1, "%s.transformer_blocks.0.attn2.to_k.weight", attn);
    int64_t proj[DIFFUSE_MAX_DIMS];
    char name[128];
    snprintf(name, sizeof name, "%s.proj_in.weight", attn);
    u->linear_proj = diffuse_weights_shape(w, name, proj) == 2;
    snprintf(name, sizeof name, "%s.transformer_blocks.", attn);
    u->mid_depth = max_index(w, name);
    if (u->context_dim < 1 || u->mid_depth < 1)
        return diffuse_fail(err, "%s: the UNet has no cross-attention mid block", m->path);
    for (int l = 0; l < u->levels; l++) {
        snprintf(name, sizeof name, "unet.down_blocks.%d.attentions.0.transformer_blocks.", l);
        u->depth[l] = max_index(w, name);
    }
    /* SDXL: the added embedding of pooled text and size ids; its split into the
     * two is settled once the text encoders are known (configure_sdxl) */
    u->add_in = (int)dim_of(w, 1, "unet.add_embedding.linear_1.weight");
    u->add_in = u->add_in > 0 ? u->add_in : 0;
    u->add_time_dim = json_int_at(cfg, "addition_time_embed_dim", 0, 0);
    bool sdxl = u->add_in > 0;
    bool sd2 = !sdxl && (u->linear_proj || u->context_dim == 1024);
    for (int l = 0; l < u->levels; l++) {
        int fallback = sd2 || sdxl ? (u->channels[l] >= 64 ? u->channels[l] / 64 : 1) : 8;
        int heads = json_int_at(cfg, "num_attention_heads", l, -1);
        u->heads[l] = heads > 0 ? heads : json_int_at(cfg, "attention_head_dim", l, fallback);
    }
    u->groups = json_int_at(cfg, "norm_num_groups", 0, 32);
    const cJSON *eps = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "norm_eps") : NULL;
    u->eps = cJSON_IsNumber(eps) ? (float)eps->valuedouble : 1e-5f;
    u->flip_sin_to_cos = true;
    u->freq_shift = json_int_at(cfg, "freq_shift", 0, 0);
    m->family = sdxl ? "sdxl" : sd2 ? "sd2" : "sd1";
    return 0;
}

/* ------------------------------------------------------------------ vae */

static int infer_vae(diffuse_model *m, const cJSON *cfg, char *err)
{
    diffuse_vae_config *v = &m->vae_cfg;
    const diffuse_weights *w = m->weights;
    memset(v, 0, sizeof *v);
    v->levels = count_of(w, "vae.encoder.down_blocks.%d.resnets.0.conv1.weight");
    if (v->levels < 1 || v->levels > DIFFUSE_MAX_LEVELS)
        return diffuse_fail(err, "%s: no VAE found (vae.encoder.down_blocks missing)", m->path);
    for (int l = 0; l < v->levels; l++)
        v->channels[l] = (int)dim_of(w, 0, "vae.encoder.down_blocks.%d.resnets.0.conv1.weight", l);
    v->layers_per_block = count_of(w, "vae.encoder.down_blocks.0.resnets.%d.conv1.weight");
    v->in_channels = (int)dim_of(w, 1, "vae.encoder.conv_in.weight");
    v->out_channels = (int)dim_of(w, 0, "vae.decoder.conv_out.weight");
    v->latent_channels = (int)dim_of(w, 1, "vae.decoder.conv_in.weight");
    v->groups = json_int_at(cfg, "norm_num_groups", 0, 32);
    v->mid_attention = diffuse_weights_count(w, "vae.encoder.mid_block.attentions.") > 0 ||
                       diffuse_weights_count(w, "vae.decoder.mid_block.attentions.") > 0;
    const cJSON *sf = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "scaling_factor") : NULL;
    const bool sdxl = strcmp(m->family, "sdxl") == 0; /* infer_unet ran first */
    v->scaling_factor = cJSON_IsNumber(sf) ? (float)sf->valuedouble : sdxl ? 0.13025f : 0.18215f;
    if (v->in_channels != 3 || v->out_channels != 3 || v->latent_channels < 1)
        return diffuse_fail(err, "%s: the VAE is not an RGB autoencoder", m->path);
    if (!(v->scaling_factor > 1e-6f && v->scaling_factor < 1e6f)) /* NaN fails too */
        return diffuse_fail(err,
                            "%s: vae/config.json: scaling_factor %g is not a usable scale "
                            "(a positive number such as 0.18215)",
                            m->path, v->scaling_factor);
    return 0;
}

/* ------------------------------------------------------------------ text */

/* Text encoder under prefix ("text." or SDXL's "text2.") into *c. */
static int infer_clip(diffuse_model *m, const cJSON *cfg, const char *prefix,
                      diffuse_clip_config *c, char *err)
{
    const diffuse_weights *w = m->weights;
    const bool sdxl = strcmp(m->family, "sdxl") == 0, second = strcmp(prefix, "text2.") == 0;
    char name[128];
    memset(c, 0, sizeof *c);
    snprintf(c->prefix, sizeof c->prefix, "%s", prefix);
    c->vocab_size = (int)dim_of(w, 0, "%stext_model.embeddings.token_embedding.weight", prefix);
    c->width = (int)dim_of(w, 1, "%stext_model.embeddings.token_embedding.weight", prefix);
    c->max_positions =
        (int)dim_of(w, 0, "%stext_model.embeddings.position_embedding.weight", prefix);
    c->intermediate = (int)dim_of(w, 0, "%stext_model.encoder.layers.0.mlp.fc1.weight", prefix);
    /* highest block index + 1: a missing tensor is an error, not fewer blocks */
    snprintf(name, sizeof name, "%stext_model.encoder.layers.", prefix);
    int stored = max_index(w, name);
    if (c->width < 1 || stored < 1 || c->intermediate < 1)
        return diffuse_fail(err, "%s: no %stext encoder found (%stext_model.embeddings missing)",
                            m->path, second ? "second " : "", prefix);
    /* OpenCLIP: SD 2.x's single file, SDXL's second encoder */
    bool openclip = second || (!sdxl && diffuse_weights_openclip(w));
    /* SD 2.x's OpenCLIP checkpoints hold the last block, which it skips; SDXL
     * runs every block (the pooled output needs the last) */
    c->layers = json_int_at(cfg, "num_hidden_layers", 0, openclip && !sdxl ? stored - 1 : stored);
    c->heads = json_int_at(cfg, "num_attention_heads", 0, c->width >= 64 ? c->width / 64 : 1);
    const cJSON *act = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "hidden_act") : NULL;
    c->gelu = cJSON_IsString(act) ? strcmp(act->valuestring, "gelu") == 0 : openclip;
    const cJSON *eps = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "layer_norm_eps") : NULL;
    c->eps = cJSON_IsNumber(eps) ? (float)eps->valuedouble : 1e-5f;
    if (c->layers < 1 || c->layers > stored)
        return diffuse_fail(err, "%s: text encoder config asks for %d layers, file holds %d",
                            m->path, c->layers, stored);
    /* SDXL reads the penultimate state of both encoders as it is, and the
     * second one's projected end-token state */
    c->hidden_layer = sdxl ? c->layers - 1 : c->layers;
    c->hidden_norm = !sdxl;
    if (sdxl && c->hidden_layer < 1)
        return diffuse_fail(err, "%s: an SDXL text encoder needs 2 blocks or more", m->path);
    if (second && (c->projection = (int)dim_of(w, 0, "text2.text_projection.weight")) < 1)
        return diffuse_fail(err, "%s: the second text encoder has no text_projection", m->path);
    return 0;
}

/* SDXL's added embedding: add_in = pooled width + 6 x addition_time_embed_dim.
 * A refiner's (5 ids: sizes, crop and an aesthetic score) is refused here. */
static int configure_sdxl(diffuse_model *m, char *err)
{
    diffuse_unet_config *u = &m->unet_cfg;
    /* in 64 bits: addition_time_embed_dim comes from unet/config.json */
    const int pooled = m->clip2_cfg.projection, rest = u->add_in - pooled;
    if (u->add_time_dim <= 0 && rest > 0 && rest % DIFFUSE_TIME_IDS == 0)
        u->add_time_dim = rest / DIFFUSE_TIME_IDS;
    if (u->add_time_dim > 0 && rest == 5 * (int64_t)u->add_time_dim)
        return diffuse_fail(err,
                            "%s: an SDXL refiner (conditioned on an aesthetic score): not "
                            "supported; load an SDXL base, Turbo or fine-tuned model",
                            m->path);
    if (u->add_time_dim <= 0 || rest != DIFFUSE_TIME_IDS * (int64_t)u->add_time_dim)
        return diffuse_fail(err,
                            "%s: the UNet's added embedding takes %d inputs, which is not "
                            "the pooled text (%d) and 6 size ids",
                            m->path, u->add_in, pooled);
    return 0;
}

/* The tokenizer folder's pad token: "!" (id 0, SD 2.x, SDXL's tokenizer_2) or
 * <|endoftext|>, into *pad_id (left as it is when the folder does not say). */
static int read_pad_token(diffuse_model *m, const char *tokdir, int32_t *pad_id, char *err)
{
    char path[4096];
    cJSON *cfg;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tokdir);
    if (optional_json(path, &cfg, err))
        return -1;
    const cJSON *pad = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "pad_token") : NULL;
    if (cJSON_IsObject(pad))
        pad = cJSON_GetObjectItemCaseSensitive(pad, "content");
    if (cJSON_IsString(pad))
        *pad_id = strcmp(pad->valuestring, "!") == 0 ? 0 : diffuse_tokenizer_eos(m->tokenizer);
    cJSON_Delete(cfg);
    return 0;
}

/* ------------------------------------------------------------------ schedule */

/* Fields of a scheduler_config.json object over *s (absent keys keep theirs). */
void diffuse_schedule_from_json(diffuse_schedule_config *s, const struct cJSON *cfg)
{
    const cJSON *v;
#define NUM(key) (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(cfg, key)))
#define STR(key) (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(cfg, key)))
    if (!cfg)
        return;
    if (NUM("num_train_timesteps"))
        s->num_train_timesteps = v->valueint;
    if (NUM("beta_start"))
        s->beta_start = (float)v->valuedouble;
    if (NUM("beta_end"))
        s->beta_end = (float)v->valuedouble;
    if (NUM("steps_offset"))
        s->steps_offset = v->valueint;
    if (NUM("original_inference_steps"))
        s->original_inference_steps = v->valueint;
    if (NUM("timestep_scaling"))
        s->timestep_scaling = (float)v->valuedouble;
    if (cJSON_IsBool(v = cJSON_GetObjectItemCaseSensitive(cfg, "set_alpha_to_one")))
        s->set_alpha_to_one = cJSON_IsTrue(v);
    if (STR("beta_schedule"))
        s->beta_schedule = strcmp(v->valuestring, "linear") == 0 ? DIFFUSE_BETAS_LINEAR
                                                                 : DIFFUSE_BETAS_SCALED_LINEAR;
    if (STR("prediction_type"))
        s->prediction = strcmp(v->valuestring, "v_prediction") == 0 ? DIFFUSE_PREDICTION_V
                                                                    : DIFFUSE_PREDICTION_EPSILON;
    if (STR("timestep_spacing") && diffuse_spacing_parse(v->valuestring) >= 0)
        s->spacing = (diffuse_spacing)diffuse_spacing_parse(v->valuestring);
#undef NUM
#undef STR
}

static int read_schedule(diffuse_model *m, const char *dir, char *err)
{
    m->schedule = diffuse_schedule_config_default();
    char path[4096];
    cJSON *cfg = NULL;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir ? dir : "");
    if (dir && optional_json(path, &cfg, err))
        return -1;
    diffuse_schedule_from_json(&m->schedule, cfg);
    const cJSON *cls = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "_class_name") : NULL;
    if (cJSON_IsString(cls))
        snprintf(m->scheduler_class, sizeof m->scheduler_class, "%s", cls->valuestring);
    cJSON_Delete(cfg);
    /* the schedule checked once, by making a one-step sampler of it: a broken
     * file fails the load naming it, and a sampler a run cannot make is the
     * request's fault (DIFFUSE_ERR_ARGUMENT), never the model's */
    diffuse_sampler_state *s;
    char why[DIFFUSE_ERROR_SIZE];
    if (diffuse_sampler_create(DIFFUSE_SAMPLER_EULER, false, &m->schedule, 1, 1.0f, 1, &s, why))
        return diffuse_fail(err, "%s: %s", dir ? path : "the default schedule", why);
    diffuse_sampler_free(s);
    return 0;
}

/* A folder may state the settings it was made for in model_index.json, under
 * a key diffusers ignores (it skips keys that start with "_"):
 *   "_diffuse_defaults": {"sampler": "euler", "steps": 20, "guidance": 3.0}
 * All three must be present and valid, or none is used. */
static int read_defaults(diffuse_model *m, const char *dir, char *err)
{
    m->defaults_sampler = m->defaults_steps = -1;
    m->defaults_guidance = -1;
    char path[4096];
    cJSON *idx = NULL;
    snprintf(path, sizeof path, "%s/model_index.json", dir ? dir : "");
    if (dir && optional_json(path, &idx, err))
        return -1;
    const cJSON *d = idx ? cJSON_GetObjectItemCaseSensitive(idx, "_diffuse_defaults") : NULL;
    const cJSON *sa = cJSON_GetObjectItemCaseSensitive(d, "sampler");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(d, "steps");
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(d, "guidance");
    if (cJSON_IsString(sa) && diffuse_sampler_parse(sa->valuestring) >= 0 && cJSON_IsNumber(st) &&
        st->valueint >= 1 && st->valueint <= 1000 && cJSON_IsNumber(g) && g->valuedouble >= 0 &&
        g->valuedouble <= 100) {
        m->defaults_sampler = diffuse_sampler_parse(sa->valuestring);
        m->defaults_steps = st->valueint;
        m->defaults_guidance = (float)g->valuedouble;
    }
    /* diffusers' StableDiffusionXLPipeline defaults it to true; SD 1.x/2.x
     * pipelines have no such setting (no negative prompt encodes "") */
    const cJSON *fz =
        idx ? cJSON_GetObjectItemCaseSensitive(idx, "force_zeros_for_empty_prompt") : NULL;
    m->force_zeros = strcmp(m->family, "sdxl") == 0 && (cJSON_IsBool(fz) ? cJSON_IsTrue(fz) : true);
    cJSON_Delete(idx);
    return 0;
}

/* ------------------------------------------------------------------ tokenizer */

/* Where the CLIP vocabulary is: the model's tokenizer/ folder, the caller's
 * path, DIFFUSE_VOCAB, a copy beside the checkpoint, the installed copy. */
static int find_vocab(const diffuse_model *m, const char *dir, const char *given, char *out,
                      size_t size, char *err)
{
    const char *env = getenv("DIFFUSE_VOCAB");
    char beside[4096], cand[6][4096];
    snprintf(beside, sizeof beside, "%s", m->path);
    char *slash = strrchr(beside, '/');
    snprintf(slash ? slash + 1 : beside, sizeof beside - (size_t)(slash ? slash + 1 - beside : 0),
             "bpe_simple_vocab_16e6.txt.gz");
    int n = 0;
    if (dir)
        snprintf(cand[n++], 4096, "%s/tokenizer", dir);
    if (given)
        snprintf(cand[n++], 4096, "%s", given);
    if (env)
        snprintf(cand[n++], 4096, "%s", env);
    snprintf(cand[n++], 4096, "%s", beside);
    diffuse_data_path(cand[n++], 4096, "bpe_simple_vocab_16e6.txt.gz");
    snprintf(cand[n++], 4096, "/usr/local/share/diffuse/bpe_simple_vocab_16e6.txt.gz");
    for (int i = 0; i < n; i++)
        if (file_exists(cand[i])) {
            snprintf(out, size, "%s", cand[i]);
            return 0;
        }
    return diffuse_fail(err,
                        "%s: no CLIP vocabulary: single-file checkpoints carry none. "
                        "Run ./install.sh (it fetches bpe_simple_vocab_16e6.txt.gz), or put that "
                        "file beside the checkpoint, or set DIFFUSE_VOCAB to it",
                        m->path);
}

/* ------------------------------------------------------------------ load */

diffuse_load_params diffuse_load_params_default(void)
{
    return (diffuse_load_params){.prediction = DIFFUSE_PREDICTION_AUTO};
}

static int model_configure(diffuse_model *m, const char *cfgdir, const diffuse_load_params *p,
                           char *err)
{
    cJSON *ucfg = NULL, *vcfg = NULL, *tcfg = NULL, *t2cfg = NULL;
    int rc = load_part_config(cfgdir, "unet", &ucfg, err) ||
                     load_part_config(cfgdir, "vae", &vcfg, err) ||
                     load_part_config(cfgdir, "text_encoder", &tcfg, err) ||
                     load_part_config(cfgdir, "text_encoder_2", &t2cfg, err)
                 ? -1
                 : 0;
    if (rc == 0)
        rc = infer_unet(m, ucfg, err);
    if (rc == 0)
        rc = infer_vae(m, vcfg, err);
    const bool sdxl = rc == 0 && strcmp(m->family, "sdxl") == 0;
    if (rc == 0 && sdxl) /* the second encoder first: it tells a refiner apart */
        rc = infer_clip(m, t2cfg, "text2.", &m->clip2_cfg, err) || configure_sdxl(m, err);
    if (rc == 0)
        rc = infer_clip(m, tcfg, "text.", &m->clip_cfg, err);
    if (rc == 0 && sdxl && m->clip_cfg.hidden_layer != m->clip_cfg.layers - 1)
        rc = diffuse_fail(err, "internal: SDXL encoder 1 setup");
    if (rc == 0 && !sdxl && diffuse_weights_count(m->weights, "text2.") > 0)
        rc = diffuse_fail(err,
                          "%s: a second text encoder, but the UNet takes no pooled text "
                          "embedding: not a model this engine knows",
                          m->path);
    if (rc == 0 && sdxl && m->clip_cfg.width + m->clip2_cfg.width != m->unet_cfg.context_dim)
        rc = diffuse_fail(err,
                          "%s: text encoders of width %d and %d do not make the UNet's "
                          "context of %d",
                          m->path, m->clip_cfg.width, m->clip2_cfg.width, m->unet_cfg.context_dim);
    if (rc == 0) { /* m->family is set only when infer_unet succeeded */
        /* what diffusers' pipelines default to: the UNet's sample_size in
         * pixels (SDXL-Turbo's 64 -> 512, where its VAE config says 1024) */
        const int latent = json_int_at(ucfg, "sample_size", 0, 0);
        m->native_size = latent > 0 && latent <= 1024 ? latent << (m->vae_cfg.levels - 1) : 0;
        if (m->native_size <= 0)
            m->native_size = json_int_at(vcfg, "sample_size", 0, 0);
        if (m->native_size <= 0)
            m->native_size = sdxl ? 1024 : strcmp(m->family, "sd2") == 0 ? 768 : 512;
    }
    cJSON_Delete(ucfg);
    cJSON_Delete(vcfg);
    cJSON_Delete(tcfg);
    cJSON_Delete(t2cfg);
    if (rc)
        return -1;
    if (read_schedule(m, cfgdir, err) || read_defaults(m, cfgdir, err))
        return -1;
    if (!cfgdir && strcmp(m->family, "sd2") == 0)
        m->schedule.prediction = DIFFUSE_PREDICTION_V; /* SD 2.x 768 files are v-prediction */
    if (p->prediction != DIFFUSE_PREDICTION_AUTO)
        m->schedule.prediction = p->prediction;
    return 0;
}

/* The tokenizer's settings and the model's parts, once the vocabulary is read. */
static int model_parts(diffuse_model *m, const char *dir, const char *vocab, char *err)
{
    /* pad with <|endoftext|> (SD 1.x, SDXL's first encoder) or "!" = id 0
     * (the OpenCLIP encoders of SD 2.x and SDXL) unless the tokenizer folder
     * says otherwise */
    const int32_t eos = diffuse_tokenizer_eos(m->tokenizer);
    const bool sdxl = strcmp(m->family, "sdxl") == 0;
    m->clip_cfg.pad_id = strcmp(m->family, "sd2") == 0 ? 0 : eos;
    m->clip_cfg.eos_id = m->clip2_cfg.eos_id = eos;
    m->clip2_cfg.pad_id = 0;
    if (dir) {
        char tokdir[4096];
        snprintf(tokdir, sizeof tokdir, "%s/tokenizer", dir);
        if (read_pad_token(m, tokdir, &m->clip_cfg.pad_id, err))
            return -1;
        snprintf(tokdir, sizeof tokdir, "%s/tokenizer_2", dir);
        if (sdxl && read_pad_token(m, tokdir, &m->clip2_cfg.pad_id, err))
            return -1;
    }
    const int lc = m->vae_cfg.latent_channels, uin = m->unet_cfg.in_channels;
    if (uin != lc && uin != 2 * lc + 1)
        return diffuse_fail(err,
                            "%s: a UNet that takes %d input channels (%d latent channels, "
                            "or %d for an inpainting model, are what Diffuse runs; 8 is "
                            "InstructPix2Pix's)",
                            m->path, uin, lc, 2 * lc + 1);
    if (m->unet_cfg.out_channels != lc)
        return diffuse_fail(err, "%s: the UNet gives %d channels, the VAE takes %d", m->path,
                            m->unet_cfg.out_channels, lc);
    if (diffuse_clip_load(&m->clip_cfg, m->weights, &m->clip, err) ||
        (sdxl && diffuse_clip_load(&m->clip2_cfg, m->weights, &m->clip2, err)) ||
        diffuse_unet_load(&m->unet_cfg, m->weights, &m->unet, err) ||
        diffuse_vae_load(&m->vae_cfg, m->weights, &m->vae, err))
        return -1;
    /* an id past the embedding's rows would fail every run, as if the run were at fault */
    const int32_t top = diffuse_tokenizer_max_id(m->tokenizer);
    if (top >= m->clip_cfg.vocab_size || (sdxl && top >= m->clip2_cfg.vocab_size))
        return diffuse_fail(err,
                            "%s: the vocabulary %s gives token ids up to %d, but the text "
                            "encoder's token_embedding has %d rows: a vocabulary for another "
                            "model?",
                            m->path, vocab, (int)top,
                            top >= m->clip_cfg.vocab_size ? m->clip_cfg.vocab_size
                                                          : m->clip2_cfg.vocab_size);
    return 0;
}

/* DIFFUSE_ERR_IO when the vocabulary is missing or unreadable, else _FORMAT. */
static diffuse_status model_build(diffuse_model *m, const char *dir, const diffuse_load_params *p,
                                  char *err)
{
    char vocab[4096];
    if (find_vocab(m, dir, p->vocab_path, vocab, sizeof vocab, err))
        return DIFFUSE_ERR_IO;
    diffuse_status st = diffuse_tokenizer_load(vocab, &m->tokenizer, err);
    if (st != DIFFUSE_OK)
        return st;
    return model_parts(m, dir, vocab, err) ? DIFFUSE_ERR_FORMAT : DIFFUSE_OK;
}

/* The TAESD given, else one found beside the model (quietly none when what
 * is found does not load: the model works without it). */
static diffuse_status load_taesd(diffuse_model *m, const char *dir, const char *given, char *err)
{
    if (given)
        return diffuse_taesd_load(given, &m->taesd, err);
    char base[4096], cand[3][4096];
    snprintf(base, sizeof base, "%s", m->path);
    char *slash = strrchr(base, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(base, sizeof base, ".");
    int n = 0;
    if (dir)
        snprintf(cand[n++], sizeof cand[0], "%s/taesd", dir);
    snprintf(cand[n++], sizeof cand[0], "%s/taesd", base);
    snprintf(cand[n++], sizeof cand[0], "%s/taesd_decoder.safetensors", base);
    for (int i = 0; i < n && !m->taesd; i++)
        if (file_exists(cand[i]) && diffuse_taesd_load(cand[i], &m->taesd, NULL) == 0 &&
            diffuse_taesd_latent_channels(m->taesd) != m->vae_cfg.latent_channels) {
            diffuse_taesd_free(m->taesd); /* made for other latents */
            m->taesd = NULL;
        }
    return 0;
}

diffuse_status diffuse_model_open(const char *path, const diffuse_load_params *params,
                                  diffuse_model **out, char *err, size_t err_size)
{
    char e[DIFFUSE_ERROR_SIZE] = "";
    diffuse_load_params p = params ? *params : diffuse_load_params_default();
    diffuse_model *m = calloc(1, sizeof *m);
    struct stat st;
    *out = NULL;
    diffuse_status rc = m && (m->path = strdup(path))
                            ? DIFFUSE_OK
                            : (diffuse_fail(e, "out of memory"), DIFFUSE_ERR_MEMORY);
    if (rc == DIFFUSE_OK && stat(path, &st) != 0)
        rc = (diffuse_fail(e, "%s: %s", path, strerror(errno)), DIFFUSE_ERR_IO);
    const char *dir = rc == DIFFUSE_OK && S_ISDIR(st.st_mode) ? path : NULL;
    if (rc == DIFFUSE_OK)
        rc = diffuse_weights_open(path, &m->weights, e);
    if (rc == DIFFUSE_OK && model_configure(m, dir ? dir : p.config_dir, &p, e))
        rc = DIFFUSE_ERR_FORMAT;
    if (rc == DIFFUSE_OK)
        rc = model_build(m, dir, &p, e);
    if (rc == DIFFUSE_OK)
        rc = load_taesd(m, dir, p.taesd_path, e);
    if (rc == DIFFUSE_OK)
        m->threads = p.threads;
    if (rc != DIFFUSE_OK) {
        if (err && err_size) /* every message names the model */
            snprintf(err, err_size, "%s%s%s", strncmp(e, path, strlen(path)) ? path : "",
                     strncmp(e, path, strlen(path)) ? ": " : "", e);
        diffuse_model_free(m);
        return rc;
    }
    *out = m;
    return DIFFUSE_OK;
}

diffuse_model *diffuse_model_load(const char *path, const diffuse_load_params *params, char *err,
                                  size_t err_size)
{
    diffuse_model *m;
    diffuse_model_open(path, params, &m, err, err_size);
    return m;
}

void diffuse_model_free(diffuse_model *m)
{
    if (!m)
        return;
    diffuse_vae_free(m->vae);
    diffuse_taesd_free(m->taesd);
    free(m->preview_map);
    diffuse_unet_free(m->unet);
    diffuse_clip_free(m->clip);
    diffuse_clip_free(m->clip2);
    diffuse_tokenizer_free(m->tokenizer);
    diffuse_weights_free(m->weights);
    free(m->path);
    free(m);
}

/* The folder's own "_diffuse_defaults" first; else distilled models announce
 * themselves in their scheduler config: LCM models ship LCMScheduler, SD-Turbo
 * ships Euler a with trailing spacing; both run in a few steps without guidance. */
static void suggest_settings(const diffuse_model *m, diffuse_model_info *info)
{
    info->suggested_sampler = info->suggested_steps = -1;
    info->suggested_guidance = -1;
    if (m->defaults_sampler >= 0) {
        info->suggested_sampler = m->defaults_sampler;
        info->suggested_steps = m->defaults_steps;
        info->suggested_guidance = m->defaults_guidance;
    } else if (strcmp(m->scheduler_class, "LCMScheduler") == 0) {
        info->suggested_sampler = DIFFUSE_SAMPLER_LCM;
        info->suggested_steps = 4;
        info->suggested_guidance = 1.0f;
    } else if (strcmp(m->scheduler_class, "EulerAncestralDiscreteScheduler") == 0 &&
               m->schedule.spacing == DIFFUSE_SPACING_TRAILING) {
        info->suggested_sampler = DIFFUSE_SAMPLER_EULER_A;
        info->suggested_steps = 1;
        info->suggested_guidance = 0.0f;
    }
}

bool diffuse_model_inpaints(const diffuse_model *m)
{
    return m->unet_cfg.in_channels == 2 * m->vae_cfg.latent_channels + 1;
}

void diffuse_model_get_info(const diffuse_model *m, diffuse_model_info *info)
{
    static const char *dtypes[] = {"f32", "f16", "bf16", "i32", "other"};
    memset(info, 0, sizeof *info);
    info->family = m->family;
    info->layout = diffuse_weights_layout(m->weights);
    info->dtype = dtypes[diffuse_weights_dtype(m->weights)];
    info->prediction = m->schedule.prediction;
    info->latent_channels = m->vae_cfg.latent_channels;
    info->vae_scale = 1 << (m->vae_cfg.levels - 1);
    info->unet_levels = m->unet_cfg.levels;
    memcpy(info->unet_channels, m->unet_cfg.channels, sizeof info->unet_channels);
    info->context_dim = m->unet_cfg.context_dim;
    info->text_width = m->clip_cfg.width;
    info->text_layers = m->clip_cfg.layers;
    info->text_heads = m->clip_cfg.heads;
    info->vocab_size = m->clip_cfg.vocab_size;
    info->native_size = m->native_size;
    info->inpainting = diffuse_model_inpaints(m);
    suggest_settings(m, info);
    /* Turbo models are their family distilled: told apart by the trailing-
     * spacing Euler a scheduler they ship */
    const bool turbo = strcmp(m->scheduler_class, "EulerAncestralDiscreteScheduler") == 0 &&
                       m->schedule.spacing == DIFFUSE_SPACING_TRAILING;
    const bool sdxl = strcmp(m->family, "sdxl") == 0, sd2 = strcmp(m->family, "sd2") == 0;
    info->family_name = sdxl  ? (turbo ? "SDXL-Turbo" : "SDXL")
                        : sd2 ? (turbo ? "SD-Turbo" : "SD 2.x")
                              : "SD 1.x";
    if (m->clip2) {
        info->text2_width = m->clip2_cfg.width;
        info->text2_layers = m->clip2_cfg.layers;
        info->text2_heads = m->clip2_cfg.heads;
        info->pooled_dim = m->clip2_cfg.projection;
    }
    info->has_fast_decoder = diffuse_taesd_has(m->taesd, true);
    info->has_fast_encoder = diffuse_taesd_has(m->taesd, false);
    info->params_unet = diffuse_weights_count(m->weights, "unet.");
    info->params_vae = diffuse_weights_count(m->weights, "vae.");
    info->params_text =
        diffuse_weights_count(m->weights, "text.") + diffuse_weights_count(m->weights, "text2.");
}
