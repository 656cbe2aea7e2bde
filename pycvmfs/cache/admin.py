"""Library side of `pycvmfs cache status|clean|verify` (the CLI only prints).

What `verify` can and cannot check: the cache holds *decompressed* objects, but their
names are hashes of the *compressed* bytes, so an object's content cannot be re-verified
from its name (the reference has the same limitation; content is verified once, while it
streams in). `verify` therefore checks structure: the sentinel, object names, index rows
against files (orphans: files the index does not know; missing: rows without files),
sizes against the index, leftover transaction files of dead writers. It reports, it
does not repair; `clean` evicts every unpinned object.

Process-safety: all three may run while mounts use the cache. `verify` holds the index
lock while it compares, so it sees no half-done cleanup; an object renamed into place by
a live process a moment before it is indexed can show up as a transient orphan.
`clean` goes through `SqliteLruQuota.cleanup`, so live processes' pins are honoured.
"""

from __future__ import annotations

import enum
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.cache.breadcrumb import BREADCRUMB_PREFIX, read_breadcrumb
from pycvmfs.cache.cachedb import CACHEDB_NAME, is_hash_text
from pycvmfs.cache.quota import SqliteLruQuota
from pycvmfs.cache.shared import CacheLock, owner_alive
from pycvmfs.cache.store import (
    QUARANTINE_DIR_NAME,
    SENTINEL_NAME,
    TXN_DIR_NAME,
    iter_object_files,
    object_relpath,
)
from pycvmfs.errors import NotFoundError

CLEAN_LIMIT_BYTES = 1 << 62  # `clean` needs a quota object; the limit plays no role


class ProblemKind(enum.Enum):
    NO_SENTINEL = "no .cvmfscache sentinel"
    BAD_NAME = "file name is not a content hash"
    ORPHAN = "object not in the index"
    MISSING = "indexed object has no file"
    SIZE = "file size differs from the index"
    INDEX_UNREADABLE = "cachedb cannot be read"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    key: str
    detail: str = ""


def _require_cache(directory: Path) -> None:
    if not directory.is_dir():
        raise NotFoundError(f"no cache directory at {directory}")


def _read_index(directory: Path) -> tuple[dict[str, tuple[int, int]], dict[str, int]] | None:
    """{key: (size, type)} and live pins {key: size}, read-only; None without an index."""
    path = directory / CACHEDB_NAME
    if not path.exists():
        return None
    # Not `mode=ro`: a read-only connection cannot open a WAL database whose -shm file
    # is gone (it is deleted when the last writer closes). We only read.
    conn = sqlite3.connect(path, timeout=60.0)
    try:
        rows = conn.execute("SELECT sha1, size, type FROM cache_catalog").fetchall()
        pins = conn.execute("SELECT sha1, owner, size FROM pins").fetchall()
    finally:
        conn.close()
    index = {k: (int(s), int(t or 0)) for k, s, t in rows}
    live = {k: int(s) for k, o, s in pins if owner_alive(o)}
    return index, live


def cache_status(directory: Path | str) -> dict[str, object]:
    """Counts and sizes for humans and monitoring; reads only."""
    directory = Path(directory)
    _require_cache(directory)
    files = [(k, s) for k, s, _ in iter_object_files(directory)]
    status: dict[str, object] = {
        "directory": str(directory),
        "objects": len(files),
        "bytes": sum(s for _, s in files),
        "txn_files": len(os.listdir(directory / TXN_DIR_NAME))
        if (directory / TXN_DIR_NAME).is_dir() else 0,
        "quarantined": len(os.listdir(directory / QUARANTINE_DIR_NAME))
        if (directory / QUARANTINE_DIR_NAME).is_dir() else 0,
        "breadcrumbs": _breadcrumbs(directory),
        "managed": False,
    }
    try:
        index = _read_index(directory)
    except sqlite3.DatabaseError as exc:
        status["index_error"] = str(exc)
        return status
    if index is not None:
        rows, pins = index
        status.update(
            managed=True,
            indexed_objects=len(rows),
            indexed_bytes=sum(s for s, _ in rows.values()),
            catalogs=sum(1 for _, t in rows.values() if t == 1),
            pinned_bytes=sum(pins.values()),
        )
    return status


def _breadcrumbs(directory: Path) -> dict[str, str]:
    found = {}
    for entry in directory.glob(f"{BREADCRUMB_PREFIX}*"):
        fqrn = entry.name[len(BREADCRUMB_PREFIX) :]
        crumb = read_breadcrumb(directory, fqrn)
        found[fqrn] = crumb.serialize() if crumb is not None else "unreadable"
    return found


def clean(directory: Path | str) -> int:
    """Evict every object not pinned by a live process; returns bytes freed. Unmanaged
    and alien caches (no index) lose every object."""
    directory = Path(directory)
    _require_cache(directory)
    if not (directory / CACHEDB_NAME).exists():
        freed = 0
        for key, size, _ in list(iter_object_files(directory)):
            try:
                os.unlink(directory / object_relpath(key))
            except FileNotFoundError:
                continue
            freed += size
        return freed
    with SqliteLruQuota(directory, CLEAN_LIMIT_BYTES) as quota:
        return quota.cleanup(0)


def verify(directory: Path | str) -> list[Problem]:
    """Structural problems of a cache directory (see the module docstring)."""
    directory = Path(directory)
    _require_cache(directory)
    problems: list[Problem] = []
    if not (directory / SENTINEL_NAME).exists():
        problems.append(Problem(ProblemKind.NO_SENTINEL, "", str(directory)))
    lock = CacheLock(directory) if (directory / CACHEDB_NAME).exists() else None
    try:
        if lock is not None:
            lock.__enter__()
        files = {k: s for k, s, _ in iter_object_files(directory)}
        try:
            index = _read_index(directory)
        except sqlite3.DatabaseError as exc:
            problems.append(Problem(ProblemKind.INDEX_UNREADABLE, CACHEDB_NAME, str(exc)))
            index = None
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
            lock.close()
    problems += _compare(files, None if index is None else index[0])
    return problems


def _compare(files: dict[str, int], index: dict[str, tuple[int, int]] | None) -> list[Problem]:
    problems = []
    for key, size in sorted(files.items()):
        if not is_hash_text(key):
            problems.append(Problem(ProblemKind.BAD_NAME, key, object_relpath(key)))
        elif index is not None and key not in index:
            problems.append(Problem(ProblemKind.ORPHAN, key, f"{size} bytes"))
        elif index is not None and index[key][0] != size:
            problems.append(
                Problem(ProblemKind.SIZE, key, f"file {size} bytes, index {index[key][0]}")
            )
    for key in sorted((index or {}).keys() - files.keys()):
        problems.append(Problem(ProblemKind.MISSING, key))
    return problems
