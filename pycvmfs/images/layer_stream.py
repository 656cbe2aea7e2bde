"""Layer blobs as tar streams: compression detected by magic bytes, bytes counted against
a shared budget (tar bombs), corrupt compressed data turned into one exception type.

Pure stream plumbing for `layer_extractor.py`; nothing here touches the filesystem except
opening a blob given by path.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from pycvmfs.errors import ImageError

COPY_CHUNK_BYTES = 1 << 20  # big enough to amortise syscalls, small enough to stay cheap


class LimitExceededError(Exception):
    """A `LayerLimits` bound was crossed (the caller names the layer and member)."""


class Prefixed:
    """A reader that first returns already-peeked bytes, then the rest of `raw`."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self._prefix = prefix
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0 or size >= len(self._prefix):
                head, self._prefix = self._prefix, b""
                rest = self._raw.read(size - len(head) if size >= 0 else -1)
                return head + rest
            head, self._prefix = self._prefix[:size], self._prefix[size:]
            return head
        return self._raw.read(size)


class CorruptLayerError(Exception):
    pass


class CountingReader:
    """Counts decompressed bytes against the shared budget; raises once it is spent.

    Also supplies the zero padding and end-of-archive blocks of a tar that stops right after
    its last member's data (umoci 0.4 `insert` writes such layers and its unpack accepts
    them): only when the stream ends exactly at `data_end`, so truncated data still fails.
    """

    def __init__(self, read: Callable[[int], bytes], budget: list[int]) -> None:
        self._read = read
        self._budget = budget
        self.counted = 0  # decompressed bytes read so far
        self.data_end = -1  # stream offset where the last member's data ends
        self.padded = False

    def read(self, size: int = -1) -> bytes:
        want = COPY_CHUNK_BYTES if size < 0 else size
        data = self._read(min(want, self._budget[0] + 1))
        if not data and not self.padded and self.counted == self.data_end:
            self.padded = True
            return bytes(-self.data_end % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)
        self.counted += len(data)
        self._budget[0] -= len(data)
        if self._budget[0] < 0:
            raise LimitExceededError("decompressed layers exceed max_total_bytes")
        return data


class ZstdStream:
    """zstandard's stream reader, its errors turned into `CorruptLayerError`."""

    def __init__(self, source: Prefixed) -> None:
        import zstandard  # a wheel; imported only when a zstd layer shows up

        self._errors = (zstandard.ZstdError,)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_across_frames=True)  # type: ignore[arg-type]  # duck-typed .read

    def read(self, size: int = -1) -> bytes:
        try:
            return self._reader.read(size)
        except self._errors as exc:
            raise CorruptLayerError(f"zstd: {exc}") from exc


def read_exactly(raw: BinaryIO, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = raw.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def decompressed(raw: BinaryIO) -> tuple[str, Callable[[int], bytes]]:
    magic = read_exactly(raw, 6)
    source = Prefixed(magic, raw)
    if magic.startswith(b"\x1f\x8b"):
        gz = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[call-overload]
        return "gzip", gz.read
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd", ZstdStream(source).read
    if magic.startswith((b"\xfd7zXZ\x00", b"BZh")):
        raise ImageError("xz/bzip2 layers are not OCI layer media types; refused")
    return "plain", source.read


@contextmanager
def opened(source: BinaryIO | os.PathLike[str] | str) -> Iterator[tuple[str, BinaryIO]]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as raw:
            yield os.fspath(source), raw
    else:
        yield str(getattr(source, "name", "<stream>")), source


