#!/usr/bin/env python3
"""adherence.py: GenEval-style prompt adherence of the default model, measured
on images the C engine makes (build/diffuse generate), never PyTorch.

For prompts whose (color, shape, position) combination was held out of
training (models/train/heldout.txt), with a seeded random count, size and
background, each image gets its own seed; adherence_judge.py reads every image
back and checks background color, object color, shape, count, position and
size. Prints the fraction of images with every attribute right and the
fraction right per attribute, and writes a JSON report.

    python3 tests/bench/adherence.py [--images 200] [--model models/default]
    python3 tests/bench/adherence.py --self-test   # the judge on rendered ground truth

Generation uses the model's own settings (model_index.json "_diffuse_defaults":
steps, sampler, guidance) at its native size unless --steps/--cfg/--sampler
are given. Images run in parallel jobs of
--threads engine threads each.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import adherence_judge as J  # noqa: E402

HELDOUT = os.path.join(ROOT, "models", "train", "heldout.txt")


def heldout_triples(path=HELDOUT):
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            c, s, p = line.rstrip("\n").split("\t")
            out.append((J.COLORS.index(c), J.SHAPES.index(s), J.POSITIONS.index(p)))
    return out


def make_cases(n, seed):
    """n held-out prompts (cycling through the triples), each with its spec and seed."""
    rng = random.Random(seed)
    triples = heldout_triples()
    cases = []
    for i in range(n):
        c, s, p = triples[i % len(triples)]
        k, size = rng.randint(1, 3), rng.randint(0, 1)
        bg = rng.choice([b for b in range(8) if b != c])
        words = [{1: "a", 2: "two", 3: "three"}[k], J.SIZES[size], J.COLORS[c],
                 J.SHAPES[s] + ("s" if k > 1 else ""), J.POSITIONS[p], "on a", J.COLORS[bg],
                 "background"]
        spec = {"bg": bg, "color": c, "shape": s, "count": k, "size": size, "pos": p}
        cases.append({"prompt": " ".join(words), "spec": spec, "seed": seed * 100000 + i})
    return cases


def summarise(results):
    n = len(results)
    per = {k: sum(r["right"][k] for r in results) / n for k in J.ATTRIBUTES}
    full = sum(all(r["right"].values()) for r in results) / n
    return {"images": n, "fully_right": full, "per_attribute": per}


def print_summary(title, s):
    per = "  ".join(f"{k} {v:.3f}" for k, v in s["per_attribute"].items())
    print(f"{title}: {s['images']} images, fully right {s['fully_right']:.3f}")
    print(f"  per attribute: {per}")


def generate(binary, model, case, out, extra, threads):
    cmd = [binary, "generate", "--model", model, "--prompt", case["prompt"], "--seed",
           str(case["seed"]), "--threads", str(threads), "--output", out] + extra
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-400:]}")


def run_bench(a):
    cases = make_cases(a.images, a.seed)
    extra = []
    for opt in ("steps", "cfg", "sampler", "width", "height"):
        v = getattr(a, opt)
        if v is not None:
            extra += [f"--{opt}", str(v)]
    outdir = a.keep or tempfile.mkdtemp(prefix="adherence.")
    os.makedirs(outdir, exist_ok=True)
    t0 = time.time()

    def one(i):
        path = os.path.join(outdir, f"{i:04d}.png")
        generate(a.binary, a.model, cases[i], path, extra, a.threads)
        analysis, right = J.judge(J.read_png(path), cases[i]["spec"])
        return {**cases[i], "image": path, "right": right, "saw": J.describe(analysis)}

    with ThreadPoolExecutor(max_workers=a.jobs) as ex:
        results = list(ex.map(one, range(len(cases))))
    s = summarise(results)
    s.update({"model": a.model, "settings": extra or "the model's own",
              "seconds": round(time.time() - t0, 1), "cases": results})
    print_summary(f"held-out prompts, {a.model}", s)
    print(f"  {s['seconds']:.0f} s; images in {outdir}")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(s, f, indent=1)
    for r in results[:a.show]:
        print(f"  {'ok ' if all(r['right'].values()) else 'BAD'} {r['prompt']!r} -> {r['saw']}")
    return s


def blurred(imgs, sigma):
    """imgs [n, 3, H, W] blurred by a Gaussian of sigma pixels (edges
    replicated): a decoder's soft edges and blunt corners."""
    import torch
    import torch.nn.functional as F
    r = int(3 * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1).float() / sigma) ** 2)
    k = (k[:, None] * k[None, :]) / k.sum() ** 2
    return F.conv2d(F.pad(imgs, (r, r, r, r), mode="replicate"),
                    k[None, None].repeat(3, 1, 1, 1), groups=3)


def self_test(a):
    """The judge on ground-truth scenes drawn by the training renderer, saved
    and read back as PNG: held-out scenes in the default model's canonical
    layout, random scenes in the varied one, and random canonical scenes
    blurred by 1.5 pixels (soft edges and blunt star points, as decoders
    draw them), every attribute. With --keep DIR the images stay there, with
    DIR/cases.tsv (file, prompt, blur): tests/fixtures/judge is such a set,
    which tests/test_judge.sh judges in `make test` (no torch there)."""
    sys.path.insert(0, os.path.join(ROOT, "models", "train"))
    import torch
    import scenes
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(a.seed)
    results = []
    parts = (("only", "canonical", 0), ("any", "varied", 0), ("any", "canonical", 1.5))
    with tempfile.TemporaryDirectory() as scratch:
        tmp = a.keep or scratch
        os.makedirs(tmp, exist_ok=True)
        for part, (held, layout, sigma) in enumerate(parts):
            sc = scenes.sample_scenes(a.images // len(parts), gen, heldout=held, layout=layout)
            imgs = scenes.render(sc, 256)
            if sigma:
                imgs = blurred(imgs, sigma)
            for i in range(len(sc)):
                path = os.path.join(tmp, f"{part}-{i}.png")
                scenes._save_png(path, imgs[i])
                spec = sc.row(i)
                analysis, right = J.judge(J.read_png(path), spec)
                results.append({"spec": spec, "right": right, "saw": J.describe(analysis),
                                "want": scenes.canonical_prompt(spec), "blur": sigma,
                                "file": os.path.basename(path)})
        if a.keep:
            with open(os.path.join(tmp, "cases.tsv"), "w") as f:
                f.write("# file\tprompt\tblur (pixels): adherence.py --self-test "
                        f"--images {a.images} --seed {a.seed} --keep\n")
                f.writelines(f"{r['file']}\t{r['want']}\t{r['blur']}\n" for r in results)
    s = summarise(results)
    print_summary("judge on rendered ground truth", s)
    for r in results:
        if not all(r["right"].values()):
            blur = f" (blurred {r['blur']} px)" if r["blur"] else ""
            print(f"  wrong: {r['want']!r}{blur} -> {r['saw']} {r['right']}")
    # prompt parsing round trip
    bad = sum(J.parse_prompt(r["want"]) != {k: r["spec"][k] for k in J.ATTRIBUTES}
              for r in results)
    print(f"  prompt parser: {len(results) - bad}/{len(results)} prompts parsed back")
    ok = s["fully_right"] >= 0.99 and bad == 0
    print(f"{1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default"))
    ap.add_argument("--binary", default=os.path.join(ROOT, os.environ.get("BUILD", "build"),
                                                     "diffuse"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--sampler")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--jobs", type=int, default=2, help="engine processes at once")
    ap.add_argument("--threads", type=int, default=1, help="engine threads per process")
    ap.add_argument("--keep", help="folder to keep the images in")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--show", type=int, default=10, help="print this many cases")
    a = ap.parse_args()
    if a.self_test:
        return self_test(a)
    run_bench(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
