#!/bin/sh
# install.sh: fresh Debian 12 -> Diffuse built and installed for this user.
#   1. installs the build dependencies with apt (asks for sudo when not root),
#   2. builds the engine and the `diffuse` tool,
#   3. installs `diffuse` into ~/.local/bin and the CLIP vocabulary (checked
#      against its SHA-256) into ~/.local/share/diffuse/, which single-file
#      checkpoints need because they carry no tokenizer.
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

echo "== done: $PREFIX/bin/diffuse"
case ":$PATH:" in *":$PREFIX/bin:"*) ;; *) echo "   (add $PREFIX/bin to your PATH)";; esac
