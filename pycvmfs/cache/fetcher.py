"""Store-or-download: the one joint between the cache and where objects come from (a
Stratum-1 ring through the network layer, or a storage directory), style guide R1, R9.

`fetch` serves a cache hit directly; on a miss exactly one thread downloads the object
(concurrent requests for the same hash wait for it, and a miss that raced with the end of
a download finds the object instead of fetching it twice), streaming the compressed bytes
through a `VerifyingSink` into a cache transaction that becomes visible only after the
hash, the inflation and the size all check out. The sink's byte budget comes from the
catalog size of a data object or chunk, and from `max_unsized_bytes`
(`PYCVMFS_MAX_CATALOG_MB`) for catalogs and histories, which are spooled compressed in the
cache directory and inflated into the transaction only once their hash matched.

Thread-safety: `fetch` may be called from any thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import BinaryIO, Protocol

from pycvmfs.cache.host import CacheHost
from pycvmfs.cache.quota_protocol import ObjectKind
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.network.sink import VerifyingSink

MAX_UNSIZED_OBJECT_BYTES = 1 << 30  # catalogs and histories: no size in any catalog
MEBIBYTE = 1 << 20


def unsized_hint(max_bytes: int) -> str:
    """What an over-budget catalog error adds: the cap and the setting that raises it."""
    return (f"catalogs and history databases may inflate to {max_bytes // MEBIBYTE} MiB "
            "(PYCVMFS_MAX_CATALOG_MB)")


class ObjectFeed(Protocol):
    """Where a fetcher downloads from: `repository.source.ObjectSource` (its streaming half)."""

    def fetch_into(self, path: str, sink: VerifyingSink) -> None:
        """Stream object `path` (relative to the repository base) into `sink`, verified."""
        ...


class Fetcher:
    """Objects by content hash, from the cache or the network; see the module docstring."""

    def __init__(self, host: CacheHost, feed: ObjectFeed, *,
                 max_unsized_bytes: int = MAX_UNSIZED_OBJECT_BYTES) -> None:
        self.host = host
        self.feed = feed
        self.max_unsized_bytes = max_unsized_bytes
        self._lock = threading.Lock()
        self._inflight: dict[ContentHash, Future[None]] = {}
        self.hits = 0
        self.misses = 0

    def fetch(self, content_hash: ContentHash, suffix: Suffix, compression: Compression, *,
              expected_size: int | None = None,
              kind: ObjectKind = ObjectKind.REGULAR) -> BinaryIO:
        """The decompressed object opened for reading (the caller closes it)."""
        fd = self.fetch_fd(content_hash, suffix, compression, expected_size=expected_size,
                           kind=kind)
        assert fd is not None
        return self.host.store.file_of(fd, content_hash)

    def fetch_fd(self, content_hash: ContentHash, suffix: Suffix, compression: Compression, *,
                 expected_size: int | None = None, kind: ObjectKind = ObjectKind.REGULAR,
                 download: bool = True) -> int | None:
        """The decompressed object as a raw read-only descriptor (the caller closes it);
        without `download`, None on a miss instead of fetching it (a caller that must not
        wait for the network)."""
        while True:
            cached = self.host.open_fd(content_hash)
            if cached is not None:
                self.hits += 1  # a statistic: a lost increment under a race is harmless
                return cached
            if not download:
                return None
            with self._lock:
                waiting = self._inflight.get(content_hash)
                leader = waiting is None
                if leader:
                    waiting = self._inflight[content_hash] = Future()
                    self.misses += 1
            assert waiting is not None
            if not leader:
                waiting.result()  # the leader's error, if any, is ours too
                continue
            try:
                # a download that ended between our miss and taking the lead is not
                # repeated: the object is in the cache now (looked up once more)
                if not self.host.store.contains(content_hash):
                    self._download(content_hash, suffix, compression, expected_size, kind)
                waiting.set_result(None)
            except BaseException as exc:
                waiting.set_exception(exc)
                raise
            finally:
                with self._lock:
                    del self._inflight[content_hash]

    def _download(self, content_hash: ContentHash, suffix: Suffix, compression: Compression,
                  expected_size: int | None, kind: ObjectKind) -> None:
        txn = self.host.begin(content_hash, size_hint=expected_size)
        try:
            with VerifyingSink(content_hash, compression, txn, expected_size=expected_size,
                               max_size=self.max_unsized_bytes,
                               spool_dir=self.host.config.directory,
                               hint=unsized_hint(self.max_unsized_bytes)
                               if expected_size is None else "") as sink:
                self.feed.fetch_into(content_hash.object_path(suffix), sink)
        except BaseException:
            txn.abort()
            raise
        self.host.commit(txn, expected_size=expected_size, kind=kind)
