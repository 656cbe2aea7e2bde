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
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from pycvmfs.errors import PublishError
from pycvmfs.format.catalog import ChunkRow
from pycvmfs.format.chunking import ChunkParams, StreamingChunker
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.publisher.storage import LocalStorage
from pycvmfs.publisher.tree_walk import Node

READ_BLOCK_BYTES = 4 << 20  # block size for chunked files; bounds memory per worker


@dataclass(frozen=True, slots=True)
class Settings:
    """How contents are stored; fixed for one publish."""

    algorithm: Algorithm = Algorithm.SHA1
    compression: Compression = Compression.ZLIB
    chunking: ChunkParams | None = None  # None: never chunk


@dataclass(frozen=True, slots=True)
class FileContent:
    """What the catalog needs to know about a stored regular file."""

    size: int
    content_hash: ContentHash | None  # None for chunked files
    chunks: tuple[ChunkRow, ...] = ()


@dataclass(slots=True)
class PipelineStats:
    files: int = 0
    bytes_in: int = 0
    objects_written: int = 0
    bytes_written: int = 0


ProgressCallback = Callable[[int, int], None]  # (files done, bytes done) increments


class ContentPipeline:
    """Stores the content of regular files; one `FileContent` per distinct inode."""

    def __init__(self, storage: LocalStorage, settings: Settings, workers: int | None = None):
        self.storage = storage
        self.settings = settings
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.stats = PipelineStats()
        self._lock = threading.Lock()

    def run(
        self, nodes: Iterable[Node], progress: ProgressCallback | None = None
    ) -> dict[tuple[int, int], FileContent]:
        """Process every distinct inode among `nodes`; the first failure cancels the rest."""
        unique: dict[tuple[int, int], Node] = {}
        for node in nodes:
            unique.setdefault(node.inode_key, node)
        results: dict[tuple[int, int], FileContent] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="publish") as pool:
            futures: dict[Future[FileContent], tuple[int, int]] = {
                pool.submit(self._process, node, progress): key for key, node in unique.items()
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
        try:
            content = self._store_file(node)
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
        fd = os.open(node.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _check_unchanged(node, os.fstat(fd))
            params = self.settings.chunking
            if params is None or node.st.st_size <= params.min_size:
                data = _read_all(fd, node.st.st_size + 1)
                content = FileContent(len(data), self._put(data, Suffix.NONE))
            else:
                content = self._store_chunked(fd, params)
            _check_unchanged(node, os.fstat(fd), read_size=content.size)
            return content
        finally:
            os.close(fd)

    def _store_chunked(self, fd: int, params: ChunkParams) -> FileContent:
        chunker = StreamingChunker(params)
        buffer = bytearray()
        buffer_start = 0
        chunks: list[ChunkRow] = []

        def emit(cuts: list[int]) -> None:
            nonlocal buffer, buffer_start
            for cut in cuts:
                piece = bytes(buffer[: cut - buffer_start])
                chunks.append(ChunkRow(buffer_start, len(piece), self._put(piece, Suffix.PARTIAL)))
                del buffer[: cut - buffer_start]
                buffer_start = cut

        while block := os.read(fd, READ_BLOCK_BYTES):
            buffer += block
            emit(chunker.feed(block))
        emit(chunker.finish())
        total = buffer_start + len(buffer)
        if not chunks:  # a single piece is stored as a plain object (fact sheet 13.7)
            return FileContent(total, self._put(bytes(buffer), Suffix.NONE))
        if buffer:
            chunks.append(ChunkRow(buffer_start, len(buffer), self._put(bytes(buffer),
                                                                        Suffix.PARTIAL)))
        return FileContent(total, None, tuple(chunks))

    def _put(self, data: bytes, suffix: Suffix) -> ContentHash:
        content_hash, stored = make_object(data, self.settings.algorithm, self.settings.compression)
        if self.storage.put_object(content_hash, stored, suffix):
            with self._lock:
                self.stats.objects_written += 1
                self.stats.bytes_written += len(stored)
        return content_hash


def _read_all(fd: int, limit: int) -> bytes:
    parts = []
    remaining = limit
    while remaining > 0:
        block = os.read(fd, min(remaining, READ_BLOCK_BYTES))
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
