/* diffuse.h: the Diffuse Stable Diffusion engine, the one public header.
 *
 * Usage:
 *
 *     char err[DIFFUSE_ERROR_SIZE];
 *     diffuse_model *model = diffuse_model_load("v1-5.safetensors", NULL, err, sizeof err);
 *     if (!model) { fprintf(stderr, "%s\n", err); return 1; }
 *
 *     diffuse_request req = diffuse_request_default();
 *     req.prompt = "a red circle on a blue background";
 *     req.seed = 42;
 *     req.width = req.height = 512;
 *
 *     diffuse_image image;                        // one per req.count
 *     if (diffuse_generate(model, &req, &image, err, sizeof err) != DIFFUSE_OK)
 *         fprintf(stderr, "%s\n", err);
 *     // image.pixels: [height, width, 3] RGB floats in [0, 1], sRGB-encoded
 *     diffuse_image_free(&image);
 *     diffuse_model_free(model);
 *
 * The engine is C11 on CBLAS, libm and pthreads. It never prints, never exits and
 * never trusts a number read from a file: every fallible call returns a status or
 * NULL and writes a message into the caller's `err` buffer.
 */
#ifndef DIFFUSE_H
#define DIFFUSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DIFFUSE_ERROR_SIZE 512
#define DIFFUSE_MAX_TOKENS 77          /* one chunk: <start>, 75 prompt tokens, <end> */
#define DIFFUSE_MAX_PROMPT_CHUNKS 32   /* longer prompts are refused: 32 x 75 tokens */
#define DIFFUSE_MAX_PROMPT_BYTES 65536 /* bytes of one prompt, weights syntax included */
#define DIFFUSE_MAX_CLIP_SKIP 12       /* "Clip skip" takes 1 (none) .. 12 */
#define DIFFUSE_MAX_SIDE 4096          /* the largest width or height a request takes */
#define DIFFUSE_MAX_GUIDANCE 100       /* guidance (CFG scale) takes 0 .. 100 */

typedef enum {
    DIFFUSE_OK = 0,
    DIFFUSE_ERR_ARGUMENT,  /* a bad request or option; the message names it */
    DIFFUSE_ERR_IO,        /* a file could not be opened or read */
    DIFFUSE_ERR_FORMAT,    /* a file is malformed or not a model we know */
    DIFFUSE_ERR_MEMORY,    /* not enough memory, checked before starting */
    DIFFUSE_ERR_CANCELLED, /* the progress callback asked to stop */
    DIFFUSE_ERR_NONFINITE, /* a phase's numbers went NaN or infinite (broken weights or
                              settings): stopped, no image made; the message names the phase */
    DIFFUSE_ERR_INTERNAL,  /* a fault of the engine's own (work memory planned too small): a
                              bug to report; the message starts "internal:" */
} diffuse_status;

typedef enum {
    DIFFUSE_SAMPLER_EULER = 0,
    DIFFUSE_SAMPLER_EULER_A,
    DIFFUSE_SAMPLER_DDIM,
    DIFFUSE_SAMPLER_DPMPP_2M,
    DIFFUSE_SAMPLER_LCM,
    DIFFUSE_SAMPLER_PNDM,
    DIFFUSE_SAMPLER_COUNT
} diffuse_sampler;

/* Timestep spacing; DEFAULT takes the model's scheduler config, else the
 * sampler's own default as diffusers defines it. */
typedef enum {
    DIFFUSE_SPACING_DEFAULT = 0,
    DIFFUSE_SPACING_LEADING,
    DIFFUSE_SPACING_LINSPACE,
    DIFFUSE_SPACING_TRAILING,
} diffuse_spacing;

typedef enum {
    DIFFUSE_PREDICTION_AUTO = 0, /* inferred from the model */
    DIFFUSE_PREDICTION_EPSILON,
    DIFFUSE_PREDICTION_V,
} diffuse_prediction;

/* Sampler names as the CLI and the plug-in spell them ("euler", "euler_a",
 * "ddim", "dpmpp_2m", "lcm", "pndm"). Parse returns -1 for an unknown name. */
const char *diffuse_sampler_name(diffuse_sampler sampler);
int diffuse_sampler_parse(const char *name);
/* The names AUTOMATIC1111 shows and writes ("Euler", "Euler a", "DDIM",
 * "DPM++ 2M", "LCM", "PLMS"); from_label also takes the names above. */
const char *diffuse_sampler_label(diffuse_sampler sampler);
int diffuse_sampler_from_label(const char *label);
/* The name A1111's menus give the sampler with Karras sigmas ("Euler Karras",
 * "Euler a Karras", "DPM++ 2M Karras"); NULL for a sampler that takes none
 * (diffuse_request.karras is refused with it). */
const char *diffuse_sampler_karras_label(diffuse_sampler sampler);
const char *diffuse_spacing_name(diffuse_spacing spacing);
int diffuse_spacing_parse(const char *name);

/* Which generator turns a seed into noise: another tool's, so that its seeds
 * give its pictures here, or the engine's own. "philox" (the default) is
 * AUTOMATIC1111's "NV": the numbers of torch's CUDA generator, which A1111
 * uses by default ("GPU"), computed on the CPU; "torch-cpu" is torch.randn on
 * the CPU (diffusers and ComfyUI on CPU, A1111's "CPU"); "diffuse" is the
 * engine's own xoshiro256** (Diffuse before version 2 used it). Each image has
 * its own generator seeded with its seed: its first draw is the starting noise,
 * then one draw per ancestral step, as A1111 orders them. */
typedef enum {
    DIFFUSE_RNG_DIFFUSE = 0,
    DIFFUSE_RNG_PHILOX,
    DIFFUSE_RNG_TORCH_CPU,
    DIFFUSE_RNG_KINDS,
} diffuse_rng_kind;

/* "diffuse", "philox", "torch-cpu"; NULL for a value out of range. */
const char *diffuse_rng_kind_name(diffuse_rng_kind k);
/* The "RNG: " value of A1111's parameters text: "NV", "CPU"; "diffuse" for ours. */
const char *diffuse_rng_kind_a1111(diffuse_rng_kind k);
/* Our names and A1111's ("NV", "CPU", "GPU": torch's CUDA generator, which
 * philox reproduces): 0, or -1 for an unknown name. */
int diffuse_rng_kind_parse(const char *name, diffuse_rng_kind *out);

/* ---------------------------------------------------------------- loading */

typedef struct diffuse_load_params {
    /* CLIP vocabulary (vocab.json, merges.txt, or bpe_simple_vocab_16e6.txt.gz)
     * for checkpoints without a tokenizer/ folder; NULL = look beside the model,
     * then in DIFFUSE_VOCAB (environment), then the installed copy. */
    const char *vocab_path;
    /* A diffusers folder whose config.json files (unet/, vae/, text_encoder/) give the
     * hyper-parameters a single-file checkpoint cannot carry (head counts); NULL = infer. */
    const char *config_dir;
    diffuse_prediction prediction; /* override for files that do not say */
    int threads;                   /* 0 = all cores */
    /* The tiny autoencoder (TAESD) for fast decoding (diffuse_request.fast_decode)
     * and encoding: a diffusers AutoencoderTiny folder, or madebyollin's
     * taesd_decoder.safetensors / taesd_encoder.safetensors (either; the other
     * is found beside it). NULL = one beside the model, if any: a "taesd" folder
     * inside a model folder or beside a model file, or taesd_decoder.safetensors
     * beside it. A path given that cannot be loaded fails the model load. */
    const char *taesd_path;
} diffuse_load_params;

diffuse_load_params diffuse_load_params_default(void);

typedef struct diffuse_model diffuse_model;

/* path: a .safetensors single file (original layout) or a diffusers folder.
 * Returns NULL with a message in err on failure. The caller frees the model. */
diffuse_model *diffuse_model_load(const char *path, const diffuse_load_params *params, char *err,
                                  size_t err_size);
/* The same, with the kind of a failure: DIFFUSE_ERR_IO (a file or folder that
 * cannot be read, the vocabulary not found), DIFFUSE_ERR_FORMAT (malformed, or not a
 * model Diffuse runs), DIFFUSE_ERR_MEMORY. *out: the model, or NULL. */
diffuse_status diffuse_model_open(const char *path, const diffuse_load_params *params,
                                  diffuse_model **out, char *err, size_t err_size);
void diffuse_model_free(diffuse_model *model);

typedef struct diffuse_model_info {
    const char *family;      /* "sd1", "sd2", "sdxl" */
    const char *family_name; /* for people: "SD 1.x", "SD 2.x", "SD-Turbo", "SDXL", "SDXL-Turbo"
                                (Turbo when the folder's scheduler is trailing Euler a) */
    const char *layout;      /* "diffusers" or "ldm" */
    const char *dtype;       /* storage type of the UNet weights: "f32", "f16", "bf16" */
    diffuse_prediction prediction;
    int latent_channels;  /* 4 */
    int vae_scale;        /* pixels per latent cell, 8 */
    int unet_channels[8]; /* block_out_channels */
    int unet_levels;
    int context_dim; /* cross-attention width */
    int text_width, text_layers, text_heads, vocab_size;
    int text2_width, text2_layers, text2_heads; /* SDXL's second encoder; 0 otherwise */
    int pooled_dim;  /* its projection: the pooled text width (SDXL), else 0 */
    int native_size; /* the training resolution in pixels */
    int inpainting;  /* an inpainting UNet (9 input channels: latents, mask, masked
                        image): img2img on a selection feeds it the mask */
    /* Settings the model asks for: model_index.json's "_diffuse_defaults"
     * ({"sampler", "steps", "guidance"}), else what distilled models' scheduler
     * configs imply (LCMScheduler; SD-Turbo's trailing-spacing Euler a). -1 /
     * -1 / -1 when the folder says nothing (single files never do). */
    int suggested_sampler; /* a diffuse_sampler, or -1 */
    int has_fast_decoder;  /* a TAESD decoder is loaded (fast_decode works) */
    int has_fast_encoder;  /* ... and its encoder (fast_encode works) */
    int suggested_steps;
    float suggested_guidance;
    int64_t params_unet, params_vae, params_text; /* text: both encoders */
} diffuse_model_info;

void diffuse_model_get_info(const diffuse_model *model, diffuse_model_info *info);

/* ---------------------------------------------------------------- generating */

/* Called once per denoising step; return non-zero to cancel the run. A decode
 * in bands (decode_rows) calls it again with step == steps between its bands,
 * so that it can be cancelled too. */
typedef int (*diffuse_progress_fn)(void *user, int image, int count, int step, int steps);
/* Called after every preview_every-th step (and the last) with a picture of
 * the run so far: rgb [height, width, 3] in [0, 1]. With a TAESD decoder loaded
 * (diffuse_load_params.taesd_path, or one beside the model) it is the latents
 * through TAESD at the image's size (0.65 s at 512x512 on a 2-core AVX-512 Xeon, a seventh of
 * a UNet evaluation there); else the latents through a linear latent-to-RGB map fitted
 * once to the model's own VAE, at the latent size (1/8 of the image). Return
 * non-zero to cancel the run. */
typedef int (*diffuse_preview_fn)(void *user, int image, int step, int steps, const float *rgb,
                                  int width, int height);

/* SDXL's size conditioning, diffusers' original_size, crops_coords_top_left and
 * target_size (A1111's names too); 0 = the image's own size, no crop. Other
 * families have no such input and ignore it. */
#define DIFFUSE_MAX_SIZE_COND 16384 /* largest number each of them takes */
typedef struct diffuse_size_cond {
    int original_width, original_height;
    int crop_left, crop_top;
    int target_width, target_height;
} diffuse_size_cond;

/* A LoRA file and how strongly it applies (1: as trained, 0: not at all):
 * weight to the text encoders, unet_weight to the UNet (A1111's
 * <lora:NAME:TE:UNET>; usually the same). */
#define DIFFUSE_MAX_LORAS 16 /* LoRA files one request takes besides its tags */
typedef struct diffuse_lora {
    const char *path; /* .safetensors, kohya/A1111 or diffusers/PEFT names */
    float weight, unet_weight;
} diffuse_lora;

typedef enum {
    DIFFUSE_MASKED_ORIGINAL = 0,
    DIFFUSE_MASKED_LATENT_NOISE,
    DIFFUSE_MASKED_KINDS,
} diffuse_masked_content;

typedef struct diffuse_request {
    const char *prompt;
    /* NULL: none given. "" is an empty negative prompt, encoded. The two differ
     * for SDXL (force_zeros_for_empty_prompt): without a negative prompt the
     * unconditional branch is zeros, as diffusers does; SD 1.x/2.x encode "". */
    const char *negative_prompt;
    diffuse_size_cond size_cond;
    /* A1111's "Clip skip": 0 or 1 uses the text encoder's last layer, N > 1
     * the output N - 1 layers before it, through the final LayerNorm (up to
     * DIFFUSE_MAX_CLIP_SKIP). As in A1111 it changes SD 1.x models only: SD 2.x
     * already reads its penultimate layer, SDXL has its own. */
    int clip_skip;
    uint64_t seed;        /* image i uses seed + i */
    diffuse_rng_kind rng; /* the generator; diffuse_request_default: philox */
    int steps;
    float guidance; /* <= 1 skips the unconditional pass */
    diffuse_sampler sampler;
    int karras; /* Karras sigmas (euler, euler_a, dpmpp_2m) */
    diffuse_spacing spacing;
    int width, height; /* multiples of 8 */
    int count;         /* images to make */
    /* img2img: [height, width, 3] RGB in [0, 1]; NULL for txt2img. Borrowed. */
    const float *init_image;
    float strength; /* 0..1: how much of the schedule to run */
    /* TAESD instead of the VAE (the model's taesd_path): the final image in a
     * fraction of the time, with less detail; the init image (img2img) encoded
     * by its encoder, which gives latents without a posterior draw. */
    int fast_decode, fast_encode;
    /* The VAE decode in bands of this many image rows (a multiple of 8, fewer
     * than the height): for sizes whose whole decode does not fit in memory.
     * The same image (to float rounding) in a fraction of the memory, several
     * times slower: one pass over the bands per GroupNorm. 0: automatic, the
     * whole image when it fits in diffuse_memory_available(), else the
     * fastest banding that fits (told through `notice`). */
    int decode_rows;
    /* masked img2img: [height, width] in [0, 1], 1 = repaint; needs init_image. */
    const float *mask;
    /* What the repaint area starts from with a plain (4-channel) model, as
     * A1111's "Masked content": the image (original) or the start noise in
     * place of its latents there (latent noise), which lets a strength near 1
     * paint something new. Inpainting checkpoints read the mask themselves. */
    diffuse_masked_content masked_content;
    diffuse_progress_fn progress;
    void *progress_user;
    int preview_every; /* 0: no previews */
    diffuse_preview_fn preview;
    void *preview_user;
    struct diffuse_stats *stats; /* NULL, or filled with where the time went */
    /* LoRAs for this request, besides the <lora:NAME:W> tags of the prompt
     * (found as NAME.safetensors in lora_dir; the tags are taken out of the
     * text the encoder reads). NULL lora_dir: $DIFFUSE_LORA_DIR, else
     * $XDG_DATA_HOME/diffuse/loras or ~/.local/share/diffuse/loras. */
    const diffuse_lora *loras;
    int lora_count;
    const char *lora_dir;
    /* What the user should know about a run that still goes ahead (a LoRA
     * that matches only some of the model, an unsupported prompt tag); NULL:
     * not told. Called on the thread that called diffuse_generate, before the
     * first image starts. */
    void (*notice)(void *user, const char *message);
    void *notice_user;
} diffuse_request;

/* Where a diffuse_generate call's time went (seconds, summed over its images)
 * and the memory it took; filled when req->stats is set, also on failure. */
typedef struct diffuse_stats {
    double text_s;         /* tokenizer and text encoder */
    double vae_encode_s;   /* init image to latents (img2img) */
    double unet_s;         /* every UNet pass */
    double vae_decode_s;   /* latents to pixels */
    int unet_passes;       /* UNet calls (with guidance one call runs a batch of 2) */
    double unet_evals;     /* UNet evaluations of one image: passes x batch */
    double unet_gflop;     /* dense-equivalent GFLOP of all passes: every convolution and
                              matrix product counted as plain multiply-adds, whatever
                              algorithm ran */
    size_t predicted_peak; /* bytes: the peak resident set the memory check predicted */
    size_t peak_rss;       /* bytes: the process's peak resident set when the call ended */
    double text_gflop;     /* the same count for the text encoders */
    double vae_gflop;      /* and for the VAE's encode and decode (TAESD's included) */
    int decode_rows;       /* the VAE decode's bands of image rows; 0: the whole image */
} diffuse_stats;

diffuse_request diffuse_request_default(void);

typedef struct diffuse_image {
    int width, height;
    uint64_t seed;
    float *pixels; /* [height, width, 3] RGB in [0, 1]; owned, free with diffuse_image_free */
} diffuse_image;

/* Fills images[0 .. req->count-1]. On failure nothing is left allocated, and
 * the status says why: DIFFUSE_ERR_ARGUMENT (a bad request, the message names
 * the field; a LoRA made for another model), _IO (a LoRA file that cannot be
 * read), _FORMAT (a LoRA file that is none, or of a kind Diffuse does not
 * apply), _MEMORY (more than the machine has, checked before starting),
 * _CANCELLED, _NONFINITE. */
diffuse_status diffuse_generate(diffuse_model *model, const diffuse_request *req,
                                diffuse_image *images, char *err, size_t err_size);
void diffuse_image_free(diffuse_image *image);

/* Bytes a request adds to the process: its working memory and the weights of
 * its largest phase (text encoder, UNet or VAE; each phase's pages are let go
 * when it ends, so only one is resident at a time). The memory check before a
 * run compares this with what the system has available; the process's peak is
 * predicted as its resident set at the start plus this. */
size_t diffuse_request_memory(const diffuse_model *model, const diffuse_request *req);
/* What a request costs before it runs: the dense-equivalent GFLOP of each
 * phase for all its images, counted by running the engine's own code dry
 * (the layers push their buffers and count their arithmetic, and compute
 * nothing: the counts a real run's diffuse_stats gets), and the seconds that
 * should take here: each phase's GFLOP over this machine's sgemm rate
 * (measured once per process, about 20 ms) times the share of it the phase
 * reaches (measured on the benchmarks, in generate.c). Previews and loading
 * are not counted. All 0 for a request diffuse_generate would refuse. */
typedef struct diffuse_cost {
    double text_gflop, unet_gflop, vae_gflop;
    double seconds;
} diffuse_cost;
diffuse_cost diffuse_request_cost(const diffuse_model *model, const diffuse_request *req);
/* diffuse_request_cost(model, req).seconds */
double diffuse_request_seconds(const diffuse_model *model, const diffuse_request *req);
/* Memory this machine can give a run, in bytes: /proc/meminfo's MemAvailable,
 * capped by $DIFFUSE_MEMORY_LIMIT_MB where set (for machines shared with other
 * work); 0 when unknown. diffuse_generate refuses a request whose
 * diffuse_request_memory exceeds it; front ends ask the same. */
size_t diffuse_memory_available(void);
/* For programs (the CLI, the GIMP plug-ins): call first thing in main().
 * The convolutions' OpenMP threads (oneDNN) spin long while they wait unless
 * OMP_WAIT_POLICY or GOMP_SPINCOUNT says otherwise, and the runtime reads
 * those only as the program loads; on a busy machine long spinning makes a
 * run several times slower. When neither is set, this sets GOMP_SPINCOUNT to
 * a short spin (conv_dnnl.c has the measurements) and runs the program again
 * in place (execv of /proc/self/exe with the same arguments: the process, its
 * open files and its other variables stay). Returns when nothing needed
 * doing, or the exec failed (then the run goes on as loaded). */
void diffuse_process_init(char **argv);
/* Where a front end finds the default model when the user names none:
 * $DIFFUSE_DEFAULT_MODEL where set (used whether or not it exists: loading
 * names it), else the first of `beside` that exists (the copies the calling
 * program was installed with, NULL-terminated; may be NULL), else the user's
 * $XDG_DATA_HOME/diffuse/models/default (~/.local/share/... without it).
 * Writes the path found; when there is none, DIFFUSE_ERR_IO and a message
 * naming where it looked. */
diffuse_status diffuse_default_model_path(const char *const *beside, char *path, size_t size,
                                          char *err, size_t err_size);
/* The folder <lora:NAME> tags are looked up in when a request names none:
 * $DIFFUSE_LORA_DIR, else $XDG_DATA_HOME/diffuse/loras (~/.local/share/...). */
void diffuse_default_lora_dir(char *path, size_t size);
/* This process's resident set now, and its peak so far, in bytes (0 when unknown). */
size_t diffuse_rss_now(void);
size_t diffuse_rss_peak(void);

/* ---------------------------------------------------------------- parameters text */

/* One image's settings as Stable Diffusion tools store them in a PNG's
 * "parameters" text (AUTOMATIC1111's format: the prompt, "Negative prompt: ..."
 * and a last line of "Key: value" pairs). The one home of that format: the CLI
 * and the plug-in write it, `diffuse generate --from` reads it back. */
typedef struct diffuse_parameters {
    const char *prompt;
    const char *negative_prompt; /* NULL: none (an empty one reads back as none) */
    int steps;                   /* 0: not given */
    int sampler;                 /* diffuse_sampler; -1: not given */
    int karras;                  /* 1 / 0; -1: not given */
    float guidance;              /* < 0: not given */
    int has_seed;
    uint64_t seed;
    int width, height;           /* 0: not given */
    const char *model;           /* NULL: not given */
    float strength;              /* "Denoising strength"; 0: none (txt2img) */
    int clip_skip;               /* 0: not given; written when > 1 */
    int rng;                     /* the generator ("RNG"); -1: not given */
    diffuse_size_cond size_cond; /* SDXL's; zeros: the image's own size */
    /* read: the pairs Diffuse does not use (other tools' keys, or values it
     * has no setting for, such as a sampler it lacks), "Key: value, ...", as
     * written; NULL when none. Ignored when writing. */
    const char *extra;
    /* LoRA files given besides the prompt's tags, "PATH:WEIGHT, ..." (key
     * "LoRA"); NULL: none */
    const char *loras;
    int masked_content; /* "Masked content" (A1111's words: "original", "latent
                           noise"); -1: not given; written only for latent noise */
    /* "Inpaint area", A1111's words: 1 "Only masked" (the selection's bounds
     * grown by "Masked area padding" pixels, generated at the model's size),
     * 0 "Whole picture"; -1: not given. Written only for Only masked, with
     * its padding (read: -1 when not given). */
    int inpaint_area;
    int padding;
} diffuse_parameters;

/* The text for p (steps, sampler, guidance, seed and size always; the rest
 * where given). Returns a malloc'd string, NULL when out of memory. */
char *diffuse_parameters_text(const diffuse_parameters *p);
/* Reads a parameters text into *p (strings owned by p: free with
 * diffuse_parameters_free). Text it cannot use is kept in p->extra, never an
 * error; fails only without memory. */
diffuse_status diffuse_parameters_parse(const char *text, diffuse_parameters *p, char *err,
                                        size_t err_size);
void diffuse_parameters_free(diffuse_parameters *p);

/* ---------------------------------------------------------------- tools */

/* Token ids of `text` padded to 77 with the model's pad id (49407 for CLIP).
 * vocab_path: a tokenizer folder, vocab.json, merges.txt or the .gz merges list. */
diffuse_status diffuse_tokenize(const char *vocab_path, const char *text,
                                int32_t ids[DIFFUSE_MAX_TOKENS], char *err, size_t err_size);

/* Reproduces a reference directory (see DESIGN.md). report() receives one line
 * per case, without newline. passed/failed receive the counts. */
diffuse_status diffuse_refcheck(const char *dir, void (*report)(void *user, const char *line),
                                void *user, int *passed, int *failed, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
#endif
