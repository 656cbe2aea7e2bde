"""File bundles through the client core, without sockets or FUSE: opening a trigger makes
the mount fetch the listed files into its cache (chunked ones chunk by chunk) without
anything reading them; `CVMFS_PREFETCH_FILEBUNDLES=no` turns it off; `user.bundle_trigger`
tells triggers apart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.client import Client, open_client
from pycvmfs.config import load_config
from pycvmfs.format.bundles import render_spec
from pycvmfs.format.hashes import ContentHash
from pycvmfs.fs.vfs import ROOT_INODE
from pycvmfs.network.transport import MockTransport
from tests.publish_helpers import Keys, pseudo_random, run_publish
from tests.waiting import wait_until

URL = "http://stratum1.test/cvmfs/test.pycvmfs.org"
BIG = pseudo_random(11, 300_000)  # several chunks of 16-64 KiB
LISTED = ("/lib/dep1.so", "/lib/sub/dep2.so", "/big.bin")


@pytest.fixture
def storage(tmp_path: Path, keys: Keys) -> Path:
    tree = tmp_path / "tree"
    (tree / "lib" / "sub").mkdir(parents=True)
    (tree / "lib" / "tool").write_bytes(b"#!/bin/tool\n")
    (tree / "lib" / "dep1.so").write_bytes(pseudo_random(1, 5000))
    (tree / "lib" / "sub" / "dep2.so").write_bytes(pseudo_random(2, 7000))
    (tree / "big.bin").write_bytes(BIG)
    (tree / "other.txt").write_bytes(b"not listed")
    (tree / "lib" / ".cvmfsbundle-tool").write_bytes(
        render_spec(["dep1.so", "./sub/dep2.so", "/big.bin", "/not/there"]))
    result = run_publish(tree, tmp_path / "storage", keys)
    assert result.bundle_triggers == 1
    return tmp_path / "storage"


def _client(tmp_path: Path, keys: Keys, storage: Path, **overrides: str) -> Client:
    def serve(url: str, proxy: object, headers: object) -> tuple[int, dict[str, str], bytes]:
        path = storage / url.removeprefix(URL + "/")
        return (200, {}, path.read_bytes()) if path.is_file() else (404, {}, b"")

    (tmp_path / "etc").mkdir(exist_ok=True)
    config = load_config(keys.fqrn, config_root=tmp_path / "etc", environ={}, is_root=True,
                         overrides={"CVMFS_SERVER_URL": URL, "CVMFS_HTTP_PROXY": "DIRECT",
                                    "CVMFS_PUBLIC_KEY": str(keys.public_key_file),
                                    "CVMFS_CACHE_BASE": str(tmp_path / "cache"),
                                    "CVMFS_MAX_RETRIES": "0", **overrides})
    return open_client(config, transport=MockTransport(serve))


@pytest.fixture
def client(tmp_path: Path, keys: Keys, storage: Path) -> Iterator[Client]:
    made = _client(tmp_path, keys, storage)
    try:
        yield made
    finally:
        made.close()


def _ino(client: Client, path: str) -> int:
    ino = ROOT_INODE
    for name in path.strip("/").split("/"):
        ino = client.vfs.lookup(ino, name).ino
    return ino


def _listed_objects(client: Client) -> list[ContentHash]:
    return [p.hash for path in LISTED for p in client.repository.pieces(path)[1]]


def test_opening_the_trigger_prefetches_the_listed_files(client: Client) -> None:
    objects = _listed_objects(client)
    assert len(objects) > 4  # big.bin is chunked
    store = client.cache.store
    assert not any(store.contains(h) for h in objects)
    trigger = _ino(client, "/lib/tool")
    handle = client.vfs.open(trigger, 0)
    client.vfs.release(handle)
    wait_until(lambda: all(store.contains(h) for h in objects), 10,
               "the listed files' objects in the cache")
    other = client.repository.pieces("/other.txt")[1][0].hash
    assert not store.contains(other)
    assert client.bundles is not None
    counted = client.bundles.counters  # updated after each file's last object arrived
    wait_until(lambda: (counted.files, counted.failures) == (3, 1), 10,
               "the three files and the missing /not/there counted")
    c = client.bundles.counters
    assert (c.triggered, c.files, c.objects, c.dropped) == (1, 3, len(objects), 0)
    assert client.vfs.getxattr(trigger, "user.bundle_trigger") == b"1"
    assert client.vfs.getxattr(_ino(client, "/lib/dep1.so"), "user.bundle_trigger") == b"0"


def test_turned_off_nothing_is_prefetched(tmp_path: Path, keys: Keys, storage: Path) -> None:
    client = _client(tmp_path, keys, storage, CVMFS_PREFETCH_FILEBUNDLES="no")
    try:
        assert client.bundles is None
        trigger = _ino(client, "/lib/tool")
        client.vfs.release(client.vfs.open(trigger, 0))
        time.sleep(0.5)  # the point: time passes and nothing arrives
        store = client.cache.store
        assert not any(store.contains(h) for h in _listed_objects(client))
        assert client.vfs.getxattr(trigger, "user.bundle_trigger") == b"1"
    finally:
        client.close()


def test_pool_size_is_configured(tmp_path: Path, keys: Keys, storage: Path) -> None:
    client = _client(tmp_path, keys, storage, CVMFS_BUNDLE_POOL_SIZE="3")
    try:
        assert client.config.bundle_pool_size == 3 and client.config.prefetch_filebundles
        client.vfs.release(client.vfs.open(_ino(client, "/lib/tool"), 0))
        names = [t.name for t in threading.enumerate() if t.name.startswith("bundle-prefetch")]
        assert sorted(names) == ["bundle-prefetch-0", "bundle-prefetch-1", "bundle-prefetch-2"]
    finally:
        client.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("bundle-prefetch")]
