"""Whom a cache directory belongs to (the ownership marker) and what it is called (`uuid`).

Why a marker: the cache holds *decompressed* objects under the hash of their *compressed*
bytes, so an object cannot be re-verified once it is in the cache; it is trusted because
the mounting user wrote it after verifying it. Objects found in a directory this user did
not create — one another user prepared, one that was writable by others for a while, one
from before an ownership change (`chown -R`), or one from an older pycvmfs — carry no such
guarantee. Verifying them on first use is impossible, so they are discarded.

The mechanism: when a mount creates its cache directory it creates `.pycvmfs-owner` with
`O_EXCL|O_NOFOLLOW`, naming the owner's uid (alien cache: the group's gid). A directory
that passes the `safe_dir` checks but lacks a valid marker (a regular file of the owner,
one link, exactly the expected text) has its objects, transaction and quarantine files,
index and breadcrumbs deleted before use, with a log line, and then gets its marker. A
directory that is not the user's, or not safe, never gets here: `safe_dir` refuses it.
`claim` runs under the cache lock (`lock_cachedb`), so two mounts starting together do not
discard each other's first objects; the alien cache has no lock (shared file systems),
there the exclusive create of the marker decides and at worst a fresh object is fetched
again.

`cache_uuid` keeps the cache's random id (`<cache>/uuid`, sent to the Geo API instead of a
proxy name): read through the checked directory, replaced when it is not a UUID.
"""

from __future__ import annotations

import logging
import os
import uuid

from pycvmfs.cache.breadcrumb import BREADCRUMB_PREFIX
from pycvmfs.cache.cachedb import index_files
from pycvmfs.cache.safe_dir import SafeDir
from pycvmfs.cache.store import OBJECT_DIRS, QUARANTINE_DIR_NAME, TXN_DIR_NAME
from pycvmfs.errors import CacheSecurityError, PycvmfsError

log = logging.getLogger(__name__)

MARKER_NAME = ".pycvmfs-owner"
MARKER_MAX_BYTES = 256
MARKER_MODE = 0o644
UUID_NAME = "uuid"
UUID_MAX_BYTES = 128


def marker_text(directory: SafeDir) -> bytes:
    trust = directory.trust
    if trust.alien:
        return f"pycvmfs alien cache of gid {trust.gid}\n".encode()
    return f"pycvmfs cache of uid {trust.uid}\n".encode()


def marker_problem(directory: SafeDir) -> str | None:
    """Why the directory's marker does not vouch for its contents (None if it does)."""
    try:
        found = directory.read_file(MARKER_NAME, MARKER_MAX_BYTES)
    except CacheSecurityError as exc:
        return str(exc).partition(": pycvmfs")[0]
    except OSError as exc:
        return f"{MARKER_NAME} cannot be read ({exc.strerror})"
    if found is None:
        return f"no {MARKER_NAME}"
    if found != marker_text(directory):
        return f"{MARKER_NAME} names another owner ({found[:80]!r})"
    return None


def claim(directory: SafeDir) -> int:
    """Make sure the directory's contents were written by its owner (see the module
    docstring); returns how many files were discarded. Call under the cache lock."""
    if directory.created and _create_marker(directory):
        return 0
    problem = marker_problem(directory)
    if problem is None:
        return 0
    discarded = discard_contents(directory)
    log.log(logging.WARNING if discarded else logging.INFO,
            "cache directory %s: %s; discarded %d files (objects, index, breadcrumbs): "
            "pycvmfs only serves objects this user wrote into a directory it created",
            directory.path, problem, discarded)
    directory.unlink(MARKER_NAME)
    if not _create_marker(directory) and marker_problem(directory) is not None:
        raise CacheSecurityError(f"{directory.path / MARKER_NAME}: created by someone else "
                                 "while pycvmfs was claiming the cache directory; remove "
                                 f"{directory.path} and mount again")
    return discarded


def _create_marker(directory: SafeDir) -> bool:
    """Create the marker exclusively; False if one is there already."""
    try:
        fd = os.open(MARKER_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, MARKER_MODE, dir_fd=directory.fd)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), MARKER_MODE)
        fh.write(marker_text(directory))
    return True


def discard_contents(directory: SafeDir) -> int:
    """Delete what the cache may hold from an untrusted past: every entry of the object,
    transaction and quarantine directories, the index, breadcrumbs and the uuid. Layout
    directories are opened with the same checks as for use (a planted link is refused);
    subdirectories and unknown files are left alone."""
    removed = 0
    for name in (*OBJECT_DIRS, TXN_DIR_NAME, QUARANTINE_DIR_NAME):
        try:
            sub = directory.subdir(name, create=False)
        except FileNotFoundError:
            continue
        with sub:
            for entry in sub.names():
                removed += _unlink_quietly(sub, entry)
    ours = {*index_files(), UUID_NAME}
    for entry in directory.names():
        if entry in ours or entry.startswith((BREADCRUMB_PREFIX, "." + BREADCRUMB_PREFIX)):
            removed += _unlink_quietly(directory, entry)
    return removed


def _unlink_quietly(directory: SafeDir, name: str) -> int:
    try:
        return int(directory.unlink(name))
    except IsADirectoryError:
        return 0
    except OSError as exc:
        log.warning("cannot remove %s: %s", directory.path / name, exc.strerror)
        return 0


def cache_uuid(directory: SafeDir) -> str:
    """The cache's stable random id; a new one (kept if possible) when there is none or
    what is there is not a UUID or not a regular file of the cache owner."""
    try:
        found = directory.read_file(UUID_NAME, UUID_MAX_BYTES)
        if found is not None:
            return str(uuid.UUID(found.decode("ascii").strip()))
    except (OSError, PycvmfsError, ValueError):
        pass
    fresh = str(uuid.uuid4())
    try:
        directory.write_file(UUID_NAME, f"{fresh}\n".encode(), MARKER_MODE)
    except OSError as exc:
        log.info("cannot keep the cache uuid in %s: %s", directory.path, exc.strerror)
    return fresh
