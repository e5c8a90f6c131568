"""train.py: the default model's training recipe (seeded, resumable).

Stage 1 ("vae"): a tiny AutoencoderKL (8x downsampling, 4 latent channels)
on random crops, then whole images, of rendered scenes: L1 weighted towards
colour edges (where the shapes are) + 0.1 MSE + a tiny KL term + the anchor:
latent channels 0-2 follow the image's colour averaged over each 8x8 cell, so
colours lie far apart in latent space. Its latent scaling factor (1 / std of
the latents) and a latent health check are measured at the end.
Stage 1b ("decoder", optional): the decoder alone, encoder frozen; run again
after stage 2 with --dec-unet, on the UNet's own one-step predictions too.
Stage 2 ("unet"): a CLIP-architecture text encoder and a UNet with
cross-attention, trained together from scratch as latent diffusion with
v-prediction on SD's scaled_linear schedule (1000 steps), timesteps weighted
towards high noise, the prompt dropped 10% of the time (classifier-free
guidance), cosine learning-rate decay over --steps, EMA weights kept for export.
On a GPU (--device cuda) scenes are drawn and encoded every step (models/train/
gpu.sh); --focus and --t-range fine-tune it on small squares and stars,
--edge-unet weights the loss towards the latent pixels at their edges.

The stages checkpoint to OUT/{vae,unet}.pt every --ckpt-every seconds and at
the end, and continue from there when run again (same command), so CPU time
across sessions adds up and a GPU session can pick up a CPU run. Data are drawn
from a generator seeded by (seed, step): a resumed run sees what an
uninterrupted one would have. MODEL_CARD.md gives the shipped run's commands.

  then:        python3 export.py --ckpt OUT --out ../default

The options come in one dataclass per stage (RunOptions, VaeOptions,
DecoderOptions, UnetOptions: Options). python3 same_run.py checks that a change
to this file trains exactly what it trained before.
"""
import argparse
import dataclasses
import io
import json
import math
import os
import queue
import random
import sys
import threading
import time

import torch
import torch.nn.functional as F

import scenes
from nets import AutoencoderKL, CLIPTextModel, UNet2DConditionModel
from tokenizer import Tokenizer, learn_merges, build_vocab
from scenes import GRAMMAR_WORDS

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- configurations

# GroupNorm removes each group's mean and scale: with one channel per group a
# flat background would normalise to zero and its colour could not be decoded,
# so the VAE normalises all channels as one group.
VAE_TINY = {"block_out_channels": [8, 16, 32, 64], "layers_per_block": 1,
            "norm_num_groups": 1, "latent_channels": 4}


def unet_config(channels, layers, attn, heads, groups, context_dim, depth=1):
    return {"block_out_channels": channels, "layers_per_block": layers,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
            "attention_head_dim": heads, "norm_num_groups": groups, "norm_eps": 1e-5,
            "cross_attention_dim": context_dim, "in_channels": 4, "out_channels": 4,
            "transformer_layers_per_block": depth}


def text_config(width, layers, heads, vocab_size):
    return {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": 4 * width, "max_position_embeddings": 77,
            "vocab_size": vocab_size, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}


def presets(vocab_size):
    return {
        # the first shipped model (2.5M parameters)
        "small": {"vae": VAE_TINY,
                  "unet": unet_config([32, 64, 64], 1, [False, True, True], [2, 2, 2], 16, 64),
                  "text": text_config(64, 2, 2, vocab_size)},
        # the shipped model: 4 UNet levels (32x32 to 4x4 latents), cross-attention
        # at 8x8 and 4x4 and in the mid block; ~36 images/s on 2 CPU cores
        "cpu": {"vae": VAE_TINY,
                "unet": unet_config([32, 64, 96, 128], 1, [False, False, True, True],
                                    [2, 2, 2, 2], 16, 64),
                "text": text_config(64, 2, 2, vocab_size)},
        # for a GPU session: the same VAE (its checkpoint can be reused), cross-
        # attention from 16x16 down, wider text encoder; 9.5M parameters, ~19 MB fp16
        "base": {"vae": VAE_TINY,
                 "unet": unet_config([64, 96, 128, 128], 1, [False, True, True, True],
                                     [2, 2, 4, 4], 16, 128),
                 "text": text_config(128, 2, 4, vocab_size)},
    }


SIZE = 256            # native image size
LATENT = SIZE // 8    # 32
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}


def alphas_cumprod(device):
    s = SCHEDULE
    betas = torch.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5,
                           s["num_train_timesteps"], dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float().to(device)


# ---------------------------------------------------------------- options
# The command line, one dataclass per stage as recipe.sh runs them: each
# declares its options (argparse, in the order --help lists them) and holds
# their values in fields named as the options (dashes as underscores).


@dataclasses.dataclass
class RunOptions:
    """What every stage shares."""
    stage: str             # vae, decoder, unet or all
    out: str               # checkpoint folder, resumed from when it holds one
    device: str            # torch device: cpu, cuda
    preset: str            # model sizes, a key of presets()
    seed: int              # every generator and the initial weights derive from it
    threads: int           # CPU threads for torch
    ckpt_every: float      # seconds between checkpoints
    fresh_optimizer: bool  # resume weights with fresh AdamW moments (UNet, decoder);
    #                        listed by --help among stage 2's options

    @staticmethod
    def add_arguments(ap):
        ap.add_argument("--stage", choices=["vae", "decoder", "unet", "all"], default="all")
        ap.add_argument("--out", default=os.path.join(HERE, "runs", "default"),
                        help="checkpoint folder (resumed from when it holds one)")
        ap.add_argument("--device", default="cpu")
        ap.add_argument("--preset", default="cpu", choices=["small", "cpu", "base"])
        ap.add_argument("--seed", type=int, default=1)
        ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
        ap.add_argument("--ckpt-every", type=float, default=120,
                        help="seconds between checkpoints")


@dataclasses.dataclass
class VaeOptions:
    """Stage 1: the VAE (its batch size and edge weight serve stage 1b too)."""
    minutes_vae: float     # total training time over resumptions
    vae_steps: int         # stop at this step (0: time only)
    vae_batch: int         # images per step
    vae_crop: int          # crop side in pixels (256: whole images)
    vae_lr: float          # AdamW learning rate after 100 warm-up steps
    kl: float              # weight of the KL term
    edge: float            # extra L1 weight near colour edges
    anchor: float          # weight of latent channels 0-2 following the 8x8 colour
    latent_noise: float    # noise floor of the latents the decoder learns from

    @staticmethod
    def add_arguments(ap):
        ap.add_argument("--minutes-vae", type=float, default=12, help="total VAE training time")
        ap.add_argument("--vae-steps", type=int, default=0,
                        help="stop after this many steps (0: time)")
        ap.add_argument("--vae-batch", type=int, default=4)
        ap.add_argument("--vae-crop", type=int, default=256,
                        help="crop side; whole images (256) keep GroupNorm statistics as in use")
        ap.add_argument("--vae-lr", type=float, default=1e-3)
        ap.add_argument("--kl", type=float, default=1e-5)
        ap.add_argument("--edge", type=float, default=10.0,
                        help="extra L1 weight near colour edges (where the shapes are)")
        ap.add_argument("--anchor", type=float, default=1.0,
                        help="weight of the loss tying latent channels 0-2 to the 8x8-averaged "
                             "colour")
        ap.add_argument("--latent-noise", type=float, default=0.02,
                        help="noise floor of the latents the decoder learns from")


@dataclasses.dataclass
class DecoderOptions:
    """Stage 1b: the decoder alone."""
    dec_steps: int         # stop at this step (counted over resumptions)
    dec_lr: float          # peak learning rate
    dec_minutes: float     # total time: plan dec_steps from the measured rate (0: no)
    dec_schedule: str      # continue: cosine over steps 0 to dec_steps; run: this command's
    dec_warmup: int        # warm-up steps of dec_schedule run
    dec_noise: float       # noise added to the encoder's mean latents
    dec_focus: float       # share of each batch drawn as small stars
    dec_unet: float        # share decoded from the UNet's one-step prediction
    dec_tmin: int          # timesteps of those predictions: dec_tmin to dec_tmax
    dec_tmax: int
    dec_guidance: float    # their classifier-free guidance

    @staticmethod
    def add_arguments(ap):
        ap.add_argument("--dec-steps", type=int, default=0, help="decoder fine-tuning steps")
        ap.add_argument("--dec-lr", type=float, default=5e-4)
        ap.add_argument("--dec-minutes", type=float, default=0,
                        help="total decoder time (over resumptions): plan --dec-steps from the "
                             "rate measured over the first 120 steps to fill it (0: use "
                             "--dec-steps)")
        ap.add_argument("--dec-schedule", choices=["continue", "run"], default="continue",
                        help="continue: cosine over steps 0 to --dec-steps; run: --dec-warmup "
                             "steps, then cosine over this command's steps")
        ap.add_argument("--dec-warmup", type=int, default=50)
        ap.add_argument("--dec-noise", type=float, default=0.05)
        ap.add_argument("--dec-focus", type=float, default=0.0,
                        help="share of each batch drawn as small stars")
        ap.add_argument("--dec-unet", type=float, default=0.0,
                        help="share of each batch decoded from the trained UNet's one-step "
                             "prediction (needs OUT/unet.pt)")
        ap.add_argument("--dec-tmin", type=int, default=50)
        ap.add_argument("--dec-tmax", type=int, default=600)
        ap.add_argument("--dec-guidance", type=float, default=2.0)


@dataclasses.dataclass
class UnetOptions:
    """Stage 2: the text encoder and the UNet."""
    minutes: float         # total training time over resumptions
    steps: int             # stop at this step (0: time only; -1: planned to fill minutes)
    batch: int             # scenes per step
    lr: float              # AdamW learning rate after the warm-up
    warmup: int            # warm-up steps from fresh optimizer moments
    ema: float             # decay of the exported EMA weights
    uncond: float          # prompt dropout, for classifier-free guidance
    t_uniform: float       # share of timesteps uniform (the rest favour high noise)
    schedule: str          # cosine, cosine-run or constant (learning rate after warm-up)
    focus: float           # share of each batch drawn as small squares and stars
    edge_unet: float       # extra loss weight on latent pixels at colour edges
    edge_unet_tmax: int    # ... below this timestep
    t_range: tuple         # (lo, hi): timesteps drawn from this range only
    restart_from_ema: bool  # resume from the EMA weights, fresh optimizer moments
    parts: str             # folder for a compact checkpoint in <= 15 MB parts ("": none)
    cache: int             # scenes in the latent cache (0: encode every batch)

    @staticmethod
    def add_arguments(ap):
        ap.add_argument("--minutes", type=float, default=60, help="total UNet training time")
        ap.add_argument("--steps", type=int, default=0,
                        help="stop after this many steps (0: time; -1: as many as fit "
                             "--minutes, planned from the rate measured over the first 120 "
                             "steps)")
        ap.add_argument("--batch", type=int, default=64)
        ap.add_argument("--lr", type=float, default=1e-3)
        ap.add_argument("--warmup", type=int, default=100)
        ap.add_argument("--ema", type=float, default=0.998)
        ap.add_argument("--uncond", type=float, default=0.1, help="prompt dropout for guidance")
        ap.add_argument("--t-uniform", type=float, default=0.25,
                        help="share of timesteps drawn uniformly (the rest favour high noise)")
        ap.add_argument("--schedule", choices=["cosine", "cosine-run", "constant"],
                        default="cosine",
                        help="learning rate after the warm-up: cosine to a tenth over steps 0 "
                             "to --steps, over this command's steps (cosine-run), or constant")
        ap.add_argument("--fresh-optimizer", action="store_true",
                        help="resume the weights with fresh optimizer moments (UNet and "
                             "decoder stages)")
        ap.add_argument("--focus", type=float, default=0.0,
                        help="share of each batch drawn as small squares and stars "
                             "(fine-tuning)")
        ap.add_argument("--edge-unet", type=float, default=0.0,
                        help="extra UNet loss weight on latent pixels at colour edges "
                             "(below --edge-unet-tmax; needs --cache 0)")
        ap.add_argument("--edge-unet-tmax", type=int, default=500)
        ap.add_argument("--t-range", type=lambda v: tuple(int(x) for x in v.split(",")),
                        default=(0, 999), help="LO,HI: timesteps drawn from this range only")
        ap.add_argument("--restart-from-ema", action="store_true",
                        help="resume from the EMA weights with fresh optimizer moments "
                             "(what resuming from a compact checkpoint does)")
        ap.add_argument("--parts", default="",
                        help="also write a compact checkpoint (no optimizer state) as <=15 MB "
                             "parts into this folder at every checkpoint")
        ap.add_argument("--cache", type=int, default=-1,
                        help="scenes in the latent cache (0: encode every batch; "
                             "default 20000 on the CPU, 0 on a GPU)")


@dataclasses.dataclass
class Options:
    """train.py's command line, by stage."""
    run: RunOptions
    vae: VaeOptions
    dec: DecoderOptions
    unet: UnetOptions

    def flat(self):
        """Every option by name, as unet.pt records them ("args")."""
        return {k: v for part in (self.run, self.vae, self.dec, self.unet)
                for k, v in dataclasses.asdict(part).items()}


def parse_options(argv=None):
    """The command line as Options, checked, --cache's default resolved."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    kinds = (RunOptions, VaeOptions, DecoderOptions, UnetOptions)
    for kind in kinds:
        kind.add_arguments(ap)
    ns = vars(ap.parse_args(argv))
    o = Options(*(kind(**{f.name: ns[f.name] for f in dataclasses.fields(kind)})
                  for kind in kinds))
    assert o.flat().keys() == ns.keys(), "an option without a field, or a field without one"
    u = o.unet
    if u.cache < 0:
        u.cache = 0 if o.run.device.startswith("cuda") else 20000
    if u.edge_unet > 0 and u.cache > 0:
        sys.exit("--edge-unet weighs the loss by the scenes' images, which a latent cache "
                 "does not keep: add --cache 0")
    if o.dec.dec_minutes > 0 and o.dec.dec_schedule != "run":
        sys.exit("--dec-minutes plans this command's steps: its schedule is --dec-schedule run")
    return o


# ---------------------------------------------------------------- utilities


def step_gen(seed, step, device):
    """The data generator of one training step: a function of (seed, step) only."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def load_ckpt(path, map_location="cpu"):
    """torch.load of our own checkpoints (they hold plain Python objects too;
    torch >= 2.6 loads only tensors unless told)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def save_atomic(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def log(out, stage, text):
    line = time.strftime("%H:%M:%S ") + text
    print(line, flush=True)
    with open(os.path.join(out, f"log-{stage}.txt"), "a") as f:
        f.write(line + "\n")


def autocast(device):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def ema_update(ema, model, decay):
    with torch.no_grad():
        e, p = list(ema.parameters()), [q.detach() for q in model.parameters()]
        torch._foreach_mul_(e, decay)
        torch._foreach_add_(e, p, alpha=1 - decay)


def count_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- stage 1: VAE


def crop_batch(imgs, centers, crop, gen):
    """Random crop x crop windows, one per image, half of them around the first object."""
    n, _, s, _ = imgs.shape
    if crop >= s:
        return imgs
    dev = imgs.device
    ys = torch.randint(0, s - crop + 1, (n,), generator=gen, device=dev)
    xs = torch.randint(0, s - crop + 1, (n,), generator=gen, device=dev)
    near = torch.rand(n, generator=gen, device=dev) < 0.5
    jit = lambda: torch.randint(-crop // 3, crop // 3 + 1, (n,), generator=gen, device=dev)
    cy = (centers[:, 0, 1] * s).long() - crop // 2 + jit()
    cx = (centers[:, 0, 0] * s).long() - crop // 2 + jit()
    ys = torch.where(near, cy.clamp(0, s - crop), ys)
    xs = torch.where(near, cx.clamp(0, s - crop), xs)
    return torch.stack([imgs[i, :, ys[i]:ys[i] + crop, xs[i]:xs[i] + crop] for i in range(n)])


class Progress:
    """The bookkeeping of a stage's loop: seconds spent (over resumptions), a
    running mean of the loss, and when the next checkpoint is due."""

    def __init__(self, spent, every, decay=0.98):
        self.t0 = self.last = time.time()
        self.spent, self.every, self.decay, self.avg = spent, every, decay, None

    def seconds(self):
        return self.spent + time.time() - self.t0

    def add(self, loss):
        """Kept on the loss's device: no host synchronisation per step."""
        x = loss.detach().float()
        self.avg = x if self.avg is None else self.decay * self.avg + (1 - self.decay) * x

    def mean(self):
        return float(self.avg)

    def checkpoint_due(self):
        if time.time() - self.last <= self.every:
            return False
        self.last = time.time()
        return True


class StepPlan:
    """Plans a stage's step count to fill its time budget: the rate measured
    over this command's steps 20-120 (waiting for the GPU at both ends), less
    3%, for the time that is left."""

    def __init__(self, step0, out, stage, label=""):
        self.step0, self.out, self.stage, self.label, self.t20 = step0, out, stage, label, 0.0

    def update(self, step, steps, p, budget):
        """The step count to stop at: planned at step0 + 120, else steps."""
        k = step - self.step0
        if k not in (20, 120):
            return steps
        float(p.avg)  # waits for the GPU
        if k == 20:
            self.t20 = time.time()
            return steps
        rate = 100 / (time.time() - self.t20)
        steps = step + int(rate * (budget - p.seconds()) * 0.97)
        log(self.out, self.stage, f"{self.label}{rate:.2f} steps/s: planned {steps} steps in all")
        return steps


def optimizer_step(opt, loss, params):
    """One AdamW step on loss, gradients clipped to norm 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def edge_weight(x, w):
    """Per-pixel loss weight: 1, plus w within 2 pixels of a colour edge. Edges
    are a few percent of a scene's pixels but all of its shape; unweighted, the
    decoder learns to draw stars and triangles as blobs."""
    if w <= 0:
        return 1.0
    g = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().amax(1, keepdim=True)
    h = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().amax(1, keepdim=True)
    e = F.pad(g, (0, 1, 0, 0)) + F.pad(h, (0, 0, 0, 1))
    e = F.max_pool2d((e > 0.02).float(), 5, stride=1, padding=2)
    return 1.0 + w * e


def vae_loss(vae, x, gen, v, dev):
    """Stage 1's loss on images x: (l1, kl, anchor, total)."""
    with autocast(dev):
        mean, logvar = vae.encode(x)
        # the posterior sample plus a fixed noise floor: with a tiny KL term the
        # encoder otherwise separates colours by ~0.01 in latent space, the
        # decoder's GroupNorm amplifying that back, and the diffusion model
        # then neither needs nor manages to get the background colour right
        std = (0.5 * logvar).exp()
        z = mean + torch.randn(mean.shape, generator=gen, device=dev) * \
            torch.sqrt(std ** 2 + v.latent_noise ** 2)
        rec = vae.decode(z)
    rec = rec.float()
    l1 = ((rec - x).abs() * edge_weight(x, v.edge)).mean()
    kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).mean()
    # the anchor: the first three latent channels follow the image's colour
    # averaged over each 8x8 cell, so latents of different colours lie as far
    # apart as the colours themselves (the fourth channel is free for shape)
    anchor = F.mse_loss(mean[:, :3].float(), F.avg_pool2d(x, 8))
    return l1, kl, anchor, l1 + 0.1 * F.mse_loss(rec, x) + v.kl * kl + v.anchor * anchor


def train_vae(o, cfg):
    """Stage 1; returns the finished checkpoint (OUT/vae.pt)."""
    run, v = o.run, o.vae
    dev, out = run.device, run.out
    torch.manual_seed(run.seed)
    vae = AutoencoderKL(cfg["vae"]).to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=v.vae_lr, weight_decay=0.0)
    path = os.path.join(out, "vae.pt")
    step, spent = 0, 0.0
    if os.path.exists(path):
        ck = load_ckpt(path, map_location=dev)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, spent = ck["step"], ck["seconds"]
        if ck.get("done") and spent >= v.minutes_vae * 60 and step >= v.vae_steps:
            log(out, "vae", f"VAE trained ({step} steps, {spent / 60:.1f} min); skipping")
            return ck
        log(out, "vae", f"resuming VAE at step {step} ({spent / 60:.1f} min spent)")
    else:
        log(out, "vae", f"VAE {count_params(vae) / 1e6:.3f}M parameters, config {cfg['vae']}")
    p, budget = Progress(spent, run.ckpt_every), v.minutes_vae * 60

    def checkpoint(done=False, scale=None):
        save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                     "seconds": p.seconds(), "config": cfg["vae"], "done": done,
                     "scaling_factor": scale}, path)

    while p.seconds() < budget and (v.vae_steps <= 0 or step < v.vae_steps):
        gen = step_gen(run.seed, step, dev)
        sc = scenes.sample_scenes(v.vae_batch, gen, heldout="any", device=dev, layout="varied")
        x = crop_batch(scenes.render(sc, SIZE), sc.centers, v.vae_crop, gen) * 2 - 1
        for g in opt.param_groups:
            g["lr"] = v.vae_lr * min(1.0, (step + 1) / 100)
        l1, kl, anchor, loss = vae_loss(vae, x, gen, v, dev)
        optimizer_step(opt, loss, list(vae.parameters()))
        step += 1
        p.add(l1)
        if step % 25 == 0:
            log(out, "vae", f"step {step} l1 {p.mean():.4f} kl {kl.item():.3f} "
                f"anchor {anchor.item():.4f} {p.seconds() / 60:.1f} min")
        if p.checkpoint_due():
            checkpoint()
    scale = measure_scale(vae, run.seed, dev, out)
    log(out, "vae", f"VAE done at step {step}: l1 {p.mean():.4f}, scaling_factor {scale:.5f}")
    checkpoint(done=True, scale=scale)
    return load_ckpt(path, map_location=dev)


class Denoiser:
    """The trained text encoder + UNet (EMA weights of OUT/unet.pt) as a one-step
    denoiser, for the decoder stage: x0_pred(z0, prompts, t) is the clean latent
    the UNet predicts from z0 noised to t, with classifier-free guidance, i.e.
    latents as blurred as the UNet's own samples, paired with the true image."""

    def __init__(self, out, dev, tok):
        ck = load_ckpt(os.path.join(out, "unet.pt"), map_location=dev)
        cfg = ck["config"]
        self.text = CLIPTextModel(cfg["text"]).to(dev).eval().requires_grad_(False)
        self.unet = UNet2DConditionModel(cfg["unet"]).to(dev).eval().requires_grad_(False)
        self.text.load_state_dict(ck["ema_text"])
        self.unet.load_state_dict(ck["ema_unet"])
        self.tok, self.dev, self.ac = tok, dev, alphas_cumprod(dev)
        self.empty = torch.tensor(tok.encode(""), device=dev)

    @torch.no_grad()
    def x0_pred(self, z0, sc, t, gen, prng, guidance):
        n = len(z0)
        ids = prompt_ids(sc, self.tok, prng).to(self.dev)
        ids = torch.cat([ids, self.empty[None].expand(n, -1)])
        ab = self.ac[t][:, None, None, None]
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * torch.randn(z0.shape, generator=gen,
                                                            device=self.dev)
        with autocast(self.dev):
            v = self.unet(torch.cat([zt, zt]), torch.cat([t, t]), self.text(ids)).float()
        v = v[n:] + guidance * (v[:n] - v[n:])
        return ab.sqrt() * zt - (1 - ab).sqrt() * v


def focused_scenes(n, share, shapes, gen, dev, **kw):
    """n scenes (sample_scenes' keywords), a share of them small objects of the
    given shapes (the hard cases: a small star's points are a few pixels
    wide), the rest any, in random order."""
    sc = scenes.sample_scenes(8 * n, gen, device=dev, **kw)
    hard = (sc.size == 0) & torch.isin(sc.shape, torch.tensor(shapes, device=dev))
    k = round(share * n)
    order = torch.cat([torch.nonzero(hard)[:k, 0], torch.nonzero(~hard)[:, 0]])[:n]
    return sc.select(order[torch.randperm(len(order), generator=gen, device=dev)])


def decoder_scenes(d, batch, gen, dev):
    """The decoder stage's scenes: --dec-focus of them small stars (the shape
    the decoder draws worst), the rest any. Layout canonical, combinations held
    out of the UNet's data excluded, when the denoiser feeds the decoder."""
    layout, heldout = ("canonical", "exclude") if d.dec_unet > 0 else ("varied", "any")
    return focused_scenes(batch, d.dec_focus, [3], gen, dev, heldout=heldout, layout=layout)


def decoder_batch(o, vae, den, scale, step, gen, dev):
    """Step's images x and the latents z the decoder learns to draw them from:
    the encoder's mean plus --dec-noise, the first --dec-unet share of them the
    UNet's one-step prediction instead (den, a Denoiser, or None)."""
    d = o.dec
    sc = decoder_scenes(d, o.vae.vae_batch, gen, dev) if (den is not None or d.dec_focus > 0) \
        else scenes.sample_scenes(o.vae.vae_batch, gen, heldout="any", device=dev,
                                  layout="varied")
    x = scenes.render(sc, SIZE) * 2 - 1
    with torch.no_grad(), autocast(dev):
        mean = vae.encode(x)[0].float()
    z = mean + d.dec_noise * torch.randn(mean.shape, generator=gen, device=dev)
    if den is not None:  # the first share of the batch: the UNet's predictions
        m = round(d.dec_unet * len(z))
        t = torch.randint(d.dec_tmin, d.dec_tmax + 1, (m,), generator=gen, device=dev)
        z[:m] = den.x0_pred(mean[:m] * scale, sc.select(slice(0, m)), t, gen,
                            random.Random(o.run.seed * 31 + step), d.dec_guidance) / scale
    return x, z


def decoder_lr(d, step, step0, steps):
    """Cosine over steps 0 to `steps`: a run that continues an earlier one
    (stage 3 after stage 1b) starts part-way down the curve; or (--dec-schedule
    run) a warm-up and cosine over this command's steps, step0 to `steps`."""
    if d.dec_schedule == "run":
        done = (step - step0) / (steps - step0) if steps > step0 else 0.0
        return d.dec_lr * min(1.0, (step - step0 + 1) / d.dec_warmup) \
            * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return d.dec_lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def train_decoder(o, cfg, tok):
    """Stage 1b: the decoder alone (encoder, latent space and scaling factor
    frozen), on the encoder's mean latents with a small noise (--dec-noise), so
    it decodes shapes sharply; the UNet's latents stay valid. With --dec-unet P
    a share P of the batch is the trained UNet's one-step prediction from the
    noised latent instead (Denoiser), so the decoder learns to draw the UNet's
    samples sharply. Resumable."""
    run, d = o.run, o.dec
    dev, out = run.device, run.out
    path = os.path.join(out, "vae.pt")
    ck = load_ckpt(path, map_location=dev)
    if not ck.get("done"):
        sys.exit("the VAE stage has not finished: run --stage vae first")
    vae = AutoencoderKL(cfg["vae"]).to(dev)
    vae.load_state_dict(ck["model"])
    dec_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(dec_params, lr=d.dec_lr, weight_decay=0.0)
    step, spent = ck.get("decoder_step", 0), ck.get("decoder_seconds", 0.0)
    if ck.get("decoder_opt") and not run.fresh_optimizer:
        opt.load_state_dict(ck["decoder_opt"])
    log(out, "vae", f"decoder fine-tuning from step {step} ({spent / 60:.1f} min spent)")
    p = Progress(spent, run.ckpt_every)

    def checkpoint():
        ck.update({"model": vae.state_dict(), "decoder_opt": opt.state_dict(),
                   "decoder_step": step, "decoder_seconds": p.seconds()})
        save_atomic(ck, path)

    den = Denoiser(out, dev, tok) if d.dec_unet > 0 else None
    scale = ck["scaling_factor"]
    step0, budget, steps = step, d.dec_minutes * 60, d.dec_steps
    plan = StepPlan(step, out, "vae", "decoder ") if budget > 0 else None
    if plan:  # plan the step count from the measured rate
        steps = 0
    while (step < steps) if budget <= 0 else \
            (p.seconds() < budget and (steps <= 0 or step < steps)):
        if plan:
            steps = plan.update(step, steps, p, budget)
        gen = step_gen(run.seed + 5, step, dev)
        x, z = decoder_batch(o, vae, den, scale, step, gen, dev)
        for g in opt.param_groups:
            g["lr"] = decoder_lr(d, step, step0, steps)
        with autocast(dev):
            rec = vae.decode(z).float()
        l1 = ((rec - x).abs() * edge_weight(x, o.vae.edge)).mean()
        optimizer_step(opt, l1 + 0.1 * F.mse_loss(rec, x), dec_params)
        step += 1
        p.add(l1)
        if step % 25 == 0:
            log(out, "vae", f"decoder step {step} l1 {p.mean():.4f} {p.seconds() / 60:.1f} min")
        if p.checkpoint_due():
            checkpoint()
    checkpoint()
    d.dec_steps = steps  # as run (planned): what unet.pt records of a --stage all run
    log(out, "vae", f"decoder done at step {step}")


@torch.no_grad()
def measure_scale(vae, seed, dev, out=None):
    """1 / std of the latent means of 96 full-size scenes. Also logs the health
    check of the latent space: the smallest distance between the mean (scaled)
    latents of two background colours. Near 0 (the first model's VAE: 0.006)
    the diffusion model cannot tell those backgrounds apart: retrain the VAE."""
    gen = torch.Generator(device=dev).manual_seed(seed + 7)
    zs, bgs = [], []
    for _ in range(6):
        sc = scenes.sample_scenes(16, gen, heldout="any", device=dev)
        with autocast(dev):
            zs.append(vae.encode(scenes.render(sc, SIZE) * 2 - 1)[0].float())
        bgs.append(sc.bg)
    z, bg = torch.cat(zs), torch.cat(bgs)
    scale = float(1.0 / z.std())
    means = torch.stack([(z[bg == b] * scale).mean((0, 2, 3)) for b in range(8)])
    d = torch.cdist(means, means) + torch.eye(8, device=dev) * 1e9
    if out:
        log(out, "vae", f"latent health: smallest distance between background colours "
            f"{d.min().item():.3f} (want > 0.5), median {d.median().item():.3f}")
    return scale


# ---------------------------------------------------------------- stage 2: text encoder + UNet


class Latents:
    """Scene latents for stage 2: drawn and encoded each step (GPU), or from a
    cache of --cache scenes encoded once (CPU, where encoding costs as much as
    a UNet step). Either way each item comes with its scene row for prompts."""

    def __init__(self, cache, seed, vae, scale, out, dev, vae_step):
        self.seed, self.vae, self.scale, self.dev = seed, vae, scale, dev
        self.cache = None
        if cache > 0:
            path = os.path.join(out, f"latents-{cache}-seed{seed}-vae{vae_step}.pt")
            if os.path.exists(path):
                self.cache = load_ckpt(path, map_location=dev)
            else:
                self.cache = self.build(cache, out)
                save_atomic(self.cache, path)

    @torch.no_grad()
    def encode(self, sc, with_images=False):
        x = scenes.render(sc, SIZE) * 2 - 1
        with autocast(self.dev):
            z = self.vae.encode(x)[0].float() * self.scale
        return (z, x) if with_images else z

    def build(self, n, out):
        gen = torch.Generator(device=self.dev).manual_seed(self.seed + 1)
        sc = scenes.sample_scenes(n, gen, heldout="exclude", device=self.dev)
        zs, t = [], time.time()
        for i in range(0, n, 64):
            part = sc.select(slice(i, i + 64))
            zs.append(self.encode(part).half())
            if (i // 64) % 20 == 0:
                log(out, "unet", f"latent cache {i + 64}/{n} ({time.time() - t:.0f} s)")
        return {"z": torch.cat(zs), "scenes": sc}

    def batch(self, gen, n):
        """(latents [n, 4, 32, 32], Scenes) drawn from the cache"""
        c = self.cache
        idx = torch.randint(0, len(c["z"]), (n,), generator=gen, device=self.dev)
        s = c["scenes"]
        sc = s.select(idx)
        return c["z"][idx].float(), sc


class Prefetch:
    """make(step) for step, step + 1, ... in a background thread, `depth`
    ahead, so drawing scenes and writing prompts on the CPU overlaps the GPU's
    work. Items come back in step order; an exception in make is re-raised."""

    def __init__(self, make, step, depth=3):
        self.q = queue.Queue(depth)
        self.make = make
        threading.Thread(target=self._run, args=(step,), daemon=True).start()

    def _run(self, step):
        while True:
            try:
                self.q.put((step, self.make(step), None))
            except BaseException as e:  # noqa: B902 (handed to the consumer)
                self.q.put((step, None, e))
                return
            step += 1

    def get(self, step):
        s, item, err = self.q.get()
        if err is not None:
            raise err
        assert s == step, (s, step)
        return item


def prompt_ids(sc, tok, prng):
    """[n, 77] token ids of one random training prompt per scene."""
    rows = sc.to("cpu")  # one device-to-host copy, not one per attribute
    return torch.tensor([tok.encode(scenes.prompt(rows.row(i), prng)) for i in range(len(sc))])


def save_parts(obj, folder, part=15 << 20):
    """obj saved as folder/unet.pt.partNN files of at most `part` bytes each
    (`cat unet.pt.part* > unet.pt` joins them): how a GPU machine hands its
    checkpoint back, where files over 16 MiB do not travel."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(0, len(data), part):
        name = os.path.join(folder, f"unet.pt.part{i // part:02d}")
        with open(name + ".tmp", "wb") as f:
            f.write(data[i:i + part])
        os.replace(name + ".tmp", name)
        names.append(name)
    for f in os.listdir(folder):
        if f.startswith("unet.pt.part") and os.path.join(folder, f) not in names:
            os.remove(os.path.join(folder, f))


def latent_edge_weight(x, w, t, t_max):
    """Per-latent-pixel loss weight for the UNet: 1, plus w times the share of
    colour-edge pixels in (and next to) each 8x8 cell, for timesteps below
    t_max. A small star's points are a few latent pixels of the 1024; with an
    even weight the UNet learns to draw them as a round blob, as the decoder
    did before edge_weight. Only at low noise, where the layout is already
    decided: weighting by a property of the image biases the prediction
    towards images with more edges where several images are still possible."""
    e = edge_weight(x, 1.0) - 1.0                                   # [n, 1, H, W] in {0, 1}
    e = F.max_pool2d(F.avg_pool2d(e, 8), 3, stride=1, padding=1)    # [n, 1, H/8, W/8]
    return 1.0 + w * e * (t < t_max).float()[:, None, None, None]


@dataclasses.dataclass
class UnetRun:
    """Stage 2's models, optimizer and how far the run has come."""
    text: CLIPTextModel
    unet: UNet2DConditionModel
    ema_text: CLIPTextModel        # the exported weights: EMA of text and unet
    ema_unet: UNet2DConditionModel
    opt: torch.optim.Optimizer     # AdamW over params
    params: list                   # text's, then unet's parameters
    step: int = 0                  # steps done, over resumptions
    seen: int = 0                  # images seen
    spent: float = 0.0             # seconds spent before this command
    fresh: bool = True             # Adam moments start at zero: warm the lr up from here


def unet_models(cfg, dev, lr):
    """Stage 2's models as initialised (the EMA copies equal), and AdamW."""
    text, unet = CLIPTextModel(cfg["text"]).to(dev), UNet2DConditionModel(cfg["unet"]).to(dev)
    ema_text = CLIPTextModel(cfg["text"]).to(dev)
    ema_unet = UNet2DConditionModel(cfg["unet"]).to(dev)
    ema_text.load_state_dict(text.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    params = list(text.parameters()) + list(unet.parameters())
    adamw = dict(lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    try:  # one kernel for all parameters on a GPU
        opt = torch.optim.AdamW(params, fused=True, **adamw) if dev.startswith("cuda") \
            else torch.optim.AdamW(params, **adamw)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(params, **adamw)
    return UnetRun(text, unet, ema_text, ema_unet, opt, params)


def resume_unet(r, path, o, cfg):
    """r continued from the checkpoint at path, if there is one."""
    dev, out, u = o.run.device, o.run.out, o.unet
    if not os.path.exists(path):
        log(out, "unet", f"UNet {count_params(r.unet) / 1e6:.3f}M, text "
            f"{count_params(r.text) / 1e6:.3f}M parameters; configs {cfg['unet']} {cfg['text']}")
        return
    ck = load_ckpt(path, map_location=dev)
    if u.restart_from_ema:  # as if from a compact checkpoint holding EMA weights only
        ck = {k: v for k, v in ck.items() if k not in ("text", "unet", "opt")}
    elif o.run.fresh_optimizer:  # as if from a compact checkpoint (no optimizer state)
        ck = {k: v for k, v in ck.items() if k != "opt"}
    r.fresh = "opt" not in ck
    for k in ("text", "unet", "ema_text", "ema_unet"):
        getattr(r, k).load_state_dict(ck[k if k in ck else "ema_" + k])  # lean: EMA only
    if "opt" in ck:
        r.opt.load_state_dict(ck["opt"])
    r.step, r.spent, r.seen = ck["step"], ck["seconds"], ck["images"]
    log(out, "unet", f"resuming at step {r.step} ({r.seen} images, {r.spent / 60:.1f} min "
        "spent)" + ("" if "opt" in ck else "; compact checkpoint: fresh optimizer moments"))


def save_unet(r, path, info, parts):
    """OUT/unet.pt, and with --parts the compact checkpoint: EMA weights fp32,
    training weights bf16, no optimizer."""
    save_atomic({"text": r.text.state_dict(), "unet": r.unet.state_dict(),
                 "ema_text": r.ema_text.state_dict(), "ema_unet": r.ema_unet.state_dict(),
                 "opt": r.opt.state_dict(), **info}, path)
    if parts:
        half = lambda sd: {k: v.bfloat16() for k, v in sd.items()}
        save_parts({"text": half(r.text.state_dict()), "unet": half(r.unet.state_dict()),
                    "ema_text": r.ema_text.state_dict(), "ema_unet": r.ema_unet.state_dict(),
                    **info}, parts)


def host_batch(o, tok, s):
    """Step s's scenes and prompt ids, drawn on the CPU (no cache)."""
    u, seed = o.unet, o.run.seed
    g = step_gen(seed + 3, s, "cpu")
    sc = focused_scenes(u.batch, u.focus, [1, 3], g, "cpu", heldout="exclude") \
        if u.focus > 0 else scenes.sample_scenes(u.batch, g, heldout="exclude")
    ids = prompt_ids(sc, tok, random.Random(seed * 7919 + s))
    if o.run.device.startswith("cuda"):
        sc, ids = sc.pin(), ids.pin_memory()
    return sc, ids


def unet_batch(o, data, pre, tok, step, gen):
    """Step's clean latents z0 [n, 4, 32, 32], images x [n, 3, 256, 256]
    (None from the latent cache) and prompt ids [n, 77]."""
    dev = o.run.device
    if pre is None:
        z0, sc = data.batch(gen, o.unet.batch)
        return z0, None, prompt_ids(sc, tok, random.Random(o.run.seed * 7919 + step)).to(dev)
    sc, ids = pre.get(step)
    sc, ids = sc.to(dev, non_blocking=True), ids.to(dev, non_blocking=True)
    z0, x = data.encode(sc, with_images=True)
    return z0, x, ids


def timesteps(u, n, gen, dev):
    """n timesteps in --t-range: a share --t-uniform uniform, the rest weighted
    towards high noise (density ~ 1/sqrt(1 - t/1000)), where the prompt
    decides the layout."""
    x = torch.rand(n, generator=gen, device=dev)
    skew = torch.rand(n, generator=gen, device=dev) >= u.t_uniform
    x = torch.where(skew, 1 - x * x, x)
    lo, hi = u.t_range
    return (lo + x * (hi + 1 - lo)).long().clamp(lo, hi)


def unet_lr(u, r, step0, steps):
    """The warm-up from fresh moments, then (unless --schedule constant) a
    cosine to a tenth over steps 0 to `steps` or (cosine-run) step0 to steps."""
    lr = u.lr * min(1.0, (r.step - (step0 if r.fresh else 0) + 1) / u.warmup)
    if steps > 0 and u.schedule != "constant":
        done = r.step / steps if u.schedule == "cosine" else \
            (r.step - step0) / max(1, steps - step0)
        lr *= 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done)))
    return lr


def unet_loss(r, u, z0, x, ids, t, gen, ac, dev):
    """v-prediction loss of the UNet on z0 noised to t (ac: alphas_cumprod);
    with --edge-unet weighted towards the latent pixels at colour edges of x."""
    eps = torch.randn(z0.shape, generator=gen, device=dev)
    ab = ac[t][:, None, None, None]
    zt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * z0
    with autocast(dev):
        pred = r.unet(zt, t, r.text(ids))
    if u.edge_unet > 0:  # parse_options made sure the images are there (no cache)
        w = latent_edge_weight(x, u.edge_unet, t, u.edge_unet_tmax)
        return ((pred.float() - v) ** 2 * w).mean() / w.mean()
    return F.mse_loss(pred.float(), v)


def unet_step(r, o, batch, gen, empty, ac, lr):
    """One training step on batch (z0, x, ids), prompts dropped to empty at
    --uncond, at learning rate lr; returns the loss."""
    u, dev = o.unet, o.run.device
    z0, x, ids = batch
    drop = torch.rand(len(ids), generator=gen, device=dev) < u.uncond
    ids = torch.where(drop[:, None], empty[None], ids)
    t = timesteps(u, len(ids), gen, dev)
    for g in r.opt.param_groups:
        g["lr"] = lr
    loss = unet_loss(r, u, z0, x, ids, t, gen, ac, dev)
    optimizer_step(r.opt, loss, r.params)
    r.step += 1
    r.seen += len(ids)
    decay = min(u.ema, (1 + r.step) / (10 + r.step))
    ema_update(r.ema_text, r.text, decay)
    ema_update(r.ema_unet, r.unet, decay)
    return loss


def train_unet(o, cfg, vae_ck, tok):
    """Stage 2: the text encoder and the UNet, on latents of the frozen VAE."""
    run, u = o.run, o.unet
    dev, out = run.device, run.out
    torch.manual_seed(run.seed + 2)
    vae = AutoencoderKL(cfg["vae"]).to(dev)
    vae.load_state_dict(vae_ck["model"])
    vae.eval().requires_grad_(False)
    scale = vae_ck["scaling_factor"]
    r = unet_models(cfg, dev, u.lr)
    path = os.path.join(out, "unet.pt")
    resume_unet(r, path, o, cfg)
    data = Latents(u.cache, run.seed, vae, scale, out, dev, vae_ck["step"])
    ac = alphas_cumprod(dev)
    empty = torch.tensor(tok.encode(""), device=dev)
    p, budget = Progress(r.spent, run.ckpt_every, decay=0.99), u.minutes * 60
    pre = Prefetch(lambda s: host_batch(o, tok, s), r.step) if data.cache is None else None
    step0, steps = r.step, u.steps
    plan = StepPlan(r.step, out, "unet") if steps < 0 else None
    if plan:  # plan the step count from the measured rate
        steps = 0

    def checkpoint():
        save_unet(r, path, {"step": r.step, "images": r.seen, "seconds": p.seconds(),
                            "config": cfg, "scaling_factor": scale,
                            "args": {**o.flat(), "steps": steps}}, u.parts)

    while p.seconds() < budget and (steps <= 0 or r.step < steps):
        if plan:
            steps = plan.update(r.step, steps, p, budget)
        gen = step_gen(run.seed + 3, r.step, dev)
        batch = unet_batch(o, data, pre, tok, r.step, gen)
        lr = unet_lr(u, r, step0, steps)
        p.add(unet_step(r, o, batch, gen, empty, ac, lr))
        if r.step % 50 == 0:
            el = p.seconds()
            log(out, "unet", f"step {r.step} loss {p.mean():.4f} images {r.seen} "
                f"{el / 60:.1f} min {r.seen / max(el, 1e-9):.1f} img/s")
        if p.checkpoint_due():
            checkpoint()
    checkpoint()
    log(out, "unet", f"stopped at step {r.step}, {r.seen} images, "
        f"{p.seconds() / 60:.1f} min in this stage")


# ---------------------------------------------------------------- main


def main():
    o = parse_options()
    run = o.run
    torch.set_num_threads(run.threads)
    if run.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    os.makedirs(run.out, exist_ok=True)
    merges = learn_merges(GRAMMAR_WORDS)
    tok = Tokenizer(build_vocab(merges), merges)
    cfg = presets(len(tok.vocab))[run.preset]
    meta = os.path.join(run.out, "run.json")
    if os.path.exists(meta):
        with open(meta) as f:
            old = json.load(f)
        if old["preset"] != run.preset or old["seed"] != run.seed:
            sys.exit(f"{run.out} holds a run with preset {old['preset']} seed {old['seed']}")
    else:
        with open(meta, "w") as f:
            json.dump({"preset": run.preset, "seed": run.seed, "config": cfg}, f, indent=1)
    vae_ck = None
    if run.stage in ("vae", "all"):
        vae_ck = train_vae(o, cfg)
    if run.stage in ("decoder", "all") and (o.dec.dec_steps > 0 or o.dec.dec_minutes > 0):
        train_decoder(o, cfg, tok)
    if run.stage in ("unet", "all"):
        if vae_ck is None:
            vae_ck = load_ckpt(os.path.join(run.out, "vae.pt"), map_location=run.device)
        if not vae_ck.get("done"):
            sys.exit("the VAE stage has not finished: run --stage vae first")
        train_unet(o, cfg, vae_ck, tok)


if __name__ == "__main__":
    main()
