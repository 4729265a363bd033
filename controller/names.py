"""Server names: normalisation and the keys of the domain rule map.

The data plane (bpf/domain_match.h) hashes a name right to left, so that after
each label it holds the hash of the suffix read so far. A rule for
``twimg.com`` is stored under the hash of ``twimg.com``; a name such as
``pbs.twimg.com`` reaches that same hash exactly when its scan crosses the dot
before ``twimg``, which is why ``nottwimg.com`` never matches. This module
computes the same keys for the controller; tests/test_domain_match.py checks
both sides against each other in the real kernel.
"""

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
