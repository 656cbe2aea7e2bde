"""Repository storage on a local directory, laid out as a Stratum-1 serves it.

Every file becomes visible by an atomic rename from `data/txn/`, so a reader (or a
web server) never sees a partial object, and an interrupted publish leaves only
unreferenced temporaries behind. `.cvmfspublished` is written last by the publisher.

Thread-safety: `put_object` may be called from several threads at once; two writers
of the same object both rename identical bytes into place, which is harmless.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from pycvmfs.errors import LockError, PublishError
from pycvmfs.format.hashes import ContentHash, Suffix

LOCK_NAME = ".cvmfs_publish.lock"
MANIFEST_NAME = ".cvmfspublished"
WHITELIST_NAME = ".cvmfswhitelist"
TXN_DIR = "data/txn"


class LocalStorage:
    """A repository directory: `.cvmfspublished`, `.cvmfswhitelist`, `data/00..ff`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._created: list[Path] | None = None
        self._created_lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Objects created inside are removed again if the block fails.

        They are new (nothing referenced them before) and the publish lock is held, so
        removing them loses nothing good and gives back the space a full disk needs."""
        self._created = []
        try:
            yield
        except BaseException:
            for path in self._created:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        finally:
            self._created = None

    def create_layout(self) -> None:
        """Make `data/00`..`data/ff` and `data/txn` (idempotent)."""
        try:
            for i in range(256):
                (self.root / "data" / f"{i:02x}").mkdir(parents=True, exist_ok=True)
            (self.root / TXN_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PublishError(f"cannot create storage layout in {self.root}: {exc}") from exc

    def path_of(self, relative: str) -> Path:
        return self.root / relative

    def has_object(self, content_hash: ContentHash, suffix: Suffix = Suffix.NONE) -> bool:
        return (self.root / content_hash.object_path(suffix)).exists()

    def put_object(
        self, content_hash: ContentHash, stored: bytes | memoryview, suffix: Suffix = Suffix.NONE
    ) -> bool:
        """Store an object unless it is already there; True when bytes were written."""
        relative = content_hash.object_path(suffix)
        target = self.root / relative
        if target.exists():
            return False
        self.put_file(relative, stored, sync=False)
        if self._created is not None:
            with self._created_lock:
                self._created.append(target)
        return True

    def put_file(self, relative: str, data: bytes | memoryview, *, sync: bool = True) -> None:
        """Write `data` to `relative` atomically (temp file in data/txn, then rename)."""
        target = self.root / relative
        fd, tmp = tempfile.mkstemp(prefix="put.", dir=self.root / TXN_DIR)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # served by web servers running as another user
            os.replace(tmp, target)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise PublishError(_describe_write_error(target, exc)) from exc
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def read_file(self, relative: str) -> bytes | None:
        try:
            return (self.root / relative).read_bytes()
        except FileNotFoundError:
            return None

    def read_object(self, content_hash: ContentHash, suffix: Suffix) -> bytes:
        path = self.root / content_hash.object_path(suffix)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise PublishError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def clean_temporaries(self) -> None:
        """Remove leftovers of interrupted publishes (only called under the lock)."""
        txn = self.root / TXN_DIR
        if txn.is_dir():
            for leftover in txn.iterdir():
                _unlink_quietly(str(leftover))

    def lock(self) -> PublishLock:
        return PublishLock(self.root / LOCK_NAME)


class PublishLock:
    """An exclusive flock on the storage; the kernel drops it if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> PublishLock:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PublishError(f"cannot create lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(self._fd)
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LockError(
                    f"storage {self.path.parent} is locked by another publisher{holder}; "
                    "try again when it has finished"
                ) from None
            raise PublishError(f"cannot lock {self.path}: {exc.strerror}") from exc
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _describe_write_error(target: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"storage full while writing {target}: no space left on device"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {target}"
    return f"cannot write {target}: {exc.strerror or exc}"


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
