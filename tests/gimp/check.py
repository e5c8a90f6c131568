#!/usr/bin/env python3
"""check.py: pixel checks on the raw dumps tests/gimp/lib.scm writes.

    check.py notblank RAW CHANNELS [TYPE]
        the colour channels vary (not blank, not constant); TYPE u8 or f32
    check.py img2img ORIG ORIG_CH MASK IMAGE_W RESULT RESULT_CH X Y W H [TYPE]
        RESULT (a W x H layer at X, Y in an image IMAGE_W wide) holds ORIG's
        exact pixels (alpha opaque) wherever MASK (the selection, one byte a
        pixel over the whole image) is 0, and differs from ORIG over most of
        the pixels where MASK is 255.
    check.py seam ORIG ORIG_CH MASK IMAGE_W RESULT RESULT_CH X Y W H
        The feather blends: over the pixels where MASK is between 0 and 255,
        RESULT differs from ORIG by more than nothing, and less in the
        feather's outer half (MASK < 128) than in its inner half or where
        MASK is 255 (mean absolute differences, 0..255).
    check.py alpha ORIG RESULT
        Two RGBA dumps of one size: RESULT's alpha is ORIG's, byte for byte,
        ORIG has transparent and opaque pixels (a text layer), and RESULT's
        colour differs from ORIG's where ORIG is opaque.
    check.py scaled ORIG ORIG_W ORIG_H RESULT RESULT_W RESULT_H F X Y [nearest]
        Two RGBA dumps: RESULT is ORIG scaled by the integer factor F, of
        which the RESULT_W x RESULT_H rectangle at X, Y was kept: with
        nearest, each pixel is ORIG's at ((x + X) / F, (y + Y) / F), byte for
        byte; without, RESULT is opaque and not such blocks (interpolated),
        yet close to them (mean absolute difference under 16 of 255).
    check.py pdb-args PLUGINRC PROCEDURE...
        GIMP 3.0's record of the procedures' arguments (its pluginrc), one
        line each: "arg PROCEDURE I NAME VALUE-TYPE TAIL", TAIL the range and
        default of numbers, the default of strings, the default and the
        choices of a choice ("" for an empty string); then "menu PROCEDURE
        LABEL PATH", "types PROCEDURE TYPES" and "sensitivity PROCEDURE MASK".

Prints one line saying what it found (pdb-args: the lines above); exit status
0 when the check holds.
"""
import struct
import sys


def load(path, kind):
    data = open(path, "rb").read()
    if kind == "f32":
        return list(struct.unpack("<%df" % (len(data) // 4), data)), 1.0
    return list(data), 255.0


def notblank(path, channels, kind="u8"):
    values, full = load(path, kind)
    colour = channels - 1 if channels in (2, 4) else channels
    px = [values[i:i + colour] for i in range(0, len(values), channels)]
    flat = [v for p in px for v in p]
    if not flat:
        return "empty file", False
    mean = sum(flat) / len(flat)
    sd = (sum((v - mean) ** 2 for v in flat) / len(flat)) ** 0.5
    ok = sd > 0.02 * full and len(set(map(tuple, px))) > 16
    return "mean %.3f sd %.3f distinct %d" % (mean / full, sd / full, len(set(map(tuple, px)))), ok


def img2img(orig, orig_ch, mask, image_w, result, result_ch, x, y, w, h, kind="u8"):
    o, full = load(orig, kind)
    r, _ = load(result, kind)
    m = open(mask, "rb").read()
    kept = kept_bad = inside = changed = 0
    for j in range(h):
        for i in range(w):
            src = (y + j) * image_w + (x + i)
            op = o[src * orig_ch:src * orig_ch + orig_ch]
            rp = r[(j * w + i) * result_ch:(j * w + i) * result_ch + result_ch]
            if m[src] == 0:
                kept += 1
                alpha_ok = result_ch == orig_ch or rp[-1] == full
                if rp[:orig_ch] != op or not alpha_ok:
                    kept_bad += 1
            elif m[src] == 255:
                inside += 1
                if max(abs(a - b) for a, b in zip(rp[:orig_ch], op)) > 2 / 255 * full:
                    changed += 1
    ok = kept > 0 and kept_bad == 0 and inside > 0 and changed >= 0.5 * inside
    return ("outside the selection %d pixels, %d differ; inside %d, %d changed"
            % (kept, kept_bad, inside, changed)), ok


def seam(orig, orig_ch, mask, image_w, result, result_ch, x, y, w, h):
    o, _ = load(orig, "u8")
    r, _ = load(result, "u8")
    m = open(mask, "rb").read()
    sums = {"outer": [0, 0], "inner": [0, 0], "full": [0, 0]}
    for j in range(h):
        for i in range(w):
            src = (y + j) * image_w + (x + i)
            if m[src] == 0:
                continue
            part = "full" if m[src] == 255 else "inner" if m[src] >= 128 else "outer"
            op = o[src * orig_ch:src * orig_ch + orig_ch]
            rp = r[(j * w + i) * result_ch:(j * w + i) * result_ch + orig_ch]
            sums[part][0] += sum(abs(a - b) for a, b in zip(rp, op)) / orig_ch
            sums[part][1] += 1
    d = {k: v[0] / v[1] if v[1] else 0 for k, v in sums.items()}
    ok = (all(v[1] for v in sums.values()) and 0 < d["outer"] < d["inner"]
          and d["outer"] < d["full"])
    return ("mean |result - original|: feather outer %.2f (%d px), inner %.2f (%d px), "
            "selection %.2f (%d px)" % (d["outer"], sums["outer"][1], d["inner"],
                                         sums["inner"][1], d["full"], sums["full"][1])), ok


def alpha(orig, result):
    o, r = open(orig, "rb").read(), open(result, "rb").read()
    if len(o) != len(r) or len(o) % 4:
        return "sizes differ: %d and %d bytes" % (len(o), len(r)), False
    oa, ra = o[3::4], r[3::4]
    clear, solid = oa.count(0), oa.count(255)
    if not clear or not solid:
        return "the original has %d transparent and %d opaque pixels" % (clear, solid), False
    moved = sum(1 for i in range(0, len(o), 4) if o[i + 3] == 255 and o[i:i + 3] != r[i:i + 3])
    same = sum(1 for a, b in zip(oa, ra) if a == b)
    text = "alpha kept at %d of %d pixels (%d transparent); %d of %d opaque pixels repainted" % (
        same, len(oa), clear, moved, solid)
    return text, same == len(oa) and moved > 0


def scaled(orig, ow, oh, result, rw, rh, f, x0, y0, mode=""):
    o, _ = load(orig, "u8")
    r, _ = load(result, "u8")
    if len(o) != ow * oh * 4 or len(r) != rw * rh * 4:
        return "sizes %d and %d bytes, want %dx%d and %dx%d RGBA" % (len(o), len(r), ow, oh, rw,
                                                                    rh), False
    same, diff, beside = 0, 0, 0
    for y in range(rh):
        for x in range(rw):
            sx, sy = (x + x0) // f, (y + y0) // f
            i, j = (y * rw + x) * 4, (sy * ow + sx) * 4
            same += r[i:i + 4] == o[j:j + 4]
            diff += sum(abs(r[i + k] - o[j + k]) for k in range(3))
            if r[i:i + 4] != o[j:j + 4]:
                # a tie between two source pixels, rounded the other way, or
                # the nearest pixel up to two levels off in a channel (seen under
                # the sanitizers: 9 of 18,432 pixels)
                beside += any(max(abs(a - b) for a, b in
                                  zip(r[i:i + 4], o[((sy + dy) * ow + sx + dx) * 4:][:4])) <= 2
                              for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                              if 0 <= sx + dx < ow and 0 <= sy + dy < oh)
    n = rw * rh
    mean = diff / (3.0 * n)
    opaque = all(r[i + 3] == 255 for i in range(0, len(r), 4))
    text = "%d of %d pixels the nearest source pixel's, %d a neighbour's, mean difference %.2f, %s" % (
        same, n, beside, mean, "opaque" if opaque else "not opaque")
    if mode == "nearest":
        # GEGL's nearest sampler, run on tiles in threads, may round a tie at
        # a block edge to the neighbouring source pixel: a few in a thousand
        return text, same + beside == n and same >= n * 0.999
    return text, opaque and same < n * 0.9 and mean < 16


def sexp(text):
    """Parses the S-expressions of a GIMP rc file into nested lists; strings
    become ("str", value) so that they stay apart from symbols."""
    stack, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "(":
            stack.append(cur)
            cur = []
        elif c == ")":
            done, cur = cur, stack.pop()
            cur.append(done)
        elif c == '"':
            j, out = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                out.append(text[j])
                j += 1
            cur.append(("str", "".join(out)))
            i = j
        elif c == "#" and (i == 0 or text[i - 1] == "\n"):  # a comment line
            while i < len(text) and text[i] != "\n":
                i += 1
        elif not c.isspace():
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in '()"':
                j += 1
            cur.append(text[i:j])
            i = j - 1
        i += 1
    return cur


def word(x):
    if isinstance(x, tuple):
        return x[1] if x[1] else '""'
    return x


def pdb_args(pluginrc, procs):
    lines = []

    def walk(node):
        if isinstance(node, list) and node:
            if node[0] == "proc-def" and word(node[1]) in procs:
                proc_def(node)
            for child in node:
                walk(child)

    def proc_def(node):
        name = word(node[1])
        lists = [x for x in node if isinstance(x, list)]
        atoms = [x for x in node[2:] if not isinstance(x, list)]
        # type blurb help authors copyright date label label-type, then (menu
        # and icon lists) image-types sensitivity n-args n-values
        label, types, mask = word(atoms[6]), word(atoms[8]), word(atoms[9])
        for x in lists:
            if x[0] == "menu-path":
                lines.append("menu %s %s %s" % (name, label, word(x[1])))
        lines.append("types %s %s" % (name, types))
        lines.append("sensitivity %s %s" % (name, mask))
        args = [x for x in lists if x[0] == "proc-arg"]
        for i, a in enumerate(args):
            pspec, vtype, argname, tail = word(a[2]), word(a[3]), word(a[4]), a[8:]
            if pspec == "GimpParamChoice":  # default, count, then nick id label help
                tail = [tail[0]] + tail[2::4]
            lines.append(" ".join(["arg", name, str(i), argname, vtype] + [word(t) for t in tail]))

    walk(sexp(open(pluginrc, encoding="latin-1").read()))  # icons are bytes
    return "\n".join(lines), bool(lines)


def main(argv):
    if len(argv) >= 3 and argv[0] == "notblank":
        text, ok = notblank(argv[1], int(argv[2]), *argv[3:4])
    elif len(argv) == 3 and argv[0] == "alpha":
        text, ok = alpha(argv[1], argv[2])
    elif len(argv) >= 10 and argv[0] == "scaled":
        a = argv[1:]
        text, ok = scaled(a[0], int(a[1]), int(a[2]), a[3], int(a[4]), int(a[5]), int(a[6]),
                          int(a[7]), int(a[8]), *a[9:10])
    elif len(argv) >= 3 and argv[0] == "pdb-args":
        text, ok = pdb_args(argv[1], argv[2:])
    elif len(argv) >= 11 and argv[0] == "img2img":
        a = argv[1:]
        text, ok = img2img(a[0], int(a[1]), a[2], int(a[3]), a[4], int(a[5]), int(a[6]),
                           int(a[7]), int(a[8]), int(a[9]), *a[10:11])
    elif len(argv) >= 11 and argv[0] == "seam":
        a = argv[1:]
        text, ok = seam(a[0], int(a[1]), a[2], int(a[3]), a[4], int(a[5]), int(a[6]), int(a[7]),
                        int(a[8]), int(a[9]))
    else:
        print(__doc__)
        return 2
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
