"""The VFS keeps the kernel's lookup counts: what the kernel forgets leaves the inode tables
(paths, every hardlink path, the group), what a cached listing names stays until the
listing goes, open handles outlive their inode, revision swaps keep counts right, and a
VFS that does not track (mfusepy) never drops anything."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.fs import vfs as vfs_module
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


@pytest.fixture
def storage(tmp_path: Path, keys: Keys) -> Path:
    source = _tree(tmp_path / "src", FILES)
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
    return (vfs.inode_count() == 1 and vfs._inodes == {"": (ROOT_INODE, stat.S_IFDIR)}
            and not vfs._groups and not vfs._hardlinks and not vfs._nlookup)


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
    assert vfs.lookup_count(ino) == 3 and len(vfs._groups) == 1
    vfs.forget([(ino, 2)])
    assert vfs.getattr(ino).size == 3  # still held once
    vfs.forget([(ino, 1)])
    assert _only_root(vfs)
    again = vfs.lookup(ROOT_INODE, "b-link2")  # a fresh group inode, shared again
    assert again.ino > ino and vfs.lookup(ROOT_INODE, "b.txt").ino == again.ino


def test_forgotten_then_looked_up_gets_a_new_inode_with_right_attrs(vfs: RepositoryVFS
                                                                    ) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    two = vfs.lookup(c, "two")
    vfs.forget([(two.ino, 1)])
    fresh = vfs.lookup(c, "two")
    assert fresh.ino != two.ino and fresh.size == 2 and stat.S_ISREG(fresh.mode)
    assert vfs.getattr(fresh.ino).size == 2
    with pytest.raises(FsError):  # the old number is unknown, never reused
        vfs.getattr(two.ino)
    handle = vfs.open(fresh.ino, os.O_RDONLY)
    assert vfs.read(handle, 0, 10) == b"22"
    vfs.release(handle)
    assert vfs.inode_max() == fresh.ino


def test_open_handles_outlive_their_inode(vfs: RepositoryVFS) -> None:
    x = vfs.lookup(vfs.lookup(ROOT_INODE, "a").ino, "x.txt").ino
    handle = vfs.open(x, os.O_RDONLY)
    vfs.forget([(x, 1)])
    assert vfs.read(handle, 0, 100) == b"x" * 10
    vfs.release(handle)


def test_listings_pin_their_children_until_the_directory_is_forgotten(
        vfs: RepositoryVFS) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    listed = dict(vfs.readdir(c))  # a plain READDIR: numbers shown, nothing counted
    assert set(listed) == {"one", "two", "three"}
    assert all(vfs.lookup_count(attr.ino) == 0 for attr in listed.values())
    assert vfs.inode_count() == 5  # pinned by the cached listing
    one = vfs.lookup(c, "one")
    assert one.ino == listed["one"].ino  # d_ino == st_ino
    assert vfs.hand_out(listed["two"].ino)  # a READDIRPLUS entry
    vfs.forget([(one.ino, 1), (listed["two"].ino, 1)])
    assert vfs.inode_count() == 5  # the listing still names them
    assert vfs.readdir_with_dots(c) is vfs.cached_listing(c)
    assert vfs.forget([(c, 1)]) == [c]  # the directory goes, its listing with it
    assert _only_root(vfs)
    assert not vfs.hand_out(listed["three"].ino)  # dropped: not handed out any more


def test_listed_children_held_by_the_kernel_stay_when_the_listing_goes(
        vfs: RepositoryVFS) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    listing = vfs.readdir(c)
    three = next(attr.ino for name, attr in listing if name == "three")
    assert vfs.hand_out(three)
    vfs.forget([(c, 1)])
    assert vfs.inode_count() == 2 and vfs.path_of(three) == "/c/three"
    assert vfs.getattr(three).size == 3
    vfs.forget([(three, 1)])
    assert _only_root(vfs)


def _listed_ino(listing: list[tuple[str, Attr]], name: str) -> int:
    return next(attr.ino for each, attr in listing if each == name)


def test_the_root_listing_and_a_stale_listing(vfs: RepositoryVFS) -> None:
    listing = vfs.readdir_with_dots(ROOT_INODE)
    assert [name for name, _ in listing][:1] == ["."]
    names = {name for name, _ in listing}
    assert {"a", "b.txt", "c", "sym", "b-link2"} <= names
    assert vfs.readlink(_listed_ino(listing, "sym")) == b"b.txt"
    held = vfs.inode_count()
    assert held == 1 + len(listing) - 1 - 2  # three names share one inode
    relisted = vfs.readdir_with_dots(ROOT_INODE, stale=listing)  # listed afresh
    assert relisted is not listing and relisted == listing  # the same numbers
    assert vfs.cached_listing(ROOT_INODE) is relisted and vfs.inode_count() == held


def test_oversized_listing_is_kept_aside_and_pinned(monkeypatch: pytest.MonkeyPatch,
                                                    repo: Repository) -> None:
    monkeypatch.setattr(vfs_module, "LISTING_CACHE_ENTRIES", 3)
    vfs = RepositoryVFS(repo)
    vfs.track_lookups()
    c = vfs.lookup(ROOT_INODE, "c").ino
    a = vfs.lookup(ROOT_INODE, "a").ino
    big = vfs.readdir_with_dots(c)  # 5 entries: more than the cache holds
    assert vfs.cached_listing(c) is big and vfs.inode_count() == 6
    vfs.readdir_with_dots(a)  # 4 entries: more as well, replaces it
    assert vfs.cached_listing(c) is None
    assert set(vfs._inodes) == {"", "/c", "/a", "/a/x.txt", "/a/y"}


def test_revision_swap_with_outstanding_counts(tmp_path: Path, keys: Keys,
                                               storage: Path, vfs: RepositoryVFS) -> None:
    c = vfs.lookup(ROOT_INODE, "c").ino
    old_one = vfs.lookup(c, "one").ino
    two = vfs.lookup(c, "two").ino
    listing = vfs.readdir(c)
    handle = vfs.open(old_one, os.O_RDONLY)
    changed = dict(FILES, **{"c/one": b"changed"})
    run_publish(_tree(tmp_path / "src2", changed), storage, keys, timestamp=T1 + 600)
    with open_repository(storage, keys) as newer:
        vfs.set_repository(newer)
        assert vfs.inode_count() == 4  # listings let go: only what the kernel holds
        assert vfs.lookup(c, "two").ino == two  # unchanged: same inode, counted twice
        new_one = vfs.lookup(c, "one")
        assert new_one.ino != old_one and new_one.size == len(b"changed")
        assert vfs.getattr(old_one).size == 1  # open: what it reads
        assert vfs.read(handle, 0, 10) == b"1"
        vfs.release(handle)
        with pytest.raises(FsError):  # replaced: the kernel looks the name up again
            vfs.getattr(old_one)
        assert vfs.readdir(c) != listing
        vfs.forget([(old_one, 1)])
        assert vfs._inodes["/c/one"][0] == new_one.ino  # the old inode took only itself
        vfs.forget([(two, 2), (new_one.ino, 1), (c, 1)])
        assert _only_root(vfs), (vfs._paths, vfs._inodes, vfs._nlookup, vfs._hardlinks)


def test_without_tracking_nothing_is_dropped(repo: Repository) -> None:
    vfs = RepositoryVFS(repo)  # as the path-based mfusepy adapter uses it
    a = vfs.lookup_path("/a").ino
    x = vfs.lookup_path("/a/x.txt").ino
    listed = vfs.readdir(a)
    vfs.forget([(x, 1), (a, 1)])
    assert vfs.lookup_path("/a/x.txt").ino == x and vfs.path_of(a) == "/a"
    assert vfs.readdir(a) == listed and not vfs._nlookup
    assert vfs.lookup_path("/").ino == ROOT_INODE
