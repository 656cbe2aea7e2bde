"""Real FUSE mounts of the demo repository through every adapter (pyfuse3, lowlevel, mfusepy):
listing as the reader shows it, hardlinks sharing an inode, `.`/`..`, variant symlinks,
stored xattrs, chunked reads, executing a script, read-only errors."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import backend_params
from tests.publish_helpers import Keys, open_repository

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "testdata" / "repo"
DEMO_KEYS = Keys("demo.pycvmfs.org", ROOT / "testdata" / "keys")

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root")


def _usable(backend: str) -> bool:
    from pycvmfs.fs.mount import load_backend

    try:
        load_backend(backend)
    except Exception:
        return False
    return True


@pytest.fixture(params=backend_params("pyfuse3", "lowlevel", "mfusepy"))
def mounted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    backend = request.param
    if not _usable(backend):
        pytest.skip(f"{backend} is not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, DEMO_ARCH="aarch64")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pycvmfs.fs.mount", str(DEMO), str(mnt), "--fqrn",
         DEMO_KEYS.fqrn, "--keys", str(DEMO_KEYS.public_key_file), "--backend", backend],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=5)
            pytest.fail(f"mount failed: {err.decode()}")
        time.sleep(0.05)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.communicate(timeout=20)


def test_listing_matches_reader(mounted: Path) -> None:
    seen = {}
    for dirpath, dirnames, filenames in os.walk(mounted):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            content = ""
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha1(Path(full).read_bytes()).hexdigest()
            seen["/" + os.path.relpath(full, mounted)] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), int(st.st_mtime), content)
    expected = {}
    with open_repository(DEMO, DEMO_KEYS) as repo:
        for path, entry in repo.walk():
            content = hashlib.sha1(repo.read(path)).hexdigest() if entry.is_regular else ""
            expected[path] = (stat.S_IFMT(entry.mode), stat.S_IMODE(entry.mode), entry.mtime,
                              content)
    assert seen == expected


def test_posix_semantics(mounted: Path) -> None:
    guide, hard = os.stat(mounted / "docs/guide.txt"), os.stat(mounted / "docs/guide-hardlink.txt")
    assert guide.st_ino == hard.st_ino and guide.st_nlink == 2
    listing = subprocess.run(["ls", "-a", str(mounted / "docs")], capture_output=True,
                             text=True, check=True).stdout.split()
    assert listing[:2] == [".", ".."] and "guide.txt" in listing
    assert os.readlink(mounted / "links/arch-lib") == "aarch64/lib"  # from the environment
    assert os.lstat(mounted / "links/arch-lib").st_size == len("aarch64/lib")
    assert os.getxattr(mounted / "docs/notes.txt", "user.author") == b"pycvmfs"
    data = (mounted / "data/random.bin").read_bytes()
    assert len(data) == 1_500_000
    with open(mounted / "data/random.bin", "rb") as fh:  # across a chunk boundary
        fh.seek(143_900)
        assert fh.read(100) == data[143_900:144_000]
    run = subprocess.run([str(mounted / "bin/hello.sh")], capture_output=True, text=True)
    assert run.stdout == "hello from the demo repository\n"
    assert stat.S_ISFIFO(os.lstat(mounted / "special/fifo").st_mode)
    with pytest.raises(OSError) as info:
        (mounted / "new-file").write_text("x")
    assert info.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        os.stat(mounted / "docs/missing")


ISSUE_MAGIC_XATTRS = ("fqrn", "revision", "root_hash", "hash", "lhash", "chunks",
                      "chunk_list", "compression", "host", "host_list", "proxy", "timeout",
                      "expires", "nioerr", "rx", "speed", "ndownload", "nopen", "hitrate",
                      "pid", "uptime", "version", "tag", "catalog_counters", "repo_counters",
                      "usedfd", "inode_max", "rawlink")


def test_magic_xattrs(mounted: Path) -> None:
    with open_repository(DEMO, DEMO_KEYS) as repo:
        revision, root_hash = repo.revision, str(repo.root_hash)
        guide_hash = str(repo.lookup("/docs/guide.txt").content_hash)
    listed = set(os.listxattr(mounted))
    of_files = {"hash", "lhash", "chunks", "chunk_list", "compression", "rawlink"}
    # listed on the root, each one that answers for a directory (issue 12)
    assert {f"user.{n}" for n in ISSUE_MAGIC_XATTRS if n not in of_files} <= listed
    assert not listed & {f"user.{n}" for n in of_files}
    assert os.listxattr(mounted / "docs/notes.txt") == ["user.author"]  # stored ones only
    guide = mounted / "docs/guide.txt"
    assert os.getxattr(guide, "user.revision") == str(revision).encode()
    assert os.getxattr(guide, "user.root_hash") == root_hash.encode()
    assert os.getxattr(guide, "user.fqrn") == b"demo.pycvmfs.org"
    assert os.getxattr(guide, "user.hash") == guide_hash.encode()
    assert os.getxattr(guide, "user.chunks") == b"1"
    assert os.getxattr(mounted / "data/random.bin", "user.chunks") == b"12"
    assert os.getxattr(mounted / "data/random.bin", "user.compression") == b"none"
    assert os.getxattr(guide, "user.compression") == b"zlib"
    chunk_list = os.getxattr(mounted / "data/random.bin", "user.chunk_list").decode()
    assert chunk_list.startswith("hash,offset,size\n") and chunk_list.count("\n") == 13
    # Linux refuses user.* attributes on symlinks before asking the filesystem, so
    # user.rawlink is checked on the core itself (test_vfs_rawlink).
    assert os.getxattr(mounted, "user.pid").isdigit()
    counters = os.getxattr(mounted / "data/random.bin", "user.catalog_counters").decode()
    assert "catalog_mountpoint: /data\n" in counters and "regular,3\n" in counters
    with pytest.raises(OSError) as info:
        os.getxattr(mounted / "docs", "user.hash")  # directories have no hash
    assert info.value.errno == errno.ENODATA
    for name in ISSUE_MAGIC_XATTRS:
        if name not in ("hash", "lhash", "chunks", "chunk_list", "compression", "rawlink"):
            os.getxattr(mounted / "docs/notes.txt", f"user.{name}")  # gettable everywhere


def test_vfs_rawlink() -> None:
    from pycvmfs.fs.vfs import RepositoryVFS

    with open_repository(DEMO, DEMO_KEYS) as repo:
        vfs = RepositoryVFS(repo)
        assert vfs.getxattr_path("/links/arch-lib", "user.rawlink") == \
            b"$(DEMO_ARCH:-x86_64)/lib"


def test_listing_attaches_no_nested_catalog(mounted: Path) -> None:
    """`ls -l` of the root lists the /data mountpoint without loading its catalog."""
    subprocess.run(["ls", "-li", str(mounted)], check=True, capture_output=True)
    assert os.getxattr(mounted, "user.nclg") == b"1"
    assert (mounted / "data" / "same-as-guide.txt").stat().st_size == 10690
    assert os.getxattr(mounted, "user.nclg") == b"2"
