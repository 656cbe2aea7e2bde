"""The cache checks of `pycvmfs doctor` over injected stat results, and the facts read
from a real configuration root in a temporary directory."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from pycvmfs.doctor.cache import CacheFacts, check_cache_directory, check_cache_space
from pycvmfs.doctor.gather_config import gather_cache, read_configuration
from pycvmfs.doctor.result import Level

USER, OTHER = 1000, 1001
GIB = 1 << 30


def dir_stat(mode: int, uid: int = USER, gid: int = USER) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 2, uid, gid, 4096, 0, 0, 0))


BASE = Path("/home/u/.cache/pycvmfs")
GOOD = CacheFacts(USER, BASE, BASE / "shared", 4000, False, "<built-in default.conf>",
                  base_stat=dir_stat(0o700), directory_stat=dir_stat(0o700),
                  free_bytes=50 * GIB)


def facts(**changes: object) -> CacheFacts:
    return dataclasses.replace(GOOD, **changes)  # type: ignore[arg-type]


def test_own_private_cache_is_ok() -> None:
    assert check_cache_directory(GOOD).level is Level.OK
    space = check_cache_space(GOOD)
    assert space.level is Level.OK and "quota 4000 MB, 50.0 GiB free" == space.found


def test_cache_directory_of_another_user_or_writable_by_others_fails() -> None:
    theirs = check_cache_directory(facts(directory_stat=dir_stat(0o700, uid=OTHER)))
    assert theirs.level is Level.FAIL and "uid 1001" in theirs.found and theirs.fix
    open_dir = check_cache_directory(facts(directory_stat=dir_stat(0o777)))
    assert open_dir.level is Level.FAIL and "writable by every user" in open_dir.found
    group = check_cache_directory(facts(directory_stat=dir_stat(0o770)))
    assert group.level is Level.FAIL


def test_base_rules_are_the_caches_own() -> None:
    sticky_tmp = facts(base_stat=dir_stat(0o1777, uid=0, gid=0))
    assert check_cache_directory(sticky_tmp).level is Level.OK
    open_base = check_cache_directory(facts(base_stat=dir_stat(0o777, uid=0, gid=0)))
    assert open_base.level is Level.FAIL and "not sticky" in open_base.found
    assert "CVMFS_CACHE_BASE" in open_base.fix
    other = check_cache_directory(facts(base_stat=dir_stat(0o755, uid=OTHER)))
    assert other.level is Level.FAIL


def test_missing_cache_is_created_where_the_user_may_write() -> None:
    missing = facts(base_stat=None, directory_stat=None, nearest=Path("/home/u"),
                    nearest_writable=True)
    result = check_cache_directory(missing)
    assert result.level is Level.OK and "will be created" in result.found
    blocked = check_cache_directory(facts(base=Path("/var/lib/cvmfs"), base_stat=None,
                                          directory_stat=None, nearest=Path("/var/lib"),
                                          nearest_writable=False))
    assert blocked.level is Level.FAIL and "/var/lib is not writable by uid 1000" in blocked.found


def test_quota_and_free_space() -> None:
    unmanaged = check_cache_space(facts(quota_mb=-1))
    assert unmanaged.level is Level.WARN and "CVMFS_QUOTA_LIMIT" in unmanaged.fix
    assert check_cache_space(facts(quota_mb=-1, alien=True)).level is Level.OK
    tight = check_cache_space(facts(quota_mb=4000, free_bytes=GIB))
    assert tight.level is Level.WARN and "only 1.0 GiB free" in tight.found
    assert check_cache_space(facts(free_bytes=None)).level is Level.OK


def test_bad_settings_fail_both_lines() -> None:
    bad = facts(error="CVMFS_QUOTA_LIMIT='abc' (set in x:1): not an integer")
    assert check_cache_directory(bad).level is Level.FAIL
    assert check_cache_space(bad).level is Level.FAIL


@pytest.fixture
def config_root(tmp_path: Path) -> Path:
    root = tmp_path / "etc-cvmfs"
    (root / "config.d").mkdir(parents=True)
    return root


def test_facts_from_a_configuration_root(tmp_path: Path, config_root: Path) -> None:
    cache = tmp_path / "cache"
    (config_root / "default.local").write_text(f"CVMFS_CACHE_BASE={cache}\n"
                                                "CVMFS_QUOTA_LIMIT=1000\n")
    env = {"PYCVMFS_CONFIG_ROOT": str(config_root), "HOME": str(tmp_path)}
    loaded = read_configuration(None, environ=env)
    assert loaded.facts.files_read == (config_root / "default.local",)
    found = gather_cache(loaded)
    assert (found.base, found.directory, found.quota_mb) == (cache, cache / "shared", 1000)
    assert found.base_stat is None and found.nearest == tmp_path and found.nearest_writable
    assert found.origin == f"{config_root / 'default.local'}:1"
    cache.mkdir(mode=0o700)
    (cache / "shared").mkdir(mode=0o700)
    found = gather_cache(read_configuration(None, environ=env))
    assert check_cache_directory(found).level is Level.OK


def test_bad_cache_value_is_reported_not_raised(tmp_path: Path, config_root: Path) -> None:
    (config_root / "default.local").write_text("CVMFS_QUOTA_LIMIT=abc\n")
    env = {"PYCVMFS_CONFIG_ROOT": str(config_root), "HOME": str(tmp_path)}
    found = gather_cache(read_configuration(None, environ=env))
    assert "CVMFS_QUOTA_LIMIT" in found.error
    assert check_cache_directory(found).level is Level.FAIL
