"""The CLI side of `status` and `metrics` without a mount: mount discovery from a mount
table, reading with a time limit, the OpenMetrics families (parsed by prometheus_client's
own parser), the status lines, and `--listen` parsing."""

from __future__ import annotations

import errno
import json
import threading
from typing import Any

import pytest
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from pycvmfs.cli.metrics import parse_listen
from pycvmfs.cli.status import duration, rows, size
from pycvmfs.errors import ConfigError
from pycvmfs.fs.mount import MountEntry
from pycvmfs.fs.op_timing import BOUNDS_NS, ROW
from pycvmfs.fs.stats_document import FORMAT
from pycvmfs.observe import mounts
from pycvmfs.observe.mounts import MountReport, read_document
from pycvmfs.observe.openmetrics import families

MNT = "/home/u/cvmfs/demo"
LINE = f"36 25 0:52 / {MNT} rw,nosuid,nodev,relatime shared:1 - fuse cvmfs2#demo.org " \
       "rw,user_id=1000,group_id=1000"
OTHER = "37 25 0:53 / /mnt/x rw - fuse sshfs#host rw,user_id=1000"
DISK = "22 1 8:1 / / rw - ext4 /dev/sda1 rw"


def _document(**changes: Any) -> dict[str, Any]:
    read = [0] * ROW
    read[0], read[3], read[-2], read[-1] = 5, 2, 1, 8_000_000_000
    return {"format": FORMAT, "fqrn": "demo.org", "revision": 7,
            "revision_timestamp": 1_700_000_000, "root_hash": "ab" * 20, "tag": None,
            "offline": False, "offline_reason": "", "expires_min": "3", "pid": 4242,
            "version": "0.1.0", "uptime_s": 3725.5, "host": "http://s1/cvmfs/demo.org",
            "hosts": ["http://s1/cvmfs/demo.org", "http://s2/cvmfs/demo.org"],
            "proxy": "http://p1:3128", "proxy_groups": [["http://p1:3128", "http://p2:3128"]],
            "fallback_proxy_groups": [], "downloads": 12, "download_bytes": 3_000_000,
            "download_seconds": 1.5, "download_errors": 1,
            "by_host": {"http://s1/cvmfs/demo.org": {"downloads": 12, "bytes": 3_000_000,
                                                     "errors": 1, "retries": 1,
                                                     "failovers": 0, "seconds": 1.5}},
            "proxy_errors": {"http://p2:3128": 1},
            "cache": {"base": "/c", "directory": "/c/shared", "shared": True, "alien": False,
                      "used_bytes": 1 << 20, "quota_bytes": 4 << 20, "pinned": 2,
                      "pinned_bytes": 4096, "evictions": 0, "evicted_bytes": 0,
                      "hits": 30, "misses": 10},
            "catalogs": 2, "files_opened": 5, "dirs_opened": 3, "io_errors": 0,
            "last_io_error": None, "open_files": 1, "open_dirs": 0, "inodes": 9,
            "fuse": {"bounds_ns": list(BOUNDS_NS), "ops": {"read": read}}, **changes}


def _exposition(reports: list[MountReport]) -> str:
    class Fixed(Collector):
        def collect(self) -> Any:
            return iter(families(reports))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry).decode()  # type: ignore[no-untyped-call,no-any-return]


def test_openmetrics_families_parse_back() -> None:
    text = _exposition([MountReport(MNT, "demo.org", _document()),
                        MountReport("/hung", "hung.org", None, "not answering")])
    assert text.endswith("# EOF\n")
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["mountpoint"]: s.value for s in parsed["pycvmfs_up"].samples}
    assert up == {MNT: 1.0, "/hung": 0.0}
    labels = {"repository": "demo.org", "mountpoint": MNT}
    [revision] = parsed["pycvmfs_revision"].samples
    assert revision.labels == labels and revision.value == 7
    assert parsed["pycvmfs_downloads"].type == "counter"
    [downloads] = parsed["pycvmfs_downloads"].samples
    assert downloads.name == "pycvmfs_downloads_total" and downloads.value == 12
    assert downloads.labels["host"] == "http://s1/cvmfs/demo.org"
    assert parsed["pycvmfs_download_bytes"].unit == "bytes"
    [proxy] = parsed["pycvmfs_proxy_errors"].samples
    assert proxy.labels["proxy"] == "http://p2:3128" and proxy.value == 1
    assert parsed["pycvmfs_cache_hits"].samples[0].value == 30
    histogram = parsed["pycvmfs_fuse_operation_duration_seconds"]
    assert histogram.type == "histogram" and histogram.unit == "seconds"
    buckets = {s.labels["le"]: s.value for s in histogram.samples
               if s.name.endswith("_bucket")}
    assert buckets["5e-05"] == 5 and buckets["0.0005"] == 7 and buckets["+Inf"] == 8
    [count] = [s for s in histogram.samples if s.name.endswith("_count")]
    [total] = [s for s in histogram.samples if s.name.endswith("_sum")]
    assert count.value == 8 and total.value == 8.0
    assert {s.labels["operation"] for s in histogram.samples} == {"read"}


def test_no_quota_means_no_quota_series() -> None:
    document = _document()
    document["cache"]["quota_bytes"] = -1
    parsed = {f.name: f for f in text_string_to_metric_families(
        _exposition([MountReport(MNT, "demo.org", document)]))}
    assert parsed["pycvmfs_cache_quota_bytes"].samples == []


def test_status_lines() -> None:
    lines = dict(rows(MountReport(MNT, "demo.org", _document()), now=1_700_003_600))
    assert lines["revision"] == "7 (published 2023-11-14 22:13:20 UTC, 1 h 0 min ago)"
    assert lines["state"] == "online"
    assert lines["Stratum-1"].startswith("http://s1/cvmfs/demo.org (ring: http://s1")
    assert lines["proxy"] == ("http://p1:3128 (groups: http://p1:3128|http://p2:3128; "
                              "fallback: none)")
    assert lines["cache usage"] == "1.0 MiB of 4.0 MiB (25.0 %)"
    assert lines["hit rate"] == "75.0 % (30 hits, 10 misses)"
    assert lines["pinned catalogs"] == "2 (4.0 KiB)"
    assert lines["uptime"] == "1 h 2 min" and lines["pid"] == "4242"
    offline = dict(rows(MountReport(MNT, "demo.org", _document(offline=True))))
    assert offline["state"].startswith("OFFLINE: serving the cached revision")
    hung = rows(MountReport(MNT, "demo.org", None, "not answering within 3 s"))
    assert hung == [("state", "NOT ANSWERING: not answering within 3 s")]
    assert size(512) == "512 B" and duration(90061) == "1 d 1 h" and duration(-3) == "0 s"


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9868") == ("127.0.0.1", 9868)
    assert parse_listen("[::1]:9868") == ("::1", 9868)
    for bad in ("9868", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", ":80"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_listen(bad)


def test_candidate_mounts_from_the_mount_table(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {line.split()[4]: line.split() for line in (LINE, OTHER, DISK)}
    monkeypatch.setattr(mounts, "mount_table", lambda: table)
    [entry] = mounts.candidate_mounts()
    assert entry.mountpoint == MNT and entry.source == "cvmfs2#demo.org"


def _entry() -> MountEntry:
    return MountEntry.from_fields(LINE.split())


def test_read_errors_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(code: int) -> Any:
        def getxattr(path: str, name: str) -> bytes:
            raise OSError(code, "failed")
        return getxattr

    for code, words in ((errno.ENOTCONN, "dead mount"), (errno.EACCES, "permission denied"),
                        (errno.ENODATA, "not served by pycvmfs")):
        monkeypatch.setattr(mounts.os, "getxattr", failing(code))
        report = read_document(_entry(), 1.0)
        assert report.document is None and words in (report.problem or "")
        assert report.foreign == (code == errno.ENODATA)
    monkeypatch.setattr(mounts.os, "getxattr", lambda path, name: b'{"format": 999}')
    assert "another format" in (read_document(_entry(), 1.0).problem or "")
    monkeypatch.setattr(mounts.os, "getxattr", lambda path, name: b"not json")
    assert "not a JSON document" in (read_document(_entry(), 1.0).problem or "")


def test_a_mount_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hanging(path: str, name: str) -> bytes:
        release.wait(30)
        return b"{}"

    monkeypatch.setattr(mounts.os, "getxattr", hanging)
    first = read_document(_entry(), 0.05)
    assert first.problem is not None and "not answering within 0.05 s" in first.problem
    second = read_document(_entry(), 0.05)  # no second thread on the same mount
    assert second.problem is not None and "still waiting" in second.problem
    reader = mounts._inflight[MNT]
    release.set()
    reader.join(5)
    assert not reader.is_alive()


def test_a_named_mount_point_must_be_a_cvmfs_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mounts, "mount_entry", lambda path: None)
    with pytest.raises(ConfigError, match="not a mount point"):
        mounts.survey(["/nowhere"])
    monkeypatch.setattr(mounts, "mount_entry",
                        lambda path: MountEntry.from_fields(DISK.split()))
    with pytest.raises(ConfigError, match="not a CernVM-FS mount"):
        mounts.survey(["/"])


def test_status_and_metrics_commands(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pycvmfs.cli import status as status_cli
    from pycvmfs.cli.main import main
    from pycvmfs.observe import openmetrics

    good = MountReport(MNT, "demo.org", _document())
    hung = MountReport("/hung", "hung.org", None, "not answering within 3 s")
    chosen: list[Any] = []

    def surveyed(mountpoints: list[str] | None, *, timeout_s: float) -> list[MountReport]:
        chosen.append((mountpoints, timeout_s))
        return [good, hung] if mountpoints is None else [good]

    monkeypatch.setattr(status_cli, "survey", surveyed)
    monkeypatch.setattr(openmetrics, "survey", surveyed)
    assert main(["status", "--json", "--timeout", "2"]) == 1  # one mount does not answer
    reports = json.loads(capsys.readouterr().out)
    assert [r["answering"] for r in reports] == [True, False]
    assert reports[0]["stats"]["revision"] == 7 and reports[1]["problem"].startswith("not")
    assert chosen[-1] == (None, 2.0)
    assert main(["status", MNT]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{MNT}  demo.org\n") and "  hit rate " in out
    assert main(["metrics", MNT]) == 0
    text = capsys.readouterr().out
    assert text.endswith("# EOF\n") and chosen[-1] == ([MNT], 3.0)
    assert {f.name for f in text_string_to_metric_families(text)} >= {"pycvmfs_up",
                                                                     "pycvmfs_downloads"}
