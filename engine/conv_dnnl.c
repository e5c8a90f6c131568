/* conv_dnnl.c: 3x3 convolutions through oneDNN (Debian's libdnnl), where it
 * beats the engine's own im2col + sgemm. Measured on this project's 2-core
 * machines (README, "Convolutions"): oneDNN's blocked direct convolution
 * (brgconv) runs the shapes Stable Diffusion has at 1.1-2.2x the im2col path,
 * reorders to and from its blocked layout included. The engine's tensors stay
 * NCHW: each call reorders the input, the weights and the output, all into
 * scratch from the caller's arena (nothing of oneDNN's own grows with the
 * image), and primitives are made once per shape and kept.
 *
 * Used for 3x3 convolutions of at least DNNL_MIN_MACS multiply-adds; smaller
 * ones (the tiny reference models) keep the im2col path. DIFFUSE_CONV=im2col
 * or =dnnl in the environment forces one path (tests, measurements). Results
 * are the same at every thread count (tests/test_ops.c). Builds without
 * libdnnl-dev keep the im2col path everywhere. Works with oneDNN 2.x
 * (Debian 12) and 3.x (Debian 13), whose C APIs differ in how descriptors
 * are made. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define DNNL_MIN_MACS (1u << 24)

/* -1 until read; DIFFUSE_CONV_* (internal.h) */
static int conv_mode = -1;

static int mode(void)
{
    if (conv_mode < 0) {
        const char *e = getenv("DIFFUSE_CONV");
        conv_mode = !e                           ? DIFFUSE_CONV_AUTO
                    : strcmp(e, "im2col") == 0   ? DIFFUSE_CONV_IM2COL
                    : strcmp(e, "dnnl") == 0     ? DIFFUSE_CONV_DIRECT
                    : strcmp(e, "winograd") == 0 ? DIFFUSE_CONV_WINOGRAD
                                                 : DIFFUSE_CONV_AUTO;
    }
    return conv_mode;
}

void diffuse_conv_set_backend(int backend)
{
    conv_mode = backend;
}

/* oneDNN runs its convolutions on OpenMP threads (Debian builds it so), and
 * libgomp's threads spin while they wait for the next parallel region (300,000
 * turns by default), which libgomp lets a program change only through
 * OMP_WAIT_POLICY or GOMP_SPINCOUNT as it loads. Spinning threads fight the
 * engine's own pool and anything else running. The bundled model's whole run
 * on the 2 cores here, idle / beside one busy process: default spinning
 * 1.27-1.34 s / 5.6-10.3 s; passive (no spinning) 1.43-1.50 s / 1.44-1.51 s;
 * 3,000 turns 1.34-1.39 s / 1.54-1.73 s; 10,000 turns 1.34-1.36 s / 1.94 s.
 * A model with larger convolutions waits rarely and runs the same either way.
 * So a program that has chosen neither is run again, in place, with
 * GOMP_SPINCOUNT at DIFFUSE_OMP_SPINCOUNT. */
#define DIFFUSE_OMP_SPINCOUNT "3000"
void diffuse_process_init(char **argv)
{
#ifdef DIFFUSE_DNNL
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT") || !argv || !argv[0] ||
        setenv("GOMP_SPINCOUNT", DIFFUSE_OMP_SPINCOUNT, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* could not: go on as loaded, leaving the variable for the next program */
#else
    (void)argv;
#endif
}

#ifndef DIFFUSE_DNNL

bool diffuse_dnnl_available(void)
{
    return false;
}
bool diffuse_dnnl_preferred(int k, int stride)
{
    return false;
}
bool diffuse_dnnl_winograd(const diffuse_conv *c, int n)
{
    return false;
}
int diffuse_dnnl_major(void)
{
    return 0;
}
size_t diffuse_dnnl_pending_bytes(void)
{
    return 0;
}
size_t diffuse_dnnl_conv_scratch(const diffuse_conv *c, int n)
{
    return 0;
}
bool diffuse_dnnl_conv(float *y, const float *x, const float *w, const float *b,
                       const diffuse_conv *c, int n, float *scratch)
{
    return false;
}
bool diffuse_dnnl_conv_takes(const diffuse_conv *c, int n)
{
    return false;
}
size_t diffuse_dnnl_linear_scratch(int rows, int in, int out)
{
    return 0;
}
bool diffuse_dnnl_linear(float *y, const float *x, const void *w, diffuse_dtype wtype,
                         const float *b, int rows, int in, int out, float *scratch)
{
    return false;
}
bool diffuse_dnnl_conv_from(float *y, const float *x, const void *w, diffuse_dtype wtype,
                            const float *b, const diffuse_conv *c, int n, float *scratch)
{
    return false;
}
int diffuse_dnnl_block(void)
{
    return 0;
}
size_t diffuse_dnnl_fused_scratch(const diffuse_conv *c, int flags)
{
    return 0;
}
bool diffuse_dnnl_fused_winograd(const diffuse_conv *c, int flags)
{
    return false;
}
size_t diffuse_dnnl_fused_weights(const diffuse_conv *c, int flags)
{
    return 0;
}
bool diffuse_dnnl_fused_prepare(float *wt, const float *w, const diffuse_conv *c, int flags)
{
    return false;
}
bool diffuse_dnnl_conv_fused(float *y, const float *x, const float *w, const float *b,
                             const diffuse_conv *c, int flags, float *scratch)
{
    return false;
}

#else

#include <dnnl.h>
#include <omp.h>

#if DNNL_VERSION_MAJOR >= 3
typedef dnnl_memory_desc_t md_t; /* a handle */
typedef const_dnnl_memory_desc_t cmd_t;
#define MD(m) (m)
static md_t md_new(int nd, const dnnl_dims_t d, dnnl_format_tag_t tag)
{
    md_t m = NULL;
    if (dnnl_memory_desc_create_with_tag(&m, nd, d, dnnl_f32, tag) != dnnl_success)
        return NULL;
    return m;
}
static void md_free(md_t m)
{
    dnnl_memory_desc_destroy(m);
}
#else
typedef dnnl_memory_desc_t md_t; /* a struct */
typedef const dnnl_memory_desc_t *cmd_t;
#define MD(m) (&(m))
static md_t md_new(int nd, const dnnl_dims_t d, dnnl_format_tag_t tag)
{
    md_t m;
    memset(&m, 0, sizeof m);
    dnnl_memory_desc_init_by_tag(&m, nd, d, dnnl_f32, tag);
    return m;
}
static void md_free(md_t m)
{
    (void)m;
}
#endif

typedef struct conv_key { /* ints only: no padding bytes for memcmp to trip on */
    int n, cin, h, w, cout, k, stride, pad[4];
    int winograd; /* 1: oneDNN's Winograd algorithm, 0: its direct one */
    int fused;    /* DIFFUSE_DNNL_* flags plus DNNL_FUSED (diffuse_dnnl_conv_fused); 0: NCHW */
} conv_key;

/* in conv_key.fused: a call of diffuse_dnnl_conv_fused, whose flags may be 0 */
#define DNNL_FUSED 0x100

typedef struct conv_prim {
    conv_key key;
    bool ok; /* false: oneDNN refused the shape; im2col it is */
    dnnl_primitive_t conv, rsrc, rwei, rdst;
    md_t src_plain, wei_plain, dst_plain, bias_md;
    float *zeros;                         /* [cout]: the bias of a convolution without one, so that
                                             one primitive (and one scratch size) serves both */
    cmd_t src_md, wei_md, dst_md, pad_md; /* the primitive's own (blocked) layouts */
    size_t src_b, wei_b, dst_b, pad_b;    /* bytes of each, 64-aligned in scratch */
    bool ran;                             /* executed at least once */
    diffuse_wblocked wlay;                /* the weights' layout, when the engine writes it
                                             itself (diffuse_dnnl_conv_from); wlay.blk 0: not */
    dnnl_primitive_desc_t pd;
} conv_prim;

#define MAX_PRIMS 512
static conv_prim prims[MAX_PRIMS];
static int nprims;
static pthread_mutex_t prim_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t exec_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t engine;
static dnnl_stream_t stream;

static size_t align64(size_t b)
{
    return (b + 63) & ~(size_t)63;
}

static bool reorder(dnnl_primitive_t *out, cmd_t from, cmd_t to)
{
    dnnl_primitive_desc_t pd;
    if (dnnl_reorder_primitive_desc_create(&pd, from, engine, to, engine, NULL) != dnnl_success)
        return false;
    bool ok = dnnl_primitive_create(out, pd) == dnnl_success;
    dnnl_primitive_desc_destroy(pd);
    return ok;
}

/* The blocked layout of diffuse_dnnl_conv_fused: channel blocks of 16 floats
 * on AVX-512 (what oneDNN's AVX-512 convolutions run on), of 8 on AVX2. */
static dnnl_format_tag_t block_tag(void)
{
    return diffuse_cpu_path() >= DIFFUSE_CPU_AVX512 ? dnnl_nChw16c : dnnl_nChw8c;
}

/* The fused flags as oneDNN post-ops: the sum (dst += conv) before the ReLU. */
static bool set_post_ops(dnnl_primitive_attr_t attr, int fused)
{
    if (!(fused & (DIFFUSE_DNNL_SUM | DIFFUSE_DNNL_RELU)))
        return true;
    dnnl_post_ops_t po;
    if (dnnl_post_ops_create(&po) != dnnl_success)
        return false;
#if DNNL_VERSION_MAJOR >= 3 /* 3.x: a zero point and data type (undef: the output's) */
    bool ok = !(fused & DIFFUSE_DNNL_SUM) ||
              dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef) == dnnl_success;
    ok = ok && (!(fused & DIFFUSE_DNNL_RELU) ||
                dnnl_post_ops_append_eltwise(po, dnnl_eltwise_relu, 0.0f, 0.0f) == dnnl_success);
#else
    bool ok = !(fused & DIFFUSE_DNNL_SUM) || dnnl_post_ops_append_sum(po, 1.0f) == dnnl_success;
    ok = ok &&
         (!(fused & DIFFUSE_DNNL_RELU) ||
          dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f) == dnnl_success);
#endif
    ok = ok && dnnl_primitive_attr_set_post_ops(attr, po) == dnnl_success;
    dnnl_post_ops_destroy(po);
    return ok;
}

#if DNNL_VERSION_MAJOR < 3
/* The implementation oneDNN 2.x lists first for cd, or with f4x4: its
 * Winograd F(4x4, 3x3) where it has it. oneDNN lists its F(2x2, 3x3) first
 * wherever that can run (equal top and bottom pads, so whole images), at 2.25
 * rather than 4 times fewer multiplies: 1.6-2x slower on TAESD's 64-channel
 * layers at 128x128 to 512x512 (README, "TAESD"). */
static dnnl_primitive_desc_t pick(const dnnl_convolution_desc_t *cd, dnnl_primitive_attr_t attr,
                                  bool f4x4)
{
    dnnl_primitive_desc_iterator_t it;
    dnnl_primitive_desc_t first = NULL;
    if (dnnl_primitive_desc_iterator_create(&it, cd, attr, engine, NULL) != dnnl_success)
        return NULL;
    do {
        dnnl_primitive_desc_t pd = dnnl_primitive_desc_iterator_fetch(it);
        const char *name = NULL;
        if (!pd)
            break;
        if (!first) {
            first = pd;
            if (!f4x4)
                break;
            continue;
        }
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success &&
            name && strstr(name, "wino_4x3")) {
            dnnl_primitive_desc_destroy(first);
            first = pd;
            break;
        }
        dnnl_primitive_desc_destroy(pd);
    } while (dnnl_primitive_desc_iterator_next(it) == dnnl_success);
    dnnl_primitive_desc_iterator_destroy(it);
    return first;
}
#endif

/* A blocked layout as oneDNN describes it (dnnl_blocking_desc_t). */
typedef struct blocking {
    int nb; /* inner blocks */
    const dnnl_dim_t *st, *blks, *idxs, *pdims;
} blocking;

/* md's blocked layout when it is one (format kind blocked, ndims dimensions,
 * no offset); oneDNN 3.x asks for each part, 2.x has them in the struct. */
static bool blocking_of(cmd_t md, int ndims, blocking *b)
{
    dnnl_dim_t off = 0;
#if DNNL_VERSION_MAJOR >= 3
    dnnl_format_kind_t fk = dnnl_format_kind_undef;
    dnnl_dims_t *qs, *qb, *qi, *qp;
    int nd = 0;
    if (dnnl_memory_desc_query(md, dnnl_query_format_kind, &fk) != dnnl_success ||
        fk != dnnl_blocked ||
        dnnl_memory_desc_query(md, dnnl_query_ndims_s32, &nd) != dnnl_success || nd != ndims ||
        dnnl_memory_desc_query(md, dnnl_query_inner_nblks_s32, &b->nb) != dnnl_success ||
        dnnl_memory_desc_query(md, dnnl_query_strides, &qs) != dnnl_success ||
        dnnl_memory_desc_query(md, dnnl_query_inner_blks, &qb) != dnnl_success ||
        dnnl_memory_desc_query(md, dnnl_query_inner_idxs, &qi) != dnnl_success ||
        dnnl_memory_desc_query(md, dnnl_query_padded_dims, &qp) != dnnl_success ||
        dnnl_memory_desc_query(md, dnnl_query_submemory_offset_s64, &off) != dnnl_success)
        return false;
    b->st = *qs, b->blks = *qb, b->idxs = *qi, b->pdims = *qp;
#else
    if (md->format_kind != dnnl_blocked || md->ndims != ndims)
        return false;
    b->nb = md->format_desc.blocking.inner_nblks;
    b->st = md->format_desc.blocking.strides;
    b->blks = md->format_desc.blocking.inner_blks;
    b->idxs = md->format_desc.blocking.inner_idxs;
    b->pdims = md->padded_dims;
    off = md->offset0;
#endif
    return off == 0;
}

/* p->wlay: the primitive's weights layout when diffuse_op_widen_blocked can
 * write it (blocked, with no inner block, one on the output channels of at
 * most DIFFUSE_WBLOCK_MAX, or one on the input channels outside that, the
 * channels padded up to their blocks): the layouts of oneDNN's direct
 * convolutions (Acdb16a to Acdb64a and ABcd16b16a on AVX-512, ABcd8b8a on
 * AVX2, plain).
 * Winograd's own format is not blocked: its weights keep oneDNN's reorder. */
static void weights_layout(conv_prim *p)
{
    const conv_key *k = &p->key;
    blocking b;
    if (!blocking_of(p->wei_md, 4, &b))
        return;
    const int nb = b.nb;
    const dnnl_dim_t *st = b.st, *blks = b.blks, *idxs = b.idxs, *pdims = b.pdims;
    dnnl_dim_t blk = 0, iblk = 1;
    if (nb == 0)
        blk = 1;
    else if (nb == 1 && idxs[0] == 0)
        blk = blks[0];
    else if (nb == 2 && idxs[0] == 1 && idxs[1] == 0) /* AVX2's ABcd8b8a */
        iblk = blks[0], blk = blks[1];
    /* input channels padded up to their block are zeros: conv_exec clears
     * the buffer whenever the channels are not a multiple of 16 */
    if (!blk || blk > DIFFUSE_WBLOCK_MAX || k->k > 3 || pdims[0] % blk || pdims[1] % iblk ||
        pdims[1] < k->cin || pdims[1] - k->cin >= iblk ||
        (pdims[1] != k->cin && k->cin % 16 == 0) || pdims[2] != k->k || pdims[3] != k->k)
        return;
    const dnnl_dim_t last = (pdims[0] / blk - 1) * st[0] + (pdims[1] / iblk - 1) * st[1] +
                            (k->k - 1) * (st[2] + st[3]) + (iblk - 1) * blk + blk -
                            1; /* the farthest float */
    if ((size_t)(last + 1) * sizeof(float) > p->wei_b)
        return;
    p->wlay = (diffuse_wblocked){.cout = k->cout,
                                 .cin = k->cin,
                                 .k = k->k,
                                 .blk = (int)blk,
                                 .iblk = (int)iblk,
                                 .cout_pad = (int)pdims[0],
                                 .stride = {st[0], st[1], st[2], st[3]}};
}

/* Makes the primitive and its reorders for one shape; p->ok says whether it
 * worked. Called with prim_lock held. */
static void prim_make(conv_prim *p, const conv_key *k)
{
    memset(p, 0, sizeof *p);
    p->key = *k;
    const int oh = (k->h + k->pad[0] + k->pad[2] - k->k) / k->stride + 1;
    const int ow = (k->w + k->pad[1] + k->pad[3] - k->k) / k->stride + 1;
    dnnl_dims_t sd = {k->n, k->cin, k->h, k->w}, wd = {k->cout, k->cin, k->k, k->k}, bd = {k->cout},
                dd = {k->n, k->cout, oh, ow};
    dnnl_dims_t st = {k->stride, k->stride}, pl = {k->pad[0], k->pad[1]},
                pr = {k->pad[2], k->pad[3]};
    /* a fused call runs on the caller's layouts: NCHW or blocked, as flagged */
    const dnnl_format_tag_t blk = block_tag();
    const dnnl_format_tag_t src_tag = !k->fused ? dnnl_format_tag_any
                                      : k->fused & DIFFUSE_DNNL_IN_BLOCKED ? blk
                                                                           : dnnl_nchw;
    const dnnl_format_tag_t dst_tag = !k->fused ? dnnl_format_tag_any
                                      : k->fused & DIFFUSE_DNNL_OUT_BLOCKED ? blk
                                                                            : dnnl_nchw;
    md_t src_any = md_new(4, sd, src_tag), wei_any = md_new(4, wd, dnnl_format_tag_any);
    md_t dst_any = md_new(4, dd, dst_tag);
    p->src_plain = md_new(4, sd, dnnl_nchw);
    p->wei_plain = md_new(4, wd, dnnl_oihw);
    p->dst_plain = md_new(4, dd, dnnl_nchw);
    p->bias_md = md_new(1, bd, dnnl_x);
    if (!(p->zeros = calloc((size_t)k->cout, sizeof(float))))
        goto done_noattr;
    const dnnl_alg_kind_t alg = k->winograd ? dnnl_convolution_winograd : dnnl_convolution_direct;
    dnnl_primitive_attr_t attr = NULL;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success ||
        dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) != dnnl_success ||
        !set_post_ops(attr, k->fused))
        goto done;
#if DNNL_VERSION_MAJOR >= 3
    if (dnnl_convolution_forward_primitive_desc_create(&p->pd, engine, dnnl_forward_inference, alg,
                                                       src_any, wei_any, p->bias_md, dst_any, st,
                                                       NULL, pl, pr, attr) != dnnl_success)
        goto done;
#else
    dnnl_convolution_desc_t cd;
    if (dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, alg, &src_any, &wei_any,
                                           &p->bias_md, &dst_any, st, pl, pr) != dnnl_success ||
        !(p->pd = pick(&cd, attr, k->fused && k->winograd)))
        goto done;
#endif
    p->src_md = dnnl_primitive_desc_query_md(p->pd, dnnl_query_src_md, 0);
    p->wei_md = dnnl_primitive_desc_query_md(p->pd, dnnl_query_weights_md, 0);
    p->dst_md = dnnl_primitive_desc_query_md(p->pd, dnnl_query_dst_md, 0);
    p->pad_md = dnnl_primitive_desc_query_md(p->pd, dnnl_query_scratchpad_md, 0);
    /* a fused call takes the caller's input and output as they are */
    p->src_b = k->fused ? 0 : align64(dnnl_memory_desc_get_size(p->src_md));
    p->wei_b = align64(dnnl_memory_desc_get_size(p->wei_md));
    p->dst_b = k->fused ? 0 : align64(dnnl_memory_desc_get_size(p->dst_md));
    p->pad_b = p->pad_md ? align64(dnnl_memory_desc_get_size(p->pad_md)) : 0;
    p->ok = dnnl_primitive_create(&p->conv, p->pd) == dnnl_success &&
            (k->fused || reorder(&p->rsrc, MD(p->src_plain), p->src_md)) &&
            reorder(&p->rwei, MD(p->wei_plain), p->wei_md) &&
            (k->fused || reorder(&p->rdst, p->dst_md, MD(p->dst_plain)));
    if (p->ok)
        weights_layout(p);
done:
    if (attr)
        dnnl_primitive_attr_destroy(attr);
done_noattr:
    md_free(src_any);
    md_free(wei_any);
    md_free(dst_any);
}

/* The primitive with this key, made when it is not there yet; NULL when the
 * table is full. Called with prim_lock held. */
static conv_prim *prim_find(const conv_key *k)
{
    for (int i = 0; i < nprims; i++)
        if (memcmp(&prims[i].key, k, sizeof *k) == 0)
            return &prims[i];
    if (nprims == MAX_PRIMS)
        return NULL;
    prim_make(&prims[nprims], k);
    return &prims[nprims++];
}

static bool wanted(const diffuse_conv *c, int n)
{
    const int m = mode();
    if (m == DIFFUSE_CONV_IM2COL || c->plain || c->k != 3 || (c->stride != 1 && c->stride != 2) ||
        diffuse_cpu_path() < DIFFUSE_CPU_AVX2)
        return false;
    const double macs =
        (double)n * c->cout * c->cin * 9 * diffuse_conv_out_h(c) * diffuse_conv_out_w(c);
    return m != DIFFUSE_CONV_AUTO || macs >= DNNL_MIN_MACS;
}

/* Whether this shape runs oneDNN's Winograd (F(4x4, 3x3): 4x fewer
 * multiplies, more rounding, an input and output transform per 4x4 tile and
 * a weight transform per call) rather than its direct convolution. Measured
 * on the shapes of SD 1.x, SDXL, their VAE and TAESD (README,
 * "Convolutions"): it wins from WINO_MIN_PIXELS output pixels over the batch
 * up (1.2-1.9x), loses below (0.1-0.8x at 32x32 and under, where the weight
 * transform and too few tiles dominate) and on layers with few channels. */
#define WINO_MIN_PIXELS 8192
#define WINO_MIN_CHANNELS 32

static bool winograd(const diffuse_conv *c, int n)
{
    const int m = mode();
    if (c->stride != 1 || m == DIFFUSE_CONV_DIRECT || c->direct)
        return false;
    if (m == DIFFUSE_CONV_WINOGRAD)
        return true;
    return c->cin >= WINO_MIN_CHANNELS && c->cout >= WINO_MIN_CHANNELS &&
           (double)n * diffuse_conv_out_h(c) * diffuse_conv_out_w(c) >= WINO_MIN_PIXELS;
}

/* diffuse_dnnl_conv_fused's rule: Winograd F(4x4, 3x3) wherever it runs
 * (stride 1, 32 channels or more), whatever the size. Without the reorders
 * and band copies of the NCHW path it beats the direct convolution (jit or
 * brgconv) from 64x64 up: 1.4-1.8x on TAESD's 64-channel layers at 64x64 to
 * 512x512 (README, "TAESD"). */
static bool winograd_fused(const diffuse_conv *c)
{
    const int m = mode();
    if (c->stride != 1 || m == DIFFUSE_CONV_DIRECT)
        return false;
    return m == DIFFUSE_CONV_WINOGRAD ||
           (c->cin >= WINO_MIN_CHANNELS && c->cout >= WINO_MIN_CHANNELS);
}

/* The primitive for this shape (fused: 0, or DNNL_FUSED and the flags of
 * diffuse_dnnl_conv_fused), made on first use; NULL when oneDNN cannot run it
 * (or is not wanted for it). */
static conv_prim *prim_get(const diffuse_conv *c, int n, int fused)
{
    fused &= ~DIFFUSE_DNNL_PREPARED; /* the same primitive either way */
    if (fused ? mode() == DIFFUSE_CONV_IM2COL || !diffuse_dnnl_available() ||
                    (c->stride != 1 && c->stride != 2)
              : !wanted(c, n))
        return NULL;
    conv_key k = {.n = n,
                  .cin = c->cin,
                  .h = c->h,
                  .w = c->w,
                  .cout = c->cout,
                  .k = c->k,
                  .stride = c->stride,
                  .pad = {c->pad_top, c->pad_left, c->pad_bottom, c->pad_right},
                  .winograd = fused ? winograd_fused(c) : winograd(c, n),
                  .fused = fused};
    pthread_mutex_lock(&prim_lock);
    if (!engine && (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
                    dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success))
        engine = NULL;
    conv_prim *p = engine ? prim_find(&k) : NULL;
    if (p && !p->ok && k.winograd) { /* oneDNN has no Winograd for this CPU or shape */
        k.winograd = 0;
        p = prim_find(&k);
    }
    pthread_mutex_unlock(&prim_lock);
    return p && p->ok ? p : NULL;
}

static conv_prim *prim_for(const diffuse_conv *c, int n)
{
    return prim_get(c, n, 0);
}

bool diffuse_dnnl_available(void)
{
    return diffuse_cpu_path() >= DIFFUSE_CPU_AVX2;
}

bool diffuse_dnnl_preferred(int k, int stride)
{
    return mode() != 0 && diffuse_dnnl_available() && k == 3 && (stride == 1 || stride == 2);
}

int diffuse_dnnl_major(void)
{
    return DNNL_VERSION_MAJOR;
}

/* oneDNN's Winograd keeps, from its first run on, the weights transformed
 * into 6x6 tiles, outside the scratch it is given: cin x cout x 36 floats
 * per shape (measured: the SD 1.5 UNet's four Winograd shapes at 512x512 with
 * guidance raised the peak by 144 MiB; this counts 140). */
size_t diffuse_dnnl_pending_bytes(void)
{
    size_t bytes = 0;
    pthread_mutex_lock(&prim_lock);
    for (int i = 0; i < nprims; i++)
        if (prims[i].ok && prims[i].key.winograd && !prims[i].ran)
            bytes += (size_t)prims[i].key.cin * prims[i].key.cout * 36 * sizeof(float);
    pthread_mutex_unlock(&prim_lock);
    return bytes;
}

bool diffuse_dnnl_winograd(const diffuse_conv *c, int n)
{
    conv_prim *p = prim_for(c, n);
    return p && p->key.winograd;
}

size_t diffuse_dnnl_conv_scratch(const diffuse_conv *c, int n)
{
    conv_prim *p = prim_for(c, n);
    return p ? (p->src_b + p->wei_b + p->dst_b + p->pad_b + 64) / sizeof(float) : 0;
}

static bool run(dnnl_primitive_t prim, int nargs, const dnnl_exec_arg_t *args)
{
    return dnnl_primitive_execute(prim, stream, nargs, args) == dnnl_success;
}

/* One convolution on NCHW tensors through p: weights w (float32 [cout, cin,
 * k, k], reordered by oneDNN) or, with w NULL, wsrc stored as wtype, written
 * straight into p's layout (p->wlay). */
static bool conv_exec(conv_prim *p, float *y, const float *x, const float *w, const void *wsrc,
                      diffuse_dtype wtype, const float *b, const diffuse_conv *c, float *scratch)
{
    if (!b)
        b = p->zeros;
    uint8_t *s = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    dnnl_memory_t mx = NULL, mw = NULL, my = NULL, bx = NULL, bw = NULL, by = NULL, mb = NULL,
                  mp = NULL;
    bool ok =
        dnnl_memory_create(&mx, MD(p->src_plain), engine, (void *)x) == dnnl_success &&
        (!w || dnnl_memory_create(&mw, MD(p->wei_plain), engine, (void *)w) == dnnl_success) &&
        dnnl_memory_create(&my, MD(p->dst_plain), engine, y) == dnnl_success &&
        dnnl_memory_create(&bx, p->src_md, engine, s) == dnnl_success &&
        dnnl_memory_create(&bw, p->wei_md, engine, s + p->src_b) == dnnl_success &&
        dnnl_memory_create(&by, p->dst_md, engine, s + p->src_b + p->wei_b) == dnnl_success &&
        (!b || dnnl_memory_create(&mb, MD(p->bias_md), engine, (void *)b) == dnnl_success) &&
        (!p->pad_b || dnnl_memory_create(&mp, p->pad_md, engine,
                                         s + p->src_b + p->wei_b + p->dst_b) == dnnl_success);
    /* blocked layouts pad the channels up to the block: the reorders leave
     * the padding as it is, and the arena holds whatever ran before */
    if (ok && (c->cin % 16 || c->cout % 16))
        memset(s, 0, p->src_b + p->wei_b);
    if (ok && !w) /* the caller's scratch: no need to hold the stream */
        diffuse_op_widen_blocked((float *)(s + p->src_b), wsrc, wtype, &p->wlay);
    /* one stream for the process: runs in several threads take turns */
    pthread_mutex_lock(&exec_lock);
    omp_set_num_threads(diffuse_pool_threads());
    if (ok) {
        dnnl_exec_arg_t in[] = {{DNNL_ARG_FROM, mx}, {DNNL_ARG_TO, bx}};
        dnnl_exec_arg_t wt[] = {{DNNL_ARG_FROM, mw}, {DNNL_ARG_TO, bw}};
        dnnl_exec_arg_t out[] = {{DNNL_ARG_FROM, by}, {DNNL_ARG_TO, my}};
        dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, bx}, {DNNL_ARG_WEIGHTS, bw}, {DNNL_ARG_DST, by}};
        int nargs = 3;
        if (mb)
            args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, mb};
        if (mp)
            args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mp};
        ok = run(p->rsrc, 2, in) && (!w || run(p->rwei, 2, wt)) && run(p->conv, nargs, args) &&
             run(p->rdst, 2, out) && dnnl_stream_wait(stream) == dnnl_success;
        if (ok && !p->ran) {
            pthread_mutex_lock(&prim_lock);
            p->ran = true;
            pthread_mutex_unlock(&prim_lock);
        }
    }
    pthread_mutex_unlock(&exec_lock);
    dnnl_memory_t all[] = {mx, mw, my, bx, bw, by, mb, mp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i])
            dnnl_memory_destroy(all[i]);
    return ok;
}

bool diffuse_dnnl_conv(float *y, const float *x, const float *w, const float *b,
                       const diffuse_conv *c, int n, float *scratch)
{
    conv_prim *p = prim_for(c, n);
    return p && scratch && conv_exec(p, y, x, w, NULL, DIFFUSE_DTYPE_F32, b, c, scratch);
}

bool diffuse_dnnl_conv_takes(const diffuse_conv *c, int n)
{
    conv_prim *p = prim_for(c, n);
    return p && p->wlay.blk;
}

bool diffuse_dnnl_conv_from(float *y, const float *x, const void *w, diffuse_dtype wtype,
                            const float *b, const diffuse_conv *c, int n, float *scratch)
{
    conv_prim *p = prim_for(c, n);
    return p && p->wlay.blk && scratch && conv_exec(p, y, x, NULL, w, wtype, b, c, scratch);
}

/* ------------------------------------------------------------------ fused */

int diffuse_dnnl_block(void)
{
    return diffuse_dnnl_available() ? (block_tag() == dnnl_nChw16c ? 16 : 8) : 0;
}

size_t diffuse_dnnl_fused_scratch(const diffuse_conv *c, int flags)
{
    conv_prim *p = prim_get(c, 1, DNNL_FUSED | flags);
    return p ? (p->wei_b + p->pad_b + 64) / sizeof(float) : 0;
}

bool diffuse_dnnl_fused_winograd(const diffuse_conv *c, int flags)
{
    conv_prim *p = prim_get(c, 1, DNNL_FUSED | flags);
    return p && p->key.winograd;
}

size_t diffuse_dnnl_fused_weights(const diffuse_conv *c, int flags)
{
    conv_prim *p = prim_get(c, 1, DNNL_FUSED | flags);
    return p ? p->wei_b / sizeof(float) : 0;
}

bool diffuse_dnnl_fused_prepare(float *wt, const float *w, const diffuse_conv *c, int flags)
{
    conv_prim *p = prim_get(c, 1, DNNL_FUSED | flags);
    if (!p)
        return false;
    dnnl_memory_t mw = NULL, bw = NULL;
    bool ok = dnnl_memory_create(&mw, MD(p->wei_plain), engine, (void *)w) == dnnl_success &&
              dnnl_memory_create(&bw, p->wei_md, engine, wt) == dnnl_success;
    pthread_mutex_lock(&exec_lock);
    omp_set_num_threads(diffuse_pool_threads());
    if (ok) {
        memset(wt, 0, p->wei_b); /* the padding to the block */
        dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, mw}, {DNNL_ARG_TO, bw}};
        ok = run(p->rwei, 2, args) && dnnl_stream_wait(stream) == dnnl_success;
    }
    pthread_mutex_unlock(&exec_lock);
    if (mw)
        dnnl_memory_destroy(mw);
    if (bw)
        dnnl_memory_destroy(bw);
    return ok;
}

bool diffuse_dnnl_conv_fused(float *y, const float *x, const float *w, const float *b,
                             const diffuse_conv *c, int flags, float *scratch)
{
    conv_prim *p = prim_get(c, 1, DNNL_FUSED | flags);
    if (!p || !scratch)
        return false;
    if (!b)
        b = p->zeros;
    uint8_t *s = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    const bool prepared = flags & DIFFUSE_DNNL_PREPARED;
    dnnl_memory_t mx = NULL, mw = NULL, my = NULL, bw = NULL, mb = NULL, mp = NULL;
    bool ok =
        dnnl_memory_create(&mx, p->src_md, engine, (void *)x) == dnnl_success &&
        (prepared ||
         dnnl_memory_create(&mw, MD(p->wei_plain), engine, (void *)w) == dnnl_success) &&
        dnnl_memory_create(&my, p->dst_md, engine, y) == dnnl_success &&
        dnnl_memory_create(&bw, p->wei_md, engine, prepared ? (void *)w : s) == dnnl_success &&
        dnnl_memory_create(&mb, MD(p->bias_md), engine, (void *)b) == dnnl_success &&
        (!p->pad_b || dnnl_memory_create(&mp, p->pad_md, engine, s + p->wei_b) == dnnl_success);
    pthread_mutex_lock(&exec_lock);
    omp_set_num_threads(diffuse_pool_threads());
    if (ok && !prepared && (c->cin % 16 || c->cout % 16)) /* the weights' padding */
        memset(s, 0, p->wei_b);
    if (ok) {
        dnnl_exec_arg_t wt[] = {{DNNL_ARG_FROM, mw}, {DNNL_ARG_TO, bw}};
        dnnl_exec_arg_t args[5] = {
            {DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, bw}, {DNNL_ARG_DST, my}, {DNNL_ARG_BIAS, mb}};
        int nargs = 4;
        if (mp)
            args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mp};
        ok = (prepared || run(p->rwei, 2, wt)) && run(p->conv, nargs, args) &&
             dnnl_stream_wait(stream) == dnnl_success;
        if (ok && !p->ran) {
            pthread_mutex_lock(&prim_lock);
            p->ran = true;
            pthread_mutex_unlock(&prim_lock);
        }
    }
    pthread_mutex_unlock(&exec_lock);
    dnnl_memory_t all[] = {mx, mw, my, bw, mb, mp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i])
            dnnl_memory_destroy(all[i]);
    return ok;
}

/* ------------------------------------------------------------------ linear */

/* Linear layers through oneDNN's matrix product (brgemm on AVX-512 and
 * AVX2), its weights written by diffuse_op_widen_blocked from the file's
 * dtype straight into the layout it asks for (BA16a64b on AVX-512). OpenBLAS
 * (diffuse_op_linear) packs the float32 copy of every weight again at each
 * call; measured on SD 1.5's shapes (README, "Linear layers"). Products of
 * fewer than LINEAR_MIN_MACS multiply-adds stay on OpenBLAS, as does every
 * one with DIFFUSE_LINEAR=blas; DIFFUSE_LINEAR=dnnl takes all of them
 * (tests). */
#define LINEAR_MIN_MACS (1u << 24)

static int linear_mode = -1; /* 0 auto, 1 OpenBLAS, 2 oneDNN wherever it can */

static int lmode(void)
{
    if (linear_mode < 0) {
        const char *e = getenv("DIFFUSE_LINEAR");
        linear_mode = !e ? 0 : strcmp(e, "blas") == 0 ? 1 : strcmp(e, "dnnl") == 0 ? 2 : 0;
    }
    return linear_mode;
}

void diffuse_linear_set_backend(int backend)
{
    linear_mode = backend;
}

typedef struct mm_prim {
    int rows, in, out, threads; /* the key: oneDNN 2.x fixes a primitive's threads */
    bool ok;
    dnnl_primitive_t mm;
    dnnl_primitive_desc_t pd;
    md_t src_md, dst_md, bias_md;
    cmd_t wei_md, pad_md;
    size_t wei_b, pad_b;
    float *zeros; /* [out]: the bias of a layer without one */
    diffuse_wblocked wlay;
    bool kpad; /* the layout pads K (in) up to its block: zeros there */
} mm_prim;

static mm_prim mms[MAX_PRIMS];
static int nmms;

/* The layout of weights {in, out} (oneDNN's order: K, N) that
 * diffuse_op_widen_blocked writes: plain, blocked on N, or blocked on K then
 * N (BA16a64b), N and K padded up to their blocks. */
static bool mm_layout(mm_prim *p)
{
    blocking b;
    if (!blocking_of(p->wei_md, 2, &b))
        return false;
    const int nb = b.nb;
    const dnnl_dim_t *st = b.st, *blks = b.blks, *idxs = b.idxs, *pdims = b.pdims;
    dnnl_dim_t blk = 1, iblk = 1;
    if (nb == 1 && idxs[0] == 1)
        blk = blks[0];
    else if (nb == 2 && idxs[0] == 0 && idxs[1] == 1)
        iblk = blks[0], blk = blks[1];
    else if (nb != 0)
        return false;
    if (blk > DIFFUSE_WBLOCK_MAX || pdims[1] % blk || pdims[0] % iblk || pdims[0] < p->in ||
        pdims[0] - p->in >= iblk)
        return false;
    const dnnl_dim_t last =
        (pdims[1] / blk - 1) * st[1] + (pdims[0] / iblk - 1) * st[0] + (iblk - 1) * blk + blk - 1;
    if ((size_t)(last + 1) * sizeof(float) > p->wei_b)
        return false;
    p->wlay = (diffuse_wblocked){.cout = p->out,
                                 .cin = p->in,
                                 .k = 1,
                                 .blk = (int)blk,
                                 .iblk = (int)iblk,
                                 .cout_pad = (int)pdims[1],
                                 .stride = {st[1], st[0], 0, 0}};
    p->kpad = pdims[0] != p->in;
    return true;
}

static void mm_make(mm_prim *p, int rows, int in, int out, int threads)
{
    memset(p, 0, sizeof *p);
    p->rows = rows, p->in = in, p->out = out, p->threads = threads;
    omp_set_num_threads(threads); /* what it will run on, and its scratchpad's size */
    dnnl_dims_t sd = {rows, in}, wd = {in, out}, bd = {1, out}, dd = {rows, out};
    p->src_md = md_new(2, sd, dnnl_ab);
    p->dst_md = md_new(2, dd, dnnl_ab);
    p->bias_md = md_new(2, bd, dnnl_ab);
    md_t wei_any = md_new(2, wd, dnnl_format_tag_any);
    dnnl_primitive_attr_t attr = NULL;
    if (!(p->zeros = calloc((size_t)out, sizeof(float))) ||
        dnnl_primitive_attr_create(&attr) != dnnl_success ||
        dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) != dnnl_success)
        goto done;
#if DNNL_VERSION_MAJOR >= 3
    if (dnnl_matmul_primitive_desc_create(&p->pd, engine, p->src_md, wei_any, p->bias_md, p->dst_md,
                                          attr) != dnnl_success)
        goto done;
#else
    dnnl_matmul_desc_t d;
    if (dnnl_matmul_desc_init(&d, &p->src_md, &wei_any, &p->bias_md, &p->dst_md) != dnnl_success ||
        dnnl_primitive_desc_create(&p->pd, &d, attr, engine, NULL) != dnnl_success)
        goto done;
#endif
    p->wei_md = dnnl_primitive_desc_query_md(p->pd, dnnl_query_weights_md, 0);
    p->pad_md = dnnl_primitive_desc_query_md(p->pd, dnnl_query_scratchpad_md, 0);
    p->wei_b = align64(dnnl_memory_desc_get_size(p->wei_md));
    p->pad_b = p->pad_md ? align64(dnnl_memory_desc_get_size(p->pad_md)) : 0;
    /* only oneDNN's brgemm beats OpenBLAS: on AVX2 oneDNN 2.x has its jit
     * gemm on plain weights, which loses to OpenBLAS's Haswell kernels (a
     * UNet pass 6.03 s against 5.21 s with OpenBLAS, README) */
    const char *impl = NULL;
    p->ok = dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
            impl && strstr(impl, "brg") && mm_layout(p) &&
            dnnl_primitive_create(&p->mm, p->pd) == dnnl_success;
done:
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    md_free(wei_any);
}

static mm_prim *mm_get(int rows, int in, int out)
{
    const int m = lmode();
    if (m == 1 || mode() == DIFFUSE_CONV_IM2COL || !diffuse_dnnl_available() || rows < 1 ||
        (m == 0 && (double)rows * in * out < LINEAR_MIN_MACS))
        return NULL;
    mm_prim *p = NULL;
    const int threads = diffuse_pool_threads();
    pthread_mutex_lock(&prim_lock);
    if (!engine && (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
                    dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success))
        engine = NULL;
    for (int i = 0; engine && i < nmms && !p; i++)
        if (mms[i].rows == rows && mms[i].in == in && mms[i].out == out &&
            mms[i].threads == threads)
            p = &mms[i];
    if (engine && !p && nmms < MAX_PRIMS) {
        p = &mms[nmms++];
        mm_make(p, rows, in, out, threads);
    }
    pthread_mutex_unlock(&prim_lock);
    return p && p->ok ? p : NULL;
}

size_t diffuse_dnnl_linear_scratch(int rows, int in, int out)
{
    mm_prim *p = mm_get(rows, in, out);
    return p ? (p->wei_b + p->pad_b + 64) / sizeof(float) : 0;
}

bool diffuse_dnnl_linear(float *y, const float *x, const void *w, diffuse_dtype wtype,
                         const float *b, int rows, int in, int out, float *scratch)
{
    mm_prim *p = mm_get(rows, in, out);
    if (!p || !scratch)
        return false;
    uint8_t *s = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    dnnl_memory_t mx = NULL, mw = NULL, my = NULL, mb = NULL, mp = NULL;
    bool ok =
        dnnl_memory_create(&mx, MD(p->src_md), engine, (void *)x) == dnnl_success &&
        dnnl_memory_create(&mw, p->wei_md, engine, s) == dnnl_success &&
        dnnl_memory_create(&my, MD(p->dst_md), engine, y) == dnnl_success &&
        dnnl_memory_create(&mb, MD(p->bias_md), engine, (void *)(b ? b : p->zeros)) ==
            dnnl_success &&
        (!p->pad_b || dnnl_memory_create(&mp, p->pad_md, engine, s + p->wei_b) == dnnl_success);
    if (ok && p->kpad) /* the rows of K's padding */
        memset(s, 0, p->wei_b);
    if (ok)
        diffuse_op_widen_blocked((float *)s, w, wtype, &p->wlay);
    pthread_mutex_lock(&exec_lock);
    omp_set_num_threads(diffuse_pool_threads());
    if (ok) {
        dnnl_exec_arg_t args[5] = {
            {DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, my}, {DNNL_ARG_BIAS, mb}};
        int nargs = 4;
        if (mp)
            args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mp};
        ok = run(p->mm, nargs, args) && dnnl_stream_wait(stream) == dnnl_success;
    }
    pthread_mutex_unlock(&exec_lock);
    dnnl_memory_t all[] = {mx, mw, my, mb, mp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i])
            dnnl_memory_destroy(all[i]);
    return ok;
}

#endif
