"""Process limits of a serving mount: enough file descriptors for what the kernel opens,
and few malloc arenas.

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
"""

from __future__ import annotations

import ctypes
import logging
import resource

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
