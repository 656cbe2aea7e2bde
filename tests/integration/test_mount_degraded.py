"""Issue 12: degraded states at mount time are said on the terminal (one warning line each
on stderr), and the mount still says where it mounted; configuration problems refuse a
mount with one line per bad value; `pycvmfs config show` end to end."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mounting import cli_mount, force_unmount, is_mounted, pycvmfs, wait_for_exit
from tests.publish_helpers import Keys
from tests.revision_site import Site
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, free_port, shared_scratch

T1 = int(time.time()) - 3600  # the whitelist expires relative to it


def needs_fuse_and_nginx(test: Callable[..., None]) -> Callable[..., None]:
    for mark in NEEDS_FUSE_AND_NGINX:
        test = mark(test)
    return test


@pytest.fixture
def site(keys: Keys) -> Iterator[Site]:
    with shared_scratch("pycvmfs-degraded-") as base, Nginx() as server:
        yield Site(keys, server, base)


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("pycvmfs: warning: ")]


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "exec"])
@needs_fuse_and_nginx
def test_offline_start_is_said_on_the_terminal(site: Site, fork: bool) -> None:
    """Both ways a background mount starts its serving process pass the line on: a fork
    (pipe) and, for a mount point the command line does not name as the mount table will
    (relative), `pycvmfs mount --foreground --detached` (its stderr file)."""
    site.publish({"a.txt": "one"}, T1)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    options = site.options(cache)
    env = site.env(cache)
    with cli_mount(site.keys.fqrn, mnt, env=env, options=options) as first:
        assert _warnings(first.output) == []
        assert (mnt / "a.txt").read_text() == "one"  # now in the cache
    site.server.pause()
    args = [f"-o{key}={value}" for key, value in options.items()]
    where = str(mnt) if fork else "mnt"
    done = pycvmfs("mount", site.keys.fqrn, where, *args, env=env, cwd=site.base)
    found = re.search(r"\(pid (\d+)\)", done.stdout)
    try:
        assert done.returncode == 0, done.stderr
        warnings = _warnings(done.stderr)
        assert len(warnings) == 1, done.stderr
        assert warnings[0].startswith("pycvmfs: warning: serving offline from the cache: ")
        assert "from the cache (offline)" in warnings[0]
        assert f"mounted {site.keys.fqrn} on {where}" in done.stdout
        assert (mnt / "a.txt").read_text() == "one"
    finally:
        site.server.resume()
        if is_mounted(mnt):
            pycvmfs("umount", str(mnt), env=env)
        force_unmount(mnt)
        wait_for_exit(int(found.group(1)) if found else None)


@needs_fuse_and_nginx
def test_a_stratum1_that_fails_at_mount_is_said(site: Site) -> None:
    site.publish({"a.txt": "one"}, T1)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    dead = f"http://127.0.0.1:{free_port()}/cvmfs/@fqrn@"
    options = site.options(cache, CVMFS_SERVER_URL=f"{dead};{site.url}")
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache), options=options) as mount:
        warnings = _warnings(mount.output)
        dead_url = dead.replace("@fqrn@", site.keys.fqrn)
        assert warnings == [f"pycvmfs: warning: Stratum-1 {dead_url} failed while mounting; "
                            f"using {site.url}"], mount.output
        assert (mnt / "a.txt").read_text() == "one"


def test_bad_values_refuse_the_mount_one_line_each(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "config.d").mkdir(parents=True)
    (etc / "config.d" / "a.example.org.conf").write_text(
        "CVMFS_SERVR_URL=http://s1/cvmfs/@fqrn@\nCVMFS_TIMEOUT=-5\nCVMFS_NFILES=abc\n")
    (tmp_path / "mnt").mkdir()
    env = {"PYCVMFS_CONFIG_ROOT": str(etc), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = pycvmfs("mount", "a.example.org", str(tmp_path / "mnt"), env=env)
    assert done.returncode == 1
    conf = etc / "config.d" / "a.example.org.conf"
    assert done.stderr.splitlines() == [
        f"pycvmfs: warning: {conf}:1: unknown parameter CVMFS_SERVR_URL (did you mean "
        "CVMFS_SERVER_URL?)",
        f"pycvmfs: error: CVMFS_TIMEOUT='-5' (set in {conf}:2): must be at least 1 seconds "
        "(allowed: 1 to 3600 seconds); 0 would mean no timeout at all (the reference passes "
        "it to libcurl: 300 s to connect, stalled transfers never aborted)",
        f"pycvmfs: error: CVMFS_NFILES='abc' (set in {conf}:3): not an integer (allowed: 64 "
        "to 1073741824 open files)",
    ]
    conf.write_text("CVMFS_SERVR_URL=http://s1/cvmfs/@fqrn@\n")
    done = pycvmfs("mount", "a.example.org", str(tmp_path / "mnt"), env=env)
    assert done.returncode == 1
    assert (f"no CVMFS_SERVER_URL for a.example.org (CVMFS_SERVR_URL is set in {conf}:1: "
            "did you mean CVMFS_SERVER_URL?)") in done.stderr


def test_config_show_end_to_end(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "config.d").mkdir(parents=True)
    (etc / "default.local").write_text("CVMFS_QUOTA_LIMIT=2000\nCVMFS_MEMCACHE_SIZE=64\n")
    (etc / "config.d" / "a.example.org.conf").write_text(
        "CVMFS_SERVER_URL='http://s1/cvmfs/@fqrn@;http://s2/cvmfs/@fqrn@'\n")
    key = tmp_path / "a.pub"
    key.write_text("k")
    env = {"PYCVMFS_CONFIG_ROOT": str(etc), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = pycvmfs("config", "show", "a.example.org", "-o", f"CVMFS_PUBLIC_KEY={key}", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "CVMFS_REPOSITORY_NAME=a.example.org"
    assert f"CVMFS_QUOTA_LIMIT=2000    # from {etc / 'default.local'}:1" in lines
    assert ("CVMFS_SERVER_URL='http://s1/cvmfs/a.example.org;http://s2/cvmfs/a.example.org'"
            f"    # from {etc / 'config.d/a.example.org.conf'}:1") in lines
    assert f"CVMFS_PUBLIC_KEY={key}    # from -o option" in lines
    assert "CVMFS_TIMEOUT=5    # from default" in lines
    assert ("CVMFS_HTTP_PROXY=DIRECT    # from default (pycvmfs: unset or empty means "
            "DIRECT)") in lines
    assert (f"CVMFS_MEMCACHE_SIZE=64    # from {etc / 'default.local'}:2 (not used by "
            "pycvmfs)") in lines
    assert done.stderr == (f"pycvmfs: note: {etc / 'default.local'}:2: CVMFS_MEMCACHE_SIZE is "
                           "a CernVM-FS parameter pycvmfs does not use; ignored\n")
    as_json = pycvmfs("config", "show", "a.example.org", "--json", "-o", "CVMFS_TIMEOUT=0",
                      env=env)
    assert as_json.returncode == 1
    shown = json.loads(as_json.stdout)
    assert shown["parameters"]["CVMFS_TIMEOUT"] == {"value": "0", "origin": "-o option",
                                                    "status": "used"}
    assert not shown["mountable"]
    assert [p["severity"] for p in shown["problems"]] == ["note", "error"]


@needs_fuse_and_nginx
def test_a_proxy_that_fails_at_mount_is_said(site: Site) -> None:
    site.publish({"a.txt": "one"}, T1)
    mnt, cache = site.base / "mnt", site.base / "cache"
    mnt.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    options = site.options(cache, CVMFS_HTTP_PROXY=f"{dead};DIRECT")
    with cli_mount(site.keys.fqrn, mnt, env=site.env(cache), options=options) as mount:
        assert _warnings(mount.output) == [
            f"pycvmfs: warning: proxy {dead} failed while mounting; using DIRECT"], mount.output
        assert (mnt / "a.txt").read_text() == "one"
