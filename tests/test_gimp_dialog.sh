#!/bin/sh
# test_gimp_dialog.sh: the plug-in's GTK2 dialogs in the full GIMP 2.10 under
# Xvfb. Script-Fu runs both procedures in RUN-INTERACTIVE mode with remembered
# values set; tests/gimp/dialog-capture.sh captures each dialog to a PNG and
# closes it: Escape cancels Text to Image (the image must stay as it was),
# alt+o presses OK in Image to Image (a layer must appear), and a
# RUN-WITH-LAST-VALS call must then repeat it without a dialog. Everything is
# bounded by timeouts. The PNGs are kept in $BUILD/artifacts/ (the README
# shows a copy in docs/). Ends with "N passed, N failed".
# Without gimp-2.10, xvfb-run, xdotool, ImageMagick, the plug-in or the test
# model it fails under CI=true and skips otherwise.

BUILD=${BUILD:-build}
SHARED=${DIFFUSE_SHARED:-../shared}
MODEL=${DIFFUSE_TEST_MODEL:-$SHARED/reference/sd1-tiny/model-diffusers}
GIMP_GUI=${GIMP_GUI:-gimp-2.10}
PLUGIN=$BUILD/plug-ins/diffuse/diffuse
TIMEOUT=${GIMP_DIALOG_TIMEOUT:-180}
ROOT=$(pwd)
LIB=$ROOT/tests/gimp/lib.scm
ART=$ROOT/$BUILD/artifacts
PROMPT="a red circle on a blue background"

passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { if [ "$1" -eq 0 ]; then pass; else fail "$2"; fi; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
missing() {
    if [ "${CI:-}" = true ]; then fail "missing $1 (CI=true)"; else echo "SKIP missing $1"; fi
    finish
}

command -v "$GIMP_GUI" >/dev/null 2>&1 || missing "$GIMP_GUI (apt-get install gimp)"
for tool in xvfb-run:xvfb xauth:xauth xdotool:xdotool import:imagemagick identify:imagemagick; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing "${tool%%:*} (apt-get install ${tool#*:})"
done
[ -x "$PLUGIN" ] || missing "$PLUGIN (apt-get install libgimp2.0-dev, then make)"
[ -e "$MODEL" ] || missing "the test model $MODEL"
MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL") # absolute: GIMP runs elsewhere

tmp=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-dialog.XXXXXX") || missing "a temporary folder"
trap '[ -n "${DIFFUSE_KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
home=$tmp/home
profile=$home/.config/GIMP/2.10
for d in brushes dynamics fonts gradients mypaint-brushes palettes patterns tool-presets \
    plug-ins modules interpreters environ scripts templates themes icons tmp; do
    mkdir -p "$profile/$d"
done
# shellcheck disable=SC2016 # ${gimp_dir} is gimprc's own variable, for GIMP to expand
printf '(plug-in-path "${gimp_dir}/plug-ins:${gimp_plug_in_dir}/plug-ins:%s/%s/plug-ins")\n' \
    "$ROOT" "$BUILD" >"$profile/gimprc"
mkdir -p "$ART" "$tmp/out"

# The remembered values the dialogs open with (the plug-in's own format,
# core_settings_serialize), set through the PDB as gimp_set_data would.
settings="diffuse-settings=1\\nprompt=$PROMPT\\nnegative-prompt=blurry, text\\nseed=-1\\nlast-seed=1234\\nsteps=20\\nguidance=7.5\\nsampler=euler_a\\ncount=1\\nstrength=0.6\\nmodel=$MODEL\\n"

script="(begin (load \"$LIB\") (case-begin \"$tmp/out\")
  (let ((text \"$settings\"))
    (gimp-procedural-db-set-data \"plug-in-diffuse\" (string-length text)
                                 (list->vector (map char->integer (string->list text)))))
  (let* ((big (new-image RGB 512 384)) (small (new-image RGB 64 64)))
    (try \"txt2img-dialog\" (lambda () (plug-in-diffuse-txt2img RUN-INTERACTIVE big (background big)
                                          \"\" \"\" -1 20 7.5 \"euler_a\" 0 0 1 \"\")))
    (out \"txt2img-layers\" (car (gimp-image-get-layers big)))
    (gimp-image-select-ellipse small CHANNEL-OP-REPLACE 8 8 48 48)
    (try \"img2img-dialog\" (lambda () (plug-in-diffuse-img2img RUN-INTERACTIVE small (background small)
                                          \"\" \"\" -1 20 7.5 \"euler_a\" 0.5 1 \"\")))
    (out \"img2img-layers\" (car (gimp-image-get-layers small)))
    (try \"last-values\" (lambda () (plug-in-diffuse-img2img RUN-WITH-LAST-VALS small (background small)
                                          \"\" \"\" -1 20 7.5 \"euler_a\" 0.5 1 \"\")))
    (out \"last-values-layers\" (car (gimp-image-get-layers small)))
    (out \"name\" (car (gimp-item-get-name (top-layer small))))))"

t0=$(date +%s)
HOME=$home GIMP_GUI=$GIMP_GUI xvfb-run -a -s "-screen 0 1280x1024x24" \
    sh tests/gimp/dialog-capture.sh "$tmp/log" "$TIMEOUT" "$script" \
    "Diffuse: Text to Image|$ART/dialog-gimp2-txt2img.png|Escape" \
    "Diffuse: Image to Image|$ART/dialog-gimp2-img2img.png|alt+o" 2>"$tmp/capture.log"
check $? "the dialogs were not captured and closed: $(cat "$tmp/capture.log") $(tail -c 600 "$tmp/log")"
echo "dialog run: $(($(date +%s) - t0)) s"

for png in "$ART/dialog-gimp2-txt2img.png" "$ART/dialog-gimp2-img2img.png"; do
    # a dialog-sized picture with the many colours of text and widgets
    info=$(identify -format '%w %h %k' "$png" 2>/dev/null)
    # shellcheck disable=SC2086 # "W H COLOURS": the words are wanted
    set -- $info
    [ -n "$info" ] && [ "$1" -ge 300 ] && [ "$2" -ge 300 ] && [ "$3" -ge 16 ]
    check $? "$png is missing or blank (width height colours: '$info')"
done

out=$tmp/out/out.txt
expect() { grep -qxF -e "$1" "$out" 2>/dev/null; check $? "$2 (want '$1'; got: $(tr '\n' '|' <"$out" 2>/dev/null))"; }
# Script-Fu takes CANCEL as success: what counts is that nothing changed
expect "status txt2img-dialog ok" "cancelling the dialog gave an error"
expect "txt2img-layers 1" "a cancelled dialog changed the image"
expect "status img2img-dialog ok" "OK in the img2img dialog did not run"
expect "img2img-layers 2" "OK in the img2img dialog made no layer"
expect "status last-values ok" "RUN-WITH-LAST-VALS failed"
expect "last-values-layers 3" "RUN-WITH-LAST-VALS made no layer"
grep -q "^name Diffuse: $PROMPT (seed [0-9]*)" "$out" 2>/dev/null
check $? "the remembered prompt was not used: $(grep '^name' "$out" 2>/dev/null)"
! grep -q -i -e crashed -e Sanitizer "$tmp/log"
check $? "a plug-in crashed: $(grep -i -e crashed -e Sanitizer "$tmp/log" | head -3)"
echo "artifacts: $ART/dialog-gimp2-txt2img.png $ART/dialog-gimp2-img2img.png"
finish
