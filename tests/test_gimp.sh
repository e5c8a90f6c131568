#!/bin/sh
# test_gimp.sh: the GIMP plug-in end to end, through Script-Fu in GIMP's
# console batch mode (DESIGN.md, "GIMP procedures"): GIMP 2.10 by default,
# GIMP 3.0 with GIMP_GENERATION=3 (tests/gimp3/run.sh runs it so inside a
# Debian trixie chroot; what differs is in tests/gimp/gen.sh and
# tests/gimp/gimp[23].scm). Each case is one GIMP run with a throwaway HOME
# whose gimprc adds $BUILD/plug-ins (3.0: $BUILD/plug-ins-3) to the plug-in
# path; its Script-Fu (tests/gimp/lib.scm) writes what it saw to files,
# since GIMP exits 0 even when a procedure fails, and the shell checks them and
# GIMP's stderr (where PDB error messages go). Cases: the core's unit test,
# registration (the PDB contract), txt2img, img2img on a feathered selection,
# bad model, bad sizes and arguments, same seed twice, grayscale, indexed, the
# default model, a float image, a layer in a group, a memory refusal, a
# plug-in killed mid-run as GIMP's cancel does, (3.0) the drawables array
# with none and two drawables, an SDXL model, the fast decoder, and a LoRA
# (a prompt tag; 3.0: the lora argument too); every failure must leave the
# image as it was (dirty flag, layers, every layer's bytes). Each case line
# gives its wall time, GIMP's start (about 2-3 s) included.
# Ends with "N passed, N failed".
#
# Model: $DIFFUSE_TEST_MODEL, else ../shared/reference/sd1-tiny/model-diffusers
# (64x64 images, 4 steps: seconds a case). Without gimp-console-2.10 (3.0),
# the plug-in (libgimp2.0-dev, libgimp-3.0-dev), python3 or the model, it
# fails under CI=true and skips otherwise. DIFFUSE_KEEP_TMP=1 keeps each
# case's files and GIMP log.

BUILD=${BUILD:-build}
SHARED=${DIFFUSE_SHARED:-../shared}
MODEL=${DIFFUSE_TEST_MODEL:-$SHARED/reference/sd1-tiny/model-diffusers}
CASE_TIMEOUT=${GIMP_CASE_TIMEOUT:-300}
PROMPT="a red circle on a blue background"
NEGATIVE="blurry"
ROOT=$(pwd)
LIB=$ROOT/tests/gimp/lib.scm
CHECK="python3 $ROOT/tests/gimp/check.py"
. "$ROOT/tests/gimp/gen.sh"
GIMP=${GIMP_CONSOLE:-$GIMP_CONSOLE_DEFAULT}

passed=0
failed=0
case_failed=0
pass() { passed=$((passed + 1)); }
fail() {
    failed=$((failed + 1))
    case_failed=$((case_failed + 1))
    echo "FAIL $*"
}
check() { # check STATUS MESSAGE: counts one check on a command's status
    if [ "$1" -eq 0 ]; then pass; else fail "$2"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
missing() { # missing WHAT: fails under CI=true, else skips the whole suite
    if [ "${CI:-}" = true ]; then
        fail "missing $1 (CI=true)"
    else
        echo "SKIP missing $1"
    fi
    finish
}

command -v "$GIMP" >/dev/null 2>&1 || missing "$GIMP (apt-get install gimp)"
[ -x "$PLUGIN" ] || missing "$PLUGIN (apt-get install $GIMP_DEV_PACKAGE, then make)"
command -v python3 >/dev/null 2>&1 || missing "python3"
[ -e "$MODEL" ] || missing "the test model $MODEL"
MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL") # absolute: GIMP runs elsewhere
MODEL_NAME=$(basename "$MODEL" .safetensors)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-gimp.XXXXXX") || missing "a temporary folder"
trap '[ -n "${DIFFUSE_KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# A fresh GIMP profile whose gimprc adds the build tree to the plug-in path
home=$tmp/home
profile=$(make_profile "$home")

now() { date +%s.%N; }

# gimp_start NAME: starts GIMP in the background on the Script-Fu body read
# from stdin, in a fresh folder $dir; $gimp is the pid to wait for. $CASE_ENV
# (NAME=VALUE words) goes into the plug-in's environment; GIMP loads no fonts
# (-f) unless $CASE_FONTS is set (a case that makes a text layer).
gimp_start() {
    dir=$tmp/$1
    mkdir -p "$dir"
    cat >"$dir/body.scm"
    t0=$(now)
    # how GIMP quits after the case (tests/gimp/gen.sh)
    if [ "$GIMP_GENERATION" = 2 ]; then set -- -b '(gimp-quit 0)'; else set -- --quit; fi
    # timeout: a process group of its own, all of it (plug-ins too) killed when late
    # shellcheck disable=SC2086 # CASE_ENV and BATCH_OPTIONS are lists of words
    # shellcheck disable=SC2086 # CASE_WRAP too (xvfb-run for a case that needs a display)
    HOME=$home $CASE_WRAP env DIFFUSE_DEFAULT_MODEL= $CASE_ENV timeout -k 10 "$CASE_TIMEOUT" "$GIMP" -i -d ${CASE_FONTS:--f} \
        $BATCH_OPTIONS -b "(begin (load \"$GENLIB\") (load \"$LIB\") (case-begin \"$dir\")
                   (catch (out \"aborted\") (load \"$dir/body.scm\")) (case-end))" \
        "$@" >"$dir/log" 2>&1 </dev/null &
    gimp=$!
}

# gimp_wait TITLE [crash-ok]: waits for GIMP; counts one check that it and the
# Script-Fu finished, and one that no plug-in crashed (unless crash-ok).
gimp_wait() {
    wait "$gimp"
    rc=$?
    case_time=$(awk "BEGIN { printf \"%.2f\", $(now) - $t0 }")
    case_title=$1
    case_failed=0
    if [ "$rc" -ne 0 ]; then
        fail "$case_title: GIMP exited with status $rc: $(tail -c 600 "$dir/log")"
    elif ! grep -qx "done" "$dir/out.txt" 2>/dev/null || grep -qx aborted "$dir/out.txt"; then
        fail "$case_title: the Script-Fu did not finish: $(tail -c 800 "$dir/log")"
    else
        pass
    fi
    [ "${2:-}" = crash-ok ] && return
    if grep -q -i -e 'crashed' -e 'terminated' -e 'Sanitizer' "$dir/log"; then
        fail "$case_title: a plug-in crashed: $(grep -i -e crashed -e terminated -e Sanitizer "$dir/log" | head -3)"
    fi
}

# gimp_case NAME TITLE: one case in a fresh GIMP, its Script-Fu body on stdin
gimp_case() {
    gimp_start "$1"
    gimp_wait "$2"
}

case_end() {
    if [ "$case_failed" -eq 0 ]; then result=ok; else result="$case_failed FAILED"; fi
    echo "case $case_title: $case_time s, $result"
}

# expect LINE MESSAGE: out.txt holds LINE
expect() {
    grep -qxF -e "$1" "$dir/out.txt"
    check $? "$case_title: $2 (want '$1'; out.txt: $(grep -F -e "${1%% *}" "$dir/out.txt" | head -5 | tr '\n' '|'))"
}

# expect_log TEXT: GIMP's output holds TEXT (a PDB error message), or
# out.txt does (a Script-Fu error message, lib.scm's try)
expect_log() {
    cat "$dir/log" "$dir/out.txt" 2>/dev/null | grep -qF -e "$1"
    check $? "$case_title: no '$1' in GIMP's output: $(grep -h -A1 -i -e error -e '^message' "$dir/log" "$dir/out.txt" | head -6)"
}

# layer_field TAG I N: word N of the "layer TAG I ..." line (4 w, 5 h, 6 ox, 7 oy, 8 type)
layer_field() { awk -v t="$1" -v i="$2" -v n="$3" '$1 == "layer" && $2 == t && $3 == i { print $n }' "$dir/out.txt"; }
layer_name() { awk -v t="$1" -v i="$2" '$1 == "layer" && $2 == t && $3 == i' "$dir/out.txt" | cut -d' ' -f9-; }

# unchanged: the "before" and "after" signatures match: clean, same layers, same bytes
unchanged() {
    expect "dirty after 0" "the image was changed (dirty)"
    [ "$(grep '^count before ' "$dir/out.txt" | cut -d' ' -f3)" = "$(grep '^count after ' "$dir/out.txt" | cut -d' ' -f3)" ]
    check $? "$case_title: the layer count changed"
    grep '^layer before ' "$dir/out.txt" | cut -d' ' -f3- >"$dir/before.txt"
    grep '^layer after ' "$dir/out.txt" | cut -d' ' -f3- >"$dir/after.txt"
    cmp -s "$dir/before.txt" "$dir/after.txt"
    check $? "$case_title: layers changed: $(diff "$dir/before.txt" "$dir/after.txt" | head -4 | tr '\n' '|')"
    for f in "$dir"/before-*.raw; do
        cmp -s "$f" "$dir/after-${f##*/before-}"
        check $? "$case_title: pixels of ${f##*/} changed"
    done
}

# pixels TEXT FILE CHANNELS [TYPE]: the dump is not blank or constant
pixels() {
    r=$($CHECK notblank "$2" "$3" ${4:+"$4"})
    check $? "$case_title: $1 looks blank: $r"
}

# parameters FILE TEXT: the parasite text, its trailing NUL dropped
parameters() {
    got=$(tr -d '\000' <"$1" 2>/dev/null)
    [ "$got" = "$2" ]
    check $? "$case_title: parasite of ${1##*/} is '$got', want '$2'"
}

# Script-Fu for "call the plug-in" (tests/gimp/gen.sh: by position in 2.10,
# by keyword in 3.0), every argument given, the strings as Scheme literals
t2i() { # t2i IMG DRAWABLE PROMPT NEGATIVE SEED STEPS GUIDANCE SAMPLER W H COUNT MODEL
    diffuse_call RUN-NONINTERACTIVE plug-in-diffuse-txt2img "$1" "$2" prompt="$3" \
        negative-prompt="$4" seed="$5" steps="$6" guidance="$7" sampler="$8" width="$9" \
        height="${10}" count="${11}" model="${12}"
}
i2i() { # i2i IMG DRAWABLE PROMPT NEGATIVE SEED STEPS GUIDANCE SAMPLER STRENGTH COUNT MODEL
    diffuse_call RUN-NONINTERACTIVE plug-in-diffuse-img2img "$1" "$2" prompt="$3" \
        negative-prompt="$4" seed="$5" steps="$6" guidance="$7" sampler="$8" strength="$9" \
        count="${10}" model="${11}"
}
# ... with the test model and prompt
txt2img() { # txt2img IMG DRAWABLE SEED W H COUNT [MODEL]
    t2i "$1" "$2" "\"$PROMPT\"" "\"$NEGATIVE\"" "$3" 4 7.5 '"euler_a"' "$4" "$5" "$6" "\"${7-$MODEL}\""
}
img2img() { # img2img IMG DRAWABLE SEED STRENGTH COUNT [MODEL]
    i2i "$1" "$2" "\"$PROMPT\"" '""' "$3" 4 7.5 '"euler_a"' "$4" "$5" "\"${6-$MODEL}\""
}
PARAMS_TAIL="Steps: 4, Sampler: Euler a, CFG scale: 7.5"

# ------------------------------------------------------------------ core unit test

# the core's GIMP-free parts (settings, names, sizes, resampling): its own count
if [ -x "$UNIT_TEST" ]; then
    unit=$("$UNIT_TEST" 2>&1)
    printf '%s\n' "$unit" | grep -v -E '^[0-9]+ passed, [0-9]+ failed$'
    line=$(printf '%s\n' "$unit" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    if [ -n "$line" ]; then
        passed=$((passed + ${line%% passed*}))
        f=${line#*passed, }
        failed=$((failed + ${f%% failed}))
        echo "case 0 core unit test: $line"
    else
        fail "$UNIT_TEST crashed: $(printf '%s' "$unit" | tail -c 400)"
    fi
else
    fail "$UNIT_TEST not built (make)"
fi

# ------------------------------------------------------------------ start-up

if [ "$GIMP_GENERATION" = 2 ]; then
    gimp_case startup "start-up: GIMP registers the plug-in" <<EOF
(for-each
  (lambda (proc)
    (let ((n (list-ref (gimp-procedural-db-proc-info proc) 6)))
      (let loop ((i 0))
        (if (< i n)
            (let ((a (gimp-procedural-db-proc-arg proc i)))
              (out "arg" proc i (car a) (cadr a))
              (loop (+ i 1)))))))
  '("plug-in-diffuse-txt2img" "plug-in-diffuse-img2img" "plug-in-diffuse-txt2img-ext"
    "plug-in-diffuse-img2img-ext" "plug-in-diffuse-txt2img-ext2"))
EOF
    # the PDB contract: names, order and types (0 INT32, 3 FLOAT, 4 STRING, 13 IMAGE, 16 DRAWABLE)
    T2I="0 run-mode|13 image|16 drawable|4 prompt|4 negative-prompt|0 seed|0 steps|3 guidance|4 sampler|0 width|0 height|0 count|4 model"
    I2I="0 run-mode|13 image|16 drawable|4 prompt|4 negative-prompt|0 seed|0 steps|3 guidance|4 sampler|3 strength|0 count|4 model"
    # the extended forms: the same, then SDXL's conditioning (GIMP 2.10 calls
    # give every argument, so the old procedures keep their signature)
    EXT="0 original-width|0 original-height|0 crop-left|0 crop-top|0 target-width|0 target-height|0 empty-negative|0 fast-decoder"
    # Text to Image's second extended form: -ext's, then scale-to (-ext keeps its signature)
    EXT2="$T2I|$EXT|0 scale-to"
else
    gimp_case startup "start-up: GIMP registers the plug-in" <<EOF
(out "started")
EOF
    # GIMP 3.0's Script-Fu cannot read a procedure's argument specs; GIMP's
    # own record of them (pluginrc) has names, order, types, ranges, defaults
    $CHECK pdb-args "$profile/pluginrc" plug-in-diffuse-txt2img plug-in-diffuse-img2img \
        plug-in-diffuse-txt2img-ext plug-in-diffuse-img2img-ext plug-in-diffuse-txt2img-ext2 \
        >>"$dir/out.txt"
    SAMPLERS="gchararray euler_a"
    HEAD='run-mode GimpRunMode 1|image GimpImage 0|drawables GimpCoreObjectArray GimpDrawable|prompt gchararray ""|negative-prompt gchararray ""|seed gint -1 2147483647 -1|steps gint 1 1000 20|guidance gdouble 0 100 7.5'
    # SDXL's conditioning after model: named arguments, so calls without them work
    XLARGS='original-width gint 0 16384 0|original-height gint 0 16384 0|crop-left gint 0 16384 0|crop-top gint 0 16384 0|target-width gint 0 16384 0|target-height gint 0 16384 0|empty-negative gboolean 0|fast-decoder gboolean 0'
    # then the LoRA: a path ("" = none) and its weight
    XLARGS="$XLARGS|lora gchararray \"\"|lora-weight gdouble -10 10 1"
    T2I="$HEAD|sampler $SAMPLERS|width gint 0 4096 0|height gint 0 4096 0|count gint 1 100 1|model gchararray \"\"|$XLARGS"
    I2I="$HEAD|sampler $SAMPLERS|strength gdouble 0 1 0.75|count gint 1 100 1|model gchararray \"\"|$XLARGS"
    # Text to Image's scaling of the result (a choice), last
    T2I="$T2I|scale-to gchararray generated generated image selection"
    # Image to Image's inpaint area (a choice) and padding, last
    I2I="$I2I|inpaint-area gchararray whole-layer whole-layer selected-area|padding gint 0 1024 32"
    # and what the selection starts from, A1111's masked content
    I2I="$I2I|masked-content gchararray original original latent-noise"
    EXT=""
    EXT2=$T2I
    expect "sensitivity plug-in-diffuse-txt2img 13" "txt2img is not for one, several or no drawables"
    expect "sensitivity plug-in-diffuse-img2img 1" "img2img is not for exactly one drawable"
fi
expect_args() { # expect_args PROC "ARG|ARG|...": argument i of PROC is the i-th ARG, no more
    i=0
    echo "$2" | tr '|' '\n' >"$dir/want-$1.txt"
    while IFS= read -r a; do
        expect "arg $1 $i $a" "$1 argument $i"
        i=$((i + 1))
    done <"$dir/want-$1.txt"
    ! grep -q "^arg $1 $i " "$dir/out.txt"
    check $? "$case_title: $1 has more arguments"
}
expect_args plug-in-diffuse-txt2img "$T2I"
expect_args plug-in-diffuse-img2img "$I2I"
expect_args plug-in-diffuse-txt2img-ext "$T2I${EXT:+|$EXT}"
expect_args plug-in-diffuse-img2img-ext "$I2I${EXT:+|$EXT}"
expect_args plug-in-diffuse-txt2img-ext2 "$EXT2"
# the attribution: the project's authors, the copyright year, not placeholders
for label in '"_Text to Image..."' '"_Image to Image..."' '(menu-path "<Image>/Filters/Diffuse")' \
    '"RGB*, GRAY*, INDEXED*"' '"Diffuse developers"' '"Copyright 2026 Diffuse developers"' \
    '"2026"'; do
    grep -qF -e "$label" "$profile/pluginrc"
    check $? "$case_title: pluginrc has no $label"
done
# the help pages (GIMP's help-id mechanism): pluginrc records the plug-in's
# help domain at the pages shipped beside the binary, whose gimp-help.xml maps
# each procedure's help id (its name, which the dialogs' Help button asks
# for) to a section of a page that explains the fields
grep -qF -e '"org.diffuse.plug-in"' "$profile/pluginrc"
check $? "$case_title: pluginrc has no help domain org.diffuse.plug-in"
help_uri=$(grep -o '"file://[^"]*/help"' "$profile/pluginrc" | head -n 1 | tr -d '"')
help_dir=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.unquote(sys.argv[1][len("file://"):]))' "$help_uri" 2>/dev/null)
[ -f "$help_dir/en/gimp-help.xml" ]
check $? "$case_title: the help domain '$help_uri' has no en/gimp-help.xml"
for proc in plug-in-diffuse-txt2img plug-in-diffuse-img2img plug-in-diffuse-txt2img-ext \
    plug-in-diffuse-img2img-ext plug-in-diffuse-txt2img-ext2; do
    page=$(sed -n "s/.*help-id=\"$proc\" help-page=\"\([^\"]*\)\".*/\1/p" "$help_dir/en/gimp-help.xml" 2>/dev/null)
    [ -n "$page" ] && grep -q "id=\"${page#*#}\"" "$help_dir/en/${page%%#*}"
    check $? "$case_title: no help page for $proc ('$page')"
done
for field in prompt negative-prompt seed guidance strength sizes scale-to model; do
    grep -q "id=\"$field\"" "$help_dir/en/index.html" 2>/dev/null
    check $? "$case_title: the help page does not explain $field"
done
case_end

# ------------------------------------------------------------------ 1. txt2img

gimp_case txt2img "1 txt2img, 64x64 RGB, count 2" <<EOF
(let* ((img (new-image RGB 64 64)))
  $(txt2img img '(background img)' 5 64 64 2)
  (signature img "after"))
EOF
expect "count after 3" "layer count is not 1 + 2"
expect "dirty after 1" "the image is not marked changed"
for i in 0 1; do
    seed=$((5 + i))
    [ "$(layer_name after $i)" = "Diffuse: $PROMPT (seed $seed)" ]
    check $? "$case_title: layer $i is named '$(layer_name after $i)'"
    [ "$(layer_field after $i 4) $(layer_field after $i 5) $(layer_field after $i 6) $(layer_field after $i 7)" = "64 64 0 0" ]
    check $? "$case_title: layer $i is not 64x64 at 0,0"
    [ "$(layer_field after $i 8)" = 1 ]
    check $? "$case_title: layer $i is not RGBA (type $(layer_field after $i 8))"
    parameters "$dir/after-$i-parameters.txt" "$PROMPT
Negative prompt: $NEGATIVE
$PARAMS_TAIL, Seed: $seed, Size: 64x64, Model: $MODEL_NAME, RNG: NV"
    pixels "layer $i" "$dir/after-$i.raw" 4
done
[ "$(layer_name after 2)" = background ]
check $? "$case_title: the new layers are not above the background"
! cmp -s "$dir/after-0.raw" "$dir/after-1.raw"
check $? "$case_title: seeds 5 and 6 gave the same pixels"
case_end

# ------------------------------------------------------------------ 1b. placement

# A layer smaller than the image is centred in it, and on the selection's
# bounds when there is a selection (a larger one overhangs them evenly).
gimp_case place "1b txt2img: a smaller layer centred in the image, then on the selection" <<EOF
(let* ((img (new-image RGB 64 64)))
  $(txt2img img '(background img)' 5 32 48 1)
  (gimp-image-select-rectangle img CHANNEL-OP-REPLACE 40 4 20 12)
  $(txt2img img '(background img)' 5 16 24 1)
  (signature img "after"))
EOF
expect "count after 3" "layer count is not 1 + 2"
# each run goes right above the background: the first ends on top
got="$(layer_field after 0 4)x$(layer_field after 0 5) at $(layer_field after 0 6),$(layer_field after 0 7)"
[ "$got" = "32x48 at 16,8" ]
check $? "$case_title: the layer without a selection is $got, want 32x48 at 16,8"
got="$(layer_field after 1 4)x$(layer_field after 1 5) at $(layer_field after 1 6),$(layer_field after 1 7)"
[ "$got" = "16x24 at 42,-2" ]
check $? "$case_title: the layer on the selection 20x12 at 40,4 is $got, want 16x24 at 42,-2"
case_end

# ------------------------------------------------------------------ 1c. scaled

# scale-to (2.10: plug-in-diffuse-txt2img-ext2, by number; 3.0: the choice):
# the 64x64 picture scaled with GIMP's resampling, the context's
# interpolation, to fill the image or the selection's bounds, aspect kept,
# centred, the overflow cut
scale_call() { # scale_call IMG generated|image|selection [MODEL]
    if [ "$GIMP_GENERATION" = 2 ]; then
        case $2 in generated) to=0 ;; image) to=1 ;; *) to=2 ;; esac
        diffuse_call RUN-NONINTERACTIVE plug-in-diffuse-txt2img-ext2 "$1" "(background $1)" \
            prompt="\"$PROMPT\"" negative-prompt='""' seed=7 steps=4 guidance=7.5 \
            sampler='"euler_a"' width=64 height=64 count=1 model="\"${3-$MODEL}\"" \
            original-width=0 original-height=0 crop-left=0 crop-top=0 target-width=0 \
            target-height=0 empty-negative=FALSE fast-decoder=FALSE scale-to=$to
    else
        diffuse_call RUN-NONINTERACTIVE plug-in-diffuse-txt2img "$1" "(background $1)" \
            prompt="\"$PROMPT\"" negative-prompt='""' seed=7 steps=4 guidance=7.5 \
            sampler='"euler_a"' width=64 height=64 count=1 model="\"${3-$MODEL}\"" \
            scale-to="\"$2\""
    fi
}
gimp_case scale "1c txt2img scaled to the image, the selection's bounds, none; a failure" <<EOF
(let* ((img (new-image RGB 192 96)))
  (signature img "before")
  (try "missing" (lambda () $(scale_call img image /no/such/model)))
  (signature img "after")
  (try "plain" (lambda () $(scale_call img generated)))
  (try "image" (lambda () $(scale_call img image)))
  (gimp-context-set-interpolation INTERPOLATION-NONE)
  (try "nearest" (lambda () $(scale_call img image)))
  (gimp-image-select-rectangle img CHANNEL-OP-REPLACE 30 20 100 50)
  (try "selection" (lambda () $(scale_call img selection)))
  (gimp-selection-none img)
  (try "unselected" (lambda () $(scale_call img selection)))
  (signature img "scaled"))
EOF
expect "status missing error" "a call with a missing model did not fail"
unchanged
for t in plain image nearest selection unselected; do
    expect "status $t ok" "the $t call failed: $(grep "^message $t" "$dir/out.txt")"
done
expect "count scaled 6" "the five calls did not make five layers"
# each above the background, the first made on top: plain, image, nearest,
# selection, unselected; the name and the parameters (Size: the generated
# size) as unscaled (GIMP adds " #N" to a name taken)
for want in "0 64x64 at 64,16" "1 192x96 at 0,0" "2 192x96 at 0,0" "3 100x50 at 30,20" \
    "4 192x96 at 0,0"; do
    i=${want%% *}
    got="$i $(layer_field scaled "$i" 4)x$(layer_field scaled "$i" 5) at $(layer_field scaled "$i" 6),$(layer_field scaled "$i" 7)"
    [ "$got" = "$want" ]
    check $? "$case_title: layer $got, want $want"
    case $(layer_name scaled "$i") in
    "Diffuse: $PROMPT (seed 7)" | "Diffuse: $PROMPT (seed 7) #"*) pass ;;
    *) fail "$case_title: layer $i is named '$(layer_name scaled "$i")'" ;;
    esac
    tr -d '\000' <"$dir/scaled-$i-parameters.txt" | grep -q "^$PARAMS_TAIL, Seed: 7, Size: 64x64, Model: $MODEL_NAME, RNG: NV\$"
    check $? "$case_title: layer $i's parameters: $(tr -d '\000' <"$dir/scaled-$i-parameters.txt" | tail -n 1)"
done
# 64x64 to cover 192x96: 192x192, rows 48 on kept; nearest (INTERPOLATION-NONE
# set by the script) copies the picture's pixels in 3x3 blocks, GIMP's default
# interpolation blends them
r=$($CHECK scaled "$dir/scaled-0.raw" 64 64 "$dir/scaled-2.raw" 192 96 3 0 48 nearest)
check $? "$case_title: the image scaled with INTERPOLATION-NONE is not the picture in 3x3 blocks: $r"
r=$($CHECK scaled "$dir/scaled-0.raw" 64 64 "$dir/scaled-1.raw" 192 96 3 0 48)
check $? "$case_title: the image scaled with the default interpolation is not the picture smoothly enlarged: $r"
pixels "the layer on the selection" "$dir/scaled-3.raw" 4
cmp -s "$dir/scaled-4.raw" "$dir/scaled-2.raw"
check $? "$case_title: selection bounds without a selection are not the image"
case_end

# ------------------------------------------------------------------ 2. img2img

gimp_case img2img "2 img2img, feathered elliptical selection" <<EOF
(let* ((img (new-image RGB 64 64)))
  (raw img (background img) "orig")
  (select-feathered-ellipse img)
  $(img2img img '(background img)' 3 0.6 1)
  (raw img (background img) "orig-after")
  (signature img "after"))
EOF
expect "count after 2" "layer count is not 1 + 1"
# shellcheck disable=SC2046 # "bounds X1 Y1 X2 Y2": the words are wanted
set -- $(grep '^bounds ' "$dir/out.txt")
x=$2 y=$3 w=$(($4 - $2)) h=$(($5 - $3))
[ "$(layer_field after 0 4) $(layer_field after 0 5) $(layer_field after 0 6) $(layer_field after 0 7)" = "$w $h $x $y" ]
check $? "$case_title: the layer is not at the selection ($w x $h at $x,$y): $(grep '^layer after 0' "$dir/out.txt")"
[ "$(layer_name after 0)" = "Diffuse: $PROMPT (seed 3)" ]
check $? "$case_title: layer named '$(layer_name after 0)'"
got=$(tr -d '\000' <"$dir/after-0-parameters.txt")
case $got in
"$PROMPT
Negative prompt: 
$PARAMS_TAIL, Seed: 3, Size: "*"x"*", Model: $MODEL_NAME, Denoising strength: 0.6, RNG: NV") pass ;;
*) fail "$case_title: parasite '$got'" ;;
esac
cmp -s "$dir/orig.raw" "$dir/orig-after.raw"
check $? "$case_title: the source layer changed"
r=$($CHECK img2img "$dir/orig.raw" 3 "$dir/mask.raw" 64 "$dir/after-0.raw" 4 "$x" "$y" "$w" "$h")
check $? "$case_title: $r"
echo "   $r"
case_end

# ------------------------------------------------------------------ 2b, 2c. inpaint area

# img2img of a small feathered selection on a 1024x768 image, in each inpaint
# area (core.h, CoreArea): the layer is the selection's bounds at their
# place, outside the selection the original bytes, the feather a blend; whole
# layer generates the bounds at about their size (the PDB's default, as
# before), selected area the bounds grown by 32 pixels, scaled so that their
# longer side is the model's native size (64), from latent noise (masked
# content). The parasite says so as A1111 does ("Inpaint area: Only masked",
# its padding, "Masked content"); the whole layer's leaves out A1111's
# defaults. GIMP 3.0 names the area in the call; 2.10's arguments lack it, so
# its script sets the remembered settings and runs with them (lib.scm,
# set-last-values).
SETTINGS="prompt=$PROMPT\nnegative-prompt=\nseed=3\nsteps=4\nguidance=7.5\nsampler=euler_a\nstrength=0.6\ncount=1\nmodel=$MODEL\n"
img2img_selected() { # img2img_selected IMG DRAWABLE
    if [ "$GIMP_GENERATION" = 2 ]; then
        echo "(set-last-values \"plug-in-diffuse-img2img\" \"${SETTINGS}inpaint-area=1\npadding=32\nmasked-content=1\n\")"
        echo "(plug-in-diffuse-img2img RUN-WITH-LAST-VALS $1 $2 \"\" \"\" 0 1 1.0 \"\" 0.5 1 \"\")"
    else
        diffuse_call RUN-NONINTERACTIVE plug-in-diffuse-img2img "$1" "$2" prompt="\"$PROMPT\"" \
            negative-prompt='""' seed=3 steps=4 guidance=7.5 sampler='"euler_a"' strength=0.6 \
            count=1 model="\"$MODEL\"" inpaint-area='"selected-area"' padding=32 \
            masked-content='"latent-noise"'
    fi
}
r8() { echo $((($1 + 4) / 8 * 8)); } # core_round8 of a positive integer
area_case() { # area_case whole|selected NUMBER
    if [ "$1" = whole ]; then
        call=$(img2img img '(background img)' 3 0.6 1)
    else
        call=$(img2img_selected img '(background img)')
    fi
    gimp_case "area-$1" "$2 inpaint area $1: small feathered selection on 1024x768" <<EOF
(let* ((img (new-image RGB 1024 768)))
  (raw img (background img) "orig")
  (select-small-ellipse img 600 400 80 24)
  $call
  (raw img (background img) "orig-after")
  (signature img "after"))
EOF
    expect "count after 2" "layer count is not 1 + 1"
    # shellcheck disable=SC2046 # "bounds X1 Y1 X2 Y2": the words are wanted
    set -- "$1" $(grep '^bounds ' "$dir/out.txt")
    x=$3 y=$4 w=$(($5 - $3)) h=$(($6 - $4))
    [ "$(layer_field after 0 4) $(layer_field after 0 5) $(layer_field after 0 6) $(layer_field after 0 7)" = "$w $h $x $y" ]
    check $? "$case_title: the layer is not the selection's bounds ($w x $h at $x,$y): $(grep '^layer after 0' "$dir/out.txt")"
    size=$(tr -d '\000' <"$dir/after-0-parameters.txt" | sed -n 's/.*Size: \([0-9]*x[0-9]*\),.*/\1/p')
    if [ "$1" = whole ]; then # longer side over 64: the bounds' own size
        want="$(r8 $w)x$(r8 $h)"
    else # the crop, (w + 64) x (h + 64) inside the image, its longer side at 64
        want="64x$((((h + 64) * 64 / (w + 64) + 4) / 8 * 8))"
    fi
    [ "$size" = "$want" ]
    check $? "$case_title: generated at '$size', want $want"
    tail=$(tr -d '\000' <"$dir/after-0-parameters.txt" | sed -n 's/.*Denoising strength: 0.6, RNG: NV//p')
    if [ "$1" = whole ]; then want=""; else
        want=", Masked content: latent noise, Inpaint area: Only masked, Masked area padding: 32"
    fi
    [ "$tail" = "$want" ]
    check $? "$case_title: the parasite ends '$tail', want '$want'"
    cmp -s "$dir/orig.raw" "$dir/orig-after.raw"
    check $? "$case_title: the source layer changed"
    r=$($CHECK img2img "$dir/orig.raw" 3 "$dir/mask.raw" 1024 "$dir/after-0.raw" 4 "$x" "$y" "$w" "$h")
    check $? "$case_title: $r"
    seam=$($CHECK seam "$dir/orig.raw" 3 "$dir/mask.raw" 1024 "$dir/after-0.raw" 4 "$x" "$y" "$w" "$h")
    check $? "$case_title: the feather is no blend: $seam"
    echo "   layer ${w}x$h at $x,$y, generated at $size; $r; $seam"
    case_end
}
area_case whole 2b
area_case selected 2c

# ------------------------------------------------------------------ 3. bad model

gimp_case bad-model "3 bad model path: PDB error, image unchanged" <<EOF
(let* ((img (new-image RGB 64 64)))
  (signature img "before")
  (try "txt2img" (lambda () $(txt2img img '(background img)' 1 64 64 1 /nonexistent/model.safetensors)))
  (gimp-image-select-ellipse img CHANNEL-OP-REPLACE 16 12 32 36)
  (gimp-image-clean-all img)
  (try "img2img" (lambda () $(img2img img '(background img)' 1 0.5 1 /nonexistent/model.safetensors)))
  (signature img "after"))
EOF
expect "status txt2img error" "txt2img with a bad model did not fail"
expect "status img2img error" "img2img with a bad model did not fail"
expect_log "cannot load the model: /nonexistent/model.safetensors"
# a model argument that is no model is the caller's error (GIMP_PDB_CALLING_ERROR)
expect_log "failed on invalid input arguments"
unchanged
case_end

# ------------------------------------------------------------------ 3b. empty prompt

# The default model draws only what a prompt describes: an empty prompt is
# refused before anything runs. An SD model draws unconditioned, which may
# be meant: the run goes ahead and the painter is told.
gimp_case empty-prompt "3b empty prompt: refused with the default model, told with an SD model" <<EOF
(let* ((img (new-image RGB 64 64)) (bg (background img)))
  (try "default" (lambda () $(t2i img bg '""' '""' 1 4 7.5 '"euler_a"' 64 64 1 '""')))
  (out "count middle" (length (layers img)))
  (try "sd" (lambda () $(t2i img bg '"  "' '""' 1 4 7.5 '"euler_a"' 64 64 1 "\"$MODEL\"")))
  (out "count after" (length (layers img))))
EOF
expect "status default error" "an empty prompt with the default model did not fail"
expect_log "prompt: the default model needs a prompt"
expect "count middle 1" "the refused run added a layer"
expect "status sd ok" "an empty prompt with an SD model failed: $(grep '^message sd' "$dir/out.txt")"
expect_log "The prompt is empty: the model draws without one"
expect "count after 2" "the unconditioned run made no layer"
case_end

# ------------------------------------------------------------------ 4. bad arguments

gimp_case bad-size "4 impossible sizes and bad arguments: PDB errors, image unchanged" <<EOF
(let* ((img (new-image RGB 64 64)) (bg (background img)))
  (signature img "before")
  (try "w63" (lambda () $(txt2img img bg 1 63 64 1)))
  (try "w100000" (lambda () $(txt2img img bg 1 100000 64 1)))
  (try "h-8" (lambda () $(txt2img img bg 1 64 -8 1)))
  (try "count0" (lambda () $(txt2img img bg 1 64 64 0)))
  (try "sampler" (lambda () $(t2i img bg '"x"' '""' 1 4 7.5 '"nope"' 64 64 1 "\"$MODEL\"")))
  (try "steps0" (lambda () $(t2i img bg '"x"' '""' 1 0 7.5 '"euler"' 64 64 1 "\"$MODEL\"")))
  (try "seed-2" (lambda () $(t2i img bg '"x"' '""' -2 4 7.5 '"euler"' 64 64 1 "\"$MODEL\"")))
  (try "strength" (lambda () $(img2img img bg 1 1.5 1)))
  (try "strength0" (lambda () $(img2img img bg 1 0 1)))
  (signature img "after"))
EOF
for t in w63 w100000 h-8 count0 sampler steps0 seed-2 strength strength0; do
    expect "status $t error" "$t did not fail"
done
# values the declared ranges allow and the core refuses
expect_log "size: 63x64 is not possible"
expect_log "strength: 0 is outside (0, 1]"
if [ "$GIMP_GENERATION" = 2 ]; then
    # GIMP 2.10 declares no ranges: the core refuses the rest too
    expect_log "size: 100000x64 is not possible"
    expect_log "size: 64x-8 is not possible"
    expect_log "count: 0 is outside"
    expect_log 'sampler: "nope" is not one of'
    expect_log "steps: 0 is outside"
    expect_log "seed: -2 is not possible"
    expect_log "strength: 1.5 is outside"
else
    # GIMP 3.0 refuses values outside the declared ranges before the
    # plug-in runs (Script-Fu raises the error, naming the range); the
    # sampler is a string, as in 2.10, so that the core names the choices
    expect_log "has value 100000 out of range: 0 to 4096"
    expect_log "has value -8 out of range: 0 to 4096"
    expect_log "has value 0 out of range: 1 to 100"
    expect_log "has value 0 out of range: 1 to 1000"
    expect_log "has value -2 out of range: -1 to 2147483647"
    expect_log "has value 1.500000 out of range: 0.000000 to 1.000000"
    expect_log 'sampler: "nope" is not one of'
fi
unchanged
case_end

# ------------------------------------------------------------------ 5. same seed

gimp_case seed "5 fixed seed twice: identical pixels; seed -1: a random seed, recorded" <<EOF
(let* ((img (new-image RGB 64 64)))
  $(txt2img img '(background img)' 42 64 64 1)
  $(txt2img img '(background img)' 42 64 64 1)
  $(txt2img img '(background img)' -1 64 64 1)
  (signature img "after"))
EOF
# each run goes right above the background: the first run ends on top
expect "count after 4" "layer count is not 1 + 3"
cmp -s "$dir/after-0.raw" "$dir/after-1.raw"
check $? "$case_title: seed 42 gave different pixels twice"
name=$(layer_name after 2)
seed=${name##*(seed }
seed=${seed%)}
case $seed in '' | *[!0-9]*) fail "$case_title: seed -1 gave the name '$name'" ;; *) pass ;; esac
grep -q "Seed: $seed," "$dir/after-2-parameters.txt"
check $? "$case_title: the parasite does not record seed $seed"
case_end

# ------------------------------------------------------------------ 5b. last values

# Each procedure keeps its own last values: Text to Image's and Image to
# Image's, set apart (2.10: the plug-in's data under each procedure's name;
# 3.0: each procedure config's last-values file), are what RUN-WITH-LAST-VALS
# runs each with, not one shared set.
last_values() { # last_values PROC PROMPT STEPS: PROC's remembered values
    if [ "$GIMP_GENERATION" = 2 ]; then
        echo "(set-last-values \"plug-in-diffuse-$1\" \"prompt=$2\nnegative-prompt=\nseed=3\nsteps=$3\nguidance=7.5\nsampler=euler\nwidth=64\nheight=64\nstrength=0.5\ncount=1\nmodel=$MODEL\n\")"
    else
        for f in GimpProcedureConfigRun GimpProcedureConfig; do
            printf '(prompt "%s")\n(seed 3)\n(steps %s)\n(sampler "euler")\n(width 64)\n(height 64)\n(strength 0.5)\n(model "%s")\n' \
                "$2" "$3" "$MODEL" >"$profile/plug-in-settings/$f-plug-in-diffuse-$1.last"
        done
    fi
}
mkdir -p "$profile/plug-in-settings"
gimp_case last-values "5b each procedure keeps its own last values (RUN-WITH-LAST-VALS)" <<EOF
(let* ((img (new-image RGB 64 64)) (bg (background img)))
  $(last_values txt2img "a red circle on a blue background" 3)
  $(last_values img2img "a green square on a white background" 2)
  (try "txt2img" (lambda () $(diffuse_call RUN-WITH-LAST-VALS plug-in-diffuse-txt2img img bg prompt='""' \
      negative-prompt='""' seed=0 steps=1 guidance=1.0 sampler='""' width=0 height=0 count=1 model='""')))
  (try "img2img" (lambda () $(diffuse_call RUN-WITH-LAST-VALS plug-in-diffuse-img2img img bg prompt='""' \
      negative-prompt='""' seed=0 steps=1 guidance=1.0 sampler='""' strength=0.5 count=1 model='""')))
  (signature img "after"))
EOF
rm -f "$profile"/plug-in-settings/*plug-in-diffuse-*.last
expect "status txt2img ok" "txt2img with its last values failed: $(grep '^message txt2img' "$dir/out.txt")"
expect "status img2img ok" "img2img with its last values failed: $(grep '^message img2img' "$dir/out.txt")"
# the img2img run went right above the background, below the first run's layer
steps() { tr -d '\000' <"$dir/after-$1-parameters.txt" 2>/dev/null | head -n 1; sed -n 's/.*\(Steps: [0-9]*\).*/\1/p' "$dir/after-$1-parameters.txt" 2>/dev/null; }
[ "$(steps 0 | tr '\n' '|')" = "a red circle on a blue background|Steps: 3" ]
check $? "$case_title: Text to Image ran with '$(steps 0 | tr '\n' '|')', not its own last values"
[ "$(steps 1 | tr '\n' '|')" = "a green square on a white background|Steps: 2" ]
check $? "$case_title: Image to Image ran with '$(steps 1 | tr '\n' '|')', not its own last values"
case_end

# ------------------------------------------------------------------ 5c. Karras

# The sampler argument takes a Karras form of the samplers that have one
# (dpmpp_2m_karras), which the parasite records as A1111 does ("Schedule
# type: Karras") and which draws another picture than the plain sampler,
# still taken as before; a sampler without Karras sigmas has no such form.
gimp_case karras "5c sampler dpmpp_2m_karras beside dpmpp_2m; ddim_karras refused" <<EOF
(let* ((img (new-image RGB 64 64)) (bg (background img)))
  (try "plain" (lambda () $(t2i img bg "\"$PROMPT\"" '""' 4 4 7.5 '"dpmpp_2m"' 64 64 1 "\"$MODEL\"")))
  (try "karras" (lambda () $(t2i img bg "\"$PROMPT\"" '""' 4 4 7.5 '"dpmpp_2m_karras"' 64 64 1 "\"$MODEL\"")))
  (try "ddim" (lambda () $(t2i img bg "\"$PROMPT\"" '""' 4 4 7.5 '"ddim_karras"' 64 64 1 "\"$MODEL\"")))
  (signature img "after"))
EOF
expect "status plain ok" "the dpmpp_2m call failed: $(grep '^message plain' "$dir/out.txt")"
expect "status karras ok" "the dpmpp_2m_karras call failed: $(grep '^message karras' "$dir/out.txt")"
expect "status ddim error" "ddim_karras did not fail"
expect_log 'sampler: "ddim_karras" is not one of'
expect "count after 3" "the two runs did not make two layers"
# each run goes right above the background: the plain one ends on top
parameters "$dir/after-0-parameters.txt" "$PROMPT
Negative prompt: 
Steps: 4, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 4, Size: 64x64, Model: $MODEL_NAME, RNG: NV"
parameters "$dir/after-1-parameters.txt" "$PROMPT
Negative prompt: 
Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 4, Size: 64x64, Model: $MODEL_NAME, RNG: NV"
! cmp -s "$dir/after-0.raw" "$dir/after-1.raw"
check $? "$case_title: Karras sigmas made the plain sampler's picture"
case_end

# ------------------------------------------------------------------ 6. grayscale

gimp_case gray "6 grayscale image: txt2img and img2img make grey layers" <<EOF
(let* ((img (new-image GRAY 64 64)))
  $(txt2img img '(background img)' 7 64 64 1)
  $(img2img img '(background img)' 7 0.5 1)
  (signature img "after"))
EOF
expect "count after 3" "layer count is not 1 + 2"
for i in 0 1; do
    [ "$(layer_field after $i 8)" = 3 ]
    check $? "$case_title: layer $i is not GRAYA (type $(layer_field after $i 8))"
    pixels "layer $i" "$dir/after-$i.raw" 2
done
case_end

# ------------------------------------------------------------------ 7. indexed

gimp_case indexed "7 indexed image: a clear refusal, image unchanged" <<EOF
(let* ((img (new-image RGB 64 64)))
  (gimp-image-convert-indexed img CONVERT-DITHER-NONE CONVERT-PALETTE-GENERATE 16 FALSE FALSE "")
  (gimp-image-clean-all img)
  (signature img "before")
  (try "txt2img" (lambda () $(txt2img img '(background img)' 1 64 64 1)))
  (try "img2img" (lambda () $(img2img img '(background img)' 1 0.5 1)))
  (signature img "after"))
EOF
expect "status txt2img error" "txt2img on an indexed image did not fail"
expect "status img2img error" "img2img on an indexed image did not fail"
expect_log "Diffuse needs an RGB or grayscale image: Image > Mode > RGB"
unchanged
case_end

# ------------------------------------------------------------------ 8. default model

if [ -e "$PLUGIN_DIR/diffuse/models/default" ]; then
    gimp_case default "8 default model (\"\") installed beside the plug-in" <<EOF
(let* ((img (new-image RGB 64 64)))
  (try "txt2img" (lambda () $(txt2img img '(background img)' 1 0 0 1 "")))
  (signature img "after"))
EOF
    expect "status txt2img ok" "txt2img with the default model failed: $(grep -A1 Error "$dir/log" | head -4)"
    grep -q "Model: default" "$dir/after-0-parameters.txt"
    check $? "$case_title: the parasite does not say 'Model: default'"
else
    gimp_case default "8 no default model installed: a clear error, image unchanged" <<EOF
(let* ((img (new-image RGB 64 64)))
  (signature img "before")
  (try "txt2img" (lambda () $(txt2img img '(background img)' 1 64 64 1 "")))
  (signature img "after"))
EOF
    expect "status txt2img error" "txt2img without a default model did not fail"
    expect_log "no default model installed; choose a model file or folder"
    unchanged
fi
case_end

# ------------------------------------------------------------------ 9. float image

gimp_case float "9 img2img on a 32-bit linear float image: outside the selection bit-identical" <<EOF
(let* ((img (new-image RGB 64 64)))
  (select-feathered-ellipse img)
  (gimp-image-convert-precision img PRECISION-FLOAT-LINEAR)
  (raw img (background img) "orig")
  $(img2img img '(background img)' 3 0.6 1)
  (signature img "after"))
EOF
expect "count after 2" "layer count is not 1 + 1"
# shellcheck disable=SC2046 # "bounds X1 Y1 X2 Y2": the words are wanted
set -- $(grep '^bounds ' "$dir/out.txt")
x=$2 y=$3 w=$(($4 - $2)) h=$(($5 - $3))
r=$($CHECK img2img "$dir/orig.raw" 3 "$dir/mask.raw" 64 "$dir/after-0.raw" 4 "$x" "$y" "$w" "$h" f32)
check $? "$case_title: $r"
case_end

# ------------------------------------------------------------------ 10. groups and offsets

gimp_case group "10 img2img on an offset layer in a group: result above it, clipped to it" <<EOF
(let* ((img (new-image RGB 64 64))
       (group (group-new img))
       (l (layer-new img "small" 40 30 RGB-IMAGE)))
  (gimp-image-insert-layer img group 0 0)
  (gimp-image-insert-layer img l group 0)
  (gimp-layer-set-offsets l 20 10)
  (fill-pattern img l)
  (gimp-image-select-rectangle img CHANNEL-OP-REPLACE 0 0 48 32)
  $(img2img img l 9 0.5 1)
  (let ((new (car (children group))))
    (out "parent" (if (= (car (gimp-item-get-parent new)) group) "group" "elsewhere"))
    (out "position" (car (gimp-image-get-item-position img new)) (car (gimp-image-get-item-position img l)))
    (out "geometry" (drawable-width new) (drawable-height new)
         (car (drawable-offsets new)) (cadr (drawable-offsets new)))))
EOF
expect "parent group" "the result is not in the drawable's group"
expect "position 0 1" "the result is not right above the drawable"
expect "geometry 28 22 20 10" "the result is not the selection clipped to the layer"
case_end

# ------------------------------------------------------------------ 10b, 10c. groups and text

# A layer group has no pixels of its own: Image to Image on it is refused
# with a message, the image untouched (it used to insert a 1x1 layer).
gimp_case group-refused "10b img2img on a layer group: a clear refusal, image unchanged" <<EOF
(let* ((img (new-image RGB 64 64))
       (group (group-new img))
       (l (layer-new img "inner" 64 64 RGB-IMAGE)))
  (gimp-image-insert-layer img group 0 0)
  (gimp-image-insert-layer img l group 0)
  (fill-pattern img l)
  (gimp-image-clean-all img)
  (try "group" (lambda () $(img2img img group 9 0.5 1)))
  (out "dirty after" (car (gimp-image-is-dirty img)))
  (out "count after" (length (layers img)) (length (children group))))
EOF
expect "status group error" "img2img on a group did not fail"
expect_log "a layer group has none of its own"
expect "dirty after 0" "the image was changed (dirty)"
expect "count after 2 1" "layers were added"
case_end

# A text layer is repainted from its rendered pixels and keeps their alpha:
# the letters' shape stays, not an opaque block over the image.
CASE_FONTS=" " gimp_case text "10c img2img on a text layer: its rendered pixels, alpha kept" <<EOF
(let* ((img (new-image RGB 64 64))
       (tl (text-layer img "Diffuse" 24)))
  (gimp-image-clean-all img)
  (out "text-layer" (if (text-layer? tl) "yes" "no"))
  (raw img tl "text")
  (try "text" (lambda () $(img2img img tl 9 0.6 1)))
  (let ((new (car (layers img))))
    (raw img new "result")
    (out "geometry" (drawable-width new) (drawable-height new)
         (car (drawable-offsets new)) (cadr (drawable-offsets new)))
    (out "geometry-text" (drawable-width tl) (drawable-height tl)
         (car (drawable-offsets tl)) (cadr (drawable-offsets tl)))))
EOF
expect "text-layer yes" "the script made no text layer"
expect "status text ok" "img2img on a text layer failed: $(grep '^message text' "$dir/out.txt")"
[ "$(grep '^geometry ' "$dir/out.txt" | cut -d' ' -f2-)" = "$(grep '^geometry-text ' "$dir/out.txt" | cut -d' ' -f2-)" ]
check $? "$case_title: the result is not the text layer's size and place: $(grep '^geometry' "$dir/out.txt" | tr '\n' '|')"
r=$($CHECK alpha "$dir/text.raw" "$dir/result.raw")
check $? "$case_title: $r"
echo "   $r"
case_end

# ------------------------------------------------------------------ 11. memory

CASE_ENV=DIFFUSE_MEMORY_LIMIT_MB=1 gimp_case memory \
    "11 more memory than available (DIFFUSE_MEMORY_LIMIT_MB=1): refused, image unchanged" <<EOF
(let* ((img (new-image RGB 64 64)))
  (signature img "before")
  (try "txt2img" (lambda () $(txt2img img '(background img)' 1 64 64 1)))
  (signature img "after"))
EOF
expect "status txt2img error" "a run needing more memory than available did not fail"
expect_log "MiB of memory, only 1 MiB are available"
unchanged
case_end

# ------------------------------------------------------------------ 11b. memory peak

# The memory check's prediction holds: a Selected area run on a large
# selection of a 1536x1024 image (the plug-in's own share, the pixels read,
# scaled and blended at full resolution, is most of it with the test model)
# reports, with DIFFUSE_VERBOSE, the peak it predicted (the resident set when
# it began plus the estimate it checked against the memory available) and
# the process's real peak resident set (VmHWM); the real peak must not pass
# the prediction.
CASE_ENV=DIFFUSE_VERBOSE=1 gimp_case memory-peak \
    "11b memory: the plug-in's peak within the request's estimate (Selected area, 1536x1024)" <<EOF
(let* ((img (new-image RGB 1536 1024)))
  (select-small-ellipse img 100 80 1300 860)
  (try "img2img" (lambda () $(img2img_selected img '(background img)')))
  (signature img "after"))
EOF
expect "status img2img ok" "the run failed: $(grep '^message' "$dir/out.txt")"
expect "count after 2" "no layer made"
line=$(grep '^diffuse: memory: ' "$dir/log" | tail -n 1)
# shellcheck disable=SC2086 # the words of the line are wanted
set -- $line
predicted=${5:-0} start=${7#(} need=${10:-0} peak=${13:-0}
[ -n "$line" ] && [ "$peak" -gt 0 ] && [ "$peak" -le "$predicted" ]
check $? "$case_title: peak $peak bytes over the predicted $predicted: '$line'"
echo "   peak $((peak >> 20)) MiB, predicted $((predicted >> 20)) MiB ($((start >> 20)) MiB resident + $((need >> 20)) MiB estimated)"
case_end

# ------------------------------------------------------------------ 12. killed

# GIMP cancels a plug-in's progress by killing it: kill ours (SIGKILL, found
# as GIMP's child) during a long run; the image must be as it was.
gimp_start killed <<EOF
(let* ((img (new-image RGB 64 64)))
  (signature img "before")
  (try "txt2img" (lambda () $(t2i img '(background img)' "\"$PROMPT\"" '""' 1 200 7.5 '"euler_a"' 256 256 1 "\"$MODEL\"")))
  (signature img "after"))
EOF
victim=""
tries=0
while [ -z "$victim" ] && [ "$tries" -lt 600 ]; do
    for child in $(ps -o pid= --ppid "$gimp" 2>/dev/null); do # timeout's child is GIMP
        victim=$(ps -o pid=,args= --ppid "$child" 2>/dev/null |
            awk '/plug-ins[^ ]*\/diffuse\/diffuse/ { print $1 }')
    done
    tries=$((tries + 1))
    [ -n "$victim" ] || sleep 0.1
done
sleep 2 # well into the run
killed=1
[ -n "$victim" ] && kill -9 "$victim" 2>/dev/null && killed=0
gimp_wait "12 plug-in killed mid-run (as GIMP cancels): image unchanged" crash-ok
check $killed "$case_title: found no running plug-in to kill"
expect "status txt2img error" "the killed run did not fail"
unchanged
case_end

# ------------------------------------------------------------------ 12b, 12c. progress window

# Interactive runs show the picture forming in a progress window with Cancel
# (plugin/progress.c); $DIFFUSE_PROGRESS_WINDOW shows it in these batch runs
# too, under Xvfb. It never touches the image: with the window the layers are
# those of a run without it (case 1, same seed), and Cancel, pressed when the
# first preview has been shown ("cancel"), stops the run with the image as it
# was: no layer, no change, not even a dirty flag an undo step would set.
if command -v xvfb-run >/dev/null 2>&1; then
    CASE_WRAP="xvfb-run -a" CASE_ENV=DIFFUSE_PROGRESS_WINDOW=show gimp_case window \
        "12b progress window shown (batch, Xvfb): the same layers as without it" <<EOF
(let* ((img (new-image RGB 64 64)))
  (try "txt2img" (lambda () $(txt2img img '(background img)' 5 64 64 1)))
  (signature img "after"))
EOF
    expect "status txt2img ok" "the run with the window failed: $(grep '^message' "$dir/out.txt")"
    expect "count after 2" "layer count is not 1 + 1"
    cmp -s "$dir/after-0.raw" "$tmp/txt2img/after-0.raw"
    check $? "$case_title: the layer differs from the same run without the window (case 1)"
    case_end
    CASE_WRAP="xvfb-run -a" CASE_ENV=DIFFUSE_PROGRESS_WINDOW=cancel gimp_case window-cancel \
        "12c progress window: Cancel after the first preview leaves the image as it was" <<EOF
(let* ((img (new-image RGB 64 64)))
  (signature img "before")
  (try "txt2img" (lambda () $(txt2img img '(background img)' 5 64 64 2)))
  (out "undo-enabled" (car (gimp-image-undo-is-enabled img)))
  (signature img "after"))
EOF
    # (Script-Fu 2.10 takes the CANCEL status for a success, 3.0 raises it)
    expect "undo-enabled 1" "the image's undo is not enabled after the run"
    unchanged
    case_end
elif [ "${CI:-}" = true ]; then
    fail "missing xvfb-run for the progress window cases (CI=true; apt-get install xvfb)"
fi

# ------------------------------------------------------------------ 13. drawables (3.0)

# GIMP 3.0 passes the selected drawables as an array: txt2img with none puts
# its layers on top of the image, img2img needs exactly one.
if [ "$GIMP_GENERATION" = 3 ]; then
    gimp_case drawables "13 GIMP 3.0 drawables array: none (txt2img on top), two (img2img refused)" <<EOF
(let* ((img (new-image RGB 64 64))
       (second (layer-new img "second" 64 64 RGB-IMAGE)))
  (gimp-image-insert-layer img second 0 0)
  (gimp-image-clean-all img)
  (signature img "before")
  (try "two" (lambda () (plug-in-diffuse-img2img #:run-mode RUN-NONINTERACTIVE #:image img
                           #:drawables (vector second (background img)) #:prompt "x" #:steps 4
                           #:model "$MODEL")))
  (signature img "middle")
  (try "none" (lambda () (plug-in-diffuse-txt2img #:run-mode RUN-NONINTERACTIVE #:image img
                            #:prompt "$PROMPT" #:seed 4 #:steps 4 #:width 64 #:height 64
                            #:model "$MODEL")))
  (signature img "after"))
EOF
    expect "status two error" "img2img on two drawables did not fail"
    expect_log "drawables: img2img works on one layer, 2 are selected"
    expect "dirty middle 0" "the refused img2img changed the image"
    expect "count middle 2" "the refused img2img added a layer"
    expect "status none ok" "txt2img with no drawable failed: $(grep '^message none' "$dir/out.txt")"
    expect "count after 3" "txt2img with no drawable made no layer"
    [ "$(layer_name after 0)" = "Diffuse: $PROMPT (seed 4)" ]
    check $? "$case_title: the new layer is not on top: $(grep '^layer after' "$dir/out.txt" | cut -d' ' -f3,9- | tr '\n' '|')"
    case_end
fi

# ------------------------------------------------------------------ 14. SDXL

# an SDXL model (the sdxl-tiny reference) through the old call and through the
# extended form with size conditioning and an encoded empty negative prompt
XL=$SHARED/reference/sdxl-tiny/model-diffusers
if [ -d "$XL" ]; then
    XL=$(cd "$XL" && pwd)
    xl_call() { # xl_call PROC [NAME=VALUE...]: 128x128, seed 3, 2 steps, euler, guidance 5
        proc=$1
        shift
        diffuse_call RUN-NONINTERACTIVE "$proc" img '(background img)' prompt="\"$PROMPT\"" \
            negative-prompt='""' seed=3 steps=2 guidance=5.0 sampler='"euler"' width=128 \
            height=128 count=1 model="\"$XL\"" "$@"
    }
    gimp_case sdxl "14 SDXL model: the plain call, then -ext with size conditioning" <<EOF
(let* ((img (new-image RGB 128 128)))
  (try "plain" (lambda () $(xl_call plug-in-diffuse-txt2img)))
  (try "ext" (lambda () $(xl_call plug-in-diffuse-txt2img-ext original-width=160 original-height=96 \
                           crop-left=16 crop-top=8 target-width=144 target-height=112 empty-negative=TRUE \
                           fast-decoder=FALSE)))
  (signature img "after"))
EOF
    expect "status plain ok" "the plain call with an SDXL model failed: $(grep '^message plain' "$dir/out.txt")"
    expect "status ext ok" "the -ext call failed: $(grep '^message ext' "$dir/out.txt")"
    expect "count after 3" "the two SDXL calls did not make two layers"
    # each call's layer goes above the active layer, the background
    parameters "$dir/after-0-parameters.txt" "$PROMPT
Negative prompt: 
Steps: 2, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 128x128, Model: model-diffusers, RNG: NV"
    parameters "$dir/after-1-parameters.txt" "$PROMPT
Negative prompt: 
Steps: 2, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 128x128, Model: model-diffusers, Original size: 160x96, Crop offset: \"16,8\", Target size: 144x112, RNG: NV"
    pixels "the SDXL layer" "$dir/after-0.raw" 4
    ! cmp -s "$dir/after-0.raw" "$dir/after-1.raw"
    check $? "$case_title: size conditioning and the empty negative prompt changed nothing"
    case_end
elif [ "${CI:-}" = true ]; then
    fail "missing $XL (CI=true)"
fi

# ------------------------------------------------------------------ 15. fast decoder

# a model folder with a TAESD beside its parts (sd1-tiny + the taesd set):
# -ext with fast-decoder makes another picture than the VAE, and without a
# TAESD the same call is an error, the image unchanged
TAESD=$SHARED/reference/taesd/model-diffusers
if [ -d "$TAESD" ]; then
    fast=$tmp/with-taesd
    mkdir -p "$fast"
    for part in unet vae text_encoder tokenizer scheduler model_index.json; do
        ln -s "$MODEL/$part" "$fast/$part"
    done
    ln -s "$(cd "$TAESD" && pwd)" "$fast/taesd"
    fd_call() { # fd_call MODEL FAST
        diffuse_call RUN-NONINTERACTIVE plug-in-diffuse-txt2img-ext img '(background img)' \
            prompt="\"$PROMPT\"" negative-prompt='""' seed=3 steps=2 guidance=7.5 \
            sampler='"euler"' width=64 height=64 count=1 model="\"$1\"" original-width=0 \
            original-height=0 crop-left=0 crop-top=0 target-width=0 target-height=0 \
            empty-negative=FALSE fast-decoder="$2"
    }
    gimp_case fast "15 fast decoder (TAESD beside the model) through -ext" <<EOF
(let* ((img (new-image RGB 64 64)))
  (try "vae" (lambda () $(fd_call "$fast" FALSE)))
  (try "taesd" (lambda () $(fd_call "$fast" TRUE)))
  (signature img "middle")
  (try "none" (lambda () $(fd_call "$MODEL" TRUE)))
  (signature img "after"))
EOF
    expect "status vae ok" "the VAE call failed: $(grep '^message vae' "$dir/out.txt")"
    expect "status taesd ok" "the fast decoder call failed: $(grep '^message taesd' "$dir/out.txt")"
    expect "count middle 3" "the two calls did not make two layers"
    ! cmp -s "$dir/middle-0.raw" "$dir/middle-1.raw"
    check $? "$case_title: the fast decoder made the VAE's picture"
    pixels "the TAESD layer" "$dir/middle-0.raw" 4
    expect "status none error" "a fast decoder without a TAESD did not fail"
    expect_log "no tiny autoencoder (TAESD)"
    expect "count after 3" "the refused call added a layer"
    case_end
elif [ "${CI:-}" = true ]; then
    fail "missing $TAESD (CI=true)"
fi

# ------------------------------------------------------------------ 16. LoRA

# The sd1-kohya LoRA (made by make for the test model, tests/fixtures/
# make_loras.py) through a prompt tag found in the LoRA folder
# ($DIFFUSE_LORA_DIR), and in 3.0 through the lora and lora-weight arguments:
# each changes the picture and the layer's parasite records it, the tag in the
# prompt, the argument as "LoRA: PATH:WEIGHT"; both give the same picture. A
# LoRA that matches only part of the model is told (a message), not refused;
# a tag naming no file is an error, no layer made.
LORAS=$BUILD/fixtures/loras
if [ -f "$LORAS/sd1-kohya.safetensors" ]; then
    LORAS=$(cd "$LORAS" && pwd)
    lora_call() { # lora_call PROMPT [NAME=VALUE...]: 64x64, seed 11, 4 steps, euler_a
        lora_prompt=$1
        shift
        diffuse_call RUN-NONINTERACTIVE plug-in-diffuse-txt2img img '(background img)' \
            prompt="\"$lora_prompt\"" negative-prompt='""' seed=11 steps=4 guidance=7.5 \
            sampler='"euler_a"' width=64 height=64 count=1 model="\"$MODEL\"" "$@"
    }
    named=""
    if [ "$GIMP_GENERATION" = 3 ]; then
        named="(try \"named\" (lambda () $(lora_call "$PROMPT" lora="\"$LORAS/sd1-kohya.safetensors\"" \
            lora-weight=0.8)))"
    fi
    CASE_ENV=DIFFUSE_LORA_DIR=$LORAS gimp_case lora "16 LoRA: a prompt tag${named:+ and the lora argument}" <<EOF
(let* ((img (new-image RGB 64 64)))
  (try "plain" (lambda () $(lora_call "$PROMPT")))
  (try "tag" (lambda () $(lora_call "$PROMPT <lora:sd1-kohya:0.8>")))
  $named
  (try "partial" (lambda () $(lora_call "$PROMPT <lora:sd1-partial:1>")))
  (signature img "middle")
  (try "missing" (lambda () $(lora_call "$PROMPT <lora:nothere:1>")))
  (out "count after" (length (layers img))))
EOF
    # each call's layer goes right above the background, the first ending on
    # top: plain 0, tag 1, (3.0) named 2, then partial
    n=3
    [ -n "$named" ] && n=4
    for t in plain tag ${named:+named} partial; do
        expect "status $t ok" "the $t call failed: $(grep "^message $t" "$dir/out.txt")"
    done
    expect "count middle $((n + 1))" "the calls did not make $n layers"
    parameters "$dir/middle-1-parameters.txt" "$PROMPT <lora:sd1-kohya:0.8>
Negative prompt: 
$PARAMS_TAIL, Seed: 11, Size: 64x64, Model: $MODEL_NAME, RNG: NV"
    ! cmp -s "$dir/middle-1.raw" "$dir/middle-0.raw"
    check $? "$case_title: the prompt tag's LoRA changed nothing"
    if [ -n "$named" ]; then
        parameters "$dir/middle-2-parameters.txt" "$PROMPT
Negative prompt: 
$PARAMS_TAIL, Seed: 11, Size: 64x64, Model: $MODEL_NAME, RNG: NV, LoRA: \"$LORAS/sd1-kohya.safetensors:0.8\""
        cmp -s "$dir/middle-2.raw" "$dir/middle-1.raw"
        check $? "$case_title: the lora argument and the tag at the same weight differ"
    fi
    pixels "the LoRA layer" "$dir/middle-1.raw" 4
    expect_log "modules match nothing in this model and are left out"
    expect "status missing error" "a tag naming no file did not fail"
    expect_log "cannot read $LORAS/nothere.safetensors"
    expect "count after $((n + 1))" "the failed call made a layer"
    case_end
elif [ "${CI:-}" = true ]; then
    fail "missing $LORAS/sd1-kohya.safetensors (CI=true; make builds it)"
fi

# ------------------------------------------------------------------ 17. translation

# The plug-in's messages come from its own catalogue (gettext, GIMP's plug-in
# domain pattern; 2.10's pluginrc records the domain GIMP translates its menu
# labels with), shipped beside the binary: with LANGUAGE=de a refusal is
# German. gettext reads LANGUAGE only outside the C locale, and these systems
# have no other: a copy of C.UTF-8 under another name ($LOCPATH) serves.
mkdir -p "$tmp/locale"
cp -R /usr/lib/locale/C.utf8 "$tmp/locale/en_US.UTF-8" 2>/dev/null
CASE_ENV="LOCPATH=$tmp/locale LC_ALL=en_US.UTF-8 LANGUAGE=de" gimp_case german \
    "17 translation: LANGUAGE=de, the plug-in's messages in German" <<EOF
(let* ((img (new-image RGB 64 64)) (bg (background img)))
  (try "default" (lambda () $(t2i img bg '""' '""' 1 4 7.5 '"euler_a"' 64 64 1 '""')))
  (signature img "after"))
EOF
expect "status default error" "an empty prompt with the default model did not fail"
expect_log "prompt: Das Standardmodell braucht einen Prompt, etwa „$PROMPT“"
expect "count after 1" "the refused run added a layer"
if [ "$GIMP_GENERATION" = 2 ]; then # 3.0 asks the plug-in (set_i18n) each time
    grep -qF -e '"gimp-plug-in-diffuse"' "$profile/pluginrc"
    check $? "$case_title: pluginrc has no translation domain gimp-plug-in-diffuse"
fi
case_end

finish
