#!/bin/sh
# install.sh: fresh Debian 12 -> Diffuse built and installed for this user.
#   1. installs the build dependencies with apt (asks for sudo when not root),
#   2. builds the engine and the `diffuse` tool,
#   3. installs `diffuse` into ~/.local/bin and the CLIP vocabulary (checked
#      against its SHA-256) into ~/.local/share/diffuse/, which single-file
#      checkpoints need because they carry no tokenizer,
#   4. installs GIMP 2.10 and libgimp (apt), builds the plug-in and installs it
#      with the default model into ~/.config/GIMP/2.10/plug-ins/diffuse/,
#   5. makes a first image through GIMP in batch mode with the default model.
# Safe to run again: every step is idempotent.
set -eu
cd "$(dirname "$0")"

VOCAB_URL="https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}/diffuse"
PREFIX="${PREFIX:-$HOME/.local}"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "== installing build dependencies (apt)"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config ca-certificates curl \
    libopenblas-dev libcjson-dev libutf8proc-dev libpng-dev zlib1g-dev

echo "== building"
make -j"$(nproc)"

echo "== installing diffuse into $PREFIX/bin"
make install PREFIX="$PREFIX"

mkdir -p "$DATA"
vocab="$DATA/bpe_simple_vocab_16e6.txt.gz"
if [ -f "$vocab" ] && echo "$VOCAB_SHA256  $vocab" | sha256sum -c --status; then
    echo "== CLIP vocabulary already in $vocab"
else
    echo "== fetching the CLIP vocabulary (MIT licence) into $vocab"
    tmp="$vocab.part"
    if curl -fsSL --retry 3 -o "$tmp" "$VOCAB_URL" &&
        echo "$VOCAB_SHA256  $tmp" | sha256sum -c --status; then
        mv "$tmp" "$vocab"
    else
        rm -f "$tmp"
        echo "warning: could not fetch $VOCAB_URL (or its checksum differs)." >&2
        echo "  Diffusers model folders work without it; single-file checkpoints need it:" >&2
        echo "  copy bpe_simple_vocab_16e6.txt.gz to $vocab or set DIFFUSE_VOCAB." >&2
    fi
fi

echo "== installing GIMP 2.10 and the plug-in's build dependencies (apt)"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    gimp libgimp2.0-dev libgegl-dev libbabl-dev

GIMP_PLUGINS="${GIMP_PLUGINS:-$HOME/.config/GIMP/2.10/plug-ins}"
if [ ! -d "$HOME/.config/GIMP/2.10" ]; then
    # GIMP sets up a profile only where there is none: let it, before the
    # plug-in folder makes one that looks set up but lacks the rest
    echo "== creating your GIMP 2.10 profile (GIMP's first start)"
    gimp-console-2.10 -i -d -f -b '(gimp-quit 0)' >/dev/null 2>&1 </dev/null || true
fi
echo "== building the GIMP plug-in and installing it into $GIMP_PLUGINS/diffuse"
make -j"$(nproc)" plugin
make install-plugin GIMP_PLUGINS="$GIMP_PLUGINS"

echo "== done: $PREFIX/bin/diffuse, GIMP: Filters > Diffuse"
case ":$PATH:" in *":$PREFIX/bin:"*) ;; *) echo "   (add $PREFIX/bin to your PATH)";; esac

# The first image, through GIMP as a batch script would make it: the
# installed plug-in, found through the user's own GIMP profile, with the
# default model at its native size.
model="$GIMP_PLUGINS/diffuse/models/default"
if [ ! -e "$model" ]; then
    echo "== no first image: this checkout has no default model yet (models/default)."
    echo "   Choose a model file or folder in Filters > Diffuse, or set DIFFUSE_DEFAULT_MODEL."
    exit 0
fi
size=$("$PREFIX/bin/diffuse" info --model "$model" | sed -n 's/^native size: \([0-9]*\)x.*/\1/p')
first="$DATA/first-image.png"
prompt="a red circle on a blue background"
echo "== making a first image through GIMP (${size:-512}x${size:-512}, \"$prompt\")"
rm -f "$first"
gimp-console-2.10 -i -d -f -b "
  (let* ((img (car (gimp-image-new ${size:-512} ${size:-512} RGB)))
         (bg (car (gimp-layer-new img ${size:-512} ${size:-512} RGB-IMAGE \"background\" 100
                                  LAYER-MODE-NORMAL))))
    (gimp-image-insert-layer img bg 0 0)
    (plug-in-diffuse-txt2img RUN-NONINTERACTIVE img bg \"$prompt\" \"\" 1 20 7.5 \"euler_a\"
                             0 0 1 \"\")
    (file-png-save2 RUN-NONINTERACTIVE img (car (gimp-image-get-active-layer img))
                    \"$first\" \"$first\" 0 9 0 0 0 0 0 0 0)
    (gimp-image-delete img))" -b '(gimp-quit 0)' >"$DATA/first-image.log" 2>&1 </dev/null || true
if [ -s "$first" ]; then
    echo "== wrote the first image to $first"
else
    # GIMP exits 0 even when a batch command fails: the log says why
    echo "error: GIMP made no image; its output is in $DATA/first-image.log:" >&2
    grep -i -A2 error "$DATA/first-image.log" >&2
    exit 1
fi
