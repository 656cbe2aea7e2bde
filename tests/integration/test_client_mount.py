"""`pycvmfs mount` end to end: configuration files, a real nginx Stratum-1, the trust
chain over HTTP, a background mount that is ready when the command returns, `umount`."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pycvmfs.fs.mount import READ_AHEAD_KB, mounted_device
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx

ROOT = Path(__file__).resolve().parents[2]
FQRN = "demo.pycvmfs.org"

pytestmark = [
    *NEEDS_FUSE_AND_NGINX,
]


def _pycvmfs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycvmfs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_mount_from_configuration(tmp_path: Path) -> None:
    config_root = tmp_path / "etc-cvmfs"
    (config_root / "config.d").mkdir(parents=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(config_root), HOME=str(tmp_path))
    with Nginx() as server:
        url = server.publish(f"cvmfs/{FQRN}", ROOT / "testdata" / "repo")
        (config_root / "config.d" / f"{FQRN}.conf").write_text(
            f"CVMFS_SERVER_URL={url.rsplit('/', 1)[0]}/@fqrn@\n"
            f"CVMFS_PUBLIC_KEY={ROOT / 'testdata' / 'keys' / f'{FQRN}.pub'}\n"
            f"CVMFS_CACHE_BASE={tmp_path / 'cache'}\n"
            "CVMFS_MAX_RETRIES=0\nCVMFS_TIMEOUT_DIRECT=2\n")
        done = _pycvmfs("mount", FQRN, str(mnt), "-o", "CVMFS_HTTP_PROXY=DIRECT", env=env)
        assert done.returncode == 0, done.stderr
        try:
            assert os.path.ismount(mnt)  # ready when the command returned
            device = mounted_device(str(mnt))  # and tuned for sequential reads already
            read_ahead = Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text()
            assert int(read_ahead) == READ_AHEAD_KB
            assert (mnt / "README.txt").read_text().endswith("revision 2: updated\n")
            assert os.getxattr(mnt, "user.fqrn") == FQRN.encode()
            assert os.getxattr(mnt, "user.host").decode().startswith("http://127.0.0.1:")
            assert len((mnt / "data" / "random.bin").read_bytes()) == 1_500_000
            again = _pycvmfs("mount", FQRN, str(mnt), env=env)
            assert again.returncode == 1 and "already a mount point" in again.stderr
            cached = [p for p in (tmp_path / "cache" / "shared").glob("??/*") if p.is_file()]
            assert len(cached) >= 12 + 2  # the 12 chunks, catalogs
            assert os.statvfs(mnt).f_blocks > 0  # df shows the cache quota
            server.stop()  # the network is gone: cached content still reads
            assert (mnt / "README.txt").read_text().endswith("revision 2: updated\n")
            assert len((mnt / "data" / "random.bin").read_bytes()) == 1_500_000
            with pytest.raises(OSError) as info:  # never cached: fails fast with EIO
                (mnt / "docs" / "guide.txt").read_bytes()
            assert info.value.errno == errno.EIO
        finally:
            done = _pycvmfs("umount", str(mnt), env=env)
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mnt)
    status = _pycvmfs("cache", "status", FQRN, env=env)  # found through the configuration
    assert status.returncode == 0 and "objects" in status.stdout, status.stderr
    base = _pycvmfs("cache", "status", "--dir", str(tmp_path / "cache"), env=env)  # the base
    assert base.returncode == 0 and "objects: 0" not in base.stdout, base.stdout
    assert "is a cache base" in base.stderr and "shared" in base.stdout, base.stderr
    verify = _pycvmfs("cache", "verify", "--dir", str(tmp_path / "cache" / "shared"), env=env)
    assert verify.returncode == 0 and "consistent" in verify.stdout, verify.stdout
    cleaned = _pycvmfs("cache", "clean", FQRN, env=env)
    assert cleaned.returncode == 0 and "freed" in cleaned.stdout
    assert not [p for p in (tmp_path / "cache" / "shared").glob("??/*") if p.is_file()]


def test_mount_errors_are_clear(tmp_path: Path) -> None:
    config_root = tmp_path / "etc-cvmfs"
    config_root.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (config_root / "default.local").write_text(f"CVMFS_CACHE_BASE={tmp_path / 'cache'}\n")
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(config_root), HOME=str(tmp_path))
    done = _pycvmfs("mount", FQRN, str(mnt), "-o", "CVMFS_SERVER_URL=http://127.0.0.1:1/x",
                    env=env)
    assert done.returncode == 1
    assert "key" in done.stderr.lower() and str(config_root) in done.stderr  # where it looked
    key = ROOT / "testdata" / "keys" / f"{FQRN}.pub"
    done = _pycvmfs("mount", FQRN, str(mnt), "-o",
                    f"CVMFS_SERVER_URL=http://127.0.0.1:1/cvmfs/@fqrn@,CVMFS_PUBLIC_KEY={key},"
                    "CVMFS_HTTP_PROXY=DIRECT,CVMFS_MAX_RETRIES=0,CVMFS_TIMEOUT=1,"
                    "CVMFS_TIMEOUT_DIRECT=1", env=env)
    assert done.returncode == 1 and "127.0.0.1:1" in done.stderr  # what was tried
    assert not os.path.ismount(mnt)
