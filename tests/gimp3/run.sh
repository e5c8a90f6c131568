#!/bin/sh
# run.sh: `make test-gimp3`: the GIMP 3.0 plug-in built and tested end to end
# in a Debian trixie chroot, since Debian 12 has no GIMP 3.0.
#   1. tests/gimp3/chroot.sh makes the chroot, or reuses it when it is there
#      (DIFFUSE_GIMP3_CHROOT, default /var/cache/diffuse/trixie-gimp3);
#   2. the source tree and ../shared (read-only) are bind-mounted into it at
#      their own paths, with /proc, /dev and a /dev/shm of its own; a trap
#      unmounts them all whatever happens, and a lock keeps two runs apart;
#   3. the engine and the 3.0 plug-in are built there with the chroot's
#      compiler into build-gimp3/ (never mixed with the host's build/), and
#      the LoRA fixtures with its python3;
#   4. tests/test_gimp.sh (the same end-to-end cases as GIMP 2.10's) and
#      tests/test_gimp_dialog.sh (the dialog screenshots) run there with
#      GIMP_GENERATION=3; the Text to Image dialog is copied to
#      docs/dialog-gimp3.png.
# Ends with the total time and "N passed, N failed"; exits non-zero on any
# failure, and fails loudly when the chroot cannot be made or entered.
# Needs root (debootstrap, mount, chroot).
#   tests/gimp3/run.sh [TEST...]   only those (say tests/test_gimp_dialog.sh)
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CHROOT=${DIFFUSE_GIMP3_CHROOT:-/var/cache/diffuse/trixie-gimp3}
BUILD3=build-gimp3
# the engine's kernels and the reference sets too: Debian 13 has other library
# versions (oneDNN 3.x for the convolutions, whose C API differs from 2.x's)
TESTS=${*:-tests/test_gimp.sh tests/test_gimp_dialog.sh $BUILD3/tests/test_ops tests/test_refcheck.sh}
t0=$(date +%s)

die() {
    echo "FAIL test-gimp3: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root to make and enter the chroot (run it as root or with sudo)"
"$ROOT/tests/gimp3/chroot.sh" "$CHROOT" >/dev/null || die "cannot make the chroot $CHROOT"
[ -f "$CHROOT/.diffuse-ready" ] || die "$CHROOT is not a finished chroot"

# One run at a time: the mounts below are the chroot's, not the run's.
exec 9>"$CHROOT/.diffuse-lock"
flock 9 || die "cannot lock $CHROOT/.diffuse-lock"

# ---------------------------------------------------------------- mounts

mounted="" # mount points, most recent first
unmount_all() {
    for m in $mounted; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ||
            echo "warning: cannot unmount $m" >&2
    done
    mounted=""
    for d in "$CHROOT$ROOT" ${SHARED:+"$CHROOT$SHARED"}; do
        rmdir "$d" 2>/dev/null # the mount points made below, when empty
    done
}
trap 'unmount_all' EXIT
trap 'exit 130' INT TERM HUP

# mount_at TARGET MOUNT-ARGS...: mounts and records TARGET for the trap. Each
# mount is made private at once: where / is a shared mount (systemd), a
# mount or unmount under the bound /dev would otherwise reach the host's.
mount_at() {
    target=$1
    shift
    mkdir -p "$target" || die "cannot make $target"
    mount "$@" "$target" || die "cannot mount $* on $target"
    mounted="$target $mounted"
    mount --make-private "$target" || die "cannot make $target a private mount"
}

# a run killed before its trap leaves its mounts: take them down first
for m in $(awk -v c="$CHROOT/" 'index($2, c) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done

mount_at "$CHROOT/proc" -t proc proc
mount_at "$CHROOT/dev" --bind /dev
mount_at "$CHROOT/dev/shm" -t tmpfs -o mode=1777 tmpfs
mount_at "$CHROOT$ROOT" --bind "$ROOT"
# the reference data the tests read (the test model), read-only
SHARED=""
shared=${DIFFUSE_SHARED:-../shared}
case $shared in /*) ;; *) shared=$ROOT/$shared ;; esac
if [ -d "$shared" ]; then
    SHARED=$(cd "$shared" && pwd -P)
    case $SHARED in
    "$ROOT"/*) ;; # already inside the source tree's mount
    *)
        mount_at "$CHROOT$SHARED" --bind "$SHARED"
        mount -o remount,bind,ro "$CHROOT$SHARED" || die "cannot make $SHARED read-only"
        ;;
    esac
fi

# in_chroot COMMAND: runs COMMAND with sh in the source tree inside the
# chroot, with a clean environment
in_chroot() {
    chroot "$CHROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        HOME=/root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" \
        DIFFUSE_KEEP_TMP="${DIFFUSE_KEEP_TMP:-}" DIFFUSE_TEST_MODEL="${DIFFUSE_TEST_MODEL:-}" \
        DIFFUSE_SHARED="${SHARED:-$shared}" \
        /bin/sh -c "cd '$ROOT' && $1"
}

# ---------------------------------------------------------------- build

echo "== building the engine and the GIMP 3.0 plug-in in $CHROOT ($BUILD3/)"
tb=$(date +%s)
mkdir -p "$ROOT/$BUILD3"
log=$ROOT/$BUILD3/build.log
# the LoRA files the LoRA cases read, made from the reference models
loras=""
[ -d "$shared/reference/sdxl-tiny/model-diffusers" ] && loras=$BUILD3/fixtures/loras/map.json
in_chroot "make -j$(nproc) BUILD=$BUILD3 plugin3 $BUILD3/diffuse $BUILD3/tests/test_ops $loras" \
    >"$log" 2>&1 || die "the build failed: $(tail -n 20 "$log")"
echo "built in $(($(date +%s) - tb)) s ($BUILD3/build.log)"

# ---------------------------------------------------------------- tests

echo "== the GIMP 3.0 end-to-end cases and dialogs"
in_chroot "GIMP_GENERATION=3 BUILD=$BUILD3 tests/run.sh $TESTS" |
    tee "$ROOT/$BUILD3/test.log"
status=0
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$ROOT/$BUILD3/test.log" | tail -n 1)
case $summary in
*" 0 failed") ;;
*) status=1 ;;
esac
[ -n "$summary" ] || summary="0 passed, 1 failed"

png=$ROOT/$BUILD3/artifacts/dialog-gimp3-txt2img.png
if [ "$status" -eq 0 ] && [ -s "$png" ]; then
    mkdir -p "$ROOT/docs"
    cp "$png" "$ROOT/docs/dialog-gimp3.png"
    echo "docs/dialog-gimp3.png: the Text to Image dialog in GIMP 3.0"
fi
# files made as root in a tree that belongs to someone else go back to them
chown -R --reference="$ROOT" "$ROOT/$BUILD3" 2>/dev/null
[ -e "$ROOT/docs/dialog-gimp3.png" ] && chown --reference="$ROOT" "$ROOT/docs/dialog-gimp3.png"

unmount_all
echo "make test-gimp3: $(($(date +%s) - t0)) s in all"
echo "$summary"
exit "$status"
