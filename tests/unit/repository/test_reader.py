"""`repository.reader`: pieces, the read-ahead policy and `OpenFile` against a loader that
keeps objects as plain files (no network, no cache, no mount)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from pycvmfs.errors import CatalogError, FetchError, IntegrityError, PycvmfsError
from pycvmfs.format.catalog import DirEntry, Flags
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.repository import reader
from pycvmfs.repository.reader import OpenFile, Piece, Prefetcher, read_ahead, read_pieces

CHUNK = 1000


class LocalObject:
    """What `ObjectLoader.open` gives: a cache file read by `pread`."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def fileno(self) -> int:
        return self.file.fileno()

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.file.fileno(), size, offset)

    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size

    def close(self) -> None:
        self.file.close()


class FileLoader:
    """Objects as files in a directory; a list of faults to play, one per `open`."""

    def __init__(self, directory: Path, objects: dict[ContentHash, bytes]) -> None:
        self.directory, self.objects = directory, objects
        self.faults: list[str] = []  # "short": a truncated copy; "fail": FetchError
        self.opened: list[ContentHash] = []
        self.discarded: list[ContentHash] = []
        self.prefetched: list[ContentHash] = []
        self.remote: set[ContentHash] = set()  # not in the cache: opened only to download
        self.lock = threading.Lock()

    def open(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
             compression: Compression, expected_size: int,
             download: bool = True) -> LocalObject | None:
        with self.lock:
            if not download and content_hash in self.remote:
                return None
            self.opened.append(content_hash)
            fault = self.faults.pop(0) if self.faults else ""
        if fault == "fail":
            raise FetchError(f"{what}: every source failed")
        data = self.objects[content_hash]
        path = self.directory / f"{content_hash}-{len(self.opened)}"
        path.write_bytes(data[:-1] if fault == "short" else data)
        return LocalObject(open(path, "rb"))

    def discard(self, content_hash: ContentHash) -> None:
        self.discarded.append(content_hash)

    def prefetch(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
                 compression: Compression, expected_size: int) -> None:
        with self.lock:
            self.prefetched.append(content_hash)


def chunked(data: bytes) -> tuple[DirEntry, list[Piece], dict[ContentHash, bytes]]:
    pieces, objects = [], {}
    for offset in range(0, len(data), CHUNK):
        part = data[offset:offset + CHUNK]
        digest = ContentHash.of(Algorithm.SHA1, part)
        pieces.append(Piece(offset, len(part), digest, Suffix.PARTIAL))
        objects[digest] = part
    entry = DirEntry("f", stat.S_IFREG | 0o644, len(data), 0, int(Flags.FILE | Flags.CHUNKED))
    return entry, pieces, objects


DATA = bytes(range(256)) * 20  # 5,120 bytes: six chunks


@pytest.fixture
def opened(tmp_path: Path) -> tuple[OpenFile, FileLoader]:
    entry, pieces, objects = chunked(DATA)
    loader = FileLoader(tmp_path, objects)
    return OpenFile("/f", entry, pieces, loader), loader  # type: ignore[arg-type]


def test_reads_any_range_across_chunks(opened: tuple[OpenFile, FileLoader]) -> None:
    file, _ = opened
    for offset, size in [(0, 10), (990, 20), (0, len(DATA)), (4_999, 500), (5_120, 10)]:
        assert file.read(offset, size) == DATA[offset:offset + size]
    file.close()


def test_a_short_cache_file_is_discarded_and_fetched_again(
        opened: tuple[OpenFile, FileLoader]) -> None:
    file, loader = opened
    loader.faults = ["short"]  # the first copy has the wrong size
    assert file.read(0, 100) == DATA[:100]
    assert loader.discarded == [file.pieces[0].hash]
    loader.faults = ["short", "short"]
    with pytest.raises(IntegrityError, match="wrong size"):
        file.read(CHUNK, 10)
    file.close()


def test_a_failed_piece_answers_the_same_error_for_a_while(
        opened: tuple[OpenFile, FileLoader], monkeypatch: pytest.MonkeyPatch) -> None:
    file, loader = opened
    loader.faults = ["fail"]
    for _ in range(2):  # read-ahead, then the read: one attempt
        with pytest.raises(FetchError):
            file.read(0, 10)
    assert loader.opened == [file.pieces[0].hash]
    monkeypatch.setattr(reader, "FAILURE_MEMORY_S", 0.0)
    assert file.read(0, 10) == DATA[:10]  # after the memory, tried again
    file.close()


def test_read_nowait_answers_from_the_cache_and_never_downloads(
        opened: tuple[OpenFile, FileLoader]) -> None:
    file, loader = opened
    loader.remote = {piece.hash for piece in file.pieces}
    with pytest.raises(reader.WouldBlockError):
        file.read_nowait(0, 10)
    assert loader.opened == []  # it never downloads
    assert file.read(0, 10) == DATA[:10]  # the path that may wait fetches it
    assert file.read_nowait(5, 10) == DATA[5:15]  # open now: answered at once
    loader.remote = set()  # in the cache, not open yet: opened and read without waiting
    assert file.read_nowait(len(DATA) - 10, 10) == DATA[-10:]
    file.close()


def test_send_local_hands_out_a_range_inside_one_cached_object(
        opened: tuple[OpenFile, FileLoader]) -> None:
    file, loader = opened
    sent: list[bytes] = []

    def send(fd: int, position: int, length: int) -> None:
        sent.append(os.pread(fd, length, position))

    assert file.send_local(1_010, 50, send)  # inside the second chunk
    assert file.send_local(5_100, 100, send)  # clipped at the end of the file
    assert sent == [DATA[1_010:1_060], DATA[5_100:]]
    assert not file.send_local(990, 20, send)  # two chunks: `read` answers
    assert not file.send_local(len(DATA), 10, send)  # past the end
    loader.remote = {file.pieces[3].hash}
    with pytest.raises(reader.WouldBlockError):  # must be downloaded: only `read`
        file.send_local(3_500, 10, send)
    assert loader.opened == [file.pieces[1].hash, file.pieces[5].hash]
    assert len(sent) == 2
    file.close()


def test_at_most_a_few_objects_stay_open(opened: tuple[OpenFile, FileLoader]) -> None:
    file, loader = opened
    assert file.read(0, len(DATA)) == DATA
    assert len(file._slots) <= reader.OPEN_PIECES_PER_HANDLE
    file.close()
    assert file._slots == {}


def test_a_lasting_file_closes_what_a_read_finished(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose closing nobody reports (FUSE no-open) keeps a cache file open only
    while a read has not reached the piece's end, and forgets a failure sooner."""
    monkeypatch.setattr(reader, "LASTING_FAILURE_MEMORY_S", 0.3)  # 1 s in real life
    entry, pieces, objects = chunked(DATA)
    loader = FileLoader(tmp_path, objects)
    file = OpenFile("/f", entry, pieces, loader, lasting=True)  # type: ignore[arg-type]
    sent: list[bytes] = []
    assert file.read(0, 100) == DATA[:100]
    assert list(file._slots) == [0]  # mid-piece: kept for the next read
    assert file.read(100, CHUNK - 100) == DATA[100:CHUNK]
    assert file._slots == {}  # read to its end: closed, the cache may evict it
    assert file.send_local(CHUNK, CHUNK, lambda fd, pos, n: sent.append(os.pread(fd, n, pos)))
    assert sent == [DATA[CHUNK:2 * CHUNK]] and file._slots == {}
    loader.faults = ["fail"]
    with pytest.raises(FetchError):
        file.read(2 * CHUNK, 10)
    with pytest.raises(FetchError):  # the kernel's second ask: remembered
        file.read(2 * CHUNK, 10)
    time.sleep(reader.LASTING_FAILURE_MEMORY_S)
    assert file.read(2 * CHUNK, 10) == DATA[2 * CHUNK:2 * CHUNK + 10]
    file.close()


def test_read_ahead_fetches_the_next_chunks_once(tmp_path: Path) -> None:
    entry, pieces, objects = chunked(DATA)
    loader = FileLoader(tmp_path, objects)
    prefetcher = Prefetcher()
    try:
        file = OpenFile("/f", entry, pieces, loader, prefetcher)  # type: ignore[arg-type]
        file.read(0, 10)
        file.read(10, 10)
        deadline = time.monotonic() + 10
        while len(loader.prefetched) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        prefetcher.close()
    file.close()
    assert sorted(map(str, loader.prefetched)) == sorted(str(p.hash) for p in pieces[1:3])


def test_read_ahead_policy() -> None:
    assert read_ahead(0, 6, set()) == [1, 2]
    assert read_ahead(0, 6, {1}) == [2]
    assert read_ahead(4, 6, set()) == [5]
    assert read_ahead(5, 6, set()) == []
    assert read_ahead(0, 6, set(), depth=4) == [1, 2, 3, 4]


def test_read_pieces_loads_only_the_overlap() -> None:
    pieces = [Piece(0, 4, ContentHash.of(Algorithm.SHA1, b"a"), Suffix.PARTIAL),
              Piece(4, 4, ContentHash.of(Algorithm.SHA1, b"b"), Suffix.PARTIAL)]
    calls = []

    def load(index: int, start: int, stop: int) -> bytes:
        calls.append((index, start, stop))
        return b"abcdefgh"[4 * index + start:4 * index + stop]

    assert read_pieces(pieces, 2, 6, load) == b"cdef"
    assert calls == [(0, 2, 4), (1, 0, 2)]
    assert read_pieces(pieces, 6, 6, load) == b""


def test_tiling_is_checked() -> None:
    h = ContentHash.of(Algorithm.SHA1, b"x")
    with pytest.raises(CatalogError, match="expected 0"):
        reader._check_tiling("/f", 4, [Piece(1, 3, h, Suffix.PARTIAL)])
    with pytest.raises(CatalogError, match="catalog says 5"):
        reader._check_tiling("/f", 5, [Piece(0, 4, h, Suffix.PARTIAL)])
    reader._check_tiling("/f", 4, [Piece(0, 2, h, Suffix.PARTIAL), Piece(2, 2, h, Suffix.PARTIAL)])


def test_pieces_of_plain_empty_and_broken_entries() -> None:
    h = ContentHash.of(Algorithm.SHA1, b"x")
    plain = DirEntry("f", stat.S_IFREG | 0o644, 1, 0, int(Flags.FILE), content_hash=h)
    assert reader.file_pieces("/f", plain, None) == [  # type: ignore[arg-type]
        Piece(0, 1, h, Suffix.NONE)]
    empty = DirEntry("e", stat.S_IFREG | 0o644, 0, 0, int(Flags.FILE))
    assert reader.file_pieces("/e", empty, None) == []  # type: ignore[arg-type]
    hashless = DirEntry("h", stat.S_IFREG | 0o644, 3, 0, int(Flags.FILE))
    with pytest.raises(CatalogError, match="has no hash"):
        reader.file_pieces("/h", hashless, None)  # type: ignore[arg-type]
    directory = DirEntry("d", stat.S_IFDIR | 0o755, 4096, 0, int(Flags.DIR))
    with pytest.raises(PycvmfsError, match="not a regular file"):
        reader.file_pieces("/d", directory, None)  # type: ignore[arg-type]
