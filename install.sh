#!/bin/sh
# install.sh: fresh Debian 12 (or 13) -> Diffuse built and installed for this
# user.
#   1. installs the build dependencies with apt (asks for sudo when not root),
#   2. builds the engine and the `diffuse` tool,
#   3. installs `diffuse` into ~/.local/bin and the CLIP vocabulary (checked
#      against its SHA-256) into ~/.local/share/diffuse/, which single-file
#      checkpoints need because they carry no tokenizer,
#   4. finds which GIMP this machine runs and builds the plug-in for it, with
#      the default model, into its user folder: GIMP 3.0 (installed, or the
#      one apt offers, as on Debian 13) into ~/.config/GIMP/3.0/plug-ins/diffuse/,
#      GIMP 2.10 (installed, or apt's where it offers no 3.0, as on Debian 12)
#      into ~/.config/GIMP/2.10/plug-ins/diffuse/; both when both are
#      installed. DIFFUSE_GIMP=2, 3 or both chooses instead. It says which.
#   5. makes a first image through each such GIMP in batch mode with the
#      default model.
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
    libopenblas-dev libdnnl-dev libcjson-dev libutf8proc-dev libpng-dev zlib1g-dev \
    python3 python3-numpy  # for `make test`: the image checks of tests/

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

# ------------------------------------------------------------- GIMP plug-in
# Which GIMP generations to build for: the ones installed, else the one apt
# offers (3.0 first); DIFFUSE_GIMP=2, 3 or both overrides.
apt_offers() { apt-cache show "$1" >/dev/null 2>&1; }
gimp2=no gimp3=no
case ${DIFFUSE_GIMP:-auto} in
2) gimp2=yes ;;
3) gimp3=yes ;;
both) gimp2=yes gimp3=yes ;;
auto)
    command -v gimp-console-3.0 >/dev/null 2>&1 && gimp3=yes
    command -v gimp-console-2.10 >/dev/null 2>&1 && gimp2=yes
    if [ $gimp2 = no ] && [ $gimp3 = no ]; then
        if apt_offers libgimp-3.0-dev; then gimp3=yes; else gimp2=yes; fi
    fi
    ;;
*)
    echo "error: DIFFUSE_GIMP is '$DIFFUSE_GIMP': 2, 3 or both" >&2
    exit 1
    ;;
esac
# a generation asked for that neither is installed nor packaged here
if [ $gimp3 = yes ] && ! command -v gimp-console-3.0 >/dev/null 2>&1 && ! apt_offers libgimp-3.0-dev; then
    echo "error: GIMP 3.0 is neither installed nor packaged for this system (Debian 12 has" >&2
    echo "  GIMP 2.10 only): DIFFUSE_GIMP=2 installs for GIMP 2.10" >&2
    exit 1
fi
if [ $gimp2 = yes ] && ! command -v gimp-console-2.10 >/dev/null 2>&1 && ! apt_offers libgimp2.0-dev; then
    echo "error: GIMP 2.10 is neither installed nor packaged for this system (Debian 13 has" >&2
    echo "  GIMP 3.0 only): DIFFUSE_GIMP=3 installs for GIMP 3.0" >&2
    exit 1
fi
if [ $gimp3 = yes ] && [ $gimp2 = yes ]; then
    echo "== GIMP 3.0 and GIMP 2.10: installing the plug-in for both"
elif [ $gimp3 = yes ]; then
    echo "== GIMP 3.0: installing the plug-in for GIMP 3.0"
elif apt_offers libgimp-3.0-dev; then
    echo "== GIMP 2.10: installing the plug-in for GIMP 2.10 (GIMP 3.0 is not installed;"
    echo "   DIFFUSE_GIMP=both installs it and the plug-in for it too)"
else
    echo "== GIMP 2.10: installing the plug-in for GIMP 2.10 (this system has no GIMP 3.0)"
    if [ -d "$HOME/.var/app/org.gimp.GIMP" ]; then
        echo "   (the Flatpak GIMP cannot load plug-ins built here: it runs them in its sandbox)"
    fi
fi

GIMP_PLUGINS="${GIMP_PLUGINS:-$HOME/.config/GIMP/2.10/plug-ins}"
GIMP3_PLUGINS="${GIMP3_PLUGINS:-$HOME/.config/GIMP/3.0/plug-ins}"
installed="" # "VERSION PLUGIN-FOLDER" lines, for the first images
# install_for VERSION CONSOLE PACKAGES...: GIMP and libgimp (apt), the user's
# profile, then the plug-in built and installed into the profile
install_for() {
    version=$1 console=$2
    shift 2
    echo "== installing GIMP $version and the plug-in's build dependencies (apt)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
    if [ ! -d "$HOME/.config/GIMP/$version" ]; then
        # GIMP sets up a profile only where there is none: let it, before the
        # plug-in folder makes one that looks set up but lacks the rest
        echo "== creating your GIMP $version profile (GIMP's first start)"
        if [ "$version" = 3.0 ]; then
            "$console" -i -d -f --quit >/dev/null 2>&1 </dev/null || true
        else
            "$console" -i -d -f -b '(gimp-quit 0)' >/dev/null 2>&1 </dev/null || true
        fi
    fi
}
if [ $gimp2 = yes ]; then
    install_for 2.10 gimp-console-2.10 gimp libgimp2.0-dev libgegl-dev libbabl-dev
    echo "== building the GIMP 2.10 plug-in and installing it into $GIMP_PLUGINS/diffuse"
    make -j"$(nproc)" plugin2
    make install-plugin2 GIMP_PLUGINS="$GIMP_PLUGINS"
    installed="$installed
2.10 $GIMP_PLUGINS"
fi
if [ $gimp3 = yes ]; then
    install_for 3.0 gimp-console-3.0 gimp libgimp-3.0-dev
    echo "== building the GIMP 3.0 plug-in and installing it into $GIMP3_PLUGINS/diffuse"
    make -j"$(nproc)" plugin3
    make install-plugin3 GIMP3_PLUGINS="$GIMP3_PLUGINS"
    installed="$installed
3.0 $GIMP3_PLUGINS"
fi

echo "== done: $PREFIX/bin/diffuse, GIMP: Filters > Diffuse"
case ":$PATH:" in *":$PREFIX/bin:"*) ;; *) echo "   (add $PREFIX/bin to your PATH)";; esac

# The first image, through GIMP as a batch script would make it: the
# installed plug-in, found through the user's own GIMP profile, with the
# default model at its native size; one per GIMP generation installed for
# (first-image.png through 2.10, first-image-gimp3.png through 3.0).
prompt="a red circle on a blue background"
status=0
echo "$installed" | while read -r version folder; do
    [ -n "$version" ] || continue
    model="$folder/diffuse/models/default"
    if [ ! -e "$model" ]; then
        echo "== no first image: this checkout has no default model yet (models/default)."
        echo "   Choose a model file or folder in Filters > Diffuse, or set DIFFUSE_DEFAULT_MODEL."
        continue
    fi
    size=$("$PREFIX/bin/diffuse" info --model "$model" | sed -n 's/^native size: \([0-9]*\)x.*/\1/p')
    size=${size:-512}
    if [ "$version" = 3.0 ]; then
        first="$DATA/first-image-gimp3.png"
        log="$DATA/first-image-gimp3.log"
    else
        first="$DATA/first-image.png"
        log="$DATA/first-image.log"
    fi
    echo "== making a first image through GIMP $version (${size}x$size, \"$prompt\")"
    rm -f "$first"
    if [ "$version" = 3.0 ]; then
        # GIMP 3.0: Script-Fu as the batch interpreter, keyword arguments,
        # the drawables array; --quit, since 3.0 stops at a failing command
        gimp-console-3.0 -i -d -f --batch-interpreter=plug-in-script-fu-eval -b "
  (let* ((img (car (gimp-image-new $size $size RGB)))
         (bg (car (gimp-layer-new img \"background\" $size $size RGB-IMAGE 100
                                  LAYER-MODE-NORMAL))))
    (gimp-image-insert-layer img bg 0 0)
    (plug-in-diffuse-txt2img #:run-mode RUN-NONINTERACTIVE #:image img #:drawables (vector bg)
                             #:prompt \"$prompt\" #:seed 1 #:steps 20 #:guidance 7.5
                             #:sampler \"euler_a\" #:model \"\")
    (file-png-export #:run-mode RUN-NONINTERACTIVE #:image img #:file \"$first\")
    (gimp-image-delete img))" --quit >"$log" 2>&1 </dev/null || true
    else
        gimp-console-2.10 -i -d -f -b "
  (let* ((img (car (gimp-image-new $size $size RGB)))
         (bg (car (gimp-layer-new img $size $size RGB-IMAGE \"background\" 100
                                  LAYER-MODE-NORMAL))))
    (gimp-image-insert-layer img bg 0 0)
    (plug-in-diffuse-txt2img RUN-NONINTERACTIVE img bg \"$prompt\" \"\" 1 20 7.5 \"euler_a\"
                             0 0 1 \"\")
    (file-png-save2 RUN-NONINTERACTIVE img (car (gimp-image-get-active-layer img))
                    \"$first\" \"$first\" 0 9 0 0 0 0 0 0 0)
    (gimp-image-delete img))" -b '(gimp-quit 0)' >"$log" 2>&1 </dev/null || true
    fi
    if [ -s "$first" ]; then
        echo "== wrote the first image to $first"
    else
        # GIMP exits 0 even when a batch command fails: the log says why
        echo "error: GIMP $version made no image; its output is in $log:" >&2
        grep -i -A2 error "$log" >&2
        exit 1
    fi
done || status=1
exit $status
