#!/usr/bin/python3
"""make_sd15.py: writes a random-weight Stable Diffusion 1.5 single-file
checkpoint with every tensor name and shape of the real one (the original
"LDM" layout of v1-5-pruned-emaonly: 1.07 B parameters), for `make bench-sd15`:

    /usr/bin/python3 tests/bench/make_sd15.py OUT.safetensors [--dtype f16|bf16|f32]

The weights are Gaussian with std 1/sqrt(fan_in) (norm scales 1, biases 0), so
activations stay in range through the whole network; the values are not a
model's, only the sizes, names and layout are. The schedule buffers and the
int64 position_ids a real file carries are there too. Written as the
safetensors library writes files: u64 header length, JSON header padded to a
multiple of 8, data contiguous in name order. Needs python3-numpy.
"""
import json
import os
import struct
import sys

import numpy as np

CTX = 768           # CLIP ViT-L/14 width = the UNet's cross-attention width
TEMB = 1280         # 4 x 320


def layer_helpers(t, p):
    """conv(name, cout, cin, k) and norm(name, c) adding shapes under prefix p."""
    def conv(name, cout, cin, k):
        t[p + name + ".weight"] = [cout, cin, k, k]
        t[p + name + ".bias"] = [cout]

    def norm(name, c):
        t[p + name + ".weight"] = [c]
        t[p + name + ".bias"] = [c]
    return conv, norm


def unet_helpers(t, p, ctx=CTX, temb=TEMB):
    """conv, norm, lin, res and spatial adding UNet shapes under prefix p, in
    the original layout; spatial(name, c, depth, linear) is a transformer with
    depth blocks and 1x1-conv (SD 1.x) or linear (SD 2.x, SDXL) projections."""
    conv, norm = layer_helpers(t, p)

    def lin(name, out, inp, bias=True):
        t[p + name + ".weight"] = [out, inp]
        if bias:
            t[p + name + ".bias"] = [out]

    def res(name, cin, cout):
        norm(name + ".in_layers.0", cin)
        conv(name + ".in_layers.2", cout, cin, 3)
        lin(name + ".emb_layers.1", cout, temb)
        norm(name + ".out_layers.0", cout)
        conv(name + ".out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(name + ".skip_connection", cout, cin, 1)

    def spatial(name, c, depth=1, linear=False):
        proj = (lambda n: lin(n, c, c)) if linear else (lambda n: conv(n, c, c, 1))
        norm(name + ".norm", c)
        proj(name + ".proj_in")
        for i in range(depth):
            b = name + ".transformer_blocks.%d." % i
            for a, kv in (("attn1", c), ("attn2", ctx)):
                lin(b + a + ".to_q", c, c, False)
                lin(b + a + ".to_k", c, kv, False)
                lin(b + a + ".to_v", c, kv, False)
                lin(b + a + ".to_out.0", c, c)
            lin(b + "ff.net.0.proj", 8 * c, c)
            lin(b + "ff.net.2", c, 4 * c)
            for k in (1, 2, 3):
                norm(b + "norm%d" % k, c)
        proj(name + ".proj_out")
    return conv, norm, lin, res, spatial


def unet_layout(t, ch, depth, mid_depth, ctx=CTX, linear=False, added=0):
    """A UNet in the original layout: levels of block_out_channels ch, each with
    depth[l] transformer blocks after its resnets (0: none), a mid block of
    mid_depth, 2 resnets a level down and 3 up; added > 0: SDXL's label_emb
    with that many inputs."""
    p = "model.diffusion_model."
    temb = 4 * ch[0]
    conv, norm, lin, res, transformer = unet_helpers(t, p, ctx, temb)
    levels = len(ch)

    def spatial(name, c, n):
        transformer(name, c, n, linear)

    lin("time_embed.0", temb, ch[0])
    lin("time_embed.2", temb, temb)
    if added:
        lin("label_emb.0.0", temb, added)
        lin("label_emb.0.2", temb, temb)
    conv("input_blocks.0.0", ch[0], 4, 3)
    skips, cin, idx = [ch[0]], ch[0], 1
    for lvl in range(levels):
        for _ in range(2):
            res("input_blocks.%d.0" % idx, cin, ch[lvl])
            if depth[lvl]:
                spatial("input_blocks.%d.1" % idx, ch[lvl], depth[lvl])
            cin = ch[lvl]
            skips.append(cin)
            idx += 1
        if lvl < levels - 1:
            conv("input_blocks.%d.0.op" % idx, cin, cin, 3)
            skips.append(cin)
            idx += 1
    res("middle_block.0", cin, cin)
    spatial("middle_block.1", cin, mid_depth)
    res("middle_block.2", cin, cin)
    idx = 0
    for lvl in reversed(range(levels)):
        for j in range(3):
            res("output_blocks.%d.0" % idx, cin + skips.pop(), ch[lvl])
            cin = ch[lvl]
            sub = 1
            if depth[lvl]:
                spatial("output_blocks.%d.1" % idx, cin, depth[lvl])
                sub = 2
            if j == 2 and lvl > 0:
                conv("output_blocks.%d.%d.conv" % (idx, sub), cin, cin, 3)
            idx += 1
    norm("out.0", ch[0])
    conv("out.2", 4, ch[0], 3)


def unet(t):
    unet_layout(t, [320, 640, 1280, 1280], [1, 1, 1, 0], 1)


def vae(t):
    ch = [128, 256, 512, 512]
    conv, norm = layer_helpers(t, "first_stage_model.")

    def block(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cout, cin, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    def mid(side, c):
        block(side + ".mid.block_1", c, c)
        norm(side + ".mid.attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(side + ".mid.attn_1." + n, c, c, 1)
        block(side + ".mid.block_2", c, c)

    conv("encoder.conv_in", ch[0], 3, 3)
    cin = ch[0]
    for i in range(4):
        for j in range(2):
            block("encoder.down.%d.block.%d" % (i, j), cin, ch[i])
            cin = ch[i]
        if i < 3:
            conv("encoder.down.%d.downsample.conv" % i, cin, cin, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", 8, cin, 3)
    conv("quant_conv", 8, 8, 1)
    conv("post_quant_conv", 4, 4, 1)
    conv("decoder.conv_in", ch[3], 4, 3)
    mid("decoder", ch[3])
    cin = ch[3]
    for i in (3, 2, 1, 0):
        for j in range(3):
            block("decoder.up.%d.block.%d" % (i, j), cin, ch[i])
            cin = ch[i]
        if i > 0:
            conv("decoder.up.%d.upsample.conv" % i, cin, cin, 3)
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", 3, cin, 3)


def clip(t, p="cond_stage_model.transformer.text_model."):
    t[p + "embeddings.token_embedding.weight"] = [49408, CTX]
    t[p + "embeddings.position_embedding.weight"] = [77, CTX]
    for i in range(12):
        b = p + "encoder.layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[b + "self_attn.%s.weight" % n] = [CTX, CTX]
            t[b + "self_attn.%s.bias" % n] = [CTX]
        for n in ("layer_norm1", "layer_norm2"):
            t[b + n + ".weight"] = [CTX]
            t[b + n + ".bias"] = [CTX]
        t[b + "mlp.fc1.weight"] = [4 * CTX, CTX]
        t[b + "mlp.fc1.bias"] = [4 * CTX]
        t[b + "mlp.fc2.weight"] = [CTX, 4 * CTX]
        t[b + "mlp.fc2.bias"] = [CTX]
    t[p + "final_layer_norm.weight"] = [CTX]
    t[p + "final_layer_norm.bias"] = [CTX]


SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
            "posterior_variance", "posterior_log_variance_clipped",
            "posterior_mean_coef1", "posterior_mean_coef2")


def values(name, shape, rng, dtype):
    n = int(np.prod(shape))
    if name.endswith("position_ids"):
        return np.arange(n, dtype=np.int64)
    if name in SCHEDULE:
        return np.linspace(1e-4, 1.0, n, dtype=np.float32)
    leaf = name.rsplit(".", 1)[-1]
    is_norm = any(s in name for s in ("norm", "in_layers.0", "out_layers.0", "out.0.", "ln_"))
    if len(shape) <= 1:
        v = np.ones(n, np.float32) if (is_norm and leaf == "weight") else np.zeros(n, np.float32)
    else:
        fan_in = int(np.prod(shape[1:]))
        if "embedding" in name:
            fan_in = 1
        v = rng.standard_normal(n, dtype=np.float32)
        v *= 1.0 / np.sqrt(fan_in) * (0.02 if "embedding" in name else 1.0)
    return v


def write_checkpoint(out, shapes, dtype, what):
    """Writes shapes {name: shape} with values() as a safetensors file, through
    a temporary name; F32 schedule buffers, I64 position_ids, the rest dtype."""
    st_dtype = {"f16": "F16", "f32": "F32", "bf16": "BF16"}[dtype]

    def kind(name):
        if name.endswith("position_ids"):
            return "I64", 8
        if name in SCHEDULE:
            return "F32", 4
        return st_dtype, 2 if st_dtype != "F32" else 4

    header, off = {}, 0
    for name in sorted(shapes):
        dt, size = kind(name)
        nbytes = int(np.prod(shapes[name])) * size
        header[name] = {"dtype": dt, "shape": shapes[name], "data_offsets": [off, off + nbytes]}
        off += nbytes
    header["__metadata__"] = {"format": "pt", "diffuse": what}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    rng = np.random.default_rng(1)
    params = 0
    tmp = out + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name in sorted(shapes):
            v = values(name, shapes[name], rng, dtype)
            dt, _ = kind(name)
            if dt == "F16":
                v = v.astype(np.float16)
            elif dt == "BF16":
                v = (v.view(np.uint32) >> 16).astype(np.uint16)
            if dt != "I64" and name not in SCHEDULE:
                params += v.size
            f.write(v.tobytes())
    os.replace(tmp, out)
    print("%s: %d tensors, %.3f B parameters, %s" % (out, len(shapes), params / 1e9, dtype))


def arguments(doc):
    """OUT [--dtype f16|bf16|f32] from the command line (f16 by default)."""
    if len(sys.argv) < 2:
        sys.exit(doc)
    return sys.argv[1], sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--dtype" else "f16"


def main():
    out, dtype = arguments(__doc__)
    shapes = {}
    unet(shapes)
    vae(shapes)
    clip(shapes)
    shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = [1, 77]
    for s in SCHEDULE:
        shapes[s] = [1000]
    write_checkpoint(out, shapes, dtype, "random SD 1.5 layout for benchmarks")


if __name__ == "__main__":
    main()
