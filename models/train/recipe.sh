#!/bin/sh
# recipe.sh: the shipped default model's training run, exactly (MODEL_CARD.md).
# Every stage is seeded by (seed, step) and stops at a step count, so a re-run
# gives the same weights up to floating-point summation order; each command
# resumes from $OUT when it holds a checkpoint, so an interrupted run continues
# where it stopped (except the UNet commands after the first, which start
# fresh optimizer moments: rerun each only from the end of the one before).
# Stages 1, 1b, 3, 4, 5 and 6 ran on the 2 CPU cores of the development
# machine (about 13 + 31 + 31 + 40 + 73 + 29 minutes); stages 2, 7, 8 and 9 on
# one H200 GPU (11.4 + 5.8 + 2.0 + 2.6 minutes, through gpu.sh and
# gpu-tune.sh, which planned the step counts below from their measured rate;
# given explicitly here, the first 120 steps of each GPU command get the
# cosine decay that was applied there only once the steps were planned).
# Stage 6 ran as two commands, --steps 9025 then (without --fresh-optimizer,
# resuming its moments) --steps 9925: the same run. The "cosine-run" and
# "--dec-schedule run" commands (7-9) count their schedule from the step they
# start at, so one interrupted and rerun is not the same run. DEVICE=cpu runs
# the GPU stages on the CPU: about three days at ~15 images/s.
#   sh recipe.sh [PYTHON]      (run from anywhere; PYTHON needs torch + numpy)
# The last line exports the model to ../default (models/default).
set -e
cd "$(dirname "$0")"
PY=${1:-python3}
DEV=${DEVICE:-cuda}
OUT=runs/base
T="$PY train.py --preset base --out $OUT"
if [ "$DEV" = cuda ] && ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "recipe.sh: stages 2, 7, 8 and 9 need a GPU (or DEVICE=cpu: about three days)" >&2
    exit 1
fi
# stage 1: the VAE, on 128x128 crops (half around an object), then on whole
# 256x256 scenes (GroupNorm statistics as in use)
$T --stage vae --vae-steps 2132 --minutes-vae 1e9 --vae-crop 128 --vae-batch 8 --vae-lr 2e-3
$T --stage vae --vae-steps 3377 --minutes-vae 1e9 --vae-crop 256 --vae-batch 4 --vae-lr 7e-4
# stage 1b: the decoder alone (encoder and latent space frozen from here on)
$T --stage decoder --dec-steps 1500 --vae-batch 4
# stage 2: text encoder + UNet, scenes drawn and encoded every step; 2.44M images
U="$T --stage unet --device $DEV --minutes 1e9 --batch 1024 --ema 0.999 --threads 4"
$U --steps 1755 --lr 1.5e-3 --warmup 300
$U --steps 2384 --lr 8e-4 --warmup 100 --t-uniform 0.5 --restart-from-ema
# stage 3: the decoder again, half of each batch the UNet's own one-step
# predictions (so it draws the UNet's samples sharply), 35% small stars
$T --stage decoder --dec-steps 3500 --vae-batch 8 --dec-unet 0.5 --dec-focus 0.35 --dec-lr 3e-4
# stage 4: the UNet fine-tuned on the CPU on its weak spot: half of each batch
# small squares and stars, timesteps uniform in [100, 700], constant lr 5e-5,
# batch 16, from stage 2's weights with fresh AdamW moments (the shipped run
# resumed from the compact checkpoint gpu.sh returns, whose training weights
# are bf16: the only difference from this command)
$T --stage unet --device cpu --cache 0 --steps 4225 --minutes 1e9 --batch 16 --lr 5e-5 \
    --warmup 50 --schedule constant --focus 0.5 --t-range 100,700 --t-uniform 1.0 \
    --ema 0.999 --fresh-optimizer
# stage 5: the same on the CPU at low noise, the loss weighted towards the
# latent pixels at colour edges (the outlines): 60% small squares and stars,
# timesteps uniform in [0, 500], lr 8e-5 constant, fresh AdamW moments
$T --stage unet --device cpu --cache 0 --steps 8125 --minutes 1e9 --batch 16 --lr 8e-5 \
    --warmup 50 --schedule constant --focus 0.6 --t-range 0,500 --t-uniform 1.0 \
    --edge-unet 6 --edge-unet-tmax 500 --ema 0.999 --fresh-optimizer
# stage 6: all timesteps again (stage 5 alone lost what is decided at high
# noise), 30% small squares and stars, the same edge weighting, EMA 0.995
$T --stage unet --device cpu --cache 0 --steps 9925 --minutes 1e9 --batch 16 --lr 5e-5 \
    --warmup 50 --schedule constant --focus 0.3 --t-uniform 0.5 \
    --edge-unet 6 --edge-unet-tmax 500 --ema 0.995 --fresh-optimizer
# stage 7: the UNet on the GPU at stage 6's mixture (30% small squares and
# stars, half of the timesteps uniform, edge weighting below t = 500), batch
# 1024, lr 3e-4 with 100 warm-up steps and a cosine to a tenth over this
# command's steps, EMA 0.998, from stage 6's EMA weights with fresh AdamW
# moments (on the device: a lean checkpoint, gpu-tune.sh); 1.19M images
$T --stage unet --device $DEV --cache 0 --threads 4 --steps 11091 --minutes 1e9 --batch 1024 \
    --lr 3e-4 --warmup 100 --schedule cosine-run --ema 0.998 --focus 0.3 --t-uniform 0.5 \
    --edge-unet 6 --edge-unet-tmax 500 --restart-from-ema
# stages 8 and 9: the decoder on the GPU, as stage 3 (half of each batch the
# new UNet's one-step predictions, now with guidance 1.5, the model's
# setting; 35% small stars) at batch 64: 1097 steps from fresh AdamW moments,
# lr 2e-4, then 1530 more (a second device call, the moments resumed), lr
# 1.5e-4, each with 50 warm-up steps and a cosine to 0 over its steps
D="$T --stage decoder --device $DEV --threads 4 --vae-batch 64 --dec-unet 0.5 --dec-focus 0.35 \
    --dec-guidance 1.5 --dec-schedule run --dec-warmup 50"
$D --dec-steps 4597 --dec-lr 2e-4 --fresh-optimizer
$D --dec-steps 6127 --dec-lr 1.5e-4
$PY export.py --ckpt $OUT --out ../default --defaults dpmpp_2m,10,1.5
