"""An `ObjectSource` over the client network layer: Stratum-1 ring, proxy groups,
failover, retries and backoff (fact sheet 8). Small files come back as bytes within their
budget (`MemorySink`); objects stream into the caller's `VerifyingSink`, verified by the
download loop. The on-disk cache joins in with `cache/fetcher.py`."""

from __future__ import annotations

from pycvmfs.network.download import Downloader
from pycvmfs.network.failover import RouteState
from pycvmfs.network.proxies import parse_proxies, parse_server_urls
from pycvmfs.network.sink import MemorySink, VerifyingSink
from pycvmfs.network.transport import default_transport
from pycvmfs.repository.source import DEFAULT_FETCH_BYTES, check_relative


class NetworkSource:
    """`fetch`/`fetch_into` through a shared `Downloader` (thread-safe, like the downloader)."""

    def __init__(self, downloader: Downloader, description: str) -> None:
        self.downloader = downloader
        self._description = description

    @classmethod
    def for_urls(cls, urls: str, *, proxy: str = "DIRECT") -> NetworkSource:
        """A source over `;`-separated Stratum-1 URLs and `CVMFS_HTTP_PROXY`-style proxies,
        with the client's default timeouts and retries (the no-FUSE reader's source)."""
        route = RouteState(parse_server_urls(urls), parse_proxies(proxy, ""))
        return cls(Downloader(default_transport(), route), urls)

    def fetch(self, path: str, *, max_bytes: int = DEFAULT_FETCH_BYTES) -> bytes:
        sink = MemorySink(max_bytes)
        self.downloader.download("/" + check_relative(path), sink)
        return sink.getvalue()

    def fetch_into(self, path: str, sink: VerifyingSink) -> None:
        self.downloader.download("/" + check_relative(path), sink)

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        self.downloader.transport.close()
