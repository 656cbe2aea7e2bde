"""The mounts' stats documents as Prometheus metrics (a `prometheus_client` Collector).

Only the CLI imports this (`pycvmfs metrics`): the mount keeps plain counters and
answers its document (`fs.stats_document`); every scrape reads the mounts live
(`observe.mounts.survey`). Every series has the labels `repository` and `mountpoint`;
a mount that does not answer shows as `pycvmfs_up 0` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pycvmfs.observe.mounts import READ_TIMEOUT_S, MountReport, survey

LABELS = ["repository", "mountpoint"]
NS = 1e9

# name, help, unit, value from the document (None: no sample); counters lose `_total`
_Value = Callable[[dict[str, Any]], float | None]
GAUGES: list[tuple[str, str, str, _Value]] = [
    ("pycvmfs_revision", "Revision of the root catalog served", "",
     lambda d: d.get("revision")),
    ("pycvmfs_revision_timestamp_seconds", "When the revision served was published",
     "seconds", lambda d: d.get("revision_timestamp")),
    ("pycvmfs_offline", "1 while serving the cached revision because no Stratum-1 answered",
     "", lambda d: 1 if d.get("offline") else 0),
    ("pycvmfs_uptime_seconds", "Time since the mount started", "seconds",
     lambda d: d.get("uptime_s")),
    ("pycvmfs_cache_used_bytes", "Bytes in the cache (0 when no quota tracks them)",
     "bytes", lambda d: d["cache"].get("used_bytes")),
    ("pycvmfs_cache_quota_bytes", "Cache quota (CVMFS_QUOTA_LIMIT); absent when unlimited",
     "bytes", lambda d: q if (q := d["cache"].get("quota_bytes", -1)) > 0 else None),
    ("pycvmfs_cache_pinned_catalogs", "Catalogs pinned in the cache by running mounts", "",
     lambda d: d["cache"].get("pinned")),
    ("pycvmfs_cache_pinned_bytes", "Bytes pinned in the cache by running mounts", "bytes",
     lambda d: d["cache"].get("pinned_bytes")),
    ("pycvmfs_catalogs_loaded", "Catalogs attached (loaded) in the revision served", "",
     lambda d: d.get("catalogs")),
    ("pycvmfs_open_files", "Files open on the mount now", "", lambda d: d.get("open_files")),
    ("pycvmfs_open_directories", "Directories open on the mount now", "",
     lambda d: d.get("open_dirs")),
    ("pycvmfs_inodes", "Inodes the kernel holds", "", lambda d: d.get("inodes")),
]
COUNTERS: list[tuple[str, str, str, _Value]] = [
    ("pycvmfs_cache_hits", "Objects found in the cache", "",
     lambda d: d["cache"].get("hits")),
    ("pycvmfs_cache_misses", "Objects that had to be downloaded", "",
     lambda d: d["cache"].get("misses")),
    ("pycvmfs_cache_evictions", "Objects this mount evicted to keep the quota", "",
     lambda d: d["cache"].get("evictions")),
    ("pycvmfs_cache_evicted_bytes", "Bytes this mount evicted to keep the quota", "bytes",
     lambda d: d["cache"].get("evicted_bytes")),
    ("pycvmfs_files_opened", "open() calls answered", "", lambda d: d.get("files_opened")),
    ("pycvmfs_directories_opened", "opendir() calls answered", "",
     lambda d: d.get("dirs_opened")),
    ("pycvmfs_io_errors", "Reads answered with EIO", "", lambda d: d.get("io_errors")),
]
# per Stratum-1 (label `host`), from the document's `by_host`
HOST_COUNTERS = [
    ("pycvmfs_downloads", "Verified downloads served by the Stratum-1", "", "downloads"),
    ("pycvmfs_download_bytes", "Bytes received from the Stratum-1", "bytes", "bytes"),
    ("pycvmfs_download_errors", "Failed download attempts on the Stratum-1", "", "errors"),
    ("pycvmfs_download_retries", "Attempts repeated on the Stratum-1 after a failure", "",
     "retries"),
    ("pycvmfs_download_failovers", "Downloads that moved on after failing on the Stratum-1",
     "", "failovers"),
    ("pycvmfs_download_duration_seconds", "Time spent in transfers from the Stratum-1",
     "seconds", "seconds"),
]


class MountsCollector(Collector):
    """Reads the mounts at every `collect` (each scrape)."""

    def __init__(self, mountpoints: list[str] | None = None,
                 timeout_s: float = READ_TIMEOUT_S) -> None:
        self.mountpoints = mountpoints
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        return iter(families(survey(self.mountpoints, timeout_s=self.timeout_s)))


def families(reports: list[MountReport]) -> list[Metric]:
    """Every metric family of these reports (one sample set per mount)."""
    up = GaugeMetricFamily("pycvmfs_up", "1 if the mount answered its stats in time",
                           labels=LABELS)
    info = InfoMetricFamily("pycvmfs_mount", "What serves the mount",
                            labels=[*LABELS, "version", "pid", "host", "proxy"])
    gauges: list[tuple[GaugeMetricFamily | CounterMetricFamily, _Value]] = [
        (GaugeMetricFamily(n, h, labels=LABELS, unit=u), f) for n, h, u, f in GAUGES]
    counters: list[tuple[GaugeMetricFamily | CounterMetricFamily, _Value]] = [
        (CounterMetricFamily(n, h, labels=LABELS, unit=u), f) for n, h, u, f in COUNTERS]
    by_host = [(CounterMetricFamily(n, h, labels=[*LABELS, "host"], unit=u), key)
               for n, h, u, key in HOST_COUNTERS]
    proxy_errors = CounterMetricFamily("pycvmfs_proxy_errors",
                                       "Failed download attempts blamed on the proxy",
                                       labels=[*LABELS, "proxy"])
    operations = HistogramMetricFamily("pycvmfs_fuse_operation_duration_seconds",
                                       "Time a FUSE request held a worker, by operation",
                                       labels=[*LABELS, "operation"], unit="seconds")
    for report in reports:
        labels = [report.fqrn, report.mountpoint]
        up.add_metric(labels, 1 if report.answering else 0)
        d = report.document
        if d is None:
            continue
        d.setdefault("cache", {})
        info.add_metric(labels, {"version": str(d.get("version", "")),
                                 "pid": str(d.get("pid", "")), "host": str(d.get("host", "")),
                                 "proxy": str(d.get("proxy", ""))})
        for family, value_of in [*gauges, *counters]:
            value = value_of(d)
            if value is not None:
                family.add_metric(labels, float(value))
        for host, counts in sorted(d.get("by_host", {}).items()):
            for family, key in by_host:
                family.add_metric([*labels, host], float(counts.get(key, 0)))
        for proxy, count in sorted(d.get("proxy_errors", {}).items()):
            proxy_errors.add_metric([*labels, proxy], float(count))
        _add_operations(operations, labels, d.get("fuse", {}))
    return [up, info, *(f for f, _ in gauges), *(f for f, _ in counters),
            *(f for f, _ in by_host), proxy_errors, operations]


def _add_operations(family: HistogramMetricFamily, labels: list[str],
                    fuse: dict[str, Any]) -> None:
    """Cumulative buckets from the mount's per-bucket counts (`fs.op_timing`)."""
    bounds: list[int] = fuse.get("bounds_ns", [])
    for operation, row in sorted(fuse.get("ops", {}).items()):
        if len(row) != len(bounds) + 2:
            continue  # another layout: not guessed at
        buckets, running = [], 0
        for bound, count in zip([*(f"{b / NS:g}" for b in bounds), "+Inf"], row[:-1],
                                strict=True):
            running += count
            buckets.append((bound, float(running)))
        family.add_metric([*labels, operation], buckets, sum_value=row[-1] / NS)


def registry(mountpoints: list[str] | None = None,
             timeout_s: float = READ_TIMEOUT_S) -> CollectorRegistry:
    """A registry holding only the mounts' collector (no process metrics of the CLI)."""
    result = CollectorRegistry(auto_describe=False)
    result.register(MountsCollector(mountpoints, timeout_s))
    return result


def openmetrics_text(mountpoints: list[str] | None = None,
                     timeout_s: float = READ_TIMEOUT_S) -> str:
    """The OpenMetrics exposition of the mounts, ending with `# EOF`."""
    from prometheus_client.openmetrics.exposition import generate_latest

    text: bytes = generate_latest(registry(mountpoints, timeout_s))  # type: ignore[no-untyped-call]
    return text.decode()
