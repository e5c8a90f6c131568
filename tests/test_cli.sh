#!/bin/sh
# test_cli.sh: the `diffuse` command line against its contract (DESIGN.md):
# malformed model files are refused with a message naming the file and never
# crash; info, tokenize and generate work on the reference model in ../shared
# (txt2img, same seed -> same bytes, --count, img2img, --mask); bad arguments
# exit non-zero naming the argument. Run from the repository root; the binary
# is ${BUILD:-build}/diffuse. Ends with "N passed, N failed" (tests/run.sh).
# Without ../shared (or $DIFFUSE_SHARED) the model tests fail under CI=true and
# are skipped otherwise.

BIN=${BUILD:-build}/diffuse
SHARED=${DIFFUSE_SHARED:-../shared}
MODEL=$SHARED/reference/sd1-tiny/model-diffusers
VOCAB=$SHARED/clip/bpe_simple_vocab_16e6.txt.gz
FIXTURES=tests/fixtures
PROMPT="a red circle on a blue background"

. tests/lib.sh
check() { # check CONDITION-STATUS MESSAGE: counts one case on the last command's status
    if [ "$1" -eq 0 ]; then pass; else fail "$2"; fi
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-cli.XXXXXX") || { echo "FAIL mktemp"; echo "0 passed, 1 failed"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

if [ ! -x "$BIN" ]; then
    fail "$BIN not built (make)"
    finish
fi

# run CMD...: stdout -> $tmp/out, stderr -> $tmp/err, status -> $rc
run() {
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

# A crash is a signal (status >= 128) or a sanitizer report (ASan exits 1).
crashed() {
    [ "$rc" -ge 128 ] || grep -q -e 'Sanitizer' -e 'runtime error:' "$tmp/err"
}

# expect_error NAME WORD CMD...: fails cleanly (status 1 to 7: main.c's kinds) naming WORD on stderr.
expect_error() {
    name=$1 word=$2
    shift 2
    run "$@"
    if crashed; then
        fail "$name: crashed (status $rc): $(head -c 600 "$tmp/err")"
    elif [ "$rc" -lt 1 ] || [ "$rc" -gt 7 ]; then
        fail "$name: status $rc, want 1 to 7"
    elif ! grep -q -F -e "$word" "$tmp/err"; then
        fail "$name: stderr does not name '$word': $(head -c 300 "$tmp/err")"
    else
        pass
    fi
}

# expect_ok NAME CMD...: status 0 without sanitizer reports.
expect_ok() {
    name=$1
    shift
    run "$@"
    if [ "$rc" -ne 0 ] || crashed; then
        fail "$name: status $rc: $(tail -c 600 "$tmp/err")"
        return 1
    fi
    pass
}

# png_size FILE: prints "W H" for a well-formed PNG (every chunk CRC, the image
# data inflating to the right size), else a reason. Falls back to the header.
png_size() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" <<'EOF'
import struct, sys, zlib
try:
    d = open(sys.argv[1], "rb").read()
    assert d[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    p, idat, ihdr, end = 8, b"", None, False
    while p + 12 <= len(d):
        n, = struct.unpack(">I", d[p:p + 4])
        kind, body = d[p + 4:p + 8], d[p + 8:p + 8 + n]
        crc, = struct.unpack(">I", d[p + 8 + n:p + 12 + n])
        assert zlib.crc32(kind + body) & 0xffffffff == crc, "bad CRC in %r" % kind
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            end = True
            break
        p += 12 + n
    assert ihdr and end, "IHDR or IEND missing"
    w, h, depth, ctype = ihdr
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    assert len(zlib.decompress(idat)) == h * (1 + w * channels * depth // 8), "short image data"
    print(w, h)
except Exception as e:
    print("invalid:", e)
EOF
    else
        sig=$(od -An -tx1 -N8 "$1" 2>/dev/null | tr -d ' \n')
        if [ "$sig" != "89504e470d0a1a0a" ]; then
            echo "invalid: no PNG signature"
            return
        fi
        # shellcheck disable=SC2046 # the eight bytes, one word each
        set -- $(od -An -tu1 -j16 -N8 "$1")
        echo "$(( ($1 << 24) + ($2 << 16) + ($3 << 8) + $4 )) $(( ($5 << 24) + ($6 << 16) + ($7 << 8) + $8 ))"
    fi
}

# expect_png NAME FILE W H
expect_png() {
    if [ ! -f "$2" ]; then
        fail "$1: $2 not written"
        return
    fi
    size=$(png_size "$2")
    if [ "$size" = "$3 $4" ]; then pass; else fail "$1: $2 is not a ${3}x$4 PNG: $size"; fi
}

# make_mask FILE W H: an 8-bit grey PNG, white (repaint) on the left half (python3).
make_mask() {
    python3 - "$@" <<'EOF'
import struct, sys, zlib
w, h = int(sys.argv[2]), int(sys.argv[3])
rows = b"".join(b"\0" + bytes(255 if x < w // 2 else 0 for x in range(w)) for _ in range(h))
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff)
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                              + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
EOF
}

# shared_path PATH: 0 when present; else counts a failure (CI=true) or prints a skip.
shared_path() {
    [ -e "$1" ] && return 0
    if [ "${CI:-}" = true ]; then
        fail "missing shared data $1 (CI=true)"
    else
        echo "SKIP missing shared data $1"
    fi
    return 1
}

# ------------------------------------------------------------------ malformed models

found=0
for f in "$FIXTURES"/bad_*.safetensors "$FIXTURES"/ok_no_model.safetensors; do
    [ -f "$f" ] || continue
    found=$((found + 1))
    expect_error "info --model $f" "$f" "$BIN" info --model "$f"
done
[ "$found" -gt 10 ]
check $? "no fixtures in $FIXTURES (python3 tests/fixtures/make_fixtures.py)"
# the message says what is wrong, not only where
expect_error "info on a truncated file" "truncated" "$BIN" info --model "$FIXTURES/bad_short.safetensors"
expect_error "info on overlapping tensors" "overlap" "$BIN" info --model "$FIXTURES/bad_overlap.safetensors"
expect_error "info on a file without weights" "no Stable Diffusion weights" \
    "$BIN" info --model "$FIXTURES/ok_no_model.safetensors"
expect_error "info on a directory that is not a model" "$FIXTURES" "$BIN" info --model "$FIXTURES"
expect_error "info on a missing file" "/nonexistent/model.safetensors" \
    "$BIN" info --model /nonexistent/model.safetensors
expect_error "info without --model" "--model" "$BIN" info
expect_error "generate on a malformed file" "$FIXTURES/bad_header_absurd.safetensors" \
    "$BIN" generate --model "$FIXTURES/bad_header_absurd.safetensors" --prompt x --output "$tmp/x.png"
[ ! -e "$tmp/x.png" ]
check $? "generate on a malformed model wrote an image"

# ------------------------------------------------------------------ arguments

# Parsed before any model is loaded, so these need no shared data.
# shellcheck disable=SC2317 # called through run
bad_gen() { # a generate command whose options before "$@" are all fine
    "$BIN" generate --model "$FIXTURES/ok_no_model.safetensors" --prompt x --output "$tmp/bad.png" "$@"
}
expect_error "--steps 0" "--steps" bad_gen --steps 0
expect_error "--steps abc" "--steps" bad_gen --steps abc
expect_error "--width 63" "--width" bad_gen --width 63
expect_error "--height 0" "--height" bad_gen --height 0
expect_error "--sampler nope" "--sampler" bad_gen --sampler nope
expect_error "--spacing nope" "--spacing" bad_gen --spacing nope
expect_error "--count 0" "--count" bad_gen --count 0
expect_error "--strength 1.5" "--strength" bad_gen --strength 1.5
expect_error "--cfg x" "--cfg" bad_gen --cfg x
expect_error "--seed x" "--seed" bad_gen --seed x
expect_error "--mask without --init" "--mask" bad_gen --mask "$tmp/none.png"
expect_error "--init missing file" "--init" bad_gen --init "$tmp/none.png"
expect_error "--init not a PNG" "--init" bad_gen --init "$FIXTURES/ok_valid.safetensors"
expect_error "missing --prompt" "--prompt" "$BIN" generate --model "$FIXTURES/ok_no_model.safetensors" \
    --output "$tmp/bad.png"
expect_error "missing --output" "--output" "$BIN" generate --model "$FIXTURES/ok_no_model.safetensors" --prompt x
expect_error "missing --model" "--model" "$BIN" generate --prompt x --output "$tmp/bad.png"
expect_error "--model /nonexistent" "--model" "$BIN" generate --model /nonexistent --prompt x --output "$tmp/bad.png"
expect_error "unknown option" "--frobnicate" bad_gen --frobnicate
expect_error "unknown command" "frobnicate" "$BIN" frobnicate
expect_error "no command" "usage" "$BIN"
expect_error "tokenize without text" "TEXT" "$BIN" tokenize
expect_error "tokenize with a missing vocabulary" "--vocab" "$BIN" tokenize --vocab /nonexistent/vocab.txt.gz "a cat"
[ ! -e "$tmp/bad.png" ]
check $? "a refused command wrote an image"

# ------------------------------------------------------------------ reference model

if shared_path "$VOCAB"; then
    if expect_ok "tokenize" "$BIN" tokenize --vocab "$VOCAB" "a photo of a cat"; then
        case "$(cat "$tmp/out")" in
        "49406 320 1125 539 320 2368 49407"*) pass ;;
        *) fail "tokenize: got $(head -c 80 "$tmp/out")" ;;
        esac
        [ "$(wc -w <"$tmp/out")" -eq 77 ]
        check $? "tokenize: not 77 ids"
    fi
fi

# Same seed, same image, whatever the thread count, on the bundled model (256x256:
# its products are large enough to be cut across threads).
if [ -d models/default ]; then
    for t in 1 2 3; do
        expect_ok "default model, $t threads" "$BIN" generate --model models/default \
            --prompt "two small yellow stars at the top on a black background" --steps 3 \
            --seed 5 --threads $t --output "$tmp/default-t$t.png"
    done
    cmp -s "$tmp/default-t1.png" "$tmp/default-t2.png" && cmp -s "$tmp/default-t1.png" "$tmp/default-t3.png"
    check $? "the default model's image depends on --threads"
fi

if shared_path "$MODEL"; then
    if expect_ok "info" "$BIN" info --model "$MODEL"; then
        grep -q '^family: sd1$' "$tmp/out"
        check $? "info: no 'family: sd1' in: $(head -c 300 "$tmp/out")"
    fi

    gen() { # gen NAME OUT [options...]: a 4-step 64x64 run with seed 1
        name=$1 out=$2
        shift 2
        expect_ok "$name" "$BIN" generate --model "$MODEL" --prompt "$PROMPT" --steps 4 \
            --width 64 --height 64 --seed 1 --output "$out" "$@"
    }

    gen "txt2img" "$tmp/out.png" && expect_png "txt2img" "$tmp/out.png" 64 64
    gen "txt2img again" "$tmp/again.png" && {
        cmp -s "$tmp/out.png" "$tmp/again.png"
        check $? "the same seed gave different files"
    }
    gen "txt2img 3 threads" "$tmp/t3.png" --threads 3 && {
        cmp -s "$tmp/out.png" "$tmp/t3.png"
        check $? "--threads 3 gave a different file"
    }
    gen "txt2img seed 2" "$tmp/seed2.png" --seed 2 && {
        ! cmp -s "$tmp/out.png" "$tmp/seed2.png"
        check $? "seeds 1 and 2 gave the same file"
    }
    gen "--count 2" "$tmp/batch.png" --count 2 && {
        expect_png "--count 2 first" "$tmp/batch-1.png" 64 64
        expect_png "--count 2 second" "$tmp/batch-2.png" 64 64
        [ ! -e "$tmp/batch.png" ]
        check $? "--count 2 also wrote batch.png"
        # image i uses seed + i
        cmp -s "$tmp/batch-1.png" "$tmp/out.png"
        check $? "--count 2: image 1 differs from the single run with seed 1"
        cmp -s "$tmp/batch-2.png" "$tmp/seed2.png"
        check $? "--count 2: image 2 differs from the single run with seed 2"
    }
    for s in euler_a ddim dpmpp_2m lcm pndm; do
        gen "--sampler $s" "$tmp/s-$s.png" --sampler "$s" && expect_png "--sampler $s" "$tmp/s-$s.png" 64 64
    done

    if [ -f "$tmp/out.png" ]; then
        expect_ok "img2img" "$BIN" generate --model "$MODEL" --prompt "$PROMPT" --steps 4 --seed 1 \
            --init "$tmp/out.png" --strength 0.5 --output "$tmp/img2img.png" &&
            expect_png "img2img" "$tmp/img2img.png" 64 64
        # a mask: left half repainted, right half kept (without python3: the image itself)
        mask=$tmp/out.png
        if command -v python3 >/dev/null 2>&1; then
            mask=$tmp/mask.png
            make_mask "$mask" 64 64
            make_mask "$tmp/mask32.png" 32 32
            expect_error "--mask size differs from --init" "--mask" "$BIN" generate --model "$MODEL" \
                --prompt x --init "$tmp/out.png" --mask "$tmp/mask32.png" --output "$tmp/bad.png"
        fi
        expect_ok "--mask" "$BIN" generate --model "$MODEL" --prompt "$PROMPT" --steps 4 --seed 1 \
            --init "$tmp/out.png" --strength 0.5 --mask "$mask" --output "$tmp/masked.png" &&
            expect_png "--mask" "$tmp/masked.png" 64 64
        expect_error "--init size differs from --width" "--init" "$BIN" generate --model "$MODEL" \
            --prompt x --width 128 --height 64 --init "$tmp/out.png" --output "$tmp/bad.png"
    fi
    # a folder's own settings ("_diffuse_defaults" in model_index.json) apply where not given
    own=$tmp/own-defaults
    mkdir -p "$own"
    for part in unet vae text_encoder tokenizer scheduler; do ln -s "$(cd "$MODEL" && pwd)/$part" "$own/$part"; done
    printf '{"_class_name": "StableDiffusionPipeline", "_diffuse_defaults": {"sampler": "ddim", "steps": 3, "guidance": 2.5}}\n' >"$own/model_index.json"
    expect_ok "info: the folder's own settings" "$BIN" info --model "$own" &&
        { grep -q "suggested: ddim, 3 steps, guidance 2.5" "$tmp/out"; check $? "info does not print the folder's settings: $(cat "$tmp/out")"; }
    expect_ok "generate: the folder's own settings" "$BIN" generate --model "$own" --prompt "$PROMPT" \
        --seed 3 --width 64 --height 64 --output "$tmp/own.png" &&
        expect_ok "generate: the same settings given" "$BIN" generate --model "$own" --prompt "$PROMPT" \
            --seed 3 --width 64 --height 64 --sampler ddim --steps 3 --cfg 2.5 --output "$tmp/own-given.png" && {
        cmp -s "$tmp/own.png" "$tmp/own-given.png"
        check $? "the folder's settings were not used"
    }
    expect_ok "generate: given settings win" "$BIN" generate --model "$own" --prompt "$PROMPT" \
        --seed 3 --width 64 --height 64 --steps 2 --output "$tmp/own-2.png" && {
        grep -a -q "Steps: 2," "$tmp/own-2.png"
        check $? "--steps 2 did not override the folder's 3 steps"
    }
    printf '{"_diffuse_defaults": {"sampler": "nope", "steps": 3, "guidance": 2}}\n' >"$own/model_index.json"
    expect_ok "info: invalid folder settings ignored" "$BIN" info --model "$own" && {
        ! grep -q "suggested:" "$tmp/out"
        check $? "invalid _diffuse_defaults were used: $(cat "$tmp/out")"
    }
    expect_error "unwritable --output" "/nonexistent/dir/out.png" "$BIN" generate --model "$MODEL" \
        --prompt "$PROMPT" --steps 1 --width 64 --height 64 --seed 1 --output /nonexistent/dir/out.png
fi

# SDXL (sdxl-tiny): two text encoders, size conditioning, no negative prompt
# (zeros) against an empty one (encoded), Turbo settings, a refiner refused
XL=$SHARED/reference/sdxl-tiny/model-diffusers
if [ -d "$XL" ]; then
    expect_ok "info sdxl" "$BIN" info --model "$XL" && {
        grep -q "^family: sdxl$" "$tmp/out" && grep -q "^name: SDXL$" "$tmp/out" &&
            grep -q "native size: 128x128" "$tmp/out" && grep -q "text encoder 2: width 40" "$tmp/out"
        check $? "info sdxl: $(cat "$tmp/out")"
    }
    xl() { # xl NAME OUT [generate args...]
        n=$1 o=$2
        shift 2
        expect_ok "$n" "$BIN" generate --model "$XL" --prompt "$PROMPT" --steps 2 --cfg 5 --seed 4 \
            --sampler euler --output "$tmp/$o" "$@"
    }
    xl "sdxl generate" xl.png --negative blurry && expect_png "sdxl generate" "$tmp/xl.png" 128 128
    xl "sdxl generate again" xl2.png --negative blurry && {
        cmp -s "$tmp/xl.png" "$tmp/xl2.png"
        check $? "sdxl: same seed, different bytes"
    }
    xl "sdxl size conditioning" xl-size.png --negative blurry --original-size 160x96 \
        --crop-offset 16,8 --target-size 144x112 && {
        ! cmp -s "$tmp/xl.png" "$tmp/xl-size.png"
        check $? "sdxl: --original-size/--crop-offset/--target-size changed nothing"
    }
    xl "sdxl default size ids given" xl-size0.png --negative blurry --original-size 128x128 \
        --crop-offset 0,0 --target-size 128x128 && {
        cmp -s "$tmp/xl.png" "$tmp/xl-size0.png"
        check $? "sdxl: the default size ids given explicitly changed the image"
    }
    xl "sdxl no negative prompt" xl-negnone.png && xl "sdxl empty negative prompt" xl-negempty.png --negative "" && {
        ! cmp -s "$tmp/xl-negnone.png" "$tmp/xl-negempty.png"
        check $? "sdxl: no negative prompt (zeros) and --negative '' (encoded) gave the same image"
    }
    expect_error "--original-size malformed" "--original-size" "$BIN" generate --model "$XL" \
        --prompt x --original-size 128 --output "$tmp/bad.png"
    expect_error "--crop-offset negative" "--crop-offset" "$BIN" generate --model "$XL" \
        --prompt x --crop-offset -1,2 --output "$tmp/bad.png"
    expect_error "--target-size too big" "target size" "$BIN" generate --model "$XL" \
        --prompt x --target-size 99999x128 --steps 1 --output "$tmp/bad.png"
    # SDXL-Turbo: the folder's trailing-spacing Euler a scheduler says so
    turbo=$tmp/sdxl-turbo
    mkdir -p "$turbo/scheduler"
    for part in unet vae text_encoder text_encoder_2 tokenizer tokenizer_2 model_index.json; do
        ln -s "$(cd "$XL" && pwd)/$part" "$turbo/$part"
    done
    printf '{"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}\n' \
        >"$turbo/scheduler/scheduler_config.json"
    expect_ok "info sdxl-turbo" "$BIN" info --model "$turbo" && {
        grep -q "^name: SDXL-Turbo$" "$tmp/out" && grep -q "suggested: euler_a, 1 steps, guidance 0" "$tmp/out"
        check $? "info sdxl-turbo: $(cat "$tmp/out")"
    }
    expect_ok "generate sdxl-turbo" "$BIN" generate --model "$turbo" --prompt "$PROMPT" --seed 2 \
        --output "$tmp/turbo.png" && {
        grep -a -q "Steps: 1, Sampler: Euler a, CFG scale: 0," "$tmp/turbo.png"
        check $? "sdxl-turbo did not run its own settings"
    }
    if command -v python3 >/dev/null 2>&1; then
        python3 tests/fixtures/make_sdxl_refiner.py "$XL" "$tmp/refiner" &&
            expect_error "sdxl refiner refused by name" "SDXL refiner" "$BIN" info --model "$tmp/refiner"
    fi
elif [ "${CI:-}" = true ]; then
    fail "missing $XL (CI=true)"
fi
# TAESD (the reference set's real-size random weights): --decoder and --encoder
TAESD=$SHARED/reference/taesd
if [ -d "$TAESD" ] && [ -d "$MODEL" ]; then
    expect_ok "info --decoder" "$BIN" info --model "$MODEL" --decoder "$TAESD/taesd_decoder.safetensors" && {
        grep -q "fast autoencoder: TAESD (encoder and decoder)" "$tmp/out"
        check $? "info does not name the TAESD: $(cat "$tmp/out")"
    }
    set -- --model "$MODEL" --prompt "$PROMPT" --steps 2 --seed 6 --width 64 --height 64
    expect_ok "generate --decoder PATH" "$BIN" generate "$@" --decoder "$TAESD/model-diffusers" \
        --output "$tmp/taesd.png" && expect_png "--decoder" "$tmp/taesd.png" 64 64
    expect_ok "generate, VAE" "$BIN" generate "$@" --output "$tmp/vae.png" && {
        ! cmp -s "$tmp/taesd.png" "$tmp/vae.png"
        check $? "--decoder made the VAE's image"
    }
    expect_ok "img2img --encoder PATH" "$BIN" generate "$@" --init "$tmp/vae.png" --strength 0.5 \
        --encoder "$TAESD/taesd_encoder.safetensors" --decoder vae --output "$tmp/taesd-i2i.png" &&
        expect_png "--encoder" "$tmp/taesd-i2i.png" 64 64
    # with a TAESD, previews are its pictures at full size: the last one is the final image
    expect_ok "--preview through TAESD" "$BIN" generate "$@" --decoder "$TAESD/model-diffusers" \
        --preview "$tmp/taesd-preview.png" --output "$tmp/taesd-p.png" &&
        expect_png "TAESD preview" "$tmp/taesd-preview.png" 64 64 && {
        python3 - "$tmp/taesd-preview.png" "$tmp/taesd-p.png" <<'PYEOF'
import struct, sys, zlib
def pixels(path):
    d, p, idat = open(path, "rb").read(), 8, b""
    while p < len(d):
        n, = struct.unpack(">I", d[p:p + 4])
        if d[p + 4:p + 8] == b"IDAT":
            idat += d[p + 8:p + 8 + n]
        p += 12 + n
    return zlib.decompress(idat)
sys.exit(pixels(sys.argv[1]) != pixels(sys.argv[2]))
PYEOF
        check $? "the last TAESD preview is not the TAESD-decoded image"
    }
    expect_error "--decoder taesd without one" "TAESD" "$BIN" generate "$@" --decoder taesd \
        --output "$tmp/bad.png"
    expect_error "--decoder not a TAESD" "not a TAESD" "$BIN" generate "$@" \
        --decoder tests/fixtures/ok_valid.safetensors --output "$tmp/bad.png"
elif [ "${CI:-}" = true ]; then
    fail "missing $TAESD (CI=true)"
fi
# --preview: a PNG at 1/8 of the size, replaced as the run goes
if [ -d models/default ]; then
    expect_ok "--preview" "$BIN" generate --model default --prompt "$PROMPT" --steps 3 --seed 2 \
        --preview "$tmp/preview.png" --preview-every 2 --output "$tmp/with-preview.png" &&
        expect_png "--preview" "$tmp/preview.png" 32 32
    ! ls "$tmp"/preview.png.part-* >/dev/null 2>&1
    check $? "a preview's temporary file was left behind"
    expect_error "--preview-every alone" "--preview-every" "$BIN" generate --model default \
        --prompt x --preview-every 2 --output "$tmp/bad.png"
fi
# SD 1.x has no "no negative prompt" of its own: none and "" are the same run
if [ -d "$MODEL" ]; then
    for neg in none empty; do
        set -- --model "$MODEL" --prompt "$PROMPT" --steps 2 --seed 5 --width 64 --height 64 --output "$tmp/sd1-$neg.png"
        [ "$neg" = empty ] && set -- "$@" --negative ""
        expect_ok "sd1 negative $neg" "$BIN" generate "$@"
    done
    cmp -s "$tmp/sd1-none.png" "$tmp/sd1-empty.png"
    check $? "sd1: no negative prompt and an empty one differ"
fi

# A1111's habits: prompt weights and BREAK, clip skip, generators, --from
if [ -d "$MODEL" ]; then
    set -- --model "$MODEL" --steps 2 --width 64 --height 64 --seed 7
    expect_ok "weights, BREAK, clip skip, rng" "$BIN" generate "$@" \
        --prompt "a (red:1.3) circle BREAK on a [blue] background" --negative "ugly" --clip-skip 2 \
        --sampler euler_a --karras --rng torch-cpu --output "$tmp/a1111.png" && {
        grep -a -q "Steps: 2, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 7, Size: 64x64, Model: $MODEL, Clip skip: 2, RNG: CPU" "$tmp/a1111.png"
        check $? "parameters text in A1111's keys: $(grep -a -o 'Steps:[^\x00]*' "$tmp/a1111.png" | head -1)"
    }
    # --from: the same settings make the same bytes; flags override them
    expect_ok "--from" "$BIN" generate --model "$MODEL" --from "$tmp/a1111.png" --output "$tmp/from.png" &&
        cmp -s "$tmp/a1111.png" "$tmp/from.png"
    check $? "--from did not rerun the same image"
    expect_ok "--from --seed" "$BIN" generate --model "$MODEL" --from "$tmp/a1111.png" --seed 8 \
        --output "$tmp/from8.png" && {
        ! cmp -s "$tmp/a1111.png" "$tmp/from8.png" && grep -a -q "Seed: 8, Size: 64x64" "$tmp/from8.png"
        check $? "--seed did not override --from"
    }
    # --from alone finds the model the PNG names (a path here)
    expect_ok "--from without --model" "$BIN" generate --from "$tmp/a1111.png" --output "$tmp/from-m.png" &&
        cmp -s "$tmp/a1111.png" "$tmp/from-m.png"
    check $? "--from without --model differs"
    # each generator gives its own noise, the same seed twice the same
    for rng in philox torch-cpu diffuse; do
        expect_ok "--rng $rng" "$BIN" generate "$@" --prompt "$PROMPT" --rng $rng --output "$tmp/rng-$rng.png"
    done
    ! cmp -s "$tmp/rng-philox.png" "$tmp/rng-torch-cpu.png" && ! cmp -s "$tmp/rng-philox.png" "$tmp/rng-diffuse.png"
    check $? "the generators gave the same image"
    expect_ok "default rng" "$BIN" generate "$@" --prompt "$PROMPT" --output "$tmp/rng-default.png" &&
        cmp -s "$tmp/rng-philox.png" "$tmp/rng-default.png"
    check $? "the default generator is not philox"
    # another tool's text: unknown keys are reported, the rest used
    python3 - "$tmp/rng-philox.png" "$tmp/other.png" <<'PYEOF'
import struct, sys, zlib
d = open(sys.argv[1], "rb").read()
text = ("a red circle, on a (blue:1.1) background\nNegative prompt: green\n"
        "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 3, Size: 64x64, "
        "Model hash: 6ce0161689, Model: x, Lora hashes: \"film: 12ab\", Version: v1.10.1").encode()
chunk = b"parameters\0" + text
out, p = d[:33], 33  # signature + IHDR
while p < len(d):  # drop our own text chunk, add A1111's
    n, = struct.unpack(">I", d[p:p + 4])
    if d[p + 4:p + 8] != b"tEXt":
        out += d[p:p + 12 + n]
    p += 12 + n
tx = struct.pack(">I", len(chunk)) + b"tEXt" + chunk + struct.pack(">I", zlib.crc32(b"tEXt" + chunk) & 0xffffffff)
open(sys.argv[2], "wb").write(out[:33] + tx + out[33:])
PYEOF
    expect_ok "--from an A1111 image" "$BIN" generate --model "$MODEL" --from "$tmp/other.png" \
        --output "$tmp/from-other.png" && {
        grep -q "not used: Model hash: 6ce0161689, Lora hashes: \"film: 12ab\", Version: v1.10.1" "$tmp/err" &&
            grep -a -q "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 3, Size: 64x64, Model: $MODEL, RNG: NV" "$tmp/from-other.png"
        check $? "--from an A1111 image: $(cat "$tmp/err")"
    }
    expect_error "--from a missing file" "No such file" "$BIN" generate "$@" --from "$tmp/none.png" --output "$tmp/bad.png"
    expect_error "--from not a PNG" "cannot read PNG" "$BIN" generate "$@" --from "$FIXTURES/ok_valid.safetensors" --output "$tmp/bad.png"
    make_mask "$tmp/plain.png" 16 16
    expect_error "--from a PNG without text" "no \"parameters\" text" "$BIN" generate "$@" --from "$tmp/plain.png" --output "$tmp/bad.png"
    expect_error "--clip-skip 0" "--clip-skip" "$BIN" generate "$@" --prompt x --clip-skip 0 --output "$tmp/bad.png"
    expect_error "--clip-skip 13" "--clip-skip" "$BIN" generate "$@" --prompt x --clip-skip 13 --output "$tmp/bad.png"
    expect_error "--rng unknown" "--rng" "$BIN" generate "$@" --prompt x --rng mt --output "$tmp/bad.png"
    expect_error "a bad weight" "not a weight" "$BIN" generate "$@" --prompt "(a:1.2.3)" --output "$tmp/bad.png"
    [ ! -e "$tmp/bad.png" ]
    check $? "a refused run wrote its output"
    # LoRA: --lora FILE:WEIGHT, a prompt tag, --from keeps --lora's files
    LORAS=${BUILD:-build}/fixtures/loras
    if [ -f "$LORAS/sd1-kohya.safetensors" ]; then
        expect_ok "--lora" "$BIN" generate "$@" --prompt "$PROMPT" --lora "$LORAS/sd1-kohya.safetensors:0.5" \
            --output "$tmp/lora.png" && {
            ! cmp -s "$tmp/lora.png" "$tmp/rng-philox.png" &&
                grep -a -q "RNG: NV, LoRA: \"$LORAS/sd1-kohya.safetensors:0.5\"" "$tmp/lora.png"
            check $? "--lora changed nothing or was not recorded"
        }
        expect_ok "a <lora:> tag" "$BIN" generate "$@" --prompt "$PROMPT <lora:sd1-kohya:0.5>" \
            --lora-dir "$LORAS" --output "$tmp/lora-tag.png" &&
            [ "$(png_size "$tmp/lora-tag.png")" = "64 64" ]
        check $? "a prompt tag run failed"
        expect_ok "--from with --lora" "$BIN" generate --model "$MODEL" --from "$tmp/lora.png" \
            --output "$tmp/lora-from.png" && cmp -s "$tmp/lora.png" "$tmp/lora-from.png"
        check $? "--from did not rerun the LoRA"
        expect_ok "a partial LoRA" "$BIN" generate "$@" --prompt "$PROMPT" \
            --lora "$LORAS/sd1-partial.safetensors" --output "$tmp/lora-p.png" &&
            grep -q "match nothing in this model" "$tmp/err"
        check $? "a partial LoRA said nothing: $(cat "$tmp/err")"
        expect_error "a LoRA for nothing here" "none of its modules" "$BIN" generate "$@" --prompt x \
            --lora "$LORAS/sd1-nomatch.safetensors" --output "$tmp/bad.png"
        expect_error "--lora with a bad weight" "--lora" "$BIN" generate "$@" --prompt x \
            --lora "film.safetensors:abc" --output "$tmp/bad.png"
        expect_error "a missing tag file" "cannot read" "$BIN" generate "$@" --prompt "x <lora:nothere:1>" \
            --lora-dir "$LORAS" --output "$tmp/bad.png"
    elif [ "${CI:-}" = true ]; then
        fail "missing $LORAS (make builds it)"
    fi
fi
# Broken numbers never make an image: NaN weights, a schedule with no signal,
# a VAE scale of 0 (each a copy of the reference model with one thing changed)
if [ -d "$MODEL" ]; then
    broken() { # broken NAME: a copy of the model folder to change, in $tmp/NAME
        rm -rf "$tmp/$1" && mkdir -p "$tmp/$1" && cp -r "$MODEL"/* "$tmp/$1"/
    }
    broken nan && python3 tests/tools/retensor.py "$tmp/nan/unet/diffusion_pytorch_model.safetensors" \
        conv_out.weight nan
    expect_error "NaN in the UNet's weights" "NaN or infinite" "$BIN" generate --model "$tmp/nan" \
        --prompt x --steps 2 --width 64 --height 64 --output "$tmp/nan.png"
    grep -q "denoising step 1 of 2" "$tmp/err"
    check $? "the NaN error does not name the phase: $(cat "$tmp/err")"
    broken sched && sed -i 's/"num_train_timesteps": *[0-9]*/"num_train_timesteps": 100000/' \
        "$tmp/sched/scheduler/scheduler_config.json"
    expect_error "a schedule without signal" "no signal left" "$BIN" generate --model "$tmp/sched" \
        --prompt x --steps 2 --width 64 --height 64 --output "$tmp/nan.png"
    broken scale && python3 - "$tmp/scale/vae/config.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["scaling_factor"] = 0
json.dump(c, open(sys.argv[1], "w"))
PYEOF
    expect_error "a VAE scale of 0" "scaling_factor" "$BIN" info --model "$tmp/scale"
    # a weight with a zero dimension (token_embedding [0, 32]) is named, not divided by
    broken empty && python3 tests/tools/retensor.py "$tmp/empty/text_encoder/model.safetensors" \
        text_model.embeddings.token_embedding.weight "[0, 32]"
    expect_error "a zero-size weight" "token_embedding.weight' is empty" "$BIN" info --model "$tmp/empty"
    # ... and one whose other dimension is absurd is refused as it is read (was taken for
    # 2^31 - 1 latent channels, and 2 c + 1 overflowed; #17 D11)
    broken absurd && python3 tests/tools/retensor.py "$tmp/absurd/vae/diffusion_pytorch_model.safetensors" \
        decoder.conv_in.weight "[0, 2147483647, 3, 3]"
    expect_error "an absurd dimension" "decoder.conv_in.weight': dimension 1 is 2147483647" \
        "$BIN" info --model "$tmp/absurd"
    # a config file that is there but cut short is an error naming it and where
    for f in scheduler/scheduler_config.json model_index.json unet/config.json \
        tokenizer/tokenizer_config.json; do
        broken cut && head -c 40 "$MODEL/$f" >"$tmp/cut/$f"
        expect_error "truncated $f" "$f: not valid JSON (line" "$BIN" info --model "$tmp/cut"
    done
    [ ! -e "$tmp/nan.png" ]
    check $? "a broken model wrote an image"
    # a PNG that declares 20000x20000 is refused from its header, before decoding
    python3 - "$tmp/huge.png" <<'PYEOF'
import struct, sys, zlib
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff)
ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
data = zlib.compress(b"\0" * 100)
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
PYEOF
    expect_error "a PNG declaring 20000x20000" "larger than 4096" "$BIN" generate --model "$MODEL" \
        --prompt x --init "$tmp/huge.png" --output "$tmp/nan.png"
    expect_error "an output folder that is missing" "No such file or directory" "$BIN" generate \
        --model "$MODEL" --prompt x --output "$tmp/none/out.png"
    expect_error "an output that is a folder" "is a folder" "$BIN" generate --model "$MODEL" \
        --prompt x --output "$tmp"
    DIFFUSE_MEMORY_LIMIT_MB=1 expect_error "a memory cap of 1 MiB" "MiB of working memory" "$BIN" \
        generate --model "$MODEL" --prompt x --width 64 --height 64 --output "$tmp/nan.png"
    mkfifo "$tmp/fifo"
    expect_error "an output that is a pipe" "not a regular file" "$BIN" generate --model "$MODEL" \
        --prompt x --output "$tmp/fifo"
    [ -p "$tmp/fifo" ]
    check $? "the pipe was replaced"
    expect_error "an output that is a device" "not a regular file" "$BIN" generate --model "$MODEL" \
        --prompt x --output /dev/full
    [ -c /dev/full ] && ! ls /dev/full.part-* >/dev/null 2>&1
    check $? "/dev/full was touched"
    expect_error "a preview that is a device" "--preview '/dev/null': is not a regular file" "$BIN" \
        generate --model "$MODEL" --prompt x --preview /dev/null --output "$tmp/nan.png"
    [ -c /dev/null ]
    check $? "/dev/null was replaced"
fi
# Masked content (A1111): the repaint area starts from the image or from noise
if [ -d "$MODEL" ] && [ -f "$tmp/a1111.png" ]; then
    make_mask "$tmp/mc-mask.png" 64 64
    set -- --model "$MODEL" --prompt "$PROMPT" --steps 3 --seed 2 --init "$tmp/a1111.png" \
        --mask "$tmp/mc-mask.png" --strength 0.8
    expect_ok "masked content original" "$BIN" generate "$@" --output "$tmp/mc-orig.png"
    expect_ok "masked content latent noise" "$BIN" generate "$@" --masked-content latent-noise \
        --output "$tmp/mc-noise.png" && {
        ! cmp -s "$tmp/mc-orig.png" "$tmp/mc-noise.png" &&
            grep -a -q "Masked content: latent noise" "$tmp/mc-noise.png" &&
            ! grep -a -q "Masked content" "$tmp/mc-orig.png"
        check $? "latent noise changed nothing or was not recorded"
    }
    expect_ok "--from keeps the masked content" "$BIN" generate --from "$tmp/mc-noise.png" \
        --init "$tmp/a1111.png" --mask "$tmp/mc-mask.png" --output "$tmp/mc-from.png" &&
        cmp -s "$tmp/mc-noise.png" "$tmp/mc-from.png"
    check $? "--from did not rerun latent noise"
    expect_error "--masked-content fill" "--masked-content" "$BIN" generate "$@" \
        --masked-content fill --output "$tmp/bad.png"
    expect_error "--cfg 1e40 is out of range, not 'not a number'" "out of range: expected 0..100" \
        "$BIN" generate "$@" --cfg 1e40 --output "$tmp/bad.png"
    expect_error "--cfg abc" "not a number" "$BIN" generate "$@" --cfg abc --output "$tmp/bad.png"
fi
# The VAE decode in bands: asked for, under a memory cap, refused; the same
# picture as the whole decode (to a level of rounding), one progress line
if [ -d "$MODEL" ]; then
    set -- --model "$MODEL" --prompt "$PROMPT" --steps 2 --seed 4 --width 96 --height 64
    expect_ok "whole decode" "$BIN" generate "$@" --output "$tmp/dec-whole.png"
    expect_ok "--decode-rows 16" "$BIN" generate "$@" --decode-rows 16 --verbose \
        --output "$tmp/dec-bands.png" && grep -q "in bands of 16 rows" "$tmp/err" &&
        [ "$(grep -o 'step 2/2' "$tmp/err" | wc -l)" = 1 ] &&
        /usr/bin/python3 - "$tmp/dec-whole.png" "$tmp/dec-bands.png" <<'EOF2'
import sys
from PIL import Image
a, b = (Image.open(p).convert("RGB") for p in sys.argv[1:3])
d = max(abs(x - y) for p, q in zip(a.getdata(), b.getdata()) for x, y in zip(p, q))
sys.exit(0 if a.size == b.size and d <= 1 else 1)
EOF2
    check $? "bands of 16 rows: not the whole decode's picture, or not said: $(tail -c 300 "$tmp/err")"
    expect_error "--decode-rows 12" "decode rows: 12 is not possible" "$BIN" generate "$@" \
        --decode-rows 12 --output "$tmp/bad.png"
    expect_error "--decode-rows 64 (the height)" "fewer than the image's 64" "$BIN" generate "$@" \
        --decode-rows 64 --output "$tmp/bad.png"
    expect_error "--decode-rows x" "--decode-rows" "$BIN" generate "$@" --decode-rows x \
        --output "$tmp/bad.png"
fi
# An inpainting checkpoint (9-channel UNet): found by its tensors, used with a mask
INP=$SHARED/reference/sd1-inpaint-tiny
if [ -d "$INP" ]; then
    for m in "$INP/model-diffusers"; do # (the single file: refcheck, both layouts)
        expect_ok "info inpainting" "$BIN" info --model "$m" --vocab "$VOCAB" &&
            grep -q "^inpainting: yes" "$tmp/out"
        check $? "info does not say $m inpaints: $(cat "$tmp/out")"
    done
    set -- --model "$INP/model-diffusers" --prompt "$PROMPT" --steps 3 --seed 4
    expect_ok "inpaint model txt2img" "$BIN" generate "$@" --width 64 --height 64 --output "$tmp/inp-t2i.png" &&
        expect_png "inpaint model txt2img" "$tmp/inp-t2i.png" 64 64
    make_mask "$tmp/inp-mask.png" 64 64
    expect_ok "inpaint model, masked" "$BIN" generate "$@" --init "$tmp/inp-t2i.png" --strength 1 \
        --mask "$tmp/inp-mask.png" --output "$tmp/inp-mask-out.png" &&
        expect_png "inpaint model, masked" "$tmp/inp-mask-out.png" 64 64
    expect_ok "inpaint model, img2img" "$BIN" generate "$@" --init "$tmp/inp-t2i.png" --strength 0.5 \
        --output "$tmp/inp-i2i.png" && ! cmp -s "$tmp/inp-i2i.png" "$tmp/inp-mask-out.png"
    check $? "inpaint model: img2img without a mask gave the masked run's image"
elif [ "${CI:-}" = true ]; then
    fail "missing $INP (CI=true)"
fi

finish
