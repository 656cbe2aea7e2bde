"""Sinks: hash over compressed bytes, byte budgets cut at once, bounded inflation steps,
verify-before-inflate for objects of unknown size, size check; MemorySink budget."""

from __future__ import annotations

import errno
import itertools
import zlib
from collections.abc import Iterator

import pytest

from pycvmfs.errors import (
    BudgetExceededError,
    CacheFullError,
    DecompressionError,
    HashMismatchError,
    SizeMismatchError,
)
from pycvmfs.format.compression import (
    INFLATE_STEP_BYTES,
    Compression,
    make_object,
    stored_size_bound,
)
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.network.sink import (
    SPOOL_IN_MEMORY_BYTES,
    MemoryDestination,
    MemorySink,
    TempFileDestination,
    VerifyingSink,
)
from tests.zlib_bomb import zlib_bomb

DATA = b"hello cvmfs\n" * 5000
MIB = 1 << 20


def feed(sink: VerifyingSink | MemorySink, stored: bytes, block: int = 1000) -> None:
    for i in range(0, len(stored), block):
        sink.write(stored[i : i + block])


class Recorder(MemoryDestination):
    """Remembers the size of every write (the inflation steps)."""

    def __init__(self) -> None:
        super().__init__(4 << 30)
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)

    def reset(self) -> None:
        self.writes.clear()
        super().reset()


class CountingDestination:
    """Counts bytes without keeping them (a 1 GiB bomb must not need 1 GiB here)."""

    def __init__(self) -> None:
        self.size = 0
        self.largest = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.largest = max(self.largest, len(data))

    def reset(self) -> None:
        self.size = self.largest = 0


def test_streams_and_verifies_into_memory() -> None:
    digest, stored = make_object(DATA)
    out = MemoryDestination()
    sink = VerifyingSink(digest, Compression.ZLIB, out, expected_size=len(DATA))
    feed(sink, b"garbage")
    with pytest.raises(HashMismatchError, match=str(digest)):  # the transfer's fault
        sink.verify()
    sink.reset()
    feed(sink, stored)
    sink.verify()
    assert out.getvalue() == DATA and sink.compressed_bytes == len(stored)


def test_temp_file_destination() -> None:
    digest, stored = make_object(DATA, Algorithm.SHAKE128, Compression.NONE)
    with TempFileDestination() as out, VerifyingSink(digest, Compression.NONE, out) as sink:
        feed(sink, stored, 4096)
        sink.verify()
        assert out.read_all() == DATA and out.size == len(DATA) and out.fileno() >= 0
        assert b"".join(out.blocks(1000)) == DATA


def test_hash_mismatch() -> None:
    digest, stored = make_object(DATA)
    with VerifyingSink(digest, Compression.ZLIB, MemoryDestination()) as sink:
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


def test_inflating_past_the_catalog_size_stops_the_transfer() -> None:
    digest, stored = make_object(DATA)
    out = MemoryDestination()
    sink = VerifyingSink(digest, Compression.ZLIB, out, expected_size=1000)
    assert len(stored) < sink.budget  # within the budget, but it inflates to 60000 bytes
    feed(sink, stored)
    assert len(out) <= 1001  # inflation stopped at the size; the hash is still checked
    with pytest.raises(DecompressionError, match="beyond 1000 bytes"):
        sink.verify()


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("size", [0, 1, 186, 70_000])
def test_budget_of_a_data_object_is_its_stored_size_bound(compression: Compression,
                                                           size: int) -> None:
    digest, stored = make_object(DATA[:size], compression=compression)
    sink = VerifyingSink(digest, compression, MemoryDestination(), expected_size=size)
    assert sink.budget == stored_size_bound(size, compression) >= len(stored)
    if compression is Compression.NONE:
        assert sink.budget == size


def test_endless_body_is_cut_at_the_budget() -> None:
    """186 bytes in the catalog: the sink refuses the block that passes the budget, whatever
    follows (the 68 GB case of the issue)."""
    digest, stored = make_object(DATA[:186])
    sink = VerifyingSink(digest, Compression.ZLIB, MemoryDestination(), expected_size=186)
    endless: Iterator[bytes] = itertools.chain([stored], itertools.repeat(b"\0" * 100))
    consumed = 0
    with pytest.raises(BudgetExceededError, match=f"budget of {sink.budget} bytes"):
        for block in endless:
            consumed += len(block)
            sink.write(block)
    assert consumed <= sink.budget + 100


def test_memory_sink_budget() -> None:
    sink = MemorySink(10)
    assert sink.budget == 10
    sink.write(b"12345")
    with pytest.raises(BudgetExceededError, match="budget of 10 bytes"):
        sink.write(b"123456")
    sink.reset()
    assert len(sink) == 0 and sink.getvalue() == b""


def test_unsized_object_is_inflated_only_after_its_hash_matched() -> None:
    """A catalog (no size anywhere) arrives compressed into a spool; a bomb under a wrong
    hash is never inflated, so nothing reaches the destination."""
    bomb = zlib_bomb(64)
    out = CountingDestination()
    wrong = ContentHash.of(Algorithm.SHA1, b"the catalog the manifest names")
    with VerifyingSink(wrong, Compression.ZLIB, out, max_size=1 << 30) as sink:
        feed(sink, bomb, 1 << 16)
        assert out.size == 0
        with pytest.raises(HashMismatchError):
            sink.verify()
    assert out.size == 0


def test_bomb_with_matching_hash_fails_at_the_cap_in_bounded_steps() -> None:
    bomb = zlib_bomb(1024)  # 1 MB -> 1 GiB
    digest = ContentHash.of(Algorithm.SHA1, bomb)
    out = CountingDestination()
    with VerifyingSink(digest, Compression.ZLIB, out, max_size=16 * MIB,
                       hint="raise SOME_SETTING") as sink:
        assert sink.budget == stored_size_bound(16 * MIB, Compression.ZLIB)
        feed(sink, bomb, MIB)
        with pytest.raises(DecompressionError, match="beyond 16777216 bytes.*SOME_SETTING"):
            sink.verify()
    assert out.size <= 16 * MIB + 1 and out.largest <= INFLATE_STEP_BYTES


def test_sized_bomb_is_cut_at_the_object_size_in_bounded_steps() -> None:
    bomb = zlib_bomb(1024)
    out = CountingDestination()
    sink = VerifyingSink(ContentHash.of(Algorithm.SHA1, bomb), Compression.ZLIB, out,
                         expected_size=3 * MIB)
    sink.write(bomb)  # the whole 1 MB bomb in one block (its compressed size is in budget)
    assert out.size <= 3 * MIB + 1 and out.largest <= INFLATE_STEP_BYTES
    with pytest.raises(DecompressionError, match="beyond"):
        sink.verify()


@pytest.mark.parametrize("max_size", [SPOOL_IN_MEMORY_BYTES // 2, 4 * SPOOL_IN_MEMORY_BYTES])
def test_spool_in_memory_or_on_disk_verifies_the_same(max_size: int) -> None:
    digest, stored = make_object(DATA)
    out = Recorder()
    with VerifyingSink(digest, Compression.ZLIB, out, max_size=max_size) as sink:
        feed(sink, stored)
        assert out.getvalue() == b""
        sink.verify()
    assert out.getvalue() == DATA


def test_budget_counts_from_each_reset() -> None:
    digest, stored = make_object(DATA)
    sink = VerifyingSink(digest, Compression.ZLIB, MemoryDestination(), expected_size=len(DATA))
    for _ in range(3):  # three attempts, each within the budget on its own
        sink.reset()
        feed(sink, stored)
    sink.verify()


def test_corrupt_zlib_under_a_matching_hash_is_refused() -> None:
    stored = b"not zlib at all" * 100
    digest = ContentHash.of(Algorithm.SHA1, stored)
    with VerifyingSink(digest, Compression.ZLIB, MemoryDestination()) as sink:
        feed(sink, stored, 100)  # unsized: spooled, judged after the hash
        with pytest.raises(DecompressionError, match="corrupt zlib stream"):
            sink.verify()
    out = MemoryDestination()
    sized = VerifyingSink(digest, Compression.ZLIB, out, expected_size=1500)
    feed(sized, stored, 100)  # later blocks are still hashed and counted, not inflated
    assert sized.compressed_bytes == len(stored) and len(out) == 0
    with pytest.raises(DecompressionError, match="corrupt zlib stream"):
        sized.verify()


def test_trailing_bytes_after_the_stream_are_refused() -> None:
    stored = zlib.compress(DATA) + b"junk"
    digest = ContentHash.of(Algorithm.SHA1, stored)
    sink = VerifyingSink(digest, Compression.ZLIB, MemoryDestination(), expected_size=len(DATA))
    feed(sink, stored)
    with pytest.raises(DecompressionError, match="trailing"):
        sink.verify()


def test_a_full_local_disk_is_a_named_error_not_an_oserror(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """An OSError from a destination would be taken for the host's fault by the transport."""
    with TempFileDestination() as out:
        def full(data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(out._file, "write", full)
        with pytest.raises(CacheFullError, match="no space for a temporary file in"):
            out.write(b"x")
