"""safetensors_io.py: read and write .safetensors files without the
safetensors package (not in Debian): u64 little-endian header length, a JSON
header of {name: {dtype, shape, data_offsets}}, then the raw tensors."""
import json
import struct

import numpy as np
import torch

_DTYPES = {torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16),
           torch.int32: ("I32", np.int32), torch.int64: ("I64", np.int64)}
_BY_NAME = {v[0]: v[1] for v in _DTYPES.values()}


def save(tensors, path, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        code, npt = _DTYPES[t.dtype]
        b = t.numpy().astype(npt, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    n, = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        arr = np.frombuffer(data[8 + n + a:8 + n + b], dtype=_BY_NAME[v["dtype"]])
        out[name] = torch.from_numpy(arr.copy()).reshape(v["shape"])
    return out
