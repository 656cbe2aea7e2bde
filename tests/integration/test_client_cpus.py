"""Which CPUs the serving process's threads run on, through a real mount: by default
(PYCVMFS_CPU_POLICY=adaptive) all on one CPU while requests come in parallel and on all
CPUs while they come one at a time; `one` and `all` hold them there; CVMFS_CPU_AFFINITY
gives every thread the listed CPUs, as the reference's own test checks (`taskset -c -a -p
PID` lists them for every task); a list of CPUs the process may not use is a warning and
the mount serves anyway."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import cli_mount
from tests.publish_helpers import Keys
from tests.revision_site import Site
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX]

T0 = int(time.time()) - 3600
ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def site(keys: Keys) -> Iterator[Site]:
    with shared_scratch("pycvmfs-cpus-") as base, Nginx() as server:
        published = Site(keys, server, base)
        published.publish({"hello": "hello\n"}, T0)
        yield published


def _threads_cpus(pid: int) -> dict[int, set[int]]:
    """Every thread of `pid` and the CPUs it may run on."""
    return {int(task): os.sched_getaffinity(int(task))
            for task in os.listdir(f"/proc/{pid}/task")}


def _serving(site: Site, configured: str = "", **options: str) -> Iterator[dict[int, set[int]]]:
    """The threads of a mount with `options`, and `configured` as default.local (a list
    of CPUs cannot go through `-o`, whose commas separate options)."""
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir(exist_ok=True)
    env = site.env(cache)
    local = Path(env["PYCVMFS_CONFIG_ROOT"]) / "default.local"
    local.write_text(configured)
    try:
        with cli_mount(site.keys.fqrn, mnt, env=env,
                       options=site.options(cache, CVMFS_USYSLOG=str(site.base / "log"),
                                            **options)):
            assert (mnt / "hello").read_text() == "hello\n"  # it serves, whatever the CPUs
            yield _threads_cpus(int(os.getxattr(mnt, "user.pid")))
    finally:
        local.unlink()


def _on_one_cpu(threads: dict[int, set[int]]) -> bool:
    cpus = {frozenset(allowed) for allowed in threads.values()}
    return len(cpus) == 1 and len(next(iter(cpus))) == 1


def _requests(path: Path, callers: int, seconds: float) -> None:
    """GETXATTR requests (the kernel caches none) from `callers` threads for `seconds`."""
    end = time.monotonic() + seconds

    def ask() -> None:
        while time.monotonic() < end:
            with contextlib.suppress(OSError):  # ENODATA, answered by the mount
                os.getxattr(path, "user.none")

    workers = [threading.Thread(target=ask) for _ in range(callers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _until(pid: int, path: Path, callers: int, wanted: bool) -> bool:
    """Requests from `callers` threads until the threads are on one CPU (`wanted`) or
    not, for 30 s at most."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _requests(path, callers, 0.5)
        if _on_one_cpu(_threads_cpus(pid)) == wanted:
            return True
    return False


@pytest.mark.skipif(len(ALLOWED) < 2, reason="this test process may use one CPU only")
def test_adaptive_moves_the_threads_to_one_cpu_and_back_with_the_requests(site: Site) -> None:
    mnt = site.base / "mnt"
    for threads in _serving(site):
        assert len(threads) > 2 and not _on_one_cpu(threads)  # libfuse's workers and more
        pid = int(os.getxattr(mnt, "user.pid"))
        assert _until(pid, mnt / "hello", 8, True), _threads_cpus(pid)
        assert _until(pid, mnt / "hello", 1, False), _threads_cpus(pid)
        assert all(allowed == set(ALLOWED) for allowed in _threads_cpus(pid).values())


@pytest.mark.skipif(len(ALLOWED) < 2, reason="this test process may use one CPU only")
def test_policy_one_and_all_hold_the_threads(site: Site) -> None:
    for threads in _serving(site, PYCVMFS_CPU_POLICY="one"):
        assert len(threads) > 2 and _on_one_cpu(threads), threads
        _requests(site.base / "mnt" / "hello", 1, 1.5)  # one at a time: it stays
        assert _on_one_cpu(_threads_cpus(int(os.getxattr(site.base / "mnt", "user.pid"))))
    for _ in _serving(site, PYCVMFS_CPU_POLICY="all"):
        _requests(site.base / "mnt" / "hello", 8, 1.5)  # in parallel: they stay apart
        pid = int(os.getxattr(site.base / "mnt", "user.pid"))
        assert all(allowed == set(ALLOWED) for allowed in _threads_cpus(pid).values())


def test_cpu_affinity_gives_every_thread_the_listed_cpus(site: Site) -> None:
    listed = ALLOWED[-2:]
    for threads in _serving(site, f"CVMFS_CPU_AFFINITY={','.join(map(str, listed))}\n"):
        assert all(allowed == set(listed) for allowed in threads.values()), threads


def test_unavailable_cpus_are_a_warning_and_the_mount_serves(site: Site) -> None:
    missing = max(ALLOWED) + 1
    for threads in _serving(site, CVMFS_CPU_AFFINITY=str(missing)):
        assert all(allowed == set(ALLOWED) for allowed in threads.values()), threads
    log = (site.base / "log").read_text()
    assert f"CVMFS_CPU_AFFINITY={missing}: none of these CPUs is available" in log
