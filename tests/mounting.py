"""Drive `python -m pycvmfs mount|umount` from tests and always leave no mount behind.

    with cli_mount(fqrn, mnt, env=env, options={...}, backend="mfusepy") as mount:
        ...                      # mounted (the command returned 0 once the mount was ready)
        done = mount.unmount()   # `pycvmfs umount` (optional; its result is returned)

On exit a mount that is still there is removed with `pycvmfs umount`, then lazily
(`fusermount3 -u -z`, `umount -l`); the detached serving process the mount command started
(its pid is printed) is waited for and killed only if it lingers. Mount state is read from
/proc/self/mountinfo, which also works where `os.path.ismount` cannot stat the mount point
(a FUSE mount of another user without allow_other).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from pycvmfs.fs.mount import mount_table

ROOT = Path(__file__).resolve().parent.parent
DEMO_FQRN = "demo.pycvmfs.org"  # the bundled demo repository
DEMO_REPO = ROOT / "testdata" / "repo"
DEMO_KEY = ROOT / "testdata" / "keys" / f"{DEMO_FQRN}.pub"
COMMAND_TIMEOUT_S = 120.0
SERVER_EXIT_TIMEOUT_S = 10.0
FUSE_DEVICE = "/dev/fuse"
_PID = re.compile(r"\(pid (\d+)\)")


def pycvmfs(*args: str, env: Mapping[str, str], python: str = sys.executable,
            prefix: Sequence[str] = (), cwd: Path | str = ROOT) -> subprocess.CompletedProcess[str]:
    """Run `[prefix...] python -m pycvmfs ARGS` and capture its output."""
    return subprocess.run([*prefix, python, "-m", "pycvmfs", *args], cwd=cwd, env=dict(env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def mountinfo() -> dict[str, list[str]]:
    """Mount point -> its /proc/self/mountinfo fields (the last mount wins)."""
    return mount_table()


def is_mounted(path: Path | str) -> bool:
    return os.path.abspath(path) in mountinfo()


def force_unmount(path: Path | str) -> None:
    """Lazy unmount as the last resort (root)."""
    for command in (["fusermount3", "-u", "-z"], ["umount", "-l"]):
        if not is_mounted(path):
            return
        try:
            subprocess.run([*command, str(path)], capture_output=True, timeout=30, check=False)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for_exit(pid: int | None, timeout: float = SERVER_EXIT_TIMEOUT_S) -> bool:
    """True if `pid` (a serving process a test started) exited by itself; else kill it."""
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return False


@dataclass(frozen=True)
class User:
    """An ordinary user tests run commands as (root starts them)."""

    name: str
    uid: int
    gid: int

    @property
    def prefix(self) -> list[str]:
        """Run a command as this user, without root's supplementary groups."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]


@dataclass
class CliMount:
    mountpoint: Path
    env: Mapping[str, str]
    python: str
    prefix: Sequence[str]
    cwd: Path | str
    pid: int | None = None
    output: str = ""
    unmount_results: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def unmount(self) -> subprocess.CompletedProcess[str]:
        done = pycvmfs("umount", str(self.mountpoint), env=self.env, python=self.python,
                       prefix=self.prefix, cwd=self.cwd)
        self.unmount_results.append(done)
        return done

    def server_exited(self) -> bool:
        """After unmounting: the serving process ends by itself (killed if it lingers)."""
        return wait_for_exit(self.pid)


@contextmanager
def cli_mount(fqrn: str, mountpoint: Path, *, env: Mapping[str, str],
              options: Mapping[str, str] | None = None, backend: str | None = None,
              python: str = sys.executable, prefix: Sequence[str] = (),
              cwd: Path | str = ROOT) -> Iterator[CliMount]:
    """`pycvmfs mount FQRN MOUNTPOINT -o K=V ... [--backend B]` in the background; fails the
    test with the command's stderr if it does not succeed; always unmounts."""
    args = ["mount", fqrn, str(mountpoint)]
    for key, value in (options or {}).items():
        args += ["-o", f"{key}={value}"]
    if backend:
        args += ["--backend", backend]
    mount = CliMount(mountpoint, env, python, prefix, cwd)
    try:
        done = pycvmfs(*args, env=env, python=python, prefix=prefix, cwd=cwd)
        mount.output = done.stdout + done.stderr
        found = _PID.search(done.stdout)
        mount.pid = int(found.group(1)) if found else None
        if done.returncode != 0 or not is_mounted(mountpoint):
            pytest.fail(f"pycvmfs mount {fqrn} failed (exit {done.returncode}): "
                        f"{done.stderr.strip() or done.stdout.strip()}")
        yield mount
    finally:
        if is_mounted(mountpoint):
            mount.unmount()
        force_unmount(mountpoint)
        wait_for_exit(mount.pid)


# Tests of several pytest workers open /dev/fuse at overlapping times: the first to open it
# records its mode, the last to finish restores it. The record (in /run, so a reboot forgets
# it) holds the original mode and the pid of each holder, under an flock; holders that died
# without their finally (a killed run) are dropped, and the mode they recorded still wins.
FUSE_OPENERS = Path("/run/pycvmfs-tests-fuse-openers")


@contextmanager
def _fuse_openers() -> Iterator[tuple[int, list[int]]]:
    """Under the lock: (original mode, live holders), written back on exit."""
    import fcntl

    with open(f"{FUSE_OPENERS}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mode_text, *pids = FUSE_OPENERS.read_text().split()
            original = int(mode_text, 8)
        except (OSError, ValueError):
            original, pids = stat.S_IMODE(os.stat(FUSE_DEVICE).st_mode), []
        holders = [int(pid) for pid in pids if Path(f"/proc/{pid}").exists()]
        yield original, holders
        if holders:
            FUSE_OPENERS.write_text(" ".join([f"{original:o}", *map(str, holders)]))
        else:
            os.chmod(FUSE_DEVICE, original)
            FUSE_OPENERS.unlink(missing_ok=True)


@contextmanager
def fuse_open_to_all_users() -> Iterator[None]:
    """`chmod 666 /dev/fuse` as HPC nodes ship it; the original mode is restored when the
    last test of any worker that opened it ends."""
    with _fuse_openers() as (_, holders):
        holders.append(os.getpid())
        os.chmod(FUSE_DEVICE, 0o666)
    try:
        yield
    finally:
        with _fuse_openers() as (_, holders):
            holders.remove(os.getpid())


NEEDS_PYFUSE3 = pytest.mark.skipif(
    find_spec("pyfuse3") is None,
    reason="pyfuse3 is not installed (`make system-packages`, then `make setup`)")


def backend_params(*names: str) -> list[Any]:
    """FUSE backends for `parametrize`: pyfuse3 (built from source against libfuse3's
    headers, which `make setup` tries) is skipped where it is not installed."""
    return [pytest.param(name, marks=NEEDS_PYFUSE3 if name == "pyfuse3" else ())
            for name in names]
