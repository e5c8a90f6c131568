#!/usr/bin/python3
"""make_lora.py: a random LoRA of real size for a single-file checkpoint, for
measuring what a LoRA costs (make bench-sd15 LORA=1, or by hand):

    /usr/bin/python3 tests/bench/make_lora.py MODEL.safetensors RANK OUT.safetensors

kohya/A1111 names from the checkpoint's own (lora_unet_input_blocks_1_1_...,
lora_te_text_model_...), float16 factors, alpha = rank: every attention
projection, proj_in/out and feed-forward of the UNet and every projection of
the text encoder, as a typical kohya LoRA of that rank. Needs python3-numpy.
"""
import json
import struct
import sys

import numpy as np

TARGETS = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight", ".proj_in.weight",
           ".proj_out.weight", ".ff.net.0.proj.weight", ".ff.net.2.weight", ".q_proj.weight",
           ".k_proj.weight", ".v_proj.weight", ".out_proj.weight", ".fc1.weight", ".fc2.weight")
PREFIXES = (("model.diffusion_model.", "lora_unet_"), ("cond_stage_model.transformer.", "lora_te_"))


def main():
    model, rank, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(model, "rb") as f:
        n, = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    rng = np.random.default_rng(0)
    tensors = {}
    for name, info in sorted(header.items()):
        if name == "__metadata__" or not name.endswith(TARGETS):
            continue
        for src, dst in PREFIXES:
            if name.startswith(src):
                key = dst + name[len(src):-len(".weight")].replace(".", "_")
                shape = info["shape"]
                n_in = int(np.prod(shape[1:]))
                down = rng.standard_normal((rank, n_in), dtype=np.float32) * 0.01
                up = rng.standard_normal((shape[0], rank), dtype=np.float32) * 0.01
                tensors[key + ".lora_down.weight"] = down.reshape([rank] + shape[1:]).astype(np.float16)
                tensors[key + ".lora_up.weight"] = up.reshape([shape[0], rank] + [1] * (len(shape) - 2)).astype(np.float16)
                tensors[key + ".alpha"] = np.array(rank, dtype=np.float32).reshape(())
    head, offset = {}, 0
    for k, v in tensors.items():
        head[k] = {"dtype": "F16" if v.dtype == np.float16 else "F32", "shape": list(v.shape),
                   "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    text = json.dumps(head).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for v in tensors.values():
            f.write(v.tobytes())
    print("%s: %d modules, rank %d, %.1f MB" % (out, len(tensors) // 3, rank, offset / 1e6))


if __name__ == "__main__":
    main()
