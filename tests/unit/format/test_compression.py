"""zlib objects: hash over stored bytes, bounded inflation, named integrity errors."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.errors import DecompressionError, HashMismatchError, SizeMismatchError
from pycvmfs.format.compression import Compression, Inflater, make_object, open_object
from pycvmfs.format.hashes import Algorithm


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


def test_zlib_bomb_is_bounded() -> None:
    bomb = zlib.compress(b"\0" * (64 << 20))
    inflater = Inflater(Compression.ZLIB, max_output=1 << 20)
    with pytest.raises(DecompressionError, match="beyond"):
        inflater.decode(bomb)


@pytest.mark.parametrize("stored", [zlib.compress(b"abc")[:-3], b"not zlib at all",
                                    zlib.compress(b"abc") + b"junk"])
def test_truncated_garbage_trailing(stored: bytes) -> None:
    inflater = Inflater(Compression.ZLIB, max_output=100)
    with pytest.raises(DecompressionError):
        inflater.decode(stored)
        inflater.flush()


def test_compression_names() -> None:
    assert Compression.from_name("none") is Compression.NONE
    with pytest.raises(ValueError):
        Compression.from_name("zstd")
