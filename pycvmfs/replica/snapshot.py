"""Stratum-1 replication: make a storage serve what a source serves (`cvmfs_server
snapshot`, i.e. `cvmfs_swissknife pull`).

Order, as the reference's pull:
1. the source's trust chain (`repository.trust.establish_trust`: whitelist, certificate,
   manifest, with the given master keys), before the storage is touched;
2. under the storage's lock: the replica's current manifest, to refuse a replica of another
   repository and (unless forced) a source older than the replica;
3. the history database (its tags name the other roots to keep);
4. the trunk's catalog tree, then each tag's whose root the replica lacks: a catalog is
   downloaded and verified first, its objects are copied in parallel (`pool.CopyPool`),
   its nested catalogs are handled the same way, and the catalog itself is stored last.
   So a catalog in the replica means its whole subtree is there: a later snapshot skips
   it unread (incremental), and one killed at any point resumes where it stopped;
5. the certificate and meta-info objects, the `.cvmfsalt-` copies when the manifest asks
   for them, `.cvmfswhitelist`, then `.cvmfspublished` (the storage's barrier: a reader
   never sees a revision whose objects are missing), then `.cvmfs_last_snapshot` and
   `.cvmfs_status.json` (`date --utc`, as `cvmfs_server snapshot` writes them).
Every object is verified against its hash (and the size and compression its catalog
states) before it is stored (`copy.StoringSink`).

Not done, as in a default `cvmfs_server snapshot` of a current repository: path filters
(`-d`) and the reflog. The source's `.cvmfs_master_replica` sentinel is not required (the
reference's pull refuses a source without it; `pycvmfs publish` writes it, but a repository
an older pycvmfs published lacks it until its next publish). A replica that exists also
gets the untagged revisions published since its last snapshot (the trunk's
`previous_revision` chain, as `pull -p`); a first snapshot does not.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import FetchError, NotFoundError, PycvmfsError, ReplicationError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.publisher.previous import MAX_METADATA_OBJECT_BYTES
from pycvmfs.publisher.storage import MANIFEST_NAME, WHITELIST_NAME
from pycvmfs.publisher.storage_protocol import Storage
from pycvmfs.replica.copy import Counts, FileDestination, ObjectCopier, remove_quietly
from pycvmfs.replica.plan import (
    LAST_SNAPSHOT_NAME,
    STATUS_NAME,
    ObjectRef,
    catalog_objects,
    check_direction,
    history_tags,
    last_snapshot_text,
    replica_manifest,
    status_json,
    tag_roots,
)
from pycvmfs.replica.pool import Batch, CopyPool
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.objects import MAX_CATALOG_BYTES, catalog_name
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import CERTIFICATE_MAX_BYTES, TrustedManifest, establish_trust

DEFAULT_WORKERS = 8  # parallel object copies (the reference's default -n is 1..n)
METAINFO_MAX_BYTES = 1 << 20
MAX_PREVIOUS_REVISIONS = 10_000  # a bound on the chain walk (a loop would be a hostile one)


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    fqrn: str
    revision: int
    previous_revision: int | None  # what the replica served before (None: nothing)
    copied: int  # objects stored (all kinds)
    present: int  # objects found in the replica already
    catalogs: int  # catalogs among `copied`
    bytes: int  # stored bytes copied
    skipped_tags: tuple[str, ...]  # tags whose root the source no longer has (G=yes)
    seconds: float

    def summary(self) -> str:
        """The one line `pycvmfs snapshot` prints."""
        return (f"{self.fqrn} revision {self.revision}: {self.copied} objects copied "
                f"({self.bytes} bytes, {self.catalogs} catalogs), {self.present} already "
                f"present, {self.seconds:.1f} s")


Progress = Callable[[Counts], None]


def snapshot(source: ObjectSource, storage: Storage, fqrn: str,
             public_keys: Sequence[rsa.RSAPublicKey], *, force: bool = False,
             workers: int = DEFAULT_WORKERS, progress: Progress | None = None,
             now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
             ) -> SnapshotResult:
    """Replicate what `source` serves into `storage` (see the module docstring)."""
    started = time.monotonic()
    trusted = establish_trust(source, fqrn, public_keys, now=now())
    storage.prepare()
    storage.create_layout()
    with storage.lock():
        storage.clean_temporaries()
        where = storage.describe(MANIFEST_NAME)
        current = replica_manifest(storage.read_file(MANIFEST_NAME), where)
        check_direction(current, trusted.manifest, fqrn, where, force=force)
        counts = Counts()
        run = _Run(source, storage, fqrn, counts, workers,
                   (lambda: progress(counts)) if progress is not None else lambda: None)
        try:
            skipped = run.replicate(trusted, follow_previous=current is not None)
        finally:
            run.close()
        _publish_files(storage, trusted, now())
    copied, present, catalogs, nbytes = counts.view()
    return SnapshotResult(fqrn, trusted.revision, current.revision if current else None,
                          copied, present, catalogs, nbytes, tuple(skipped),
                          time.monotonic() - started)


class _Run:
    """One replication's walk: the copier, the pool, the scratch files."""

    def __init__(self, source: ObjectSource, storage: Storage, fqrn: str, counts: Counts,
                 workers: int, on_progress: Callable[[], None]) -> None:
        self.storage = storage
        self.scratch = storage.scratch_dir()
        self.copier = ObjectCopier(source, storage, fqrn, counts, spool_dir=self.scratch,
                                   on_progress=on_progress)
        self.pool = CopyPool(self.copier.copy, workers)
        self._names = itertools.count()

    def close(self) -> None:
        self.pool.close()

    def _scratch_file(self, kind: str) -> Path:
        return self.scratch / f"snapshot.{os.getpid()}.{next(self._names)}.{kind}"

    def replicate(self, trusted: TrustedManifest, *, follow_previous: bool) -> list[str]:
        """History, (previous revisions,) trunk, tags, certificate, meta-info; the tags
        skipped."""
        manifest = trusted.manifest
        tags = []
        if manifest.history is not None:
            tags = self._history(manifest.history)
        if follow_previous:
            for previous in reversed(self._missing_previous(manifest.root_hash)):
                self.pull(previous, "", what=f"previous revision {previous}")
        self.pull(manifest.root_hash, "")
        skipped = []
        for name, root in tag_roots(tags, manifest.root_hash):
            # a tag's root collected on a garbage-collectable source is skipped, as the
            # reference does; anywhere else a missing catalog fails the snapshot
            if not self.pull(root, "", what=f"root catalog of tag {name}",
                             missing_ok=manifest.garbage_collectable):
                skipped.append(name)
        if manifest.certificate is not None:
            self.copier.copy(ObjectRef(manifest.certificate, Suffix.CERTIFICATE),
                             max_size=CERTIFICATE_MAX_BYTES, what="certificate")
        if manifest.metainfo is not None:
            self.copier.copy(ObjectRef(manifest.metainfo, Suffix.METAINFO),
                             max_size=METAINFO_MAX_BYTES, what="meta-info")
        return skipped

    def _history(self, content_hash: ContentHash) -> list[Tag]:
        ref = ObjectRef(content_hash, Suffix.HISTORY, Compression.ZLIB)
        path = self._scratch_file("history")
        try:
            with FileDestination(path) as out:
                staged = self.copier.stage(ref, out, max_size=MAX_METADATA_OBJECT_BYTES,
                                           what="history database")
            with staged:
                self.copier.store(staged)
            return history_tags(path)
        finally:
            remove_quietly(path)

    def _missing_previous(self, root: ContentHash) -> list[ContentHash]:
        """The root catalogs of the revisions published since the replica's, newest first
        (the reference's `pull -p` on a replica that exists): the `previous_revision` chain
        of the trunk up to the first root the replica holds, or one the source no longer
        has. Oldest first they are pulled before the trunk, so a killed run finds the
        same chain again."""
        chain: list[ContentHash] = []
        current = root
        while len(chain) < MAX_PREVIOUS_REVISIONS:
            ref = ObjectRef(current, Suffix.CATALOG, Compression.ZLIB)
            if self.storage.has_object(current, Suffix.CATALOG):
                break  # stored after its own chain: the rest is there
            path = self._scratch_file("previous")
            try:
                try:
                    with FileDestination(path) as out, \
                            self.copier.stage(ref, out, max_size=MAX_CATALOG_BYTES,
                                              what=f"root catalog {current}"):
                        pass  # verified; only its previous_revision property is wanted
                except (FetchError, NotFoundError):
                    if current == root:
                        raise
                    break  # collected on the source: the chain ends here
                with Catalog(path, content_hash=current) as catalog:
                    previous = catalog.previous_revision
            finally:
                remove_quietly(path)
            if current != root:
                chain.append(current)
            if previous is None:
                break
            current = previous
        return chain

    def pull(self, content_hash: ContentHash, mountpoint: str, *, what: str = "",
             missing_ok: bool = False) -> bool:
        """Replicate the catalog tree below `content_hash` (nothing if the replica has
        its root: then it has the whole tree). False only when the root catalog is missing
        on the source and `missing_ok`."""
        ref = ObjectRef(content_hash, Suffix.CATALOG, Compression.ZLIB)
        if self.copier.present(ref):
            return True
        label = what or catalog_name(content_hash, mountpoint)
        path = self._scratch_file("catalog")
        try:
            try:
                with FileDestination(path) as out:
                    staged = self.copier.stage(ref, out, max_size=MAX_CATALOG_BYTES,
                                               what=label)
            except (FetchError, NotFoundError):
                if missing_ok:
                    return False
                raise
            with staged:
                batch = Batch()
                for item in catalog_objects(path, label):
                    self.pool.submit(batch, item)
                with Catalog(path, content_hash=content_hash) as catalog:
                    children = catalog.nested_catalogs()
                for child in children:
                    self.pull(child.hash, child.path)
                batch.wait()
                self.copier.store(staged)
            return True
        finally:
            remove_quietly(path)


def _publish_files(storage: Storage, trusted: TrustedManifest, moment: dt.datetime) -> None:
    """Everything but objects, in the reference's order; the manifest is the switch."""
    manifest = trusted.manifest
    if manifest.alt_paths:
        named = [(manifest.root_hash, Suffix.CATALOG), (manifest.certificate, Suffix.CERTIFICATE),
                 (manifest.history, Suffix.HISTORY), (manifest.metainfo, Suffix.METAINFO)]
        for content_hash, suffix in named:
            if content_hash is not None:
                storage.put_file(content_hash.alt_path(suffix),
                                 storage.read_object(content_hash, suffix))
    if not trusted.raw_whitelist:
        raise ReplicationError("the trust chain did not keep the whitelist it verified")
    storage.put_file(WHITELIST_NAME, trusted.raw_whitelist)
    storage.put_file(MANIFEST_NAME, trusted.raw_manifest)
    storage.put_file(LAST_SNAPSHOT_NAME, last_snapshot_text(moment))
    try:
        previous = storage.read_file(STATUS_NAME)
    except PycvmfsError:
        previous = None
    storage.put_file(STATUS_NAME, status_json(previous, moment))
