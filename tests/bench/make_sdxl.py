#!/usr/bin/python3
"""make_sdxl.py: writes a random-weight Stable Diffusion XL base 1.0 single-file
checkpoint with every tensor name and shape of the real one (the layout of
sd_xl_base_1.0.safetensors: 2.57 B UNet parameters, CLIP ViT-L and OpenCLIP
ViT-bigG text encoders, the VAE; 3.47 B in all), for `make bench-sdxl`:

    /usr/bin/python3 tests/bench/make_sdxl.py OUT.safetensors [--dtype f16|bf16|f32]

Values as make_sd15.py writes them (Gaussian, std 1/sqrt(fan_in)): only the
sizes, names and layout are a model's. Needs python3-numpy.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd15 as sd  # noqa: E402  (the layer helpers, values and the writer)

CTX = 2048          # 768 (ViT-L) + 1280 (ViT-bigG)
TEMB = 1280         # 4 x 320
POOLED = 1280       # bigG's text_projection
TIME_DIM = 256      # addition_time_embed_dim
BIGG = 1280


def unet(t):
    p = "model.diffusion_model."
    ch = [320, 640, 1280]
    depth = [0, 2, 10]
    conv, norm = sd.layer_helpers(t, p)

    def lin(name, out, inp, bias=True):
        t[p + name + ".weight"] = [out, inp]
        if bias:
            t[p + name + ".bias"] = [out]

    def res(name, cin, cout):
        norm(name + ".in_layers.0", cin)
        conv(name + ".in_layers.2", cout, cin, 3)
        lin(name + ".emb_layers.1", cout, TEMB)
        norm(name + ".out_layers.0", cout)
        conv(name + ".out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(name + ".skip_connection", cout, cin, 1)

    def spatial(name, c, n):
        norm(name + ".norm", c)
        lin(name + ".proj_in", c, c)      # use_linear_projection: 2-D
        for i in range(n):
            b = name + ".transformer_blocks.%d." % i
            for a, kv in (("attn1", c), ("attn2", CTX)):
                lin(b + a + ".to_q", c, c, False)
                lin(b + a + ".to_k", c, kv, False)
                lin(b + a + ".to_v", c, kv, False)
                lin(b + a + ".to_out.0", c, c)
            lin(b + "ff.net.0.proj", 8 * c, c)
            lin(b + "ff.net.2", c, 4 * c)
            for k in (1, 2, 3):
                norm(b + "norm%d" % k, c)
        lin(name + ".proj_out", c, c)

    lin("time_embed.0", TEMB, ch[0])
    lin("time_embed.2", TEMB, TEMB)
    lin("label_emb.0.0", TEMB, POOLED + 6 * TIME_DIM)
    lin("label_emb.0.2", TEMB, TEMB)
    conv("input_blocks.0.0", ch[0], 4, 3)
    skips, cin, idx = [ch[0]], ch[0], 1
    for lvl in range(3):
        for _ in range(2):
            res("input_blocks.%d.0" % idx, cin, ch[lvl])
            if depth[lvl]:
                spatial("input_blocks.%d.1" % idx, ch[lvl], depth[lvl])
            cin = ch[lvl]
            skips.append(cin)
            idx += 1
        if lvl < 2:
            conv("input_blocks.%d.0.op" % idx, cin, cin, 3)
            skips.append(cin)
            idx += 1
    res("middle_block.0", cin, cin)
    spatial("middle_block.1", cin, depth[2])
    res("middle_block.2", cin, cin)
    idx = 0
    for lvl in (2, 1, 0):
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


def openclip_bigg(t):
    p = "conditioner.embedders.1.model."
    t[p + "token_embedding.weight"] = [49408, BIGG]
    t[p + "positional_embedding"] = [77, BIGG]
    for i in range(32):
        b = p + "transformer.resblocks.%d." % i
        for n in ("ln_1", "ln_2"):
            t[b + n + ".weight"] = [BIGG]
            t[b + n + ".bias"] = [BIGG]
        t[b + "attn.in_proj_weight"] = [3 * BIGG, BIGG]
        t[b + "attn.in_proj_bias"] = [3 * BIGG]
        t[b + "attn.out_proj.weight"] = [BIGG, BIGG]
        t[b + "attn.out_proj.bias"] = [BIGG]
        t[b + "mlp.c_fc.weight"] = [4 * BIGG, BIGG]
        t[b + "mlp.c_fc.bias"] = [4 * BIGG]
        t[b + "mlp.c_proj.weight"] = [BIGG, 4 * BIGG]
        t[b + "mlp.c_proj.bias"] = [BIGG]
    t[p + "ln_final.weight"] = [BIGG]
    t[p + "ln_final.bias"] = [BIGG]
    t[p + "text_projection"] = [BIGG, POOLED]
    t[p + "logit_scale"] = []


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    dtype = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--dtype" else "f16"
    shapes = {}
    unet(shapes)
    sd.vae(shapes)
    sd.clip(shapes, "conditioner.embedders.0.transformer.text_model.")
    openclip_bigg(shapes)
    shapes["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = [1, 77]
    sd.write_checkpoint(out, shapes, dtype, "random SDXL base 1.0 layout for benchmarks")


if __name__ == "__main__":
    main()
