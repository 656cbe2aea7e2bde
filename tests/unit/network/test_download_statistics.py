"""Download counters by Stratum-1 and by proxy (what `pycvmfs status`/`metrics` show)."""

from __future__ import annotations

import random
from collections.abc import Mapping

from pycvmfs.format.compression import Compression, make_object
from pycvmfs.network.download import Downloader, DownloadSettings, HostCounters
from pycvmfs.network.failover import RouteState
from pycvmfs.network.proxies import DIRECT, ProxyChoice, parse_proxies
from pycvmfs.network.sink import MemoryDestination, MemorySink, VerifyingSink
from pycvmfs.network.transport import Body, MockTransport

DATA = b"payload " * 1000
DIGEST, STORED = make_object(DATA)
PATH = DIGEST.object_path()
HOSTS = ["http://s1/cvmfs/r", "http://s2/cvmfs/r"]
Reply = tuple[int, Mapping[str, str], Body]


def _downloader(transport: MockTransport, proxies: str = "DIRECT") -> Downloader:
    state = RouteState(HOSTS, parse_proxies(proxies), rng=random.Random(1))
    return Downloader(transport, state, DownloadSettings(max_retries=1), sleep=lambda s: None,
                      clock=lambda: 0.0, rng=random.Random(2))


def test_retries_and_failovers_by_host() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        return 200, {}, (STORED if url.startswith(HOSTS[1]) else STORED[:-1] + b"!")

    dl = _downloader(MockTransport(handler))
    dl.download(PATH, VerifyingSink(DIGEST, Compression.ZLIB, MemoryDestination(),
                                    expected_size=len(DATA)))
    stats = dl.statistics()
    s1, s2 = stats.hosts[HOSTS[0]], stats.hosts[HOSTS[1]]
    # corrupt on s1, once more without caches (a retry there), then s2 (a failover)
    assert (s1.downloads, s1.errors, s1.retries, s1.failovers) == (0, 2, 1, 1)
    assert s1.bytes == 2 * len(STORED)
    assert (s2.downloads, s2.errors, s2.retries, s2.failovers) == (1, 0, 0, 0)
    assert s2.bytes == len(STORED) and stats.proxy_errors == {}
    stats.hosts[HOSTS[1]].downloads = 99  # a copy: the downloader's counters stay
    assert dl.statistics().hosts[HOSTS[1]] == HostCounters(
        downloads=1, bytes=len(STORED), seconds=0.0)


def test_proxy_errors_by_proxy() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        if proxy is not DIRECT and str(proxy).startswith("http://p1"):
            return 503, {"X-Squid-Error": "ERR_CONNECT_FAIL 111"}, b""
        return 200, {}, STORED

    dl = _downloader(MockTransport(handler), "http://p1:3128;http://p2:3128")
    for _ in range(2):
        dl.download(PATH, MemorySink(), expected=DIGEST)
    stats = dl.statistics()
    assert stats.proxy_errors == {"http://p1:3128": stats.errors}
    assert stats.hosts[HOSTS[0]].downloads == 2
    assert stats.hosts[HOSTS[0]].retries == stats.errors  # a proxy switch stays on s1
