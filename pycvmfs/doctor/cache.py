"""The cache directory check: may this user keep a cache where the configuration puts it,
with room for its quota? Pure over `CacheFacts` (the ownership rules are the cache's own,
`cache.safe_dir`); `gather_cache` reads them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.cache.safe_dir import FIX_REMOVE, Trust, base_problem, directory_problem
from pycvmfs.doctor.result import CheckResult, fail, ok, warn

MIB = 1 << 20
GIB = 1 << 30
OWN_BASE_FIX = "set CVMFS_CACHE_BASE to a directory of your own (or remove this one)"


@dataclass(frozen=True, slots=True)
class CacheFacts:
    """The configured cache and what is on disk. `directory` is None when it depends on a
    repository that was not named (CVMFS_SHARED_CACHE=no)."""

    euid: int
    base: Path
    directory: Path | None
    quota_mb: int  # CVMFS_QUOTA_LIMIT; -1 unmanaged
    alien: bool
    origin: str  # where CVMFS_CACHE_BASE was set
    base_stat: os.stat_result | None = None  # None: missing
    directory_stat: os.stat_result | None = None
    nearest: Path | None = None  # nearest existing ancestor when something is missing
    nearest_writable: bool = False
    free_bytes: int | None = None  # on the file system that holds (or will hold) the cache
    error: str = ""  # the settings themselves could not be read


def _size(count: int) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB else f"{count / MIB:.0f} MiB"


def check_cache_directory(facts: CacheFacts) -> CheckResult:
    name = "cache directory"
    if facts.error:
        return fail(name, facts.error, "fix the value in the file named")
    trust = Trust(uid=facts.euid, alien=facts.alien,
                  gid=facts.directory_stat.st_gid if facts.directory_stat else None)
    where = f"{facts.base} (CVMFS_CACHE_BASE from {facts.origin})"
    if facts.base_stat is not None:
        problem = base_problem(facts.base_stat, trust)
        if problem is not None:
            return fail(name, f"{where} {problem}", OWN_BASE_FIX)
    if facts.directory is not None and facts.directory_stat is not None:
        problem = directory_problem(facts.directory_stat, trust)
        if problem is not None:
            return fail(name, f"{facts.directory} {problem}", FIX_REMOVE)
        return ok(name, f"{facts.directory}, yours, writable by nobody else")
    missing = facts.directory if facts.base_stat is not None else facts.base
    if not facts.nearest_writable:
        return fail(name, f"{where}: {missing} does not exist and {facts.nearest} is not "
                    f"writable by uid {facts.euid}", OWN_BASE_FIX)
    if missing is None or missing == facts.base:
        return ok(name, f"{where}: will be created")
    return ok(name, f"{where}: {missing} will be created")


def check_cache_space(facts: CacheFacts) -> CheckResult:
    name = "cache space"
    if facts.error:
        return fail(name, "unknown (see cache directory)", "fix the cache settings")
    free = "free space unknown" if facts.free_bytes is None else f"{_size(facts.free_bytes)} free"
    if facts.quota_mb <= 0:
        if facts.alien:
            return ok(name, f"alien cache, no quota (as required); {free}")
        return warn(name, f"no quota (CVMFS_QUOTA_LIMIT={facts.quota_mb}): the cache grows "
                    f"until the file system is full; {free}",
                    "set CVMFS_QUOTA_LIMIT to a size in MB (the reference default is 4000)")
    quota = f"quota {facts.quota_mb} MB"
    if facts.free_bytes is not None and facts.free_bytes < facts.quota_mb * MIB:
        return warn(name, f"{quota} but only {free}: the file system may fill before the "
                    "quota evicts (objects already cached count towards the quota)",
                    "lower CVMFS_QUOTA_LIMIT or free space on the cache's file system")
    return ok(name, f"{quota}, {free}")


def cache_results(facts: CacheFacts) -> list[CheckResult]:
    return [check_cache_directory(facts), check_cache_space(facts)]
