"""philox_reference.py: AUTOMATIC1111's "NV" generator, for recording only.

An independent numpy transcription of the algorithm of AUTOMATIC1111
stable-diffusion-webui's modules/rng_philox.py (Generator(seed).randn(shape)),
written from a reading of that file to record expected values into
tests/fixtures/rng_known_answers.txt (tests/tools/record_rng.py). It is not
shipped and nothing at run time needs it: engine/rng.c is the implementation,
tests/test_rng.c checks it against what this records.

The algorithm:
  * Philox4x32-10 (Salmon et al. 2011) in Random123's word order, counter
    (offset, 0, i, 0) for value i of the generator's offset-th randn call,
    key (low 32 bits of the seed, high 32 bits);
  * value i = sqrt(-2 ln u) sin v with u = x 2^-32 + 2^-33, v = y 2pi 2^-32 +
    pi 2^-32 from the first two output words x, y (the other two unused).
A1111 stores 2^-32 and 2pi 2^-32 as float32 arrays, but numpy promotes a
uint32 array times a float32 array to float64, so u, v, the log, sqrt and sin
are all float64 and the result is rounded to float32 once. This file writes
those float64 steps out explicitly.

Run directly, it checks itself against Random123's published known answers and
the expected output in rng_philox.py's docstring.
"""

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # round multipliers
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)  # key increments
LOW32 = np.uint64(0xFFFFFFFF)
SHIFT = np.uint64(32)

INV32 = np.float64(np.float32(2.3283064e-10))  # float32(2^-32), widened
INV32_2PI = np.float64(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32_10(ctr, key):
    """ctr: four uint32 arrays (or scalars), key: two; returns four uint32 arrays."""
    c = [np.asarray(w, dtype=np.uint64) for w in ctr]
    k = [np.asarray(w, dtype=np.uint64) for w in key]
    for rnd in range(10):
        if rnd:
            k = [(k[0] + W0) & LOW32, (k[1] + W1) & LOW32]
        p0 = c[0] * M0  # 32 x 32 -> 64 bits, never overflows uint64
        p1 = c[2] * M1
        c = [(p1 >> SHIFT) ^ c[1] ^ k[0], p1 & LOW32, (p0 >> SHIFT) ^ c[3] ^ k[1], p0 & LOW32]
    return [w.astype(np.uint32) for w in c]


def box_muller(x, y):
    """The first Box-Muller value of uint32 draws x, y, in float64, rounded to float32."""
    u = x.astype(np.float64) * INV32 + INV32 / 2
    v = y.astype(np.float64) * INV32_2PI + INV32_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class Generator:
    """Generator(seed).randn(n): one A1111 randn call of n values per call."""

    def __init__(self, seed):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, n):
        i = np.arange(n, dtype=np.uint64)
        zero = np.zeros(n, dtype=np.uint64)
        ctr = [zero + np.uint64(self.offset), zero, i, zero]
        key = [np.uint64(self.seed & 0xFFFFFFFF), np.uint64(self.seed >> 32)]
        self.offset += 1
        x, y, _, _ = philox4x32_10(ctr, key)
        return box_muller(x, y)


# Random123's kat_vectors, "philox4x32 10": counter, key, expected output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# rng_philox.py's docstring: Generator(seed=0).randn(shape=(3, 4)).
DOCSTRING_SEED0 = [-0.92466259, -0.42534415, -2.6438457, 0.14518388,
                   -0.12086647, -0.57972564, -0.62285122, -0.32838709,
                   -1.07454231, -0.36314407, -1.67105067, 2.26550497]


def self_test():
    for ctr, key, want in KAT:
        got = tuple(int(w) for w in philox4x32_10(ctr, key))
        assert got == want, (ctr, key, [hex(w) for w in got])
    got = Generator(0).randn(12)
    # the docstring's numbers are not exactly what rng_philox.py's own code
    # returns (they look like torch's CUDA draws, float math): within 3e-7
    assert np.allclose(got, DOCSTRING_SEED0, rtol=0, atol=5e-7), got
    print("philox_reference: Random123 known answers and A1111's docstring agree")


if __name__ == "__main__":
    self_test()
