"""Real mounts, served in this process so the inode tables can be read: after a walk the
kernel is made to drop its dentries and inodes (`drop_caches`), it sends FORGETs, and the
tables shrink to what the kernel still holds; everything reads the same afterwards
(fresh lookups, an open file, hardlinks), for each backend that answers FORGET."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.fs import mount
from pycvmfs.fs.vfs import RepositoryVFS
from tests.mounting import backend_params
from tests.publish_helpers import Keys, open_repository, run_publish

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root (drop_caches)")
BACKENDS = ("lowlevel", "pyfuse3")  # those that answer FORGET
DIRS, FILES_PER_DIR = 20, 60
MOUNT_WAIT_S = 20.0
SHRINK_WAIT_S = 15.0


def _content(d: int, f: int) -> bytes:
    return f"dir {d} file {f}\n".encode() * (1 + f % 3)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    base = tmp_path_factory.mktemp("forget")
    source = base / "src"
    for d in range(DIRS):
        for f in range(FILES_PER_DIR):
            path = source / "tree" / f"d{d:02}" / f"f{f:03}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_content(d, f))
    os.link(source / "tree" / "d00" / "f000", source / "tree" / "d00" / "hardlink")
    os.symlink("f001", source / "tree" / "d00" / "symlink")
    run_publish(source, base / "storage", keys, timestamp=int(time.time()) - 3600)
    return base / "storage"


def _expected() -> dict[str, bytes]:
    out = {f"tree/d{d:02}/f{f:03}": _content(d, f)
           for d in range(DIRS) for f in range(FILES_PER_DIR)}
    out["tree/d00/hardlink"] = out["tree/d00/symlink"] = b""  # checked on their own
    return out


def _walk(mnt: Path) -> dict[str, bytes]:
    seen = {}
    for dirpath, _, filenames in os.walk(mnt):
        for name in filenames:
            full = Path(dirpath) / name
            relative = str(full.relative_to(mnt))
            seen[relative] = b"" if name in ("hardlink", "symlink") else full.read_bytes()
    return seen


@pytest.fixture(params=backend_params(*BACKENDS))
def served(request: pytest.FixtureRequest, storage: Path, keys: Keys,
           tmp_path: Path) -> Iterator[tuple[RepositoryVFS, Path]]:
    try:
        mount.load_backend(request.param)
    except Exception as exc:
        pytest.skip(f"{request.param} is not usable: {exc}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open_repository(storage, keys) as repo:
        vfs = RepositoryVFS(repo)
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                mount.serve(vfs, str(mnt), backend=request.param)
            except BaseException as exc:  # reported by the test, not as a thread warning
                failed.append(exc)

        thread = threading.Thread(target=serve, name="forget-mount", daemon=True)
        thread.start()
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not os.path.ismount(mnt):
            assert not failed and time.monotonic() < deadline, f"mount failed: {failed}"
            time.sleep(0.05)
        try:
            yield vfs, mnt
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            thread.join(20)
            if thread.is_alive():
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
                thread.join(10)
            vfs.close()
        assert not thread.is_alive() and not failed, failed


def _drop_kernel_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # dentries and inodes


def test_forgotten_inodes_leave_the_tables(served: tuple[RepositoryVFS, Path]) -> None:
    vfs, mnt = served
    expected = _expected()
    assert _walk(mnt) == expected
    held = vfs.inode_count()
    assert held > DIRS * FILES_PER_DIR
    for name in ("tree/d03/f007", "tree/d19/f059", "tree/d00/hardlink", "tree/d00"):
        assert vfs.lookup_count(os.lstat(mnt / name).st_ino) >= 1  # handed out: counted
    kept = open(mnt / "tree" / "d07" / "f003", "rb")  # noqa: SIM115 - held across the drop
    try:
        deadline = time.monotonic() + SHRINK_WAIT_S
        while vfs.inode_count() > held // 10 and time.monotonic() < deadline:
            _drop_kernel_caches()
            time.sleep(0.2)
        shrunk = vfs.inode_count()
        # what the kernel still holds: the open file, its directories, the root's listing
        assert shrunk <= held // 10, (held, shrunk)
        assert kept.read() == _content(7, 3)  # the open file still reads
        kept.seek(0)
        # looked up again: fresh inodes, right contents and attributes
        assert _walk(mnt) == expected
        assert vfs.inode_count() > DIRS * FILES_PER_DIR
        hard = os.stat(mnt / "tree" / "d00" / "hardlink")
        assert hard.st_ino == os.stat(mnt / "tree" / "d00" / "f000").st_ino
        assert hard.st_nlink == 2 and hard.st_size == len(_content(0, 0))
        assert os.readlink(mnt / "tree" / "d00" / "symlink") == "f001"
        assert (mnt / "tree" / "d00" / "symlink").read_bytes() == _content(0, 1)
        assert kept.read() == _content(7, 3)
    finally:
        kept.close()
