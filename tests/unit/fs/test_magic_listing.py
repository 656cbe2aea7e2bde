"""Which magic xattrs each entry lists (the reference's GetListString flavors, by
visibility), that every listed name answers, the hidden stats document, and the FUSE
latency histograms it carries."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.certificates import load_public_key
from pycvmfs.format.hashes import ContentHash
from pycvmfs.fs import magic_xattrs
from pycvmfs.fs.attributes import MountOptions
from pycvmfs.fs.magic_xattrs import ClientStats
from pycvmfs.fs.op_timing import BOUNDS_NS, ROW, OpTimings
from pycvmfs.fs.stats_document import FORMAT, STATS_XATTR
from pycvmfs.fs.vfs import ROOT_INODE, RepositoryVFS
from pycvmfs.repository.open import RevisionSelector, open_repository
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import LocalSource

ROOT = Path(__file__).resolve().parents[3]
FQRN = "demo.pycvmfs.org"
KEY = load_public_key((ROOT / "testdata" / "keys" / f"{FQRN}.pub").read_bytes())
BASE = {"user.fqrn", "user.revision", "user.root_hash", "user.host", "user.nclg",
        "user.catalog_counters", "user.repo_counters", "user.pid", "user.version"}
REGULAR = {"user.chunks", "user.chunk_list", "user.compression", "user.external_file",
           "user.direct_io", "user.bundle_trigger"}
WITH_HASH = {"user.hash", "user.lhash"}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    with open_repository(LocalSource(ROOT / "testdata" / "repo"), FQRN, [KEY],
                         RevisionSelector.of(), workdir=tmp_path) as opened:
        yield opened


def _vfs(repo: Repository, visibility: str) -> RepositoryVFS:
    made = RepositoryVFS(repo, MountOptions(magic_xattrs_visibility=visibility))
    made.track_lookups()
    return made


def _ino(vfs: RepositoryVFS, path: str) -> int:
    ino = ROOT_INODE
    for name in path.split("/"):
        ino = vfs.lookup(ino, name).ino
    return ino


def _entry(mode: int, content_hash: bool = False) -> DirEntry:
    return DirEntry(name="x", mode=mode, size=0, mtime=0, flags=0,
                    content_hash=ContentHash.parse("0" * 40) if content_hash else None)


def test_listing_rules_by_visibility_and_kind() -> None:
    directory = _entry(stat.S_IFDIR | 0o755)
    regular = _entry(stat.S_IFREG | 0o644, content_hash=True)
    link = _entry(stat.S_IFLNK | 0o777)
    fifo = _entry(stat.S_IFIFO | 0o644)
    listed = magic_xattrs.listed
    assert listed(directory, root=True, visibility="never") == []
    root = set(listed(directory, root=True, visibility="rootonly"))
    assert BASE <= root and not root & (REGULAR | WITH_HASH | {"user.rawlink"})
    assert listed(regular, root=False, visibility="rootonly") == []  # the reference default
    on_file = set(listed(regular, root=False, visibility="always"))
    assert BASE | REGULAR | WITH_HASH <= on_file and "user.rawlink" not in on_file
    assert set(listed(directory, root=False, visibility="always")) == root
    # the kernel answers user.* on symlinks and special files itself: nothing listed
    assert listed(link, root=False, visibility="always") == []
    assert listed(fifo, root=False, visibility="always") == []
    for entry in (directory, regular):
        assert STATS_XATTR not in listed(entry, root=True, visibility="always")
    assert STATS_XATTR not in magic_xattrs.names()


@pytest.mark.parametrize("visibility", ["rootonly", "always", "never"])
def test_every_listed_name_answers(repo: Repository, visibility: str) -> None:
    vfs = _vfs(repo, visibility)
    try:
        for path in ("", "docs", "docs/notes.txt", "data/random.bin", "links/guide"):
            ino = ROOT_INODE if not path else _ino(vfs, path)
            for name in vfs.listxattr(ino):
                assert vfs.find_xattr(ino, name) is not None, (path, name)
        everything = set(magic_xattrs.names()) - {"user.rawlink"}  # a file with a hash
        expected = {"user.author"} | (everything if visibility == "always" else set())
        assert set(vfs.listxattr(_ino(vfs, "docs/notes.txt"))) == expected
        assert vfs.listxattr(_ino(vfs, "docs/notes.txt"))[0] == "user.author"  # stored first
    finally:
        vfs.close()


def test_stats_document(repo: Repository) -> None:
    vfs = _vfs(repo, "rootonly")
    try:
        vfs.stats.operations.record("lookup", 70_000)
        handle = vfs.open(_ino(vfs, "docs/guide.txt"), 0)
        value = vfs.getxattr(_ino(vfs, "docs"), STATS_XATTR)  # any path answers it
        assert len(value) < 64 * 1024
        document = json.loads(value)
        vfs.release(handle)
    finally:
        vfs.close()
    assert document["format"] == FORMAT and document["fqrn"] == FQRN
    assert document["revision"] == repo.revision
    assert document["root_hash"] == str(repo.root_hash)
    assert document["revision_timestamp"] == repo.tree.root.last_modified
    assert document["offline"] is False and document["open_files"] == 1
    assert document["files_opened"] == 1 and document["catalogs"] >= 1
    assert document["fuse"]["bounds_ns"] == list(BOUNDS_NS)
    assert document["fuse"]["ops"]["lookup"][1] == 1  # 50 us < 70 us <= 100 us
    assert document["cache"] == {"hits": 0, "misses": 0}  # no cache behind this core


def test_op_timings_buckets_and_sums() -> None:
    timings = OpTimings()
    calls: list[tuple[int, ...]] = []
    timed = timings.timed("read", lambda *args: calls.append(args))
    timed(1, 2, 3)
    assert calls == [(1, 2, 3)]
    for elapsed in (50_000, 50_001, 6_000_000_000):
        timings.record("getattr", elapsed)
    row = timings.snapshot()["getattr"]
    assert len(row) == ROW
    assert row[0] == 1 and row[1] == 1 and row[-2] == 1  # le 50us, le 100us, +Inf
    assert row[-1] == 50_000 + 50_001 + 6_000_000_000
    assert sum(timings.snapshot()["read"][:-1]) == 1
    assert "open" not in timings.snapshot()  # never called: left out

    def failing(*args: object) -> None:
        raise OSError("fails")

    with pytest.raises(OSError):
        timings.timed("open", failing)()
    assert sum(timings.snapshot()["open"][:-1]) == 1  # counted all the same


def test_client_stats_carry_the_timings() -> None:
    assert isinstance(ClientStats().operations, OpTimings)


def test_long_values_come_in_pages(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    vfs = _vfs(repo, "always")
    try:
        chunked = _ino(vfs, "data/random.bin")  # 12 chunks: 13 lines
        whole = vfs.getxattr(chunked, "user.chunk_list")
        assert whole.count(b"\n") == 13 and vfs.getxattr(chunked, "user.chunk_list~?") == \
            b"num_pages, 1"
        assert vfs.getxattr(chunked, "user.chunk_list~0") == whole
        assert vfs.find_xattr(chunked, "user.chunk_list~1") is None
        assert vfs.getxattr(ROOT_INODE, "user.fqrn~0") == FQRN.encode()
        monkeypatch.setattr(magic_xattrs, "PAGE_CHARS", 200)  # ~3 lines a page
        pages = int(vfs.getxattr(chunked, "user.chunk_list~?").split(b", ")[1])
        assert pages > 1
        texts = [vfs.getxattr(chunked, f"user.chunk_list~{n}").decode() for n in range(pages)]
        assert all(t.startswith("hash,offset,size\n") for t in texts)
        assert vfs.getxattr(chunked, "user.chunk_list").decode() == texts[0]
        lines = [line for t in texts for line in t.splitlines()[1:]]
        assert lines == whole.decode().splitlines()[1:]  # every chunk once, in order
    finally:
        vfs.close()
