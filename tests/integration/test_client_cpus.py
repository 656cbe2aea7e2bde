"""Which CPUs the serving process's threads run on, through a real mount: by default all
on one CPU (PYCVMFS_SINGLE_CPU); CVMFS_CPU_AFFINITY gives every thread the listed CPUs, as
the reference's own test checks (`taskset -c -a -p PID` lists them for every task); a list
of CPUs the process may not use is a warning and the mount serves anyway."""

from __future__ import annotations

import os
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


@pytest.mark.skipif(len(ALLOWED) < 2, reason="this test process may use one CPU only")
def test_by_default_every_serving_thread_shares_one_cpu(site: Site) -> None:
    for threads in _serving(site):
        assert len(threads) > 2  # libfuse's workers and more
        cpus = {frozenset(allowed) for allowed in threads.values()}
        assert len(cpus) == 1 and len(next(iter(cpus))) == 1, threads


@pytest.mark.skipif(len(ALLOWED) < 2, reason="this test process may use one CPU only")
def test_single_cpu_off_leaves_the_threads_where_the_scheduler_puts_them(site: Site) -> None:
    for threads in _serving(site, PYCVMFS_SINGLE_CPU="no"):
        assert all(allowed == set(ALLOWED) for allowed in threads.values()), threads


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
