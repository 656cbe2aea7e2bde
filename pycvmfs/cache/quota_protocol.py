"""What the cache host asks of a quota manager (`Quota`), the object kinds of the index,
and `NoopQuota` for unmanaged and alien caches; the SQLite LRU is `quota.py`."""

from __future__ import annotations

import enum
from typing import Protocol

from pycvmfs.format.hashes import ContentHash

MEGABYTE = 1 << 20
UNLIMITED = -1  # CVMFS_QUOTA_LIMIT=-1: unmanaged cache

Key = ContentHash | str


class ObjectKind(enum.IntEnum):
    """`cache_catalog.type`."""

    REGULAR = 0
    CATALOG = 1


class Quota(Protocol):
    """What the cache host asks of a quota manager; keys are textual hashes. `insert` is
    called after the object's file is in place; if it raises `CacheFullError` it has
    removed that file (atomically with the index, so no neighbour's row loses its file)."""

    def insert(
        self, key: Key, size: int, *, kind: ObjectKind = ..., volatile: bool = ...
    ) -> None: ...
    def touch(self, key: Key) -> None: ...
    def pin(self, key: Key, size: int) -> None: ...
    def unpin(self, key: Key) -> None: ...
    def open_ref(self, key: Key) -> None: ...
    def close_ref(self, key: Key) -> None: ...
    def remove(self, key: Key) -> None: ...
    def cleanup(self, target: int) -> int: ...
    def size(self) -> int: ...
    def pinned(self) -> dict[str, int]: ...
    def pinned_size(self) -> int: ...
    def pin_pressure(self) -> bool: ...
    def evictions(self) -> tuple[int, int]: ...
    def capacity(self) -> int: ...
    def max_object_size(self) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class NoopQuota:
    """Unmanaged and alien caches: nothing is counted, nothing is evicted."""

    def insert(
        self, key: Key, size: int, *, kind: ObjectKind = ObjectKind.REGULAR,
        volatile: bool = False,
    ) -> None:
        pass

    def touch(self, key: Key) -> None:
        pass

    def pin(self, key: Key, size: int) -> None:
        pass

    def unpin(self, key: Key) -> None:
        pass

    def open_ref(self, key: Key) -> None:
        pass

    def close_ref(self, key: Key) -> None:
        pass

    def remove(self, key: Key) -> None:
        pass

    def cleanup(self, target: int) -> int:
        return 0

    def size(self) -> int:
        return 0

    def pinned(self) -> dict[str, int]:
        return {}

    def pinned_size(self) -> int:
        return 0

    def pin_pressure(self) -> bool:
        return False

    def evictions(self) -> tuple[int, int]:
        return 0, 0

    def capacity(self) -> int:
        return UNLIMITED

    def max_object_size(self) -> int:
        return UNLIMITED

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
