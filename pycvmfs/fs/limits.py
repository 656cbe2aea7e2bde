"""Process limits of a serving mount: enough file descriptors for what the kernel opens.

Every file open through the mount holds a cache file open in the serving process, so the
common soft limit of 1,024 descriptors would make the 1,025th open fail. As the reference
client does at start (`SetLimitNoFile(CVMFS_NFILES)`), the soft limit is raised to
`CVMFS_NFILES`: root may raise the hard limit too; an ordinary user gets at most the hard
limit, and is told so. When descriptors run out anyway, the caller gets EMFILE/ENFILE
(`fs.errors`), never EIO.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


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
