#!/bin/sh
# gpu.sh: the UNet stage of the `base` preset on a GPU machine (recipe.sh's
# stage 2), with the VAE of runs/base/vae.pt, or else runs/default/vae.pt
# (ignored by git: the device call must carry the one it uses).
# Plans its step count from the rate it measures (--steps -1) to fill MINUTES,
# and writes a compact checkpoint (EMA weights fp32, training weights bf16, no
# optimizer state) as <= 15 MB parts into PARTS every minute and at the end,
# so the weights come back even if the call is cut off. Back here:
#   cat PARTS/unet.pt.part* > runs/base/unet.pt     (runs/base/vae.pt stays)
#   then recipe.sh's last two commands (stage 3, the decoder, and the export)
#   usage: sh models/train/gpu.sh PARTS [MINUTES [more train.py options]]
# MINUTES is the stage's total over resumptions (a run continued from a
# checkpoint in runs/base counts the minutes it already spent).
set -e
PARTS=$(realpath "$1")
MIN=${2:-8}
shift; [ $# -gt 0 ] && shift
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
${PY:-python3} -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
RUN=runs/base
mkdir -p $RUN
[ -f $RUN/vae.pt ] || cp runs/default/vae.pt $RUN/
PYTHONUNBUFFERED=1 ${PY:-python3} train.py --stage unet --device cuda --preset base --out $RUN \
    --steps -1 --minutes "$MIN" --batch 1024 --lr 1.5e-3 --warmup 300 --ema 0.999 \
    --threads 4 --ckpt-every 60 --parts "$PARTS" "$@"
cp $RUN/log-unet.txt $RUN/run.json "$PARTS"/
