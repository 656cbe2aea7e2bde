"""The download loop over MockTransport: attempts, no-cache headers, FetchError, statistics."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

import pytest

from pycvmfs.errors import FetchError
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.network.download import Downloader, DownloadSettings
from pycvmfs.network.failover import RouteState
from pycvmfs.network.failure import ErrorKind
from pycvmfs.network.proxies import DIRECT, ProxyChoice, parse_proxies
from pycvmfs.network.sink import MemoryDestination, MemorySink, VerifyingSink
from pycvmfs.network.transport import Body, MockTransport

DATA = b"payload " * 1000
DIGEST, STORED = make_object(DATA)
PATH = DIGEST.object_path()
HOSTS = ["http://s1/cvmfs/r", "http://s2/cvmfs/r"]
Reply = tuple[int, Mapping[str, str], Body]


def downloader(handler: MockTransport, proxies: str = "DIRECT") -> tuple[Downloader, list[float]]:
    slept: list[float] = []
    state = RouteState(HOSTS, parse_proxies(proxies), rng=random.Random(1))
    return Downloader(handler, state, DownloadSettings(max_retries=1), sleep=slept.append,
                      clock=lambda: 0.0, rng=random.Random(2)), slept


def sink() -> tuple[VerifyingSink, MemoryDestination]:
    out = MemoryDestination()
    return VerifyingSink(DIGEST, Compression.ZLIB, out, expected_size=len(DATA)), out


def test_corrupt_on_first_host_then_no_cache_then_next_host() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        return 200, {}, (STORED if url.startswith(HOSTS[1]) else STORED[:-1] + b"!")

    transport = MockTransport(handler)
    dl, slept = downloader(transport)
    target, out = sink()
    result = dl.download(PATH, target)
    assert out.getvalue() == DATA and result.url == f"{HOSTS[1]}/{PATH}"
    headers = [r[2] for r in transport.requests]
    assert headers[0]["Pragma"] == "" and "Cache-Control" not in headers[0]
    assert headers[1]["Pragma"] == "no-cache" and headers[1]["Cache-Control"] == "no-cache"
    assert headers[0]["User-Agent"].startswith("cvmfs Fuse pycvmfs/")
    assert [r[0].split("/cvmfs")[0] for r in transport.requests] == [
        "http://s1", "http://s1", "http://s2"]
    assert len(result.attempts) == 2 and slept == []
    stats = dl.statistics()
    assert stats.downloads == 1 and stats.errors == 2
    assert stats.bytes_received == 3 * len(STORED)


def test_everything_corrupt_raises_fetch_error_listing_attempts() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        return 200, {}, STORED[:-1] + b"!"

    dl, _ = downloader(MockTransport(handler))
    target, _ = sink()
    with pytest.raises(FetchError) as info:
        dl.download(PATH, target)
    message = str(info.value)
    assert "all 3 attempts failed" in message
    assert message.count("corrupted data") == 3 and "via DIRECT" in message
    assert "http://s2/cvmfs/r/" + PATH in message


def test_connection_errors_are_retried_with_backoff_sleep() -> None:
    calls: list[str] = []

    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        calls.append(url)
        if len(calls) <= 2:
            raise MockTransport.Error(ErrorKind.CONNECT)
        return 200, {}, STORED

    dl, slept = downloader(MockTransport(handler))
    target, out = sink()
    dl.download(PATH, target)
    assert out.getvalue() == DATA and len(slept) == 1 and 0 <= slept[0] <= 2.0
    assert calls[1] == calls[0] != calls[2]


def test_memory_sink_with_expected_hash_and_proxy_failover() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        if proxy is not DIRECT and str(proxy).startswith("http://p1"):
            return 503, {"X-Squid-Error": "ERR_CONNECT_FAIL 111"}, b""
        return 200, {}, STORED

    dl, _ = downloader(MockTransport(handler), "http://p1:3128;http://p2:3128")
    raw = MemorySink()
    for _ in range(2):  # the switch is global: the second download goes straight to p2
        result = dl.download(PATH, raw, expected=DIGEST)
        assert raw.getvalue() == STORED and result.proxy == "http://p2:3128"
    assert dl.statistics().errors <= 1 and dl.statistics().downloads == 2


def test_memory_sink_hash_mismatch_is_bad_data() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        return 200, {}, b"not it"

    dl, _ = downloader(MockTransport(handler))
    with pytest.raises(FetchError, match="corrupted data"):
        dl.download(PATH, MemorySink(), expected=DIGEST)


def test_statistics_speed() -> None:
    from pycvmfs.network.download import Statistics

    assert Statistics(1000, 1, 0, 2.0).speed == 500.0
    assert Statistics(0, 0, 0, 0.0).speed == 0.0


# --- byte budgets ------------------------------------------------------------------------------

SMALL = b"x" * 186
SMALL_DIGEST, SMALL_STORED = make_object(SMALL)
BLOCK = 4096


class Endless:
    """An endless body in blocks, counting what the client pulled."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.pulled = 0
        self.started = False
        self._prefix = prefix

    def __iter__(self) -> Iterator[bytes]:
        self.started = True
        if self._prefix:
            self.pulled += len(self._prefix)
            yield self._prefix
        while True:
            self.pulled += BLOCK
            yield b"\0" * BLOCK


def small_sink() -> tuple[VerifyingSink, MemoryDestination]:
    out = MemoryDestination()
    return VerifyingSink(SMALL_DIGEST, Compression.ZLIB, out, expected_size=len(SMALL)), out


def test_endless_body_is_cut_at_the_budget_and_the_next_host_serves() -> None:
    bodies: list[Endless] = []

    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        if url.startswith(HOSTS[1]):
            return 200, {}, SMALL_STORED
        bodies.append(Endless(SMALL_STORED))  # valid object, then more without end
        return 200, {}, bodies[-1]

    dl, _ = downloader(MockTransport(handler))
    target, out = small_sink()
    result = dl.download(SMALL_DIGEST.object_path(), target)
    assert out.getvalue() == SMALL and result.url.startswith(HOSTS[1])
    assert len(bodies) == 2  # first try, then the no-cache retry, then the next host
    for body in bodies:
        assert body.pulled <= target.budget + BLOCK
    assert all(f"budget of {target.budget} bytes" in a.reason for a in result.attempts)


def test_content_length_over_the_budget_is_refused_unread() -> None:
    body = Endless()

    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        return 200, {"Content-Length": str(1 << 40)}, body

    dl, _ = downloader(MockTransport(handler))
    target, _ = small_sink()
    with pytest.raises(FetchError) as info:
        dl.download(SMALL_DIGEST.object_path(), target)
    assert not body.started and dl.statistics().bytes_received == 0
    message = str(info.value)
    assert SMALL_DIGEST.object_path() in message and HOSTS[0] in message and HOSTS[1] in message
    assert f"Content-Length {1 << 40} refused" in message
    assert f"budget of {target.budget} bytes" in message


def test_content_length_within_the_budget_is_read() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        return 200, {"Content-Length": str(len(SMALL_STORED))}, SMALL_STORED

    dl, _ = downloader(MockTransport(handler))
    target, out = small_sink()
    dl.download(SMALL_DIGEST.object_path(), target)
    assert out.getvalue() == SMALL


def test_endless_small_file_into_a_memory_sink_stays_within_its_budget() -> None:
    bodies: list[Endless] = []

    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        bodies.append(Endless())
        return 200, {}, bodies[-1]

    dl, _ = downloader(MockTransport(handler))
    with pytest.raises(FetchError, match="budget of 65536 bytes"):
        dl.download("/.cvmfspublished", MemorySink(65536))
    assert len(bodies) == 3 and all(b.pulled <= 65536 + BLOCK for b in bodies)
    assert dl.statistics().bytes_received <= 3 * (65536 + BLOCK)


def test_a_local_sink_failure_is_raised_not_blamed_on_the_host() -> None:
    from pycvmfs.errors import CacheFullError

    class FullDisk(MemorySink):
        def write(self, data: bytes) -> None:
            raise CacheFullError("no space for the cache")

    transport = MockTransport(lambda url, proxy, headers: (200, {}, STORED))
    dl, _ = downloader(transport)
    with pytest.raises(CacheFullError):
        dl.download(PATH, FullDisk(), expected=DIGEST)
    assert len(transport.requests) == 1  # no retry, no failover
