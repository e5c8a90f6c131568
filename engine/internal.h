/* internal.h: declarations shared by the engine's modules; never installed.
 *
 * Conventions: fallible functions return 0 on success and -1 on failure, after
 * writing a message into `err` (a buffer of DIFFUSE_ERROR_SIZE bytes). Activations
 * are float32, NCHW for images, [N, T, C] for token sequences; shapes are written
 * in comments beside each buffer.
 */
#ifndef DIFFUSE_INTERNAL_H
#define DIFFUSE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diffuse.h"

#define DIFFUSE_MAX_DIMS 8

/* ------------------------------------------------------------------ errors */

/* Formats a message into err (may be NULL) and returns -1. */
int diffuse_fail(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* paths.c: whether a file or folder is there; `what` in the user's data
 * folder ($XDG_DATA_HOME/diffuse, else ~/.local/share/diffuse). */
bool diffuse_path_exists(const char *path);
void diffuse_data_path(char *out, size_t size, const char *what);

/* ------------------------------------------------------------------ random */

/* rng.c. The engine's own generator: xoshiro256** seeded through splitmix64;
 * normals by Box-Muller in double. */
typedef struct diffuse_rng {
    uint64_t s[4];
    double spare; /* second Box-Muller value */
    int has_spare;
} diffuse_rng;

void diffuse_rng_seed(diffuse_rng *rng, uint64_t seed);
uint64_t diffuse_rng_next(diffuse_rng *rng);
double diffuse_rng_uniform(diffuse_rng *rng); /* (0, 1) */
void diffuse_rng_normal(diffuse_rng *rng, float *out, size_t n);

/* torch's CPUGeneratorImpl: mt19937 and the cached second normal of its
 * double Box-Muller (kept across randn calls, as torch keeps it). */
typedef struct diffuse_torch_cpu {
    uint32_t state[624];
    int next; /* index of the next state word; 624: twist first */
    int has_cached_normal;
    double cached_normal;
} diffuse_torch_cpu;

/* A1111's rng_philox.Generator: the seed is the Philox key; offset counts the
 * randn calls made so far. */
typedef struct diffuse_philox {
    uint64_t seed;
    uint64_t offset;
} diffuse_philox;

typedef struct diffuse_generator {
    diffuse_rng_kind kind;
    union {
        diffuse_rng diffuse;
        diffuse_torch_cpu torch_cpu;
        diffuse_philox philox;
    } u; /* the member `kind` names */
} diffuse_generator;

/* Seeds g as `kind` (an unknown kind seeds the diffuse generator). */
void diffuse_generator_seed(diffuse_generator *g, diffuse_rng_kind kind, uint64_t seed);
/* One randn call of n values: torch.randn(n, generator=g) for torch-cpu,
 * Generator.randn((n,)) for philox; successive calls continue the stream. */
void diffuse_generator_normal(diffuse_generator *g, float *out, size_t n);
/* Philox4x32-10 of one counter under one key (Random123's word order). */
void diffuse_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Where the pipeline's Gaussian draws come from: a seeded generator for real
 * runs, recorded tensors when the reference checker replays diffusers. `site`
 * says which draw it is: "vae" (posterior sample), "start" (initial or img2img
 * noise), "step" (ancestral / LCM step noise). */
typedef struct diffuse_noise {
    int (*draw)(void *self, float *out, size_t n, const char *site, char *err);
    void *self;
} diffuse_noise;

/* ------------------------------------------------------------------ safetensors */

typedef enum {
    DIFFUSE_DTYPE_F32 = 0,
    DIFFUSE_DTYPE_F16,
    DIFFUSE_DTYPE_BF16,
    DIFFUSE_DTYPE_I32,
    DIFFUSE_DTYPE_OTHER, /* I64, U8, BOOL, F64...: loaded, sized, never converted */
} diffuse_dtype;

typedef struct diffuse_st_tensor {
    char *name;
    diffuse_dtype dtype;
    char dtype_name[8]; /* as written in the file, e.g. "F16" */
    int ndim;
    int64_t shape[DIFFUSE_MAX_DIMS];
    int64_t numel;
    const uint8_t *data; /* inside the mapping */
    size_t nbytes;
} diffuse_st_tensor;

typedef struct diffuse_st_file {
    char *path;
    void *map; /* read-only mmap of the whole file */
    size_t map_size;
    diffuse_st_tensor *tensors; /* sorted by name */
    int count;
} diffuse_st_file;

/* Maps and validates a file: header length bound, JSON well-formed, every
 * tensor's offsets inside the data area, contiguous and non-overlapping, and
 * nbytes = product(shape) x dtype size with overflow checks. Fails as
 * DIFFUSE_ERR_IO (cannot be opened or mapped), _FORMAT (malformed) or _MEMORY. */
diffuse_status diffuse_st_open(const char *path, diffuse_st_file **out, char *err);
void diffuse_st_close(diffuse_st_file *file);
const diffuse_st_tensor *diffuse_st_find(const diffuse_st_file *file, const char *name);
/* Reads any float tensor as float32 into dst (numel floats). */
int diffuse_st_to_f32(const diffuse_st_tensor *t, float *dst, char *err);

float diffuse_f16_to_f32(uint16_t h);
float diffuse_bf16_to_f32(uint16_t h);

/* ------------------------------------------------------------------ weights */

/* The engine asks for every weight by one canonical name: the diffusers name
 * with a component prefix, "unet.", "vae." or "text." (text keeps the
 * transformers names, e.g. "text.text_model.encoder.layers.0.mlp.fc1.weight").
 * weights.c maps the original single-file layout onto these names by rule. */
typedef struct diffuse_weights diffuse_weights;

/* Opens a diffusers folder (unet/, vae/, text_encoder/) or a single file; fails
 * with diffuse_st_open's kinds (a folder without the parts: _FORMAT). */
diffuse_status diffuse_weights_open(const char *path, diffuse_weights **out, char *err);
void diffuse_weights_free(diffuse_weights *w);
/* A TAESD (diffuse_taesd_load's path forms) under "taesd.encoder.layers.N" and
 * "taesd.decoder.layers.N" (diffusers' indices, whatever the file's). */
diffuse_status diffuse_weights_open_taesd(const char *path, diffuse_weights **out, char *err);
bool diffuse_weights_has(const diffuse_weights *w, const char *name);
/* Shape of a weight, or -1 in ndim when missing. */
int diffuse_weights_shape(const diffuse_weights *w, const char *name,
                          int64_t shape[DIFFUSE_MAX_DIMS]);
/* float32 view of a weight whose shape must equal `shape` (ndim dims; trailing
 * 1-sized dims of the stored tensor are ignored, so a [C, C, 1, 1] conv loads as
 * a [C, C] linear). Mapped when stored as aligned F32, else converted once and
 * owned by `w`. Errors name the tensor and both shapes. */
const float *diffuse_weights_get(diffuse_weights *w, const char *name, int ndim,
                                 const int64_t *shape, char *err);
/* A weight matrix as the file stores it, for the big tensors (linear and conv
 * weights, embeddings): used in place when it is aligned float32, else widened
 * to float32 just before each use (diffuse_wmat_f32) into scratch the caller
 * releases right after, so an fp16 model never exists as float32 as a whole. */
/* A LoRA's change to one weight matrix W [out, in] (lora.c):
 * W += scale * up [out, rank] . down [rank, in], both read from the LoRA
 * file's mapping as stored. */
typedef struct diffuse_lora_delta {
    const void *down, *up;
    diffuse_dtype down_dtype, up_dtype;
    int rank, out;
    int64_t in;  /* columns of W: in_channels x k x k for a convolution */
    float scale; /* weight x alpha / rank */
    struct diffuse_lora_delta *next;
} diffuse_lora_delta;

typedef struct diffuse_wmat {
    const void *data;    /* inside the mapping; NULL: no such layer */
    diffuse_dtype dtype; /* F32 (aligned, used in place), F16, BF16, or
                            F32 unaligned (widened like the others) */
    bool in_place;
    size_t numel;
    diffuse_lora_delta *const *lora; /* the weight's LoRA deltas (a list, usually empty):
                                        added when the matrix is widened for use */
} diffuse_wmat;

/* The matrix view of a weight, shape checked as diffuse_weights_get does.
 * Records the largest widened size per component (text., unet., vae.) for
 * diffuse_weights_widen_max. */
int diffuse_weights_mat(diffuse_weights *w, const char *name, int ndim, const int64_t *shape,
                        diffuse_wmat *out, char *err);
int diffuse_weights_matf(diffuse_weights *w, diffuse_wmat *out, char *err, const int64_t *dims,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The same for a table read a row at a time (embeddings): never widened whole,
 * so it does not count towards diffuse_weights_widen_max. */
int diffuse_weights_table(diffuse_weights *w, const char *name, int ndim, const int64_t *shape,
                          diffuse_wmat *out, char *err);
/* Floats of the largest matrix under prefix that diffuse_wmat_f32 widens. */
size_t diffuse_weights_widen_max(const diffuse_weights *w, const char *prefix);
/* Bytes of the file mapping the weights under prefix keep resident through
 * their phase (streamed matrices, widened and let go one at a time, count as
 * the largest of them), and dropping those pages from this process once a
 * phase is over (they stay in the page cache; a later use faults them back
 * in). */
size_t diffuse_weights_bytes(const diffuse_weights *w, const char *prefix);
void diffuse_weights_release(const diffuse_weights *w, const char *prefix);
/* LoRA targets (lora.c): every weight handed out as a matrix, with its rows
 * (out) and numel; a delta pushed on a matrix's list (-1: no such matrix);
 * every list emptied. The original checkpoint's name of a canonical UNet
 * weight (`per` = layers per block + 1), and the reverse. */
void diffuse_weights_each_matrix(const diffuse_weights *w,
                                 void (*fn)(void *user, const char *name, int64_t rows,
                                            int64_t numel),
                                 void *user);
int diffuse_weights_lora_push(diffuse_weights *w, const char *name, diffuse_lora_delta *d);
void diffuse_weights_lora_clear(diffuse_weights *w);
bool diffuse_weights_ldm_unet_name(const diffuse_weights *w, const char *canonical, int per,
                                   char *out, size_t size);
bool diffuse_weights_unet_from_ldm(const char *ldm, int per, char *out, size_t size);
/* Drops the whole pages inside [data, data + bytes) of a mapping from this
 * process (madvise DONTNEED; the page cache keeps them). */
void diffuse_map_release(const void *data, size_t bytes);

/* printf-style name, shape given as a -1-terminated list: get(w, err, dims, fmt...) */
const float *diffuse_weights_getf(diffuse_weights *w, char *err, const int64_t *dims,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* "diffusers" or "ldm"; the dtype of most UNet tensors. */
const char *diffuse_weights_layout(const diffuse_weights *w);
diffuse_dtype diffuse_weights_dtype(const diffuse_weights *w);
/* Parameter count of all weights under a prefix ("unet.", ...). */
int64_t diffuse_weights_count(const diffuse_weights *w, const char *prefix);
/* Highest i + 1 over the weights named <prefix><i>.* (0 when none): blocks
 * counted this way make a gap an error at load, not a smaller model. */
int diffuse_weights_max_index(const diffuse_weights *w, const char *prefix);
/* For each canonical name under prefix: callback (used by config inference). */
void diffuse_weights_each(const diffuse_weights *w, const char *prefix,
                          void (*fn)(void *user, const char *name, int ndim, const int64_t *shape),
                          void *user);

/* ------------------------------------------------------------------ threads */

/* The engine's worker pool (pool.c) for every kernel but sgemm: fn(ctx, b, e)
 * runs on contiguous parts of [0, n), at most one part per thread and none
 * smaller than `grain` items. Parts must be independent: results never depend
 * on the thread count. */
void diffuse_parallel_for(size_t n, size_t grain, void (*fn)(void *ctx, size_t begin, size_t end),
                          void *ctx);
/* Threads the engine uses; 0 = one per online CPU. OpenBLAS is kept to one
 * thread: the pool's threads call it in parallel (diffuse_gemm). */
void diffuse_pool_set_threads(int threads);
int diffuse_pool_threads(void);
int diffuse_cpu_count(void);

/* ------------------------------------------------------------------ kernels */

/* The vector path kernels take: the best this CPU runs (the build targets
 * plain x86-64; AVX2+FMA+F16C and AVX-512 code is compiled with target
 * attributes and chosen at run time), capped by diffuse_cpu_cap so the tests
 * can hold every path to the same results. */
enum { DIFFUSE_CPU_BASE = 0, DIFFUSE_CPU_AVX2, DIFFUSE_CPU_AVX512 };
int diffuse_cpu_path(void);
void diffuse_cpu_cap(int max_path);

/* dst[n] = float32 of src[n] stored as dtype (F16 and BF16 with F16C / AVX-512
 * where the CPU has them; F32 copied), on the pool's threads. */
void diffuse_op_widen(float *dst, const void *src, diffuse_dtype dtype, size_t n);
void diffuse_op_widen_ref(float *dst, const void *src, diffuse_dtype dtype, size_t n);

/* Weights [cout, cin, k, k] (a linear layer's [out, in]: k = 1) stored as
 * dtype, widened straight into a blocked layout (what oneDNN's convolutions
 * and matrix products run on), with no float32 copy in between: element
 * (o, i, y, x) goes to
 *   dst[(o / blk) * stride[0] + (i / iblk) * stride[1] + (i % iblk) * blk
 *       + y * stride[2] + x * stride[3] + o % blk]
 * for o < cout_pad (a multiple of blk; rows from cout up are zeros). blk is 1
 * (no inner block) to DIFFUSE_WBLOCK_MAX, iblk 1 (none) or more; k at most 3.
 * On the pool's threads. The _ref twin is the plain loop. */
#define DIFFUSE_WBLOCK_MAX 64
typedef struct diffuse_wblocked {
    int cout, cin, k, blk, iblk, cout_pad;
    size_t stride[4];
} diffuse_wblocked;
void diffuse_op_widen_blocked(float *dst, const void *src, diffuse_dtype dtype,
                              const diffuse_wblocked *l);
void diffuse_op_widen_blocked_ref(float *dst, const void *src, diffuse_dtype dtype,
                                  const diffuse_wblocked *l);

/* Each optimized kernel has a plain reference twin (suffix _ref) that the unit
 * tests compare it against. Kernels never allocate: callers pass scratch. */

/* C = alpha op(A) op(B) + beta C, row-major (cblas_sgemm's arguments), on
 * the pool's threads; the result is the same at every thread count. */
void diffuse_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc);

/* y[n, out] = x[n, in] . W[out, in]^T + b[out] (b may be NULL). */
void diffuse_op_linear(float *y, const float *x, const float *w, const float *b, int n, int in,
                       int out);
void diffuse_op_linear_ref(float *y, const float *x, const float *w, const float *b, int n, int in,
                           int out);

typedef struct diffuse_conv {
    int cin, h, w;       /* input  [N, cin, h, w] */
    int cout, k, stride; /* weight [cout, cin, k, k] */
    int pad_top, pad_left, pad_bottom, pad_right;
    /* The VAE's banded decode runs convolutions of many shapes, each of
     * which would make and keep a oneDNN primitive (and Winograd's 36 cin
     * cout floats of transformed weights): its sub-bands of one fixed height
     * run oneDNN's direct convolution (direct), the rest im2col (plain). */
    bool plain;  /* im2col and sgemm, never oneDNN */
    bool direct; /* never Winograd */
} diffuse_conv;

/* A 3x3 convolution padded by 1 on every side ("same" at stride 1). */
diffuse_conv diffuse_conv_3x3(int cin, int cout, int h, int w, int stride);
int diffuse_conv_out_h(const diffuse_conv *c);
int diffuse_conv_out_w(const diffuse_conv *c);
/* Dense-equivalent flops of a convolution over n images (2 per multiply-add). */
double diffuse_conv_flops(const diffuse_conv *c, int n);
/* Floats of scratch diffuse_op_conv2d needs for n images: im2col of one
 * image, or what oneDNN's path takes (conv_dnnl.c: the input, weights and
 * output in its blocked layouts), whichever is more. */
size_t diffuse_conv_scratch(const diffuse_conv *c, int n);
/* oneDNN's 3x3 convolutions (conv_dnnl.c), where they win: false (nothing
 * done) when not used for this shape. The backend (DIFFUSE_CONV=im2col|dnnl|
 * winograd in the environment sets it): */
enum {
    DIFFUSE_CONV_IM2COL,   /* the engine's im2col + sgemm only */
    DIFFUSE_CONV_DIRECT,   /* oneDNN's direct convolution wherever it can */
    DIFFUSE_CONV_AUTO,     /* the default: oneDNN from a size up, Winograd where it wins */
    DIFFUSE_CONV_WINOGRAD, /* oneDNN's Winograd wherever it can (stride 1), else direct */
};
bool diffuse_dnnl_available(void);
/* Whether a k x k convolution with this stride goes to oneDNN when it is big
 * enough (for sizing bands before the exact shape is known). */
bool diffuse_dnnl_preferred(int k, int stride);
size_t diffuse_dnnl_conv_scratch(const diffuse_conv *c, int n);
/* Whether this shape runs oneDNN's Winograd algorithm (oneDNN 2.x has it for
 * AVX-512 CPUs; 3.x dropped it on x86, and those builds run direct). */
bool diffuse_dnnl_winograd(const diffuse_conv *c, int n);
/* The oneDNN major version built in, 0 without it. */
int diffuse_dnnl_major(void);
/* Bytes the Winograd primitives made so far will keep once they first run
 * and have not yet (outside any scratch): what a memory plan adds after
 * sizing its convolutions. */
size_t diffuse_dnnl_pending_bytes(void);
bool diffuse_dnnl_conv(float *y, const float *x, const float *w, const float *b,
                       const diffuse_conv *c, int n, float *scratch);
/* The same convolution with its weights w [cout, cin, k, k] as stored in the
 * file (wtype), widened straight into the primitive's own layout
 * (diffuse_op_widen_blocked): no float32 copy, no weight reorder. Same
 * scratch, same result. Possible where diffuse_dnnl_conv_takes says so (the
 * direct convolutions; Winograd's weights take oneDNN's transform). */
bool diffuse_dnnl_conv_takes(const diffuse_conv *c, int n);
/* y [rows, out] = x [rows, in] . W^T + b (b NULL: none) with W [out, in] as
 * stored (wtype), through oneDNN's matrix product, W widened straight into
 * its layout. Scratch: diffuse_dnnl_linear_scratch floats; 0 there means
 * oneDNN does not take this shape (too small, DIFFUSE_LINEAR=blas, no oneDNN)
 * and diffuse_dnnl_linear returns false. */
size_t diffuse_dnnl_linear_scratch(int rows, int in, int out);
bool diffuse_dnnl_linear(float *y, const float *x, const void *w, diffuse_dtype wtype,
                         const float *b, int rows, int in, int out, float *scratch);
/* 0 the default, 1 OpenBLAS for every linear layer, 2 oneDNN for all it can
 * take (DIFFUSE_LINEAR unset, =blas, =dnnl). */
void diffuse_linear_set_backend(int backend);
bool diffuse_dnnl_conv_from(float *y, const float *x, const void *w, diffuse_dtype wtype,
                            const float *b, const diffuse_conv *c, int n, float *scratch);
void diffuse_conv_set_backend(int backend);
/* One whole-image convolution (n = 1) through oneDNN on activations the
 * caller keeps in oneDNN's blocked layout: channel blocks of
 * diffuse_dnnl_block() floats ([ceil(C/B), h, w, B], padding channels zero),
 * or NCHW where a flag does not say blocked; ReLU and a residual sum fused
 * into the output (y = relu(conv(x) + y)). No reorder of the input or output,
 * no copies. Scratch: diffuse_dnnl_fused_scratch floats (0: oneDNN cannot
 * run it, or DIFFUSE_CONV=im2col; then diffuse_dnnl_conv_fused returns false
 * and does nothing). Winograd by the same rule as diffuse_dnnl_conv. */
enum {
    DIFFUSE_DNNL_IN_BLOCKED = 1,
    DIFFUSE_DNNL_OUT_BLOCKED = 2,
    DIFFUSE_DNNL_RELU = 4,      /* y = relu(...) */
    DIFFUSE_DNNL_SUM = 8,       /* y = conv(x) + y (before the ReLU); y must not alias x */
    DIFFUSE_DNNL_PREPARED = 16, /* w is diffuse_dnnl_fused_prepare's, not [cout, cin, k, k] */
};
int diffuse_dnnl_block(void); /* 16 (AVX-512), 8 (AVX2), 0: no oneDNN */
size_t diffuse_dnnl_fused_scratch(const diffuse_conv *c, int flags);
bool diffuse_dnnl_fused_winograd(const diffuse_conv *c, int flags);
/* The weights in the primitive's own layout (for Winograd: transformed, a
 * scalar pass oneDNN makes on every call otherwise, about a tenth of TAESD's
 * decode), made once by the caller and kept: diffuse_dnnl_fused_weights
 * floats (0: no primitive), then calls with DIFFUSE_DNNL_PREPARED. */
size_t diffuse_dnnl_fused_weights(const diffuse_conv *c, int flags);
bool diffuse_dnnl_fused_prepare(float *wt, const float *w, const diffuse_conv *c, int flags);
bool diffuse_dnnl_conv_fused(float *y, const float *x, const float *w, const float *b,
                             const diffuse_conv *c, int flags, float *scratch);
/* y[N, cout, oh, ow] = conv(x[N, cin, h, w], W) + b. */
void diffuse_op_conv2d(float *y, const float *x, const float *w, const float *b,
                       const diffuse_conv *c, int n, float *scratch);
void diffuse_op_conv2d_ref(float *y, const float *x, const float *w, const float *b,
                           const diffuse_conv *c, int n);

/* GroupNorm over [N, C, HW] with `groups` groups, affine; optional fused SiLU. */
void diffuse_op_group_norm(float *y, const float *x, const float *gamma, const float *beta, int n,
                           int c, int hw, int groups, float eps, bool silu);
/* GroupNorm from statistics gathered in parts (the VAE's banded decode): each
 * call merges one part's values into acc [groups][3] = {count, mean, sum of
 * squared deviations} (start from zeros): per channel of [C, ...], len values
 * from x + ch * plane. */
void diffuse_op_group_moments(double *acc, const float *x, int c, int groups, size_t plane,
                              size_t len);
/* mean and 1/sqrt(var + eps) per group from acc, as diffuse_op_group_norm has them. */
void diffuse_op_group_norm_stats(float *mean, float *rstd, const double *acc, int groups,
                                 float eps);
/* y [C, hw] = GroupNorm(x) with those statistics (one image), optional SiLU. */
void diffuse_op_group_norm_with(float *y, const float *x, const float *gamma, const float *beta,
                                int c, int hw, int groups, const float *mean, const float *rstd,
                                bool silu);
/* LayerNorm over the last dim of [rows, dim]. */
void diffuse_op_layer_norm(float *y, const float *x, const float *gamma, const float *beta,
                           int rows, int dim, float eps);
void diffuse_op_silu(float *x, size_t n);
void diffuse_op_gelu(float *x, size_t n); /* exact, erf */
/* GEGLU of rows [hidden | gate] of 2 x half floats each: hidden * gelu(gate)
 * (diffuse_op_gelu's arithmetic), packed in place into the first rows x half
 * floats. */
void diffuse_op_geglu(float *f, int rows, int half);
void diffuse_op_quick_gelu(float *x, size_t n);          /* x * sigmoid(1.702 x) */
void diffuse_op_add(float *y, const float *x, size_t n); /* y += x */
/* y [cout, h, w] (NCHW) = conv 3x3, padding 1, of x in 16-channel blocks
 * [ceil(cin/16), h, w, 16] (diffuse_dnnl_conv_fused's layout on AVX-512,
 * padding channels zero), + b (or none): for few output channels (a
 * decoder's 64 -> 3), which oneDNN pads to 16. Scratch:
 * diffuse_op_conv3x3_few_scratch floats. false (nothing done) without
 * AVX-512. */
size_t diffuse_op_conv3x3_few_scratch(int cin, int cout);
bool diffuse_op_conv3x3_few(float *y, const float *x, const float *w, const float *b, int cin,
                            int cout, int h, int width, float *scratch);
/* [N, C, H, W] -> [N, C, 2H, 2W], nearest neighbour. */
void diffuse_op_upsample2x(float *y, const float *x, int n, int c, int h, int w);
/* [N, C, HW] <-> [N, HW, C] */
void diffuse_op_transpose(float *y, const float *x, int n, int rows, int cols);

/* Multi-head attention, softmax(Q K^T / sqrt(dh)) V (attention.c), as flash
 * attention: one head and one block of query rows at a time, keys a block at
 * a time, so the work space does not grow with the sequence length.
 * q: [tq, heads*dh], k, v: [tk, heads*dh] with row strides q_stride/kv_stride
 * (floats), out: [tq, heads*dh]. causal masks keys after the query position.
 * scratch: diffuse_attention_scratch(tq, tk, dh) floats. */
size_t diffuse_attention_scratch(int tq, int tk, int dh);
/* Dense-equivalent flops of Q K^T and P V over all heads (width = heads * dh). */
double diffuse_attention_flops(int tq, int tk, int width);
void diffuse_op_attention(float *out, const float *q, int q_stride, const float *k, const float *v,
                          int kv_stride, int tq, int tk, int heads, int dh, bool causal,
                          float *scratch);
void diffuse_op_attention_ref(float *out, const float *q, int q_stride, const float *k,
                              const float *v, int kv_stride, int tq, int tk, int heads, int dh,
                              bool causal);

/* ------------------------------------------------------------------ arena */

/* Work memory: one block sized up front, handed out by a bump pointer and
 * rewound with mark/reset. Running past the end is reported, never grown.
 *
 * A dry arena (diffuse_arena_dry) is how a pass's memory and flops are
 * planned: the forward code runs as it does for real, pushing the same
 * buffers and counting the same flops, but every layer skips its arithmetic
 * (each compute site tests a->dry). Its buffers are reserved address space
 * that faults on any touch, so a site that forgot the test fails at once.
 * The peak it reaches is the workspace of a real pass, by construction. */
typedef struct diffuse_arena {
    float *base;
    size_t cap, used, peak; /* in floats */
    bool overflow;
    bool dry;      /* plan only: nothing computed, nothing touched */
    double flops;  /* dense-equivalent flops of the layers run on it */
    double layers; /* how many layers (matrix products, convolutions, attentions) */
} diffuse_arena;
/* One layer run (or planned) on `a`: its flops. */
static inline void diffuse_arena_count(diffuse_arena *a, double flops)
{
    a->flops += flops;
    a->layers += 1;
}

/* Floats a push of n takes: blocks of 16 (64 bytes), so every buffer is aligned. */
static inline size_t diffuse_arena_size(size_t n)
{
    return (n + 15) & ~(size_t)15;
}
/* What a pass run on a dry arena reached: the floats it pushed at most
 * beyond its inputs, its flops and its layers. floats is DIFFUSE_PLAN_NONE
 * (and the rest 0) when no plan could be made: no address space, or a size
 * past what any machine has. */
typedef struct diffuse_plan {
    size_t floats;
    double flops, layers;
} diffuse_plan;
#define DIFFUSE_PLAN_NONE ((size_t)-1 / 8)
/* The plan of the pass just run dry on `a` (rc its result, inputs the
 * floats pushed before it); frees the arena. */
diffuse_plan diffuse_arena_plan(diffuse_arena *a, size_t inputs, int rc);
int diffuse_arena_init(diffuse_arena *a, size_t floats, char *err);
/* A dry arena of a large reserved, inaccessible range; -1 when no address
 * space could be reserved. Free with diffuse_arena_free. */
int diffuse_arena_dry(diffuse_arena *a);
void diffuse_arena_free(diffuse_arena *a);
float *diffuse_arena_push(diffuse_arena *a, size_t floats); /* NULL on overflow */
static inline size_t diffuse_arena_mark(const diffuse_arena *a)
{
    return a->used;
}
static inline void diffuse_arena_reset(diffuse_arena *a, size_t mark)
{
    a->used = mark;
}

/* ------------------------------------------------------------------ layers */

/* float32 view of m: the mapping itself, or m widened into scratch pushed on
 * `a` (NULL when the arena is exhausted); the caller resets the arena after.
 * A widened matrix's pages are let go as soon as it is read: a model's
 * weights are never resident all at once, only the page cache holds them
 * (an SDXL UNet is 5.1 GB in fp16), and the next pass faults them back in. */
const float *diffuse_wmat_f32(const diffuse_wmat *m, diffuse_arena *a);
/* Arena floats diffuse_wmat_f32 may push for a matrix of numel floats. */
size_t diffuse_wmat_scratch(size_t numel);

/* Weights of common layers, pointing into the weight store (never owned).
 * Matrices stay as stored; biases and norm parameters (a thousandth of the
 * weights) are float32, converted at load. */
typedef struct diffuse_linear {
    diffuse_wmat w;
    const float *b;
    int in, out;
} diffuse_linear; /* w [out, in] */
typedef struct diffuse_conv2d {
    diffuse_wmat w;
    const float *b;
    int cin, cout, k;
} diffuse_conv2d; /* w [cout, cin, k, k] */
typedef struct diffuse_norm {
    const float *gamma, *beta;
    int c;
} diffuse_norm;

/* ResNet block: norm1 -> SiLU -> conv1 (+ time embedding) -> norm2 -> SiLU ->
 * conv2, plus the input through a 1x1 shortcut when channels change. */
typedef struct diffuse_resnet {
    diffuse_norm norm1, norm2;
    diffuse_conv2d conv1, conv2, shortcut; /* shortcut.w NULL when cin == cout */
    diffuse_linear time_proj;              /* time_proj.w NULL without time embedding */
    int cin, cout, groups;
    float eps;
} diffuse_resnet;

/* `name` is the canonical prefix without ".weight"/".bias". */
int diffuse_linear_load(diffuse_linear *l, diffuse_weights *w, const char *name, int in, int out,
                        bool bias, char *err);
int diffuse_conv2d_load(diffuse_conv2d *c, diffuse_weights *w, const char *name, int cin, int cout,
                        int k, char *err);
int diffuse_norm_load(diffuse_norm *n, diffuse_weights *w, const char *name, int c, char *err);
/* temb_dim 0: no time embedding (VAE). */
int diffuse_resnet_load(diffuse_resnet *r, diffuse_weights *w, const char *name, int cin, int cout,
                        int temb_dim, int groups, float eps, char *err);

/* y[n, out...] = linear(x); rows = n tokens. -1 when the arena is exhausted
 * (the weight's widening scratch comes from it). */
int diffuse_linear_forward(const diffuse_linear *l, float *y, const float *x, int rows,
                           diffuse_arena *a);
/* "same" convolution with stride 1 (pad k/2), or stride 2 with symmetric pad 1
 * (UNet downsampler); returns -1 on arena overflow. */
int diffuse_conv2d_forward(const diffuse_conv2d *c, float *y, const float *x, int n, int h, int w,
                           int stride, diffuse_arena *a);
/* Any geometry: pads (top, left, bottom, right). */
int diffuse_conv2d_forward_pad(const diffuse_conv2d *c, float *y, const float *x, int n, int h,
                               int w, int stride, const int pad[4], diffuse_arena *a);
/* y [n, cout, h, w] = resnet(x [n, cin, h, w], temb_act [n, temb_dim] already
 * passed through SiLU, or NULL). y must not alias x. Scratch from the arena. */
int diffuse_resnet_forward(const diffuse_resnet *r, float *y, const float *x, const float *temb_act,
                           int n, int h, int w, diffuse_arena *a);

/* ------------------------------------------------------------------ model parts */

/* Optional observer of intermediate activations, for the reference checker
 * and debugging: called with names as golden.safetensors spells them after the
 * component prefix (e.g. "conv_in", "down_blocks.0", "mid_block", "encoder"). */
typedef struct diffuse_trace {
    void (*fn)(void *user, const char *name, const float *data, size_t n);
    void *user;
} diffuse_trace;

#define DIFFUSE_MAX_LEVELS 8

/* UNet2DConditionModel hyper-parameters (what config.json says, or inferred). */
typedef struct diffuse_unet_config {
    int in_channels, out_channels;       /* 4, 4 */
    int levels;                          /* len(block_out_channels) */
    int channels[DIFFUSE_MAX_LEVELS];    /* block_out_channels */
    bool cross_attn[DIFFUSE_MAX_LEVELS]; /* down level l has transformers (up level mirrors) */
    int layers_per_block;                /* 2 */
    int heads[DIFFUSE_MAX_LEVELS];       /* attention heads per level (mid uses the last) */
    int depth[DIFFUSE_MAX_LEVELS];       /* transformer_layers_per_block of down level l (the
                                            load counts each transformer's blocks itself) */
    int mid_depth;                       /* the mid block's: 1, SDXL 10 */
    int context_dim;                     /* cross_attention_dim */
    bool linear_proj;                    /* use_linear_projection (SD 2.x) */
    int groups;                          /* 32 */
    float eps;                           /* norm_eps 1e-5 */
    bool flip_sin_to_cos;                /* true */
    int freq_shift;                      /* 0 */
    /* SDXL's addition_embed_type "text_time": add_embedding takes the pooled
     * text embedding and a sinusoid of add_time_dim per size/crop id */
    int add_in;       /* add_embedding.linear_1 inputs; 0: none */
    int add_time_dim; /* addition_time_embed_dim: 256 */
} diffuse_unet_config;

#define DIFFUSE_TIME_IDS 6 /* original h, w, crop top, left, target h, w */

/* What the UNet is conditioned on besides the timestep. */
typedef struct diffuse_unet_cond {
    const float *context; /* [n, tokens, context_dim] */
    int tokens;
    const float *text_embeds; /* [n, add_in - 6 add_time_dim]: pooled text (SDXL), else NULL */
    const float *time_ids;    /* [n, DIFFUSE_TIME_IDS] (SDXL), else NULL */
} diffuse_unet_cond;

typedef struct diffuse_unet diffuse_unet;

int diffuse_unet_load(const diffuse_unet_config *cfg, diffuse_weights *w, diffuse_unet **out,
                      char *err);
void diffuse_unet_free(diffuse_unet *u);
/* Arena floats one forward needs for batch n, latent h x w, context tokens t,
 * and its dense-equivalent flops: the forward itself run on a dry arena, so
 * exactly what a real pass pushes and counts. (size_t)-1 / 8 floats and 0
 * flops when no plan can be made. */
size_t diffuse_unet_workspace(const diffuse_unet *u, int n, int h, int w, int tokens);
diffuse_plan diffuse_unet_plan(const diffuse_unet *u, int n, int h, int w, int tokens);
/* out [n, out_ch, h, w] = unet(x [n, in_ch, h, w], timestep[n], cond). trace
 * may be NULL. Allocates nothing: all scratch from `a`. */
int diffuse_unet_forward(const diffuse_unet *u, float *out, const float *x, const float *timestep,
                         const diffuse_unet_cond *cond, int n, int h, int w, diffuse_arena *a,
                         const diffuse_trace *trace, char *err);

/* CLIP / OpenCLIP text transformer (transformers' CLIPTextModel, and
 * CLIPTextModelWithProjection for SDXL's second encoder). */
typedef struct diffuse_clip_config {
    char prefix[8]; /* component of its weights: "text." or "text2." (SDXL) */
    int vocab_size; /* 49408 */
    int width;      /* hidden_size: 768 (SD 1.x), 1024 (SD 2.x) */
    int layers;     /* blocks to run: SD 2.x runs all but the last of OpenCLIP's 24 */
    int heads;
    int intermediate;  /* MLP width, 4 x width */
    int max_positions; /* 77 */
    bool gelu;         /* exact gelu (OpenCLIP) instead of quick_gelu (OpenAI CLIP) */
    float eps;         /* layer_norm_eps, 1e-5 */
    int32_t pad_id;    /* 49407 for SD 1.x, 0 for SD 2.x */
    int32_t eos_id;    /* 49407: the pooled output is taken at its first place */
    /* What the UNet reads (diffuse_clip_encode): the state after hidden_layer
     * blocks, through final_layer_norm (SD 1.x, 2.x: hidden_layer = layers) or
     * as it is (SDXL: the penultimate state, hidden_layer = layers - 1). */
    int hidden_layer;
    bool hidden_norm;
    int projection; /* text_projection outputs (the pooled width); 0: none */
} diffuse_clip_config;

typedef struct diffuse_clip diffuse_clip;

int diffuse_clip_load(const diffuse_clip_config *cfg, diffuse_weights *w, diffuse_clip **out,
                      char *err);
void diffuse_clip_free(diffuse_clip *c);
/* Arena floats encoding n prompts needs (any output), and its flops: the
 * encoder run dry on every block. */
size_t diffuse_clip_workspace(const diffuse_clip *c, int n);
diffuse_plan diffuse_clip_plan(const diffuse_clip *c, int n);
/* out [n, 77, width] = final_layer_norm(blocks(embed(ids [n, 77]))) over all
 * cfg.layers blocks, causal mask (transformers' last_hidden_state). */
int diffuse_clip_forward(const diffuse_clip *c, float *out, const int32_t *ids, int n,
                         diffuse_arena *a, char *err);
/* What the UNet is given: hidden [n, 77] rows of width floats, `stride` floats
 * apart (two encoders write side by side into one context), the state the
 * config names; pooled [n, projection] (NULL: not wanted) = text_projection of
 * the final-normed state after all blocks at the first end token. */
int diffuse_clip_encode(const diffuse_clip *c, const int32_t *ids, int n, float *hidden, int stride,
                        float *pooled, diffuse_arena *a, char *err);
/* The state after `layers` blocks ([n, 77, width]), normed or not: for tests
 * and the reference checker (hidden_states[layers] in transformers). */
int diffuse_clip_hidden(const diffuse_clip *c, const int32_t *ids, int n, int layers, bool norm,
                        float *out, diffuse_arena *a, char *err);

/* AutoencoderKL hyper-parameters. */
typedef struct diffuse_vae_config {
    int in_channels, out_channels; /* 3, 3 */
    int latent_channels;           /* 4 */
    int levels;                    /* len(block_out_channels) */
    int channels[DIFFUSE_MAX_LEVELS];
    int layers_per_block; /* 2 (decoder uses layers_per_block + 1) */
    int groups;           /* 32 */
    float scaling_factor; /* 0.18215 */
    bool mid_attention;   /* mid_block_add_attention */
} diffuse_vae_config;

typedef struct diffuse_vae diffuse_vae;

int diffuse_vae_load(const diffuse_vae_config *cfg, diffuse_weights *w, diffuse_vae **out,
                     char *err);
void diffuse_vae_free(diffuse_vae *v);
/* Arena floats an encode or decode of a height x width image needs (the
 * larger of the two), and one pass's dense-equivalent flops: the pass run on
 * a dry arena. 0 for a size the VAE refuses. */
size_t diffuse_vae_workspace(const diffuse_vae *v, int height, int width);
diffuse_plan diffuse_vae_plan(const diffuse_vae *v, bool encode, int height, int width);
/* moments [1, 2*latent, H/f, W/f] = quant_conv(encoder(image [1, 3, H, W] in [-1, 1])):
 * mean then log-variance. Trace names: "encoder.down_blocks.0", "encoder.mid_block",
 * "encoder", "quant_conv". */
int diffuse_vae_encode(const diffuse_vae *v, float *moments, const float *image, int height,
                       int width, diffuse_arena *a, const diffuse_trace *trace, char *err);
/* image [1, 3, H, W] (unclamped, about [-1, 1]) = decoder(post_quant_conv(latent
 * [1, latent, H/f, W/f])); the latent is already divided by scaling_factor.
 * Trace names: "post_quant_conv", "decoder.mid_block", "decoder.up_blocks.0", "decoder". */
int diffuse_vae_decode(const diffuse_vae *v, float *image, const float *latent, int height,
                       int width, diffuse_arena *a, const diffuse_trace *trace, char *err);

/* How a decode is split (vae.c, "exact decode in bands"): rows 0, the whole
 * image at once; else bands of `rows` image rows (a multiple of the VAE's
 * factor, fewer than the image's), run in one pass per GroupNorm, with up
 * level l's input kept whole where bit l of keep is set (fewer passes
 * recompute it; bit 0 is ignored: the mid block's output is always kept). */
typedef struct diffuse_vae_tiling {
    int rows;
    unsigned keep;
} diffuse_vae_tiling;
/* The decode with that tiling, run dry (workspace floats beyond the latent
 * and the image, flops, layers); DIFFUSE_PLAN_NONE for a tiling or size the
 * VAE refuses. */
diffuse_plan diffuse_vae_decode_plan(const diffuse_vae *v, int height, int width,
                                     diffuse_vae_tiling tiling);
/* The tilings a decode could take, with their plans, fewest flops first: bands
 * of `rows` (0: every power-of-2 multiple of the factor below the height),
 * keeping levels 1..k for every k. At most max; returns how many. */
#define DIFFUSE_VAE_TILINGS (DIFFUSE_MAX_LEVELS * 12)
int diffuse_vae_tilings(const diffuse_vae *v, int height, int width, int rows,
                        diffuse_vae_tiling *out, diffuse_plan *plans, int max);
/* diffuse_vae_decode in bands: the same image up to the order of the
 * GroupNorm statistics' sums. stop (or NULL) is asked before each band;
 * nonzero cancels: returns 1 ("cancelled"), the image half written. -1 on
 * an error. The trace has "post_quant_conv", "decoder.mid_block", "decoder". */
int diffuse_vae_decode_tiled(const diffuse_vae *v, float *image, const float *latent, int height,
                             int width, diffuse_vae_tiling tiling, diffuse_arena *a,
                             const diffuse_trace *trace, int (*stop)(void *), void *stop_user,
                             char *err);

/* The VAE's banded convolution, for any image-sized network (TAESD): y [cout,
 * oh, ow] = conv(x [cin, h, w] read through a nearest up-x upsample, up 1 or
 * 2), stride 1 or 2, symmetric pad k/2, += into y when acc; im2col one band of
 * output rows at a time. -1 when the arena is exhausted. */
int diffuse_conv_banded(const diffuse_conv2d *c, float *y, const float *x, int h, int w, int up,
                        int stride, bool acc, diffuse_arena *a);
/* What one diffuse_conv_banded pushes (floats) and counts: it, run dry. */
diffuse_plan diffuse_conv_banded_plan(const diffuse_conv2d *c, int h, int w, int up, int stride);

/* ------------------------------------------------------------------ TAESD */

/* The tiny autoencoder (madebyollin's TAESD; diffusers' AutoencoderTiny):
 * every conv 3x3 pad 1, ReLU blocks relu(c3(relu(c2(relu(c1 x)))) + x).
 * Encoder: image in [-1, 1] -> latents in the UNet's scale (no posterior);
 * decoder: latents -> image in [0, 1] (tanh(x/3)*3 first). */
typedef struct diffuse_taesd diffuse_taesd;

/* path: a diffusers AutoencoderTiny folder (config.json + weights) or its
 * weights file, or madebyollin's taesd_encoder.safetensors /
 * taesd_decoder.safetensors (either file, or a folder holding them: both
 * halves are found beside each other). A missing half is allowed (NULL
 * encoder or decoder: the call that needs it fails). */
diffuse_status diffuse_taesd_load(const char *path, diffuse_taesd **out, char *err);
void diffuse_taesd_free(diffuse_taesd *t);
bool diffuse_taesd_has(const diffuse_taesd *t, bool decoder);
int diffuse_taesd_latent_channels(const diffuse_taesd *t);
/* "diffusers" or "original". */
const char *diffuse_taesd_layout(const diffuse_taesd *t);
/* The canonical weights ("taesd.encoder.layers.N...", diffusers' indices). */
const diffuse_weights *diffuse_taesd_weights(const diffuse_taesd *t);
size_t diffuse_taesd_workspace(const diffuse_taesd *t, int height, int width);
/* The flops and layers one half counts on a height x width image (the path
 * it runs: blocked or banded); floats: that half's work memory. */
diffuse_plan diffuse_taesd_plan(const diffuse_taesd *t, bool decoder, int height, int width);
/* Bytes a first decode (or encode) of this size will keep beside the model:
 * its convolutions' weights in oneDNN's layouts, made once; 0 once made. */
size_t diffuse_taesd_pending_bytes(const diffuse_taesd *t, bool decoder, int height, int width);
/* latents [C, H/8, W/8] = encoder((image [3, H, W] + 1) / 2). Trace names:
 * "encoder.layers.N" (diffusers' N). */
int diffuse_taesd_encode(const diffuse_taesd *t, float *latents, const float *image, int height,
                         int width, diffuse_arena *a, const diffuse_trace *trace, char *err);
/* image [3, H, W] in [0, 1] (unclamped) = decoder(latents [C, H/8, W/8]).
 * Trace: "decode.clamped" (tanh(x/3)*3), "decoder.layers.N". */
int diffuse_taesd_decode(const diffuse_taesd *t, float *image, const float *latents, int height,
                         int width, diffuse_arena *a, const diffuse_trace *trace, char *err);

/* ------------------------------------------------------------------ tokenizer */

typedef struct diffuse_tokenizer diffuse_tokenizer;

/* path: a folder holding vocab.json + merges.txt, either of those files, or
 * the bpe_simple_vocab_16e6.txt.gz merges list. */
diffuse_status diffuse_tokenizer_load(const char *path, diffuse_tokenizer **out, char *err);
void diffuse_tokenizer_free(diffuse_tokenizer *tok);
/* <start> tokens... <end> then pad_id, truncated to 77 (the last kept id is
 * <end>). A pad_id other than <end> is "!" (id 0, the OpenCLIP tokenizers of
 * SD 2.x and SDXL): transformers treats it as an added token, so every "!" in
 * the text becomes id 0 too, as diffusers feeds those encoders. */
int diffuse_tokenizer_encode(const diffuse_tokenizer *tok, const char *text, int32_t pad_id,
                             int32_t ids[DIFFUSE_MAX_TOKENS], char *err);
/* Every id of text, without <start>/<end> and without truncation (same rules
 * as above); *ids is the caller's to free. */
int diffuse_tokenizer_ids(const diffuse_tokenizer *tok, const char *text, int32_t pad_id,
                          int32_t **ids, size_t *n, char *err);
/* The id of a vocabulary entry (e.g. ",</w>"), -1 when there is none. */
int32_t diffuse_tokenizer_id(const diffuse_tokenizer *tok, const char *token);
int32_t diffuse_tokenizer_bos(const diffuse_tokenizer *tok);    /* 49406 */
int32_t diffuse_tokenizer_eos(const diffuse_tokenizer *tok);    /* 49407 */
int32_t diffuse_tokenizer_max_id(const diffuse_tokenizer *tok); /* the largest id it gives: 49407 */

/* ------------------------------------------------------------------ prompt */

/* A piece of prompt text and its weight (prompt.c); DIFFUSE_PROMPT_BREAK with
 * text "BREAK" marks a chunk break. */
#define DIFFUSE_PROMPT_BREAK (-1.0)
typedef struct diffuse_prompt_part {
    char *text;
    double weight;
} diffuse_prompt_part;

/* A1111's parse_prompt_attention: *parts (>= 1, free with
 * diffuse_prompt_parts_free) in order, equal neighbours joined. */
int diffuse_prompt_parse(const char *text, diffuse_prompt_part **parts, int *n, char *err);
void diffuse_prompt_parts_free(diffuse_prompt_part *parts, int n);

/* A prompt as the text encoder reads it: count chunks of 77 ids. */
typedef struct diffuse_prompt_chunks {
    int count;      /* 1 .. DIFFUSE_MAX_PROMPT_CHUNKS */
    int32_t *ids;   /* [count, 77] <start> ... <end> pad */
    float *weights; /* [count, 77] per-token weight, 1 on start/end/pad */
    bool weighted;  /* some weight is not 1 */
} diffuse_prompt_chunks;

int diffuse_prompt_chunk(const diffuse_tokenizer *tok, const char *text, int32_t pad_id,
                         diffuse_prompt_chunks *out, char *err);
void diffuse_prompt_chunks_free(diffuse_prompt_chunks *c);
/* A1111's "Original" emphasis on one chunk's encoder output z [77, width]
 * (rows `stride` floats apart): z *= weights per token, then z *= mean(z
 * before) / mean(z after). */
void diffuse_prompt_emphasis(float *z, int stride, int width, const float *weights);

/* A1111's extra-network tags, <kind:args> (kind: letters, digits, '_'):
 * *stripped is text without them (what the text encoder reads), *tags the
 * tags in order; both malloc'd (diffuse_prompt_tags_free). */
typedef struct diffuse_prompt_tag {
    char *kind; /* "lora", "lyco", "hypernet", ... */
    char *args; /* "NAME:0.8" */
    char *text; /* the tag as written */
} diffuse_prompt_tag;
int diffuse_prompt_tags(const char *text, char **stripped, diffuse_prompt_tag **tags, int *n,
                        char *err);
void diffuse_prompt_tags_free(diffuse_prompt_tag *tags, int n);

/* ------------------------------------------------------------------ lora */

/* The LoRA files of one request applied to a model (lora.c): their factors
 * pushed onto the matrices they change, until closed. A file that matches no
 * module of the model, or does not fit one it names, fails; one that matches
 * only some says so through notice. */
typedef struct diffuse_lora_set diffuse_lora_set;
/* The kind of a failure: DIFFUSE_ERR_IO (a file cannot be read), _FORMAT (not a
 * LoRA, or of a kind Diffuse does not apply), _ARGUMENT (made for another
 * model), _MEMORY. */
diffuse_status diffuse_lora_set_open(diffuse_model *m, const diffuse_lora *loras, int n,
                                     void (*notice)(void *, const char *), void *user,
                                     diffuse_lora_set **out, char *err);
void diffuse_lora_set_close(diffuse_lora_set *s);
/* Arena floats diffuse_wmat_f32 may need on top of a phase's own for the
 * set's largest changed matrix, and the bytes of its factors. */
size_t diffuse_lora_set_scratch(const diffuse_lora_set *s);
size_t diffuse_lora_set_bytes(const diffuse_lora_set *s);
/* Arena floats a LoRA file's largest module needs when its matrix is widened
 * (the matrix and both factors), from the file alone. */
size_t diffuse_lora_file_scratch(const diffuse_st_file *f);
/* w [out, in] += scale * up . down for one delta; -1 when the arena is short. */
int diffuse_lora_add(const diffuse_lora_delta *d, float *w, diffuse_arena *a);

/* ------------------------------------------------------------------ sampler */

typedef enum { DIFFUSE_BETAS_SCALED_LINEAR = 0, DIFFUSE_BETAS_LINEAR } diffuse_beta_schedule;

/* scheduler_config.json, with diffusers' defaults where a key is absent. */
typedef struct diffuse_schedule_config {
    int num_train_timesteps;    /* 1000 */
    float beta_start, beta_end; /* 0.00085, 0.012 */
    diffuse_beta_schedule beta_schedule;
    int steps_offset;      /* 1 for SD */
    bool set_alpha_to_one; /* DDIM/PNDM final alpha */
    diffuse_prediction prediction;
    diffuse_spacing spacing;      /* DEFAULT = each sampler's diffusers default */
    int original_inference_steps; /* LCM, 50 */
    float timestep_scaling;       /* LCM, 10 */
} diffuse_schedule_config;

diffuse_schedule_config diffuse_schedule_config_default(void);

#define DIFFUSE_MAX_STEPS 1000

/* One sampler run: the schedule and the multistep history. Everything is sized
 * at init; step() never allocates. */
typedef struct diffuse_sampler_state diffuse_sampler_state;

/* latent_n: floats in one latent (C*H*W times batch). strength in (0, 1] trims
 * the schedule the way the img2img pipelines do (1 = txt2img). */
int diffuse_sampler_create(diffuse_sampler kind, bool karras, const diffuse_schedule_config *cfg,
                           int steps, float strength, size_t latent_n, diffuse_sampler_state **out,
                           char *err);
void diffuse_sampler_free(diffuse_sampler_state *s);
/* Number of model evaluations after trimming (PNDM: steps + 1 when untrimmed). */
int diffuse_sampler_count(const diffuse_sampler_state *s);
/* The timestep the UNet is given at evaluation i. */
float diffuse_sampler_timestep(const diffuse_sampler_state *s, int i);
/* Factor on unit Gaussian noise that starts txt2img (init_noise_sigma). */
float diffuse_sampler_init_sigma(const diffuse_sampler_state *s);
/* UNet input at evaluation i: x scaled as scale_model_input does. */
void diffuse_sampler_scale_input(const diffuse_sampler_state *s, int i, const float *x, float *out);
/* out = x0 noised to the level of evaluation i (scheduler.add_noise with
 * timesteps[i]); i == count means fully denoised (out = x0). */
void diffuse_sampler_add_noise(const diffuse_sampler_state *s, int i, const float *x0,
                               const float *noise, float *out);
/* Advances latents in place with the model output of evaluation i. Ancestral
 * and LCM steps take their Gaussian draws from `noise` (site "step"). */
int diffuse_sampler_step(diffuse_sampler_state *s, int i, const float *model_out, float *latents,
                         diffuse_noise *noise, char *err);

/* ------------------------------------------------------------------ conditioning */

/* What the model's family feeds the UNet (conditioning.c): the context width
 * (cross_attention_dim) and the pooled text width (SDXL; 0 otherwise). */
int diffuse_cond_context_dim(const diffuse_model *m);
int diffuse_cond_pooled_dim(const diffuse_model *m);
/* Arena floats one prompt's encoding takes; the text encoders' mapped bytes,
 * and letting their pages go once the prompts are encoded. */
size_t diffuse_cond_workspace(const diffuse_model *m);
size_t diffuse_cond_weight_bytes(const diffuse_model *m);
void diffuse_cond_release(const diffuse_model *m);
/* Whether the unconditional branch is zeros instead of an encoded prompt:
 * negative_prompt NULL (none given at all) with force_zeros_for_empty_prompt. */
bool diffuse_cond_zeros(const diffuse_model *m, const char *negative_prompt);
/* Context rows text takes: 77 per chunk of A1111's prompt language (NULL,
 * the zero conditioning: 77). Fails on a prompt that cannot be read. */
int diffuse_cond_tokens(const diffuse_model *m, const char *text, int *tokens, char *err);
/* Whether clip skip changes this model's context (SD 1.x's single encoder). */
bool diffuse_cond_clip_skips(const diffuse_model *m);
/* context [tokens, context_dim] (diffuse_cond_tokens) and pooled [pooled_dim]
 * (NULL when 0) for one text, with A1111's weights; text NULL gives the zero
 * conditioning. clip_skip: 0 or 1 none, N > 1 as A1111 (SD 1.x only). */
int diffuse_cond_encode(const diffuse_model *m, const char *text, int clip_skip, float *context,
                        float *pooled, diffuse_arena *a, char *err);
/* SDXL's add_time_ids for an image of width x height: original (h, w), crop
 * (top, left), target (h, w), zeros in s meaning the image's own size. */
void diffuse_cond_time_ids(const diffuse_size_cond *s, int width, int height,
                           float ids[DIFFUSE_TIME_IDS]);

/* ------------------------------------------------------------------ pipeline */

/* One image's run, as the public request and the reference checker both
 * describe it. Pixels are [height, width, 3] / [height, width] in [0, 1]. */
typedef struct diffuse_run {
    const char *prompt;
    const char *negative_prompt; /* NULL: none given (see diffuse_cond_zeros) */
    diffuse_size_cond size_cond; /* SDXL */
    int clip_skip;               /* 0 or 1: none (diffuse_request) */
    size_t lora_scratch;         /* arena floats the applied LoRAs add */
    size_t lora_bytes;           /* bytes of their factors, mapped */
    int steps;
    float guidance;
    diffuse_sampler sampler;
    bool karras;
    diffuse_schedule_config schedule; /* the model's, with request overrides */
    int width, height;
    const float *init_image; /* NULL: txt2img */
    float strength;
    const float *mask;                     /* NULL: no mask */
    diffuse_masked_content masked_content; /* plain models' repaint area: image or noise */
    bool fast_decode, fast_encode;         /* TAESD for the final image / the init image */
    diffuse_vae_tiling decode_tiling;      /* the VAE decode whole ({0}) or in bands */
    diffuse_progress_fn progress;
    void *progress_user;
    int preview_every; /* 0: none */
    diffuse_preview_fn preview;
    void *preview_user;
    int image_index, image_count; /* for progress */
    /* observer of the latents after each step, or NULL; it may overwrite them
     * (the reference checker restarts each step from the reference's state) */
    void (*on_step)(void *user, int step, float *latents, size_t n);
    void *on_step_user;
    diffuse_stats *stats; /* NULL, or times added up here */
    /* observer of what the UNet is conditioned on, or NULL: "context",
     * "text_embeds" and "time_ids" (SDXL), [nb, ...], negative first */
    const diffuse_trace *trace;
} diffuse_run;

/* Monotonic seconds. */
double diffuse_now(void);
/* Starts the process's peak resident set afresh from now (Linux clear_refs). */
void diffuse_rss_peak_reset(void);

/* The latent-to-RGB map for previews: fitted once per model by least
 * squares to the model's own VAE decoder, on the latents of a few small flat
 * and graded images (each latent cell against the mean colour of its pixels);
 * `a` must hold diffuse_preview_fit_workspace floats. */
#define DIFFUSE_PREVIEW_FIT_SIZE 64
size_t diffuse_preview_fit_workspace(const diffuse_model *m);
diffuse_status diffuse_preview_fit(diffuse_model *m, diffuse_arena *a, char *err);
/* rgb [h*w, 3] of latents [C, h, w] through the fitted map, clamped to [0, 1]. */
void diffuse_preview_rgb(const diffuse_model *m, const float *latents, int h, int w, float *rgb);

/* Runs the whole pipeline for one image into pixels_out [height, width, 3].
 * Returns DIFFUSE_OK, or an error status with a message in err. */
diffuse_status diffuse_pipeline_run(diffuse_model *m, const diffuse_run *run, diffuse_noise *noise,
                                    float *pixels_out, char *err);
/* Bytes a run adds to the process at its peak: its buffers, the arena and the
 * weights of the phase where the two together peak. */
size_t diffuse_pipeline_memory(const diffuse_model *m, const diffuse_run *run);
/* The run's flops and layers by phase (phase[DIFFUSE_PHASE_*]), counted by
 * running each phase's code dry. */
enum {
    DIFFUSE_PHASE_TEXT,
    DIFFUSE_PHASE_UNET,
    DIFFUSE_PHASE_VAE,
    DIFFUSE_PHASE_TAESD,
    DIFFUSE_PHASE_VAE_BANDS, /* a VAE decode in bands */
    DIFFUSE_PHASES
};
void diffuse_pipeline_cost(const diffuse_model *m, const diffuse_run *run,
                           diffuse_plan phase[DIFFUSE_PHASES]);

/* ------------------------------------------------------------------ model */

/* Whether the UNet is an inpainting one: 2C + 1 input channels (latents, the
 * mask, the masked image's latents). */
bool diffuse_model_inpaints(const diffuse_model *m);

struct cJSON;
/* Parses a JSON file (bounded to 16 MiB); NULL with a message on failure. */
struct cJSON *diffuse_json_load(const char *path, char *err);
/* Fields of a scheduler_config.json object over *s (absent keys keep theirs). */
void diffuse_schedule_from_json(diffuse_schedule_config *s, const struct cJSON *cfg);
/* true when the single-file text encoder is OpenCLIP (SD 2.x). */
bool diffuse_weights_openclip(const diffuse_weights *w);

struct diffuse_model {
    char *path;
    diffuse_weights *weights;
    diffuse_tokenizer *tokenizer;
    diffuse_clip_config clip_cfg;
    diffuse_clip_config clip2_cfg; /* SDXL's second encoder (OpenCLIP bigG) */
    diffuse_unet_config unet_cfg;
    diffuse_vae_config vae_cfg;
    diffuse_schedule_config schedule; /* from scheduler_config.json, or the family's */
    diffuse_clip *clip;
    diffuse_clip *clip2; /* NULL but for SDXL */
    diffuse_unet *unet;
    diffuse_vae *vae;
    diffuse_taesd *taesd; /* NULL: none given or found */
    /* previews: rgb = P^T [latent, 1] (P [latent+1, 3]), fitted to the VAE at
     * the first run that asks (diffuse_preview_fit) */
    float *preview_map;
    const char *family;                   /* "sd1", "sd2", "sdxl" */
    bool force_zeros;                     /* model_index.json force_zeros_for_empty_prompt
                                             (SDXL: true): no negative prompt at all means a
                                             zero unconditional context and pooled embedding */
    int native_size;                      /* pixels */
    char scheduler_class[64];             /* scheduler_config.json "_class_name", or "" */
    int defaults_sampler, defaults_steps; /* model_index.json "_diffuse_defaults", or -1 */
    float defaults_guidance;
    int threads;
};

#endif
