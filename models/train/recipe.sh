#!/bin/sh
# recipe.sh: the shipped default model's training run, exactly (MODEL_CARD.md).
# Every stage is seeded by (seed, step) and stops at a step count, so a re-run
# gives the same weights up to floating-point summation order; each command
# resumes from runs/default when it holds a checkpoint, so an interrupted run
# continues where it stopped. On the 2 CPU cores of the development machine:
# about 13 (VAE) + 5 (latent cache) + 78 (UNet) + 30 (decoder, 1 thread) minutes.
# The last line exports the model to ../default (models/default).
#   sh recipe.sh [PYTHON]      (run from anywhere; PYTHON needs torch + numpy)
set -e
cd "$(dirname "$0")"
PY=${1:-python3}
OUT=runs/default
# stage 1: the VAE, on 128x128 crops (half around an object), then on whole
# 256x256 scenes (GroupNorm statistics as in use)
$PY train.py --stage vae --out $OUT --vae-steps 2132 --minutes-vae 1e9 \
    --vae-crop 128 --vae-batch 8 --vae-lr 2e-3
$PY train.py --stage vae --out $OUT --vae-steps 3377 --minutes-vae 1e9 \
    --vae-crop 256 --vae-batch 4 --vae-lr 7e-4
# stage 2: text encoder + UNet on 12000 cached scene latents
$PY train.py --stage unet --out $OUT --steps 2600 --minutes 1e9 --batch 64 \
    --lr 1.5e-3 --warmup 200 --cache 12000
# stage 1b: the decoder alone (the latent space the UNet learned stays as it is)
$PY train.py --stage decoder --out $OUT --dec-steps 1500 --vae-batch 4
$PY export.py --ckpt $OUT --out ../default --defaults euler,20,2
