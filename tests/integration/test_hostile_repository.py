"""A compromised repository through a real mount (validly signed, hostile catalogs; forged
with tests/hostile_repo.py): catalog graphs that loop answer EIO at once and the mount stays
responsive, a mixed hardlink group never serves one file's bytes under another's name, a
nested catalog swapped for another is refused, a TTL of 0 does not make the mount poll, and
huge directories list completely with memory that does not grow with them; the
mount's HOME and TMPDIR stay empty (it writes only below its cache and mount point).

Watchdog: every filesystem call runs in its own process against a deadline (the configured
timeout x attempts, plus slack); a call still running then would be a request that never
ends, the kind that leaves the caller unkillable in D state, and fails the test."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile_repo import RepositoryForge
from tests.mounting import cli_mount
from tests.publish_helpers import Keys, make_full_tree, run_publish
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX]

TIMEOUT_S = 2  # CVMFS_TIMEOUT_DIRECT of these mounts; CVMFS_MAX_RETRIES=0, one host
CALL_DEADLINE_S = 4 * TIMEOUT_S + 5.0  # a catalog and an object, each one attempt, + slack
SMALL, HUGE = 50_000, 250_000
HUGE_RSS_LIMIT_MB = 200
GROWTH_LIMIT_MB = 15  # 200,000 more entries held whole would be ~40 MB and more


@dataclass
class Hostile:
    """A published repository that tests forge, serve and mount."""

    keys: Keys
    base: Path
    server: Nginx
    storage: Path
    url: str = ""

    def forge(self) -> RepositoryForge:
        return RepositoryForge(self.storage, self.keys)

    def options(self, **extra: str) -> dict[str, str]:
        return {"CVMFS_SERVER_URL": self.url, "CVMFS_HTTP_PROXY": "DIRECT",
                "CVMFS_PUBLIC_KEY": str(self.keys.public_key_file),
                "CVMFS_CACHE_BASE": str(self.base / "cache"), "CVMFS_MAX_RETRIES": "0",
                "CVMFS_TIMEOUT_DIRECT": str(TIMEOUT_S), **extra}

    def env(self) -> dict[str, str]:
        """The mount's environment: its HOME and TMPDIR are watched (nothing outside the
        mount point and the cache may change: `hostile` checks they stay empty)."""
        for directory in ("etc", "home", "tmp"):
            (self.base / directory).mkdir(exist_ok=True)
        return dict(os.environ, PYCVMFS_CONFIG_ROOT=str(self.base / "etc"),
                    HOME=str(self.base / "home"), TMPDIR=str(self.base / "tmp"))

    @contextlib.contextmanager
    def mount(self, **extra: str) -> Iterator[Path]:
        mnt = self.base / "mnt"
        mnt.mkdir(exist_ok=True)
        with cli_mount(self.keys.fqrn, mnt, env=self.env(), options=self.options(**extra)):
            yield mnt


@pytest.fixture
def hostile(keys: Keys) -> Iterator[Hostile]:
    with shared_scratch("pycvmfs-hostile-") as base, Nginx() as server:
        storage = base / "storage"
        run_publish(make_full_tree(base / "src"), storage, keys)
        site = Hostile(keys, base, server, storage)
        site.url = server.publish(f"cvmfs/{keys.fqrn}", storage)
        yield site
        for watched in ("home", "tmp"):  # the mount wrote only in its cache
            assert not any((base / watched).iterdir()), sorted((base / watched).iterdir())


_CALL = """
import json, os, sys, time
kind, path = sys.argv[1], sys.argv[2]
start = time.monotonic()
try:
    if kind == "stat":
        result = os.stat(path, follow_symlinks=False).st_ino
    elif kind == "read":
        result = open(path, "rb").read().hex()
    else:
        result = len(os.listdir(path))
    code = 0
except OSError as exc:
    result, code = None, exc.errno
print(json.dumps([code, result, time.monotonic() - start]))
"""


def call(kind: str, path: Path, deadline: float = CALL_DEADLINE_S) -> tuple[int, object]:
    """(errno or 0, result) of one filesystem call made by a process of its own, which must
    end before `deadline` (see the module docstring)."""
    child = subprocess.Popen([sys.executable, "-c", _CALL, kind, str(path)],
                             stdout=subprocess.PIPE, text=True)
    end = time.monotonic() + deadline
    while child.poll() is None:
        if time.monotonic() > end:
            child.kill()  # may not die if it sits in a FUSE request: the test fails anyway
            pytest.fail(f"{kind} {path} still running after {deadline} s: a request "
                        "that never ends")
        time.sleep(0.02)
    output, _ = child.communicate()
    code, result, _ = json.loads(output)
    return code, result


def test_catalogs_that_reference_themselves_answer_eio_at_once(hostile: Hostile) -> None:
    with hostile.forge() as forge:
        forge.nested_ref("/nested", "/nested")  # the catalog lists itself
        forge.nested_ref("/nested/deeper/leaf", "/nested")  # an ancestor
    with hostile.mount() as mnt:
        for missing in ("nested/missing", "nested/deeper/leaf/missing", "nested/a/b/c"):
            code, _ = call("stat", mnt / missing)
            assert code == errno.EIO, (missing, code)
        assert call("read", mnt / "nested" / "deeper" / "file") == \
            (0, b"inside a nested catalog\n".hex())  # the rest of the subtree still serves
        assert call("stat", mnt / "plain.txt")[0] == 0
        assert call("listdir", mnt / "nested")[0] == 0


def test_a_root_that_lists_a_catalog_at_the_root_answers_eio_not_a_hang(
        hostile: Hostile) -> None:
    with hostile.forge() as forge:
        forge.nested_ref("", "")
    with hostile.mount() as mnt:
        assert call("stat", mnt / "no-such-file")[0] == errno.EIO
        assert call("read", mnt / "plain.txt") == (0, b"plain text\n".hex())


def test_a_nested_catalog_swapped_for_the_root_is_refused(hostile: Hostile) -> None:
    with hostile.forge() as forge:
        forge.swap_catalog("/nested", forge.root_hash)
    with hostile.mount() as mnt:
        assert call("stat", mnt / "nested" / "deeper")[0] == errno.EIO
        assert call("read", mnt / "plain.txt") == (0, b"plain text\n".hex())


def test_a_mixed_hardlink_group_never_shares_bytes(hostile: Hostile) -> None:
    members = ["/plain.txt", "/link-rel", "/exec.sh", "/hardlink-to-plain"]
    with hostile.forge() as forge:
        group = forge.entry("/plain.txt").hardlink_group
        forge.hardlink_group("", members, group)
    with hostile.mount() as mnt:
        inodes = {name: call("stat", mnt / name.lstrip("/"))[1] for name in members}
        assert inodes["/plain.txt"] == inodes["/hardlink-to-plain"]  # the real pair
        assert len({inodes["/plain.txt"], inodes["/link-rel"], inodes["/exec.sh"]}) == 3
        assert call("read", mnt / "exec.sh") == (0, b"#!/bin/sh\necho hi\n".hex())
        assert call("read", mnt / "plain.txt") == (0, b"plain text\n".hex())
        assert os.readlink(mnt / "link-rel") == "plain.txt"


def test_a_ttl_of_zero_does_not_make_the_mount_poll(hostile: Hostile) -> None:
    with hostile.forge() as forge:
        forge.set_property("", "TTL", 0)
    with hostile.mount() as mnt:
        start = _manifest_requests(hostile)
        time.sleep(3)  # the reported mount fetched the manifest 71 times in 10 s
        assert call("read", mnt / "plain.txt")[0] == 0
        assert _manifest_requests(hostile) - start == 0
        assert int(os.getxattr(mnt, "user.expires")) >= 0


def _manifest_requests(hostile: Hostile) -> int:
    return hostile.server.access_log().count("/.cvmfspublished")


@pytest.mark.slow
def test_huge_directories_list_with_memory_that_does_not_grow(hostile: Hostile) -> None:
    """Listing is paged: the mount's peak memory after listing a directory five times as
    large grows by far less than the listing would take whole (the reported 1,000,000
    entries took 1.05 GB; by hand, 1,000,000 list under 200 MB: see the closing note)."""
    with hostile.forge() as forge:
        forge.add_entries("/nested", "/nested/small", SMALL)
        forge.add_entries("/nested", "/nested/huge", HUGE)
    with hostile.mount() as mnt:
        pid = _serving_pid(mnt)
        peaks = []
        for name, expected in (("small", SMALL), ("huge", HUGE)):
            with os.scandir(mnt / "nested" / name) as entries:
                assert sum(1 for _ in entries) == expected
            peaks.append(_rss_mb(pid, "VmHWM"))
        assert peaks[1] - peaks[0] <= GROWTH_LIMIT_MB, peaks  # whole: ~200 B an entry
        assert peaks[1] <= HUGE_RSS_LIMIT_MB, peaks
        assert call("stat", mnt / "nested" / "huge" / f"f{HUGE - 1:07d}")[0] == 0


def _serving_pid(mnt: Path) -> int:
    """The serving process, as the mount itself names it (a background mount's serving
    process may be a fork of the `pycvmfs mount` command, with its command line)."""
    return int(os.getxattr(mnt, "user.pid"))


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")
