"""A private Podman for integration tests: its own storage root and run root under a scratch
directory, the flags this machine needs (../shared/docs/machine-notes.md: runc, not crun,
for the hybrid cgroups; cgroupfs; file events; explicit rlimits; no network), and an
additional image store when given. On exit the overlay mounts it left are unmounted and any
process still running from its run root (conmon) is killed, then the directory goes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

import pytest

from tests.mounting import force_unmount, mountinfo

RUN_TIMEOUT_S = 120.0
RUN_FLAGS = ("--rm", "--network", "none", "--pull", "never",
             "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000")


def missing_requirement() -> str | None:
    """Why Podman tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "podman runs as root here"
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (Debian: apt-get install podman runc)"
    return None


NEEDS_PODMAN = pytest.mark.skipif(missing_requirement() is not None,
                                  reason=missing_requirement() or "")


class PrivatePodman:
    """`podman` with storage under `base`; `image_store`: an additional image store."""

    def __init__(self, base: Path, image_store: Path | None = None) -> None:
        self.base = base
        self.image_store = image_store
        self.root = base / "podman-root"
        self.runroot = base / "podman-run"

    def __enter__(self) -> PrivatePodman:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def command(self, *args: str) -> list[str]:
        store = ([] if self.image_store is None else
                 ["--storage-opt", f"overlay.imagestore={self.image_store}"])
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", "overlay", *store, "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]

    def podman(self, *args: str, check: bool = True,
               timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} exited with {done.returncode}: "
                        f"{done.stderr[-2000:]}")
        return done

    def run(self, image: str, *command: str, check: bool = True,
            timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """`podman run --rm --network none --pull never ... IMAGE COMMAND`."""
        return self.podman("run", *RUN_FLAGS, image, *command, check=check, timeout=timeout)

    def close(self) -> None:
        ours = [point for point in mountinfo() for top in (self.root, self.runroot)
                if point == str(top) or point.startswith(f"{top}/")]
        for point in sorted(ours, key=len, reverse=True):  # deepest first
            force_unmount(point)
        self._kill_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """conmon and friends started through this podman, found by the run root in their
        command line (only those)."""
        marker = str(self.runroot).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
