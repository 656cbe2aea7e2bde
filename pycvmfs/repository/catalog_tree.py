"""Path -> (entry, catalog) across nested catalogs, loading children on demand.

The tree owns which catalogs are attached and the walk of fact sheet 6.13; it knows nothing
about downloading: `load(hash, mountpoint)` hands it an opened `Catalog` (style R13), so the
same tree serves the no-FUSE reader, the FUSE client and unit tests that write catalogs with
the publisher.

Walk (6.13): for a path P, start in the deepest attached catalog whose mountpoint is a proper
path-prefix of P (so a mountpoint itself is answered by its parent's entry, flag 2). If P is
not there, find the nested catalog whose mountpoint M has P == M or P under M/, attach it
and repeat. Listing a mountpoint lists the child catalog.

Thread-safety: all methods may be called from any thread. Attaching is single-flight: when
several threads need the same nested catalog, one loads it and the others wait for that
result; lookups in already attached catalogs never wait for a load.

Caveats: bind mountpoints (snapshot links to other root catalogs, whose paths would need
rewriting) are listed by `Catalog.nested_catalogs()` but not entered: descending into one
raises PycvmfsError.

Pressure: `detach_nested` drops every nested catalog at once (the reference does the same
when the cache is crowded with pinned catalogs: `crowded()` says so before each load);
they are released at once (unpinned) but closed only at the next detach or at `close`,
so a lookup already running in one finishes; the next lookup attaches them again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import NamedTuple

from pycvmfs.errors import CatalogError, NotFoundError, PycvmfsError
from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.hashes import ContentHash
from pycvmfs.repository.catalog import Catalog, NestedRef
from pycvmfs.repository.integrity import report_once

CatalogLoader = Callable[[ContentHash, str], Catalog]
ROOT_PREFIXES = ("", "/")  # a root catalog has no root_prefix (some writers store "/")


class WouldLoadError(Exception):
    """Raised instead of loading a catalog while `CatalogTree.no_loading()` is active: the
    caller was about to block on a download and should retry where blocking is fine. Not
    a PycvmfsError on purpose: nothing may turn it into an I/O error on the way up."""


_loading = threading.local()


class no_loading:  # noqa: N801 - used like the function it replaces: `with no_loading():`
    """In this thread, answer only from attached catalogs (`WouldLoadError` otherwise):
    an event loop can then run lookups inline and hand only the rest to a thread. A class,
    not a generator: it wraps every FUSE request."""

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        self._previous = getattr(_loading, "forbidden", False)
        _loading.forbidden = True

    def __exit__(self, *exc: object) -> None:
        _loading.forbidden = self._previous


class Resolved(NamedTuple):
    """A path's entry and the catalog that holds it (the parent's, for a mountpoint)."""

    entry: DirEntry
    catalog: Catalog


def _under(path: str, mountpoint: str) -> bool:
    return path == mountpoint or path.startswith(mountpoint + "/")


class CatalogTree:
    """Attached catalogs of one root catalog, keyed by mountpoint ('' is the root)."""

    def __init__(self, root_hash: ContentHash, load: CatalogLoader, *,
                 crowded: Callable[[], bool] = lambda: False) -> None:
        self.root_hash = root_hash
        self._load = load
        self._crowded = crowded  # pinned catalogs crowd the cache (`detach_nested` first)
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Catalog]] = {}
        root = load(root_hash, "")
        if root.root_prefix not in ROOT_PREFIXES:
            root.close()
            raise CatalogError(f"root catalog {root_hash} has root_prefix "
                               f"{root.root_prefix!r}: it is a nested catalog")
        self._attached: dict[str, Catalog] = {"": root}
        self._retired: list[Catalog] = []

    @property
    def root(self) -> Catalog:
        return self._attached[""]

    def attached(self) -> dict[str, Catalog]:
        """Snapshot of the attached catalogs by mountpoint."""
        with self._lock:
            return dict(self._attached)

    def _containing(self, path: str) -> Catalog:
        """Deepest attached catalog whose mountpoint is a proper prefix of `path`."""
        prefix = path
        while prefix:
            prefix = prefix.rsplit("/", 1)[0]
            catalog = self._attached.get(prefix)
            if catalog is not None:
                return catalog
        return self._attached[""]

    def resolve(self, path: str) -> Resolved | None:
        """Entry for absolute `path` ('' = root, '/a/b' otherwise), or None.

        Bounded: every hop enters a catalog mounted strictly deeper (`Catalog` refuses other
        references), so a walk takes at most one hop per path component; a graph that still
        loops is an integrity error, not a hang."""
        catalog = self._containing(path)
        visited = {catalog.root_prefix}
        for _ in range(path.count("/") + 1):
            entry = catalog.lookup(path)
            if entry is not None:
                return Resolved(entry, catalog)
            ref = _nested_for(catalog, path)
            if ref is None:
                return None
            catalog = self._attach(catalog, ref)
            if catalog.root_prefix in visited:
                break
            visited.add(catalog.root_prefix)
        raise _integrity_error(f"catalog {self.root_hash}: the walk to {path or '/'} loops "
                               f"through nested catalogs {sorted(visited)}")

    def lookup(self, path: str) -> Resolved:
        """Like `resolve`, but NotFoundError instead of None."""
        found = self.resolve(path)
        if found is None:
            raise NotFoundError(f"{path or '/'}: no such file or directory")
        return found

    def listing_catalog(self, path: str, resolved: Resolved) -> Catalog:
        """The catalog holding the children of directory `path` (the child at a mountpoint)."""
        entry, catalog = resolved
        mountpoint = entry.is_nested_mountpoint or entry.is_bind_mountpoint
        if not mountpoint or catalog.root_prefix == path:
            return catalog
        for ref in catalog.nested_catalogs():
            if ref.path == path:
                return self._attach(catalog, ref)
        problem = catalog.broken_refs().get(path)
        raise _integrity_error(problem or f"{path}: marked as a nested catalog mountpoint, but "
                               f"catalog {catalog.content_hash or catalog.path} lists no "
                               "catalog there")

    def listdir(self, path: str) -> list[tuple[str, DirEntry]]:
        """(name, entry) of the non-hidden children of directory `path`, database order."""
        resolved = self.lookup(path)
        if not resolved.entry.is_dir:
            raise NotFoundError(f"{path or '/'}: not a directory")
        return self.listing_catalog(path, resolved).listdir(path)

    def _attach(self, parent: Catalog, ref: NestedRef) -> Catalog:
        """Attach the child `ref` of `parent` once, however many threads ask for it."""
        with self._lock:
            catalog = self._attached.get(ref.path)
            if catalog is not None:
                return catalog
            if getattr(_loading, "forbidden", False):
                raise WouldLoadError(ref.path)
            future = self._inflight.get(ref.path)
            leader = future is None
            if future is None:
                future = self._inflight[ref.path] = Future()
        if not leader:
            return future.result()
        try:
            catalog = self._load_child(parent, ref)
            with self._lock:
                self._attached[ref.path] = catalog
            future.set_result(catalog)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._inflight[ref.path]
        return catalog

    def _load_child(self, parent: Catalog, ref: NestedRef) -> Catalog:
        if any(bind.path == ref.path for bind in parent.bind_mountpoints()):
            raise PycvmfsError(f"{ref.path}: bind mountpoints (links to other root catalogs) "
                               "are not supported yet")
        if self._crowded():
            self.detach_nested()
        catalog = self._load(ref.hash, ref.path)  # the loader checks the content hash
        if catalog.root_prefix != ref.path:
            catalog.close()
            raise _integrity_error(f"nested catalog {ref.hash} mounted at {ref.path} has "
                                   f"root_prefix {catalog.root_prefix!r}: it is not the "
                                   "catalog of that directory")
        return catalog

    def detach_nested(self) -> int:
        """Detach every nested catalog (see the module docstring); how many were."""
        with self._lock:
            detached = [c for path, c in self._attached.items() if path]
            self._attached = {"": self._attached[""]}
            retired, self._retired = self._retired, detached
        for catalog in retired:
            catalog.close()
        for catalog in detached:
            catalog.release()
        return len(detached)

    def close(self) -> None:
        """Close every attached catalog; the tree is unusable afterwards."""
        with self._lock:
            catalogs, self._attached = list(self._attached.values()), {}
            catalogs += self._retired
            self._retired = []
        for catalog in catalogs:
            catalog.close()


def _nested_for(catalog: Catalog, path: str) -> NestedRef | None:
    """The direct child catalog of `catalog` whose mountpoint is `path` or above it; a
    refused reference there makes the path an integrity error (EIO for that subtree)."""
    for ref in catalog.nested_catalogs():
        if _under(path, ref.path):
            return ref
    for mountpoint, problem in catalog.broken_refs().items():
        if _under(path, mountpoint):
            raise _integrity_error(problem)
    return None


def _integrity_error(message: str) -> CatalogError:
    """A CatalogError for a hostile catalog graph, logged once (`integrity.report_once`)."""
    report_once(message)
    return CatalogError(message)
