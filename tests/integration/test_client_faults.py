"""Faults seen through a real FUSE mount made by `pycvmfs mount`: dead proxies and Stratum-1s,
HTTP errors, corrupted objects, slow links, a tampered trust chain, the cache quota, and a
`kill -9` of the serving process. Every case ends in correct bytes read through the mount or in
the stated error; never in wrong bytes.

The rig (`tests/fault_server.py`): two nginx Stratum-1s, two Squids in one load-balance group
and the fault server, all on 127.0.0.1, serving one freshly published repository. Each test
mounts with its own configuration root and cache and reads files no earlier test fetched (so
no Squid has them cached). Faults of the fault server use the `.files` scope: the manifest and
catalogs come through the faulty host, so the client meets the fault only when it reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.format.chunking import ChunkParams
from tests.fault_server import Sites, loopback_sites, make_world_readable
from tests.publish_helpers import Keys, open_repository, pseudo_random, run_publish
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch
from tests.squid import Squid
from tests.waiting import poll_until, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = ChunkParams.parse("256K,512K,1M")  # the 1 MB blobs become 2-3 chunks each
TEXT_FILES = 40
BLOBS = 30
BLOB_BYTES = 1_000_000
QUOTA_LIMIT_MB = 5
MEBIBYTE = 1 << 20  # CVMFS_QUOTA_LIMIT counts MiB (cache/quota.py MEGABYTE)
FAST = {  # fact sheet 8.3 knobs, small enough for quick failover on loopback
    "CVMFS_TIMEOUT": "1", "CVMFS_TIMEOUT_DIRECT": "1", "CVMFS_LOW_SPEED_LIMIT": "1024",
    "CVMFS_MAX_RETRIES": "1", "CVMFS_BACKOFF_INIT": "0", "CVMFS_BACKOFF_MAX": "1",
}
UNMOUNT_WAIT_S = 15.0
PR_SET_CHILD_SUBREAPER = 36  # prctl(2)

pytestmark = [
    *NEEDS_FUSE_AND_NGINX,
    pytest.mark.skipif(Squid.available() is not None, reason=str(Squid.available())),
]


# --- the published repository and the rig ------------------------------------------------


@dataclass
class Site:
    keys: Keys
    storage: Path
    sites: Sites
    contents: dict[str, bytes]  # "/text/t000.txt" -> bytes
    objects: dict[str, list[str]]  # path -> object paths ("data/xx/rest[P]"), in file order
    chunk_sizes: dict[str, list[int]]
    used: set[str] = field(default_factory=set)

    @property
    def fqrn(self) -> str:
        return self.keys.fqrn

    def host(self, server: Nginx) -> str:
        return Sites.host(server, self.fqrn)

    def fresh(self, count: int) -> list[str]:
        """Text files no earlier test read (no Squid has their objects cached)."""
        found = [p for p in sorted(self.contents)
                 if p.startswith("/text/") and p not in self.used][:count]
        if len(found) < count:
            raise RuntimeError("the test repository has too few text files")
        self.used.update(found)
        return found

    @property
    def blobs(self) -> list[str]:
        return sorted(p for p in self.contents if p.startswith("/blob/"))


@pytest.fixture(scope="module")
def site(keys: Keys) -> Iterator[Site]:
    with shared_scratch("pycvmfs-faults-") as base:  # nginx workers (nobody) read it
        tree, storage = base / "tree", base / "storage"
        contents = {f"/text/t{i:03}.txt": pseudo_random(1000 + i, 3000).hex().encode()
                    for i in range(TEXT_FILES)}
        contents |= {f"/blob/b{i:02}.bin": pseudo_random(i, BLOB_BYTES) for i in range(BLOBS)}
        for path, data in contents.items():
            (tree / path[1:]).parent.mkdir(parents=True, exist_ok=True)
            (tree / path[1:]).write_bytes(data)
        run_publish(tree, storage, keys, chunking=CHUNKS)
        make_world_readable(storage)
        objects, chunk_sizes = {}, {}
        with open_repository(storage, keys) as repo:
            for path in contents:
                _, pieces = repo.pieces(path)
                objects[path] = [p.hash.object_path(p.suffix) for p in pieces]
                chunk_sizes[path] = [p.size for p in pieces]
        with loopback_sites({keys.fqrn: storage}) as sites:
            yield Site(keys, storage, sites, contents, objects, chunk_sizes)


def _tampered_copy(storage: Path, edits: dict[str, bytes]) -> Path:
    """A world-readable copy of `storage` made of symlinks, except the files in `edits`
    (relative path -> new bytes), which are real files. The caller removes its parent."""
    base = Path(tempfile.mkdtemp(prefix="pycvmfs-tampered-"))
    base.chmod(0o755)
    copy = base / "storage"
    shutil.copytree(storage, copy, copy_function=os.symlink)
    for relative, data in edits.items():
        (copy / relative).unlink()
        (copy / relative).write_bytes(data)
    make_world_readable(copy)
    return copy


def _flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


# --- mounting through the CLI ------------------------------------------------------------


def _pycvmfs(*args: str, env: dict[str, str], timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycvmfs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _mounted(mnt: Path) -> bool:
    """From the mount table: `os.path.ismount` says False for a dead FUSE mount (ENOTCONN)."""
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == str(mnt) for line in table)


def _serving(pid: int, mnt: Path) -> bool:
    """Whether `pid` is still the (non-zombie) `pycvmfs mount --foreground` process for `mnt`."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and b"--foreground" in argv and str(mnt).encode() in argv


def _lazy_unmount(mnt: Path) -> None:
    for command in (["fusermount3", "-u", "-z"], ["umount", "-l"]):
        if not _mounted(mnt):
            return
        subprocess.run([*command, str(mnt)], capture_output=True, timeout=30, check=False)


class Client:
    """One client configuration (its own config root, HOME and cache) for one test."""

    def __init__(self, tmp_path: Path, keys: Keys) -> None:
        config_root = tmp_path / "etc-cvmfs"
        config_root.mkdir()
        self.keys = keys
        self.cache_base = tmp_path / "cache"
        self.cache_dir = self.cache_base / "shared"
        self.mnt = tmp_path / "mnt"
        self.mnt.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_")}
        self.env.update(PYCVMFS_CONFIG_ROOT=str(config_root), HOME=str(tmp_path))
        self.pids: list[int] = []

    def options(self, hosts: list[str], proxy: str, **extra: str) -> str:
        settings = {**FAST, "CVMFS_SERVER_URL": ";".join(hosts), "CVMFS_HTTP_PROXY": proxy,
                    "CVMFS_PUBLIC_KEY": str(self.keys.public_key_file),
                    "CVMFS_CACHE_BASE": str(self.cache_base), **extra}
        return ",".join(f"{k}={v}" for k, v in settings.items())

    def try_mount(self, hosts: list[str], proxy: str, **extra: str
                  ) -> subprocess.CompletedProcess[str]:
        done = _pycvmfs("mount", self.keys.fqrn, str(self.mnt), "-o",
                        self.options(hosts, proxy, **extra), env=self.env)
        if done.returncode == 0:  # "mounted FQRN on MNT (pid N)"
            self.pids.append(int(done.stdout.rsplit("(pid ", 1)[1].split(")")[0]))
        return done

    @contextmanager
    def mounted(self, hosts: list[str], proxy: str, *, reap: bool = True, **extra: str
                ) -> Iterator[Path]:
        try:
            done = self.try_mount(hosts, proxy, **extra)
            assert done.returncode == 0, done.stderr
            assert os.path.ismount(self.mnt)
            yield self.mnt
        finally:
            self.unmount(reap=reap)

    @property
    def pid(self) -> int:
        return self.pids[-1]

    def unmount(self, *, reap: bool = True) -> None:
        """`pycvmfs umount`, lazy unmount as the last resort; then wait for the serving
        process to exit, and stop it if it does not (only the processes this client made);
        `reap` collects the exited ones (the `reaper` fixture made them our children)."""
        if _mounted(self.mnt):
            _pycvmfs("umount", str(self.mnt), env=self.env, timeout=30)
        _lazy_unmount(self.mnt)
        deadline = time.monotonic() + UNMOUNT_WAIT_S
        for pid in self.pids:
            while _serving(pid, self.mnt) and time.monotonic() < deadline:
                time.sleep(0.05)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not _serving(pid, self.mnt):
                    break
                os.kill(pid, sig)
                poll_until(lambda p=pid: not _serving(p, self.mnt), 1.0)
            if reap:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        assert not _mounted(self.mnt)

    def xattr(self, name: str) -> str:
        return os.getxattr(self.mnt, name).decode()


@pytest.fixture(scope="module", autouse=True)
def reaper() -> Iterator[None]:
    """Adopt the serving processes (PR_SET_CHILD_SUBREAPER): `pycvmfs mount` detaches them
    and exits, and this machine's init does not reap orphans, so each unmount or kill would
    leave a zombie behind; as their reaper the tests collect them (`Client.unmount`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def client(tmp_path: Path, keys: Keys) -> Iterator[Client]:
    made = Client(tmp_path, keys)
    try:
        yield made
    finally:
        made.unmount()  # also when the test failed before its own unmount


def _check(mnt: Path, site: Site, paths: list[str]) -> None:
    for path in paths:
        assert (mnt / path[1:]).read_bytes() == site.contents[path], path


def _check_concurrently(mnt: Path, site: Site, paths: list[str]) -> None:
    """Read `paths` from one thread each (failover under concurrent requests)."""
    got: dict[str, bytes | OSError] = {}

    def read(path: str) -> None:
        try:
            got[path] = (mnt / path[1:]).read_bytes()
        except OSError as exc:
            got[path] = exc

    threads = [threading.Thread(target=read, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {p: got[p] == site.contents[p] for p in paths} == dict.fromkeys(paths, True), got


def _eio(mnt: Path, path: str) -> None:
    with pytest.raises(OSError) as info:
        (mnt / path[1:]).read_bytes()
    assert info.value.errno == errno.EIO, info.value


def _cache_key(object_path: str) -> str:
    """`data/xx/rest[suffix]` -> `xxrest`, the name the client cache keeps it under."""
    _, prefix, rest = object_path.split("/")
    key = prefix + rest
    return key if key[-1] in "0123456789abcdef" else key[:-1]


# --- 1. a dead proxy, a dead Stratum-1 -------------------------------------------------------


@pytest.mark.slow
def test_killed_proxy_then_killed_stratum1_mid_way(site: Site, client: Client) -> None:
    files = site.fresh(9)
    with Squid() as p1, Squid() as p2, Nginx() as doomed:
        doomed.publish(f"cvmfs/{site.fqrn}", site.storage)
        squids = {p1.url: p1, p2.url: p2}
        hosts = [site.host(doomed), site.host(site.sites.s2)]
        with client.mounted(hosts, f"{p1.url}|{p2.url}") as mnt:
            _check(mnt, site, files[:3])
            used = client.xattr("user.proxy")
            (other,) = set(squids) - {used}
            squids[used].kill()  # the proxy every request went through so far
            _check_concurrently(mnt, site, files[3:6])
            assert client.xattr("user.proxy") == other
            assert client.xattr("user.host") == hosts[0]
            doomed.stop()  # the Stratum-1 every request went to so far
            _check_concurrently(mnt, site, files[6:])
            assert client.xattr("user.host") == hosts[1]
            assert client.xattr("user.proxy") == other
        assert squids[other].wait_for_log(site.objects[files[-1]][0])  # served through it


# --- 2. Stratum-1s answering HTTP errors -------------------------------------------------------


@pytest.mark.parametrize("faults", [("500",), ("404",), ("404", "500")],
                         ids=["500", "404", "404-then-500"])
def test_stratum1_answering_errors_fails_over(site: Site, client: Client,
                                              faults: tuple[str, ...]) -> None:
    files = site.fresh(3)
    hosts = [site.sites.fault.url(f"{f}.files") for f in faults] + [site.host(site.sites.s1)]
    with client.mounted(hosts, site.sites.proxy_group) as mnt:
        _check(mnt, site, files)
        assert client.xattr("user.host") == hosts[-1]
    first = site.objects[files[0]][0]  # the read that met the faulty hosts, in ring order
    modes = [path.split("/")[1] for path, _, _ in site.sites.fault.requests_for(first)]
    assert modes == [f"{f}.files" for f in faults]  # HTTP errors: no retry on the same host


# --- 3. a corrupted object on the first Stratum-1 ------------------------------------------


def test_corrupted_object_gets_a_no_cache_retry_then_the_next_host(
        site: Site, client: Client) -> None:
    files = site.fresh(2)
    hosts = [site.sites.fault.url("corrupt.files"), site.host(site.sites.s2)]
    with client.mounted(hosts, site.sites.proxy_group) as mnt:
        _check(mnt, site, files)
        assert client.xattr("user.host") == hosts[1]
        _check(mnt, site, files)  # from the cache now
    seen = [h for _, h, _ in site.sites.fault.requests_for(site.objects[files[0]][0])]
    assert len(seen) == 2  # the no-cache retry went past the Squid that cached the bad bytes
    assert "no-cache" not in seen[0].get("Cache-Control", "") + seen[0].get("Pragma", "")
    assert "no-cache" in seen[1].get("Cache-Control", "") and seen[1].get("Pragma") == "no-cache"


# --- 4. a link slower than CVMFS_LOW_SPEED_LIMIT ---------------------------------------------


def test_link_below_the_low_speed_limit_fails_over(site: Site, client: Client) -> None:
    files = site.fresh(2)
    hosts = [site.sites.fault.url("slow.files"), site.host(site.sites.s1)]
    with client.mounted(hosts, "DIRECT") as mnt:
        _check(mnt, site, files)
        assert client.xattr("user.host") == hosts[1]
    assert len(site.sites.fault.requests_for(site.objects[files[0]][0])) == 2  # try + retry


# --- 5. a tampered trust chain ---------------------------------------------------------------


def _tamper(storage: Path, target: str) -> dict[str, bytes]:
    manifest = (storage / ".cvmfspublished").read_bytes()
    if target == "manifest":  # the root catalog hash in the signed part: last hex digit
        head, sep, tail = manifest.partition(b"\n--\n")
        lines = head.split(b"\n")
        i = next(i for i, line in enumerate(lines) if line.startswith(b"C"))
        lines[i] = lines[i][:-1] + (b"0" if lines[i][-1:] != b"0" else b"1")
        return {".cvmfspublished": b"\n".join(lines) + sep + tail}
    if target == "whitelist":  # one digit of the expiry date in the signed part
        whitelist = (storage / ".cvmfswhitelist").read_bytes()
        lines = whitelist.split(b"\n")
        i = next(i for i, line in enumerate(lines) if line.startswith(b"E"))
        lines[i] = lines[i][:4] + (b"8" if lines[i][4:5] != b"8" else b"9") + lines[i][5:]
        return {".cvmfswhitelist": b"\n".join(lines)}
    root = next(line[1:].decode() for line in manifest.split(b"\n") if line.startswith(b"C"))
    relative = f"data/{root[:2]}/{root[2:]}C"  # the root catalog object, same length
    return {relative: _flip_middle_byte((storage / relative).read_bytes())}


@pytest.mark.parametrize(("target", "words"), [
    ("manifest", ("manifest of", "body hashes to")),
    ("whitelist", ("whitelist of", "body hashes to")),
    ("catalog", ("root catalog", "corrupted data", "hash")),
])
def test_tampered_trust_chain_refuses_to_mount(site: Site, client: Client, target: str,
                                               words: tuple[str, ...]) -> None:
    edits = _tamper(site.storage, target)
    copy = _tampered_copy(site.storage, edits)
    try:
        with Nginx() as server:
            server.publish(f"cvmfs/{site.fqrn}", copy)
            done = client.try_mount([site.host(server)], "DIRECT")
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    assert done.returncode != 0
    message = done.stderr.lower()
    assert all(word in message for word in words), done.stderr
    assert "traceback" not in message
    if target == "catalog":  # names the object: the root catalog the manifest points to
        (relative,) = edits
        assert relative.removeprefix("data/").replace("/", "") in done.stderr.replace("/", "")
    assert not _mounted(client.mnt)


# --- 6. an object corrupted on every Stratum-1 -----------------------------------------------


def test_object_corrupted_everywhere_gives_eio(site: Site, client: Client) -> None:
    bad, *good = site.fresh(3)
    chunked = site.blobs[0]
    assert len(site.objects[chunked]) >= 2 and site.chunk_sizes[chunked][0] > 8192
    middle_chunk = site.objects[chunked][1]
    copy = _tampered_copy(site.storage, {
        site.objects[bad][0]: _flip_middle_byte((site.storage / site.objects[bad][0])
                                                .read_bytes()),
        middle_chunk: _flip_middle_byte((site.storage / middle_chunk).read_bytes())})
    s1, s2 = site.sites.s1, site.sites.s2
    for server in (s1, s2):
        server.publish(f"corrupted/cvmfs/{site.fqrn}", copy)
    hosts = [f"{server.url}/corrupted/cvmfs/{site.fqrn}" for server in (s1, s2)]
    try:
        with client.mounted(hosts, site.sites.proxy_group) as mnt:
            nioerr = int(client.xattr("user.nioerr"))
            _eio(mnt, bad)
            assert int(client.xattr("user.nioerr")) > nioerr
            _check(mnt, site, good)
            nioerr = int(client.xattr("user.nioerr"))
            _eio(mnt, chunked)  # one bad chunk: the whole-file read fails
            assert int(client.xattr("user.nioerr")) > nioerr
            _check_before_the_bad_chunk(mnt, site, chunked)
            _eio(mnt, bad)  # still an error the second time: nothing wrong was cached
            _check(mnt, site, good)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    cached = {p.parent.name + p.name for p in client.cache_dir.glob("??/*")}
    assert _cache_key(site.objects[bad][0]) not in cached
    assert _cache_key(middle_chunk) not in cached
    assert _cache_key(site.objects[good[0]][0]) in cached


def _check_before_the_bad_chunk(mnt: Path, site: Site, path: str) -> None:
    """The intact first chunk reads; near the bad one a read is short or EIO, never wrong."""
    expected = site.contents[path]
    first_chunk = site.chunk_sizes[path][0]
    with open(mnt / path[1:], "rb", buffering=0) as f:
        assert f.read(4096) == expected[:4096]
        offset = first_chunk - 100  # the page holding it reaches into the bad chunk
        f.seek(offset)
        try:
            got = f.read(4096)
        except OSError as exc:
            assert exc.errno == errno.EIO
        else:
            assert 0 < len(got) <= 100 and got == expected[offset : offset + len(got)]


# --- 7. the cache quota --------------------------------------------------------------------


def _object_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in cache_dir.glob("??/*") if p.is_file())


def _streaming(txn: Path) -> bool:
    """Some transaction file of the cache has bytes in it (a download is under way)."""
    for path in txn.iterdir():
        with contextlib.suppress(FileNotFoundError):  # committed or removed meanwhile
            if path.stat().st_size:
                return True
    return False


def _cache_status(client: Client) -> dict[str, str]:
    """`pycvmfs cache status --dir CACHE` as a dict of its `key: value` lines."""
    status = _pycvmfs("cache", "status", "--dir", str(client.cache_dir), env=client.env)
    assert status.returncode == 0, status.stderr
    return dict(line.split(": ", 1) for line in status.stdout.splitlines())


def test_quota_holds_while_reading_many_times_its_size(site: Site, client: Client) -> None:
    limit = QUOTA_LIMIT_MB * MEBIBYTE
    assert len(site.blobs) * BLOB_BYTES > 5 * limit
    with client.mounted([site.host(site.sites.s1)], "DIRECT",
                        CVMFS_QUOTA_LIMIT=str(QUOTA_LIMIT_MB)) as mnt:
        for path in site.blobs:
            _check(mnt, site, [path])
            assert _object_bytes(client.cache_dir) <= limit
        _check(mnt, site, site.blobs[:2])  # evicted ones come back
    assert _object_bytes(client.cache_dir) <= limit
    assert 0 < int(_cache_status(client)["bytes"]) <= limit
    verify = _pycvmfs("cache", "verify", "--dir", str(client.cache_dir), env=client.env)
    assert verify.returncode == 0 and "consistent" in verify.stdout, verify.stdout


# --- 8. kill -9 of the serving process during downloads --------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("reaped", [
    pytest.param(True, id="killed-and-reaped"),
    pytest.param(False, id="killed-still-a-zombie"),  # a zombie holds no cache session
])
def test_kill_9_during_downloads_then_remount_with_the_same_cache(
        site: Site, client: Client, reaped: bool) -> None:
    files = site.blobs[:4]
    fault = site.sites.fault
    results: dict[str, bytes | OSError] = {}

    def read(path: str) -> None:
        try:
            results[path] = (client.mnt / path[1:]).read_bytes()
        except OSError as exc:
            results[path] = exc

    readers = [threading.Thread(target=read, args=(p,)) for p in files]
    with client.mounted([fault.url("throttle.files")], "DIRECT", reap=reaped):
        for reader in readers:
            reader.start()
        wait_until(lambda: _streaming(client.cache_dir / "txn"), 20,
                   "bytes streaming into the cache's transactions")
        os.kill(client.pid, signal.SIGKILL)
        if reaped:
            os.waitpid(client.pid, 0)  # as a reaping init would, at once
        for reader in readers:
            reader.join(timeout=30)
        assert not any(r.is_alive() for r in readers)
        _lazy_unmount(client.mnt)  # the dead mount answers ENOTCONN until detached
        assert not _mounted(client.mnt)
    for path, got in results.items():  # an error, or the right bytes: never wrong ones
        assert isinstance(got, OSError) or got == site.contents[path], path
    assert any(isinstance(got, OSError) for got in results.values())
    assert _cache_status(client)["txn_files"] != "0"  # killed in the middle of a download
    with client.mounted([site.host(site.sites.s1)], "DIRECT") as mnt:
        _check(mnt, site, files)
        _check(mnt, site, site.blobs[4:6])
    verify = _pycvmfs("cache", "verify", "--dir", str(client.cache_dir), env=client.env)
    assert verify.returncode == 0 and "consistent" in verify.stdout, verify.stdout
    status = _cache_status(client)
    assert status["txn_files"] == "0"  # the dead writer's leftovers were removed at start
    assert status["pinned_bytes"] == "0"  # its pins released: nobody holds the cache now
