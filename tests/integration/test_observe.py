"""`pycvmfs status` and `pycvmfs metrics` against a real mount (nginx Stratum-1), a hung
mount reported as not answering, and `getfattr -d -m -` on every kind of path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_text

from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx

ROOT = Path(__file__).resolve().parents[2]
FQRN = "demo.pycvmfs.org"

pytestmark = [*NEEDS_FUSE_AND_NGINX]


def _pycvmfs(*args: str, env: dict[str, str], timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycvmfs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _mount(tmp: Path, url: str, *options: str) -> tuple[Path, dict[str, str]]:
    config_root = tmp / "etc-cvmfs"
    (config_root / "config.d").mkdir(parents=True)
    mnt = tmp / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(config_root), HOME=str(tmp))
    (config_root / "config.d" / f"{FQRN}.conf").write_text(
        f"CVMFS_SERVER_URL={url.rsplit('/', 1)[0]}/@fqrn@\n"
        f"CVMFS_PUBLIC_KEY={ROOT / 'testdata' / 'keys' / f'{FQRN}.pub'}\n"
        f"CVMFS_CACHE_BASE={tmp / 'cache'}\nCVMFS_HTTP_PROXY=DIRECT\n"
        "CVMFS_MAX_RETRIES=0\nCVMFS_TIMEOUT_DIRECT=2\n")
    args = [a for option in options for a in ("-o", option)]
    done = _pycvmfs("mount", FQRN, str(mnt), *args, env=env)
    assert done.returncode == 0, done.stderr
    return mnt, env


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The demo repository's URL on a Stratum-1 shared by this module's tests."""
    with Nginx() as nginx:
        yield nginx.publish(f"cvmfs/{FQRN}", ROOT / "testdata" / "repo")


@pytest.fixture
def mounted(server_url: str, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    mnt, env = _mount(tmp_path, server_url)
    try:
        yield mnt, env
    finally:
        done = _pycvmfs("umount", "--force", str(mnt), env=env)
        assert done.returncode == 0, done.stderr


def test_status_and_metrics(mounted: tuple[Path, dict[str, str]]) -> None:
    mnt, env = mounted
    assert len((mnt / "data" / "random.bin").read_bytes()) == 1_500_000
    done = _pycvmfs("status", str(mnt), "--json", env=env)
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    stats = report["stats"]
    assert report["answering"] and report["fqrn"] == FQRN
    assert stats["revision"] == int(os.getxattr(mnt, "user.revision"))
    assert stats["root_hash"] == os.getxattr(mnt, "user.root_hash").decode()
    assert stats["offline"] is False and stats["revision_timestamp"] > 0
    assert stats["host"].startswith("http://127.0.0.1:") and stats["proxy"] == "DIRECT"
    assert stats["cache"]["directory"].startswith(env["HOME"])
    assert stats["cache"]["quota_bytes"] > 0 and stats["cache"]["pinned"] >= 1
    assert stats["downloads"] >= 12 and stats["download_bytes"] >= 1_000_000
    assert stats["pid"] == int(os.getxattr(mnt, "user.pid"))
    assert stats["fuse"]["ops"]["lookup"][-1] > 0  # nanoseconds spent in LOOKUP
    people = _pycvmfs("status", "--json", env=env)  # all mounts: this one among them
    reports = json.loads(people.stdout)
    [mine] = [r for r in reports if r["mountpoint"] == str(mnt)]
    assert mine["answering"] and mine["stats"]["fqrn"] == FQRN
    # exit 1 only for a mount not answering: another test's stopped mount, if any
    assert people.returncode == (0 if all(r["answering"] for r in reports) else 1), \
        people.stderr

    text = _pycvmfs("metrics", str(mnt), env=env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(text.stdout)}
    labels = {"repository": FQRN, "mountpoint": str(mnt)}
    [up] = families["pycvmfs_up"].samples
    assert up.labels == labels and up.value == 1
    downloads = families["pycvmfs_downloads"].samples
    assert sum(s.value for s in downloads) >= 12
    assert all(s.labels["host"].startswith("http://127.0.0.1:") for s in downloads)
    histogram = families["pycvmfs_fuse_operation_duration_seconds"]
    assert histogram.type == "histogram"
    lookups = [s for s in histogram.samples if s.labels.get("operation") == "lookup"]
    assert any(s.name.endswith("_count") and s.value > 0 for s in lookups)
    assert families["pycvmfs_cache_quota_bytes"].samples[0].value > 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_served_over_http(mounted: tuple[Path, dict[str, str]]) -> None:
    mnt, env = mounted
    port = _free_port()
    served = subprocess.Popen([sys.executable, "-m", "pycvmfs", "metrics", str(mnt),
                               "--listen", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert served.stderr is not None
        assert "serving metrics" in served.stderr.readline()  # listening from now on
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read().decode()
        assert body.endswith("# EOF\n")
        assert any(f.name == "pycvmfs_revision"
                   for f in text_string_to_metric_families(body))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as plain:
            names = {f.name for f in prometheus_text(plain.read().decode())}
        assert "pycvmfs_fuse_operation_duration_seconds" in names
    finally:
        served.send_signal(signal.SIGTERM)
        served.communicate(timeout=10)
    assert served.returncode == 0  # stopped cleanly


def test_status_of_a_hung_mount(mounted: tuple[Path, dict[str, str]]) -> None:
    mnt, env = mounted
    pid = int(os.getxattr(mnt, "user.pid"))
    os.kill(pid, signal.SIGSTOP)
    try:
        done = _pycvmfs("status", str(mnt), "--timeout", "1", env=env, timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert done.returncode == 1
    assert "NOT ANSWERING" in done.stdout and "not answering within 1 s" in done.stdout


# root, directory, file, chunked file, symlink; a dangling symlink (-h only: not followed)
PATHS = ["", "docs", "docs/guide.txt", "data/random.bin", "links/guide", "links/arch-lib"]


@pytest.mark.skipif(shutil.which("getfattr") is None, reason="getfattr (attr) not installed")
@pytest.mark.parametrize("visibility", ["rootonly", "always"])
def test_getfattr_dump_has_no_error(server_url: str, tmp_path: Path, visibility: str) -> None:
    mnt, env = _mount(tmp_path, server_url, f"CVMFS_MAGIC_XATTRS_VISIBILITY={visibility}")
    try:
        for path in PATHS:
            for flags in (["-d"], ["-h", "-d"])[path == "links/arch-lib":]:
                done = subprocess.run(["getfattr", "--absolute-names", *flags, "-m", "-",
                                       str(mnt / path)],
                                      capture_output=True, text=True, timeout=30)
                assert (done.returncode, done.stderr) == (0, ""), (path, flags)
        root = subprocess.run(["getfattr", "-d", "-m", "-", str(mnt)], capture_output=True,
                              text=True, timeout=30).stdout
        assert "user.fqrn=" in root and "user.pycvmfs_stats" not in root
        assert "user.hash" not in root  # a directory has no content hash
        chunked = subprocess.run(["getfattr", "-d", "-m", "-", str(mnt / "data/random.bin")],
                                 capture_output=True, text=True, timeout=30).stdout
        assert ("user.chunk_list=" in chunked) == (visibility == "always")
    finally:
        done = _pycvmfs("umount", str(mnt), env=env)
        assert done.returncode == 0, done.stderr
