"""A valid zlib stream that inflates to `size` zero bytes, built in milliseconds.

Deflating 1 GiB costs seconds; instead one MiB of zeros is deflated after a full flush (which
resets the compressor, so every such MiB deflates to the same bytes) and that block is
repeated. The Adler-32 trailer of n zero bytes is (n mod 65521) << 16 | 1. A 1 GiB bomb is
about 1 MB. Used by the unit tests and the hostile HTTP rig.
"""

from __future__ import annotations

import functools
import struct
import zlib

MEBIBYTE = 1 << 20
ADLER_MODULUS = 65521


@functools.cache
def _blocks() -> tuple[bytes, bytes, bytes]:
    """(stream start + first MiB, each further MiB, final empty block without trailer)."""
    zeros = bytes(MEBIBYTE)
    deflate = zlib.compressobj(9)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    final = deflate.flush()[:-4]  # the trailer is recomputed for the real length
    return first, repeated, final


def zlib_bomb(mebibytes: int) -> bytes:
    """zlib stream of `mebibytes` MiB of zeros (at least 1)."""
    if mebibytes < 1:
        raise ValueError("a bomb has at least one MiB")
    first, repeated, final = _blocks()
    size = mebibytes * MEBIBYTE
    trailer = struct.pack(">I", ((size % ADLER_MODULUS) << 16) | 1)
    return first + repeated * (mebibytes - 1) + final + trailer
