"""Real mounts and `pycvmfs cat` against a hostile Stratum-1 (`tests/hostile_http.py`): memory
stays flat whatever the server sends, failures are quick one-line named errors (or EIO for a
read), and a good host in the ring is used instead.

The peak memory of the serving process (a `--foreground` mount that fails, or a running
mount) and of `pycvmfs cat` is the kernel's VmHWM from `/proc/PID/status`. The issue's numbers
before the fix: an endless manifest took the mount to 2.1 GB, a 1 MB -> 1 GiB zlib-bomb root
catalog to 2.1 GB (and 1 GiB written to disk), `cat` of a 2 GiB object buffered all of it, an
object of 186 bytes was read for 68 GB.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycvmfs.format.compression import Compression, stored_size_bound
from tests.hostile_http import HostileServer
from tests.mounting import ROOT, cli_mount, pycvmfs
from tests.publish_helpers import SMALL_CHUNKS, Keys, open_repository, pseudo_random, run_publish

MIB = 1 << 20
RSS_LIMIT = 300 * MIB  # the bound for the mount in every hostile case
TIMEOUT_S = 1
FAST = {"CVMFS_TIMEOUT": str(TIMEOUT_S), "CVMFS_TIMEOUT_DIRECT": str(TIMEOUT_S),
        "CVMFS_LOW_SPEED_LIMIT": "1024", "CVMFS_MAX_RETRIES": "1", "CVMFS_BACKOFF_INIT": "0",
        "CVMFS_BACKOFF_MAX": "1", "CVMFS_HTTP_PROXY": "DIRECT"}
FAIL_FAST_S = 3 * TIMEOUT_S + 3.0  # a failing read: two attempts of one timeout, and slack
MOUNT_FAILS_S = 15.0  # a failing mount: interpreter start, trust chain, the attacks
SMALL = pseudo_random(7, 93).hex().encode()  # 186 bytes
CHUNKED = pseudo_random(8, 300_000)
BIG_BYTES = 300 * MIB

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root")


@dataclass
class Site:
    keys: Keys
    server: HostileServer
    small_object: str  # object path of /small.txt

    @property
    def fqrn(self) -> str:
        return self.keys.fqrn


@pytest.fixture(scope="module")
def site(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("hostile-mount")
    tree, storage = base / "tree", base / "storage"
    tree.mkdir()
    (tree / "small.txt").write_bytes(SMALL)
    (tree / "chunked.bin").write_bytes(CHUNKED)
    run_publish(tree, storage, keys, chunking=SMALL_CHUNKS)
    with open_repository(storage, keys) as repo:
        _, (piece,) = repo.pieces("/small.txt")
    with HostileServer({keys.fqrn: storage}, max_seconds=30) as server:
        yield Site(keys, server, piece.hash.object_path(piece.suffix))


@dataclass
class Measured:
    returncode: int
    stderr: str
    max_rss: int  # bytes: the last VmHWM seen while it ran
    seconds: float


class PeakMemory(threading.Thread):
    """Samples VmHWM of a running process every 10 ms (`wait4`'s ru_maxrss would also count
    the memory of the parent it was forked from)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            try:
                self.peak = max(self.peak, vm_hwm(self.pid))
            except (OSError, AssertionError):  # gone, or a zombie without memory
                return

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def run_measured(args: list[str], env: dict[str, str], *, timeout: float = 120,
                 stdout: int | None = subprocess.DEVNULL,
                 consume: Callable[[subprocess.Popen[bytes]], None] | None = None
                 ) -> Measured:
    """Run `python -m pycvmfs ARGS` with its peak memory sampled; a timer kills it if it
    outlives `timeout`."""
    with tempfile.TemporaryFile() as errors:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "pycvmfs", *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=errors)
        sampler = PeakMemory(proc.pid)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            if consume is not None:
                consume(proc)
            proc.wait()
        finally:
            killer.cancel()
        peak = sampler.stop()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    return Measured(proc.returncode, stderr, peak, time.monotonic() - start)


@dataclass
class MountClient:
    """One configuration root, HOME and cache per test."""

    tmp: Path
    site: Site

    def __post_init__(self) -> None:
        (self.tmp / "etc-cvmfs").mkdir()
        self.mnt = self.tmp / "mnt"
        self.mnt.mkdir()
        self.cache_base = self.tmp / "cache"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_")}
        self.env.update(PYCVMFS_CONFIG_ROOT=str(self.tmp / "etc-cvmfs"), HOME=str(self.tmp))

    def options(self, hosts: list[str], **extra: str) -> dict[str, str]:
        return {**FAST, "CVMFS_SERVER_URL": ";".join(hosts),
                "CVMFS_PUBLIC_KEY": str(self.site.keys.public_key_file),
                "CVMFS_CACHE_BASE": str(self.cache_base), **extra}

    def option_args(self, hosts: list[str], **extra: str) -> list[str]:
        return [arg for k, v in self.options(hosts, **extra).items() for arg in ("-o", f"{k}={v}")]

    def failing_mount(self, hosts: list[str], **extra: str) -> Measured:
        """The serving process itself (`mount --foreground --detached`, which logs to files
        as a background mount does), expected to fail."""
        measured = run_measured(["mount", self.site.fqrn, str(self.mnt), "--foreground",
                                    "--detached", *self.option_args(hosts, **extra)], self.env)
        assert measured.returncode != 0 and not os.path.ismount(self.mnt)
        return measured

    def cache_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.cache_base.rglob("*") if p.is_file())


@pytest.fixture
def client(tmp_path: Path, site: Site) -> MountClient:
    return MountClient(tmp_path, site)


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a running process, bytes (/proc/PID/status VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pycvmfs: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- the trust chain and the root catalog ----------------------------------------------------


def test_endless_manifest_fails_the_mount_quickly_and_flat(client: MountClient,
                                                            site: Site) -> None:
    measured = client.failing_mount([site.server.url("endless", "manifest")])
    line = one_line_error(measured.stderr)
    assert ".cvmfspublished" in line and "budget of 65536 bytes" in line, line
    assert "/endless.manifest/" in line
    assert measured.seconds < MOUNT_FAILS_S and measured.max_rss < RSS_LIMIT, measured


def test_endless_manifest_background_mount_says_one_line(client: MountClient,
                                                         site: Site) -> None:
    done = pycvmfs("mount", site.fqrn, str(client.mnt),
                   *client.option_args([site.server.url("length-huge", "manifest")]),
                   env=client.env)
    assert done.returncode != 0
    line = one_line_error(done.stderr)
    assert "Content-Length 1000000000000000 refused" in line, line


def test_zlib_bomb_root_catalog_is_never_inflated(client: MountClient, site: Site) -> None:
    measured = client.failing_mount([site.server.url("bomb", "catalog")])
    line = one_line_error(measured.stderr)
    assert "root catalog" in line and "content hashes to" in line, line
    assert measured.seconds < MOUNT_FAILS_S and measured.max_rss < RSS_LIMIT, measured
    assert client.cache_bytes() < 4 * MIB  # the 1 GiB was never written out


def test_endless_root_catalog_is_cut_at_the_configured_cap(client: MountClient,
                                                           site: Site) -> None:
    measured = client.failing_mount([site.server.url("endless", "catalog")],
                                    PYCVMFS_MAX_CATALOG_MB="16")
    line = one_line_error(measured.stderr)
    assert "root catalog" in line and "PYCVMFS_MAX_CATALOG_MB" in line, line
    assert f"budget of {stored_size_bound(16 * MIB, Compression.ZLIB)} bytes" in line
    assert measured.seconds < MOUNT_FAILS_S and measured.max_rss < RSS_LIMIT, measured
    site.server.wait_idle()
    sent = [s.sent for s in site.server.served_for("/endless.catalog/") if s.kind == "catalog"]
    assert sent and max(sent) < 16 * MIB + 64 * MIB  # the cap, plus the kernel's buffers


@pytest.mark.slow
def test_endless_root_catalog_with_the_default_cap_keeps_memory_flat(client: MountClient,
                                                                     site: Site) -> None:
    """The default cap (1024 MiB): about 1 GiB read per attempt, spooled to the cache
    directory, never in memory."""
    measured = client.failing_mount([site.server.url("endless-chunked", "catalog")],
                                    CVMFS_TIMEOUT_DIRECT="5")
    line = one_line_error(measured.stderr)
    assert "PYCVMFS_MAX_CATALOG_MB" in line and "1024 MiB" in line, line
    assert measured.max_rss < RSS_LIMIT, measured
    assert client.cache_bytes() < 4 * MIB  # the spool is gone


@pytest.mark.parametrize(("attack", "scope"), [("endless", "manifest"), ("bomb", "catalog"),
                                               ("trickle-status", "manifest"),
                                               ("continue-flood", "catalog")])
def test_mount_fails_over_to_the_good_host(client: MountClient, site: Site, attack: str,
                                           scope: str) -> None:
    hosts = [site.server.url(attack, scope), site.server.url("ok")]
    start = time.monotonic()
    with cli_mount(site.fqrn, client.mnt, env=client.env, options=client.options(hosts)) as m:
        assert time.monotonic() - start < MOUNT_FAILS_S
        assert (client.mnt / "small.txt").read_bytes() == SMALL
        assert m.pid is not None and vm_hwm(m.pid) < RSS_LIMIT


# --- file contents through a mount --------------------------------------------------------------


@pytest.mark.parametrize("attack", ["endless", "endless-chunked", "length-huge", "bomb",
                                    "trickle-status", "trickle-headers", "continue-flood",
                                    "trickle-body", "error-endless"])
def test_hostile_data_gives_eio_quickly(client: MountClient, site: Site, attack: str) -> None:
    hosts = [site.server.url(attack, "data")]
    with cli_mount(site.fqrn, client.mnt, env=client.env, options=client.options(hosts)) as m:
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            (client.mnt / "small.txt").read_bytes()
        elapsed = time.monotonic() - start
        assert info.value.errno == errno.EIO
        assert elapsed < FAIL_FAST_S, f"{attack}: EIO after {elapsed:.1f} s"
        assert m.pid is not None and vm_hwm(m.pid) < RSS_LIMIT
    site.server.wait_idle()
    sent = [s.sent for s in site.server.served_for(f"/{attack}.data/")
            if s.path.endswith(site.small_object)]
    assert sent and max(sent) < 64 * MIB, sent  # 186 bytes allowed; not 68 GB


@pytest.mark.parametrize("attack", ["endless", "trickle-status", "bomb"])
def test_hostile_data_fails_over_to_the_good_host(client: MountClient, site: Site,
                                                  attack: str) -> None:
    hosts = [site.server.url(attack, "data"), site.server.url("ok")]
    with cli_mount(site.fqrn, client.mnt, env=client.env, options=client.options(hosts)):
        start = time.monotonic()
        assert (client.mnt / "small.txt").read_bytes() == SMALL
        assert (client.mnt / "chunked.bin").read_bytes() == CHUNKED
        assert time.monotonic() - start < FAIL_FAST_S


# --- pycvmfs cat of a big object -------------------------------------------------------------


@pytest.fixture(scope="module")
def big_site(keys: Keys, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[HostileServer, str]]:
    """One unchunked, uncompressed 300 MB object (zeros with a pseudo-random head and tail),
    so `cat` really moves 300 MB over HTTP."""
    base = tmp_path_factory.mktemp("hostile-big")
    tree, storage = base / "tree", base / "storage"
    tree.mkdir()
    with open(tree / "big.bin", "wb") as out:
        out.write(pseudo_random(1, MIB))
        out.truncate(BIG_BYTES - MIB)
        out.seek(0, os.SEEK_END)
        out.write(pseudo_random(2, MIB))
    digest = hashlib.sha1()
    with open(tree / "big.bin", "rb") as data:
        while block := data.read(8 * MIB):
            digest.update(block)
    done = subprocess.run([sys.executable, "-m", "pycvmfs", "publish", str(tree), "--repo",
                           keys.fqrn, "--storage", str(storage), "--keys-dir", str(keys.keys_dir),
                           "--compression", "none", "--no-chunking"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr  # in a child: this process stays small
    (tree / "big.bin").unlink()
    with HostileServer({keys.fqrn: storage}, max_seconds=60) as server:
        yield server, digest.hexdigest()


def test_cat_of_a_big_object_keeps_memory_flat(big_site: tuple[HostileServer, str],
                                               keys: Keys) -> None:
    server, expected = big_site
    digest = hashlib.sha1()
    copied = 0

    def consume(proc: subprocess.Popen[bytes]) -> None:
        nonlocal copied
        assert proc.stdout is not None
        while block := proc.stdout.read(MIB):
            digest.update(block)
            copied += len(block)
        proc.stdout.close()

    measured = run_measured(["cat", server.url("ok"), "/big.bin", "--keys",
                                str(keys.public_key_file)], dict(os.environ),
                               stdout=subprocess.PIPE, consume=consume)
    assert measured.returncode == 0, measured.stderr
    assert copied == BIG_BYTES and digest.hexdigest() == expected
    assert measured.max_rss < 150 * MIB, f"peak RSS {measured.max_rss / MIB:.0f} MiB"
