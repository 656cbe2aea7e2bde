"""The client core without sockets or FUSE: `open_client` over a MockTransport that serves a
published storage directory, then the filesystem core as the adapters drive it (reads from
cache files with read-ahead, revision swaps, offline starts, fixed revisions, magic
xattrs wired to the downloader and the cache)."""

from __future__ import annotations

import errno
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.client import Client, open_client
from pycvmfs.config import load_config
from pycvmfs.errors import BlacklistedError, FetchError
from pycvmfs.format.certificates import (
    certificate_fingerprint,
    fingerprint_text,
    load_certificate,
)
from pycvmfs.fs.stats_document import STATS_XATTR
from pycvmfs.fs.vfs import ROOT_INODE, FsError
from pycvmfs.network.failure import ErrorKind
from pycvmfs.network.transport import MockTransport
from tests.publish_helpers import Keys, pseudo_random, run_publish
from tests.waiting import wait_until

URL = "http://stratum1.test/cvmfs/test.pycvmfs.org"
BIG = pseudo_random(7, 600_000)  # ~10 chunks of 16-64 KiB


class Site:
    """A storage directory served by a MockTransport that can go offline."""

    def __init__(self, base: Path, keys: Keys) -> None:
        self.base, self.keys = base, keys
        self.storage = base / "storage"
        self.online = True
        self.transport = MockTransport(self._serve)

    def _serve(self, url: str, proxy: object, headers: object) -> tuple[int, dict[str, str],
                                                                        bytes]:
        if not self.online:
            raise MockTransport.Error(ErrorKind.CONNECT)
        path = self.storage / url.removeprefix(URL + "/")
        return (200, {}, path.read_bytes()) if path.is_file() else (404, {}, b"")

    def publish(self, files: dict[str, bytes], timestamp: int) -> int:
        tree = self.base / f"tree-{timestamp}"
        for name, data in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(data)
        return run_publish(tree, self.storage, self.keys, ttl=1,
                           timestamp=timestamp).manifest.revision

    def client(self, **overrides: str) -> Client:
        (self.base / "etc").mkdir(exist_ok=True)
        config = load_config(self.keys.fqrn, config_root=self.base / "etc", environ={},
                             is_root=True, overrides={
                                 "CVMFS_SERVER_URL": URL, "CVMFS_HTTP_PROXY": "DIRECT",
                                 "CVMFS_PUBLIC_KEY": str(self.keys.public_key_file),
                                 "CVMFS_CACHE_BASE": str(self.base / "cache"),
                                 "CVMFS_MAX_RETRIES": "0", "PYCVMFS_MIN_TTL": "1",
                                 **overrides})
        return open_client(config, transport=self.transport)


T1 = int(time.time()) - 3600
T2 = T1 + 600


@pytest.fixture
def site(tmp_path: Path, keys: Keys) -> Site:
    return Site(tmp_path, keys)


@pytest.fixture
def client(site: Site) -> Iterator[Client]:
    site.publish({"a.txt": b"one, the first", "keep.txt": b"unchanged", "big.bin": BIG}, T1)
    opened = site.client()
    try:
        yield opened
    finally:
        opened.close()


def _ino(client: Client, name: str) -> int:
    return client.vfs.lookup(ROOT_INODE, name).ino


def test_reads_come_from_cache_files_with_read_ahead(client: Client) -> None:
    vfs = client.vfs
    handle = vfs.open(_ino(client, "big.bin"), 0)
    try:
        for offset, size in [(0, 4096), (70_000, 100_000), (599_990, 4096), (600_000, 10)]:
            assert vfs.read(handle, offset, size) == BIG[offset:offset + size]
        _, pieces = client.repository.pieces("/big.bin")
        assert len(pieces) > 3
        # reading piece 0 asked for the next ones in the background
        wait_until(lambda: client.cache.store.contains(pieces[1].hash), 5,
                   "the read-ahead of piece 1")
    finally:
        vfs.release(handle)
    whole = b"".join(vfs.read(h, o, 65536) for h in [vfs.open(_ino(client, "big.bin"), 0)]
                     for o in range(0, len(BIG), 65536))
    assert whole == BIG


def test_magic_xattrs_report_transfers_and_the_cache(client: Client) -> None:
    vfs = client.vfs
    ino = _ino(client, "a.txt")
    assert vfs.getxattr(ino, "user.lhash") == b"Not in cache"
    handle = vfs.open(ino, 0)
    assert vfs.read(handle, 0, 100) == b"one, the first"
    vfs.release(handle)
    expected = hashlib.sha1(b"one, the first").hexdigest().encode()
    assert vfs.getxattr(ino, "user.lhash") == expected  # decompressed, as cached
    assert int(vfs.getxattr(ROOT_INODE, "user.ndownload")) >= 3  # manifest, ..., the file
    assert int(vfs.getxattr(ROOT_INODE, "user.rx")) >= 0
    assert vfs.getxattr(ROOT_INODE, "user.hitrate") != b"n/a"
    assert vfs.getxattr(ROOT_INODE, "user.expires").isdigit()


def test_new_revision_keeps_unchanged_inodes_and_open_files(site: Site,
                                                            client: Client) -> None:
    vfs = client.vfs
    keep, old_a = _ino(client, "keep.txt"), _ino(client, "a.txt")
    with pytest.raises(FsError):
        vfs.lookup(ROOT_INODE, "new.txt")
    handle = vfs.open(old_a, 0)
    assert vfs.read(handle, 0, 4) == b"one,"
    swapped = []
    vfs.subscribe(lambda: swapped.append(True))
    assert not client.watcher.check_now()  # nothing new yet
    second = site.publish({"a.txt": b"two, the second one", "keep.txt": b"unchanged",
                           "big.bin": BIG, "new.txt": b"new"}, T2)
    assert client.watcher.check_now()
    assert swapped == [True] and client.repository.revision == second
    assert vfs.getxattr(ROOT_INODE, "user.revision") == str(second).encode()
    assert _ino(client, "keep.txt") == keep  # same content: same inode, page cache kept
    new_a = _ino(client, "a.txt")
    assert new_a != old_a  # new content: a fresh inode, never stale pages
    assert vfs.read(handle, 4, 100) == b" the first"  # the open file keeps its bytes
    assert vfs.getattr(old_a).size == len(b"one, the first")
    vfs.release(handle)
    with pytest.raises(FsError) as info:
        vfs.getattr(old_a)
    assert info.value.errno == errno.ESTALE
    assert vfs.getattr(new_a).size == len(b"two, the second one")
    assert vfs.lookup(ROOT_INODE, "new.txt").size == 3


def test_failed_check_keeps_serving_and_recovers(site: Site, client: Client) -> None:
    handle = client.vfs.open(_ino(client, "a.txt"), 0)
    assert client.vfs.read(handle, 0, 3) == b"one"
    site.online = False
    assert not client.watcher.check_now()
    assert client.watcher.offline and "attempts failed" in client.watcher.last_error
    assert client.vfs.read(handle, 0, 3) == b"one"  # cached: still served
    with pytest.raises(FsError) as info:  # never cached: EIO, fast
        client.vfs.read(client.vfs.open(_ino(client, "big.bin"), 0), 0, 10)
    assert info.value.errno == errno.EIO
    site.online = True
    assert not client.watcher.check_now() and not client.watcher.offline


def test_offline_start_from_the_breadcrumb(site: Site, client: Client) -> None:
    first = client.repository.revision
    handle = client.vfs.open(_ino(client, "a.txt"), 0)
    client.vfs.read(handle, 0, 100)
    client.close()
    site.online = False
    offline = site.client()
    try:
        assert offline.repository.trusted is None and offline.repository.revision == first
        assert offline.watcher.enabled and offline.watcher.offline
        ino = offline.vfs.lookup(ROOT_INODE, "a.txt").ino
        assert offline.vfs.read(offline.vfs.open(ino, 0), 0, 100) == b"one, the first"
        site.online = True
        second = site.publish({"a.txt": b"back"}, T2)
        assert offline.watcher.check_now() and offline.repository.revision == second
    finally:
        offline.close()


def test_stats_document_of_a_client(site: Site, client: Client) -> None:
    """What `pycvmfs status` reads, wired to the downloader, cache and watcher."""
    client.vfs.read(client.vfs.open(_ino(client, "a.txt"), 0), 0, 100)
    stats = json.loads(client.vfs.getxattr(ROOT_INODE, STATS_XATTR))
    assert stats["fqrn"] == site.keys.fqrn and stats["offline"] is False
    assert stats["host"] == stats["hosts"][0] == URL and stats["proxy"] == "DIRECT"
    assert stats["proxy_groups"] == [["DIRECT"]] and stats["fallback_proxy_groups"] == []
    assert stats["by_host"][URL]["downloads"] == stats["downloads"] > 0
    assert stats["cache"]["directory"] == str(site.base / "cache" / "shared")
    assert stats["cache"]["quota_bytes"] > 0 and stats["cache"]["pinned"] >= 1
    assert stats["cache"]["misses"] > 0 and stats["catalogs"] >= 1
    site.online = False
    assert not client.watcher.check_now()
    offline = json.loads(client.vfs.getxattr(ROOT_INODE, STATS_XATTR))
    assert offline["offline"] is True and "attempts failed" in offline["offline_reason"]
    assert offline["download_errors"] > 0 and offline["by_host"][URL]["errors"] > 0


def test_no_breadcrumb_and_no_server_is_an_error(site: Site) -> None:
    site.publish({"a.txt": b"x"}, T1)
    site.online = False
    with pytest.raises(FetchError):
        site.client()


def test_fixed_revisions(site: Site) -> None:
    site.publish({"a.txt": b"one"}, T1)
    site.publish({"a.txt": b"two"}, T2)
    between = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T1 + 1))
    for overrides, content in [({"CVMFS_REPOSITORY_DATE": between}, b"one"),
                               ({"CVMFS_REPOSITORY_TAG": "trunk-previous"}, b"one"),
                               ({"CVMFS_AUTO_UPDATE": "no"}, b"two")]:
        fixed = site.client(**overrides)
        try:
            ino = fixed.vfs.lookup(ROOT_INODE, "a.txt").ino
            assert fixed.vfs.read(fixed.vfs.open(ino, 0), 0, 10) == content, overrides
            assert fixed.watcher.expires() == "never (fixed root catalog)"
        finally:
            fixed.close()
    too_early = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T1 - 10))
    with pytest.raises(Exception, match="no revision published at or before"):
        site.client(CVMFS_REPOSITORY_DATE=too_early)


def test_catalogs_stay_pinned_while_attached_and_are_released(site: Site) -> None:
    site.publish({"a.txt": b"1", "sub/.cvmfscatalog": b"", "sub/f.txt": b"f"}, T1)
    client = site.client()
    try:
        quota = client.cache.quota
        root_only = quota.pinned_size()
        assert root_only > 0
        sub = client.vfs.lookup(ROOT_INODE, "sub").ino
        assert client.vfs.lookup(sub, "f.txt").size == 1  # attaches /sub
        assert quota.pinned_size() > root_only
        assert client.repository.tree.detach_nested() == 1
        assert quota.pinned_size() == root_only  # given back at once
        assert client.vfs.lookup(sub, "f.txt").size == 1  # attached again on demand
        first = set(quota.pinned())
        assert len(first) == 2
        site.publish({"a.txt": b"2", "sub/.cvmfscatalog": b"", "sub/f.txt": b"g"}, T2)
        assert client.watcher.check_now()  # revision 1 retired, still open
        site.publish({"a.txt": b"3"}, T2 + 60)
        assert client.watcher.check_now()  # revision 1 closed: unpinned
        assert not first & set(quota.pinned())
        assert str(client.repository.root_hash) in quota.pinned()
    finally:
        client.close()


def test_pinned_catalogs_are_given_back_under_pressure(site: Site) -> None:
    files = {f"n{i:02}/.cvmfscatalog": b"" for i in range(30)}
    files.update({f"n{i:02}/f.txt": str(i).encode() for i in range(30)})
    site.publish(files, T1)
    client = site.client(CVMFS_QUOTA_LIMIT="1")  # MB: far fewer than 30 pinned catalogs
    try:
        quota = client.cache.quota
        for i in range(30):
            directory = client.vfs.lookup(ROOT_INODE, f"n{i:02}").ino
            assert client.vfs.lookup(directory, "f.txt").size == len(str(i))
            assert quota.pinned_size() <= quota.capacity()
        assert len(client.repository.tree.attached()) < 30
    finally:
        client.close()


def test_geo_api_sorts_the_ring_then_max_servers_cuts_it(tmp_path: Path) -> None:
    from pycvmfs.client import downloader_for

    asked: list[str] = []
    key = tmp_path / "x.example.org.pub"
    key.write_text("not needed to order hosts")

    def geo(url: str, proxy: object, headers: object) -> tuple[int, dict[str, str], bytes]:
        asked.append(url)
        return 200, {}, b"3,1,2\n"

    config = load_config("x.example.org", config_root=tmp_path, environ={}, is_root=True,
                         overrides={"CVMFS_SERVER_URL": "http://a.test/cvmfs/@fqrn@;"
                                    "http://b.test:8000/cvmfs/@fqrn@;http://c.test/cvmfs/@fqrn@",
                                    "CVMFS_HTTP_PROXY": "DIRECT", "CVMFS_USE_GEOAPI": "yes",
                                    "CVMFS_MAX_SERVERS": "2", "CVMFS_PUBLIC_KEY": str(key),
                                    "CVMFS_CACHE_BASE": str(tmp_path / "cache")})
    _, route = downloader_for(config, MockTransport(geo))
    assert route.hosts == ("http://c.test/cvmfs/x.example.org",
                           "http://a.test/cvmfs/x.example.org")
    uuid = (config.cache_dir / "uuid").read_text().strip()
    assert asked and asked[0].endswith(f"/api/v1.0/geo/{uuid}/a.test,b.test,c.test")


def test_inline_lookups_never_load_a_catalog(site: Site) -> None:
    from pycvmfs.repository.catalog_tree import WouldLoadError, no_loading

    site.publish({"a.txt": b"1", "sub/.cvmfscatalog": b"", "sub/f.txt": b"f"}, T1)
    client = site.client()
    try:
        with no_loading():
            assert client.vfs.lookup(ROOT_INODE, "a.txt").size == 1  # the root is attached
            sub = client.vfs.lookup(ROOT_INODE, "sub").ino  # its entry is in the root too
            with pytest.raises(WouldLoadError):  # below it: a download, not for a loop
                client.vfs.lookup(sub, "f.txt")
        assert client.vfs.lookup(sub, "f.txt").size == 1  # where blocking is fine
        with no_loading():
            assert client.vfs.lookup(sub, "f.txt").size == 1  # attached now
    finally:
        client.close()


def test_alien_cache_serves_another_mount(site: Site, tmp_path: Path) -> None:
    site.publish({"a.txt": b"shared"}, T1)
    alien = tmp_path / "alien"
    options = {"CVMFS_ALIEN_CACHE": str(alien), "CVMFS_QUOTA_LIMIT": "-1",
               "CVMFS_SHARED_CACHE": "no"}
    first = site.client(**options)
    try:
        ino = first.vfs.lookup(ROOT_INODE, "a.txt").ino
        assert first.vfs.read(first.vfs.open(ino, 0), 0, 10) == b"shared"
    finally:
        first.close()
    assert any(p.is_file() for p in alien.glob("??/*"))
    site.online = False  # another node, same shared filesystem: no network needed
    second = site.client(CVMFS_CACHE_BASE=str(tmp_path / "other-base"), **options)
    try:
        ino = second.vfs.lookup(ROOT_INODE, "a.txt").ino
        assert second.vfs.read(second.vfs.open(ino, 0), 0, 10) == b"shared"
    finally:
        second.close()


def test_blacklisted_certificate_or_revision_is_never_mounted(site: Site) -> None:
    """`<config root>/blacklist` (the reference's /etc/cvmfs/blacklist): a listed signing
    certificate or a revision below `<fqrn N` refuses the mount, offline starts included;
    the file is read again at every revision check."""
    blacklist = site.base / "etc" / "blacklist"
    blacklist.parent.mkdir(parents=True, exist_ok=True)
    first = site.publish({"a.txt": b"one"}, T1)
    certificate = load_certificate((site.keys.keys_dir / f"{site.keys.fqrn}.crt")
                                       .read_bytes())
    blacklist.write_text(fingerprint_text(certificate_fingerprint(certificate)) + "\n")
    with pytest.raises(BlacklistedError, match="certificate .* is blacklisted"):
        site.client()
    blacklist.write_text(f"<{site.keys.fqrn} {first + 1}\n")
    with pytest.raises(BlacklistedError, match=f"revision {first} is blacklisted"):
        site.client()

    blacklist.write_text("")
    client = site.client()  # mounts revision 1, leaves its breadcrumb
    try:
        vfs = client.vfs
        handle = vfs.open(_ino(client, "a.txt"), 0)
        blacklist.write_text(f"<{site.keys.fqrn} {first + 2}\n")
        site.publish({"a.txt": b"two"}, T2)  # still below the bound
        assert not client.watcher.check_now()
        assert "blacklisted" in client.watcher.last_error
        # the served revision is blacklisted itself: nothing of it is served any more
        for refused in (lambda: vfs.lookup(ROOT_INODE, "a.txt"), lambda: vfs.readdir(ROOT_INODE),
                        lambda: vfs.read(handle, 0, 3)):
            with pytest.raises(FsError, match="blacklisted") as info:
                refused()
            assert info.value.errno == errno.EIO
        third = site.publish({"a.txt": b"three"}, T2 + 600)
        assert client.watcher.check_now() and client.repository.revision == third
        assert vfs.read(vfs.open(_ino(client, "a.txt"), 0), 0, 5) == b"three"  # served again
    finally:
        client.close()
    blacklist.write_text(f"<{site.keys.fqrn} {third + 1}\n")
    site.online = False  # the breadcrumb's revision is blacklisted too
    with pytest.raises(BlacklistedError):
        site.client()


def _cache_file(client: Client, name: str) -> Path:
    entry = client.repository.lookup(f"/{name}")
    assert entry.content_hash is not None
    return client.cache.store.path_of(entry.content_hash)


def test_a_truncated_cache_object_is_fetched_again_never_served_short(
        site: Site, client: Client) -> None:
    vfs = client.vfs
    handle = vfs.open(_ino(client, "a.txt"), 0)
    assert vfs.read(handle, 0, 100) == b"one, the first"
    vfs.release(handle)
    cached = _cache_file(client, "a.txt")
    cached.write_bytes(cached.read_bytes()[:7])  # half of it: a corrupt cache entry
    requests = len(site.transport.requests)
    handle = vfs.open(_ino(client, "a.txt"), 0)
    assert vfs.read(handle, 0, 100) == b"one, the first"  # refetched and verified
    assert len(site.transport.requests) == requests + 1
    cached.write_bytes(b"")  # truncated under an open handle: pread comes back short
    assert vfs.read(handle, 0, 100) == b"one, the first"
    vfs.release(handle)


def test_a_cache_object_that_stays_short_is_an_io_error(site: Site, client: Client) -> None:
    vfs = client.vfs
    handle = vfs.open(_ino(client, "a.txt"), 0)
    assert vfs.read(handle, 0, 3) == b"one"
    cached = _cache_file(client, "a.txt")
    original = client.repository.loader.open

    def shrinking(*args: object, **kwargs: object) -> object:
        opened = original(*args, **kwargs)
        cached.write_bytes(b"one")  # every fresh copy is truncated again at once
        return opened

    client.repository.loader.open = shrinking  # type: ignore[method-assign]
    cached.write_bytes(b"one")
    with pytest.raises(FsError) as info:
        vfs.read(vfs.open(_ino(client, "a.txt"), 0), 0, 100)
    assert info.value.errno == errno.EIO and "wrong size" in str(info.value)
    vfs.release(handle)


def test_a_failed_piece_is_not_fetched_again_at_once_by_the_same_handle(
        site: Site, client: Client) -> None:
    vfs = client.vfs
    handle = vfs.open(_ino(client, "big.bin"), 0)
    site.online = False
    for _ in range(2):  # the kernel's read-ahead, then its read: one round of attempts
        with pytest.raises(FsError) as info:
            vfs.read(handle, 0, 10)
        assert info.value.errno == errno.EIO
        if _ == 0:
            attempts = len(site.transport.requests)
    assert len(site.transport.requests) == attempts
    site.online = True
    fresh = vfs.open(_ino(client, "big.bin"), 0)  # a new open tries again
    assert vfs.read(fresh, 0, 10) == BIG[:10]
    vfs.release(fresh)
    vfs.release(handle)
