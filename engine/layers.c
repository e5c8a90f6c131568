/* layers.c: the layers every model part shares (linear, conv, norm, ResNet
 * block): loading them from the weight store by canonical name, and their
 * forward passes on top of the kernels in ops.c. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

int diffuse_linear_load(diffuse_linear *l, diffuse_weights *w, const char *name, int in, int out,
                        bool bias, char *err)
{
    l->in = in;
    l->out = out;
    l->b = NULL;
    if (diffuse_weights_matf(w, &l->w, err, (int64_t[]){out, in, -1}, "%s.weight", name))
        return -1;
    if (bias && !(l->b = diffuse_weights_getf(w, err, (int64_t[]){out, -1}, "%s.bias", name)))
        return -1;
    return 0;
}

int diffuse_conv2d_load(diffuse_conv2d *c, diffuse_weights *w, const char *name, int cin, int cout,
                        int k, char *err)
{
    c->cin = cin;
    c->cout = cout;
    c->k = k;
    if (diffuse_weights_matf(w, &c->w, err, (int64_t[]){cout, cin, k, k, -1}, "%s.weight", name))
        return -1;
    if (!(c->b = diffuse_weights_getf(w, err, (int64_t[]){cout, -1}, "%s.bias", name)))
        return -1;
    return 0;
}

int diffuse_norm_load(diffuse_norm *n, diffuse_weights *w, const char *name, int c, char *err)
{
    n->c = c;
    if (!(n->gamma = diffuse_weights_getf(w, err, (int64_t[]){c, -1}, "%s.weight", name)))
        return -1;
    if (!(n->beta = diffuse_weights_getf(w, err, (int64_t[]){c, -1}, "%s.bias", name)))
        return -1;
    return 0;
}

int diffuse_resnet_load(diffuse_resnet *r, diffuse_weights *w, const char *name, int cin, int cout,
                        int temb_dim, int groups, float eps, char *err)
{
    char n[256];
    memset(r, 0, sizeof *r);
    r->cin = cin;
    r->cout = cout;
    r->groups = groups;
    r->eps = eps;
#define SUB(s) (snprintf(n, sizeof n, "%s.%s", name, s), n)
    if (diffuse_norm_load(&r->norm1, w, SUB("norm1"), cin, err) ||
        diffuse_conv2d_load(&r->conv1, w, SUB("conv1"), cin, cout, 3, err) ||
        diffuse_norm_load(&r->norm2, w, SUB("norm2"), cout, err) ||
        diffuse_conv2d_load(&r->conv2, w, SUB("conv2"), cout, cout, 3, err))
        return -1;
    if (temb_dim &&
        diffuse_linear_load(&r->time_proj, w, SUB("time_emb_proj"), temb_dim, cout, true, err))
        return -1;
    if (cin != cout &&
        diffuse_conv2d_load(&r->shortcut, w, SUB("conv_shortcut"), cin, cout, 1, err))
        return -1;
#undef SUB
    return 0;
}

size_t diffuse_wmat_scratch(size_t numel)
{
    return diffuse_arena_size(numel);
}

/* A matrix used straight from the mapping is done with: its pages go */
static void wmat_done(const diffuse_wmat *m)
{
    if (!m->in_place)
        diffuse_map_release(m->data, m->numel * (m->dtype == DIFFUSE_DTYPE_F32 ? 4 : 2));
}

const float *diffuse_wmat_f32(const diffuse_wmat *m, diffuse_arena *a)
{
    const diffuse_lora_delta *d = m->lora ? *m->lora : NULL;
    if (m->in_place && !d)
        return m->data;
    float *f = diffuse_arena_push(a, m->numel);
    if (!f || a->dry)
        return f;
    if (m->in_place) { /* a LoRA changes a copy, never the model */
        memcpy(f, m->data, sizeof(float) * m->numel);
    } else {
        diffuse_op_widen(f, m->data, m->dtype, m->numel);
        diffuse_map_release(m->data, m->numel * (m->dtype == DIFFUSE_DTYPE_F32 ? 4 : 2));
    }
    for (; d; d = d->next)
        if (diffuse_lora_add(d, f, a))
            return NULL;
    return f;
}

int diffuse_linear_forward(const diffuse_linear *l, float *y, const float *x, int rows,
                           diffuse_arena *a)
{
    size_t mark = diffuse_arena_mark(a);
    const diffuse_wmat *m = &l->w;
    const size_t need = m->lora && *m->lora ? 0 : diffuse_dnnl_linear_scratch(rows, l->in, l->out);
    if (need) { /* the weights go from the file straight into oneDNN's layout */
        float *scratch = diffuse_arena_push(a, need);
        if (!scratch)
            return -1;
        if (!a->dry) {
            if (!diffuse_dnnl_linear(y, x, m->data, m->dtype, l->b, rows, l->in, l->out, scratch)) {
                /* oneDNN refused at run time: OpenBLAS on the float32 weights,
                 * widened into the scratch (the blocked layout's size or more) */
                const float *wf = m->data;
                if (!m->in_place) {
                    diffuse_op_widen(scratch, m->data, m->dtype, m->numel);
                    wf = scratch;
                }
                diffuse_op_linear(y, x, wf, l->b, rows, l->in, l->out);
            }
            wmat_done(m);
        }
        diffuse_arena_count(a, 2.0 * rows * l->in * l->out);
        diffuse_arena_reset(a, mark);
        return 0;
    }
    const float *w = diffuse_wmat_f32(&l->w, a);
    if (!w)
        return -1;
    if (!a->dry)
        diffuse_op_linear(y, x, w, l->b, rows, l->in, l->out);
    diffuse_arena_count(a, 2.0 * rows * l->in * l->out);
    diffuse_arena_reset(a, mark);
    return 0;
}

int diffuse_conv2d_forward_pad(const diffuse_conv2d *c, float *y, const float *x, int n, int h,
                               int w, int stride, const int pad[4], diffuse_arena *a)
{
    diffuse_conv g = {.cin = c->cin,
                      .h = h,
                      .w = w,
                      .cout = c->cout,
                      .k = c->k,
                      .stride = stride,
                      .pad_top = pad[0],
                      .pad_left = pad[1],
                      .pad_bottom = pad[2],
                      .pad_right = pad[3]};
    size_t mark = diffuse_arena_mark(a), need = diffuse_conv_scratch(&g, n);
    const diffuse_wmat *m = &c->w;
    if (!(m->lora && *m->lora) && diffuse_dnnl_conv_takes(&g, n)) {
        /* the weights go from the file straight into oneDNN's layout */
        float *scratch = diffuse_arena_push(a, need);
        if (!scratch)
            return -1;
        if (!a->dry) {
            if (!diffuse_dnnl_conv_from(y, x, m->data, m->dtype, c->b, &g, n, scratch))
                return -1;
            wmat_done(m);
        }
        diffuse_arena_count(a, diffuse_conv_flops(&g, n));
        diffuse_arena_reset(a, mark);
        return 0;
    }
    const float *wf = diffuse_wmat_f32(&c->w, a);
    float *scratch = need ? diffuse_arena_push(a, need) : NULL;
    if (!wf || (need && !scratch))
        return -1;
    if (!a->dry)
        diffuse_op_conv2d(y, x, wf, c->b, &g, n, scratch);
    diffuse_arena_count(a, diffuse_conv_flops(&g, n));
    diffuse_arena_reset(a, mark);
    return 0;
}

int diffuse_conv2d_forward(const diffuse_conv2d *c, float *y, const float *x, int n, int h, int w,
                           int stride, diffuse_arena *a)
{
    int p = c->k / 2;
    return diffuse_conv2d_forward_pad(c, y, x, n, h, w, stride, (const int[4]){p, p, p, p}, a);
}

/* y = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(temb)))) */
int diffuse_resnet_forward(const diffuse_resnet *r, float *y, const float *x, const float *temb_act,
                           int n, int h, int w, diffuse_arena *a)
{
    const int hw = h * w;
    const bool run = !a->dry;
    size_t mark = diffuse_arena_mark(a);
    float *t = diffuse_arena_push(a, (size_t)n * r->cin * hw);  /* [n, cin, h, w] */
    float *u = diffuse_arena_push(a, (size_t)n * r->cout * hw); /* [n, cout, h, w] */
    if (!t || !u)
        return -1;
    if (run)
        diffuse_op_group_norm(t, x, r->norm1.gamma, r->norm1.beta, n, r->cin, hw, r->groups, r->eps,
                              true);
    if (diffuse_conv2d_forward(&r->conv1, u, t, n, h, w, 1, a))
        return -1;
    if (temb_act && r->time_proj.w.data) {
        float *e = diffuse_arena_push(a, (size_t)n * r->cout); /* [n, cout] */
        if (!e)
            return -1;
        if (diffuse_linear_forward(&r->time_proj, e, temb_act, n, a))
            return -1;
        for (int i = 0; run && i < n; i++)
            for (int c = 0; c < r->cout; c++) {
                float *p = u + ((size_t)i * r->cout + c) * hw;
                for (int j = 0; j < hw; j++)
                    p[j] += e[(size_t)i * r->cout + c];
            }
    }
    if (run)
        diffuse_op_group_norm(u, u, r->norm2.gamma, r->norm2.beta, n, r->cout, hw, r->groups,
                              r->eps, true);
    if (diffuse_conv2d_forward(&r->conv2, y, u, n, h, w, 1, a))
        return -1;
    const float *skip = x;
    if (r->shortcut.w.data) {
        if (diffuse_conv2d_forward(&r->shortcut, u, x, n, h, w, 1, a))
            return -1;
        skip = u;
    }
    if (run)
        diffuse_op_add(y, skip, (size_t)n * r->cout * hw);
    diffuse_arena_reset(a, mark);
    return 0;
}
