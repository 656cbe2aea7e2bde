"""VerifyingSink: hash over compressed bytes, capped inflation, size check; MemorySink bound."""

from __future__ import annotations

import zlib

import pytest

from pycvmfs.errors import (
    DecompressionError,
    HashMismatchError,
    IntegrityError,
    SizeMismatchError,
)
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.network.sink import MemoryDestination, MemorySink, TempFileDestination, VerifyingSink

DATA = b"hello cvmfs\n" * 5000


def feed(sink: VerifyingSink, stored: bytes, block: int = 1000) -> None:
    for i in range(0, len(stored), block):
        sink.write(stored[i : i + block])


def test_streams_and_verifies_into_memory() -> None:
    digest, stored = make_object(DATA)
    out = MemoryDestination()
    sink = VerifyingSink(digest, Compression.ZLIB, out, expected_size=len(DATA))
    feed(sink, b"garbage")
    sink.reset()
    feed(sink, stored)
    sink.verify()
    assert out.getvalue() == DATA and sink.compressed_bytes == len(stored)


def test_temp_file_destination() -> None:
    digest, stored = make_object(DATA, Algorithm.SHAKE128, Compression.NONE)
    with TempFileDestination() as out:
        sink = VerifyingSink(digest, Compression.NONE, out)
        feed(sink, stored, 4096)
        sink.verify()
        assert out.read_all() == DATA and out.size == len(DATA) and out.fileno() >= 0


def test_hash_mismatch() -> None:
    digest, stored = make_object(DATA)
    sink = VerifyingSink(digest, Compression.ZLIB, MemoryDestination())
    feed(sink, stored[:-1] + bytes([stored[-1] ^ 1]))
    with pytest.raises(HashMismatchError):
        sink.verify()


def test_size_mismatch() -> None:
    digest, stored = make_object(DATA)
    sink = VerifyingSink(digest, Compression.ZLIB, MemoryDestination(),
                         expected_size=len(DATA) + 1)
    feed(sink, stored)
    with pytest.raises(SizeMismatchError):
        sink.verify()


def test_bomb_is_capped_even_when_the_hash_matches() -> None:
    bomb = zlib.compress(b"\0" * (1 << 24))
    digest = ContentHash.of(Algorithm.SHA1, bomb)
    out = MemoryDestination()
    sink = VerifyingSink(digest, Compression.ZLIB, out, max_size=1 << 20)
    feed(sink, bomb, 1 << 16)
    with pytest.raises(DecompressionError):
        sink.verify()
    assert len(out) <= (1 << 20) + 1


def test_memory_sink_bound() -> None:
    sink = MemorySink(10)
    sink.write(b"12345")
    with pytest.raises(IntegrityError):
        sink.write(b"123456")
    sink.reset()
    assert len(sink) == 0 and sink.getvalue() == b""


def test_corrupt_stream_with_matching_hash_is_rejected_after_the_first_error() -> None:
    stored = b"not zlib at all" * 100
    digest = ContentHash.of(Algorithm.SHA1, stored)
    out = MemoryDestination()
    sink = VerifyingSink(digest, Compression.ZLIB, out)
    feed(sink, stored, 100)  # later blocks are still hashed and counted, not inflated
    assert sink.compressed_bytes == len(stored) and len(out) == 0
    with pytest.raises(DecompressionError):
        sink.verify()
