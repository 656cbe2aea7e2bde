"""What was degraded when a mount started, one line per state, for the terminal.

Why: a mount that starts offline from the cache, or on the second Stratum-1 because the
first did not answer, used to say so only in its log while the terminal said "mounted".
`open_client` collects these lines (`Client.notices`) and `pycvmfs mount` prints them, also
from a background serving process (through its pipe, `cli.mount`).

States: serving offline from the cache (no Stratum-1 answered, or they offer an older
revision than the cache saw); a Stratum-1 or a proxy that failed while the mount started
and the one used instead; Geo API ordering that failed; a quota so small that the catalogs
pinned at mount already press on it. Each line names the state, what is used instead, and
what to check.

The offline reason is the line `repository.revisions` logs when it falls back on the
breadcrumb, captured while the first revision is opened (`captured_warnings`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Final

from pycvmfs.cache.host import CacheHost
from pycvmfs.config import ClientConfig
from pycvmfs.network.failover import RouteState
from pycvmfs.network.proxies import ProxyChoice
from pycvmfs.repository.repository import Repository

MEGABYTE: Final = 1 << 20


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def captured_warnings(logger: str) -> Iterator[list[str]]:
    """The warning lines `logger` emits inside the block (they are logged as usual too)."""
    collector = _Collector()
    target = logging.getLogger(logger)
    target.addHandler(collector)
    try:
        yield collector.lines
    finally:
        target.removeHandler(collector)


def geo_notice(config: ClientConfig) -> str:
    return ("CVMFS_USE_GEOAPI=yes, but no Stratum-1 answered the Geo API: the Stratum-1s are "
            f"tried in the configured order ({', '.join(config.server_urls)})")


def mount_notices(config: ClientConfig, repository: Repository, route: RouteState,
                  start: tuple[str, ProxyChoice], offline_lines: list[str],
                  cache: CacheHost) -> list[str]:
    """The degraded states of a mount that just opened `repository` (module docstring);
    `start` is the route before the first download."""
    notices = []
    if repository.trusted is None:
        why = offline_lines[-1] if offline_lines else "no Stratum-1 answered"
        notices.append(f"serving offline from the cache: {why}; the mount switches to the "
                       "servers when they answer")
    else:
        host, proxy = route.current()
        if host != start[0]:
            notices.append(f"Stratum-1 {start[0]} failed while mounting; using {host}")
        if proxy != start[1]:
            notices.append(f"proxy {start[1]} failed while mounting; using {proxy}")
    quota = cache.quota
    if config.quota_limit_mb > 0 and quota.pin_pressure():
        notices.append(
            f"CVMFS_QUOTA_LIMIT={config.quota_limit_mb} MB (set in "
            f"{config.origin('CVMFS_QUOTA_LIMIT')}) is small: the catalogs pinned at mount "
            f"already take {quota.pinned_size() / MEGABYTE:.1f} MB of the "
            f"{quota.capacity() // 2 // MEGABYTE} MB that may be pinned; catalogs will be "
            "released and fetched again (raise CVMFS_QUOTA_LIMIT)")
    return notices
