"""`pycvmfs umount` on mounts whose serving process was killed or stopped (issue 9, class 8).

A killed serving process leaves a mount that answers ENOTCONN; a stopped one leaves a mount
where every uncached lookup waits. `pycvmfs umount` must decide from the mount table and
/proc alone, detach such mounts quickly, say what it did in one line and exit 0; a healthy
mount still unmounts politely (and is refused while busy unless --force). Each test mounts
the bundled demo repository through a real nginx with `pycvmfs mount`; everything it starts
(mounts, serving processes, processes waiting in the mount) is ended before it returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycvmfs.fs.mount import FUSECTL
from tests.integration.test_client_unprivileged import (  # noqa: F401 - fixtures
    SYSTEM_PYTHON,
    area,
    fuse_open_to_all,
    user,
    user_env,
)
from tests.mounting import (
    DEMO_FQRN,
    DEMO_KEY,
    DEMO_REPO,
    ROOT,
    CliMount,
    User,
    cli_mount,
    is_mounted,
    mountinfo,
    pycvmfs,
    wait_for_exit,
)
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx

pytestmark = [*NEEDS_FUSE_AND_NGINX]

UMOUNT_BOUND_S = 10.0  # what the issue allows a dead or hung unmount
WAITER_TIMEOUT_S = 60.0  # no process a test starts outlives this
GONE_TIMEOUT_S = 10.0


@dataclass
class Site:
    """A served demo repository and the options that mount it."""

    env: dict[str, str]
    options: dict[str, str]
    mnt: Path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(tmp_path / "etc-cvmfs"), HOME=str(tmp_path))
    with Nginx() as server:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO)
        yield Site(env, {"CVMFS_SERVER_URL": url.rsplit("/", 1)[0] + "/@fqrn@",
                         "CVMFS_PUBLIC_KEY": str(DEMO_KEY), "CVMFS_HTTP_PROXY": "DIRECT",
                         "CVMFS_CACHE_BASE": str(tmp_path / "cache")}, mnt)


def _serving_pid(mount: CliMount) -> int:
    assert mount.pid is not None, mount.output
    return mount.pid


def _stop_and_wait(pid: int, sig: signal.Signals) -> None:
    """Send `sig` and wait (bounded) until the process is gone or stopped."""
    os.kill(pid, sig)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    wanted = ("T", "t") if sig == signal.SIGSTOP else ("Z", "X", None)
    while _state(pid) not in wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _state(pid) in wanted


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def _waiter(path: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A process that looks up a name the kernel has not cached: it waits while the
    serving process is stopped. It is always ended by the test (and times out anyway)."""
    return subprocess.Popen([*prefix, "timeout", "-s", "KILL", str(WAITER_TIMEOUT_S),
                             "stat", str(path / f"absent-{uuid.uuid4().hex}")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sitter(mnt: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A process whose working directory is in the mount: it keeps the mount busy."""
    sitter = subprocess.Popen([*prefix, "sh", "-c", f'cd "$1" && exec sleep {WAITER_TIMEOUT_S}',
                               "sitter", str(mnt)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while time.monotonic() < deadline:  # until it sits there
        try:
            if os.readlink(f"/proc/{sitter.pid}/cwd") == str(mnt):
                return sitter
        except OSError:
            pass
        assert sitter.poll() is None, "the sitter could not enter the mount"
        time.sleep(0.02)
    raise AssertionError("the sitter did not enter the mount")


def _end(*processes: subprocess.Popen[bytes] | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=GONE_TIMEOUT_S)


def _umount(site: Site, *args: str, prefix: tuple[str, ...] = (),
            python: str = sys.executable, cwd: Path = ROOT
            ) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = pycvmfs("umount", *args, str(site.mnt), env=site.env, prefix=prefix, python=python,
                   cwd=cwd)
    return done, time.monotonic() - started


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and not done.stderr.strip(), (done.stdout, done.stderr)
    return lines[0]


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_killed_mount_is_unmounted(site: Site, busy: bool) -> None:
    with cli_mount(DEMO_FQRN, site.mnt, env=site.env, options=site.options) as mount:
        pid = _serving_pid(mount)
        sitter = _sitter(site.mnt) if busy else None
        try:
            _stop_and_wait(pid, signal.SIGKILL)
            again = pycvmfs("mount", DEMO_FQRN, str(site.mnt), env=site.env)
            assert again.returncode == 1
            assert "still mounted (dead or hung mount" in again.stderr
            assert f"pycvmfs umount --force {site.mnt}" in again.stderr
            done, seconds = _umount(site)
            assert done.returncode == 0, done.stderr
            assert seconds < UMOUNT_BOUND_S
            line = _one_line(done)
            assert "dead mount" in line and str(site.mnt) in line
            assert ("detached" in line) == busy  # in use: detached lazily
            assert not is_mounted(site.mnt)
        finally:
            _end(sitter)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_stopped_mount_is_detached(site: Site, force: bool) -> None:
    with cli_mount(DEMO_FQRN, site.mnt, env=site.env, options=site.options) as mount:
        pid = _serving_pid(mount)
        waiter = None
        try:
            _stop_and_wait(pid, signal.SIGSTOP)
            waiter = _waiter(site.mnt / "docs")
            time.sleep(0.3)  # the point: a while later, the waiter is still waiting
            assert waiter.poll() is None  # waits on the stopped serving process
            again = pycvmfs("mount", DEMO_FQRN, str(site.mnt), env=site.env)
            assert again.returncode == 1 and "dead or hung mount" in again.stderr
            done, seconds = _umount(site, *(["--force"] if force else []))
            assert done.returncode == 0, done.stderr
            assert seconds < UMOUNT_BOUND_S
            line = _one_line(done)
            assert "hung mount" in line and f"kill -CONT {pid}" in line
            assert not is_mounted(site.mnt)
            if "FUSE connection aborted" in line:  # the waiter is released at once
                waiter.wait(timeout=GONE_TIMEOUT_S)
                assert waiter.returncode != 0
            else:
                assert "FUSE connection not aborted" in line
        finally:
            if _state(pid) is not None:
                os.kill(pid, signal.SIGCONT)
            if waiter is not None:
                waiter.wait(timeout=GONE_TIMEOUT_S)  # answered once the process goes on
        assert mount.server_exited()  # the detached mount's last user left: it ends


def test_healthy_mount_unmounts_politely(site: Site) -> None:
    with cli_mount(DEMO_FQRN, site.mnt, env=site.env, options=site.options) as mount:
        assert (site.mnt / "README.txt").read_text().endswith("revision 2: updated\n")
        sitter = _sitter(site.mnt)
        try:
            busy, _ = _umount(site)
            assert busy.returncode == 1 and "is busy" in busy.stderr
            assert f"pycvmfs umount --force {site.mnt}" in busy.stderr
            assert is_mounted(site.mnt)
            assert (site.mnt / "README.txt").read_text()  # untouched: still serving
        finally:
            _end(sitter)
        done, seconds = _umount(site)
        assert done.returncode == 0, done.stderr
        assert _one_line(done) == f"unmounted {site.mnt}"
        assert not is_mounted(site.mnt)
        assert mount.server_exited()


def test_forced_unmount_of_a_busy_healthy_mount(site: Site) -> None:
    with cli_mount(DEMO_FQRN, site.mnt, env=site.env, options=site.options) as mount:
        sitter = _sitter(site.mnt)
        try:
            done, _ = _umount(site, "--force")
            assert done.returncode == 0, done.stderr
            line = _one_line(done)
            assert line.startswith(f"{site.mnt}: forced (served by pid {mount.pid})")
            assert line.endswith("detached")
            assert not is_mounted(site.mnt)
        finally:
            _end(sitter)
        assert mount.server_exited()


def test_not_mounted_and_other_file_systems_are_refused(site: Site) -> None:
    done, _ = _umount(site)
    assert done.returncode == 1 and "is not mounted" in done.stderr
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(site.mnt)],
                   check=True, timeout=30)
    try:  # a file system of the test's own, in case the refusal ever breaks
        done, _ = _umount(site, "--force")
        assert done.returncode == 1 and "not a FUSE mount" in done.stderr  # even as root
        assert is_mounted(site.mnt)
    finally:
        subprocess.run(["umount", str(site.mnt)], check=False, timeout=30)
    assert not is_mounted(site.mnt)


@contextmanager
def fusectl_mounted(wanted: bool) -> Iterator[bool]:
    """With `wanted`, the fusectl file system at /sys/fs/fuse/connections for the test
    (as systemd mounts it at boot), unmounted again if the test mounted it. Yields whether
    it is mounted."""
    mounted_here = False
    if wanted and str(FUSECTL) not in mountinfo():
        mounted_here = subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)],
                                      capture_output=True, timeout=30).returncode == 0
    try:
        yield str(FUSECTL) in mountinfo()
    finally:
        if mounted_here:
            subprocess.run(["umount", str(FUSECTL)], capture_output=True, timeout=30)


@pytest.mark.parametrize(("how", "with_fusectl"),
                         [(signal.SIGKILL, False), (signal.SIGSTOP, False),
                          (signal.SIGSTOP, True)],
                         ids=["killed", "stopped", "stopped-fusectl"])
@pytest.mark.usefixtures("fuse_open_to_all")
def test_ordinary_user_unmounts_own_dead_mount(user: User, area: Path,  # noqa: F811
                                               how: signal.Signals,
                                               with_fusectl: bool) -> None:
    home, mnt, config_root = area / "home", area / "mnt", area / "etc-cvmfs"
    for directory in (home, mnt):
        directory.mkdir()
        os.chown(directory, user.uid, user.gid)
    config_root.mkdir(mode=0o755)
    env = user_env(user, home, config_root)
    prefix = tuple(user.prefix)
    with Nginx() as server, fusectl_mounted(with_fusectl) as fusectl:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO)
        options = {"CVMFS_SERVER_URL": url.rsplit("/", 1)[0] + "/@fqrn@",
                   "CVMFS_PUBLIC_KEY": str(DEMO_KEY), "CVMFS_HTTP_PROXY": "DIRECT"}
        with cli_mount(DEMO_FQRN, mnt, env=env, options=options, python=SYSTEM_PYTHON,
                       prefix=prefix, cwd=home) as mount:
            pid = _serving_pid(mount)
            sitter = _sitter(mnt, prefix)  # busy: only a lazy unmount can take it down
            try:
                _stop_and_wait(pid, how)
                site = Site(env, options, mnt)
                done, seconds = _umount(site, prefix=prefix, python=SYSTEM_PYTHON, cwd=home)
                assert done.returncode == 0, done.stderr
                assert seconds < UMOUNT_BOUND_S
                line = _one_line(done)
                assert "detached" in line  # fusermount3 -u -z
                assert not is_mounted(mnt)
                if how == signal.SIGKILL:
                    assert "dead mount" in line
                else:  # the connection's files belong to the user: they may abort it
                    assert "hung mount" in line
                    assert ("FUSE connection aborted" in line) == fusectl, line
            finally:
                _end(sitter)
                if _state(pid) is not None:
                    os.kill(pid, signal.SIGCONT)
            assert wait_for_exit(pid)
