"""The mount's store-or-download path keeps the byte budgets: an endless catalog stops at
PYCVMFS_MAX_CATALOG_MB, a zlib-bomb catalog under a wrong hash is never inflated into the
cache, an endless data object is cut at its catalog size; nothing is left behind."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pycvmfs.cache.fetcher import Fetcher
from pycvmfs.cache.host import CacheConfig, CacheHost
from pycvmfs.cache.quota_protocol import ObjectKind
from pycvmfs.errors import FetchError
from pycvmfs.format.compression import Compression, make_object, stored_size_bound
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.network.download import Downloader, DownloadSettings
from pycvmfs.network.failover import RouteState
from pycvmfs.network.proxies import ProxyChoice, parse_proxies
from pycvmfs.network.transport import Body, MockTransport
from pycvmfs.repository.network_source import NetworkSource
from tests.zlib_bomb import zlib_bomb

MIB = 1 << 20
HOSTS = ["http://s1/cvmfs/r", "http://s2/cvmfs/r"]
Reply = tuple[int, Mapping[str, str], Body]


def endless() -> Iterator[bytes]:
    return itertools.repeat(b"\0" * 65536)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[CacheHost]:
    with CacheHost(CacheConfig(tmp_path / "cache", quota_limit_mb=-1, shared=False)) as made:
        yield made


def fetcher(host: CacheHost, body: Body, *, max_unsized_bytes: int) -> Fetcher:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]) -> Reply:
        return 200, {}, body

    downloader = Downloader(MockTransport(handler), RouteState(HOSTS, parse_proxies("DIRECT")),
                            DownloadSettings(), sleep=lambda _: None, rng=random.Random(1))
    return Fetcher(host, NetworkSource(downloader, "mock"), max_unsized_bytes=max_unsized_bytes)


def cache_bytes(host: CacheHost) -> int:
    return sum(p.stat().st_size for p in host.config.directory.rglob("*")
               if p.is_file() and p.suffix not in (".db", ".db-journal", ".db-wal"))


def test_endless_catalog_stops_at_the_configured_cap(host: CacheHost) -> None:
    name = ContentHash.of(Algorithm.SHA1, b"a catalog")
    with pytest.raises(FetchError) as info:
        fetcher(host, endless(), max_unsized_bytes=2 * MIB).fetch(
            name, Suffix.CATALOG, Compression.ZLIB, kind=ObjectKind.CATALOG)
    message = str(info.value)
    assert f"budget of {stored_size_bound(2 * MIB, Compression.ZLIB)} bytes" in message
    assert "2 MiB (PYCVMFS_MAX_CATALOG_MB)" in message
    assert not host.store.contains(name) and cache_bytes(host) < MIB


def test_bomb_catalog_under_a_wrong_hash_is_never_inflated(host: CacheHost) -> None:
    name = ContentHash.of(Algorithm.SHA1, b"the catalog the manifest names")
    with pytest.raises(FetchError, match="content hashes to"):
        fetcher(host, zlib_bomb(1024), max_unsized_bytes=1 << 30).fetch(
            name, Suffix.CATALOG, Compression.ZLIB, kind=ObjectKind.CATALOG)
    assert cache_bytes(host) < MIB  # neither the 1 GiB nor the spooled 1 MB is left


def test_catalog_is_inflated_into_the_cache_once_its_hash_matched(host: CacheHost) -> None:
    data = b"SQLite format 3\0" + bytes(3 * MIB)
    digest, stored = make_object(data)
    with fetcher(host, stored, max_unsized_bytes=4 * MIB).fetch(
            digest, Suffix.CATALOG, Compression.ZLIB, kind=ObjectKind.CATALOG) as fh:
        assert fh.read() == data


def test_endless_data_object_is_cut_at_its_size(host: CacheHost) -> None:
    data = b"x" * 186
    digest, stored = make_object(data)
    pulled = 0

    def body() -> Iterator[bytes]:
        nonlocal pulled
        for block in itertools.chain([stored], endless()):
            pulled += len(block)
            yield block

    with pytest.raises(FetchError, match=f"budget of {stored_size_bound(186, Compression.ZLIB)}"):
        fetcher(host, body(), max_unsized_bytes=1 << 30).fetch(
            digest, Suffix.NONE, Compression.ZLIB, expected_size=186)
    assert pulled <= 4 * (stored_size_bound(186, Compression.ZLIB) + 65536)  # 4 attempts
    assert not host.store.contains(digest)
