"""same_run.py: does train.py still train exactly as it did at a git revision?

Runs a tiny version of recipe.sh (the `small` preset, a few steps of every
stage and of each way a stage resumes, one CPU thread, fixed seed) twice: with
models/train as it is at REV (default HEAD) and as it is in the working tree,
each in its own temporary folder. Then compares every checkpoint the two runs
wrote (vae.pt, unet.pt, the latent cache, the compact parts) tensor by tensor,
bit for bit, and the other fields except the seconds spent; and the logs with
clock times and durations removed. Exit status 0: the same run. For a change
to train.py that must not change what it trains (a refactor). About two
minutes on one core.

    python3 models/train/same_run.py [--ref REV] [--keep DIR]
"""
import argparse
import glob
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# recipe.sh in miniature: each line one train.py command, run in order in one
# output folder; the second folder runs --stage all from scratch.
RECIPE = [
    ("run", "--stage vae --vae-steps 3 --minutes-vae 1e9 --vae-crop 64 --vae-batch 2 --vae-lr 2e-3"),
    ("run", "--stage vae --vae-steps 5 --minutes-vae 1e9 --vae-crop 256 --vae-batch 1"),
    ("run", "--stage decoder --dec-steps 2 --vae-batch 2"),
    ("run", "--stage unet --steps 3 --batch 4 --cache 16 --minutes 1e9 --warmup 2 --ema 0.999"),
    ("run", "--stage unet --steps 5 --batch 4 --cache 0 --minutes 1e9 --lr 5e-5 --warmup 2 "
            "--schedule constant --focus 0.5 --t-range 100,700 --t-uniform 1.0 --edge-unet 6 "
            "--edge-unet-tmax 500 --fresh-optimizer --parts parts"),
    ("run", "--stage unet --steps 7 --batch 4 --cache 0 --minutes 1e9 --lr 3e-4 --warmup 1 "
            "--schedule cosine-run --ema 0.995 --restart-from-ema"),
    ("run", "--stage decoder --dec-steps 3 --vae-batch 2 --dec-unet 0.5 --dec-focus 0.5 "
            "--dec-lr 3e-4"),
    ("run", "--stage decoder --dec-steps 5 --vae-batch 2 --dec-unet 0.5 --dec-focus 0.5 "
            "--dec-guidance 1.5 --dec-schedule run --dec-warmup 2 --dec-lr 2e-4 --fresh-optimizer"),
    ("all", "--stage all --vae-steps 2 --minutes-vae 1e9 --vae-crop 128 --dec-steps 1 "
            "--steps 2 --batch 2 --cache 8 --minutes 1e9"),
]
# what differs between two identical runs: the time they took
TIMED = {"seconds", "decoder_seconds"}
CLOCK = re.compile(r"^\d\d:\d\d:\d\d |[\d.]+ (min|img/s|s\))|[\d.]+ steps/s")


def train(code, folder):
    """Runs RECIPE with code/train.py inside folder."""
    for out, args in RECIPE:
        cmd = [sys.executable, os.path.join(code, "train.py"), "--preset", "small",
               "--threads", "1", "--seed", "3", "--out", out] + args.split()
        print("  " + " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, cwd=folder, check=True, stdout=subprocess.DEVNULL)


def differences(a, b, where):
    """Where a and b (checkpoint contents) differ, bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
            a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a if k not in TIMED for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and type(a) is type(b) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if hasattr(a, "__dict__") and type(a) is type(b):  # scenes.Scenes of the latent cache
        return differences(vars(a), vars(b), where)
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def files(folder):
    """The files under folder, relative to it; checkpoint parts as one name."""
    names = {os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**", "*"),
                                                           recursive=True) if os.path.isfile(p)}
    return sorted({n.split(".part")[0] for n in names})


def contents(path):
    """A file's contents to compare: log lines without clock times and
    durations, the text of a JSON file, a checkpoint (its parts joined)."""
    if path.endswith(".txt"):
        return [CLOCK.sub("", line) for line in open(path)]
    if path.endswith(".json"):
        return open(path).read()
    if not os.path.exists(path):  # parts: unet.pt.part00, ...
        path = io.BytesIO(b"".join(open(p, "rb").read()
                                   for p in sorted(glob.glob(path + ".part*"))))
    return torch.load(path, map_location="cpu", weights_only=False)


def compare(ref, new):
    """Every difference between the files the two runs wrote."""
    names = files(ref)
    if names != files(new):
        return [f"files: {names} != {files(new)}"]
    return [d for name in names for d in differences(contents(os.path.join(ref, name)),
                                                     contents(os.path.join(new, name)), name)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="HEAD", help="git revision to compare with")
    ap.add_argument("--keep", default="", help="leave both runs in this folder")
    a = ap.parse_args()
    tmp = a.keep or tempfile.mkdtemp(prefix="same_run.")
    ref_code = os.path.join(tmp, "ref-code")
    os.makedirs(ref_code, exist_ok=True)
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, check=True,
                         capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", a.ref, "models/train"], cwd=top, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "--strip-components=2", "-C", ref_code], input=archive,
                   check=True)
    runs = {}
    for label, code in (("ref", ref_code), ("new", HERE)):
        runs[label] = os.path.join(tmp, label)
        shutil.rmtree(runs[label], ignore_errors=True)
        os.makedirs(runs[label])
        print(f"{label}: train.py of {a.ref if label == 'ref' else 'the working tree'}")
        train(code, runs[label])
    diffs = compare(runs["ref"], runs["new"])
    for d in diffs[:20]:
        print("differs: " + d)
    if not a.keep:
        shutil.rmtree(tmp)
    print("same run" if not diffs else f"{len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
