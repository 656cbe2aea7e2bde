"""Where repository objects come from: a local storage directory or one HTTP server.

A source answers one question: "give me the bytes at this path relative to the repository
base" (`.cvmfspublished`, `data/ab/cdef...C`). It does not verify anything; the trust chain
and `format.compression.open_object` do that. Keeping the seam this small lets the next
issue put the real network layer (failover, proxies, retries, cache) behind the same
`ObjectSource` protocol without touching the reader.

Thread-safety: `LocalSource` is stateless; `HttpSource` shares one urllib3 `PoolManager`,
which is thread-safe. Both may be used from several threads at once.

Caveats: no retries, no failover, no proxies and no streaming: each `fetch` returns the whole
object in memory (objects are chunks of at most a few MiB, catalogs and whole small files).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

import urllib3

from pycvmfs import __version__
from pycvmfs.errors import FetchError, NotFoundError

USER_AGENT = f"cvmfs Fuse pycvmfs/{__version__}"
CONNECT_TIMEOUT_SECONDS = 5.0  # fact sheet 8.3: the reference client's default timeout is 5 s
READ_TIMEOUT_SECONDS = 30.0  # generous: a multi-MiB chunk over a slow link
POOL_MAXSIZE = 8  # connections kept per host; enough for a few reader threads


@runtime_checkable
class ObjectSource(Protocol):
    """Raw bytes of repository files, addressed relative to the repository base."""

    def fetch(self, path: str) -> bytes:
        """Bytes of `path`; NotFoundError if it does not exist, FetchError otherwise."""
        ...

    def describe(self) -> str:
        """Where the bytes come from, for error messages (a directory or a base URL)."""
        ...


def _check_relative(path: str) -> str:
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
        target = self.storage_dir / _check_relative(path)
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


class HttpSource:
    """One HTTP(S) server's base URL, e.g. `http://host/cvmfs/atlas.cern.ch`.

    Requests carry the reference client's headers: an empty `Pragma:` (no `no-cache`; fact
    sheet 8.5) and a `cvmfs Fuse ...` User-Agent. Redirects are followed (urllib3 default)."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise FetchError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._pool = urllib3.PoolManager(
            maxsize=POOL_MAXSIZE,
            block=False,
            # No retries here (the network layer of the next issue owns them); follow a
            # few redirects, as the reference client does.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0,
                                  redirect=3, raise_on_status=False),
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            headers={"User-Agent": USER_AGENT, "Pragma": ""},
        )

    def url_for(self, path: str) -> str:
        return f"{self.base_url}/{_check_relative(path)}"

    def fetch(self, path: str) -> bytes:
        url = self.url_for(path)
        try:
            response = self._pool.request("GET", url, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"GET {url} failed: {_reason(exc)}") from exc
        if response.status == 404:
            raise NotFoundError(f"GET {url}: 404 Not Found")
        if response.status != 200:
            raise FetchError(f"GET {url}: HTTP {response.status} {response.reason or ''}".rstrip())
        return bytes(response.data)

    def describe(self) -> str:
        return self.base_url

    def close(self) -> None:
        self._pool.clear()

    def __repr__(self) -> str:
        return f"HttpSource({self.base_url!r})"


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    """The innermost useful reason of a urllib3 error (MaxRetryError wraps the real one)."""
    inner = getattr(exc, "reason", None)
    return str(inner) if inner is not None else str(exc) or type(exc).__name__


def open_source(url_or_dir: str | os.PathLike[str]) -> LocalSource | HttpSource:
    """`http(s)://...` becomes an HttpSource; anything else is a local storage directory."""
    text = os.fspath(url_or_dir)
    if text.startswith(("http://", "https://")):
        return HttpSource(text)
    return LocalSource(text)
