#!/bin/sh
# test_gimp_dialog.sh: the plug-in's dialogs in the full GIMP under Xvfb: the
# GTK2 dialog in GIMP 2.10 by default, the GimpProcedureDialog in GIMP 3.0
# with GIMP_GENERATION=3 (tests/gimp3/run.sh, in a Debian trixie chroot; what
# differs is in tests/gimp/gen.sh). Script-Fu runs both procedures in
# RUN-INTERACTIVE mode with remembered values set (2.10: the plug-in's own
# data; 3.0: the procedure configs' last-values files); tests/gimp/dialog-capture.sh captures each dialog to a PNG and
# closes it: Escape cancels Text to Image (the image must stay as it was),
# alt+o presses OK in Image to Image (a layer must appear), and a
# RUN-WITH-LAST-VALS call must then repeat it without a dialog. Last, Image
# to Image on a layer that holds another run's settings (its
# diffuse-parameters parasite, with a key Diffuse has no use for and a LoRA):
# alt+y presses Copy Settings from Layer, alt+o OK, and the new layer must
# have been made with those settings; then the same with Text to Image on a
# PNG the CLI made, its "parameters" text read from the file (3.0: from the
# image's comment, since its gimp-file-load leaves the image without the file
# it loaded, which File > Open keeps). Everything is bounded by timeouts. The
# PNGs are kept in $BUILD/artifacts/ as dialog-gimp2-*.png (3.0:
# dialog-gimp3-*.png; -copy.png shows Copy Settings' report); the README shows
# copies in docs/. Ends with "N passed, N failed".
# Without gimp-2.10 (3.0), xvfb-run, xdotool, ImageMagick, the plug-in or the
# test model it fails under CI=true and skips otherwise.

BUILD=${BUILD:-build}
SHARED=${DIFFUSE_SHARED:-../shared}
MODEL=${DIFFUSE_TEST_MODEL:-$SHARED/reference/sd1-tiny/model-diffusers}
TIMEOUT=${GIMP_DIALOG_TIMEOUT:-180}
ROOT=$(pwd)
LIB=$ROOT/tests/gimp/lib.scm
ART=$ROOT/$BUILD/artifacts
PROMPT="a red circle on a blue background"
. "$ROOT/tests/gimp/gen.sh"
GIMP_GUI=${GIMP_GUI:-$GIMP_GUI_DEFAULT}
PNG=$ART/dialog-gimp$GIMP_GENERATION

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
[ -x "$PLUGIN" ] || missing "$PLUGIN (apt-get install $GIMP_DEV_PACKAGE, then make)"
[ -e "$MODEL" ] || missing "the test model $MODEL"
MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL") # absolute: GIMP runs elsewhere

tmp=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-dialog.XXXXXX") || missing "a temporary folder"
trap '[ -n "${DIFFUSE_KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
home=$tmp/home
profile=$(make_profile "$home")
mkdir -p "$ART" "$tmp/out"

# The remembered values the dialogs open with: random seed, last seed 1234.
if [ "$GIMP_GENERATION" = 2 ]; then
    # the plug-in's key file (core_settings_serialize), set through the
    # PDB as gimp_set_data would
    settings="[diffuse]\\nversion=2\\nprompt=$PROMPT\\nnegative-prompt=blurry, text\\nseed=-1\\nlast-seed=1234\\nsteps=20\\nguidance=7.5\\nsampler=euler_a\\ncount=1\\nstrength=0.6\\nmodel=$MODEL\\n"
    remember="(let ((text \"$settings\"))
    (gimp-procedural-db-set-data \"plug-in-diffuse\" (string-length text)
                                 (list->vector (map char->integer (string->list text)))))"
else
    # the last-values files GIMP 3.0 keeps for each procedure's config,
    # named after the config's type: GimpProcedureConfigRun-<procedure> in
    # 3.0.4, GimpProcedureConfig-<procedure> in its sources' other branches
    mkdir -p "$profile/plug-in-settings"
    for proc in txt2img img2img; do
        last=$profile/plug-in-settings/GimpProcedureConfigRun-plug-in-diffuse-$proc.last
        {
            echo "# settings"
            echo "(prompt \"$PROMPT\")"
            echo "(negative-prompt \"blurry, text\")"
            echo "(seed -1)"
            echo "(steps 20)"
            echo "(guidance 7.5)"
            echo "(sampler \"euler_a\")"
            [ $proc = img2img ] && echo "(strength 0.6)"
            echo "(count 1)"
            echo "(model \"$MODEL\")"
            echo "(last-seed 1234)"
            echo "(configured yes)"
            echo "# end of settings"
        } >"$last"
        cp "$last" "$profile/plug-in-settings/GimpProcedureConfig-plug-in-diffuse-$proc.last"
    done
    remember=""
fi
# The settings on the layer Copy Settings reads, as another run recorded them,
# in a Scheme string (where \\n is a newline); with the LoRA fixture when make
# has built it (tests/fixtures/make_loras.py).
LORA=$(cd "$BUILD/fixtures/loras" 2>/dev/null && pwd)/sd1-kohya.safetensors
[ -f "$LORA" ] || LORA=""
COPIED="a green square on a white background\\nNegative prompt: dark\\nSteps: 3, Sampler: Euler, CFG scale: 6, Seed: 77, Size: 64x64, Model: $(basename "$MODEL" .safetensors), Denoising strength: 0.4, Hires upscale: 2, RNG: NV${LORA:+, LoRA: $LORA:0.5}"

# A PNG as Stable Diffusion tools write them (its "parameters" text), opened
# in GIMP: Copy Settings reads the file (3.0: the same text in the comment)
"$BUILD/diffuse" generate --model "$MODEL" --prompt "a yellow star on a black background" \
    --negative grey --seed 88 --steps 2 --cfg 5 --sampler ddim --width 64 --height 64 \
    ${LORA:+--lora "$LORA:0.7"} --output "$tmp/sd.png" >"$tmp/cli.log" 2>&1
check $? "the CLI did not make the PNG to copy settings from: $(tail -c 400 "$tmp/cli.log")"
comment=""
[ "$GIMP_GENERATION" = 3 ] && comment="(gimp-image-attach-parasite png (list \"gimp-comment\" 1
    \"a yellow star on a black background\\nNegative prompt: grey\\nSteps: 2, Sampler: DDIM, CFG scale: 5, Seed: 88, Size: 64x64, RNG: NV${LORA:+, LoRA: $LORA:0.7}\"))"

# the arguments of the interactive calls: the dialogs show remembered values
t2i() { # t2i RUN-MODE IMAGE
    diffuse_call "$1" plug-in-diffuse-txt2img "$2" "(background $2)" prompt='""' \
        negative-prompt='""' seed=-1 steps=20 guidance=7.5 sampler='"euler_a"' width=0 \
        height=0 count=1 model='""'
}
i2i() { # i2i RUN-MODE IMAGE
    diffuse_call "$1" plug-in-diffuse-img2img "$2" "(background $2)" prompt='""' \
        negative-prompt='""' seed=-1 steps=20 guidance=7.5 sampler='"euler_a"' strength=0.5 \
        count=1 model='""'
}

script="(begin (load \"$GENLIB\") (load \"$LIB\") (case-begin \"$tmp/out\")
  $remember
  (let* ((big (new-image RGB 512 384)) (small (new-image RGB 64 64)))
    (try \"txt2img-dialog\" (lambda () $(t2i RUN-INTERACTIVE big)))
    (out \"txt2img-layers\" (length (layers big)))
    (gimp-image-select-ellipse small CHANNEL-OP-REPLACE 8 8 48 48)
    (try \"img2img-dialog\" (lambda () $(i2i RUN-INTERACTIVE small)))
    (out \"img2img-layers\" (length (layers small)))
    (try \"last-values\" (lambda () $(i2i RUN-WITH-LAST-VALS small)))
    (out \"last-values-layers\" (length (layers small)))
    (out \"name\" (car (gimp-item-get-name (top-layer small))))
    (try \"txt2img-ok\" (lambda () $(t2i RUN-INTERACTIVE big)))
    (out \"native\" (drawable-width (top-layer big)) (drawable-height (top-layer big)))
    (try \"large\" (lambda () $(t2i RUN-INTERACTIVE big)))
    (try \"broken\" (lambda () $(t2i RUN-INTERACTIVE big)))
    (out \"broken-layers\" (length (layers big))))
  (let* ((copy (new-image RGB 64 64)))
    (gimp-item-attach-parasite (background copy) (list \"diffuse-parameters\" 1 \"$COPIED\"))
    (try \"copy\" (lambda () $(i2i RUN-INTERACTIVE copy)))
    (out \"copy-layers\" (length (layers copy)))
    (out \"copy-name\" (car (gimp-item-get-name (top-layer copy))))
    (out-text \"copy-parameters\"
              (caddr (car (gimp-item-get-parasite (top-layer copy) \"diffuse-parameters\")))))
  (let* ((png (load-image \"$tmp/sd.png\")))
    $comment
    (try \"png\" (lambda () $(t2i RUN-INTERACTIVE png)))
    (out-text \"png-parameters\"
              (caddr (car (gimp-item-get-parasite (top-layer png) \"diffuse-parameters\")))))
  (case-end))"

# the mnemonics of the Width and Model fields
if [ "$GIMP_GENERATION" = 2 ]; then WIDTH_KEY=alt+d MODEL_KEY=alt+m; else WIDTH_KEY=alt+i MODEL_KEY=alt+d; fi
t0=$(date +%s)
HOME=$home GIMP_GUI=$GIMP_GUI GIMP_GENERATION=$GIMP_GENERATION BATCH_OPTIONS=$BATCH_OPTIONS \
    DIFFUSE_DIALOG_DUMP=$tmp/dump.txt NO_AT_BRIDGE=1 xvfb-run -a -s "-screen 0 1280x1024x24" \
    sh tests/gimp/dialog-capture.sh "$tmp/log" "$TIMEOUT" "$script" \
    "Diffuse: Text to Image|$PNG-txt2img.png|Escape" \
    "Diffuse: Image to Image|$PNG-img2img.png|alt+o" \
    "Diffuse: Text to Image|$tmp/txt2img-ok.png|alt+o" \
    "Diffuse: Text to Image|$tmp/large-before.png|$WIDTH_KEY ctrl+a =128 Tab wait" \
    "Diffuse: Text to Image|$PNG-large.png|Escape" \
    "Diffuse: Text to Image|$tmp/broken-before.png|$MODEL_KEY ctrl+a =$tmp/no-such-model Tab wait alt+o wait" \
    "Diffuse: Text to Image|$PNG-broken-model.png|Escape" \
    "Diffuse: Image to Image|$tmp/copy-before.png|alt+y" \
    "Diffuse: Image to Image|$PNG-copy.png|alt+o" \
    "Diffuse: Text to Image|$tmp/png-before.png|alt+y" \
    "Diffuse: Text to Image|$tmp/png-after.png|alt+o" 2>"$tmp/capture.log"
check $? "the dialogs were not captured and closed: $(cat "$tmp/capture.log") $(tail -c 600 "$tmp/log")"
echo "dialog run: $(($(date +%s) - t0)) s"

for png in "$PNG-txt2img.png" "$PNG-img2img.png" "$PNG-copy.png" "$PNG-large.png" \
    "$PNG-broken-model.png"; do
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
# the dialog starts from the model's native size (sd1-tiny: 64), not the 512x384 image's
expect "status txt2img-ok ok" "OK in the txt2img dialog did not run"
expect "native 64 64" "the txt2img dialog did not start from the model's native size"
grep -q "^name Diffuse: $PROMPT (seed [0-9]*)" "$out" 2>/dev/null
check $? "the remembered prompt was not used: $(grep '^name' "$out" 2>/dev/null)"
# Width 128, over the model's native 64: the dialog says what it costs, from
# the engine's estimate; a model that cannot load: its whole message (the
# info line wraps, its tooltip holds it) and OK insensitive, so that alt+o
# did nothing and Escape closed the dialog, the image as it was. The sampler
# menu shows the engine's labels, Karras forms included. (DIFFUSE_DIALOG_DUMP:
# "dialog<tab>TITLE" opens each dialog's lines; Copy Settings' two follow.)
section() { # section N: the lines of the dialog N from the end (1: the last)
    awk -v want="$(($(grep -c '^dialog	' "$tmp/dump.txt" 2>/dev/null) + 1 - $1))" \
        '/^dialog	/ { n++ } n == want' "$tmp/dump.txt" 2>/dev/null
}
# the engine's estimates of the time and the memory (diffuse_request_seconds
# and diffuse_request_memory): "About 0.4 s and 12 MiB of memory (N MiB
# free)."; at the native size too (the dialog OK'd at 64x64), without "Larger"
TIME="About [0-9.]* \(s\|min [0-9]* s\|h [0-9]* min\) and [0-9]* MiB of memory"
section 4 | grep -q "^diffuse-size-note	Larger than the model's native 64x64: models draw best at their native size. $TIME"
check $? "Width 128 did not tell what it costs: $(section 4 | grep -e '^diffuse-' -e '^ok')"
section 5 | grep -q "^diffuse-size-note	$TIME"
check $? "the native size's note does not tell the time: $(section 5 | grep -e '^diffuse-' -e '^dialog')"
section 3 | grep -qx "ok	insensitive"
check $? "OK was not insensitive with a model that cannot load: $(section 3 | grep -e '^diffuse-' -e '^ok')"
section 3 | grep -q "^GtkLabel	cannot load the model: $tmp/no-such-model"
check $? "the model's error is not whole in the info line's tooltip: $(section 3 | grep -e '^diffuse-' -e 'GtkLabel')"
expect "broken-layers 2" "the dialog with a model that cannot load changed the image"
grep -qx "choices	Euler|Euler Karras|Euler a|Euler a Karras|DDIM|DPM++ 2M|DPM++ 2M Karras|LCM|PLMS" "$tmp/dump.txt"
check $? "the sampler menu does not show the engine's labels: $(grep '^choices' "$tmp/dump.txt" | sort -u | head -3)"
# Text to Image's "Scale result into" menu: its three choices, Generated size
# shown (the default: the remembered values have none), and its tooltip
section 1 | grep -A1 -x "choices	Generated size|Image|Selection bounds" | grep -qx "active	Generated size"
check $? "Text to Image has no Scale result into menu showing Generated size: $(section 1 | grep -A1 '^choices' | tr '\n' '|')"
section 1 | grep -q "	Text to Image: generate at the width and height, then let GIMP scale the new layers .* to the image or to the selection's bounds (the image when nothing is selected)"
check $? "the Scale result into menu has not its tooltip: $(section 1 | grep -i scale)"
# every field the dialogs showed has a tooltip (its own or its row's)
[ -s "$tmp/dump.txt" ] && ! grep '^untipped' "$tmp/dump.txt"
check $? "fields above are shown without a tooltip"
# Copy Settings from Layer: the layer's prompt, seed, steps, sampler, guidance,
# strength and LoRA made the new layer; Hires upscale was left out
expect "status copy ok" "OK after Copy Settings from Layer did not run"
expect "copy-layers 2" "OK after Copy Settings from Layer made no layer"
expect "copy-name Diffuse: a green square on a white background (seed 77)" \
    "the copied prompt and seed were not used"
copied=$(tr -d '\000' <"$tmp/out/copy-parameters.txt" 2>/dev/null)
case $copied in
"a green square on a white background
Negative prompt: dark
Steps: 3, Sampler: Euler, CFG scale: 6, Seed: 77, Size: "*", Denoising strength: 0.4, RNG: NV${LORA:+, LoRA: \"$LORA:0.5\"}") pass ;;
*) fail "the copied settings did not make the layer: its parasite is '$copied'" ;;
esac
expect "status png ok" "OK after Copy Settings from PNG File did not run"
copied=$(tr -d '\000' <"$tmp/out/png-parameters.txt" 2>/dev/null)
[ "$copied" = "a yellow star on a black background
Negative prompt: grey
Steps: 2, Sampler: DDIM, CFG scale: 5, Seed: 88, Size: 64x64, Model: $(basename "$MODEL" .safetensors), RNG: NV${LORA:+, LoRA: \"$LORA:0.7\"}" ]
check $? "the PNG's settings did not make the layer: its parasite is '$copied'"
if [ "$GIMP_GENERATION" = 3 ]; then
    # GIMP 3.0 checks the fields' mnemonics as a dialog opens: one missing, or
    # taken twice (by two fields, or a field and a dialog button), is printed
    ! grep -i mnemonic "$tmp/log"
    check $? "the dialogs' mnemonics are missing or taken twice (GIMP's stderr above)"
fi
! grep -q -i -e crashed -e Sanitizer "$tmp/log"
check $? "a plug-in crashed: $(grep -i -e crashed -e Sanitizer "$tmp/log" | head -3)"
echo "artifacts: $PNG-txt2img.png $PNG-img2img.png $PNG-copy.png $PNG-large.png $PNG-broken-model.png"

# ------------------------------------------------------------------ a painter's session
# A second GIMP with a fresh profile whose only remembered value is the model:
# a copy of the test model whose folder asks for its own settings (steps 3,
# guidance 1.5, euler), so that they differ from the core's defaults. Text to
# Image four times:
#   fresh    OK at once: the values the dialog opens with on a fresh profile;
#   failed   Steps 7 typed, a LoRA file that does not exist named, OK: the
#            run fails after OK (a model that cannot load leaves OK
#            insensitive instead);
#   reshow   the dialog again: it must show the Steps typed (the edits
#            kept); the LoRA taken out, Width 300 typed
#            (it must snap to 304, the model's unit, in the field) and one
#            step up (312), OK;
#   factory  Reset > Reset to Factory Defaults, Randomize unticked, OK: the
#            model's own settings and native size, as fresh, and the seed
#            shown is the last one used (reshow's), not -1;
#   initial  Steps 9 typed, then Reset > Reset to Initial Values, OK: what the
#            dialog opened with, the native size included (GIMP took its
#            initial values before the model's size was set).
# Every tooltip the dialogs showed (DIFFUSE_DIALOG_DUMP) must be about the
# dialog: not the PDB's -1 for a random seed (the dialog has Randomize), ""
# for an empty text or 0 for the image's size.
# (GIMP 3.0; the 2.10 dialog has no Reset.)
if [ "$GIMP_GENERATION" = 3 ]; then
    model2=$tmp/own-settings
    mkdir -p "$model2"
    for part in "$MODEL"/*; do
        [ "$(basename "$part")" = model_index.json ] || ln -s "$part" "$model2/"
    done
    python3 -c 'import json, sys
index = json.load(open(sys.argv[1]))
index["_diffuse_defaults"] = {"sampler": "euler", "steps": 3, "guidance": 1.5}
json.dump(index, open(sys.argv[2], "w"))' "$MODEL/model_index.json" "$model2/model_index.json"
    home2=$tmp/home2
    profile2=$(make_profile "$home2")
    mkdir -p "$profile2/plug-in-settings" "$tmp/out2"
    for f in GimpProcedureConfigRun GimpProcedureConfig; do
        printf '# settings\n(model "%s")\n# end of settings\n' "$model2" \
            >"$profile2/plug-in-settings/$f-plug-in-diffuse-txt2img.last"
    done
    session="(let* ((img (new-image RGB 512 384)))
    (define (result tag) ; the newest layer: above the background, the drawable passed
      (let ((l (cadr (reverse (layers img)))))
        (out tag (length (layers img)) (drawable-width l) (drawable-height l)
             (car (gimp-item-get-name l)))
        (out-text (string-append tag \"-parameters\")
                  (caddr (car (gimp-item-get-parasite l \"diffuse-parameters\"))))))
    (try \"fresh\" (lambda () $(t2i RUN-INTERACTIVE img)))
    (result \"fresh\")
    (try \"failed\" (lambda () $(t2i RUN-INTERACTIVE img)))
    (out \"failed-layers\" (length (layers img)))
    (try \"reshow\" (lambda () $(t2i RUN-INTERACTIVE img)))
    (result \"reshow\")
    (try \"factory\" (lambda () $(t2i RUN-INTERACTIVE img)))
    (result \"factory\")
    (try \"initial\" (lambda () $(t2i RUN-INTERACTIVE img)))
    (result \"initial\"))"
    t0=$(date +%s)
    T="Diffuse: Text to Image"
    HOME=$home2 DIFFUSE_DIALOG_DUMP=$tmp/tooltips.txt GIMP_GUI=$GIMP_GUI GIMP_GENERATION=$GIMP_GENERATION BATCH_OPTIONS=$BATCH_OPTIONS \
        NO_AT_BRIDGE=1 xvfb-run -a -s "-screen 0 1280x1024x24" \
        sh tests/gimp/dialog-capture.sh "$tmp/log2" "$TIMEOUT" \
        "(begin (load \"$GENLIB\") (load \"$LIB\") (case-begin \"$tmp/out2\") $session (case-end))" \
        "$T|$tmp/fresh.png|alt+o" \
        "$T|$tmp/failed.png|alt+t ctrl+a =7 Tab alt+a ctrl+a =$tmp/no-such-lora.safetensors Tab wait alt+o" \
        "$T|$tmp/reshow.png|alt+a ctrl+a BackSpace Tab wait alt+i ctrl+a =300 Tab wait" \
        "$T|$tmp/reshow-snapped.png|alt+i Up Tab alt+o" \
        "$T|$tmp/factory.png|alt+r wait" \
        "$T|$tmp/factory-popover.png|Down Return wait" \
        "$T|$tmp/factory-reset.png|alt+z alt+o" \
        "$T|$tmp/initial.png|alt+t ctrl+a =9 Tab alt+r wait" \
        "$T|$tmp/initial-popover.png|Return wait" \
        "$T|$tmp/initial-reset.png|alt+o" 2>"$tmp/capture2.log"
    check $? "the session's dialogs were not captured and closed: $(cat "$tmp/capture2.log") $(tail -c 600 "$tmp/log2")"
    echo "painter's session: $(($(date +%s) - t0)) s"
    cp "$tmp"/fresh.png "$tmp"/failed.png "$tmp"/reshow*.png "$tmp"/factory*.png \
        "$tmp"/initial*.png "$ART/" 2>/dev/null
    out2=$tmp/out2/out.txt
    want() { grep -qxF -e "$1" "$out2" 2>/dev/null; check $? "$2 (want '$1'; got: $(tr '\n' '|' <"$out2" 2>/dev/null))"; }
    # "Steps: ..., Size: ..." of a layer's parameters, its seed left out
    settings() { tr -d '\000' <"$tmp/out2/$1-parameters.txt" 2>/dev/null | sed -n 's/, Seed: [0-9]*//p'; }
    seed_of() { sed -n "s/^$1 .*(seed \([0-9]*\)).*/\1/p" "$out2"; }
    want "status fresh ok" "OK in a fresh profile's dialog did not run"
    case $(settings fresh) in
    "Steps: 3, Sampler: Euler, CFG scale: 1.5, Size: 64x64, "*) pass ;;
    *) fail "a fresh profile's dialog did not open with the model's settings: '$(settings fresh)'" ;;
    esac
    want "status failed error" "a LoRA file that does not exist did not fail the run"
    want "failed-layers 2" "the failed run changed the image"
    want "status reshow ok" "OK in the dialog after a failed run did not run"
    case $(settings reshow) in
    "Steps: 7, "*) pass ;;
    *) fail "the dialog after a failed run lost the Steps typed before it: '$(settings reshow)'" ;;
    esac
    grep -q "^reshow 3 312 64 " "$out2"
    check $? "Width 300 typed did not snap to 304 in the field (one step up: 312): $(grep '^reshow' "$out2")"
    want "status factory ok" "OK after Reset to Factory Defaults did not run"
    [ -n "$(settings fresh)" ] && [ "$(settings factory)" = "$(settings fresh)" ]
    check $? "Reset to Factory Defaults is not what a fresh profile opens with: '$(settings factory)', fresh '$(settings fresh)'"
    [ -n "$(seed_of reshow)" ] && [ "$(seed_of factory)" = "$(seed_of reshow)" ]
    check $? "after Reset to Factory Defaults the Seed did not show the last seed used ($(seed_of reshow)): the run used '$(seed_of factory)'"
    want "status initial ok" "OK after Reset to Initial Values did not run"
    [ -n "$(settings fresh)" ] && [ "$(settings initial)" = "$(settings fresh)" ]
    check $? "Reset to Initial Values is not what the dialog opened with: '$(settings initial)', opened with '$(settings fresh)'"
    [ "$(grep -c . "$tmp/tooltips.txt" 2>/dev/null)" -ge 20 ]
    check $? "the dialogs' tooltips were not written to $tmp/tooltips.txt"
    ! grep -e '-1' -e '""' -e "0 = the image" "$tmp/tooltips.txt"
    check $? "the tooltips above speak of the PDB's arguments, not of the dialog they are in"
    ! grep -i -e mnemonic -e '^(diffuse:.*critical' -e crashed "$tmp/log2"
    check $? "GIMP's stderr above has warnings from the session's dialogs"
fi
finish
