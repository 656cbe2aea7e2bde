"""Another local user against the cache (issue 9, class 4), and a cache that fills up
(class 12), with real mounts, a real second user and a real full file system.

Root creates the system user `pycvmfs-attacker` (no home, no shell) unless it exists, and
removes it afterwards if it created it; the attacker acts through `setpriv --reuid --regid
--clear-groups`. The cache base is a world-writable sticky directory, as `/tmp` or a scratch
file system is. The repository is the bundled demo repository served by nginx; the
planted object carries the real content hash of its `README.txt` with other bytes.

Every case snapshots what the attacker prepared and the host files a planted link points
at, and asserts that nothing outside the mount point and the cache directory was
created, changed or deleted; refusals must be one line naming the error.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from pycvmfs.cache import CacheHost
from pycvmfs.cache.fetcher import Fetcher
from pycvmfs.cache.store import STALE_TXN_SECONDS, TXN_DIR_NAME
from pycvmfs.client import cache_config_of, downloader_for
from pycvmfs.config import load_config
from pycvmfs.errors import CacheFullError, errno_for
from pycvmfs.format.certificates import load_public_key
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.repository.network_source import NetworkSource
from pycvmfs.repository.open import open_repository
from pycvmfs.repository.source import LocalSource
from tests.mounting import (
    DEMO_FQRN,
    DEMO_KEY,
    DEMO_REPO,
    User,
    cli_mount,
    force_unmount,
    fuse_open_to_all_users,
    is_mounted,
    pycvmfs,
)
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX, pytest.mark.slow]

ATTACKER = "pycvmfs-attacker"
FQRN = DEMO_FQRN
PLANTED = b"PLANTED BY ANOTHER USER\n"
HOST_SECRET = b"host file: must never be read, written or deleted by a mount\n"


# -- the attacker, the repository, the places -----------------------------------------


@pytest.fixture(scope="module")
def attacker() -> Iterator[User]:
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    created = False
    try:
        entry = pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", ATTACKER], check=True, capture_output=True,
                       timeout=60)
        created = True
        entry = pwd.getpwnam(ATTACKER)
    try:
        yield User(ATTACKER, entry.pw_uid, entry.pw_gid)
    finally:
        if created:
            subprocess.run(["userdel", ATTACKER], check=False, capture_output=True, timeout=60)


def as_user(user: User, script: str, *args: str) -> None:
    """Run a shell script as `user` (arguments as $1, $2, ...)."""
    done = subprocess.run([*user.prefix, "/bin/sh", "-ec", script, "sh", *args], cwd="/",
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    assert done.returncode == 0, f"{user.name}: {script}: {done.stderr}"


Demo = tuple[str, bytes, list[tuple[str, int, Compression]]]


@pytest.fixture(scope="module")
def demo() -> Demo:
    """README.txt's content hash and bytes, and the chunks of data/random.bin."""
    key = load_public_key(DEMO_KEY.read_bytes())
    with open_repository(LocalSource(DEMO_REPO), FQRN, [key]) as repo:
        readme = repo.lookup("/README.txt")
        assert readme.content_hash is not None
        entry, pieces = repo.pieces("/data/random.bin")
        return (str(readme.content_hash), repo.read("/README.txt"),
                [(str(p.hash), p.size, entry.compression) for p in pieces])


@pytest.fixture(scope="module")
def server() -> Iterator[Nginx]:
    with Nginx() as nginx:
        nginx.publish(f"cvmfs/{FQRN}", DEMO_REPO)
        yield nginx


@pytest.fixture
def area(attacker: User) -> Iterator[Path]:
    """base/ (1777, like /tmp), attacker/ (the attacker's own directory), victim/ (root's
    files with old mtimes a crash recovery must not touch), host-secret, logs/, mnt/."""
    with shared_scratch("pycvmfs-attack-") as root:
        (root / "base").mkdir()
        (root / "base").chmod(0o1777)
        (root / "attacker").mkdir()
        os.chown(root / "attacker", attacker.uid, attacker.gid)
        victim = root / "victim"
        victim.mkdir(mode=0o755)
        old = time.time() - 3 * STALE_TXN_SECONDS
        for name in ("fetch1.abcdef", "fetchAbCdEf", "precious.dat"):
            (victim / name).write_bytes(b"old but precious\n")
            os.utime(victim / name, (old, old))
        (root / "host-secret").write_bytes(HOST_SECRET)
        (root / "host-secret").chmod(0o644)
        for name in ("logs", "mnt", "etc", "home"):
            (root / name).mkdir()
        try:
            yield root
        finally:
            force_unmount(root / "mnt")


def options(area: Path, server: Nginx, **extra: str) -> dict[str, str]:
    settings = {
        "CVMFS_SERVER_URL": f"{server.url}/cvmfs/@fqrn@",
        "CVMFS_PUBLIC_KEY": str(DEMO_KEY),
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_CACHE_BASE": str(area / "base"),
        "CVMFS_USYSLOG": str(area / "logs" / "mount.log"),
        "CVMFS_MAX_RETRIES": "0",
        "CVMFS_TIMEOUT_DIRECT": "5",
    }
    settings.update(extra)
    return {k: v for k, v in settings.items() if v}


def root_env(area: Path) -> dict[str, str]:
    return dict(os.environ, PYCVMFS_CONFIG_ROOT=str(area / "etc"), HOME=str(area / "home"))


Snapshot = dict[str, tuple[object, ...]]


def snapshot(*paths: Path) -> Snapshot:
    """Everything below `paths` (links not followed): type, mode, owner, size, mtime and a
    digest of file contents or a link's target."""
    found: Snapshot = {}

    def record(path: Path) -> None:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            what = os.readlink(path)
        else:
            what = ""
        found[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, what)

    for top in paths:
        record(top)
        for parent, dirs, files in os.walk(top):
            for name in dirs + files:
                record(Path(parent) / name)
    return found


def refused_mount(area: Path, server: Nginx, *, env: Mapping[str, str] | None = None,
                  prefix: tuple[str, ...] = (), python: str | None = None,
                  **extra: str) -> str:
    """`pycvmfs mount` that must fail: its one stderr line."""
    args = ["mount", FQRN, str(area / "mnt")]
    for key, value in options(area, server, **extra).items():
        args += ["-o", f"{key}={value}"]
    kwargs: dict[str, object] = {"prefix": prefix}
    if python is not None:
        kwargs["python"] = python
    try:
        done = pycvmfs(*args, env=env or root_env(area), **kwargs)  # type: ignore[arg-type]
        assert not is_mounted(area / "mnt")
    finally:
        force_unmount(area / "mnt")
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pycvmfs: error: "), done.stderr
    return lines[0]


def plant_shared(attacker: User, area: Path, readme_hash: str, mode: str = "0777") -> None:
    """The attacker's own `shared/` with the README object (other bytes) and a txn/."""
    shared = area / "base" / "shared"
    as_user(attacker, 'mkdir -m "$2" "$1" "$1/$3" "$1/txn" && printf %s "$4" > "$1/$3/$5"',
            str(shared), mode, readme_hash[:2], PLANTED.decode(), readme_hash[2:])


# -- the cases ------------------------------------------------------------------------


def test_root_mount_refuses_a_shared_directory_another_user_planted(
        attacker: User, area: Path, server: Nginx,
        demo: Demo) -> None:
    plant_shared(attacker, area, demo[0])
    before = snapshot(area / "base", area / "attacker", area / "victim", area / "host-secret")
    line = refused_mount(area, server)
    assert str(area / "base" / "shared") in line
    assert f"belongs to uid {attacker.uid} ({ATTACKER})" in line and "remove it" in line
    assert snapshot(area / "base", area / "attacker", area / "victim",
                    area / "host-secret") == before


def test_root_mount_refuses_a_shared_symlink_and_creates_nothing_there(
        attacker: User, area: Path, server: Nginx) -> None:
    as_user(attacker, 'ln -s "$1" "$2"', str(area / "attacker"), str(area / "base" / "shared"))
    before = snapshot(area / "base", area / "attacker")
    line = refused_mount(area, server)
    assert "symbolic link" in line and str(area / "attacker") in line
    assert os.listdir(area / "attacker") == []  # not one of the 262 entries
    assert snapshot(area / "base", area / "attacker") == before


@pytest.mark.parametrize("owner", ["attacker", "root"])
def test_planted_txn_symlink_makes_recovery_delete_nothing(
        attacker: User, area: Path, server: Nginx,
        demo: Demo, owner: str) -> None:
    """`shared/` is the attacker's, or root's but world-writable (a mistake the attacker
    exploits); either way its txn -> victim/ must not be followed."""
    shared = area / "base" / "shared"
    if owner == "root":
        shared.mkdir()
        shared.chmod(0o777)
    else:
        as_user(attacker, 'mkdir -m 0777 "$1"', str(shared))
    as_user(attacker, 'ln -s "$1" "$2/txn"', str(area / "victim"), str(shared))
    before = snapshot(area / "base", area / "victim", area / "attacker")
    line = refused_mount(area, server)
    assert str(shared) in line
    assert sorted(os.listdir(area / "victim")) == ["fetch1.abcdef", "fetchAbCdEf",
                                                   "precious.dat"]
    assert snapshot(area / "base", area / "victim", area / "attacker") == before


def test_planted_log_symlink_leaves_its_target_unchanged(
        attacker: User, area: Path, server: Nginx) -> None:
    """The background mount's default log file sits in the (sticky) base itself."""
    log = area / "base" / f"{FQRN}.log"
    as_user(attacker, 'ln -s "$1" "$2"', str(area / "host-secret"), str(log))
    before = snapshot(area / "host-secret", area / "attacker")
    if os.path.exists("/dev/log"):  # syslog takes precedence: the file is not used at all
        with cli_mount(FQRN, area / "mnt", env=root_env(area),
                       options=options(area, server, CVMFS_USYSLOG="")):
            pass
    else:
        line = refused_mount(area, server, CVMFS_USYSLOG="")
        assert str(log) in line and "symbolic link" in line
        assert not (area / "base" / "shared").exists()
    assert (area / "host-secret").read_bytes() == HOST_SECRET
    assert snapshot(area / "host-secret", area / "attacker") == before


def test_object_replaced_by_a_symlink_is_fetched_again_not_served(
        area: Path, server: Nginx, demo: Demo) -> None:
    readme_hash, readme, _ = demo
    env, settings = root_env(area), options(area, server)
    with cli_mount(FQRN, area / "mnt", env=env, options=settings):
        assert (area / "mnt" / "README.txt").read_bytes() == readme
    cached = area / "base" / "shared" / readme_hash[:2] / readme_hash[2:]
    assert cached.read_bytes() == readme
    cached.unlink()
    cached.symlink_to(area / "host-secret")  # in root's own, safe cache
    before = snapshot(area / "host-secret")
    with cli_mount(FQRN, area / "mnt", env=env, options=settings):
        assert (area / "mnt" / "README.txt").read_bytes() == readme
    assert not cached.is_symlink() and cached.read_bytes() == readme  # fetched again
    assert snapshot(area / "host-secret") == before
    assert "is a symbolic link" in (area / "logs" / "mount.log").read_text()


def test_cache_commands_refuse_the_planted_directory(
        attacker: User, area: Path, demo: Demo) -> None:
    plant_shared(attacker, area, demo[0])
    before = snapshot(area / "base")
    for command in ("clean", "verify", "status"):
        done = pycvmfs("cache", command, "--dir", str(area / "base" / "shared"),
                       env=root_env(area))
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"belongs to uid {attacker.uid}" in done.stderr
    assert snapshot(area / "base") == before


# -- an ordinary user's mount in a base another user prepared -------------------------


@pytest.fixture
def fuse_open_to_all() -> Iterator[None]:
    """/dev/fuse open to every user for the test (`fuse_open_to_all_users`)."""
    with fuse_open_to_all_users():
        yield


@pytest.mark.usefixtures("fuse_open_to_all")
@pytest.mark.parametrize("prepared", ["shared", "base"])
def test_user_mount_refuses_what_another_user_prepared(
        attacker: User, area: Path, server: Nginx,
        demo: Demo, prepared: str) -> None:
    from tests.integration.test_client_unprivileged import (
        SYSTEM_PYTHON,
        missing_requirement,
        user_env,
    )

    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    entry = pwd.getpwnam("nobody")
    nobody = User("nobody", entry.pw_uid, entry.pw_gid)
    for name in ("home", "mnt", "logs"):
        os.chown(area / name, nobody.uid, nobody.gid)
    if prepared == "shared":  # the sticky base is fine, the attacker's shared/ is not
        base = area / "base"
        plant_shared(attacker, area, demo[0])
    else:  # a whole base the attacker made, even world-writable and sticky
        base = area / "attacker" / "base"
        as_user(attacker, 'mkdir -m 1777 "$1"', str(base))
    (area / "etc").chmod(0o755)
    env = user_env(nobody, area / "home", area / "etc")
    before = snapshot(area / "base", area / "attacker")
    line = refused_mount(area, server, env=env, prefix=tuple(nobody.prefix),
                         python=SYSTEM_PYTHON, CVMFS_CACHE_BASE=str(base))
    assert f"belongs to uid {attacker.uid}" in line and str(base) in line
    assert f"uid {nobody.uid}" in line
    assert snapshot(area / "base", area / "attacker") == before


# -- a full cache (ENOSPC) ------------------------------------------------------------


@contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path`, always unmounted."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.mark.parametrize("quota", ["-1", "100"])  # unmanaged; managed (index on the tmpfs)
def test_download_into_a_full_cache_leaves_no_transaction_file(
        area: Path, server: Nginx, demo: Demo,
        quota: str) -> None:
    chunks = demo[2]
    with tiny_tmpfs(area / "tmpfs", "256k") as tmpfs:
        config = load_config(FQRN, config_root=area / "etc", environ=root_env(area),
                             overrides=options(area, server, CVMFS_CACHE_BASE=str(tmpfs),
                                               CVMFS_QUOTA_LIMIT=quota))
        downloader, _ = downloader_for(config)
        with CacheHost(cache_config_of(config)) as host, closing(downloader.transport):
            fetcher = Fetcher(host, NetworkSource(downloader, "nginx"))
            with pytest.raises(CacheFullError) as info:
                for key, size, compression in chunks:  # 12 x 125 kB: the third cannot fit
                    fetcher.fetch(ContentHash.parse(key), Suffix.PARTIAL, compression,
                                  expected_size=size).close()
            assert str(tmpfs / "shared") in str(info.value) and "full" in str(info.value)
            assert errno_for(info.value) == errno.ENOSPC
            assert os.listdir(tmpfs / "shared" / TXN_DIR_NAME) == []


def test_full_cache_through_the_mount(area: Path, server: Nginx,
                                      demo: Demo) -> None:
    readme = demo[1]
    with tiny_tmpfs(area / "tmpfs", "256k") as tmpfs, \
            cli_mount(FQRN, area / "mnt", env=root_env(area),
                      options=options(area, server, CVMFS_CACHE_BASE=str(tmpfs),
                                      CVMFS_QUOTA_LIMIT="-1")):
        with pytest.raises(OSError) as info:
            (area / "mnt" / "data" / "random.bin").read_bytes()  # 1.5 MB into 256 kB
        txn = tmpfs / "shared" / TXN_DIR_NAME
        deadline = time.monotonic() + 20  # read-ahead of the next chunks may still be
        while os.listdir(txn) and time.monotonic() < deadline:  # failing the same way
            time.sleep(0.1)
        assert os.listdir(txn) == []
        assert (area / "mnt" / "README.txt").read_bytes() == readme  # still serving
        assert info.value.errno == errno.ENOSPC, errno.errorcode[info.value.errno]
