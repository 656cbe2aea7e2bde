"""The document a mount answers on its hidden magic xattr `user.pycvmfs_stats`: what
`pycvmfs status` shows and `pycvmfs metrics` exports, read by the user who mounted,
without root and without a talk socket (the reference's `cvmfs_config stat` reads magic
xattrs on the mount root too).

Compact JSON (well under the kernel's 64 KiB xattr limit: per-host and per-proxy maps
are bounded by the configured Stratum-1s and proxies), built only when asked, from
counters the mount keeps anyway; stdlib only, so the mount imports nothing for it.
`FORMAT` changes when a field changes meaning; readers refuse other formats.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs import __version__
from pycvmfs.fs.op_timing import BOUNDS_NS

if TYPE_CHECKING:
    from pycvmfs.cache.host import CacheHost
    from pycvmfs.fs.magic_xattrs import XattrContext
    from pycvmfs.network.download import Downloader
    from pycvmfs.network.proxies import ProxyConfig

STATS_XATTR = "user.pycvmfs_stats"
FORMAT = 1


def document(c: XattrContext) -> dict[str, object]:
    """Everything a mount says about itself, as plain JSON values."""
    repository = c.repository
    offline, offline_reason = c.network.offline()
    hits, misses = c.cache.hits_misses()
    received, downloads, seconds = c.network.transfers()
    root = repository.tree.root
    stats = c.stats
    return {
        "format": FORMAT,
        "fqrn": repository.fqrn,
        "revision": repository.revision,
        "revision_timestamp": root.last_modified or None,
        "root_hash": str(repository.root_hash),
        "tag": repository.tag.name if repository.tag is not None else None,
        "offline": offline,
        "offline_reason": offline_reason,
        "expires_min": c.expires(),
        "pid": os.getpid(),
        "version": __version__,
        "uptime_s": round(time.monotonic() - stats.started, 3),
        "host": c.network.host(),
        "hosts": c.network.host_list(),
        "proxy": c.network.proxy(),
        "timeout_s": c.network.timeout_s,
        "timeout_direct_s": c.network.timeout_direct_s,
        **c.network.details(),  # proxy groups, downloads by host, proxy errors
        "downloads": downloads,
        "download_bytes": received,
        "download_seconds": round(seconds, 6),
        "cache": {**c.cache.details(), "hits": hits, "misses": misses},
        "catalogs": len(repository.tree.attached()),
        "files_opened": stats.nopen,
        "dirs_opened": stats.ndiropen,
        "io_errors": stats.nioerr,
        "last_io_error": stats.last_ioerr or None,
        **c.gauges(),  # open files and directories, inodes held
        "fuse": {"bounds_ns": list(BOUNDS_NS), "ops": stats.operations.snapshot()},
    }


def encode(value: dict[str, object]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def network_details(downloader: Downloader, proxies: ProxyConfig) -> dict[str, object]:
    """Proxy groups (regular, then fallback), downloads by Stratum-1, errors by proxy."""
    statistics = downloader.statistics()
    return {
        "proxy_groups": [[str(p) for p in group] for group in proxies.regular],
        "fallback_proxy_groups": [[str(p) for p in group] for group in proxies.fallback],
        "download_errors": statistics.errors,
        "by_host": {host: {"downloads": c.downloads, "bytes": c.bytes, "errors": c.errors,
                           "retries": c.retries, "failovers": c.failovers,
                           "seconds": round(c.seconds, 6)}
                    for host, c in statistics.hosts.items()},
        "proxy_errors": statistics.proxy_errors,
    }


def cache_details(cache: CacheHost, base: Path) -> dict[str, object]:
    """Where the cache is, its use against the quota (-1: unlimited), pins, evictions."""
    used, capacity = cache.usage()
    pinned = cache.quota.pinned()
    evicted, evicted_bytes = cache.quota.evictions()
    return {
        "base": str(base),
        "directory": str(cache.config.directory),
        "shared": cache.config.shared,
        "alien": cache.config.alien,
        "used_bytes": used,
        "quota_bytes": capacity,
        "pinned": len(pinned),
        "pinned_bytes": sum(pinned.values()),
        "evictions": evicted,
        "evicted_bytes": evicted_bytes,
    }
