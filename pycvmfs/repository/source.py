"""Where repository objects come from: a local storage directory or Stratum-1 servers.

A source answers two questions about a path relative to the repository base
(`.cvmfspublished`, `data/ab/cdef...C`), always within a byte budget known beforehand:
- `fetch(path, max_bytes=...)`: the raw bytes of a small file (manifest, whitelist), more
  than `max_bytes` is refused (BudgetExceededError);
- `fetch_into(path, sink)`: stream a content-addressed object into a `VerifyingSink` (whose
  budget follows from the object's size) and return once the sink verified it: the one
  place object bytes are checked (hash, inflation, size), for both sources.
Over HTTP the source is the client's own network layer (`network_source.NetworkSource`:
proxies, failover, retries), so the no-FUSE reader and the mount share one HTTP path.

Thread-safety: `LocalSource` is stateless, `NetworkSource` thread-safe.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from pycvmfs.errors import BudgetExceededError, FetchError, NotFoundError
from pycvmfs.network.sink import VerifyingSink, over_budget

DEFAULT_FETCH_BYTES = 1 << 20  # budget of `fetch` when none is given (the reference's MemSink)
LOCAL_READ_BYTES = 1 << 20  # blocks LocalSource streams into a sink


@runtime_checkable
class ObjectSource(Protocol):
    """Raw bytes of repository files, addressed relative to the repository base."""

    def fetch(self, path: str, *, max_bytes: int = DEFAULT_FETCH_BYTES) -> bytes:
        """Bytes of the small file `path`; NotFoundError if it does not exist,
        BudgetExceededError if it has more than `max_bytes`, FetchError otherwise."""
        ...

    def fetch_into(self, path: str, sink: VerifyingSink) -> None:
        """Stream object `path` into `sink` and return once `sink.verify()` passed;
        NotFoundError, FetchError, or the sink's IntegrityError (over budget, corrupt)."""
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

    def fetch(self, path: str, *, max_bytes: int = DEFAULT_FETCH_BYTES) -> bytes:
        target = self.storage_dir / check_relative(path)
        try:
            with open(target, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise NotFoundError(f"{target}: no such file") from None
        except OSError as exc:
            raise FetchError(f"{target}: {exc.strerror or exc}") from exc
        if len(data) > max_bytes:
            raise BudgetExceededError(f"{target}: more than {max_bytes} bytes, over the "
                                      "budget of this file")
        return data

    def fetch_into(self, path: str, sink: VerifyingSink) -> None:
        """The file as the network would serve it: refused unread when larger than the
        sink's budget, streamed in blocks otherwise, then verified."""
        target = self.storage_dir / check_relative(path)
        sink.reset()
        try:
            with open(target, "rb") as fh:
                info = os.fstat(fh.fileno())
                if stat.S_ISREG(info.st_mode) and info.st_size > sink.budget:
                    raise BudgetExceededError(f"{target}: "
                                              + over_budget(info.st_size, sink.budget))
                while block := fh.read(LOCAL_READ_BYTES):
                    sink.write(block)
        except FileNotFoundError:
            raise NotFoundError(f"{target}: no such file") from None
        except OSError as exc:
            raise FetchError(f"{target}: {exc.strerror or exc}") from exc
        sink.verify()

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
