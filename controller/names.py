# SPDX-License-Identifier: GPL-2.0-only
"""Server names: normalisation and the keys of the domain rule map.

The data plane (bpf/domain_match.h) hashes a name right to left, so that after
each label it holds the hash of the suffix read so far. A rule for
``twimg.com`` is stored under the hash of ``twimg.com``; a name such as
``pbs.twimg.com`` reaches that same hash exactly when its scan crosses the dot
before ``twimg``, which is why ``nottwimg.com`` never matches. This module
computes the same keys for the controller; tests/test_domain_match.py checks
both sides against each other in the real kernel.
"""

import numpy

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MIX_SEED = 0x9E3779B97F4A7C15
MIX_MULT = 0xFF51AFD7ED558CCD
MASK64 = (1 << 64) - 1


def normalise(name: bytes) -> bytes:
    """Lower-case ASCII letters and drop one trailing dot, as the data plane does."""
    if name.endswith(b"."):
        name = name[:-1]
    return name.lower()


def name_hashes(name: bytes) -> tuple[int, int]:
    """The pair of 64-bit hashes of ``name``, read from its last byte to its first."""
    fnv, mix = FNV_OFFSET, MIX_SEED
    for byte in reversed(name):
        fnv = ((fnv ^ byte) * FNV_PRIME) & MASK64
        mix = ((mix ^ byte) * MIX_MULT) & MASK64
        mix ^= mix >> 29
    return fnv, mix


def name_hashes_many(names: list[bytes]) -> tuple["numpy.ndarray", "numpy.ndarray"]:
    """name_hashes() of many names at once: a policy may name a million.

    Hashing byte by byte in Python would take tens of seconds for that many
    names, so the names are hashed column by column with numpy, longest
    first: step j feeds the j-th byte from the right of every name that long.
    """
    count = len(names)
    lengths = numpy.fromiter((len(n) for n in names), dtype=numpy.int64, count=count)
    order = numpy.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    blob = numpy.frombuffer(b"".join(names), dtype=numpy.uint8)
    ends = numpy.cumsum(lengths)[order]            # one past each name's last byte
    fnv = numpy.full(count, FNV_OFFSET, dtype=numpy.uint64)
    mix = numpy.full(count, MIX_SEED, dtype=numpy.uint64)
    longest = int(sorted_lengths[0]) if count else 0
    with numpy.errstate(over="ignore"):            # multiplication wraps mod 2**64 on purpose
        for j in range(longest):
            active = int(numpy.searchsorted(-sorted_lengths, -j, side="left"))
            byte = blob[ends[:active] - 1 - j].astype(numpy.uint64)
            fnv[:active] = (fnv[:active] ^ byte) * numpy.uint64(FNV_PRIME)
            m = (mix[:active] ^ byte) * numpy.uint64(MIX_MULT)
            mix[:active] = m ^ (m >> numpy.uint64(29))
    fnv_out = numpy.empty_like(fnv)
    mix_out = numpy.empty_like(mix)
    fnv_out[order] = fnv
    mix_out[order] = mix
    return fnv_out, mix_out
