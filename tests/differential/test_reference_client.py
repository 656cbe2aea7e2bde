"""The reference `cvmfs2` client mounts what we publish and shows what our reader shows.

Runs only where a reference client is available: set PYCVMFS_REFERENCE_CVMFS2 to the
path of a `cvmfs2` binary (its directory must also hold `libcvmfs_fuse3_stub.so` and
`libcvmfs_fuse3.so`). Needs root (FUSE mount) and nginx (the Stratum-1)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pycvmfs.format.symlinks import expand_symlink
from tests.publish_helpers import Keys, make_full_tree, open_repository, run_publish
from tests.servers import Nginx, nginx_binary

CVMFS2 = os.environ.get("PYCVMFS_REFERENCE_CVMFS2", "")
ROOT = Path(__file__).resolve().parents[2]
DEMO_KEYS = Keys("demo.pycvmfs.org", ROOT / "testdata" / "keys")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CVMFS2 or not os.access(CVMFS2, os.X_OK),
                       reason="no reference client (set PYCVMFS_REFERENCE_CVMFS2)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed"),
]

Row = tuple[str, int, int | None, int, int, str, dict[str, bytes]]


@contextmanager
def reference_mount(fqrn: str, base_url: str, public_key: Path, work: Path,
                    tag: str | None = None) -> Iterator[Path]:
    mountpoint, cache = work / "mnt", work / "cache"
    for directory in (mountpoint, cache, work / "sockets"):
        directory.mkdir(parents=True)
    settings = {
        "CVMFS_SERVER_URL": base_url.rsplit("/", 1)[0] + "/@fqrn@",
        "CVMFS_HTTP_PROXY": "DIRECT", "CVMFS_PUBLIC_KEY": str(public_key),
        "CVMFS_CACHE_BASE": str(cache), "CVMFS_SHARED_CACHE": "no",
        "CVMFS_RELOAD_SOCKETS": str(work / "sockets"), "CVMFS_USER": "root",
        "CVMFS_CLAIM_OWNERSHIP": "no", "CVMFS_CHECK_PERMISSIONS": "no",
        "CVMFS_QUOTA_LIMIT": "-1", "CVMFS_USE_GEOAPI": "no", "CVMFS_TIMEOUT": "5",
        "CVMFS_TIMEOUT_DIRECT": "5",
    }
    if tag is not None:
        settings["CVMFS_REPOSITORY_TAG"] = tag
    config = work / "client.conf"
    config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    env = dict(os.environ, CVMFS_LIBRARY_PATH=str(Path(CVMFS2).parent) + "/")
    subprocess.run([CVMFS2, "-o", f"config={config},fsname=cvmfs2", fqrn, str(mountpoint)],
                   env=env, check=True, capture_output=True, timeout=60)
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFREG: "f", stat.S_IFIFO: "p",
            stat.S_IFSOCK: "s", stat.S_IFCHR: "c", stat.S_IFBLK: "b"}[stat.S_IFMT(mode)]


def mount_view(mountpoint: Path) -> dict[str, Row]:
    view: dict[str, Row] = {}
    for dirpath, dirnames, filenames in os.walk(mountpoint):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            content = ""
            if kind == "f":
                content = hashlib.sha1(Path(full).read_bytes()).hexdigest()
            elif kind == "l":
                content = os.readlink(full)
            xattrs = {n: os.getxattr(full, n, follow_symlinks=False)
                      for n in os.listxattr(full, follow_symlinks=False)}
            view["/" + os.path.relpath(full, mountpoint)] = (
                kind, stat.S_IMODE(st.st_mode), st.st_size if kind in "fl" else None,
                st.st_nlink if kind != "d" else 0, int(st.st_mtime), content, xattrs)
    return view


def reader_view(storage: Path, keys: Keys, tag: str | None = None) -> dict[str, Row]:
    view: dict[str, Row] = {}
    with open_repository(storage, keys, tag=tag) as repo:
        for path, entry in repo.walk():
            kind = _kind(entry.mode)
            content, size = "", None
            if kind == "f":
                content, size = hashlib.sha1(repo.read(path)).hexdigest(), entry.size
            elif kind == "l":
                content = expand_symlink(entry.symlink, {})
                size = len(content.encode())
            view[path] = (kind, stat.S_IMODE(entry.mode), size,
                          entry.linkcount if kind != "d" else 0, entry.mtime, content,
                          dict(entry.xattrs))
    return view


def _served(storage: Path, server: Nginx, fqrn: str) -> str:
    return server.publish(f"cvmfs/{fqrn}", storage)


@pytest.mark.parametrize("tag", [None, "v1"])
def test_demo_repository(tmp_path: Path, tag: str | None) -> None:
    storage = ROOT / "testdata" / "repo"
    with Nginx() as server:
        url = _served(storage, server, DEMO_KEYS.fqrn)
        with reference_mount(DEMO_KEYS.fqrn, url, DEMO_KEYS.public_key_file, tmp_path,
                             tag) as mnt:
            assert mount_view(mnt) == reader_view(storage, DEMO_KEYS, tag)
            assert os.getxattr(mnt, "user.revision") == (b"1" if tag else b"2")


def test_full_tree_two_revisions(tmp_path: Path, keys: Keys) -> None:
    source = make_full_tree(tmp_path / "src")
    storage = tmp_path / "repo"
    run_publish(source, storage, keys, tag="one", chunking=None)
    (source / "plain.txt").write_text("second revision\n")
    shutil.rmtree(source / "releases" / "r1")
    run_publish(source, storage, keys)
    for directory in [storage, *storage.parents]:
        if directory == Path("/"):
            break
        directory.chmod(directory.stat().st_mode | 0o005)  # nginx workers run as nobody
    with Nginx() as server:
        url = _served(storage, server, keys.fqrn)
        for tag in (None, "one"):
            with reference_mount(keys.fqrn, url, keys.public_key_file,
                                 tmp_path / f"m-{tag}", tag) as mnt:
                assert mount_view(mnt) == reader_view(storage, keys, tag)
