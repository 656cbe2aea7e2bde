"""A slow download never blocks the rest of the mount: while one big file trickles in from
a throttled Stratum-1, lookups, listings and reads of other files (cached or not) answer."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault_server import FaultServer
from tests.mounting import cli_mount
from tests.publish_helpers import Keys, pseudo_random, run_publish
from tests.servers import NEEDS_FUSE_AND_NGINX, shared_scratch

pytestmark = NEEDS_FUSE_AND_NGINX

BIG = pseudo_random(3, 2 * 1024 * 1024)  # ~6 s at the throttled ~320 KiB/s
SMALL = {f"small/s{i}.txt": pseudo_random(100 + i, 2000).hex().encode() for i in range(6)}


@pytest.fixture
def storage(keys: Keys) -> Iterator[Path]:
    with shared_scratch("pycvmfs-concurrency-") as base:
        tree = base / "tree"
        for name, data in {"big.bin": BIG, **SMALL}.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(data)
        run_publish(tree, base / "storage", keys, chunking=None)  # one 2 MiB object
        yield base / "storage"


@pytest.mark.slow
def test_slow_download_does_not_block_other_files(storage: Path, keys: Keys,
                                                  tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(tmp_path / "etc"), HOME=str(tmp_path))
    with FaultServer({keys.fqrn: storage}) as fault:
        options = {"CVMFS_SERVER_URL": fault.url("throttle.files"),
                   "CVMFS_HTTP_PROXY": "DIRECT",
                   "CVMFS_PUBLIC_KEY": str(keys.public_key_file),
                   "CVMFS_CACHE_BASE": str(tmp_path / "cache")}
        with cli_mount(keys.fqrn, mnt, env=env, options=options):
            assert (mnt / "small" / "s0.txt").read_bytes() == SMALL["small/s0.txt"]  # cached
            before = len(fault.requests_for("/data/"))
            result: list[bytes] = []
            slow = threading.Thread(target=lambda: result.append((mnt / "big.bin").read_bytes()))
            slow.start()
            try:
                while len(fault.requests_for("/data/")) == before:  # the big one started
                    slow.join(0.05)
                # meanwhile: names, listings, a cached file and files never read before
                assert sorted(os.listdir(mnt / "small")) == sorted(p.rsplit("/", 1)[1]
                                                                   for p in SMALL)
                assert os.stat(mnt / "big.bin").st_size == len(BIG)
                for name, data in SMALL.items():
                    assert (mnt / name).read_bytes() == data
                assert os.getxattr(mnt, "user.revision").isdigit()
                assert slow.is_alive(), "the big download finished before the other reads"
            finally:
                slow.join(60)
            assert result == [BIG]
