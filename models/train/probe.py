"""probe.py: where the UNet loses small shapes, by noise level.

For held-out scenes of small stars and small squares (the shapes the default
model draws worst; where the held-out set has too few, other scenes fill the
batch, reported by their own size and shape), each image is encoded, noised to timestep t, and the UNet
(EMA weights of OUT/unet.pt, classifier-free guidance) predicts the clean
latent in one step; the VAE decodes it and the benchmark's judge
(tests/bench/adherence_judge.py) reads the shape back. The first line is the
VAE's own ceiling (encode, decode). A UNet that keeps the shapes right at low
t but not at high t draws them well once the layout is there; one that loses
them even at t = 50 smooths away what the latent holds (the second is what
stage 5 of MODEL_CARD.md addressed). PyTorch, on the CPU, about a minute.

    python3 probe.py --ckpt runs/base [--stars 32 --squares 16 --guidance 1.5]
"""
import argparse
import json
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "bench"))
import adherence_judge as J  # noqa: E402
import scenes  # noqa: E402
import train as T  # noqa: E402
from nets import AutoencoderKL  # noqa: E402
from tokenizer import GRAMMAR_WORDS, Tokenizer, build_vocab, learn_merges  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default=os.path.join(HERE, "runs", "base"))
    ap.add_argument("--stars", type=int, default=32)
    ap.add_argument("--squares", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--t", default="50,100,200,300,400,500,700")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    merges = learn_merges(GRAMMAR_WORDS)
    tok = Tokenizer(build_vocab(merges), merges)
    with open(os.path.join(a.ckpt, "run.json")) as f:
        cfg = json.load(f)["config"]
    vck = T.load_ckpt(os.path.join(a.ckpt, "vae.pt"))
    vae = AutoencoderKL(cfg["vae"]).eval().requires_grad_(False)
    vae.load_state_dict(vck["model"])
    scale = vck["scaling_factor"]
    den = T.Denoiser(a.ckpt, "cpu", tok)

    gen = torch.Generator().manual_seed(a.seed)
    parts = [T.focused_scenes(n, 1.0, [s], gen, "cpu", heldout="only")
             for n, s in ((a.stars, 3), (a.squares, 1)) if n > 0]
    sc = scenes.Scenes.cat(parts)
    with torch.no_grad():
        mean = vae.encode(scenes.render(sc, T.SIZE) * 2 - 1)[0].float()

    def shapes_right(z):
        with torch.no_grad():
            img = ((vae.decode(z).float().clamp(-1, 1) + 1) * 127.5).round().byte()
        img = img.permute(0, 2, 3, 1).numpy()
        right = {}
        for i in range(len(img)):
            s = int(sc.shape[i])
            key = (J.SIZES[int(sc.size[i])], J.SHAPES[s])
            right.setdefault(key, []).append(J.judge(img[i], {"shape": s})[1]["shape"])
        return "  ".join(f"{k[0]} {k[1]}s {sum(v)}/{len(v)}" for k, v in sorted(right.items()))

    print(f"VAE ceiling:  {shapes_right(mean)}", flush=True)
    for t in (int(v) for v in a.t.split(",")):
        tt = torch.full((len(mean),), t)
        z = den.x0_pred(mean * scale, sc, tt, torch.Generator().manual_seed(t), random.Random(t),
                        a.guidance)
        print(f"t = {t:3d}:      {shapes_right(z / scale)}", flush=True)


if __name__ == "__main__":
    main()
