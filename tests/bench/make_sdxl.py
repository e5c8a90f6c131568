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
POOLED = 1280       # bigG's text_projection
TIME_DIM = 256      # addition_time_embed_dim
BIGG = 1280


def unet(t):
    sd.unet_layout(t, [320, 640, 1280], [0, 2, 10], 10, CTX, linear=True,
                   added=POOLED + 6 * TIME_DIM)


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
    out, dtype = sd.arguments(__doc__)
    shapes = {}
    unet(shapes)
    sd.vae(shapes)
    sd.clip(shapes, "conditioner.embedders.0.transformer.text_model.")
    openclip_bigg(shapes)
    shapes["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = [1, 77]
    sd.write_checkpoint(out, shapes, dtype, "random SDXL base 1.0 layout for benchmarks")


if __name__ == "__main__":
    main()
