"""`cache.safe_dir`: the rules for the base, the directories below it and the files in them.

Other users are simulated with `os.chown` to an unused uid (needs root; skipped otherwise).
Every refusal must name the path and what is wrong, and must not have created anything
where a planted link points.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.cache.safe_dir import (
    SafeDir,
    Trust,
    check_name,
    open_base,
    open_directory,
)
from pycvmfs.errors import CacheSecurityError, ConfigError

OTHER_UID = 4242  # no such user needed: ownership is a number
OTHER_GID = 4242
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Name -> (mode, uid, bytes) of everything below `directory` (links not followed)."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            st = os.lstat(path)
            data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            found[str(path.relative_to(directory))] = (st.st_mode, st.st_uid, data)
    return found


@pytest.fixture
def sticky_base(tmp_path: Path) -> Path:
    """A world-writable sticky directory like /tmp."""
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o1777)
    return base


def test_cache_below_a_sticky_base_is_created_ours(sticky_base: Path) -> None:
    with open_directory(sticky_base / "a" / "shared", base=sticky_base, create=True) as d:
        assert d.created and d.path == sticky_base / "a" / "shared"
        assert os.path.samestat(os.fstat(d.fd), os.stat(sticky_base / "a" / "shared"))
    for path in (sticky_base / "a", sticky_base / "a" / "shared"):
        assert mode(path) == 0o700 and os.lstat(path).st_uid == os.geteuid()


def test_missing_base_is_created_below_a_safe_parent(tmp_path: Path) -> None:
    base = tmp_path / "home" / ".cache" / "pycvmfs"
    with open_directory(base / "shared", base=base, create=True) as d:
        assert d.created
    assert mode(tmp_path / "home") == 0o700 and mode(base) == 0o700


@pytest.mark.parametrize("bits, words", [(0o777, "every user"), (0o775, "group")])
def test_base_writable_by_others_must_be_sticky(tmp_path: Path, bits: int, words: str) -> None:
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(bits)
    with pytest.raises(CacheSecurityError) as info:
        open_directory(base / "shared", base=base, create=True)
    message = str(info.value)
    assert str(base) in message and words in message and "chmod +t" in message
    assert os.listdir(base) == []  # nothing created in it


@needs_root
def test_base_of_another_user_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "theirs"
    base.mkdir(mode=0o755)
    os.chown(base, OTHER_UID, OTHER_GID)
    with pytest.raises(CacheSecurityError, match=f"belongs to uid {OTHER_UID}"):
        open_directory(base / "shared", base=base, create=True)
    assert os.listdir(base) == []


@needs_root
def test_base_reached_through_another_users_symlink_is_refused(sticky_base: Path,
                                                               tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    link = sticky_base / "cache"
    link.symlink_to(target)
    os.lchown(link, OTHER_UID, OTHER_GID)
    with pytest.raises(CacheSecurityError, match="symbolic link owned by uid 4242"):
        open_directory(link / "shared", base=link, create=True)
    assert os.listdir(target) == []


@needs_root
def test_component_of_another_user_is_refused_and_left_alone(sticky_base: Path) -> None:
    planted = sticky_base / "shared"
    planted.mkdir()
    planted.chmod(0o777)
    (planted / "ab").mkdir()
    (planted / "ab" / "cdef").write_bytes(b"planted")
    for path in (planted, planted / "ab", planted / "ab" / "cdef"):
        os.chown(path, OTHER_UID, OTHER_GID)
    before = snapshot(sticky_base)
    with pytest.raises(CacheSecurityError) as info:
        open_directory(planted, base=sticky_base, create=True)
    message = str(info.value)
    assert str(planted) in message and f"belongs to uid {OTHER_UID}" in message
    assert "remove it" in message and "\n" not in message
    assert snapshot(sticky_base) == before


@pytest.mark.parametrize("bits, words", [(0o770, "writable by group"),
                                         (0o707, "writable by every user"),
                                         (0o777, "writable by every user")])
def test_component_writable_by_others_is_refused(sticky_base: Path, bits: int,
                                                 words: str) -> None:
    shared = sticky_base / "shared"
    shared.mkdir()
    shared.chmod(bits)
    with pytest.raises(CacheSecurityError, match=words):
        open_directory(shared, base=sticky_base, create=True)
    assert os.listdir(shared) == []


def test_component_symlink_is_refused_and_target_untouched(sticky_base: Path,
                                                           tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir()
    (sticky_base / "shared").symlink_to(target)
    with pytest.raises(CacheSecurityError) as info:
        open_directory(sticky_base / "shared", base=sticky_base, create=True)
    assert "symbolic link to" in str(info.value) and str(target) in str(info.value)
    assert os.listdir(target) == []


def test_component_that_is_a_file_is_refused(sticky_base: Path) -> None:
    (sticky_base / "shared").write_bytes(b"not a directory")
    with pytest.raises(CacheSecurityError, match="is a regular file"):
        open_directory(sticky_base / "shared", base=sticky_base, create=True)


def test_intermediate_symlink_below_the_base_is_refused(sticky_base: Path,
                                                        tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir()
    (sticky_base / "sub").symlink_to(target)
    with pytest.raises(CacheSecurityError):
        open_directory(sticky_base / "sub" / "shared", base=sticky_base, create=True)
    assert os.listdir(target) == []


def test_missing_directory_without_create(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_directory(tmp_path / "nope" / "shared", create=False)


def test_unwritable_place_is_an_os_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        open_directory("/proc/nope/shared", create=True)
    assert not isinstance(info.value, ConfigError)
    assert info.value.filename is not None and "/proc" in str(info.value.filename)


def test_alien_cache_may_be_group_writable_never_world_writable(tmp_path: Path) -> None:
    alien = tmp_path / "alien"
    alien.mkdir()
    alien.chmod(0o2770)
    with open_directory(alien, Trust(alien=True), create=True) as d:
        assert d.trust.gid == os.stat(alien).st_gid
        with d.subdir("00", create=True, mode=0o770) as sub:
            assert sub.trust.gid == d.trust.gid
    with pytest.raises(CacheSecurityError, match="writable by group"):  # not as alien
        open_directory(alien, create=True)
    alien.chmod(0o777)
    with pytest.raises(CacheSecurityError, match="every user"):
        open_directory(alien, Trust(alien=True), create=True)


def test_alien_cache_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o770)
    (tmp_path / "alien").symlink_to(target)
    with pytest.raises(CacheSecurityError, match="symbolic link"):
        open_directory(tmp_path / "alien", Trust(alien=True), create=True)


def test_relative_paths_never_leave_the_directory() -> None:
    for bad in ("", ".", "..", "a/b", "x\0"):
        with pytest.raises(ValueError):
            check_name(bad)
    check_name("cvmfschecksum.demo.example.org")


# -- files ----------------------------------------------------------------------------


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[SafeDir]:
    with open_directory(tmp_path / "cache", create=True) as directory:
        yield directory


def test_open_file_refuses_a_symlink_and_leaves_its_target(ours: SafeDir,
                                                           tmp_path: Path) -> None:
    target = tmp_path / "host-file"
    target.write_bytes(b"host secret")
    (ours.path / "lock_cachedb").symlink_to(target)
    with pytest.raises(CacheSecurityError) as info:
        ours.open_file("lock_cachedb", os.O_RDWR | os.O_CREAT)
    assert "symbolic link to" in str(info.value) and str(ours.path) in str(info.value)
    assert target.read_bytes() == b"host secret"


def test_open_file_refuses_a_second_hard_link(ours: SafeDir, tmp_path: Path) -> None:
    target = tmp_path / "host-file"
    target.write_bytes(b"host secret")
    os.link(target, ours.path / "uuid")
    with pytest.raises(CacheSecurityError, match="2 hard links"):
        ours.open_file("uuid", os.O_WRONLY | os.O_APPEND)
    assert target.read_bytes() == b"host secret"


def test_open_file_does_not_hang_on_a_fifo(ours: SafeDir) -> None:
    os.mkfifo(ours.path / "cachedb")
    with pytest.raises(CacheSecurityError, match="FIFO"):
        ours.open_file("cachedb", os.O_RDONLY)
    with pytest.raises(CacheSecurityError, match="FIFO"):
        ours.open_file("cachedb", os.O_WRONLY)  # would block forever without O_NONBLOCK


@needs_root
def test_open_file_refuses_another_users_file(ours: SafeDir) -> None:
    (ours.path / "uuid").write_bytes(b"theirs")
    os.chown(ours.path / "uuid", OTHER_UID, OTHER_GID)
    with pytest.raises(CacheSecurityError, match=f"belongs to uid {OTHER_UID}"):
        ours.open_file("uuid", os.O_RDONLY)


def test_replace_bad_recreates_our_own_file(ours: SafeDir, tmp_path: Path) -> None:
    target = tmp_path / "host-file"
    target.write_bytes(b"host secret")
    (ours.path / "lock_cachedb").symlink_to(target)
    fd = ours.open_file("lock_cachedb", os.O_RDWR | os.O_CREAT, replace_bad=True)
    os.close(fd)
    assert stat.S_ISREG(os.lstat(ours.path / "lock_cachedb").st_mode)
    assert target.read_bytes() == b"host secret"


def test_open_file_refuses_truncation_before_the_check(ours: SafeDir) -> None:
    with pytest.raises(ValueError):
        ours.open_file("x", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)


def test_write_file_replaces_a_planted_link_never_writes_through_it(ours: SafeDir,
                                                                    tmp_path: Path) -> None:
    target = tmp_path / "host-file"
    target.write_bytes(b"host secret")
    (ours.path / "uuid").symlink_to(target)
    ours.write_file("uuid", b"mine\n")
    assert (ours.path / "uuid").read_bytes() == b"mine\n"
    assert not (ours.path / "uuid").is_symlink()
    assert target.read_bytes() == b"host secret"
    assert sorted(os.listdir(ours.path)) == ["uuid"]  # no temp file left


def test_descriptor_survives_renaming_the_path(tmp_path: Path) -> None:
    """Operations go through the descriptor: a renamed (swapped) directory is not
    followed to its replacement."""
    base = tmp_path / "base"
    with open_directory(base / "shared", base=base, create=True) as d:
        os.rename(base / "shared", base / "moved")
        (base / "shared").mkdir()
        d.write_file("uuid", b"x")
        assert (base / "moved" / "uuid").exists() and os.listdir(base / "shared") == []
        assert d.proc_path("uuid").startswith("/proc/self/fd/")


def test_open_base_unchecked_for_a_named_log_directory(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o775)  # like Debian's /var/log (root:syslog 0775)
    with pytest.raises(CacheSecurityError):
        open_base(logs, create=False)
    with open_base(logs, create=False, check=False) as d:
        assert d.path == logs
