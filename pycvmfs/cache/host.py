"""`CacheHost`: one process's view of a cache directory — store + quota wired together.

Configuration (fact sheet 9.1/9.6): a managed cache has a positive `CVMFS_QUOTA_LIMIT`
(MB) and an `SqliteLruQuota`; `quota_limit_mb = -1` gives an unmanaged cache
(`NoopQuota`); an alien cache (`CVMFS_ALIEN_CACHE`) must be unmanaged and not shared
(the reference rejects other combinations; so do we, with `ConfigError`).

The directory (issue 9, class 4): opened once, from `base` down, by `safe_dir` (refused
when a component below the base is a symlink, another user's or writable by others; the
alien cache trusts its group), then claimed by `identity` (contents without a valid
ownership marker are discarded). Store, index, lock and breadcrumbs all work through that
one descriptor, `CacheHost.root`.

Object life cycle: `begin(hash)` -> writes (by the verifying sink) -> `commit(txn)`:
size checks, atomic rename, quota insert (may evict LRU objects; if the quota cannot
make room it removes the object again, under its lock, and raises `CacheFullError`).
`open(hash)` serves a hit and records the access (batched). Catalogs: `pin` before
loading, `unpin` after detaching. Open files: `open_ref`/`close_ref` keep this process
from evicting them.

Thread-safety: all methods may be called from any thread (store and quota are). Process
safety: as `store.py` and `quota.py` describe; several hosts may share a directory.
Create the host *after* daemonizing: its lock file descriptor and SQLite connection must
not be inherited across `fork`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pycvmfs.cache.errors import CacheFullError
from pycvmfs.cache.identity import claim
from pycvmfs.cache.quota import SqliteLruQuota
from pycvmfs.cache.quota_protocol import MEGABYTE, UNLIMITED, Key, NoopQuota, ObjectKind, Quota
from pycvmfs.cache.safe_dir import DIR_MODE, SafeDir, Trust, open_directory
from pycvmfs.cache.shared import CacheLock
from pycvmfs.cache.store import ALIEN_DIR_MODE, ObjectStore, Txn
from pycvmfs.errors import ConfigError
from pycvmfs.format.hashes import ContentHash

DEFAULT_QUOTA_LIMIT_MB = 1024  # reference built-in when CVMFS_QUOTA_LIMIT is unset
BIG_OBJECT_BYTES = 25 * 1024 * 1024  # reference kBigFile: make room before downloading


@dataclass(frozen=True, slots=True)
class CacheConfig:
    directory: Path
    quota_limit_mb: int = DEFAULT_QUOTA_LIMIT_MB
    alien: bool = False
    shared: bool = True
    # CVMFS_CACHE_BASE: may be shared (sticky); every component below it down to
    # `directory` must be the user's (`safe_dir`). None: the directory's parent.
    base: Path | None = None

    def __post_init__(self) -> None:
        if self.alien and (self.quota_limit_mb != UNLIMITED or self.shared):
            raise ConfigError(
                "CVMFS_ALIEN_CACHE requires CVMFS_QUOTA_LIMIT=-1 and CVMFS_SHARED_CACHE=no"
            )
        if self.quota_limit_mb == 0 or self.quota_limit_mb < UNLIMITED:
            raise ConfigError(f"CVMFS_QUOTA_LIMIT must be -1 or positive: {self.quota_limit_mb}")


def open_cache_directory(config: CacheConfig, *, create: bool = True) -> SafeDir:
    """The cache directory, checked from the base down (`safe_dir`); CacheSecurityError
    if another user could control it, OSError if it cannot be opened or created."""
    return open_directory(config.directory, Trust(alien=config.alien), base=config.base,
                          create=create, mode=ALIEN_DIR_MODE if config.alien else DIR_MODE)


class CacheHost:
    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.root = open_cache_directory(config)
        try:
            self._claim()
            self.store = ObjectStore(self.root, alien=config.alien)
            self.quota: Quota = (
                NoopQuota()
                if config.quota_limit_mb == UNLIMITED
                else SqliteLruQuota(self.root, config.quota_limit_mb * MEGABYTE)
            )
        except BaseException:
            self.root.close()
            raise

    def _claim(self) -> None:
        """Discard contents this user cannot vouch for (`identity`), under the cache lock
        (none for the alien cache: shared file systems)."""
        if self.config.alien:
            claim(self.root)
            return
        lock = CacheLock(self.root)
        try:
            with lock:
                claim(self.root)
        finally:
            lock.close()

    def open(self, key: ContentHash) -> BinaryIO | None:
        """A cache hit opened for reading (caller closes), or None on a miss."""
        fd = self.open_fd(key)
        return None if fd is None else self.store.file_of(fd, key)

    def open_fd(self, key: ContentHash) -> int | None:
        """A cache hit as a raw read-only descriptor (caller closes), or None on a miss:
        the read path's way in, without a file object around it."""
        fd = self.store.open_fd(key)
        if fd is not None:
            self.quota.touch(key)
        return fd

    def begin(self, key: ContentHash, size_hint: int | None = None) -> Txn:
        """Start writing `key`. With a known (catalog) size, refuse objects that can never
        fit and, for big ones, make room first (reference: objects over 25 MB trigger a
        cleanup to min(capacity/2, capacity - size) before the download)."""
        limit = self.quota.max_object_size()
        if size_hint is not None and limit != UNLIMITED:
            if size_hint > limit:
                raise CacheFullError(f"object {key} ({size_hint} bytes) exceeds {limit}")
            if size_hint > BIG_OBJECT_BYTES:
                capacity = self.quota.capacity()
                self.quota.cleanup(min(capacity // 2, capacity - size_hint))
        return self.store.begin(key)

    def commit(
        self,
        txn: Txn,
        *,
        expected_size: int | None = None,
        kind: ObjectKind = ObjectKind.REGULAR,
        volatile: bool = False,
    ) -> Path:
        """Publish a verified object and account for it (see the module docstring)."""
        limit = self.quota.max_object_size()
        if limit != UNLIMITED and txn.size > limit:
            txn.abort()
            raise CacheFullError(f"object {txn.hash} ({txn.size} bytes) exceeds {limit}")
        path = self.store.commit(txn, expected_size)
        # On CacheFullError the quota has removed the file itself, under the cache lock:
        # an unlink here could delete the copy a neighbour published and indexed since.
        self.quota.insert(txn.hash, txn.size, kind=kind, volatile=volatile)
        return path

    def pin(self, key: Key, size: int) -> None:
        self.quota.pin(key, size)

    def unpin(self, key: Key) -> None:
        self.quota.unpin(key)

    def open_ref(self, key: Key) -> None:
        self.quota.open_ref(key)

    def close_ref(self, key: Key) -> None:
        self.quota.close_ref(key)

    def usage(self) -> tuple[int, int]:
        """(bytes used, capacity) for statfs; capacity -1 when unmanaged."""
        return self.quota.size(), self.quota.capacity()

    def close(self) -> None:
        try:
            self.quota.close()
        finally:
            self.store.close()
            self.root.close()

    def __enter__(self) -> CacheHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
