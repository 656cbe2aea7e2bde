"""The VFS's inode numbers and what the kernel holds: numbers derived from catalog rows
(a plain listing records nothing and its d_ino is what a lookup answers), lookup counts
taken back by FORGET (paths, every hardlink path, the group), open handles outliving their
inode, directory handles paged and tied to one revision, revision swaps keeping unchanged
paths' numbers, and a VFS that does not track (mfusepy) never dropping anything."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.fs import directories
from pycvmfs.fs.vfs import ROOT_INODE, Attr, FsError, RepositoryVFS
from pycvmfs.repository.repository import Repository
from tests.publish_helpers import Keys, open_repository, run_publish


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


T1 = int(time.time()) - 3600  # the whitelist is signed from the publish time on
FILES = {"a/x.txt": b"x" * 10, "a/y/z.txt": b"zz", "b.txt": b"bee", "c/one": b"1",
         "c/two": b"22", "c/three": b"333"}
MANY = {f"many/f{i:03}": str(i).encode() for i in range(40)}


@pytest.fixture
def storage(tmp_path: Path, keys: Keys) -> Path:
    source = _tree(tmp_path / "src", {**FILES, **MANY})
    os.link(source / "b.txt", source / "b-link2")  # a hardlink group
    os.link(source / "b.txt", source / "b-link3")
    os.symlink("b.txt", source / "sym")
    run_publish(source, tmp_path / "storage", keys, timestamp=T1)
    return tmp_path / "storage"


@pytest.fixture
def repo(storage: Path, keys: Keys) -> Iterator[Repository]:
    with open_repository(storage, keys) as opened:
        yield opened


@pytest.fixture
def vfs(repo: Repository) -> RepositoryVFS:
    made = RepositoryVFS(repo)
    made.track_lookups()
    return made


def _only_root(vfs: RepositoryVFS) -> bool:
    table = vfs.inodes
    return (vfs.inode_count() == 1 and not table._known and not table._links
            and not table._counts)


def _listing(vfs: RepositoryVFS, ino: int, offset: int = 0) -> list[tuple[str, Attr]]:
    handle = vfs.opendir(ino)
    try:
        return [(item.name, vfs.listed_attr(item, hand_out=False))
                for item in vfs.readdir(handle, offset)]
    finally:
        vfs.releasedir(handle)


def test_lookups_then_forgets_leave_only_the_root(vfs: RepositoryVFS) -> None:
    a = vfs.lookup(ROOT_INODE, "a").ino
    x = vfs.lookup(a, "x.txt").ino
    y = vfs.lookup(a, "y").ino
    z = vfs.lookup(y, "z.txt").ino
    assert vfs.lookup(a, "x.txt").ino == x  # the kernel counts it twice now
    assert vfs.lookup_count(x) == 2 and vfs.inode_count() == 5
    assert vfs.forget([(x, 1)]) == []  # one lookup left
    assert vfs.path_of(x) == "/a/x.txt"
    assert sorted(vfs.forget([(z, 1), (x, 1), (y, 1)])) == sorted([x, y, z])
    with pytest.raises(FsError):
        vfs.path_of(x)
    assert vfs.forget([(a, 1)]) == [a]
    assert _only_root(vfs)


def test_forgetting_unknown_inodes_and_the_root_is_harmless(vfs: RepositoryVFS) -> None:
    b = vfs.lookup(ROOT_INODE, "b.txt").ino
    assert vfs.forget([(123_456, 7), (ROOT_INODE, 1), (b, 5)]) == [b]  # more than counted
    assert vfs.forget([(b, 1)]) == []  # already gone
    assert _only_root(vfs)
    assert vfs.getattr(ROOT_INODE).ino == ROOT_INODE


def test_hardlinked_paths_share_one_count_and_go_together(vfs: RepositoryVFS) -> None:
    first = vfs.lookup(ROOT_INODE, "b.txt")
    second = vfs.lookup(ROOT_INODE, "b-link3")
    third = vfs.lookup(ROOT_INODE, "b-link2")
    assert first.ino == second.ino == third.ino and first.nlink == 3
    ino = first.ino
    assert vfs.lookup_count(ino) == 3 and len(vfs.inodes._links[ino]) == 3
    vfs.forget([(ino, 2)])
    assert vfs.getattr(ino).size == 3  # still held once
    vfs.forget([(ino, 1)])
    assert _only_root(vfs)
    again = vfs.lookup(ROOT_INODE, "b-link2")  # derived from the group: the same number
    assert again.ino == ino and vfs.lookup_path("/b.txt").ino == ino


def test_numbers_are_derived_from_rows_and_never_shared(vfs: RepositoryVFS) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    two = vfs.lookup(c, "two")
    vfs.forget([(two.ino, 1)])
    with pytest.raises(FsError):  # forgotten: unknown until looked up again
        vfs.getattr(two.ino)
    fresh = vfs.lookup(c, "two")
    assert fresh.ino == two.ino and fresh.size == 2 and stat.S_ISREG(fresh.mode)
    handle = vfs.open(fresh.ino, os.O_RDONLY)
    assert vfs.read(handle, 0, 10) == b"22"
    vfs.release(handle)
    numbers = [attr.ino for name, attr in _listing(vfs, ROOT_INODE) if name != "."]
    hardlinks = {"b.txt", "b-link2", "b-link3"}
    assert len(set(numbers)) >= len(numbers) - len(hardlinks) + 1
    assert vfs.inode_max() >= max(numbers)


def test_open_handles_outlive_their_inode(vfs: RepositoryVFS) -> None:
    x = vfs.lookup(vfs.lookup(ROOT_INODE, "a").ino, "x.txt").ino
    handle = vfs.open(x, os.O_RDONLY)
    vfs.forget([(x, 1)])
    assert vfs.read(handle, 0, 100) == b"x" * 10
    vfs.release(handle)


def test_a_plain_listing_records_nothing_and_its_d_ino_is_the_lookup(
        vfs: RepositoryVFS) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    held = vfs.inode_count()
    listed = dict(_listing(vfs, c))
    assert set(listed) == {".", "..", "one", "two", "three"}
    assert listed["."].ino == c and listed[".."].ino == ROOT_INODE
    assert vfs.inode_count() == held  # nothing recorded for a plain READDIR
    assert vfs.lookup(c, "one").ino == listed["one"].ino  # d_ino == st_ino


def test_readdirplus_hands_out_and_forget_takes_back(vfs: RepositoryVFS) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    handle = vfs.opendir(c)
    handed = [vfs.listed_attr(item, hand_out=True) for item in vfs.readdir(handle)
              if item.name not in (".", "..")]
    vfs.releasedir(handle)
    assert all(vfs.lookup_count(attr.ino) == 1 for attr in handed)
    assert vfs.path_of(handed[0].ino).startswith("/c/")
    vfs.forget([(attr.ino, 1) for attr in handed] + [(c, 1)])
    assert _only_root(vfs)


def test_the_root_listing(vfs: RepositoryVFS) -> None:
    listing = _listing(vfs, ROOT_INODE)
    assert [name for name, _ in listing][:1] == ["."]
    names = [name for name, _ in listing]
    assert ".." not in names and len(names) == len(set(names))
    assert {"a", "b.txt", "c", "sym", "b-link2", "many"} <= set(names)
    sym = vfs.lookup(ROOT_INODE, "sym").ino
    assert vfs.readlink(sym) == b"b.txt"


def test_listings_are_paged_and_resume_at_any_offset(monkeypatch: pytest.MonkeyPatch,
                                                     vfs: RepositoryVFS) -> None:
    monkeypatch.setattr(directories, "PAGE_ROWS", 3)  # 40 files: 14 queries
    many = vfs.lookup(ROOT_INODE, "many").ino
    handle = vfs.opendir(many)
    items = list(vfs.readdir(handle))
    assert sorted(item.name for item in items[2:]) == sorted(n.split("/")[1] for n in MANY)
    offsets = [item.offset for item in items]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    for cut in (0, 1, 2, 7, 25, len(items) - 1):  # seekdir to a telldir position
        resumed = [item.name for item in vfs.readdir(handle, items[cut].offset)]
        assert resumed == [item.name for item in items[cut + 1:]]
    middle = items[10].offset + 1  # between two entries (or exactly the next one's end)
    between = [item.name for item in vfs.readdir(handle, middle)]
    assert between == [item.name for item in items if item.offset > middle]
    vfs.releasedir(handle)
    with pytest.raises(FsError):
        list(vfs.readdir(handle))


def test_revision_swap_keeps_unchanged_numbers_and_handles_their_revision(
        tmp_path: Path, keys: Keys, storage: Path, vfs: RepositoryVFS) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    old_one = vfs.lookup(c, "one").ino
    two = vfs.lookup(c, "two").ino
    handle = vfs.open(old_one, os.O_RDONLY)
    directory = vfs.opendir(c)
    first = next(iter(vfs.readdir(directory)))  # `.`: the listing has started
    changed = dict(FILES, **{"c/one": b"changed", "c/four": b"4444"})
    run_publish(_tree(tmp_path / "src2", changed), storage, keys, timestamp=T1 + 600)
    with open_repository(storage, keys) as newer:
        old = vfs.repository
        vfs.set_repository(newer)
        old.close()  # deferred: the directory handle still reads it
        assert vfs.lookup(c, "two").ino == two  # unchanged: same inode, counted twice
        new_one = vfs.lookup(c, "one")
        assert new_one.ino != old_one and new_one.size == len(b"changed")
        assert vfs.getattr(old_one).size == 1  # open: what it reads
        assert vfs.read(handle, 0, 10) == b"1"
        vfs.release(handle)
        with pytest.raises(FsError):  # replaced: the kernel looks the name up again
            vfs.getattr(old_one)
        rest = [item.name for item in vfs.readdir(directory, first.offset)]
        assert "four" not in rest and "three" in rest  # the old revision, to the end
        restarted = [item.name for item in vfs.readdir(directory, 0)]
        assert "four" in restarted  # a rewinddir lists the revision served now
        vfs.releasedir(directory)
        vfs.forget([(old_one, 1)])
        assert vfs.inodes.held_number("/c/one") == new_one.ino  # the old took only itself
        vfs.forget([(two, 2), (new_one.ino, 1), (c, 1)])
        assert _only_root(vfs)


def test_without_tracking_nothing_is_dropped(repo: Repository) -> None:
    vfs = RepositoryVFS(repo)  # as tests use it; mfusepy uses only the path methods
    a = vfs.lookup(ROOT_INODE, "a").ino
    x = vfs.lookup(a, "x.txt").ino
    vfs.forget([(x, 1), (a, 1)])
    assert vfs.lookup_path("/a/x.txt").ino == x and vfs.path_of(a) == "/a"
    assert not vfs.inodes._counts
    before = vfs.inode_count()
    assert {name for name, _ in vfs.listdir_path("/c")} == {".", "..", "one", "two", "three"}
    assert vfs.readlink_path("/sym") == b"b.txt" and vfs.inode_count() == before
    assert vfs.lookup_path("/").ino == ROOT_INODE
