#!/usr/bin/env python3
"""Seeds for tests/fuzz/fuzz_weights from the reference checkpoints (single
files, and the SD 1.x diffusers folder): one line per tensor,
"NAME DTYPE D0 D1 ...", the CLIP token embeddings cut to 1,024 rows
(the harness's tiny vocabulary has 514 ids) so that each model stays small.
Python 3 standard library only; run from the repository root:
    python3 tests/fuzz/make_seeds.py ../shared/reference [build/fixtures]
"""
import json
import os
import struct
import sys


def lines(path):
    with open(path, "rb") as f:
        n, = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    out = []
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        shape = list(t["shape"])
        if name.endswith("token_embedding.weight"):
            shape[0] = min(shape[0], 1024)
        out.append("%s %s %s\n" % (name, t["dtype"], " ".join(map(str, shape))))
    return "".join(out)


def folder_lines(folder):
    """A diffusers folder as fuzz_weights reads one: "diffusers", then PART/NAME lines."""
    out = ["diffusers\n"]
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for fname in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
            path = os.path.join(folder, part, fname)
            if os.path.exists(path):
                out += [part + "/" + line for line in lines(path).splitlines(True)]
                break
    return "".join(out)


def main():
    ref = sys.argv[1]
    fixtures = sys.argv[2] if len(sys.argv) > 2 else "build/fixtures"
    seeds = {
        "sd1-ldm": os.path.join(ref, "sd1-tiny/model-ldm-fp16.safetensors"),
        "sdxl-ldm": os.path.join(ref, "sdxl-tiny/model-ldm-fp16.safetensors"),
        "taesd-decoder": os.path.join(ref, "taesd/taesd_decoder.safetensors"),
        "sd2-ldm": os.path.join(fixtures, "sd2-tiny-ldm.safetensors"),
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuzz_weights")
    os.makedirs(out, exist_ok=True)
    for name, path in seeds.items():
        with open(os.path.join(out, name), "w") as f:
            f.write(lines(path))
        print("wrote", os.path.join(out, name))
    with open(os.path.join(out, "sd1-diffusers"), "w") as f:
        f.write(folder_lines(os.path.join(ref, "sd1-tiny/model-diffusers")))
    print("wrote", os.path.join(out, "sd1-diffusers"))


if __name__ == "__main__":
    main()
