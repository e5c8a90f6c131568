#!/bin/sh
# chroot.sh: makes (once per machine) the Debian trixie chroot in which the
# GIMP 3.0 plug-in is built and tested, since Debian 12 has no GIMP 3.0.
#   tests/gimp3/chroot.sh [DIR]     (default /var/cache/diffuse/trixie-gimp3)
# The mirror is read from the host's apt sources; nothing about it is written
# into the repository. A finished chroot is marked with .diffuse-ready, which
# holds the package list it was made with, and reused; one made with an older
# list gets the packages it lacks; a half-made one is removed and made again.
# Needs root. tests/gimp3/run.sh (make test-gimp3) calls it.
set -eu
dir=${1:-${DIFFUSE_GIMP3_CHROOT:-/var/cache/diffuse/trixie-gimp3}}
# GIMP 3.0 and the build dependencies; python3 for the tests' pixel checks;
# an X server, a key sender and a screen grabber for the dialog test
packages="gimp libgimp-3.0-dev build-essential pkg-config libopenblas-dev libdnnl-dev libcjson-dev \
libutf8proc-dev libpng-dev zlib1g-dev file python3 xvfb xauth xdotool imagemagick"

apt_install() {
    chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$@" >&2
}

if [ -f "$dir/.diffuse-ready" ]; then
    if [ "$(cat "$dir/.diffuse-ready")" != "$packages" ]; then
        [ "$(id -u)" -eq 0 ] || { echo "chroot.sh: needs root (apt-get in $dir)" >&2; exit 1; }
        echo "chroot.sh: installing the packages $dir lacks" >&2
        # shellcheck disable=SC2086 # a list of package names
        apt_install $packages || {
            chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            apt_install $packages
        }
        echo "$packages" >"$dir/.diffuse-ready"
    fi
    echo "$dir"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "chroot.sh: needs root (debootstrap)" >&2; exit 1; }
# never remove a folder with something mounted in it (a source tree that a
# killed test run left bound there, say)
if awk -v d="$dir/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    echo "chroot.sh: $dir is half made but has mounts in it; unmount them first:" >&2
    awk -v d="$dir/" 'index($2, d) == 1 { print "  " $2 }' /proc/mounts >&2
    exit 1
fi

# The host's Debian mirror: deb822 sources first, then the one-line format.
mirror=$(sed -n 's/^URIs:[[:space:]]*\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb[[:space:]]\+\(http[^ ]*debian\)\/*[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
[ -n "$mirror" ] || { echo "chroot.sh: no Debian mirror in the host's apt sources" >&2; exit 1; }

command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >&2
rm -rf --one-file-system "$dir"
mkdir -p "$dir"
echo "chroot.sh: debootstrap trixie from $mirror into $dir" >&2
debootstrap --variant=minbase trixie "$dir" "$mirror" >&2
echo "chroot.sh: installing GIMP 3.0 and build dependencies" >&2
chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
# shellcheck disable=SC2086 # a list of package names
apt_install $packages
echo "$packages" >"$dir/.diffuse-ready"
echo "$dir"
