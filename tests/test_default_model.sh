#!/bin/sh
# test_default_model.sh: the bundled default model (models/default) through
# the C engine, end to end: it loads (`info` says sd1, v_prediction, 256x256),
# `--model default` resolves to it, a few grammar prompts at fixed seeds give
# 256x256 images, the same seed the same bytes, and every image is a scene:
# most of it one flat palette colour (a background), read by a stdlib-only PNG
# reader. A broken engine or model (wrong weights, schedule, prediction type,
# sampler, VAE scaling) gives noise or smears and fails here; e.g.
# `--prediction epsilon` on this v-prediction model does (DIFFUSE_TEST_EXTRA).
# What the model has earned is checked too: for each PROMPT|SEED line of
# JUDGE_CASES, at the model's own settings, tests/bench/adherence_judge.py must
# find the attributes in EARNED (those the bench measures at >= 97%: since
# stages 7-9 of MODEL_CARD.md all six, the shape included; two of the lines
# are small stars, the shape the model draws worst).
# Run from the repository root; binary
# ${BUILD:-build}/diffuse.
# Ends with "N passed, N failed" (tests/run.sh).

BIN=${BUILD:-build}/diffuse
MODEL=models/default
EXTRA=${DIFFUSE_TEST_EXTRA:-}

# attributes of the prompts the model must get right (adherence_judge.py names)
EARNED="bg color shape count size pos"
# PROMPT|SEED lines: one per background colour, all shapes and counts. The
# test checks that the engine still draws what the model draws, not the rate
# (tests/bench/adherence.py measures that), so each seed is one where the
# model is right (the seeds were chosen when seed 8 of the last line gave the
# model before stages 7-9 a black background; the shipped one is right on all 8)
JUDGE_CASES="a red circle on a blue background|1
two small yellow stars at the top on a black background|2
A large green triangle on the left on a white background.|3
three small white squares at the bottom right on a purple background|4
a large orange star in the center on a green background|5
two large blue circles at the bottom on a yellow background|6
three small black stars at the top left on a red background|7
a small purple square on the right on a orange background|9"

. tests/lib.sh

tmp=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-default.XXXXXX") || { echo "0 passed, 1 failed"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

[ -x "$BIN" ] || { fail "$BIN not built (make)"; finish; }
[ -f "$MODEL/unet/diffusion_pytorch_model.safetensors" ] || { fail "$MODEL missing"; finish; }
PY=
for p in ${PYTHON:-} python3 /usr/bin/python3; do
    "$p" -c 'import numpy' 2>/dev/null && PY=$p && break
done
[ -n "$PY" ] || { fail "python3 with numpy missing (the image checks need it)"; finish; }

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
    "$PY" - "$1" <<'PYEOF'
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

# gen PROMPT SEED OUT [OPTIONS]: the model's own settings (and DIFFUSE_TEST_EXTRA)
gen() {
    p=$1 s=$2 o=$3
    shift 3
    # shellcheck disable=SC2086 # EXTRA is a list of options
    "$BIN" generate --model "$MODEL" --prompt "$p" --seed "$s" --output "$o" $EXTRA "$@" \
        >"$tmp/gen.out" 2>"$tmp/gen.err"
}

# case_scene PROMPT SEED: a 256x256 scene (>= 60% one palette colour) showing
# what the prompt asks for
case_scene() {
    out=$tmp/$2.png
    if ! gen "$1" "$2" "$out"; then
        fail "generate '$1': $(tail -c 300 "$tmp/gen.err")"
        return
    fi
    # shellcheck disable=SC2046 # four words
    set -- "$1" "$2" $(look "$out")
    [ "$3 $4" = "256 256" ] && pass || fail "'$1': image is $3x$4, want 256x256"
    awk "BEGIN { exit !($6 >= 0.6) }" && pass || fail "'$1' (seed $2): not a scene: only $6 of it is $5"
    # shellcheck disable=SC2086 # EARNED is a list of attributes
    if saw=$("$PY" tests/bench/adherence_judge.py "$out" "$1" $EARNED 2>&1); then
        pass
    else
        fail "'$1' (seed $2): the image shows $saw"
    fi
}

printf '%s\n' "$JUDGE_CASES" >"$tmp/cases"
while IFS='|' read -r p s; do
    [ -n "$p" ] && case_scene "$p" "$s"
done <"$tmp/cases"

# the model's own settings are the defaults: the same as given explicitly
if "$BIN" info --model "$MODEL" | grep -q "suggested: dpmpp_2m, 10 steps, guidance 1.5 "; then
    pass
else
    fail "info: the model's settings are not dpmpp_2m, 10 steps, guidance 1.5"
fi

# determinism, and the seed matters
if gen "a red circle on a blue background" 1 "$tmp/again.png"; then
    cmp -s "$tmp/1.png" "$tmp/again.png" && pass || fail "seed 1 twice gave different images"
    if cmp -s "$tmp/1.png" "$tmp/2.png"; then fail "seeds 1 and 2 gave the same image"; else pass; fi
else
    fail "generate again: $(tail -c 300 "$tmp/gen.err")"
fi

finish
