#!/bin/sh
# test_badinput.sh: the bad-input catalogue (#17). Each case of the table below
# is a command that must fail with the exact exit status of its kind
# (engine/cli/main.c: 2 a bad argument, 3 a file that cannot be read or
# written, 4 a malformed file or a model Diffuse does not run, 5 not enough
# memory, 7 numbers gone NaN or infinite: the engine's diffuse_status + 1),
# say what is wrong (a word of the message), and write nothing: the output
# folder stays empty (no image, no preview, no temporary file). The GIMP
# procedures' cases are tests/test_gimp.sh's. Run from the repository root; the
# binary is ${BUILD:-build}/diffuse. Ends with "N passed, N failed".

BIN=${BUILD:-build}/diffuse
SHARED=${DIFFUSE_SHARED:-../shared}
MODEL=$SHARED/reference/sd1-tiny/model-diffusers
LORAS=${BUILD:-build}/fixtures/loras
FIX=tests/fixtures

. tests/lib.sh

tmp=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-bad.XXXXXX") || { echo "0 passed, 1 failed"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
if [ ! -x "$BIN" ]; then
    fail "$BIN not built (make)"
    finish
fi
if [ ! -d "$MODEL" ] || [ ! -f "$LORAS/map.json" ]; then
    if [ "${CI:-}" = true ]; then fail "missing $MODEL or $LORAS (CI=true)"; else echo "SKIP missing $MODEL or $LORAS"; fi
    finish
fi

# ---------------------------------------------------------------- inputs

out=$tmp/out # the only place a case may write, checked empty after each
mkdir -p "$out" "$tmp/in" "$tmp/ro"
M=$MODEL
G="generate --model $M --prompt x --steps 1 --width 64 --height 64 --seed 1"
O="--output $out/o.png"

# broken NAME: a copy of the model folder to damage, $tmp/NAME
broken() { mkdir -p "$tmp/$1" && cp -r "$MODEL"/* "$tmp/$1"/; }
# retensor FILE NAME SHAPE|nan: tensor NAME of FILE made empty with SHAPE (a JSON
# list with a 0), or its first value made NaN
retensor() {
    python3 tests/tools/retensor.py "$@"
}
# png FILE W H [header|bigtext|garbage]: an RGB PNG of that size; only its header;
# a text chunk first that declares 2,000,000,000 bytes (libpng allocated them);
# or image data that is not zlib's
png() {
    python3 - "$@" <<'PYEOF'
import struct, sys, zlib
p, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
how = sys.argv[4] if len(sys.argv) > 4 else ""
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff)
rows = b"" if how == "header" else b"".join(b"\0" + b"\x80" * (3 * w) for _ in range(h))
text = struct.pack(">I", 2000000000) + b"iTXtparameters\0\0\0\0\0x" if how == "bigtext" else b""
data = b"\x78\x9c" + b"\xff" * 64 if how == "garbage" else zlib.compress(rows)
open(p, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                    text + chunk(b"IDAT", data) + chunk(b"IEND", b""))
PYEOF
}

broken nan && retensor "$tmp/nan/unet/diffusion_pytorch_model.safetensors" conv_out.weight nan
broken nanvae && retensor "$tmp/nanvae/vae/diffusion_pytorch_model.safetensors" decoder.conv_out.weight nan
broken nanenc && retensor "$tmp/nanenc/vae/diffusion_pytorch_model.safetensors" encoder.conv_out.weight nan
broken empty && retensor "$tmp/empty/text_encoder/model.safetensors" \
    text_model.embeddings.token_embedding.weight "[0, 32]"
broken absurd && retensor "$tmp/absurd/vae/diffusion_pytorch_model.safetensors" \
    decoder.conv_in.weight "[0, 2147483647, 3, 3]"
broken sched && sed -i 's/"num_train_timesteps": *[0-9]*/"num_train_timesteps": 100000/' \
    "$tmp/sched/scheduler/scheduler_config.json"
broken cut && head -c 40 "$MODEL/scheduler/scheduler_config.json" >"$tmp/cut/scheduler/scheduler_config.json"
broken scale && sed -i 's/"scaling_factor": *[0-9.]*/"scaling_factor": 0/' "$tmp/scale/vae/config.json"
broken vocab && sed -i 's/"x<\/w>": 343,/"x<\/w>": 60000,/' "$tmp/vocab/tokenizer/vocab.json"
broken noparts && rm -r "$tmp/noparts/unet"
png "$tmp/in/ok.png" 64 64
png "$tmp/in/odd.png" 60 64
png "$tmp/in/small.png" 32 32
png "$tmp/in/huge.png" 20000 20000 header
png "$tmp/in/bigtext.png" 64 64 bigtext
png "$tmp/in/garbage.png" 64 64 garbage
head -c 100 "$tmp/in/ok.png" >"$tmp/in/cut.png"
echo "not a png" >"$tmp/in/text.png"
echo "not safetensors" >"$tmp/in/lora.safetensors"
: >"$tmp/ro/keep"
chmod 0555 "$tmp/ro"
long=$(head -c 70000 /dev/zero | tr '\0' a)
many=$(i=0; while [ $i -lt 1300 ]; do printf 'cat dog '; i=$((i + 1)); done)
bad=$(printf 'a\377b')

# ---------------------------------------------------------------- the table
# STATUS|WORD|ARGUMENTS (split on spaces; ~ stands for one space inside an argument)

cases() {
    cat <<EOF
2|--prompt|generate --model $M --steps 1 $O
2|--width|$G --width 63 $O
2|--height|$G --height 0 $O
2|--width|$G --width 8192 $O
2|--steps|$G --steps 0 $O
2|--steps|$G --steps 100000 $O
2|out of range|$G --cfg 1e40 $O
2|--cfg|$G --cfg nan $O
2|--seed|$G --seed 12abc $O
2|--seed|$G --seed 18446744073709551616 $O
2|--sampler|$G --sampler heun $O
2|--count|$G --count 0 $O
2|--clip-skip|$G --clip-skip 99 $O
2|--rng|$G --rng mt19937 $O
2|--masked-content|$G --masked-content blur $O
2|--spacing|$G --spacing sideways $O
2|--mask|$G --mask $tmp/in/ok.png $O
2|--strength|$G --init $tmp/in/ok.png --strength 1.5 $O
2|multiples of 8|generate --model $M --prompt x --steps 1 --init $tmp/in/odd.png $O
2|differs|$G --init $tmp/in/ok.png --mask $tmp/in/small.png $O
2|larger than 4096|$G --init $tmp/in/huge.png $O
2|UTF-8|generate --model $M --prompt $bad --steps 1 --width 64 --height 64 $O
2|negative prompt|$G --negative $bad $O
2|65536|generate --model $M --prompt $long --steps 1 --width 64 --height 64 $O
2|32 chunks|generate --model $M --prompt $(echo "$many" | tr ' ' '~') --steps 1 --width 64 --height 64 $O
2|<lora:NAME:WEIGHT>|generate --model $M --prompt x~<lora:sd1-kohya:heavy> --lora-dir $LORAS --steps 1 --width 64 --height 64 $O
2|a LoRA for another model|$G --lora $LORAS/sdxl-kohya.safetensors $O
2|does not fit|$G --lora $LORAS/sd1-wrongshape.safetensors $O
2|is a folder|$G --output $out
2|not a regular file|$G --output /dev/full
2|unexpected|info --model $M --frobnicate
3|No such file|$G --init $tmp/in/missing.png $O
3|No such file|$G --from $tmp/in/missing.png $O
3|No such file|info --model $tmp/missing
3|No such file|$G --output $tmp/missing/o.png
3|missing.safetensors|$G --lora $tmp/in/missing.safetensors $O
3|cannot read|generate --model $M --prompt x~<lora:missing:1> --lora-dir $LORAS --steps 1 --width 64 --height 64 $O
3|cannot open|tokenize --vocab $tmp/in/missing x
4|cannot read PNG|$G --init $tmp/in/text.png $O
4|iTXt chunk declares 2000000000 bytes|$G --init $tmp/in/bigtext.png $O
4|iTXt chunk declares 2000000000 bytes|$G --from $tmp/in/bigtext.png $O
4|cannot read PNG|$G --from $tmp/in/text.png $O
2|no "parameters" text|$G --from $tmp/in/ok.png $O
4|IDAT chunk declares 192 bytes|$G --init $tmp/in/cut.png $O
4|cannot decode PNG|$G --init $tmp/in/garbage.png $O
4|JSON|info --model $FIX/bad_header_not_json.safetensors
4|outside the file|info --model $FIX/bad_truncated_data.safetensors
4|no Stable Diffusion weights|info --model $FIX/ok_no_model.safetensors
4|not a diffusers model folder|info --model $tmp/noparts
4|scheduler_config.json: not valid JSON|$G --model $tmp/cut $O
4|no signal left|$G --model $tmp/sched $O
4|scaling_factor|$G --model $tmp/scale $O
4|is empty|$G --model $tmp/empty $O
4|dimension 1 is 2147483647|$G --model $tmp/absurd $O
4|token ids up to 60000|$G --model $tmp/vocab $O
4|LoHa|$G --lora $LORAS/sd1-loha.safetensors $O
4|lora.safetensors|$G --lora $tmp/in/lora.safetensors $O
4|not a TAESD|$G --decoder $FIX/ok_valid.safetensors $O
5|MiB|$G --width 4096 --height 4096 $O
7|NaN or infinite|generate --model $tmp/nan --prompt x --steps 2 --width 64 --height 64 $O
7|image encoder (VAE)|generate --model $tmp/nanenc --prompt x --steps 2 --init $tmp/in/ok.png $O
7|image decoder (VAE)|generate --model $tmp/nanvae --prompt x --steps 2 --width 64 --height 64 $O
7|fit is singular|generate --model $tmp/nanenc --prompt x --steps 2 --width 64 --height 64 --preview $out/p.png $O
EOF
}

run_case() { # STATUS WORD ARGS
    want=$1 word=$2 args=$3
    set -f
    # shellcheck disable=SC2086
    set -- $args
    set +f
    n=$#
    i=0
    while [ $i -lt $n ]; do # ~ -> a space inside one argument
        a=$1
        shift
        case $a in *"~"*) a=$(printf '%s' "$a" | tr '~' ' ') ;; esac
        set -- "$@" "$a"
        i=$((i + 1))
    done
    if [ "$want" = 5 ]; then
        DIFFUSE_MEMORY_LIMIT_MB=64 "$BIN" "$@" >"$tmp/stdout" 2>"$tmp/err"
    else
        "$BIN" "$@" >"$tmp/stdout" 2>"$tmp/err"
    fi
    rc=$?
    name="case $((count + 1)) ($want, $word)"
    if [ "$rc" -ge 128 ] || grep -q -e 'Sanitizer' -e 'runtime error:' "$tmp/err"; then
        fail "$name: crashed (status $rc): $(head -c 400 "$tmp/err")"
    elif [ "$rc" -ne "$want" ]; then
        fail "$name: status $rc, want $want: $(head -c 300 "$tmp/err")"
    elif ! grep -q -F -e "$word" "$tmp/err"; then
        fail "$name: stderr does not say '$word': $(head -c 300 "$tmp/err")"
    elif [ -n "$(ls -A "$out")" ] || [ -n "$(ls -A "$tmp/ro" | grep -v '^keep$')" ]; then
        fail "$name: wrote $(ls -A "$out" "$tmp/ro")"
    else
        pass
    fi
    rm -rf "$out"/* 2>/dev/null
}

cases >"$tmp/table"
count=0
while IFS='|' read -r want word args; do
    run_case "$want" "$word" "$args"
    count=$((count + 1))
done <"$tmp/table"
[ "$count" -ge 40 ]
if [ $? -eq 0 ]; then pass; else fail "the catalogue holds $count cases, fewer than 40"; fi
chmod 0755 "$tmp/ro"
finish
