"""The bundle prefetcher with fakes: opening never waits, files come in listed order chunk
by chunk, the queue is bounded, every failure is counted and none escapes."""

from __future__ import annotations

import logging
import stat
import threading
import time

import pytest

from pycvmfs.errors import FetchError, NotFoundError
from pycvmfs.format.bundles import render_spec
from pycvmfs.format.catalog import DirEntry, Flags
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.repository import bundles as bundles_module
from pycvmfs.repository.bundles import BundlePrefetcher
from pycvmfs.repository.reader import Piece
from tests.waiting import wait_until


def _hash(n: int) -> ContentHash:
    return ContentHash(Algorithm.SHA1, bytes([n]) * 20)


class FakeRepository:
    """Files by path: entry and pieces; specs by path: bytes. Records every prefetch."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[DirEntry, list[Piece]]] = {}
        self.data: dict[str, bytes] = {}
        self.fetched: list[tuple[str, ContentHash, Suffix, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a prefetch started (and maybe waits at the gate)
        self.fail: set[ContentHash] = set()
        self.lock = threading.Lock()
        self.counter = 0

    def add(self, path: str, pieces: int = 1, size: int = 10, data: bytes = b"") -> None:
        self.counter += 1
        entry = DirEntry(path.rsplit("/", 1)[1], stat.S_IFREG | 0o644,
                         len(data) if data else size * pieces, 0, int(Flags.FILE),
                         compression=Compression.ZLIB)
        suffix = Suffix.PARTIAL if pieces > 1 else Suffix.NONE
        self.files[path] = (entry, [Piece(i * size, size, _hash(self.counter * 16 + i), suffix)
                                    for i in range(pieces)])
        if data:
            self.data[path] = data

    def resolve(self, path: str) -> tuple[DirEntry, list[Piece]]:
        if path not in self.files:
            raise NotFoundError(f"{path}: no such file")
        return self.files[path]

    def read(self, path: str) -> bytes:
        return self.data[path]

    def prefetch(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
                 compression: Compression, expected_size: int) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if content_hash in self.fail:
            raise FetchError(f"{what}: every source failed")
        with self.lock:
            self.fetched.append((what.split(" ")[0], content_hash, suffix, expected_size))


@pytest.fixture()
def repo() -> FakeRepository:
    r = FakeRepository()
    r.add("/lib/tool")
    r.add("/lib/dep1.so")
    r.add("/lib/sub/dep2.so")
    r.add("/big.bin", pieces=3, size=4)
    r.add("/lib/.cvmfsbundle-tool",
          data=render_spec(["dep1.so", "./sub/dep2.so", "/big.bin", "/gone"]))
    return r


def _prefetcher(repo: FakeRepository, **kw: object) -> BundlePrefetcher:
    return BundlePrefetcher(repo.resolve, repo.prefetch, repo.read, **kw)  # type: ignore[arg-type]


def test_prefetches_listed_files_chunk_by_chunk(repo: FakeRepository) -> None:
    p = _prefetcher(repo, pool_size=1)
    try:
        p.triggered("/lib/tool")
        wait_until(lambda: p.idle() and p.counters.failures == 1, 10, "the bundle")
        big = repo.files["/big.bin"][1]
        assert [f[0] for f in repo.fetched] == ["/lib/dep1.so", "/lib/sub/dep2.so",
                                                "/big.bin", "/big.bin", "/big.bin"]
        assert [f[1:] for f in repo.fetched[2:]] == [(c.hash, Suffix.PARTIAL, 4) for c in big]
        c = p.counters
        assert (c.triggered, c.files, c.objects, c.failures, c.dropped) == (1, 3, 5, 1, 0)
    finally:
        p.close()


def test_open_never_waits_for_downloads(repo: FakeRepository) -> None:
    repo.gate.clear()
    p = _prefetcher(repo, pool_size=2)
    try:
        started = time.monotonic()
        for _ in range(3):
            p.triggered("/lib/tool")
        assert time.monotonic() - started < 0.5
        assert repo.fetched == []
        repo.gate.set()
        wait_until(lambda: p.idle() and len(repo.fetched) == 5, 10, "the downloads")
        assert p.counters.repeated == 2 and p.counters.triggered == 1
    finally:
        repo.gate.set()
        p.close()


def test_full_queue_drops_and_counts(repo: FakeRepository) -> None:
    repo.gate.clear()
    p = _prefetcher(repo, pool_size=1, queue_size=2)
    try:
        p.triggered("/lib/tool")  # the worker takes it, queues 2 files, drops 2
        wait_until(lambda: p.counters.dropped == 2, 10, "two files dropped")
        assert repo.entered.wait(10)  # the worker holds the first file: one is queued
        for n in range(3):
            p.triggered(f"/other{n}")  # one fits, two are dropped
        assert p.counters.dropped == 4
    finally:
        repo.gate.set()
        p.close()


def test_failures_are_counted_and_warned_once(repo: FakeRepository,
                                              caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    repo.add("/bad", data=b"x")
    repo.add("/.cvmfsbundle-bad", data=b"{ not json")
    repo.fail.add(repo.files["/lib/dep1.so"][1][0].hash)
    p = _prefetcher(repo, pool_size=1, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger=bundles_module.__name__)
    try:
        p.triggered("/bad")
        p.triggered("/nospec")
        wait_until(lambda: p.idle() and p.counters.failures == 2, 10, "two failures")
        now[0] += bundles_module.REPEAT_S
        p.triggered("/bad")
        p.triggered("/lib/tool")
        wait_until(lambda: p.idle() and p.counters.failures == 5, 10, "five failures")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, warnings
        assert "bundle spec of /bad unusable: the spec is not JSON" in warnings[0]
        assert "bundle spec of /nospec unusable: /.cvmfsbundle-nospec: no such file" \
            in warnings[1]
        debug = "\n".join(r.getMessage() for r in caplog.records)
        assert "bundle file /lib/dep1.so (listed in /lib/.cvmfsbundle-tool) not prefetched: " \
               "/lib/dep1.so (bundle /lib/.cvmfsbundle-tool): every source failed" in debug
        assert "bundle file /gone" in debug
        assert p.counters.files == 2 and p.counters.triggered == 1
    finally:
        p.close()


def test_oversized_spec_is_not_read(repo: FakeRepository) -> None:
    repo.add("/huge", data=b"x")
    repo.add("/.cvmfsbundle-huge", size=bundles_module.MAX_SPEC_BYTES + 1)
    p = _prefetcher(repo, pool_size=1)
    try:
        p.triggered("/huge")
        wait_until(lambda: p.idle() and p.counters.failures == 1, 10, "the refusal")
        assert repo.fetched == []
    finally:
        p.close()


def test_close_stops_workers_promptly(repo: FakeRepository) -> None:
    p = _prefetcher(repo, pool_size=4)
    p.triggered("/lib/tool")
    wait_until(p.idle, 10, "the bundle")
    before = threading.active_count()
    started = time.monotonic()
    p.close()
    assert time.monotonic() - started < 1.0
    assert threading.active_count() == before - 4
    p.triggered("/lib/tool")  # after close: ignored, no thread started
    assert threading.active_count() == before - 4
    p.close()


def test_close_with_a_full_queue_and_a_busy_worker(repo: FakeRepository) -> None:
    repo.gate.clear()
    p = _prefetcher(repo, pool_size=2, queue_size=1)
    p.triggered("/lib/tool")
    p.triggered("/x")
    p.triggered("/y")
    releaser = threading.Timer(0.3, repo.gate.set)
    releaser.start()
    started = time.monotonic()
    p.close()
    releaser.join()
    assert time.monotonic() - started < bundles_module.STOP_WAIT_S
    assert not [t for t in threading.enumerate() if t.name.startswith("bundle-prefetch")]


def test_no_threads_until_a_trigger(repo: FakeRepository) -> None:
    before = threading.active_count()
    p = _prefetcher(repo)
    assert threading.active_count() == before
    p.close()
    with pytest.raises(ValueError):
        _prefetcher(repo, pool_size=0)


def test_a_chunked_trigger_comes_first_after_its_first_chunk(repo: FakeRepository) -> None:
    repo.add("/bin/python", pieces=4, size=4)
    repo.add("/bin/.cvmfsbundle-python", data=render_spec(["/lib/dep1.so"]))
    p = _prefetcher(repo, pool_size=1)
    try:
        p.triggered("/bin/python")
        wait_until(lambda: p.idle() and p.counters.files == 1, 10, "the bundle")
        chunks = [c.hash for c in repo.files["/bin/python"][1]]
        assert [f[1] for f in repo.fetched[:3]] == chunks[1:]  # the opener reads the first
        assert [f[0] for f in repo.fetched] == ["/bin/python"] * 3 + ["/lib/dep1.so"]
        assert (p.counters.objects, p.counters.files) == (4, 1)  # the trigger is not listed
    finally:
        p.close()


def test_a_big_files_chunks_are_fetched_side_by_side(repo: FakeRepository) -> None:
    repo.add("/huge.bin", pieces=3, size=4)
    repo.add("/.cvmfsbundle-huge.bin", data=render_spec(["/big.bin"]))
    inside = threading.Semaphore(0)
    original = repo.prefetch

    def counted(*args: object, **kw: object) -> None:
        inside.release()
        original(*args, **kw)  # type: ignore[arg-type]
    repo.prefetch = counted  # type: ignore[method-assign]
    repo.gate.clear()
    p = _prefetcher(repo, pool_size=4)
    try:
        p.triggered("/huge.bin")  # two chunks of the trigger, three of /big.bin
        for n in range(4):  # four workers in four downloads at once
            assert inside.acquire(timeout=10), f"only {n} downloads in flight"
        repo.gate.set()
        wait_until(lambda: p.idle() and p.counters.objects == 5, 10, "every chunk")
        assert p.counters.files == 1
    finally:
        repo.gate.set()
        p.close()


def test_a_failed_chunk_fails_its_file_once(repo: FakeRepository) -> None:
    big = repo.files["/big.bin"][1]
    repo.fail.add(big[0].hash)
    repo.gate.clear()
    p = _prefetcher(repo, pool_size=1)
    try:
        p.triggered("/lib/tool")
        wait_until(lambda: p.counters.triggered == 1, 10, "the expansion")
        repo.gate.set()
        wait_until(lambda: p.idle(), 10, "the bundle")
        fetched = [f[1] for f in repo.fetched]
        assert not {c.hash for c in big} & set(fetched)  # the rest skipped after the failure
        assert (p.counters.files, p.counters.failures) == (2, 2)  # /big.bin once, /gone
    finally:
        repo.gate.set()
        p.close()
