"""Copying one object from a source into a replica's storage, verified before it is stored.

An object's stored (compressed) bytes stream from the source through a `StoringSink`: the
client's `VerifyingSink` (hash of the stored bytes, bounded inflation, the size the catalog
states, the download budget) with every block also written to a storage object sink
(`Storage.object_sink`: a temporary file in `data/txn`, or an S3 spool file). Only once
the sink verified does the object get its name (`commit`); a failed attempt drops what it
wrote and the next attempt starts afresh, so nothing unverified is ever stored and memory
stays flat for any object size. A catalog is staged the same way but committed later, by
the caller, once everything it references is stored.

Thread-safety: an `ObjectCopier` may be used from several threads (storage, source and
counters are); a `StoringSink` belongs to one download.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.format.hashes import Suffix
from pycvmfs.network.sink import DEFAULT_MAX_BYTES, Destination, VerifyingSink, local_write_error
from pycvmfs.publisher.storage_protocol import ObjectSink, Storage
from pycvmfs.replica.plan import ObjectRef
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import error_context


class NullDestination:
    """Inflated bytes counted by the sink and dropped (file objects are stored compressed)."""

    def write(self, data: bytes) -> None:
        """Nothing to keep."""

    def reset(self) -> None:
        """Nothing to forget."""


class FileDestination:
    """Inflated bytes into a named file: SQLite opens catalogs and histories by path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise local_write_error(exc, str(path)) from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise local_write_error(exc, str(self.path)) from exc

    def reset(self) -> None:
        self._file.seek(0)
        self._file.truncate()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileDestination:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StoringSink(VerifyingSink):
    """A `VerifyingSink` whose stored bytes also go to a storage object sink (see the
    module docstring); `commit` names the object once verified, `abort` drops it."""

    def __init__(self, ref: ObjectRef, out: Destination, new_sink: Callable[[], ObjectSink],
                 *, max_size: int = DEFAULT_MAX_BYTES,
                 spool_dir: str | os.PathLike[str] | None = None) -> None:
        self._ref = ref
        self._new_sink = new_sink
        self._store: ObjectSink | None = None
        self._written = 0
        super().__init__(ref.content_hash, ref.compression, out, expected_size=ref.size,
                         max_size=max_size, spool_dir=spool_dir)

    @property
    def ref(self) -> ObjectRef:
        return self._ref

    def reset(self) -> None:
        super().reset()
        if self._store is not None and self._written == 0:
            return  # nothing written yet: the same temporary serves the next attempt
        self.abort()
        self._store = self._new_sink()
        self._written = 0

    def write(self, data: bytes) -> None:
        super().write(data)  # the budget is checked before a byte is stored
        if self._store is None:
            raise RuntimeError("write after commit or abort")
        self._store.write(data)
        self._written += len(data)

    def commit(self) -> bool:
        """Store the verified bytes under the object's name; True when it is new."""
        store, self._store = self._store, None
        if store is None:
            raise RuntimeError("commit after commit or abort")
        return store.commit(self._ref.content_hash, self._ref.suffix)

    def abort(self) -> None:
        """Drop what was written (idempotent)."""
        store, self._store = self._store, None
        if store is not None:
            store.abort()

    def close(self) -> None:
        super().close()
        self.abort()

    def __enter__(self) -> StoringSink:
        return self


@dataclass(slots=True)
class Counts:
    """What a snapshot did so far (read under `lock` for a consistent view)."""

    copied: int = 0  # objects stored (files, chunks, catalogs, history, certificate)
    present: int = 0  # objects the replica held already
    catalogs: int = 0  # of `copied`, catalogs
    bytes: int = 0  # stored bytes copied
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, copied: int = 0, present: int = 0, catalogs: int = 0,
            nbytes: int = 0) -> None:
        with self.lock:
            self.copied += copied
            self.present += present
            self.catalogs += catalogs
            self.bytes += nbytes

    def view(self) -> tuple[int, int, int, int]:
        """(copied, present, catalogs, bytes), consistent."""
        with self.lock:
            return self.copied, self.present, self.catalogs, self.bytes


class ObjectCopier:
    """Objects from `source` into `storage`, each verified first, counted in `counts`."""

    def __init__(self, source: ObjectSource, storage: Storage, fqrn: str, counts: Counts,
                 *, spool_dir: Path, on_progress: Callable[[], None] = lambda: None) -> None:
        self.source = source
        self.storage = storage
        self.fqrn = fqrn
        self.counts = counts
        self._spool_dir = spool_dir
        self._on_progress = on_progress

    def present(self, ref: ObjectRef) -> bool:
        """Whether the replica holds `ref` already (counted as present when it does)."""
        if self.storage.has_object(ref.content_hash, ref.suffix):
            self.counts.add(present=1)
            self._on_progress()
            return True
        return False

    def copy(self, ref: ObjectRef, *, max_size: int = DEFAULT_MAX_BYTES,
             what: str = "") -> bool:
        """Copy `ref` unless the replica holds it; True when it was stored now."""
        if self.present(ref):
            return False
        with self.stage(ref, NullDestination(), max_size=max_size, what=what) as staged:
            return self.store(staged)

    def stage(self, ref: ObjectRef, out: Destination, *, max_size: int = DEFAULT_MAX_BYTES,
              what: str = "") -> StoringSink:
        """Download and verify `ref` into an uncommitted storage object (the caller
        commits it with `store`, or closes it to drop it)."""
        sink = StoringSink(ref, out, self.storage.object_sink, max_size=max_size,
                           spool_dir=self._spool_dir)
        try:
            with error_context(self.fqrn, self.source, what or f"object {ref.path}"):
                self.source.fetch_into(ref.path, sink)
        except BaseException:
            sink.close()
            raise
        return sink

    def store(self, staged: StoringSink) -> bool:
        """Commit a staged object and count it."""
        new = staged.commit()
        if new:
            catalog = 1 if staged.ref.suffix is Suffix.CATALOG else 0
            self.counts.add(copied=1, catalogs=catalog, nbytes=staged.compressed_bytes)
        else:
            self.counts.add(present=1)
        self._on_progress()
        return new


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
