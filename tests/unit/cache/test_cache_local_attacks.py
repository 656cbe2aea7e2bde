"""What other local users (and a full disk) can do to a cache, at the library level: planted
links and files inside the cache, the ownership marker, crash recovery, the log file,
`pycvmfs run`'s mount directory, and transactions that fail on ENOSPC (`/dev/full`).

The real second user is in tests/integration/test_cache_attacks.py; here other users are
simulated with `os.chown` to an unused uid (root only).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from pycvmfs.cache import CacheConfig, CacheHost
from pycvmfs.cache.admin import ProblemKind, verify
from pycvmfs.cache.breadcrumb import Breadcrumb, read_breadcrumb, write_breadcrumb
from pycvmfs.cache.identity import MARKER_NAME, cache_uuid
from pycvmfs.cache.safe_dir import open_directory
from pycvmfs.cache.store import STALE_TXN_SECONDS, TXN_DIR_NAME, ObjectStore
from pycvmfs.cli.log_files import log_file_handler
from pycvmfs.cli.main import main
from pycvmfs.cli.run import _default_mount_dir
from pycvmfs.errors import CacheFullError, CacheSecurityError, ConfigError
from pycvmfs.format.hashes import Algorithm, ContentHash

OTHER_UID = 4242
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def h(n: int) -> ContentHash:
    return ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big"))


def add(host: CacheHost, n: int, data: bytes) -> ContentHash:
    key = h(n)
    txn = host.begin(key)
    txn.write(data)
    host.commit(txn)
    return key


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    """A file of the host no cache operation may read, change or delete."""
    path = tmp_path / "host-secret"
    path.write_bytes(b"root:secret\n")
    return path


# -- objects --------------------------------------------------------------------------


def test_object_replaced_by_symlink_is_never_served(tmp_path: Path, host_file: Path) -> None:
    with CacheHost(CacheConfig(tmp_path / "c", quota_limit_mb=1)) as host:
        key = add(host, 1, b"repository bytes")
        path = host.store.path_of(key)
        path.unlink()
        path.symlink_to(host_file)
        assert not host.store.contains(key) and host.store.size_of(key) is None
        assert host.open(key) is None  # a miss: the caller fetches and verifies again
        assert not path.is_symlink() and not path.exists()  # the link itself went
        assert host_file.read_bytes() == b"root:secret\n"
        add(host, 1, b"repository bytes")  # the refetch lands
        fh = host.open(key)
        assert fh is not None
        with fh:
            assert fh.read() == b"repository bytes"


@pytest.mark.parametrize("plant", ["fifo", "directory", "hardlink"])
def test_special_object_entries_are_dropped(tmp_path: Path, host_file: Path,
                                            plant: str) -> None:
    store = ObjectStore(tmp_path / "c")
    key = h(2)
    path = store.path_of(key)
    if plant == "fifo":
        os.mkfifo(path)  # opening it must not block
    elif plant == "directory":
        path.mkdir()
    else:
        os.link(host_file, path)  # a second name is fine for objects, the content is ours
    if plant == "hardlink":
        fh = store.open(key)
        assert fh is not None
        fh.close()
        return
    assert store.open(key) is None and store.open_fd(key) is None
    assert not os.path.lexists(path)
    store.close()


@needs_root
def test_object_of_another_user_is_dropped(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "c")
    key = h(3)
    store.path_of(key).write_bytes(b"planted")
    os.chown(store.path_of(key), OTHER_UID, OTHER_UID)
    assert store.open(key) is None and not store.path_of(key).exists()
    store.close()


def test_object_name_goes_through_the_cache_descriptor(tmp_path: Path) -> None:
    """SQLite opens catalogs by name: the name must lead to the checked directory."""
    with CacheHost(CacheConfig(tmp_path / "c", quota_limit_mb=1)) as host:
        key = add(host, 4, b"catalog")
        fh = host.open(key)
        assert fh is not None
        with fh:
            assert fh.name.startswith("/proc/self/fd/")
            assert Path(fh.name).read_bytes() == b"catalog"


def test_layout_directory_symlink_refuses_the_cache(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    ObjectStore(tmp_path / "c").close()
    os.rmdir(tmp_path / "c" / "ab")
    (tmp_path / "c" / "ab").symlink_to(victim)
    with pytest.raises(CacheSecurityError, match="ab is a symbolic link"):
        CacheHost(CacheConfig(tmp_path / "c", quota_limit_mb=1))
    assert os.listdir(victim) == []


# -- crash recovery -------------------------------------------------------------------


def test_txn_symlink_refuses_the_cache_and_deletes_nothing(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    old = time.time() - 2 * STALE_TXN_SECONDS
    for name in ("fetch1.abcdef", "fetchAbCdEf", "precious"):
        (victim / name).write_bytes(b"keep me")
        os.utime(victim / name, (old, old))
    cache = tmp_path / "c"
    cache.mkdir(mode=0o700)
    (cache / TXN_DIR_NAME).symlink_to(victim)
    with pytest.raises(CacheSecurityError, match="txn is a symbolic link"):
        CacheHost(CacheConfig(cache, quota_limit_mb=1))
    assert sorted(os.listdir(victim)) == ["fetch1.abcdef", "fetchAbCdEf", "precious"]


def test_recovery_removes_only_provable_transaction_files(tmp_path: Path,
                                                          host_file: Path) -> None:
    store = ObjectStore(tmp_path / "c")
    txn = tmp_path / "c" / TXN_DIR_NAME
    old = time.time() - 2 * STALE_TXN_SECONDS
    (txn / "fetch999999999.dead").write_bytes(b"crashed writer")  # ours: goes
    (txn / "fetchlink").symlink_to(host_file)  # a link, even with the name: stays
    (txn / "notes.txt").write_bytes(b"not a transaction")  # other names: stay
    (txn / "fetchdir").mkdir()
    for name in ("fetch999999999.dead", "notes.txt"):
        os.utime(txn / name, (old, old))
    os.utime(txn / "fetchlink", (old, old), follow_symlinks=False)
    assert store.recover() == ["fetch999999999.dead"]
    assert sorted(os.listdir(txn)) == ["fetchdir", "fetchlink", "notes.txt"]
    assert host_file.read_bytes() == b"root:secret\n"
    store.close()


@needs_root
def test_recovery_leaves_other_users_files(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "c")
    foreign = tmp_path / "c" / TXN_DIR_NAME / "fetch999999999.theirs"
    foreign.write_bytes(b"?")
    os.chown(foreign, OTHER_UID, OTHER_UID)
    assert store.recover(now=time.time() + 2 * STALE_TXN_SECONDS) == []
    assert foreign.exists()
    store.close()


# -- the ownership marker -------------------------------------------------------------


def test_new_cache_gets_a_marker_and_keeps_its_objects(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with CacheHost(CacheConfig(cache, quota_limit_mb=1)) as host:
        key = add(host, 5, b"mine")
    assert (cache / MARKER_NAME).read_text() == f"pycvmfs cache of uid {os.geteuid()}\n"
    with CacheHost(CacheConfig(cache, quota_limit_mb=1)) as host:
        assert host.store.contains(key)


@pytest.mark.parametrize("damage", ["missing", "other-uid", "symlink"])
def test_cache_without_a_valid_marker_is_emptied_before_use(
        tmp_path: Path, host_file: Path, damage: str,
        caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "c"
    with CacheHost(CacheConfig(cache, quota_limit_mb=1)) as host:
        key = add(host, 6, b"planted while the directory was not safe")
        write_breadcrumb(host.root, "demo.example.org", Breadcrumb(key, 1, 2))
    marker = cache / MARKER_NAME
    marker.unlink()
    if damage == "other-uid":
        marker.write_text("pycvmfs cache of uid 4242\n")
    elif damage == "symlink":
        marker.symlink_to(host_file)
    with caplog.at_level(logging.WARNING), \
            CacheHost(CacheConfig(cache, quota_limit_mb=1)) as host:
        assert not host.store.contains(key)
        assert host.quota.size() == 0  # the index was discarded too
        assert read_breadcrumb(host.root, "demo.example.org") is None
    assert "discarded" in caplog.text and str(cache) in caplog.text
    assert marker.read_text() == f"pycvmfs cache of uid {os.geteuid()}\n"
    assert host_file.read_bytes() == b"root:secret\n"


def test_verify_reports_a_missing_marker_and_refused_entries(tmp_path: Path,
                                                             host_file: Path) -> None:
    cache = tmp_path / "c"
    with CacheHost(CacheConfig(cache, quota_limit_mb=-1)) as host:
        key = add(host, 7, b"x")
        host.store.path_of(key).unlink()
        host.store.path_of(key).symlink_to(host_file)
    (cache / MARKER_NAME).unlink()
    kinds = {p.kind for p in verify(cache)}
    assert kinds == {ProblemKind.NO_MARKER, ProblemKind.UNTRUSTED_ENTRY}


# -- index, lock, breadcrumb, uuid ----------------------------------------------------


@pytest.mark.parametrize("name", ["cachedb", "cachedb-wal", "lock_cachedb"])
def test_index_and_lock_links_are_replaced_never_followed(tmp_path: Path, host_file: Path,
                                                          name: str) -> None:
    cache = tmp_path / "c"
    CacheHost(CacheConfig(cache, quota_limit_mb=1)).close()
    (cache / name).unlink(missing_ok=True)
    (cache / name).symlink_to(host_file)
    with CacheHost(CacheConfig(cache, quota_limit_mb=1)) as host:
        add(host, 8, b"y")
    assert host_file.read_bytes() == b"root:secret\n"
    assert not (cache / name).is_symlink()


def test_breadcrumb_and_uuid_links_are_not_followed(tmp_path: Path, host_file: Path) -> None:
    with open_directory(tmp_path / "c", create=True) as cache:
        (cache.path / "cvmfschecksum.demo.example.org").symlink_to(host_file)
        (cache.path / "uuid").symlink_to(host_file)
        assert read_breadcrumb(cache, "demo.example.org") is None  # not read through it
        fresh = cache_uuid(cache)
        assert fresh != "root:secret" and (cache.path / "uuid").read_text().strip() == fresh
        write_breadcrumb(cache, "demo.example.org", Breadcrumb(h(9), 1, 2))
        assert read_breadcrumb(cache, "demo.example.org") == Breadcrumb(h(9), 1, 2)
    assert host_file.read_bytes() == b"root:secret\n"


# -- log file and pycvmfs run's mount directory ---------------------------------------


def test_log_file_symlink_in_a_sticky_base_is_refused(tmp_path: Path, host_file: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o1777)
    (base / "demo.example.org.log").symlink_to(host_file)
    with pytest.raises(CacheSecurityError, match="symbolic link"):
        log_file_handler(base / "demo.example.org.log", in_cache_base=True)
    assert host_file.read_bytes() == b"root:secret\n"


def test_log_file_rotates_through_its_directory(tmp_path: Path) -> None:
    handler = log_file_handler(tmp_path / "logs" / "x.log", max_bytes=200)
    try:
        handler.setFormatter(logging.Formatter("%(message)s"))
        for i in range(20):
            handler.emit(logging.LogRecord("t", logging.INFO, "", 0, f"line {i:02d} " * 4,
                                           None, None))
    finally:
        handler.close()
    current = (tmp_path / "logs" / "x.log").read_text()
    backup = (tmp_path / "logs" / "x.log.1").read_text()
    assert "line 19" in current and backup and len(current) < 300
    assert stat.S_IMODE(os.stat(tmp_path / "logs" / "x.log").st_mode) == 0o600


def test_log_file_in_an_unusable_place_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot open log file /proc/nope/x.log"):
        log_file_handler("/proc/nope/x.log")


def test_run_mount_directory_symlink_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.mkdir()
    (base / "mnt").symlink_to(victim)
    with pytest.raises(CacheSecurityError):
        _default_mount_dir(base, "demo.example.org")
    assert os.listdir(victim) == []
    (base / "mnt").unlink()
    assert _default_mount_dir(base, "demo.example.org") == base / "mnt" / "demo.example.org"
    with pytest.raises(ConfigError):
        _default_mount_dir(base, "..")


def test_cli_refusal_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "shared").symlink_to(victim)
    assert main(["cache", "status", "--dir", str(tmp_path / "shared")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pycvmfs: error: ") and err.count("\n") == 1
    assert "symbolic link" in err and "Traceback" not in err


# -- a full disk (ENOSPC from /dev/full) ----------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


def _onto_dev_full(txn: object) -> None:
    """Make every later write of the transaction's file fail with ENOSPC."""
    fileno = txn._live().fileno()  # type: ignore[attr-defined]
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fileno)
    os.close(full)


@needs_dev_full
def test_write_into_a_full_cache_raises_cache_full_and_abort_cleans(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "c")
    txn = store.begin(h(10))
    _onto_dev_full(txn)
    with pytest.raises(CacheFullError) as info:
        txn.write(b"x" * (1 << 20))  # more than the buffer: reaches the disk
    assert str(tmp_path / "c") in str(info.value) and "full" in str(info.value)
    txn.abort()
    assert os.listdir(tmp_path / "c" / TXN_DIR_NAME) == []
    store.close()


@needs_dev_full
def test_abort_removes_the_temp_file_when_closing_fails(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "c")
    txn = store.begin(h(11))
    txn.write(b"buffered, not yet written")
    _onto_dev_full(txn)
    txn.abort()  # the close flushes into ENOSPC; the unlink must happen anyway
    assert os.listdir(tmp_path / "c" / TXN_DIR_NAME) == []
    store.close()


@needs_dev_full
def test_commit_that_fails_midway_removes_the_temp_file(tmp_path: Path) -> None:
    with CacheHost(CacheConfig(tmp_path / "c", quota_limit_mb=1)) as host:
        txn = host.begin(h(12))
        txn.write(b"buffered")
        _onto_dev_full(txn)
        with pytest.raises(CacheFullError, match="is full"):
            host.commit(txn)
        assert os.listdir(tmp_path / "c" / TXN_DIR_NAME) == []
        assert not host.store.contains(h(12))
