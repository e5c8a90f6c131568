#!/usr/bin/env python3
"""retensor.py FILE NAME SHAPE|nan: rewrites the safetensors FILE in place with
tensor NAME made empty with SHAPE (a JSON list holding a 0), or its first value
made NaN. For the bad-input tests (tests/test_badinput.sh, tests/test_cli.sh);
the standard library only."""
import json, struct, sys
p, name, how = sys.argv[1:4]
d = bytearray(open(p, "rb").read())
n, = struct.unpack("<Q", d[:8])
h = json.loads(d[8:8 + n])
if how == "nan":
    assert h[name]["dtype"] == "F32", h[name]["dtype"]
    struct.pack_into("<f", d, 8 + n + h[name]["data_offsets"][0], float("nan"))
    open(p, "wb").write(d)
    sys.exit()
h.pop("__metadata__", None)
data, out, blobs, off = d[8 + n:], {}, [], 0
for k in sorted(h, key=lambda k: h[k]["data_offsets"][0]):
    v = h[k]
    b, shape = bytes(data[v["data_offsets"][0]:v["data_offsets"][1]]), v["shape"]
    if k == name:
        b, shape = b"", json.loads(how)
    out[k] = {"dtype": v["dtype"], "shape": shape, "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
t = json.dumps(out).encode()
t += b" " * (-len(t) % 8)
open(p, "wb").write(struct.pack("<Q", len(t)) + t + b"".join(blobs))
