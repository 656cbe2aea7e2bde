"""One publish: a source tree becomes the next signed revision of a repository.

Order (fact sheet 15.2): content objects, catalogs bottom-up, history, certificate,
then `.cvmfspublished` last (an atomic rename in a directory, the last upload to S3:
storage_protocol). Until then the previous revision stays the one served; a crash,
Ctrl-C or full disk before it leaves only unreferenced objects, which the next publish
simply reuses. The storage's lock keeps a second publisher out. Kept directories
(publisher.kept) must have been nested catalogs of the previous revision; the walk comes
first to know which they are.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from pycvmfs.errors import PublishError
from pycvmfs.format.catalog import DEFAULT_TTL_SECONDS, md5path
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.format.manifest import Manifest, sign_manifest
from pycvmfs.publisher.bundles import find_bundles
from pycvmfs.publisher.catalog_writer import CatalogContext, CatalogWriter
from pycvmfs.publisher.history_writer import check_new_tag, history_image, next_tags
from pycvmfs.publisher.keys import RepositoryKeys, load_keys
from pycvmfs.publisher.pipeline import ContentPipeline, FileContent, KnownContent, Settings
from pycvmfs.publisher.previous import PreviousRevision, load_previous
from pycvmfs.publisher.storage import MANIFEST_NAME, MASTER_REPLICA_NAME, WHITELIST_NAME
from pycvmfs.publisher.storage_factory import open_storage
from pycvmfs.publisher.storage_protocol import Storage
from pycvmfs.publisher.tree_walk import KEPT_MARKER, Node, TreeWalker
from pycvmfs.publisher.whitelist_sign import DEFAULT_WHITELIST_DAYS, write_whitelist


@dataclass(frozen=True, slots=True)
class PublishOptions:
    fqrn: str
    source: Path
    storage: Path | Storage  # a directory, or an opened storage (the caller closes it)
    keys_dir: Path
    settings: Settings = field(default_factory=Settings)
    tag: str | None = None
    ttl_seconds: int | None = None
    owner: tuple[int, int] | None = None
    timestamp: int | None = None  # fixed publish time (SOURCE_DATE_EPOCH) for reproducibility
    rehash: bool = False  # read every file, also those the previous revision vouches for


@dataclass(frozen=True, slots=True)
class PublishResult:
    manifest: Manifest
    files: int
    bytes_in: int
    objects_written: int
    bytes_written: int
    catalogs_written: list[str]
    seconds: float
    files_unchanged: int = 0
    whitelist_note: str = ""
    catalogs_kept: list[str] = field(default_factory=list)  # mountpoints grafted unchanged
    bundle_triggers: int = 0  # files marked as file bundle triggers (publisher.bundles)
    warnings: tuple[str, ...] = ()  # what was published, but not as the source asked


class PublishProgress(Protocol):
    """What a progress display gets told; called from worker threads."""

    def begin(self, total_files: int, total_bytes: int) -> None: ...

    def advance(self, files: int, nbytes: int) -> None: ...


def publish(options: PublishOptions, progress: PublishProgress | None = None) -> PublishResult:
    if isinstance(options.storage, Path):
        with contextlib.closing(open_storage(options.storage)) as storage:
            return _publish(storage, options, progress)
    return _publish(options.storage, options, progress)


def _publish(storage: Storage, options: PublishOptions,
             progress: PublishProgress | None) -> PublishResult:
    started = time.monotonic()
    storage.prepare()
    with storage.lock():
        storage.create_layout()
        storage.clean_temporaries()
        keys = load_keys(options.fqrn, options.keys_dir)
        root = TreeWalker(options.source).walk()
        bundles = find_bundles(root)
        kept = _kept_directories(root)
        previous = load_previous(storage, options.fqrn, keys, kept)
        if options.tag is not None:
            check_new_tag(previous.tags if previous else {}, options.tag)
        _check_kept(kept, previous, storage.location)
        pipeline = ContentPipeline(storage, options.settings,
                                   known=_known_contents(storage, options, previous))
        files = list(_regular_files(root))
        if progress is not None:
            progress.begin(len(files), sum(f.st.st_size for f in files))
        with storage.transaction():  # a failure removes the objects written so far
            contents = pipeline.run(files, progress.advance if progress is not None else None)
            manifest, writer = _write_revision(storage, options, keys, previous, root,
                                               contents, bundles.triggers)
            whitelist_note = _ensure_whitelist(storage, options.fqrn, keys, options.timestamp)
            if storage.read_file(MASTER_REPLICA_NAME) is None:
                storage.put_file(MASTER_REPLICA_NAME, b"", sync=False)
            storage.put_file(MANIFEST_NAME, sign_manifest(manifest, keys.signing_key))
    stats = pipeline.stats
    return PublishResult(manifest, stats.files, stats.bytes_in, stats.objects_written,
                         stats.bytes_written, writer.written, time.monotonic() - started,
                         files_unchanged=stats.files_unchanged, whitelist_note=whitelist_note,
                         catalogs_kept=writer.grafted,
                         bundle_triggers=len(bundles.triggers), warnings=bundles.warnings)


def _kept_directories(root: Node) -> list[str]:
    """Repository paths of the walk's kept stubs (publisher.kept)."""
    stack, kept = [root], []
    while stack:
        node = stack.pop()
        if node.kept:
            kept.append(node.path)
        stack.extend(c for c in node.children if c.is_dir)
    return sorted(kept)


def _check_kept(kept: list[str], previous: PreviousRevision | None, storage: str) -> None:
    """Before any work: every kept directory names a catalog there is to keep."""
    if not kept:
        return
    if previous is None:
        shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        raise PublishError(f"cannot keep {shown} ({KEPT_MARKER}): {storage} has no previous "
                           "revision to keep them from; the stubs stand for a repository "
                           "published from this source earlier (restore that storage, or "
                           "remove the stubs to publish without them)")
    missing = [path for path in kept if path not in previous.kept]
    if missing:
        raise PublishError(f"cannot keep {', '.join(missing[:5])} ({KEPT_MARKER}): not a nested "
                           f"catalog in the previous revision {previous.manifest.revision} "
                           "(only a published nested catalog can be kept)")


def _known_contents(storage: Storage, options: PublishOptions,
                    previous: PreviousRevision | None) -> KnownContent:
    """Contents of unchanged files from the previous revision (see publisher.previous)."""
    if (previous is None or options.rehash
            or previous.settings != options.settings.fingerprint()):
        return lambda node: None
    files = previous.files

    def known(node: Node) -> FileContent | None:
        entry = files.get(md5path(node.path))
        if (entry is None or entry.content.size != node.st.st_size
                or entry.mtime_ns != node.st.st_mtime_ns):
            return None
        if not all(storage.has_object(h, suffix) for h, suffix in entry.objects()):
            return None
        return entry.content

    return known


def _write_revision(storage: Storage, options: PublishOptions, keys: RepositoryKeys,
                    previous: PreviousRevision | None, root: Node,
                    contents: dict[tuple[int, int], FileContent],
                    bundle_triggers: frozenset[str]) -> tuple[Manifest, CatalogWriter]:
    revision = previous.manifest.revision + 1 if previous else 1
    now = options.timestamp if options.timestamp is not None else int(time.time())
    timestamp = max(now, (previous.manifest.timestamp or 0) if previous else 0)
    context = CatalogContext(revision, timestamp, options.ttl_seconds, options.owner)
    writer = CatalogWriter(storage, options.settings, contents, context,
                           previous.catalogs.get if previous else (lambda path: None),
                           previous.kept if previous else None, bundle_triggers)
    root_ref = writer.write(root)
    head = Tag("trunk", str(root_ref.content_hash), revision, timestamp, size=root_ref.size)
    tags = next_tags(previous.tags if previous else {}, head, options.tag)
    image = history_image(tags, options.fqrn,
                          str(previous.manifest.history) if previous and previous.manifest.history
                          else None, storage.scratch_dir())
    history_hash = _put_metadata(storage, options, image, Suffix.HISTORY)
    cert_hash = _put_metadata(storage, options, keys.certificate_pem, Suffix.CERTIFICATE)
    manifest = Manifest(
        root_hash=root_ref.content_hash, revision=revision,
        ttl_seconds=options.ttl_seconds or DEFAULT_TTL_SECONDS,
        root_catalog_size=root_ref.size, fqrn=options.fqrn, certificate=cert_hash,
        history=history_hash, timestamp=timestamp,
    )
    return manifest, writer


def _put_metadata(storage: Storage, options: PublishOptions, data: bytes,
                  suffix: Suffix) -> ContentHash:
    """Certificates and histories are always zlib, whatever the file compression."""
    content_hash, stored = make_object(data, options.settings.algorithm, Compression.ZLIB)
    storage.put_object(content_hash, stored, suffix)
    return content_hash


def _ensure_whitelist(storage: Storage, fqrn: str, keys: RepositoryKeys,
                      timestamp: int | None) -> str:
    """Sign a whitelist on first publish; warn when the existing one runs out soon."""
    existing = storage.read_file(WHITELIST_NAME)
    if existing is None:
        if keys.master_key is None:
            return (f"no {WHITELIST_NAME} and no master key: clients cannot mount "
                    f"until one is signed with `pycvmfs whitelist sign`")
        now = datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None
        expires = write_whitelist(storage, fqrn, keys, DEFAULT_WHITELIST_DAYS, now=now)
        return f"signed a new whitelist valid until {expires:%Y-%m-%d %H:%M} UTC"
    from pycvmfs.format.whitelist import parse_whitelist

    try:
        whitelist = parse_whitelist(existing)[0]
    except Exception as exc:
        return f"warning: existing whitelist is unreadable ({exc}); re-sign it"
    left = whitelist.expires - datetime.now(UTC)
    if left <= timedelta(0):
        return f"warning: the whitelist expired on {whitelist.expires:%Y-%m-%d %H:%M} UTC; " \
               "clients refuse to mount until it is re-signed (`pycvmfs whitelist sign`)"
    if left < timedelta(days=3):
        return f"warning: the whitelist expires on {whitelist.expires:%Y-%m-%d %H:%M} UTC"
    return ""


def _regular_files(root: Node) -> Iterator[Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        for child in node.children:
            if child.is_dir:
                stack.append(child)
            elif child.is_regular:
                yield child

