"""export.py: a training run's checkpoints -> a diffusers folder the engine
loads (unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json),
weights in fp16 (the EMA copies of the UNet and text encoder).

    python3 export.py --ckpt runs/default --out ../default
    python3 export.py --ckpt runs/default --out /tmp/ref --refset

--refset also writes a reference set in the format of
../../shared/reference/sd1-tiny (golden.json + golden.safetensors, the model
in model-diffusers/): this PyTorch code's outputs for the text encoder, the UNet
at three timesteps and the VAE, computed from the fp16-rounded weights, so
`build/diffuse refcheck DIR` proves the engine computes what was trained.
"""
import argparse
import json
import os
import shutil
import sys

import torch

import safetensors_io
import tokenizer as toks
from nets import AutoencoderKL, CLIPTextModel, UNet2DConditionModel
from scenes import GRAMMAR_WORDS
from train import SCHEDULE, SIZE, LATENT, load_ckpt

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.40.0.dev0"  # the diffusers layout version these configs follow


def unet_json(c):
    L = len(c["block_out_channels"])
    return {"_class_name": "UNet2DConditionModel", "_diffusers_version": VERSION,
            "act_fn": "silu", "attention_head_dim": c["attention_head_dim"],
            "block_out_channels": c["block_out_channels"], "center_input_sample": False,
            "cross_attention_dim": c["cross_attention_dim"],
            "down_block_types": c["down_block_types"], "downsample_padding": 1,
            "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": c["in_channels"],
            "layers_per_block": c["layers_per_block"], "mid_block_scale_factor": 1,
            "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": c["norm_eps"],
            "norm_num_groups": c["norm_num_groups"], "num_attention_heads": None,
            "only_cross_attention": False, "out_channels": c["out_channels"],
            "resnet_time_scale_shift": "default", "sample_size": LATENT,
            "time_embedding_type": "positional",
            "transformer_layers_per_block": c["transformer_layers_per_block"],
            "up_block_types": c["up_block_types"], "upcast_attention": False,
            "use_linear_projection": False}


def vae_json(c, scale):
    L = len(c["block_out_channels"])
    return {"_class_name": "AutoencoderKL", "_diffusers_version": VERSION, "act_fn": "silu",
            "block_out_channels": c["block_out_channels"],
            "down_block_types": ["DownEncoderBlock2D"] * L, "force_upcast": False,
            "in_channels": 3, "latent_channels": c["latent_channels"],
            "layers_per_block": c["layers_per_block"], "mid_block_add_attention": False,
            "norm_num_groups": c["norm_num_groups"], "out_channels": 3, "sample_size": SIZE,
            "scaling_factor": round(scale, 6), "up_block_types": ["UpDecoderBlock2D"] * L,
            "use_post_quant_conv": True, "use_quant_conv": True}


def text_json(c, vocab):
    return {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0,
            "bos_token_id": vocab[toks.BOS], "eos_token_id": vocab[toks.EOS],
            "hidden_act": c["hidden_act"], "hidden_size": c["hidden_size"],
            "initializer_factor": 1.0, "initializer_range": 0.02,
            "intermediate_size": c["intermediate_size"], "layer_norm_eps": c["layer_norm_eps"],
            "max_position_embeddings": c["max_position_embeddings"],
            "model_type": "clip_text_model", "num_attention_heads": c["num_attention_heads"],
            "num_hidden_layers": c["num_hidden_layers"], "pad_token_id": vocab[toks.EOS],
            "projection_dim": c["hidden_size"], "torch_dtype": "float16",
            "vocab_size": c["vocab_size"]}


def scheduler_json():
    # Not EulerAncestralDiscreteScheduler: with trailing spacing the engine and
    # the plug-in take that for SD-Turbo and suggest 1 step without guidance.
    return {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": VERSION,
            **SCHEDULE, "steps_offset": 1, "timestep_spacing": "trailing",
            "trained_betas": None}


MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": VERSION,
               "feature_extractor": [None, None], "requires_safety_checker": False,
               "safety_checker": [None, None],
               "scheduler": ["diffusers", "EulerDiscreteScheduler"],
               "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}


def load_models(ckpt_dir, ema=True):
    """(text, unet, vae, scale, cfg, info) from a run folder, weights rounded to fp16."""
    u = load_ckpt(os.path.join(ckpt_dir, "unet.pt"))
    v = load_ckpt(os.path.join(ckpt_dir, "vae.pt"))
    cfg = u["config"]
    text, unet, vae = CLIPTextModel(cfg["text"]), UNet2DConditionModel(cfg["unet"]), \
        AutoencoderKL(cfg["vae"])
    text.load_state_dict(u["ema_text" if ema else "text"])
    unet.load_state_dict(u["ema_unet" if ema else "unet"])
    vae.load_state_dict(v["model"])
    for m in (text, unet, vae):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.half().float())
        m.eval()
    info = {"unet_steps": u["step"], "images": u["images"], "unet_seconds": u["seconds"],
            "vae_steps": v["step"], "vae_seconds": v["seconds"],
            "decoder_steps": v.get("decoder_step", 0),
            "decoder_seconds": v.get("decoder_seconds", 0.0)}
    return text, unet, vae, u["scaling_factor"], cfg, info


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export(text, unet, vae, scale, cfg, out, info=None, defaults=None):
    if os.path.isdir(out):
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            shutil.rmtree(os.path.join(out, part), ignore_errors=True)
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        os.makedirs(os.path.join(out, part), exist_ok=True)
    vocab, _ = toks.write(os.path.join(out, "tokenizer"), GRAMMAR_WORDS)
    half = lambda m: {k: t.half() for k, t in m.state_dict().items()}
    meta = {"format": "pt"}
    safetensors_io.save(half(unet), os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"), meta)
    safetensors_io.save(half(vae), os.path.join(out, "vae", "diffusion_pytorch_model.safetensors"), meta)
    safetensors_io.save(half(text), os.path.join(out, "text_encoder", "model.safetensors"), meta)
    write_json(os.path.join(out, "unet", "config.json"), unet_json(cfg["unet"]))
    write_json(os.path.join(out, "vae", "config.json"), vae_json(cfg["vae"], scale))
    write_json(os.path.join(out, "text_encoder", "config.json"), text_json(cfg["text"], vocab))
    write_json(os.path.join(out, "scheduler", "scheduler_config.json"), scheduler_json())
    index = dict(MODEL_INDEX)
    if defaults:  # the settings the model was measured at; the engine suggests them
        index["_diffuse_defaults"] = defaults
    write_json(os.path.join(out, "model_index.json"), index)
    if info:
        write_json(os.path.join(out, "training.json"), info)


@torch.no_grad()
def write_refset(text, unet, vae, scale, out):
    """golden.json + golden.safetensors beside model-diffusers/ (already exported)."""
    tok = toks.Tokenizer.load(os.path.join(out, "model-diffusers", "tokenizer"))
    prompts = ["a red circle on a blue background", "",
               "Two SMALL yellow stars, at the top on a black background!",
               "a photo of a cat 3.14 café"]
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([tok.encode(prompts[0]), tok.encode(prompts[1])])
    ctx = text(ids)
    gold = {"text.input_ids": ids.int(), "text.last_hidden_state": ctx}
    sample = torch.randn(2, 4, LATENT, LATENT, generator=g)
    gold["unet.sample"] = sample
    for t in (999, 500, 1):
        gold[f"unet.t{t}.out"] = unet(sample, torch.full((2,), float(t)), ctx)
    from scenes import render, sample_scenes
    img = render(sample_scenes(1, torch.Generator().manual_seed(5), heldout="any"), SIZE) * 2 - 1
    mean, logvar = vae.encode(img)
    gold["vae.image"] = img
    gold["vae.encode.moments"] = torch.cat([mean, logvar], 1)
    gold["vae.latent"] = mean
    gold["vae.decode.out"] = vae.decode(mean)
    safetensors_io.save({k: (v if v.dtype == torch.int32 else v.float()) for k, v in gold.items()},
                        os.path.join(out, "golden.safetensors"))
    write_json(os.path.join(out, "golden.json"),
               {"kind": "sd1", "scheduler_config": scheduler_json(), "vae_scaling_factor": scale,
                "runs": {}, "tokens": {p: tok.encode(p) for p in prompts}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default=os.path.join(HERE, "runs", "default"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "default"))
    ap.add_argument("--refset", action="store_true",
                    help="write a refcheck set: OUT/model-diffusers + OUT/golden.*")
    ap.add_argument("--no-ema", action="store_true", help="export the raw weights")
    ap.add_argument("--defaults", default="euler,20,3",
                    help="SAMPLER,STEPS,GUIDANCE written to model_index.json as the "
                         "model's own settings (\"\" for none)")
    a = ap.parse_args()
    defaults = None
    if a.defaults:
        sampler, steps, guidance = a.defaults.split(",")
        defaults = {"sampler": sampler, "steps": int(steps), "guidance": float(guidance)}
    torch.set_num_threads(2)
    text, unet, vae, scale, cfg, info = load_models(a.ckpt, ema=not a.no_ema)
    target = os.path.join(a.out, "model-diffusers") if a.refset else a.out
    export(text, unet, vae, scale, cfg, target, info, None if a.refset else defaults)
    if a.refset:
        write_refset(text, unet, vae, scale, a.out)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(target) for f in fs)
    print(f"wrote {target}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
