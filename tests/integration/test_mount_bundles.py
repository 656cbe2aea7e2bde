"""File bundles on a real mount: a repository published with a `.cvmfsbundle-` spec, served
by nginx, mounted with `pycvmfs mount`. Opening the trigger brings the listed files'
objects (a chunked one chunk by chunk) into the cache without anything reading them;
`CVMFS_PREFETCH_FILEBUNDLES=no` brings nothing; `getfattr -n user.bundle_trigger` answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.format.bundles import render_spec
from pycvmfs.format.hashes import ContentHash
from tests.fault_server import make_world_readable
from tests.publish_helpers import Keys, open_repository, pseudo_random, run_publish
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx
from tests.waiting import poll_until

ROOT = Path(__file__).resolve().parents[2]
LISTED = ("/lib/dep1.so", "/lib/sub/dep2.so", "/big.bin")

pytestmark = [*NEEDS_FUSE_AND_NGINX]


def _pycvmfs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycvmfs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, keys: Keys
           ) -> Iterator[tuple[str, list[ContentHash], ContentHash]]:
    base = tmp_path_factory.mktemp("bundles")
    tree = base / "tree"
    (tree / "lib" / "sub").mkdir(parents=True)
    (tree / "lib" / "tool").write_bytes(b"#!/bin/tool\n")
    (tree / "lib" / "dep1.so").write_bytes(pseudo_random(1, 5000))
    (tree / "lib" / "sub" / "dep2.so").write_bytes(pseudo_random(2, 7000))
    (tree / "big.bin").write_bytes(pseudo_random(3, 300_000))
    (tree / "other.txt").write_bytes(b"not listed")
    (tree / "lib" / ".cvmfsbundle-tool").write_bytes(
        render_spec(["dep1.so", "./sub/dep2.so", "/big.bin"]))
    storage = base / "storage"
    assert run_publish(tree, storage, keys).bundle_triggers == 1
    with open_repository(storage, keys) as repo:
        listed = [p.hash for path in LISTED for p in repo.pieces(path)[1]]
        other = repo.pieces("/other.txt")[1][0].hash
    assert len(listed) > 4  # big.bin is chunked
    make_world_readable(storage)
    for parent in storage.parents:  # nginx workers run as nobody
        if parent == Path(storage.anchor):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    with Nginx() as server:
        yield server.publish(f"cvmfs/{keys.fqrn}", storage), listed, other


def _mount(tmp_path: Path, keys: Keys, url: str, *options: str) -> tuple[Path, dict[str, str]]:
    config_root = tmp_path / "etc-cvmfs"
    (config_root / "config.d").mkdir(parents=True)
    (config_root / "config.d" / f"{keys.fqrn}.conf").write_text(
        f"CVMFS_SERVER_URL={url.rsplit('/', 1)[0]}/@fqrn@\n"
        f"CVMFS_PUBLIC_KEY={keys.public_key_file}\n"
        f"CVMFS_CACHE_BASE={tmp_path / 'cache'}\nCVMFS_MAX_RETRIES=0\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(config_root), HOME=str(tmp_path))
    args = [a for option in ("CVMFS_HTTP_PROXY=DIRECT", *options) for a in ("-o", option)]
    done = _pycvmfs("mount", keys.fqrn, str(mnt), *args, env=env)
    assert done.returncode == 0, done.stderr
    return mnt, env


def _cached(tmp_path: Path, content_hash: ContentHash) -> bool:
    text = str(content_hash)
    return (tmp_path / "cache" / "shared" / text[:2] / text[2:]).is_file()


def test_opening_the_trigger_fills_the_cache(
        tmp_path: Path, keys: Keys, served: tuple[str, list[ContentHash], ContentHash]) -> None:
    url, listed, other = served
    mnt, env = _mount(tmp_path, keys, url)
    try:
        assert not any(_cached(tmp_path, h) for h in listed)
        started = time.monotonic()
        with open(mnt / "lib" / "tool", "rb") as fh:
            assert fh.read() == b"#!/bin/tool\n"
        opened_s = time.monotonic() - started
        assert poll_until(lambda: all(_cached(tmp_path, h) for h in listed), 20), \
            "the listed files' objects never arrived in the cache"
        assert not _cached(tmp_path, other)
        assert opened_s < 5
        shown = subprocess.run(["getfattr", "--only-values", "-n", "user.bundle_trigger",
                                str(mnt / "lib" / "tool")], capture_output=True, text=True,
                               timeout=30)
        assert shown.returncode == 0 and shown.stdout == "1", shown
        assert os.getxattr(mnt / "lib" / "dep1.so", "user.bundle_trigger") == b"0"
        assert (mnt / "big.bin").read_bytes() == pseudo_random(3, 300_000)  # served as before
    finally:
        done = _pycvmfs("umount", str(mnt), env=env)
    assert done.returncode == 0, done.stderr


def test_turned_off_nothing_arrives(
        tmp_path: Path, keys: Keys, served: tuple[str, list[ContentHash], ContentHash]) -> None:
    url, listed, _ = served
    mnt, env = _mount(tmp_path, keys, url, "CVMFS_PREFETCH_FILEBUNDLES=no")
    try:
        assert (mnt / "lib" / "tool").read_bytes() == b"#!/bin/tool\n"
        time.sleep(1.0)  # the point: time passes and nothing arrives
        assert not any(_cached(tmp_path, h) for h in listed)
        assert os.getxattr(mnt / "lib" / "tool", "user.bundle_trigger") == b"1"
    finally:
        done = _pycvmfs("umount", str(mnt), env=env)
    assert done.returncode == 0, done.stderr
