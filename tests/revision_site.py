"""A repository that tests publish revision after revision while it is mounted: published
into a world-readable directory, served by nginx, with mount options for short TTLs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.publish_helpers import Keys, run_publish
from tests.servers import Nginx
from tests.waiting import poll_until


class Site:
    """A repository published into a world-readable directory and served by nginx."""

    def __init__(self, keys: Keys, server: Nginx, base: Path) -> None:
        self.keys, self.server, self.base = keys, server, base
        self.storage = base / "storage"
        self.tree = base / "tree"
        self.url = ""

    def publish(self, files: dict[str, str], timestamp: int, ttl: int = 1,
                dir_mtime: int | None = None) -> int:
        """`dir_mtime`: give every directory this mtime (else: when it was written)."""
        shutil.rmtree(self.tree, ignore_errors=True)
        for name, text in files.items():
            path = self.tree / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            os.utime(path, (timestamp, timestamp))
        if dir_mtime is not None:
            for directory in [self.tree, *(p for p in self.tree.rglob("*") if p.is_dir())]:
                os.utime(directory, (dir_mtime, dir_mtime))
        result = run_publish(self.tree, self.storage, self.keys, ttl=ttl, timestamp=timestamp)
        if not self.url:
            self.url = self.server.publish(f"cvmfs/{self.keys.fqrn}", self.storage)
        return result.manifest.revision

    def env(self, cache: Path) -> dict[str, str]:
        config_root = self.base / "etc"
        config_root.mkdir(exist_ok=True)
        return dict(os.environ, PYCVMFS_CONFIG_ROOT=str(config_root), HOME=str(self.base))

    def options(self, cache: Path, **extra: str) -> dict[str, str]:
        return {"CVMFS_SERVER_URL": self.url, "CVMFS_HTTP_PROXY": "DIRECT",
                "CVMFS_PUBLIC_KEY": str(self.keys.public_key_file),
                "CVMFS_CACHE_BASE": str(cache), "CVMFS_MAX_RETRIES": "0",
                "CVMFS_TIMEOUT_DIRECT": "2", "PYCVMFS_MIN_TTL": "1", **extra}


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    return bool(poll_until(predicate, timeout, interval_s=0.1))


def revision(mnt: Path) -> int:
    return int(os.getxattr(mnt, "user.revision"))
