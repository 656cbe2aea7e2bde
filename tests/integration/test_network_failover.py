"""Failover against real loopback servers: nginx Stratum-1s, two Squids, a stdlib fault server.

Every case ends in a verified download or a FetchError listing the attempts; never wrong bytes.
The fault server (`tests/fault_server.py`) plays several "hosts" by path prefix:
`/<mode>/cvmfs/test.repo/<object>` with mode `ok`, any status code (`500`, `404`, `429`),
`corrupt` (last byte flipped), `short` (half the body, then close), `slow` (trickles below the
limit) or `stall` (headers, then silence).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.errors import FetchError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash
from pycvmfs.network.curl_transport import CurlTransport
from pycvmfs.network.download import Downloader, DownloadSettings
from pycvmfs.network.failover import RouteState
from pycvmfs.network.proxies import DIRECT, Proxy, parse_proxies
from pycvmfs.network.sink import MemoryDestination, VerifyingSink
from pycvmfs.network.transport import Transport
from pycvmfs.network.urllib3_transport import Urllib3Transport
from tests.fault_server import FaultServer, loopback_sites, make_world_readable
from tests.servers import Nginx, nginx_binary
from tests.squid import Squid

REPO_SOURCE = Path(__file__).resolve().parents[2] / "testdata" / "repo"
FQRN = "test.repo"
FAST = DownloadSettings(timeout=1.0, timeout_direct=1.0, low_speed_limit=1024, max_retries=1,
                        backoff_init=0.05, backoff_max=0.1)

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")


@dataclass(frozen=True)
class Obj:
    path: str
    digest: ContentHash
    compression: Compression
    stored: bytes


def _objects(repo: Path) -> list[Obj]:
    found = []
    for file in sorted((repo / "data").rglob("*")):
        if not file.is_file():
            continue
        name = file.parent.name + file.name
        text = name if name[-1] in "0123456789abcdef" else name[:-1]  # drop the suffix
        stored = file.read_bytes()
        try:
            zlib.decompress(stored)
            compression = Compression.ZLIB
        except zlib.error:
            compression = Compression.NONE
        found.append(Obj(str(file.relative_to(repo)), ContentHash.parse(text), compression,
                         stored))
    found.sort(key=lambda o: -len(o.stored))
    return found


@dataclass
class Rig:
    repo: Path
    s1: Nginx
    s2: Nginx
    squids: tuple[Squid, Squid]
    fault: FaultServer
    objects: list[Obj]
    make_transport: Callable[[], Transport]
    used: set[str] = field(default_factory=set)

    def host(self, server: Nginx) -> str:
        return f"{server.url}/cvmfs/{FQRN}"

    def fresh(self) -> Obj:
        """An object no earlier test fetched (so no proxy has it cached)."""
        for obj in self.objects:
            if obj.path not in self.used:
                self.used.add(obj.path)
                return obj
        raise RuntimeError("test repository has too few objects")

    @property
    def proxy_group(self) -> str:
        return "|".join(s.url for s in self.squids)


@pytest.fixture(scope="module", params=[CurlTransport, Urllib3Transport], ids=["curl", "urllib3"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """Servers, proxies and objects for one transport (libcurl's, the default, and
    urllib3's, where pycurl is missing): each has its own, so `fresh` objects are fresh
    to its proxies."""
    reason = Squid.available()
    if reason is not None:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="pycvmfs-netrepo-"))
    base.chmod(0o755)
    repo = base / "repo"
    shutil.copytree(REPO_SOURCE, repo)
    make_world_readable(repo)
    try:
        with loopback_sites({FQRN: repo}) as sites:
            yield Rig(repo, sites.s1, sites.s2, sites.squids, sites.fault, _objects(repo),
                      request.param)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def transport(rig: Rig) -> Iterator[Transport]:
    t = rig.make_transport()
    yield t
    t.close()


def _download(dl: Downloader, obj: Obj) -> bytes:
    out = MemoryDestination()
    sink = VerifyingSink(obj.digest, obj.compression, out)
    dl.download(obj.path, sink)
    return out.getvalue()


def _expected(obj: Obj) -> bytes:
    return zlib.decompress(obj.stored) if obj.compression is Compression.ZLIB else obj.stored


def _downloader(transport: Transport, hosts: list[str], proxies: str,
                seed: int = 0) -> Downloader:
    state = RouteState(hosts, parse_proxies(proxies), rng=random.Random(seed))
    return Downloader(transport, state, FAST, rng=random.Random(seed))


def test_through_the_squid_group_and_cache_hit_on_second_download(
        rig: Rig, transport: Transport) -> None:
    obj = rig.fresh()
    dl = _downloader(transport, [rig.host(rig.s1), rig.host(rig.s2)], rig.proxy_group)
    first = _download(dl, obj)
    second = _download(dl, obj)
    assert first == second == _expected(obj)
    _, proxy = dl.route_state.current()
    assert isinstance(proxy, Proxy)
    squid = next(s for s in rig.squids if s.url == proxy.url)
    lines = squid.wait_for_log(obj.path, count=2)
    assert len(lines) == 2 and "TCP_MISS" in lines[0]
    assert squid.cache_hits(obj.path) == lines[1:]  # TCP_HIT or TCP_MEM_HIT
    stats = dl.statistics()
    assert stats.downloads == 2 and stats.errors == 0
    assert stats.bytes_received == 2 * len(obj.stored)


def test_killed_proxy_fails_over_to_the_other_proxy(
        rig: Rig, transport: Transport, caplog: pytest.LogCaptureFixture) -> None:
    obj = rig.fresh()
    live = rig.squids[0]
    with Squid() as doomed:
        group = f"{doomed.url}|{live.url}"
        seed = next(i for i in range(100) if RouteState(
            ["h"], parse_proxies(group), rng=random.Random(i)).current()[1] == Proxy(doomed.url))
        doomed.kill()
        dl = _downloader(transport, [rig.host(rig.s1), rig.host(rig.s2)], group, seed)
        with caplog.at_level(logging.WARNING, logger="pycvmfs.network.download"):
            assert _download(dl, obj) == _expected(obj)
    assert dl.route_state.current() == (rig.host(rig.s1), Proxy(live.url))
    failures = [r.getMessage() for r in caplog.records]
    assert len(failures) == 2  # first try + one retry on the dead proxy, then the switch
    assert all(doomed.url in m and rig.host(rig.s1) in m and "proxy connection" in m
               for m in failures)
    assert dl.statistics().errors == 2


@pytest.mark.parametrize("via", ["squid", "direct"])
def test_killed_stratum1_fails_over_to_the_next_host(
        rig: Rig, transport: Transport, via: str) -> None:
    obj = rig.fresh()
    with Nginx() as doomed:
        doomed.publish(f"cvmfs/{FQRN}", rig.repo)
        hosts = [f"{doomed.url}/cvmfs/{FQRN}", rig.host(rig.s2)]
    proxies = rig.proxy_group if via == "squid" else "DIRECT"
    dl = _downloader(transport, hosts, proxies)
    assert _download(dl, obj) == _expected(obj)
    assert dl.route_state.current()[0] == rig.host(rig.s2)
    if via == "squid":  # squid says ERR_CONNECT_FAIL: both proxies blamed, then the host
        assert dl.route_state.current()[1] in (Proxy(s.url) for s in rig.squids)


@pytest.mark.parametrize("status", ["500", "404"])
@pytest.mark.parametrize("via", ["squid", "direct"])
def test_stratum1_answering_an_error_fails_over(
        rig: Rig, transport: Transport, status: str, via: str) -> None:
    obj = rig.fresh()
    proxies = rig.proxy_group if via == "squid" else "DIRECT"
    dl = _downloader(transport, [rig.fault.url(status), rig.host(rig.s1)], proxies)
    assert _download(dl, obj) == _expected(obj)
    assert dl.statistics().errors == 1  # HTTP errors are not retried on the same host


@pytest.mark.parametrize("via", ["squid", "direct"])
def test_corrupted_object_gets_a_no_cache_retry_then_the_next_host(
        rig: Rig, transport: Transport, via: str) -> None:
    obj = rig.fresh()
    proxies = rig.proxy_group if via == "squid" else "DIRECT"
    dl = _downloader(transport, [rig.fault.url("corrupt"), rig.host(rig.s2)], proxies)
    before = len(rig.fault.requests)
    assert _download(dl, obj) == _expected(obj)
    seen = [h for p, h, _ in rig.fault.requests[before:] if p.endswith(obj.path)]
    assert len(seen) == 2  # the no-cache retry reached the origin through the proxy
    assert "no-cache" not in seen[0].get("Cache-Control", "") + seen[0].get("Pragma", "")
    assert "no-cache" in seen[1].get("Cache-Control", "") + seen[1].get("Pragma", "")
    assert dl.statistics().errors == 2


def test_corrupted_everywhere_raises_fetch_error_listing_attempts(
        rig: Rig, transport: Transport) -> None:
    obj = rig.fresh()
    hosts = [rig.fault.url("corrupt"), rig.fault.url("corrupt").replace("127.0.0.1", "localhost")]
    dl = _downloader(transport, hosts, rig.proxy_group)
    out = MemoryDestination()
    with pytest.raises(FetchError) as info:
        dl.download(obj.path, VerifyingSink(obj.digest, obj.compression, out))
    message = str(info.value)
    assert "all 3 attempts failed" in message and message.count("corrupted data") == 3
    assert "127.0.0.1" in message and "localhost" in message
    assert any(s.url in message for s in rig.squids)


def test_slow_link_below_the_low_speed_limit_fails_over(
        rig: Rig, transport: Transport) -> None:
    obj = rig.objects[0]  # the largest object: the trickle would take minutes
    assert len(obj.stored) > 10_000
    dl = _downloader(transport, [rig.fault.url("slow"), rig.host(rig.s1)], "DIRECT")
    start = time.monotonic()
    result = dl.download(obj.path, VerifyingSink(obj.digest, obj.compression,
                                                 MemoryDestination()))
    elapsed = time.monotonic() - start
    assert result.url.startswith(rig.host(rig.s1))
    assert [a.reason for a in result.attempts] == [
        "host connection failed or timed out (transfer slower than the low-speed limit, "
        "below 1024 B/s)"] * 2
    assert 2.0 <= elapsed < 6.0  # two 1 s windows + a short backoff
    assert result.proxy == str(DIRECT)


def test_stalled_link_hits_the_read_timeout(rig: Rig, transport: Transport) -> None:
    obj = rig.fresh()
    dl = _downloader(transport, [rig.fault.url("stall"), rig.host(rig.s2)], "DIRECT")
    result = dl.download(obj.path, VerifyingSink(obj.digest, obj.compression,
                                                 MemoryDestination()))
    assert result.url.startswith(rig.host(rig.s2))
    assert len(result.attempts) == 2  # first try + one retry, then the next host
    # urllib3's read timeout; libcurl, as the reference, sees a stall as no bytes in the
    # low-speed window
    kind = "timed out, " if isinstance(transport, Urllib3Transport) else \
        "transfer slower than the low-speed limit"
    assert all(a.reason.startswith(f"host connection failed or timed out ({kind}")
               for a in result.attempts), result.attempts


def test_429_is_retried_then_the_host_is_switched(rig: Rig, transport: Transport) -> None:
    obj = rig.fresh()
    dl = _downloader(transport, [rig.fault.url("429"), rig.host(rig.s1)], rig.proxy_group)
    result = dl.download(obj.path, VerifyingSink(obj.digest, obj.compression,
                                                 MemoryDestination()))
    assert [a.url for a in result.attempts] == [f"{rig.fault.url('429')}/{obj.path}"] * 2
    assert all("HTTP 429" in a.reason for a in result.attempts)


def test_request_headers_and_keep_alive(rig: Rig, transport: Transport) -> None:
    obj = rig.fresh()
    dl = _downloader(transport, [rig.fault.url("ok")], "DIRECT")
    before = len(rig.fault.requests)
    assert _download(dl, obj) == _download(dl, obj) == _expected(obj)
    (_, first, port1), (_, second, port2) = rig.fault.requests[before:]
    assert port1 == port2  # the second request reused the pooled connection
    assert first["Connection"] == "Keep-Alive" and first["Pragma"] == ""
    assert first["User-Agent"].startswith("cvmfs Fuse pycvmfs/")
    assert "Cache-Control" not in first


def test_concurrent_downloads_share_one_downloader(rig: Rig, transport: Transport) -> None:
    objs = [rig.fresh() for _ in range(6)]
    dl = _downloader(transport, [rig.host(rig.s1), rig.host(rig.s2)], rig.proxy_group)
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def worker(obj: Obj) -> None:
        try:
            for _ in range(3):
                results[obj.path] = _download(dl, obj)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(o,)) for o in objs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[o.path] == _expected(o) for o in objs)
    assert dl.statistics().downloads == 18 and dl.statistics().errors == 0


def test_short_transfer_is_retried_then_the_host_is_switched(
        rig: Rig, transport: Transport) -> None:
    obj = rig.fresh()
    dl = _downloader(transport, [rig.fault.url("short"), rig.host(rig.s1)], "DIRECT")
    result = dl.download(obj.path, VerifyingSink(obj.digest, obj.compression,
                                                 MemoryDestination()))
    assert result.url.startswith(rig.host(rig.s1))
    assert [a.reason.split(" (")[0] for a in result.attempts] == ["host transfer cut short"] * 2
