"""What the publisher, `gc` and `whitelist sign` need from a repository storage.

Two storages implement it: a local directory (publisher.storage.LocalStorage) and an S3
bucket (publisher.storage_s3.S3Storage). The operations say what they mean for a
Stratum-0/1 layout rather than how: an object is stored once under its hash (never
rewritten), a named file (`.cvmfspublished`, `.cvmfswhitelist`) is replaced whole, and
`put_file` is a barrier: every object stored before it is durable before the file
appears, so readers never see a manifest whose objects are missing. A replica writer
needs exactly has_object, put_object and put_file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pycvmfs.format.hashes import ContentHash, Suffix


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One file below `data/` as a listing sees it (for `gc`)."""

    fanout: str  # the two hex digits of data/XX
    name: str  # the rest of the object name, with its suffix
    size: int  # bytes as stored

    @property
    def relative(self) -> str:
        return f"data/{self.fanout}/{self.name}"


class ObjectSink(Protocol):
    """An object being written whose name is known only at the end (its hash)."""

    def write(self, stored: bytes | memoryview) -> None: ...

    def commit(self, content_hash: ContentHash, suffix: Suffix) -> bool:
        """Store the bytes under the object's name; True when a new object appeared."""
        ...

    def abort(self) -> None:
        """Drop what was written; idempotent."""
        ...


class Storage(Protocol):
    """A repository storage laid out as a Stratum-1 serves it."""

    @property
    def location(self) -> str:
        """Where it is, for messages: a directory path or s3://BUCKET/PREFIX."""
        ...

    def describe(self, relative: str) -> str:
        """`relative` inside the storage, for messages."""
        ...

    def prepare(self) -> None:
        """Check (or create) the storage itself, before the lock is taken."""
        ...

    def create_layout(self) -> None: ...

    def clean_temporaries(self) -> None:
        """Remove what interrupted publishes left behind (only called under the lock)."""
        ...

    def has_layout(self) -> bool:
        """Whether this looks like a repository storage at all (for `gc`)."""
        ...

    def lock(self) -> AbstractContextManager[object]:
        """The publish lock: one publisher (or gc, or whitelist signer) at a time."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Objects created inside are removed again if the block fails."""
        ...

    def has_object(self, content_hash: ContentHash, suffix: Suffix = Suffix.NONE) -> bool: ...

    def put_object(self, content_hash: ContentHash, stored: bytes | memoryview,
                   suffix: Suffix = Suffix.NONE) -> bool:
        """Store an object unless it is already there; True when it is new."""
        ...

    def object_sink(self) -> ObjectSink: ...

    def read_object(self, content_hash: ContentHash, suffix: Suffix) -> bytes: ...

    def read_file(self, relative: str) -> bytes | None:
        """A named file (`.cvmfspublished`, ...); None when there is none."""
        ...

    def put_file(self, relative: str, data: bytes | memoryview, *, sync: bool = True) -> None:
        """Replace a named file, after every object stored so far is durable."""
        ...

    def scratch_dir(self) -> Path:
        """A local directory for temporary files (SQLite images being built)."""
        ...

    def memo_path(self, name: str) -> Path:
        """A local file for facts worth remembering between publishes (a cache)."""
        ...

    def list_objects(self) -> Iterator[StoredObject]:
        """Every regular file directly in data/00..ff."""
        ...

    def delete_objects(self, relatives: Iterable[str]) -> list[str]:
        """Delete these objects; returns those that were there and are gone now."""
        ...

    def close(self) -> None: ...
