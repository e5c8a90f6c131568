#!/bin/sh
# gpu-tune.sh: stages 7 and 8 of the `base` preset on a GPU machine (the
# device tool), continuing RUN (default runs/base; it must hold unet.pt and
# vae.pt, lean ones being enough: see MODEL_CARD.md, "Continue on a GPU").
#   stage 7: the UNet, UNET_MIN minutes at batch 1024, 30% small squares and
#            stars, the loss weighted at the outlines (--edge-unet), a warm-up
#            and cosine over this command's steps (planned from the measured
#            rate); a compact checkpoint goes into PARTS every minute.
#   stage 8: the decoder, DEC_MIN minutes at batch 64, half of each batch the
#            new UNet's one-step predictions, 35% small stars; vae.pt is copied
#            into PARTS at the end.
# Back here: cat PARTS/unet.pt.part* > RUN/unet.pt; cp PARTS/vae.pt RUN/; export.
#   usage: sh models/train/gpu-tune.sh PARTS UNET_MIN DEC_MIN
# (DEVICE, UNET_BATCH, DEC_BATCH, DEC_LR override cuda, 1024, 64, 2e-4: the
# first three for a CPU dry run.)
set -e
mkdir -p "$1"
PARTS=$(realpath "$1")
UM=$2 DM=$3
cd "$(dirname "$0")"
RUN=${RUN:-runs/base} PY=${PY:-python3} DEV=${DEVICE:-cuda}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__)"
# the minutes options are totals over resumptions: add this command's to what was spent
spent() { $PY -c "import torch; c = torch.load('$RUN/$1', map_location='cpu'); print(c.get('$2', 0) / 60 + $3)"; }
T="$PY train.py --preset base --out $RUN --device $DEV --threads 4 --ckpt-every 60"
if [ "$UM" != 0 ]; then  # UNET_MIN 0: the decoder only
PYTHONUNBUFFERED=1 $T --stage unet --steps -1 --minutes "$(spent unet.pt seconds "$UM")" \
    --batch "${UNET_BATCH:-1024}" --lr 3e-4 --warmup 100 --schedule cosine-run --ema 0.998 \
    --focus 0.3 --t-uniform 0.5 --edge-unet 6 --edge-unet-tmax 500 --cache 0 --parts "$PARTS"
cp $RUN/log-unet.txt "$PARTS"/
fi
PYTHONUNBUFFERED=1 $T --stage decoder --dec-minutes "$(spent vae.pt decoder_seconds "$DM")" \
    --vae-batch "${DEC_BATCH:-64}" --dec-unet 0.5 --dec-focus 0.35 --dec-guidance 1.5 \
    --dec-lr "${DEC_LR:-2e-4}" --dec-schedule run --dec-warmup 50
cp $RUN/vae.pt $RUN/log-vae.txt "$PARTS"/
