"""Where repository objects come from: a local storage directory or Stratum-1 servers.

A source answers one question: "give me the bytes at this path relative to the repository
base" (`.cvmfspublished`, `data/ab/cdef...C`). It does not verify anything; the trust chain
and `format.compression.open_object` do that. Over HTTP the source is the client's own
network layer (`network_source.NetworkSource`: proxies, failover, retries), so the no-FUSE
reader and the mount share one HTTP path.

Thread-safety: `LocalSource` is stateless, `NetworkSource` thread-safe.

Caveat: each `fetch` returns the whole object in memory (the mount streams into its cache
through `cache/fetcher.py` instead).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from pycvmfs.errors import FetchError, NotFoundError


@runtime_checkable
class ObjectSource(Protocol):
    """Raw bytes of repository files, addressed relative to the repository base."""

    def fetch(self, path: str) -> bytes:
        """Bytes of `path`; NotFoundError if it does not exist, FetchError otherwise."""
        ...

    def describe(self) -> str:
        """Where the bytes come from, for error messages (a directory or a base URL)."""
        ...

    def close(self) -> None:
        """Release connections (nothing for a directory)."""
        ...


def check_relative(path: str) -> str:
    """Refuse absolute paths and `..` so a source never reads outside its base."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts:
        raise FetchError(f"refusing object path {path!r}: must be relative, without '..'")
    return path


class LocalSource:
    """A repository directory laid out as a Stratum-1 serves it (`.cvmfspublished`, `data/`)."""

    def __init__(self, storage_dir: str | os.PathLike[str]) -> None:
        self.storage_dir = Path(storage_dir)
        if not self.storage_dir.is_dir():
            raise NotFoundError(f"repository directory {self.storage_dir} does not exist")

    def fetch(self, path: str) -> bytes:
        target = self.storage_dir / check_relative(path)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{target}: no such file") from None
        except OSError as exc:
            raise FetchError(f"{target}: {exc.strerror or exc}") from exc

    def describe(self) -> str:
        return str(self.storage_dir)

    def close(self) -> None:
        """Nothing to release; present so every source can be closed the same way."""

    def __repr__(self) -> str:
        return f"LocalSource({str(self.storage_dir)!r})"


def open_source(url_or_dir: str | os.PathLike[str], *, proxy: str = "DIRECT"
                ) -> ObjectSource:
    """`http(s)://...` (or several, `;`-separated: a Stratum-1 ring) goes through the
    client's network layer (proxies in `CVMFS_HTTP_PROXY` syntax, failover, retries);
    anything else is a local storage directory."""
    from pycvmfs.repository.network_source import NetworkSource  # it imports this module

    text = os.fspath(url_or_dir)
    if text.startswith(("http://", "https://")):
        return NetworkSource.for_urls(text, proxy=proxy)
    return LocalSource(text)
