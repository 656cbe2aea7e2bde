"""Repository storage on a local directory, laid out as a Stratum-1 serves it
(one implementation of publisher.storage_protocol.Storage).

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
import itertools
import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from pycvmfs.errors import LockError, PublishError
from pycvmfs.format.compression import ZLIB_LEVEL, Compression
from pycvmfs.format.hashes import Algorithm, ContentHash, Hasher, Suffix
from pycvmfs.publisher.storage_protocol import ObjectSink, Storage, StoredObject

LOCK_NAME = ".cvmfs_publish.lock"
MANIFEST_NAME = ".cvmfspublished"
WHITELIST_NAME = ".cvmfswhitelist"
# An empty sentinel that marks a Stratum-0 as replicable: `cvmfs_server mkfs` writes it by
# default, and `cvmfs_swissknife pull` (`cvmfs_server snapshot`) refuses a source without it.
MASTER_REPLICA_NAME = ".cvmfs_master_replica"
TXN_DIR = "data/txn"


class LocalStorage:
    """A repository directory: `.cvmfspublished`, `.cvmfswhitelist`, `data/00..ff`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)  # plain strings on the hot path, not pathlib
        self._txn = os.path.join(self._root, TXN_DIR)
        self._names = itertools.count()
        mask = os.umask(0o022)  # read the umask (set back at once)
        os.umask(mask)
        self._fix_mode = bool(mask & 0o644)  # fchmod only when the umask would hide bits
        self._created: list[str] | None = None
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
                    os.unlink(path)
            raise
        finally:
            self._created = None

    @property
    def location(self) -> str:
        return str(self.root)

    def describe(self, relative: str) -> str:
        return str(self.root / relative)

    def prepare(self) -> None:
        """Create the storage directory itself."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PublishError(f"cannot create storage {self.root}: {exc.strerror}") from exc

    def has_layout(self) -> bool:
        return (self.root / "data").is_dir()

    def scratch_dir(self) -> Path:
        return self.root / TXN_DIR

    def memo_path(self, name: str) -> Path:
        return self.root / name

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    def object_sink(self) -> ObjectSink:
        return _LocalSink(self)

    def list_objects(self) -> Iterator[StoredObject]:
        """Regular files (not symlinks) directly in data/00..ff, by name."""
        data = self.root / "data"
        for index in range(256):
            fanout = f"{index:02x}"
            directory = data / fanout
            try:
                names = sorted(os.listdir(directory))
            except FileNotFoundError:
                continue
            for name in names:
                path = directory / name
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                yield StoredObject(fanout, name, st.st_size)

    def delete_objects(self, relatives: Iterable[str]) -> list[str]:
        deleted = []
        for relative in relatives:
            path = self.root / relative
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise PublishError(f"cannot delete {path}: {exc.strerror or exc}") from exc
            deleted.append(relative)
        return deleted

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
        return os.path.exists(self._object_path(content_hash, suffix))

    def _object_path(self, content_hash: ContentHash, suffix: Suffix) -> str:
        return os.path.join(self._root, content_hash.object_path(suffix))

    def put_object(
        self, content_hash: ContentHash, stored: bytes | memoryview, suffix: Suffix = Suffix.NONE
    ) -> bool:
        """Store an object unless it is already there; True when bytes were written."""
        target = self._object_path(content_hash, suffix)
        if os.path.exists(target):
            return False
        fd, tmp = self.open_temporary()
        try:
            _write_all(fd, stored)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        return self.commit_temporary(fd, tmp, content_hash, suffix, checked=True)

    def open_temporary(self) -> tuple[int, str]:
        """A new file in data/txn (mode 0644 whatever the umask: web servers read it)."""
        while True:
            tmp = os.path.join(self._txn, f"obj.{os.getpid()}.{next(self._names)}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                if self._fix_mode:
                    os.fchmod(fd, 0o644)
                return fd, tmp
            except FileExistsError:
                continue  # a leftover of a crashed process with the same pid
            except OSError as exc:
                raise PublishError(_describe_write_error(Path(tmp), exc)) from exc

    def commit_temporary(self, fd: int, tmp: str, content_hash: ContentHash,
                         suffix: Suffix, *, checked: bool = False) -> bool:
        """Close `fd` and rename `tmp` to the object's name, unless the object exists
        already (then the temporary is dropped; `checked`: the caller just looked). True
        when a new object appeared."""
        target = self._object_path(content_hash, suffix)
        try:
            os.close(fd)
            if not checked and os.path.exists(target):
                os.unlink(tmp)
                return False
            if not _create_exclusively(tmp, target):
                return False  # another worker stored the same object first
        except OSError as exc:
            _unlink_quietly(tmp)
            raise PublishError(_describe_write_error(Path(target), exc)) from exc
        if self._created is not None:
            with self._created_lock:
                self._created.append(target)
        return True

    def put_file(self, relative: str, data: bytes | memoryview, *, sync: bool = True) -> None:
        """Write `data` to `relative` atomically (temp file in data/txn, then rename)."""
        target = os.path.join(self._root, relative)
        fd, tmp = self.open_temporary()
        try:
            try:
                _write_all(fd, data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise PublishError(_describe_write_error(Path(target), exc)) from exc
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


def _create_exclusively(tmp: str, target: str) -> bool:
    """Move `tmp` to `target` unless `target` exists, atomically: two workers storing the
    same object at once (identical files in one publish) must not both count it as new.
    link() fails if the name exists; file systems without hard links fall back to
    rename() (then a concurrent duplicate is replaced by the same bytes)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        os.unlink(tmp)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK):
            raise
        os.rename(tmp, target)
        return True
    os.unlink(tmp)
    return True


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _LocalSink:
    """An object streamed into a temporary file in data/txn, renamed at commit."""

    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage
        self._fd, self._tmp = storage.open_temporary()

    def write(self, stored: bytes | memoryview) -> None:
        try:
            _write_all(self._fd, stored)
        except OSError as exc:
            self.abort()
            raise PublishError(_describe_write_error(Path(self._tmp), exc)) from exc

    def commit(self, content_hash: ContentHash, suffix: Suffix) -> bool:
        fd, self._fd = self._fd, -1  # commit_temporary closes it
        return self._storage.commit_temporary(fd, self._tmp, content_hash, suffix)

    def abort(self) -> None:
        """Drop the temporary; idempotent. Closing twice would be a real bug: by then
        another worker may have been given the same descriptor number."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            os.close(fd)
        _unlink_quietly(self._tmp)


class ObjectWriter:
    """Streams one object into storage: compress, hash the stored bytes and write them
    as they come, so a 16 MiB chunk is never held (or copied) whole; its name is known
    only at `commit`. Not thread-safe: one writer per worker."""

    def __init__(self, storage: Storage, algorithm: Algorithm,
                 compression: Compression) -> None:
        self._sink = storage.object_sink()
        self._deflate = zlib.compressobj(ZLIB_LEVEL) if compression is Compression.ZLIB \
            else None
        self._hasher = Hasher(algorithm)
        self.size = 0  # uncompressed bytes written
        self.stored = 0  # bytes as stored

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._out(self._deflate.compress(data) if self._deflate is not None else data)

    def _out(self, stored: bytes | memoryview) -> None:
        if stored:
            self._hasher.update(stored)
            self.stored += len(stored)
            self._sink.write(stored)

    def commit(self, suffix: Suffix) -> tuple[ContentHash, bool]:
        """(content hash, whether a new object appeared)."""
        if self._deflate is not None:
            self._out(self._deflate.flush())
        content_hash = self._hasher.finish()
        return content_hash, self._sink.commit(content_hash, suffix)

    def abort(self) -> None:
        """Drop what was written; idempotent."""
        self._sink.abort()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
