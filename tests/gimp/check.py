#!/usr/bin/env python3
"""check.py: pixel checks on the raw dumps tests/gimp/lib.scm writes.

    check.py notblank RAW CHANNELS [TYPE]
        the colour channels vary (not blank, not constant); TYPE u8 or f32
    check.py img2img ORIG ORIG_CH MASK IMAGE_W RESULT RESULT_CH X Y W H [TYPE]
        RESULT (a W x H layer at X, Y in an image IMAGE_W wide) holds ORIG's
        exact pixels (alpha opaque) wherever MASK (the selection, one byte a
        pixel over the whole image) is 0, and differs from ORIG over most of
        the pixels where MASK is 255.

Prints one line saying what it found; exit status 0 when the check holds.
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


def main(argv):
    if len(argv) >= 3 and argv[0] == "notblank":
        text, ok = notblank(argv[1], int(argv[2]), *argv[3:4])
    elif len(argv) >= 11 and argv[0] == "img2img":
        a = argv[1:]
        text, ok = img2img(a[0], int(a[1]), a[2], int(a[3]), a[4], int(a[5]), int(a[6]),
                           int(a[7]), int(a[8]), int(a[9]), *a[10:11])
    else:
        print(__doc__)
        return 2
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
