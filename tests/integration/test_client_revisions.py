"""Revisions through a real mount: a new revision published while mounted shows after the
TTL (open files keep their old bytes, unchanged files keep their inode), fixed revisions
(tag, date, root hash, CVMFS_AUTO_UPDATE=no) never move, and offline mounts from the
breadcrumb recover when the Stratum-1 comes back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from pycvmfs.fs.mount import BACKENDS
from pycvmfs.repository.reader import LASTING_FAILURE_MEMORY_S
from tests.mounting import backend_params, cli_mount
from tests.publish_helpers import Keys
from tests.revision_site import Site, revision, wait_for
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch
from tests.waiting import wait_until

pytestmark = [
    *NEEDS_FUSE_AND_NGINX,
]

T1 = int(time.time()) - 3600  # manifest timestamps of revisions 1 and 2 (the whitelist
T2 = T1 + 600  # expires relative to them)
FIXED = b"never (fixed root catalog)"


@pytest.fixture
def site(keys: Keys) -> Iterator[Site]:
    with shared_scratch("pycvmfs-revisions-") as base, Nginx() as server:
        yield Site(keys, server, base)


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_new_revision_shows_while_open_files_keep_old_bytes(site: Site, backend: str) -> None:
    # directories keep their mtime across the revisions: only an explicit invalidation,
    # not a changed mtime, can make the kernel drop a listing it cached
    first = site.publish({"a.txt": "one, the first", "keep.txt": "unchanged",
                          "dir/x.txt": "x"}, T1, dir_mtime=T1)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    # mfusepy cannot invalidate kernel entries: the change shows after the kernel timeout
    extra = {"CVMFS_KCACHE_TIMEOUT": "1"} if backend == "mfusepy" else {}
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache), options=site.options(cache, **extra),
                   backend=backend):
        assert revision(mnt) == first
        assert (mnt / "a.txt").read_text() == "one, the first"
        keep_ino = os.stat(mnt / "keep.txt").st_ino
        assert not (mnt / "new.txt").exists()  # a negative entry the kernel now caches
        for _ in range(2):  # listed twice: the lowlevel backend's kernel now caches them
            assert sorted(os.listdir(mnt)) == ["a.txt", "dir", "keep.txt"]
            assert os.listdir(mnt / "dir") == ["x.txt"]
        # an inode the kernel keeps (an open file) keeps its number while unchanged; a closed
        # one may be evicted and forgotten at the swap and come back under a fresh number
        held = open(mnt / "keep.txt", "rb")  # noqa: SIM115 - closed after the swap
        with open(mnt / "a.txt", "rb") as opened:
            assert opened.read(4) == b"one,"
            second = site.publish({"a.txt": "two, the second one", "keep.txt": "unchanged",
                                   "dir/x.txt": "x", "dir/y.txt": "y", "new.txt": "new"}, T2,
                                  dir_mtime=T1)
            assert wait_for(lambda: revision(mnt) == second), "revision 2 never mounted"
            if backend == "mfusepy":  # names and sizes the kernel holds expire after 1 s
                wait_until(lambda: len(os.listdir(mnt)) == 4
                           and os.stat(mnt / "a.txt").st_size == len("two, the second one"),
                           10, "the kernel's names and sizes of revision 1 to expire")
            # pyfuse3 and lowlevel invalidated every name (and, lowlevel, every cached
            # listing) they handed out: the change shows at once
            assert sorted(os.listdir(mnt)) == ["a.txt", "dir", "keep.txt", "new.txt"]
            assert sorted(os.listdir(mnt / "dir")) == ["x.txt", "y.txt"]
            assert (mnt / "new.txt").exists()
            assert (mnt / "a.txt").read_text() == "two, the second one"
            if backend != "mfusepy":  # mfusepy: one kernel inode per path, see its docstring
                assert opened.read() == b" the first"  # the open file reads its old bytes
        assert (mnt / "new.txt").read_text() == "new"
        assert (mnt / "dir/y.txt").read_text() == "y"
        if backend != "mfusepy":  # mfusepy reports numbers but holds none (libfuse does)
            assert os.stat(mnt / "keep.txt").st_ino == keep_ino  # unchanged: same inode
        held.close()
        assert (mnt / "keep.txt").read_text() == "unchanged"
        assert sorted(os.listdir(mnt)) == ["a.txt", "dir", "keep.txt", "new.txt"]
        expires = os.getxattr(mnt, "user.expires")
        assert expires.isdigit()


@pytest.mark.parametrize("no_open", ["yes", "no"])
def test_a_file_opened_unread_reads_its_old_bytes_after_a_swap(site: Site,
                                                               no_open: str) -> None:
    """Opened, not one byte read, then replaced by a new revision: the old bytes, with an
    OPEN answered (a handle) and without one (FUSE no-open: the content the kernel's inode
    was handed out with, kept through the swap); a chunk list too."""
    old_big = "".join(f"{i:08}\n" for i in range(30_000))  # chunked (SMALL_CHUNKS)
    site.publish({"a.txt": "one, the first", "big.txt": old_big}, T1)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache),
                   options=site.options(cache, PYCVMFS_NO_OPEN=no_open,
                                        CVMFS_KCACHE_TIMEOUT="600")):
        with open(mnt / "a.txt", "rb") as small, open(mnt / "big.txt", "rb") as big:
            assert int(os.getxattr(mnt / "big.txt", "user.chunks")) > 1
            second = site.publish({"a.txt": "two, the second one", "big.txt": "new"}, T2)
            assert wait_for(lambda: revision(mnt) == second), "revision 2 never mounted"
            assert (mnt / "a.txt").read_text() == "two, the second one"
            assert small.read() == b"one, the first"
            assert big.read() == old_big.encode()
        assert (mnt / "big.txt").read_text() == "new"


def test_fixed_revisions_never_move(site: Site) -> None:
    site.publish({"a.txt": "one"}, T1)
    site.publish({"a.txt": "two"}, T2)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    between = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T1 + 60))
    cases = {"CVMFS_REPOSITORY_TAG": ("trunk-previous", "one"),
             "CVMFS_REPOSITORY_DATE": (between, "one"),
             "CVMFS_AUTO_UPDATE": ("no", "two")}
    old_root = ""
    for key, (value, content) in cases.items():
        with cli_mount(site.keys.fqrn, mnt, env=site.env(cache),
                       options=site.options(cache, **{key: value})):
            assert (mnt / "a.txt").read_text() == content, key
            assert os.getxattr(mnt, "user.expires") == FIXED, key
            if key == "CVMFS_REPOSITORY_TAG":
                assert os.getxattr(mnt, "user.tag") == b"trunk-previous"
                old_root = os.getxattr(mnt, "user.root_hash").decode()
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache),
                   options=site.options(cache, CVMFS_ROOT_HASH=old_root)):
        assert (mnt / "a.txt").read_text() == "one"
        assert os.getxattr(mnt, "user.expires") == FIXED
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache),
                   options=site.options(cache, CVMFS_AUTO_UPDATE="no")):
        site.publish({"a.txt": "three"}, T2 + 60)
        time.sleep(2.5)  # the point: more than the 1 s TTL passes, and nothing may change
        assert (mnt / "a.txt").read_text() == "two"


def test_offline_mount_from_breadcrumb_then_recovery(site: Site) -> None:
    first = site.publish({"a.txt": "one", "big.txt": "b" * 100_000}, T1)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    options = site.options(cache)
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache), options=options):
        assert (mnt / "a.txt").read_text() == "one"
    site.server.pause()  # the Stratum-1 is gone: mount what the cache remembers
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache), options=options):
        assert revision(mnt) == first
        assert (mnt / "a.txt").read_text() == "one"
        log = (cache / f"{site.keys.fqrn}.log").read_text()  # no syslog here: a log file
        assert "from the cache (offline)" in log and "connection" in log
        with pytest.raises(OSError):  # never downloaded, no server
            (mnt / "big.txt").read_bytes()
        failed_at = time.monotonic()
        second = site.publish({"a.txt": "two", "big.txt": "b" * 100_000}, T2)
        site.server.resume()  # back: the mount recovers and moves on
        assert wait_for(lambda: revision(mnt) == second, timeout=30)
        assert (mnt / "a.txt").read_text() == "two"
        # the file (one per inode: no-open) answers its failure again for this long; a
        # recovery faster than that would meet it
        time.sleep(max(0.0, LASTING_FAILURE_MEMORY_S - (time.monotonic() - failed_at)))
        assert (mnt / "big.txt").read_bytes() == b"b" * 100_000
        assert f"now serving revision {second}" in (cache / f"{site.keys.fqrn}.log").read_text()
