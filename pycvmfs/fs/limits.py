"""Process limits of a serving mount: enough file descriptors for what the kernel opens,
few malloc arenas, and the CPUs its threads run on.

Every file open through the mount holds a cache file open in the serving process, so the
common soft limit of 1,024 descriptors would make the 1,025th open fail. As the reference
client does at start (`SetLimitNoFile(CVMFS_NFILES)`), the soft limit is raised to
`CVMFS_NFILES`: root may raise the hard limit too; an ordinary user gets at most the hard
limit, and is told so. When descriptors run out anyway, the caller gets EMFILE/ENFILE
(`fs.errors`), never EIO.

glibc gives each thread that allocates its own malloc arena (up to 8 per core), and a
serving process runs libfuse's workers, a blocking pool and read-ahead threads: every
arena keeps its freed memory, so reads of large buffers from many threads grow the RSS.
`limit_malloc_arenas` caps them at `MALLOC_ARENAS` (Python's own small objects do not
use malloc arenas; contention between threads is bounded by the GIL anyway).

CPUs: `CVMFS_CPU_AFFINITY` confines every thread to the CPUs it lists, as the reference
does. Without it, `PYCVMFS_CPU_POLICY` decides: `one` keeps every thread on the CPU the
serving process started on, `all` leaves them to the scheduler, and `adaptive` (the
default) moves them between the two as the requests come in parallel or one at a time
(`cpu_policy`, which says why; the lowlevel backend only, the others serve as with `all`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
from collections.abc import Iterable

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # mallopt parameter (<malloc.h>)
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (see the module docstring); False where there is no
    glibc `mallopt` (musl, other libcs: nothing to do)."""
    try:  # the process's own symbols: libc is linked into every CPython
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def raise_open_files_limit(wanted: int) -> tuple[int, str | None]:
    """Raise RLIMIT_NOFILE towards `wanted`; (the soft limit now, a warning if capped)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted <= soft:
        return soft, None
    unlimited = hard == resource.RLIM_INFINITY
    try:  # root may raise the hard limit as well (up to fs.nr_open)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)
                                                    if not unlimited else hard))
        return wanted, None
    except (ValueError, OSError):
        pass
    capped = hard if not unlimited else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (capped, hard))
    except (ValueError, OSError) as exc:
        return soft, f"cannot raise the open files limit above {soft}: {exc}"
    if capped < wanted:
        return capped, (f"CVMFS_NFILES={wanted} is above the hard limit of open files "
                        f"({hard}); using {capped} (ask for a higher `ulimit -Hn`)")
    return capped, None


def confine_to_cpus(listed: frozenset[int] | None, *, single: bool) -> str | None:
    """Keep every thread of this process on the `listed` CPUs (CVMFS_CPU_AFFINITY) or,
    with `single` and no list, on the CPU it runs on now (see the module docstring); a
    warning when that cannot be done, and the mount goes on as it was, as the
    reference's does."""
    allowed = allowed_cpus()
    if not allowed:
        return None
    if listed is not None:
        if not listed & allowed:
            return (f"CVMFS_CPU_AFFINITY={_cpu_list(listed)}: none of these CPUs is "
                    f"available to this process (it may use {_cpu_list(allowed)}); its "
                    "threads run on any of those")
        return move_threads(listed & allowed)
    if single and len(allowed) > 1:
        return move_threads(frozenset({current_cpu(allowed)}))
    return None


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may use; empty where that cannot be known (not Linux)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset()


def move_threads(cpus: frozenset[int]) -> str | None:
    """Every thread of this process to `cpus` (threads started later inherit it from
    the thread that starts them); what went wrong, if anything."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as exc:
            return f"cannot keep the serving threads on CPUs {_cpu_list(cpus)}: {exc.strerror}"
    return None


def current_cpu(allowed: frozenset[int]) -> int:
    """The CPU this thread runs on (`processor` in /proc/thread-self/stat), if allowed."""
    try:
        with open("/proc/thread-self/stat", "rb") as stat:
            cpu = int(stat.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        cpu = -1
    return cpu if cpu in allowed else min(allowed)


def _cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))
