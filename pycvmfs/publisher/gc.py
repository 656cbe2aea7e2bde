"""Garbage collection of a storage (directory or S3): delete objects no kept revision references.

Which revisions are kept (the "roots"):
  * always the trunk (the root catalog named by the current `.cvmfspublished`);
  * with `keep_tags` (the default) every tag of the current history database, which
    includes `trunk-previous` (the default undo target) and every named tag;
  * the `keep_revisions` revisions before the trunk, following the root catalogs'
    `previous_revision` property (tagged or not; the walk stops quietly at a revision an
    earlier collection already removed).

Referenced = every catalog of every kept root (root and nested, recursively), every whole
file (`hash` column) and every chunk (`chunks.hash`, suffix P) in them, plus the objects the
current manifest names (root catalog, certificate X, history H, meta-info M). Everything
else directly in `data/00`..`data/ff` whose name parses as an object with suffix "", P, C,
H, X or M is garbage: old catalogs, old history databases, contents and chunks only dropped
revisions used. `data/txn` and files whose names are not objects are never touched. A dry
run decides the same and deletes nothing.

Safety: the sweep holds the publisher's lock (no publish runs meanwhile); the manifest is
verified with the repository certificate before anything is decided; every catalog of a
kept revision is read and verified (content hash) before a single file is deleted, and a
missing or unreadable catalog of a kept revision aborts the collection (it cannot be known
what such a revision needs). A tag whose root catalog is already gone is skipped and
reported. References are matched by (digest, suffix), ignoring the algorithm id, so a
misread algorithm can only keep too much, never delete too much.

Caveats: with `keep_tags=False` tags left in the history that point to collected revisions
become unusable (reported in `GcResult.dropped_tags`); the manifest's G flag
(garbage-collectable, which tells Stratum-1s and clients about such sweeps) is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.errors import PublishError
from pycvmfs.format.compression import Compression, open_object
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.history import TRUNK
from pycvmfs.format.manifest import Manifest, verify_manifest
from pycvmfs.publisher.history_writer import read_tags
from pycvmfs.publisher.keys import RepositoryKeys
from pycvmfs.publisher.previous import MAX_METADATA_OBJECT_BYTES
from pycvmfs.publisher.sqlite_image import read_sqlite_rows
from pycvmfs.publisher.storage import MANIFEST_NAME
from pycvmfs.publisher.storage_factory import as_storage
from pycvmfs.publisher.storage_protocol import Storage

COLLECTABLE_SUFFIXES = frozenset({"", "P", "C", "H", "X", "M"})
ObjectKey = tuple[bytes, str]  # (raw digest, suffix character)

_OBJECT_NAME = re.compile(r"([0-9a-f]{38})(-rmd160|-shake128)?([A-Z]?)\Z")
_FILE_HASHES_SQL = "SELECT hash FROM catalog WHERE hash IS NOT NULL AND length(hash) > 0"
_CHUNK_HASHES_SQL = "SELECT hash FROM chunks WHERE hash IS NOT NULL AND length(hash) > 0"
_NESTED_SQL = "SELECT sha1 FROM nested_catalogs"
_BIND_SQL = "SELECT sha1 FROM bind_mountpoints"
_PROPERTY_SQL = "SELECT value FROM properties WHERE key = 'previous_revision'"
_TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table'"


class GcError(PublishError):
    """The collection refused to run (nothing was deleted)."""


@dataclass(frozen=True, slots=True)
class KeptRoot:
    """One kept revision: why (`trunk`, a tag name, `previous-N`) and its root catalog."""

    reason: str
    root_hash: str
    revision: int


@dataclass(slots=True)
class GcResult:
    kept: list[KeptRoot] = field(default_factory=list)
    referenced_objects: int = 0  # distinct (digest, suffix) the kept revisions need
    catalogs_read: int = 0
    objects_deleted: int = 0  # with dry_run: that would be deleted
    bytes_freed: int = 0  # sizes as stored (st_size)
    objects_remaining: int = 0
    bytes_remaining: int = 0
    dropped_tags: list[str] = field(default_factory=list)  # tags whose revision is not kept
    skipped_tags: list[str] = field(default_factory=list)  # root catalog already gone
    dry_run: bool = False
    deleted: list[str] = field(default_factory=list)  # relative paths (for tests and -v)


def collect_garbage(storage_dir: Path | str | Storage, fqrn: str, keys: RepositoryKeys, *,
                    keep_revisions: int = 0, keep_tags: bool = True,
                    dry_run: bool = False,
                    progress: Callable[[str], None] | None = None) -> GcResult:
    """Sweep `storage_dir` under the publisher's lock; see the module docstring."""
    if keep_revisions < 0:
        raise GcError("keep_revisions must not be negative")
    storage = as_storage(storage_dir)
    if not storage.has_layout():
        raise GcError(f"{storage.location} is not a repository storage (no data/)")
    say = progress or (lambda text: None)
    with storage.lock():
        manifest = _verified_manifest(storage, fqrn, keys)
        result = GcResult(dry_run=dry_run)
        referenced = _manifest_objects(manifest)
        roots = _kept_roots(storage, manifest, keep_revisions, keep_tags, result)
        seen_catalogs: set[ObjectKey] = set()
        for root in roots:
            say(f"marking {root.reason} (revision {root.revision}, {root.root_hash})")
            _mark_tree(storage, ContentHash.parse(root.root_hash), referenced, seen_catalogs,
                       what=root.reason)
        result.kept = roots
        result.catalogs_read = len(seen_catalogs)
        result.referenced_objects = len(referenced)
        _sweep(storage, referenced, result, dry_run)
    return result


def _verified_manifest(storage: Storage, fqrn: str, keys: RepositoryKeys) -> Manifest:
    raw = storage.read_file(MANIFEST_NAME)
    if raw is None:
        raise GcError(f"{storage.location} has no {MANIFEST_NAME}: nothing published, "
                      "nothing to collect")
    try:
        return verify_manifest(raw, keys.certificate, fqrn=fqrn)
    except Exception as exc:
        raise GcError(f"{storage.describe(MANIFEST_NAME)} does not verify with the keys of "
                      f"{fqrn}: {exc}") from exc


def _manifest_objects(manifest: Manifest) -> set[ObjectKey]:
    named = [(manifest.root_hash, Suffix.CATALOG), (manifest.certificate, Suffix.CERTIFICATE),
             (manifest.history, Suffix.HISTORY), (manifest.metainfo, Suffix.METAINFO),
             (manifest.micro_catalog, Suffix.CATALOG)]
    return {(h.digest, s.value) for h, s in named if h is not None}


def _kept_roots(storage: Storage, manifest: Manifest, keep_revisions: int,
                keep_tags: bool, result: GcResult) -> list[KeptRoot]:
    roots = [KeptRoot(TRUNK, str(manifest.root_hash), manifest.revision)]
    tags = {}
    if manifest.history is not None:
        try:
            tags = read_tags(_read_object(storage, manifest.history, Suffix.HISTORY))
        except Exception as exc:
            raise GcError(f"cannot read the history database {manifest.history}: {exc}; "
                          "refusing to collect garbage") from exc
    previous_hash = _previous_revision(storage, manifest.root_hash)
    for step in range(1, keep_revisions + 1):
        if previous_hash is None or not storage.has_object(previous_hash, Suffix.CATALOG):
            break
        roots.append(KeptRoot(f"previous-{step}", str(previous_hash),
                              manifest.revision - step))
        previous_hash = _previous_revision(storage, previous_hash)
    for name, tag in sorted(tags.items()):
        if name == TRUNK and tag.hash == str(manifest.root_hash):
            continue
        if not keep_tags:
            if all(tag.hash != root.root_hash for root in roots):
                result.dropped_tags.append(name)
            continue
        try:
            tag_hash = ContentHash.parse(tag.hash)
        except ValueError:
            result.skipped_tags.append(name)
            continue
        if not storage.has_object(tag_hash, Suffix.CATALOG):
            result.skipped_tags.append(name)  # collected earlier: nothing left to keep
            continue
        roots.append(KeptRoot(f"tag {name}", tag.hash, tag.revision))
    return roots


def _previous_revision(storage: Storage, root: ContentHash) -> ContentHash | None:
    image = _catalog(storage, root, "root catalog")
    rows = read_sqlite_rows(image, _PROPERTY_SQL)
    if not rows or not rows[0][0]:
        return None
    try:
        return ContentHash.parse(str(rows[0][0]))
    except ValueError:
        return None


def _catalog(storage: Storage, content_hash: ContentHash, what: str) -> bytes:
    try:
        return _read_object(storage, content_hash, Suffix.CATALOG)
    except Exception as exc:
        raise GcError(f"{what}: catalog {content_hash} is missing or damaged ({exc}); "
                      "refusing to collect garbage") from exc


def _mark_tree(storage: Storage, root: ContentHash, referenced: set[ObjectKey],
               seen: set[ObjectKey], *, what: str) -> None:
    """Add every object of the catalog tree below `root` to `referenced`."""
    pending = [root]
    while pending:
        content_hash = pending.pop()
        key = (content_hash.digest, Suffix.CATALOG.value)
        referenced.add(key)
        if key in seen:
            continue  # shared with a revision marked before: its subtree is marked
        seen.add(key)
        image = _catalog(storage, content_hash, what)
        try:
            tables = {str(row[0]) for row in read_sqlite_rows(image, _TABLES_SQL)}
            for (digest,) in read_sqlite_rows(image, _FILE_HASHES_SQL):
                referenced.add((bytes(digest), Suffix.NONE.value))
            if "chunks" in tables:
                for (digest,) in read_sqlite_rows(image, _CHUNK_HASHES_SQL):
                    referenced.add((bytes(digest), Suffix.PARTIAL.value))
            children = [row[0] for row in read_sqlite_rows(image, _NESTED_SQL)]
            if "bind_mountpoints" in tables:
                children += [row[0] for row in read_sqlite_rows(image, _BIND_SQL)]
            for text in children:
                pending.append(ContentHash.parse(str(text)))
        except (PublishError, ValueError) as exc:
            raise GcError(f"{what}: catalog {content_hash} is unreadable ({exc}); "
                          "refusing to collect garbage") from exc


def parse_object_name(fanout: str, name: str) -> ObjectKey | None:
    """(digest, suffix) of `data/<fanout>/<name>`, or None if it is not an object name."""
    found = _OBJECT_NAME.match(name)
    if found is None or len(fanout) != 2:
        return None
    try:
        digest = bytes.fromhex(fanout + found.group(1))
    except ValueError:
        return None
    return digest, found.group(3)


def _sweep(storage: Storage, referenced: set[ObjectKey], result: GcResult,
           dry_run: bool) -> None:
    doomed: dict[str, int] = {}
    for stored in storage.list_objects():
        key = parse_object_name(stored.fanout, stored.name)
        if key is None or key[1] not in COLLECTABLE_SUFFIXES or key in referenced:
            result.objects_remaining += 1
            result.bytes_remaining += stored.size
        else:
            doomed[stored.relative] = stored.size
    if dry_run:
        gone = list(doomed)
    else:
        try:
            gone = storage.delete_objects(doomed)
        except PublishError as exc:
            raise GcError(str(exc)) from exc
    for relative in gone:
        result.objects_deleted += 1
        result.bytes_freed += doomed[relative]
        result.deleted.append(relative)


def _read_object(storage: Storage, content_hash: ContentHash, suffix: Suffix) -> bytes:
    """A catalog or history database from storage, hash-verified and inflated."""
    stored = storage.read_object(content_hash, suffix)
    return open_object(stored, content_hash, Compression.ZLIB,
                       max_size=MAX_METADATA_OBJECT_BYTES, what=f"stored object {suffix.value}")
