"""File contents -> stored objects: read, chunk, compress, hash, store.

Files are processed in a thread pool: zlib and hashlib release the GIL on large
buffers, so two cores compress and hash at once. Each file is read once, in blocks
for chunked files (memory stays below max chunk + one block per worker), and checked
against the size and mtime seen by the walk before and after reading: a file that
changes or vanishes meanwhile refuses the publish instead of storing a torn copy.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from pycvmfs.errors import PublishError
from pycvmfs.format.catalog import ChunkRow
from pycvmfs.format.chunking import ChunkParams, StreamingChunker
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.publisher.storage import ObjectWriter
from pycvmfs.publisher.storage_protocol import Storage
from pycvmfs.publisher.tree_walk import Node

READ_BLOCK_BYTES = 4 << 20  # block size for chunked files; bounds memory per worker
# Files at least this big are probed: when zlib (level 1) cannot shrink their first
# PROBE_BYTES by INCOMPRESSIBLE_RATIO, they are stored raw and flagged so per file
# (catalog flags bits 11-13). Deflating random data costs a core ~20 ms/MB for nothing,
# and the clients then skip inflating it too. Small files are always compressed, as the
# reference publisher does.
PROBE_BYTES = 64 << 10
INCOMPRESSIBLE_RATIO = 0.97


@dataclass(frozen=True, slots=True)
class Settings:
    """How contents are stored; fixed for one publish."""

    algorithm: Algorithm = Algorithm.SHA1
    compression: Compression = Compression.ZLIB
    chunking: ChunkParams | None = None  # None: never chunk
    store_incompressible_raw: bool = True  # see PROBE_BYTES

    def fingerprint(self) -> str:
        """Everything that decides how a file's bytes become objects."""
        return (f"{self.algorithm.name},{self.compression.name},{self.chunking},"
                f"raw-incompressible={self.store_incompressible_raw}")

    def compression_for(self, sample: bytes) -> Compression:
        """The compression of a file whose first bytes are `sample`."""
        if (self.compression is Compression.NONE or not self.store_incompressible_raw
                or len(sample) < PROBE_BYTES):
            return self.compression
        probe = sample[:PROBE_BYTES]
        if len(zlib.compress(probe, 1)) > INCOMPRESSIBLE_RATIO * len(probe):
            return Compression.NONE
        return self.compression


@dataclass(frozen=True, slots=True)
class FileContent:
    """What the catalog needs to know about a stored regular file."""

    size: int
    content_hash: ContentHash | None  # None for chunked files
    chunks: tuple[ChunkRow, ...] = ()
    compression: Compression = Compression.ZLIB


@dataclass(slots=True)
class PipelineStats:
    files: int = 0
    bytes_in: int = 0
    files_unchanged: int = 0  # known from the previous revision, not read again
    objects_written: int = 0
    bytes_written: int = 0


ProgressCallback = Callable[[int, int], None]  # (files done, bytes done) increments
# What the previous revision knew about a file: None (read it) or its content.
KnownContent = Callable[[Node], "FileContent | None"]


class ContentPipeline:
    """Stores the content of regular files; one `FileContent` per distinct inode."""

    def __init__(self, storage: Storage, settings: Settings, workers: int | None = None,
                 read_block_bytes: int = READ_BLOCK_BYTES,
                 known: KnownContent = lambda node: None):
        self.storage = storage
        self.known = known
        self.settings = settings
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.read_block_bytes = read_block_bytes
        self.stats = PipelineStats()
        self._lock = threading.Lock()

    def run(
        self, nodes: Iterable[Node], progress: ProgressCallback | None = None
    ) -> dict[tuple[int, int], FileContent]:
        """Process every distinct inode among `nodes`; the first failure cancels the rest."""
        unique: dict[tuple[int, int], Node] = {}
        for node in nodes:
            unique.setdefault(node.inode_key, node)
        # Largest first: a big file read and compressed in one thread must not be the
        # last job while the other cores idle (longest-processing-time-first scheduling).
        order = sorted(unique.items(), key=lambda item: item[1].st.st_size, reverse=True)
        results: dict[tuple[int, int], FileContent] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="publish") as pool:
            futures: dict[Future[FileContent], tuple[int, int]] = {
                pool.submit(self._process, node, progress): key for key, node in order
            }
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    raise exc
                results[futures[fut]] = fut.result()
        return results

    def _process(self, node: Node, progress: ProgressCallback | None) -> FileContent:
        known = self.known(node)
        if known is not None:
            with self._lock:
                self.stats.files_unchanged += 1
        try:
            content = known or self._store_file(node)
        except FileNotFoundError:
            raise PublishError(f"{node.path}: file vanished while being published") from None
        except PublishError:
            raise
        except OSError as exc:
            raise PublishError(f"{node.path}: cannot read: {exc.strerror or exc}") from exc
        with self._lock:
            self.stats.files += 1
            self.stats.bytes_in += content.size
        if progress is not None:
            progress(1, content.size)
        return content

    def _store_file(self, node: Node) -> FileContent:
        if node.content is not None:
            return self._store_bytes(node.content)
        fd = os.open(node.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _check_unchanged(node, os.fstat(fd))
            params = self.settings.chunking
            if params is None or node.st.st_size <= params.min_size:
                content = self._store_bytes(_read_all(fd, node.st.st_size + 1,
                                                      self.read_block_bytes))
            else:
                content = self._store_chunked(fd, params)
            _check_unchanged(node, os.fstat(fd), read_size=content.size)
            return content
        finally:
            os.close(fd)

    def _store_bytes(self, data: bytes) -> FileContent:
        """A file stored whole as one object."""
        compression = self.settings.compression_for(data)
        return FileContent(len(data), self._put(data, Suffix.NONE, compression),
                           compression=compression)

    def _store_chunked(self, fd: int, params: ChunkParams) -> FileContent:
        """Stream a big file through the chunker into one ObjectWriter per chunk: the
        bytes of a block go straight to the compressor, no chunk is assembled in memory."""
        chunker = StreamingChunker(params)
        chunks: list[ChunkRow] = []
        writer: ObjectWriter | None = None
        compression = self.settings.compression
        offset = 0  # file offset of the current block
        try:
            while block := os.read(fd, self.read_block_bytes):
                if writer is None:  # first block: one compression for all chunks
                    compression = self.settings.compression_for(block)
                    writer = self._writer(compression)
                view, position = memoryview(block), 0
                for cut in chunker.feed(block):
                    writer.write(view[position : cut - offset])
                    position = cut - offset
                    chunks.append(self._commit(writer, Suffix.PARTIAL, cut - writer.size))
                    writer = self._writer(compression)
                writer.write(view[position:])
                offset += len(block)
            if chunker.finish():
                raise AssertionError("the streaming chunker decides every cut on arrival")
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is None:  # the file became empty: refused later by the size check
            return FileContent(0, self._put(b"", Suffix.NONE, compression), (), compression)
        if not chunks:  # a single piece is stored as a plain object (fact sheet 13.7)
            return FileContent(offset, self._commit(writer, Suffix.NONE, 0).content_hash,
                               compression=compression)
        chunks.append(self._commit(writer, Suffix.PARTIAL, offset - writer.size))
        return FileContent(offset, None, tuple(chunks), compression)

    def _writer(self, compression: Compression) -> ObjectWriter:
        return ObjectWriter(self.storage, self.settings.algorithm, compression)

    def _commit(self, writer: ObjectWriter, suffix: Suffix, start: int) -> ChunkRow:
        content_hash, written = writer.commit(suffix)
        if written:
            with self._lock:
                self.stats.objects_written += 1
                self.stats.bytes_written += writer.stored
        return ChunkRow(start, writer.size, content_hash)

    def _put(self, data: bytes, suffix: Suffix, compression: Compression) -> ContentHash:
        content_hash, stored = make_object(data, self.settings.algorithm, compression)
        if self.storage.put_object(content_hash, stored, suffix):
            with self._lock:
                self.stats.objects_written += 1
                self.stats.bytes_written += len(stored)
        return content_hash


def _read_all(fd: int, limit: int, block_bytes: int) -> bytes:
    parts = []
    remaining = limit
    while remaining > 0:
        block = os.read(fd, min(remaining, block_bytes))
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


def _check_unchanged(node: Node, now: os.stat_result, read_size: int | None = None) -> None:
    before = node.st
    changed = (
        now.st_ino != before.st_ino
        or now.st_size != before.st_size
        or now.st_mtime_ns != before.st_mtime_ns
        or (read_size is not None and read_size != before.st_size)
    )
    if changed:
        raise PublishError(f"{node.path}: file changed while being published "
                           "(size or modification time differs); publish again when it is stable")
