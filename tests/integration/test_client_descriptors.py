"""Descriptors through a real mount: the serving process raises its soft open-files limit to
CVMFS_NFILES (2,500 files open at once read fine where the soft limit is 1,024). Where the
hard limit caps it (at 2,048): with FUSE no-open (the default) the mount holds no
descriptor per open file, so the 2,500 still read; answering every OPEN
(PYCVMFS_NO_OPEN=no), a caller that runs the mount out of descriptors gets EMFILE, never
EIO, and nothing is marked broken: every file reads again once the others are closed."""

from __future__ import annotations

import errno
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import cli_mount
from tests.publish_helpers import Keys
from tests.revision_site import Site
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX]

OPENS = 2500  # distinct files (the page cache would answer a second open of the same one);
# each holds a cache file open in the serving process once read, unless no-open
T0 = int(time.time()) - 3600
# the serving process: soft limit 1,024, and (second test) a hard limit it cannot raise
NO_RAISE = ["setpriv", "--inh-caps=-sys_resource", "--bounding-set=-sys_resource"]


@pytest.fixture(scope="module")
def site(keys: Keys) -> Iterator[Site]:
    with shared_scratch("pycvmfs-descriptors-") as base, Nginx() as server:
        published = Site(keys, server, base)
        published.publish({f"f{i:04}": f"file {i}\n" for i in range(OPENS)}, T0)
        yield published


@pytest.fixture(autouse=True)
def enough_descriptors_for_the_test() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < OPENS + 100:
        pytest.skip(f"the test process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPENS + 100, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_and_read_all(mnt: Path) -> tuple[list[int], dict[int, int]]:
    """Open OPENS files through the mount, read a byte of each; (descriptors, errno
    counts of the reads that failed)."""
    handles, failures = [], {}
    for i in range(OPENS):
        fd = os.open(mnt / f"f{i:04}", os.O_RDONLY)
        handles.append(fd)
        try:
            assert os.pread(fd, 5, 0) == b"file "
        except OSError as exc:
            failures[exc.errno] = failures.get(exc.errno, 0) + 1
    return handles, failures


def _mount(site: Site, prefix: list[str], **options: str) -> object:
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir(exist_ok=True)
    return cli_mount(site.keys.fqrn, mnt, env=site.env(cache),
                     options=site.options(cache, **options), prefix=prefix)


def _all_read(mnt: Path) -> None:
    handles, failures = _open_and_read_all(mnt)
    try:
        assert failures == {}
    finally:
        for fd in handles:
            os.close(fd)


def test_the_soft_limit_is_raised_to_cvmfs_nfiles(site: Site) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    with _mount(site, ["prlimit", f"--nofile=1024:{hard_text}"],  # type: ignore[attr-defined]
                PYCVMFS_NO_OPEN="no"):  # a descriptor per open file
        _all_read(site.base / "mnt")


def test_without_open_requests_no_descriptor_is_held_per_open_file(site: Site) -> None:
    with _mount(site, ["prlimit", "--nofile=1024:2048", *NO_RAISE]):  # type: ignore[attr-defined]
        _all_read(site.base / "mnt")


def test_running_out_of_descriptors_is_emfile_and_heals(site: Site) -> None:
    with _mount(site, ["prlimit", "--nofile=1024:2048", *NO_RAISE],  # type: ignore[attr-defined]
                PYCVMFS_NO_OPEN="no"):
        mnt = site.base / "mnt"
        log = (site.base / "cache" / f"{site.keys.fqrn}.log").read_text()
        assert "hard limit of open files (2048)" in log
        handles, failures = _open_and_read_all(mnt)
        try:
            assert failures and set(failures) <= {errno.EMFILE, errno.ENFILE}, failures
            assert sum(failures.values()) < OPENS
        finally:
            for fd in handles:
                os.close(fd)
        for i in range(0, OPENS, 7):  # nothing was marked broken
            assert (mnt / f"f{i:04}").read_bytes() == f"file {i}\n".encode()
        assert int(os.getxattr(mnt, "user.nioerr")) == 0
