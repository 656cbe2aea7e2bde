"""Library side of `pycvmfs cache status|clean|verify` (the CLI only prints).

What `verify` can and cannot check: the cache holds *decompressed* objects, but their
names are hashes of the *compressed* bytes, so an object's content cannot be re-verified
from its name (the reference has the same limitation; content is verified once, while it
streams in). `verify` therefore checks structure: the sentinel and the ownership marker
(`identity`), the layout directories and object entries against the `safe_dir` rules
(symlinks, other users' files, special files), object names, index rows against files
(orphans: files the index does not know; missing: rows without files), sizes against the
index. It reports, it does not repair; `clean` evicts every unpinned object.

Other users: every command opens the directory as a mount does (`safe_dir`: refused when
it, or a component below its base, is a symlink, another user's or writable by others;
`alien=True` for an alien cache shared by a group), and works through its descriptor —
`clean` never deletes through a planted link.

Process-safety: all three may run while mounts use the cache. `verify` holds the index
lock while it compares, so it sees no half-done cleanup; an object a live process stored
but has not indexed yet (it indexes small objects in batches of 32 commands, or 5 s at
its next command: `quota.py`) shows up as a transient orphan.
`clean` goes through `SqliteLruQuota.cleanup`, so live processes' pins are honoured.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.cache.breadcrumb import BREADCRUMB_PREFIX, read_breadcrumb
from pycvmfs.cache.cachedb import CACHEDB_NAME, is_hash_text
from pycvmfs.cache.identity import marker_problem
from pycvmfs.cache.quota import SqliteLruQuota
from pycvmfs.cache.safe_dir import SafeDir, Trust, file_problem, open_directory
from pycvmfs.cache.shared import CacheLock, owner_alive
from pycvmfs.cache.store import (
    OBJECT_DIRS,
    QUARANTINE_DIR_NAME,
    SENTINEL_NAME,
    TXN_DIR_NAME,
    iter_object_entries,
    object_relpath,
)
from pycvmfs.errors import CacheSecurityError, ConfigError, NotFoundError

CLEAN_LIMIT_BYTES = 1 << 62  # `clean` needs a quota object; the limit plays no role


class ProblemKind(enum.Enum):
    NO_SENTINEL = "no .cvmfscache sentinel"
    NO_MARKER = "no valid ownership marker (the next mount discards the objects)"
    UNSAFE_DIRECTORY = "layout directory refused"
    UNTRUSTED_ENTRY = "object entry refused (removed and fetched again when used)"
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


def open_cache(directory: Path | str, *, alien: bool = False,
               base: Path | str | None = None) -> SafeDir:
    """The existing cache directory, checked as a mount checks it (see the docstring)."""
    try:
        return open_directory(directory, Trust(alien=alien), base=base, create=False)
    except FileNotFoundError:
        raise NotFoundError(f"no cache directory at {directory}") from None
    except OSError as exc:
        raise ConfigError(f"cannot open cache directory {directory}: {exc.strerror}; run "
                          "the command as the user who mounts with it") from exc


def _read_index(root: SafeDir) -> tuple[dict[str, tuple[int, int]], dict[str, int]] | None:
    """{key: (size, type)} and live pins {key: size}, read-only; None without an index."""
    st = root.lstat(CACHEDB_NAME)
    if st is None:
        return None
    problem = file_problem(st, root.trust)
    if problem is not None:
        raise sqlite3.DatabaseError(f"{CACHEDB_NAME} {problem}")
    # Not `mode=ro`: a read-only connection cannot open a WAL database whose -shm file
    # is gone (it is deleted when the last writer closes). We only read.
    conn = sqlite3.connect(root.proc_path(CACHEDB_NAME), timeout=60.0)
    try:
        rows = conn.execute("SELECT sha1, size, type FROM cache_catalog").fetchall()
        pins = conn.execute("SELECT sha1, owner, size FROM pins").fetchall()
    finally:
        conn.close()
    index = {k: (int(s), int(t or 0)) for k, s, t in rows}
    live = {k: int(s) for k, o, s in pins if owner_alive(o)}
    return index, live


def _objects(root: SafeDir) -> tuple[dict[str, int], dict[str, str]]:
    """({key: size} of trustworthy object files, {key: problem} of every other entry)."""
    files: dict[str, int] = {}
    refused: dict[str, str] = {}
    for key, st in iter_object_entries(root):
        problem = file_problem(st, root.trust, links=False)
        if problem is None:
            files[key] = st.st_size
        else:
            refused[key] = problem
    return files, refused


def _count(root: SafeDir, name: str) -> int:
    try:
        with root.subdir(name, create=False) as sub:
            return len(sub.names())
    except (OSError, CacheSecurityError):
        return 0


def cache_status(directory: Path | str, *, alien: bool = False,
                 base: Path | str | None = None) -> dict[str, object]:
    """Counts and sizes for humans and monitoring; reads only."""
    with open_cache(directory, alien=alien, base=base) as root:
        files, refused = _objects(root)
        status: dict[str, object] = {
            "directory": str(root.path),
            "objects": len(files),
            "bytes": sum(files.values()),
            "refused_entries": len(refused),
            "txn_files": _count(root, TXN_DIR_NAME),
            "quarantined": _count(root, QUARANTINE_DIR_NAME),
            "breadcrumbs": _breadcrumbs(root),
            "owner_marker": marker_problem(root) or "ok",
            "managed": False,
        }
        try:
            index = _read_index(root)
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


def _breadcrumbs(root: SafeDir) -> dict[str, str]:
    found = {}
    for name in sorted(root.names()):
        if not name.startswith(BREADCRUMB_PREFIX):
            continue
        fqrn = name[len(BREADCRUMB_PREFIX) :]
        crumb = read_breadcrumb(root, fqrn)
        found[fqrn] = crumb.serialize() if crumb is not None else "unreadable"
    return found


def clean(directory: Path | str, *, alien: bool = False,
          base: Path | str | None = None) -> int:
    """Evict every object not pinned by a live process; returns bytes freed. Unmanaged
    and alien caches (no index) lose every object."""
    with open_cache(directory, alien=alien, base=base) as root:
        if root.lstat(CACHEDB_NAME) is None:
            freed = 0
            for key, st in list(iter_object_entries(root)):
                if stat.S_ISDIR(st.st_mode):
                    continue
                try:
                    os.unlink(object_relpath(key), dir_fd=root.fd)  # the entry, never a target
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    freed += st.st_size
            return freed
        with SqliteLruQuota(root, CLEAN_LIMIT_BYTES) as quota:
            return quota.cleanup(0)


def verify(directory: Path | str, *, alien: bool = False,
           base: Path | str | None = None) -> list[Problem]:
    """Structural problems of a cache directory (see the module docstring)."""
    problems: list[Problem] = []
    with open_cache(directory, alien=alien, base=base) as root:
        if root.lstat(SENTINEL_NAME) is None:
            problems.append(Problem(ProblemKind.NO_SENTINEL, "", str(root.path)))
        marker = marker_problem(root)
        if marker is not None:
            problems.append(Problem(ProblemKind.NO_MARKER, "", marker))
        problems += _layout_problems(root)
        lock = CacheLock(root) if root.lstat(CACHEDB_NAME) is not None else None
        try:
            if lock is not None:
                lock.__enter__()
            files, refused = _objects(root)
            try:
                index = _read_index(root)
            except sqlite3.DatabaseError as exc:
                problems.append(Problem(ProblemKind.INDEX_UNREADABLE, CACHEDB_NAME, str(exc)))
                index = None
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
                lock.close()
    problems += [Problem(ProblemKind.UNTRUSTED_ENTRY, key, detail)
                 for key, detail in sorted(refused.items())]
    problems += _compare(files, None if index is None else index[0], set(refused))
    return problems


def _layout_problems(root: SafeDir) -> list[Problem]:
    problems = []
    for name in (*OBJECT_DIRS, TXN_DIR_NAME, QUARANTINE_DIR_NAME):
        try:
            root.subdir(name, create=False).close()
        except FileNotFoundError:
            continue
        except CacheSecurityError as exc:
            problems.append(Problem(ProblemKind.UNSAFE_DIRECTORY, name, str(exc)))
    return problems


def _compare(files: dict[str, int], index: dict[str, tuple[int, int]] | None,
             refused: set[str]) -> list[Problem]:
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
    for key in sorted((index or {}).keys() - files.keys() - refused):
        problems.append(Problem(ProblemKind.MISSING, key))
    return problems
