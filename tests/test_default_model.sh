#!/bin/sh
# test_default_model.sh: the bundled default model (models/default) through
# the C engine, end to end: it loads (`info` says sd1, v_prediction, 256x256),
# `--model default` resolves to it, a few grammar prompts at fixed seeds give
# 256x256 images, the same seed the same bytes, and every image is a scene:
# most of it one flat palette colour (a background), read by a stdlib-only PNG
# reader. A broken engine or model (wrong weights, schedule, prediction type,
# sampler, VAE scaling) gives noise or smears and fails here; e.g.
# `--prediction epsilon` on this v-prediction model does (DIFFUSE_TEST_EXTRA).
# What the model has earned is checked too: the background colour asked for,
# for the prompts listed with a colour in BG_CASES (none yet: the CPU-trained
# model of models/MODEL_CARD.md does not follow colours; add cases as a
# retrained model earns them, the bench's per-attribute figures say which).
# Run from the repository root; binary ${BUILD:-build}/diffuse. Ends with
# "N passed, N failed" (tests/run.sh).

BIN=${BUILD:-build}/diffuse
MODEL=models/default
STEPS=${DIFFUSE_TEST_STEPS:-20}
EXTRA=${DIFFUSE_TEST_EXTRA:-}

# PROMPT|SEED|BACKGROUND lines the model gets right, one a line
BG_CASES=""

passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-default.XXXXXX") || { echo "0 passed, 1 failed"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

[ -x "$BIN" ] || { fail "$BIN not built (make)"; finish; }
[ -f "$MODEL/unet/diffusion_pytorch_model.safetensors" ] || { fail "$MODEL missing"; finish; }
command -v python3 >/dev/null 2>&1 || { fail "python3 missing (the image check needs it)"; finish; }

if "$BIN" info --model "$MODEL" >"$tmp/info" 2>"$tmp/err"; then
    pass
    for want in "family: sd1" "prediction: v_prediction" "native size: 256x256" \
        "latent: 4 channels, 1/8 scale"; do
        grep -q -F "$want" "$tmp/info" && pass || fail "info: no '$want' in $(tr '\n' ';' <"$tmp/info")"
    done
else
    fail "info --model $MODEL: $(cat "$tmp/err")"
fi
"$BIN" info --model default >"$tmp/info-default" 2>"$tmp/err"
cmp -s "$tmp/info" "$tmp/info-default" && pass || fail "--model default is not $MODEL: $(cat "$tmp/err")"

# look FILE: "W H BG SHARE": size, the majority palette colour, and the share of
# pixels (every other row and column) within 0.3 of that colour.
look() {
    python3 - "$1" <<'PYEOF'
import struct, sys, zlib
P = {"red": (.90, .10, .12), "green": (.10, .68, .22), "blue": (.12, .28, .90),
     "yellow": (.97, .87, .10), "orange": (.98, .52, .05), "purple": (.55, .18, .72),
     "white": (.97, .97, .97), "black": (.05, .05, .05)}
d = open(sys.argv[1], "rb").read()
pos, idat = 8, b""
while pos < len(d):
    n, = struct.unpack(">I", d[pos:pos + 4]); kind = d[pos + 4:pos + 8]
    if kind == b"IHDR": w, h, depth, ctype = struct.unpack(">IIBB", d[pos + 8:pos + 18])
    if kind == b"IDAT": idat += d[pos + 8:pos + 8 + n]
    pos += 12 + n
bpp = {2: 3, 6: 4}[ctype]; raw = zlib.decompress(idat); stride = w * bpp
prev, rows = bytearray(stride), []
for y in range(h):
    f, cur = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = cur[i - bpp] if i >= bpp else 0; b = prev[i]; c = prev[i - bpp] if i >= bpp else 0
        if f == 1: cur[i] = (cur[i] + a) & 255
        elif f == 2: cur[i] = (cur[i] + b) & 255
        elif f == 3: cur[i] = (cur[i] + ((a + b) >> 1)) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(cur); prev = cur
px = [tuple(rows[y][x * bpp + k] / 255 for k in range(3)) for y in range(0, h, 2) for x in range(0, w, 2)]
d2 = lambda q, k: sum((q[i] - P[k][i]) ** 2 for i in range(3))
names = [min(P, key=lambda k: d2(q, k)) for q in px]
bg = max(set(names), key=names.count)
print(w, h, bg, "%.3f" % (sum(d2(q, bg) < 0.09 for q in px) / len(px)))
PYEOF
}

# gen PROMPT SEED OUT: default settings but STEPS steps (and DIFFUSE_TEST_EXTRA)
gen() {
    # shellcheck disable=SC2086 # EXTRA is a list of options
    "$BIN" generate --model "$MODEL" --prompt "$1" --seed "$2" --steps "$STEPS" --output "$3" \
        $EXTRA >"$tmp/gen.out" 2>"$tmp/gen.err"
}

# case_scene PROMPT SEED [BG]: a 256x256 scene (>= 60% one palette colour),
# with background BG when given
case_scene() {
    out=$tmp/$2.png
    if ! gen "$1" "$2" "$out"; then
        fail "generate '$1': $(tail -c 300 "$tmp/gen.err")"
        return
    fi
    # shellcheck disable=SC2046 # four words
    set -- "$1" "$2" "${3:-}" $(look "$out")
    [ "$4 $5" = "256 256" ] && pass || fail "'$1': image is $4x$5, want 256x256"
    awk "BEGIN { exit !($7 >= 0.6) }" && pass || fail "'$1' (seed $2): not a scene: only $7 of it is $6"
    if [ -n "$3" ]; then
        [ "$6" = "$3" ] && pass || fail "'$1' (seed $2): background $6, want $3"
    fi
}

case_scene "a red circle on a blue background" 1
case_scene "two small yellow stars at the top on a black background" 2
case_scene "A large green triangle on the left on a white background." 3
printf '%s\n' "$BG_CASES" >"$tmp/bg_cases"
while IFS='|' read -r p s c; do
    [ -n "$p" ] && case_scene "$p" "$s" "$c"
done <"$tmp/bg_cases"

# determinism, and the seed matters
if gen "a red circle on a blue background" 1 "$tmp/again.png"; then
    cmp -s "$tmp/1.png" "$tmp/again.png" && pass || fail "seed 1 twice gave different images"
    if cmp -s "$tmp/1.png" "$tmp/2.png"; then fail "seeds 1 and 2 gave the same image"; else pass; fi
else
    fail "generate again: $(tail -c 300 "$tmp/gen.err")"
fi

finish
