"""zlib objects: hash over stored bytes, bounded inflation, named integrity errors."""

from __future__ import annotations

import os
import zlib
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from isal import isal_zlib

from pycvmfs.errors import DecompressionError, HashMismatchError, SizeMismatchError
from pycvmfs.format.compression import (
    INFLATE_STEP_BYTES,
    ISAL_ABOVE_BYTES,
    Compression,
    Inflater,
    inflate_module,
    make_object,
    open_object,
    stored_size_bound,
)
from pycvmfs.format.hashes import Algorithm
from tests.zlib_bomb import zlib_bomb

INFLATING = [pytest.param(zlib, id="zlib"), pytest.param(isal_zlib, id="isal")]


def test_isal_inflates_what_may_be_big_when_installed() -> None:
    assert inflate_module() is isal_zlib
    assert Inflater(Compression.ZLIB, ISAL_ABOVE_BYTES + 1).module is isal_zlib
    assert Inflater(Compression.ZLIB, ISAL_ABOVE_BYTES).module is zlib  # a certificate
    assert Inflater(Compression.NONE, ISAL_ABOVE_BYTES + 1).module is None  # nothing to load


def test_reference_vectors() -> None:
    h, stored = make_object(b"")
    assert stored == bytes.fromhex("789c030000000001")
    assert str(h) == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
    assert str(make_object(b"foo\n")[0]) == "d85ab7e835750785b0535d4fbba7d59e921b1f48"


@given(st.binary(max_size=5000), st.sampled_from(list(Compression)),
       st.sampled_from([Algorithm.SHA1, Algorithm.SHAKE128, Algorithm.RIPEMD160]))
def test_round_trip(data: bytes, compression: Compression, algorithm: Algorithm) -> None:
    h, stored = make_object(data, algorithm, compression)
    assert open_object(stored, h, compression, expected_size=len(data)) == data


def test_corrupt_stored_bytes() -> None:
    h, stored = make_object(b"hello world" * 10)
    bad = bytes([stored[0]]) + bytes([stored[1] ^ 1]) + stored[2:]
    with pytest.raises(HashMismatchError, match=str(h)):
        open_object(bad, h)


def test_size_mismatch() -> None:
    h, stored = make_object(b"12345")
    with pytest.raises(DecompressionError):  # inflating past the declared size stops early
        open_object(stored, h, expected_size=4)
    with pytest.raises(SizeMismatchError, match="catalog says 6"):
        open_object(stored, h, expected_size=6)


@pytest.mark.parametrize("module", INFLATING)
def test_zlib_bomb_is_bounded(module: ModuleType) -> None:
    bomb = zlib.compress(b"\0" * (64 << 20))
    inflater = Inflater(Compression.ZLIB, max_output=1 << 20, module=module)
    with pytest.raises(DecompressionError, match="beyond"):
        inflater.decode(bomb)


@pytest.mark.parametrize("stored", [zlib.compress(b"abc")[:-3], b"not zlib at all",
                                    zlib.compress(b"abc") + b"junk"])
@pytest.mark.parametrize("module", INFLATING)
def test_truncated_garbage_trailing(stored: bytes, module: ModuleType) -> None:
    inflater = Inflater(Compression.ZLIB, max_output=100, module=module)
    with pytest.raises(DecompressionError):
        inflater.decode(stored)
        inflater.flush()


def test_compression_names() -> None:
    assert Compression.from_name("none") is Compression.NONE
    with pytest.raises(ValueError):
        Compression.from_name("zstd")


@given(st.binary(max_size=70_000), st.integers(min_value=0, max_value=9))
def test_stored_size_bound_holds_for_every_level(data: bytes, level: int) -> None:
    assert len(zlib.compress(data, level)) <= stored_size_bound(len(data), Compression.ZLIB)
    assert stored_size_bound(len(data), Compression.NONE) == len(data)


def test_stored_size_bound_of_incompressible_data() -> None:
    data = os.urandom(1 << 20)
    for level in (0, 1, 6, 9):
        assert len(zlib.compress(data, level)) <= stored_size_bound(len(data), Compression.ZLIB)
    with pytest.raises(ValueError):
        stored_size_bound(-1, Compression.ZLIB)


def test_a_gibibyte_bomb_inflates_in_bounded_steps_and_fails_at_the_cap() -> None:
    """1 MB -> 1 GiB fed in one block: never more than one step out at a time; the cap
    (64 MiB here, to stay fast) ends it one byte past."""
    bomb = zlib_bomb(1024)
    inflater = Inflater(Compression.ZLIB, max_output=64 << 20)
    sizes: list[int] = []
    with pytest.raises(DecompressionError, match="beyond 67108864 bytes"):
        for piece in inflater.feed(bomb):
            sizes.append(len(piece))
    assert max(sizes) <= INFLATE_STEP_BYTES and sum(sizes) <= (64 << 20) + 1


@pytest.mark.parametrize("step", [1000, 1 << 16, INFLATE_STEP_BYTES])
def test_feed_steps_add_up_to_the_object(step: int) -> None:
    data = os.urandom(100_000) + bytes(3 << 20)
    for compression in Compression:
        _, stored = make_object(data, compression=compression)
        inflater = Inflater(compression, len(data), step=step)
        pieces = [p for i in range(0, len(stored), 4096)
                  for p in inflater.feed(stored[i:i + 4096])]
        inflater.finish()
        assert b"".join(pieces) == data and max(map(len, pieces)) <= step
        assert inflater.produced == len(data)


def test_feed_stops_one_byte_past_the_cap_with_tiny_steps() -> None:
    _, stored = make_object(bytes(10_000))
    inflater = Inflater(Compression.ZLIB, 5000, step=7)
    total = 0
    with pytest.raises(DecompressionError, match="beyond 5000"):
        for piece in inflater.feed(stored):
            assert len(piece) <= 7
            total += len(piece)
    assert total <= 5001


def _inflated(module: ModuleType, stored: bytes, limit: int, feed: int) -> bytes | str:
    """What an Inflater over `module` makes of `stored` fed in `feed`-byte blocks: the
    bytes, or "refused" (which check comes first, the cap or the stream's, may differ)."""
    inflater = Inflater(Compression.ZLIB, max_output=limit, step=4096, module=module)
    out = []
    try:
        for start in range(0, len(stored), feed):
            out.extend(inflater.feed(stored[start:start + feed]))
        inflater.finish()
    except DecompressionError:
        return "refused"
    return b"".join(out)


@given(st.binary(max_size=20_000), st.integers(min_value=0, max_value=9),
       st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
                max_size=3),
       st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=5000),
       st.integers(min_value=1, max_value=30_000))
def test_isal_and_zlib_agree(data: bytes, level: int, flips: list[tuple[int, int]], cut: int,
                             feed: int, limit: int) -> None:
    """ISA-L yields what zlib yields, and refuses what zlib refuses: flipped bytes, cut
    streams, output caps, any feeding."""
    stored = bytearray(zlib.compress(data, level))
    for where, mask in flips:
        stored[where % len(stored)] ^= mask
    stored = stored[:len(stored) - cut] if cut < len(stored) else stored
    expected = _inflated(zlib, bytes(stored), limit, feed)
    assert _inflated(isal_zlib, bytes(stored), limit, feed) == expected
