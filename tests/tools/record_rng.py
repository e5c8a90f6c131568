"""record_rng.py: records tests/fixtures/rng_known_answers.txt.

Run from the repository root with Debian's python3 (python3-torch 1.13,
python3-numpy):

    /usr/bin/python3 tests/tools/record_rng.py

For every case it seeds one generator and makes the listed randn calls in
order, as a sampler does (initial noise, then one call per ancestral step):
  torch-cpu  torch.randn(n, generator=torch.Generator().manual_seed(seed)),
             float32 on the CPU (the real generator);
  philox     AUTOMATIC1111's rng_philox.Generator(seed).randn((n,)), from the
             transcription in tests/tools/philox_reference.py.
tests/test_rng.c replays the calls through engine/rng.c and compares; it needs
neither python nor torch.

File format (whitespace-separated tokens, '#' starts a comment line):
  gen KIND SEED          a fresh generator
  randn N                one call of N values, followed by either
    values V1 .. VN      all N values, or
    sample K I1 V1 .. IK VK sum S
                         K of them by index, and the float64 sum of all N.
Values are float32 written with the fewest digits that read back exactly.
"""

import math
import os
import re
import subprocess
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import philox_reference  # noqa: E402

OUT = "tests/fixtures/rng_known_answers.txt"
LARGE_SEED = 0x9E3779B97F4A7C15  # a 64-bit seed: torch keeps its low 32 bits
SEEDS = [0, 1, 42, 2**32 + 5, 4294967295, LARGE_SEED]
SIZES = [1, 4, 15, 16, 17, 31, 100]  # one fresh generator each, every seed
LATENT_8 = 4 * 8 * 8  # a 64x64 image's latent
LATENT_64 = 4 * 64 * 64  # a 512x512 image's latent, sampled
FULL_LIMIT = 300  # calls up to this size are written whole

# (seeds, calls): calls on one generator
CASES = [([s], [n]) for s in SEEDS for n in SIZES]
CASES += [([0, 42, LARGE_SEED], [LATENT_8])]
CASES += [(SEEDS, [LATENT_64])]
CASES += [
    # ancestral sampler: initial noise, two steps' noise, a 17-value tail
    ([42, 2**32 + 5], [LATENT_8, LATENT_8, 17]),
    # torch's cached second normal of small calls survives a large call
    ([42, 7], [3, 16, 1, 5, 1]),
    # a batch of two 4x8x8 latents drawn in one call (diffusers' order)
    ([42], [2 * LATENT_8]),
]


def fmt(v):
    s = repr(float(np.float32(v)))  # shortest double repr; may carry extra digits
    r = np.format_float_positional(np.float32(v), unique=True, trim="-")
    t = np.format_float_scientific(np.float32(v), unique=True, trim="-")
    best = min((s, r, t), key=len)
    assert np.float32(float(best)) == np.float32(v), (v, best)
    return best


def sample_indices(n):
    spread = [n * k // 32 for k in range(32)]
    return sorted(set(list(range(16)) + spread + list(range(n - 16, n))))


def write_call(out, n, x):
    out.append("randn %d" % n)
    if n <= FULL_LIMIT:
        vals = [fmt(v) for v in x]
        out.append("values")
        for i in range(0, n, 8):
            out.append("  " + " ".join(vals[i:i + 8]))
        return
    idx = sample_indices(n)
    out.append("sample %d" % len(idx))
    for i in range(0, len(idx), 6):
        out.append("  " + " ".join("%d %s" % (j, fmt(x[j])) for j in idx[i:i + 6]))
    out.append("sum %.17g" % math.fsum(float(v) for v in x))


def torch_draws(seed, calls):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float32).numpy() for n in calls]


def philox_draws(seed, calls):
    g = philox_reference.Generator(seed)
    return [g.randn(n) for n in calls]


def debian_version(package):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, text=True, check=True)
        return "Debian %s %s, " % (package, out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return ""


def header():
    cap = re.search(r"CPU capability usage: (\S+)", torch.__config__.show())
    return [
        "# rng_known_answers.txt: recorded draws of the generators of engine/rng.c.",
        "# Written by tests/tools/record_rng.py (format described there); do not edit.",
        "# torch-cpu: %storch %s, CPU capability %s, torch.randn float32 on the CPU."
        % (debian_version("python3-torch"), torch.__version__, cap.group(1) if cap else "unknown"),
        "# philox: tests/tools/philox_reference.py (AUTOMATIC1111's rng_philox.py),"
        " numpy %s." % np.__version__,
    ]


def main():
    philox_reference.self_test()
    out = header()
    for kind, draw in (("torch-cpu", torch_draws), ("philox", philox_draws)):
        out.append("")
        out.append("# ---- %s" % kind)
        for seeds, calls in CASES:
            for seed in seeds:
                out.append("gen %s %d" % (kind, seed))
                for n, x in zip(calls, draw(seed, calls)):
                    assert x.dtype == np.float32 and x.shape == (n,)
                    write_call(out, n, x)
    with open(OUT, "w") as f:
        f.write("\n".join(out) + "\n")
    print("wrote %s (%d bytes)" % (OUT, os.path.getsize(OUT)))


if __name__ == "__main__":
    main()
