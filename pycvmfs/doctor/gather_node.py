"""Facts about the node for `doctor.node`: /dev/fuse, fusermount3, sysctls, the kernel,
libfuse3, and the user-namespace probe (`doctor.probe`, run in a child process for at most
`PROBE_TIMEOUT_S`). Reads only; the probe's mount lives and dies in its own namespace."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from pycvmfs.doctor.node import FuseDevice, Helper, Libfuse, NodeFacts, Sysctls
from pycvmfs.doctor.probe import FUSE_DEVICE, ProbeReport
from pycvmfs.fs.userns import SYSCTLS, proc_sys

PROBE_TIMEOUT_S = 8.0


def fuse_device(path: str = FUSE_DEVICE) -> FuseDevice:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FuseDevice(exists=False)
    except OSError as exc:
        return FuseDevice(exists=True, open_error=exc.strerror or str(exc))
    error = ""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        error = exc.strerror or str(exc)
    return FuseDevice(True, stat.S_ISCHR(st.st_mode), os.major(st.st_rdev),
                      os.minor(st.st_rdev), stat.S_IMODE(st.st_mode), error)


def helper() -> Helper:
    path = shutil.which("fusermount3")
    if path is None:
        return Helper(None)
    st = os.stat(path)
    return Helper(path, bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def sysctls() -> Sysctls:
    base = proc_sys()
    return Sysctls.from_names({sysctl.name: _read_int(sysctl.path(base)) for sysctl in SYSCTLS})


def fuse_filesystem() -> bool:
    try:
        lines = Path("/proc/filesystems").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[-1:] == ["fuse"] for line in lines)


def libfuse() -> Libfuse:
    fallbacks = tuple(name for name in ("pyfuse3", "mfusepy")
                      if importlib.util.find_spec(name) is not None)
    from pycvmfs.fs import _libfuse3

    try:
        loaded = _libfuse3.load()
    except (ImportError, OSError) as exc:
        return Libfuse(error=str(exc), fallbacks=fallbacks)
    release = loaded.release or f"{loaded.version // 100}.{loaded.version % 100}"
    return Libfuse(release=release, fallbacks=fallbacks)


def probe() -> tuple[ProbeReport | None, str]:
    """Run `python -m pycvmfs.doctor.probe` as this user; (report, "") or (None, why)."""
    try:
        done = subprocess.run([sys.executable, "-m", "pycvmfs.doctor.probe"],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return None, f"cannot start {sys.executable}: {exc.strerror}"
    try:
        return ProbeReport.from_json(done.stdout), ""
    except (ValueError, TypeError):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {done.returncode}: {last}"


def gather() -> NodeFacts:
    report, error = probe()
    return NodeFacts(euid=os.geteuid(), device=fuse_device(), helper=helper(),
                     sysctls=sysctls(), probe=report, probe_error=error,
                     kernel=os.uname().release, fuse_filesystem=fuse_filesystem(),
                     libfuse=libfuse())
