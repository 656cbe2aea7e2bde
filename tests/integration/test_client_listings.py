"""Directory listings during revision swaps, through real mounts: a directory handle sees one
revision from opendir to closedir (eight threads listing a 1,000-entry directory, several
READDIR replies each, whose names change with every revision never get a listing mixing
two), and seekdir to a telldir position resumes in the handle's revision after a swap."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import backend_params, cli_mount
from tests.publish_helpers import Keys
from tests.revision_site import Site, revision, wait_for
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch
from tests.waiting import wait_until

pytestmark = [*NEEDS_FUSE_AND_NGINX, pytest.mark.slow]

ENTRIES = 1000
LISTERS = 8
REVISIONS = 2  # swaps while the listers run
T0 = int(time.time()) - 7200


def _files(generation: int) -> dict[str, str]:
    return {f"big/g{generation}-{i:04}": "" for i in range(ENTRIES)}


@pytest.fixture
def site(keys: Keys) -> Iterator[Site]:
    with shared_scratch("pycvmfs-listings-") as base, Nginx() as server:
        yield Site(keys, server, base)


def _one_revision(names: list[str]) -> str | None:
    """Why `names` is not one revision's listing of `big/` (None: it is)."""
    generations = {name.split("-")[0] for name in names}
    if len(generations) != 1:
        return f"names of generations {sorted(generations)} in one listing"
    if len(names) != ENTRIES or len(set(names)) != ENTRIES:
        return f"{len(names)} names ({len(set(names))} distinct), expected {ENTRIES}"
    return None


def test_concurrent_listings_never_mix_revisions(site: Site) -> None:
    """The default backend, whose kernel listing cache is in play; pyfuse3 reads through
    the same VFS directory handles (the seekdir test runs both)."""
    backend = "lowlevel"
    site.publish(_files(0), T0)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    problems: list[str] = []
    listings = [0]
    stop = threading.Event()

    def lister() -> None:
        while not stop.is_set():
            names = os.listdir(mnt / "big")
            problem = _one_revision(names)
            if problem:
                problems.append(problem)
            listings[0] += 1

    # every name handed out changes with each revision: their invalidation waits behind
    # the listers, so the kernel is told to expire names soon anyway (it stops waiting then)
    options = site.options(cache, CVMFS_KCACHE_TIMEOUT="5")
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache), options=options,
                   backend=backend):
        threads = [threading.Thread(target=lister, daemon=True) for _ in range(LISTERS)]
        for thread in threads:
            thread.start()
        try:
            for generation in range(1, REVISIONS + 1):
                published = site.publish(_files(generation), T0 + 60 * generation)
                assert wait_for(lambda p=published: revision(mnt) == p), "revision not mounted"
                seen = listings[0]  # listings of the new revision, cached and not
                wait_until(lambda s=seen: listings[0] >= s + 2 * LISTERS, 30,
                           "listings of the new revision")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert not problems, problems[:5]
        assert listings[0] > LISTERS * REVISIONS
        assert _one_revision(os.listdir(mnt / "big")) is None
        assert os.listdir(mnt / "big")[0].startswith(f"g{REVISIONS}-")


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


class _DirStream:
    """libc opendir/readdir/telldir/seekdir (Python has no telldir)."""

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.libc.opendir.restype = ctypes.c_void_p
        self.libc.readdir.restype = ctypes.POINTER(_Dirent)
        self.libc.readdir.argtypes = [ctypes.c_void_p]
        self.libc.telldir.restype = ctypes.c_long
        self.libc.telldir.argtypes = [ctypes.c_void_p]
        self.libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
        self.libc.closedir.argtypes = [ctypes.c_void_p]
        self.handle = self.libc.opendir(os.fsencode(path))
        assert self.handle, os.strerror(ctypes.get_errno())

    def read(self, count: int | None = None) -> list[str]:
        names: list[str] = []
        while count is None or len(names) < count:
            entry = self.libc.readdir(self.handle)
            if not entry:
                break
            name = entry.contents.d_name.decode()
            if name not in (".", ".."):
                names.append(name)
        return names

    def tell(self) -> int:
        return int(self.libc.telldir(self.handle))

    def seek(self, position: int) -> None:
        self.libc.seekdir(self.handle, position)

    def close(self) -> None:
        self.libc.closedir(self.handle)


@pytest.mark.parametrize("backend", backend_params("lowlevel", "pyfuse3"))
def test_seekdir_to_telldir_stays_in_the_handles_revision(site: Site, backend: str) -> None:
    site.publish(_files(0), T0)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache), options=site.options(cache),
                   backend=backend):
        stream = _DirStream(mnt / "big")
        try:
            head = stream.read(ENTRIES // 2)
            position = stream.tell()
            tail = stream.read()
            assert _one_revision(head + tail) is None
            published = site.publish(_files(1), T0 + 60)
            assert wait_for(lambda: revision(mnt) == published), "revision not mounted"
            stream.seek(position)
            assert stream.read() == tail  # the old revision, from where it was
            assert _one_revision(os.listdir(mnt / "big")) is None  # a new handle: the new one
            assert os.listdir(mnt / "big")[0].startswith("g1-")
        finally:
            stream.close()
