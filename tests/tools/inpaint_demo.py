#!/usr/bin/python3
"""inpaint_demo.py: the before/after images of issue 22's closing note.

One feathered elliptical selection on a 1024x768 painted scene, inpainted by
the GIMP 2.10 plug-in (build/plug-ins, `make && make plugin2`) with the
bundled default model ("" model) in each inpaint area, "Whole layer" and
"Selected area", the same settings otherwise. GIMP runs headless as
tests/test_gimp.sh runs it (a throwaway HOME whose gimprc adds the build
tree's plug-ins, tests/gimp/lib.scm); GIMP 2.10's PDB arguments lack the
inpaint area, so each run sets the remembered settings and calls
RUN-WITH-LAST-VALS (lib.scm, set-last-values), as cases 2b and 2c do.

Writes docs/inpaint-before.png, docs/inpaint-whole-layer.png,
docs/inpaint-selected-area.png (the flattened image, scaled to 512 wide),
docs/inpaint-crops.png (the selection's region at 1:1: before, whole layer,
selected area) and prints, per mode: the new layer's size and offsets, the
size generated at (the layer's parameters parasite), the plug-in's wall time
(its process, seen in /proc), and the pixels changed outside the selection
(from the full-size flattened PNGs; must be 0). Run from the repository root.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.getcwd()
PLUGIN_DIR = os.path.join(ROOT, "build", "plug-ins")
W, H = 1024, 768
SEL = (560, 480, 200, 150)  # x, y, w, h of the ellipse: off-centre, on the ground
FEATHER = 24
PROMPT = "a large red circle in the center on a green background"
SETTINGS = ("prompt=%s\\nnegative-prompt=\\nseed=42\\nsteps=20\\nguidance=1.5\\nsampler=euler\\n"
            "strength=0.75\\ncount=1\\nmodel=\\ninpaint-area=%d\\npadding=32\\nmasked-content=0\\n")
MODES = [("whole-layer", "Whole layer", 0), ("selected-area", "Selected area", 1)]


def scene(path):
    """Sky gradient, a sun, hills, a ground gradient: smooth, so any change shows."""
    y = np.arange(H, dtype=np.float32)[:, None]
    horizon = 420
    sky = np.stack([110 + 90 * y / horizon, 160 + 70 * y / horizon, 230 + 20 * y / horizon], -1)
    t = (y - horizon) / (H - horizon)
    ground = np.stack([70 - 30 * t, 150 - 50 * t, 60 - 20 * t], -1)
    img = np.where(y[..., None] < horizon, sky, ground) * np.ones((1, W, 1), np.float32)
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(pic)
    d.ellipse((140, 80, 260, 200), fill=(250, 220, 90))
    d.ellipse((-200, 330, 500, 560), fill=(80, 140, 70))
    d.ellipse((600, 360, 1300, 520), fill=(90, 150, 75))
    pic.save(path)


def body(tmp, area):
    x, y, w, h = SEL
    png = os.path.join(tmp, "scene.png")
    return f"""
(let* ((img (car (file-png-load RUN-NONINTERACTIVE "{png}" "{png}")))
       (bg (car (gimp-image-get-active-layer img))))
  (define (save-flat tag)
    (let* ((dup (car (gimp-image-duplicate img)))
           (flat (car (gimp-image-flatten dup)))
           (path (string-append out-dir "/" tag ".png")))
      (file-png-save2 RUN-NONINTERACTIVE dup flat path path 0 9 0 0 0 0 0 0 0)
      (gimp-image-delete dup)))
  (gimp-image-clean-all img)
  (save-flat "before")
  (gimp-image-select-ellipse img CHANNEL-OP-REPLACE {x} {y} {w} {h})
  (gimp-selection-feather img {FEATHER})
  (let ((channel (car (gimp-selection-save img))))
    (raw img channel "mask")
    (gimp-image-remove-channel img channel))
  (let ((b (gimp-selection-bounds img)))
    (out "bounds" (cadr b) (caddr b) (cadddr b) (car (cddddr b))))
  (set-last-values "{SETTINGS % (PROMPT, area)}")
  (try "img2img" (lambda () (plug-in-diffuse-img2img RUN-WITH-LAST-VALS img bg "" "" 0 1 1.0 "" 0.5 1 "")))
  (signature img "after")
  (save-flat "after"))
"""


def plugin_pids():
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"plug-ins/diffuse/diffuse") and b"-run" in args:
            pids.append(p)
    return pids


def run_mode(tmp, home, name, area):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    with open(os.path.join(d, "body.scm"), "w") as f:
        f.write(body(tmp, area))
    batch = (f'(begin (load "{ROOT}/tests/gimp/gimp2.scm") (load "{ROOT}/tests/gimp/lib.scm") '
             f'(case-begin "{d}") (catch (out "aborted") (load "{d}/body.scm")) (case-end))')
    env = dict(os.environ, HOME=home, DIFFUSE_VERBOSE="1")
    env.pop("DIFFUSE_DEFAULT_MODEL", None)  # "" is the copy beside the plug-in
    with open(os.path.join(d, "log"), "w") as log:
        t0 = time.time()
        g = subprocess.Popen(["timeout", "-k", "10", "900", "gimp-console-2.10", "-i", "-d", "-f",
                              "-b", batch, "-b", "(gimp-quit 0)"],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        first = last = None
        while g.poll() is None:  # the plug-in's own run: its process, seen from outside
            if plugin_pids():
                now = time.time()
                first = first or now
                last = now
            time.sleep(0.02)
        gimp_s = time.time() - t0
    return d, (last - first if first else None), gimp_s


def main():
    if not os.path.exists(os.path.join(PLUGIN_DIR, "diffuse", "diffuse")):
        sys.exit("no build/plug-ins/diffuse/diffuse: make && make plugin2")
    tmp = tempfile.mkdtemp(prefix="inpaint-demo.")
    home = os.path.join(tmp, "home")
    prof = os.path.join(home, ".config", "GIMP", "2.10")
    for sub in ("plug-ins", "modules", "interpreters", "environ", "scripts", "tmp", "brushes",
                "dynamics", "fonts", "gradients", "palettes", "patterns", "tool-presets",
                "templates", "themes", "icons", "mypaint-brushes"):
        os.makedirs(os.path.join(prof, sub))
    with open(os.path.join(prof, "gimprc"), "w") as f:
        f.write('(plug-in-path "${gimp_dir}/plug-ins:${gimp_plug_in_dir}/plug-ins:%s")\n' % PLUGIN_DIR)
    scene(os.path.join(tmp, "scene.png"))
    # a first GIMP run registers the plug-ins (pluginrc), so the timed runs do not
    subprocess.run(["gimp-console-2.10", "-i", "-d", "-f", "-b", "(gimp-quit 0)"],
                   env=dict(os.environ, HOME=home), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    results = {}
    ok = True
    for name, title, area in MODES:
        d, plugin_s, gimp_s = run_mode(tmp, home, name, area)
        out = open(os.path.join(d, "out.txt")).read().splitlines()
        log = open(os.path.join(d, "log")).read()
        if "status img2img ok" not in out or "done" not in out:
            print(f"{title}: FAILED\n" + "\n".join(out[:20]) + "\n" + log[-2000:])
            ok = False
            continue
        layer = next(l.split() for l in out if l.startswith("layer after 0 "))
        params = open(os.path.join(d, "after-0-parameters.txt"), "rb").read().rstrip(b"\0").decode()
        size = params.split("Size: ")[1].split(",")[0]
        bounds = next(l.split()[1:] for l in out if l.startswith("bounds "))
        before = np.asarray(Image.open(os.path.join(d, "before.png")).convert("RGB"))
        after = np.asarray(Image.open(os.path.join(d, "after.png")).convert("RGB"))
        mask = np.fromfile(os.path.join(d, "mask.raw"), np.uint8).reshape(H, W)
        changed = (before != after).any(-1)
        outside = int((changed & (mask == 0)).sum())
        inside = int((changed & (mask > 0)).sum())
        memory = [l for l in log.splitlines() if l.startswith("diffuse: memory: ")]
        results[name] = (before, after, [int(v) for v in bounds])
        print(f"{title}: layer {layer[3]}x{layer[4]} at {layer[5]},{layer[6]}; selection bounds "
              f"{' '.join(bounds)}; generated at {size}; plug-in {plugin_s:.2f} s "
              f"(GIMP run {gimp_s:.2f} s); pixels changed outside the selection {outside}, "
              f"inside {inside} of {int((mask > 0).sum())}")
        print(f"   parasite: {params!r}")
        if memory:
            print("   " + memory[-1])
        ok = ok and outside == 0
    if len(results) == len(MODES):
        docs = os.path.join(ROOT, "docs")
        before = results["whole-layer"][0]
        small = lambda a: Image.fromarray(a).resize((512, 512 * H // W), Image.LANCZOS)
        small(before).save(os.path.join(docs, "inpaint-before.png"), optimize=True)
        for name, _, _ in MODES:
            small(results[name][1]).save(os.path.join(docs, f"inpaint-{name}.png"), optimize=True)
        x1, y1, x2, y2 = results["whole-layer"][2]
        m = 16
        x1, y1, x2, y2 = max(x1 - m, 0), max(y1 - m, 0), min(x2 + m, W), min(y2 + m, H)
        crops = [before] + [results[n][1] for n, _, _ in MODES]
        labels = ["before"] + [t for _, t, _ in MODES]
        cw, ch, gap, top = x2 - x1, y2 - y1, 8, 16
        sheet = Image.new("RGB", (3 * cw + 2 * gap, ch + top), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for i, (a, label) in enumerate(zip(crops, labels)):
            sheet.paste(Image.fromarray(a[y1:y2, x1:x2]), (i * (cw + gap), top))
            draw.text((i * (cw + gap) + 2, 2), label, fill=(0, 0, 0))
        sheet.save(os.path.join(docs, "inpaint-crops.png"), optimize=True)
        print(f"crops: {cw}x{ch} at {x1},{y1} (the selection's bounds plus {m} px)")
    if os.environ.get("KEEP"):
        print("kept", tmp)
    else:
        shutil.rmtree(tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
