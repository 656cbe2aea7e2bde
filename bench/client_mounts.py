"""Mounts of `bench/client.py`: one measured mount, whichever client made it -- a background
`pycvmfs mount` or the reference `cvmfs2` -- always unmounted (its process gone) on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from bench.client_tree import FQRN
from bench.common import child_env, memory_mb, pid_alive, pycvmfs

MOUNT_TIMEOUT_S = 120.0
UMOUNT_TIMEOUT_S = 60.0
EXIT_WAIT_S = 20.0


@dataclass(slots=True)
class Env:
    base: Path  # the cached setup of one spec
    run: Path  # per-run scratch: cache, mount point, empty config root
    url: str
    backend: str | None
    quota_mb: int
    read_ahead_kb: int | None
    fqrn: str = FQRN
    public_key: Path | None = None  # default: BASE/keys/FQRN.pub

    @property
    def key(self) -> Path:
        return self.public_key or self.base / "keys" / f"{self.fqrn}.pub"

    @property
    def mnt(self) -> Path:
        return self.run / "mnt"

    @property
    def cache(self) -> Path:
        return self.run / "cache"


class ClientMount:
    """One FUSE mount made by some client; always unmounted (its process gone) on exit.

    Subclasses mount in `_mount` and unmount in `_unmount`; `pid` is the mount process
    (read from the `user.pid` xattr of the mount root, which both clients provide)."""

    def __init__(self, mnt: Path, read_ahead_kb: int | None) -> None:
        self.mnt = mnt
        self.want_read_ahead_kb = read_ahead_kb
        self.pid = 0
        self.seconds = 0.0
        self.read_ahead_kb: int | None = None

    def __enter__(self) -> ClientMount:
        if os.path.ismount(self.mnt):
            raise RuntimeError(f"{self.mnt} is already mounted")
        started = time.perf_counter()
        try:
            self._mount()
            os.listdir(self.mnt)  # until the mount answers
            self.seconds = time.perf_counter() - started
            self.pid = int(os.getxattr(self.mnt, "user.pid"))
            self.read_ahead_kb = self._read_ahead(self.want_read_ahead_kb)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _mount(self) -> None:
        raise NotImplementedError

    def _unmount(self) -> None:
        raise NotImplementedError

    def _read_ahead(self, value: int | None) -> int | None:
        """The mount's bdi read-ahead in KiB (set to `value` first if given)."""
        dev = os.stat(self.mnt).st_dev
        knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        try:
            if value is not None:
                knob.write_text(f"{value}\n")
            return int(knob.read_text())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: object) -> None:
        if os.path.ismount(self.mnt):
            self._unmount()
        deadline = time.monotonic() + EXIT_WAIT_S
        while self.pid and pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid and pid_alive(self.pid):  # the mount process this run started
            print(f"warning: mount process {self.pid} still running; killing it")
            os.kill(self.pid, signal.SIGKILL)

    def memory_mb(self) -> tuple[float, float]:
        return memory_mb(self.pid)


class Mount(ClientMount):
    """One background `pycvmfs mount`."""

    def __init__(self, env: Env) -> None:
        super().__init__(env.mnt, env.read_ahead_kb)
        self.env = env

    def _mount(self) -> None:
        env = self.env
        options = {
            "CVMFS_SERVER_URL": env.url + "/cvmfs/@fqrn@",
            "CVMFS_HTTP_PROXY": "DIRECT",
            "CVMFS_CACHE_BASE": str(env.cache),
            "CVMFS_PUBLIC_KEY": str(env.key),
            "CVMFS_QUOTA_LIMIT": str(env.quota_mb),
        }
        argv = ["mount", env.fqrn, str(env.mnt)]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        if env.backend:
            argv += ["--backend", env.backend]
        pycvmfs(*argv, env=child_env(PYCVMFS_CONFIG_ROOT=str(env.run / "etc")),
                timeout=MOUNT_TIMEOUT_S)

    def _unmount(self) -> None:
        mnt = self.mnt
        done = pycvmfs("umount", str(mnt), timeout=UMOUNT_TIMEOUT_S, check=False)
        if done.returncode != 0 and os.path.ismount(mnt):
            print(f"warning: umount failed ({done.stderr.strip()}); lazy unmount")
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@dataclass(slots=True)
class Reference:
    """The reference CernVM-FS client `cvmfs2`: its own mount point, cache and sockets."""

    binary: Path
    dir: Path  # per-run scratch of the reference mounts
    version: str = ""  # its `user.version` xattr, once mounted
    fqrn: str = FQRN  # the repository of the last `write_config`

    @property
    def mnt(self) -> Path:
        return self.dir / "mnt"

    @property
    def cache(self) -> Path:
        return self.dir / "cache"

    @property
    def config(self) -> Path:
        return self.dir / "cvmfs2.conf"

    def write_config(self, env: Env) -> None:
        """A config file that cvmfs2 reads alone (`-o config=`): no /etc/cvmfs needed."""
        for d in (self.mnt, self.cache, self.dir / "sockets"):
            d.mkdir(parents=True, exist_ok=True)
        self.fqrn = env.fqrn
        options = {
            "CVMFS_SERVER_URL": env.url + "/cvmfs/@fqrn@",
            "CVMFS_HTTP_PROXY": "DIRECT",
            "CVMFS_PUBLIC_KEY": str(env.key),
            "CVMFS_CACHE_BASE": str(self.cache),
            "CVMFS_SHARED_CACHE": "no",
            "CVMFS_RELOAD_SOCKETS": str(self.dir / "sockets"),
            "CVMFS_USER": "root",
            "CVMFS_CLAIM_OWNERSHIP": "no",
            "CVMFS_CHECK_PERMISSIONS": "no",
            "CVMFS_QUOTA_LIMIT": "-1",
            "CVMFS_USE_GEOAPI": "no",
            "CVMFS_SEND_INFO_HEADER": "no",
            "CVMFS_TIMEOUT": "5",
            "CVMFS_TIMEOUT_DIRECT": "5",
            "CVMFS_MAX_RETRIES": "1",
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in options.items()))

    def env(self) -> dict[str, str]:
        """cvmfs2 loads libcvmfs_fuse*_stub.so from CVMFS_LIBRARY_PATH (a build directory)."""
        env = dict(os.environ)
        if any(self.binary.parent.glob("libcvmfs_fuse*_stub.so")):
            env["CVMFS_LIBRARY_PATH"] = str(self.binary.parent) + "/"
        return env


def unmount_fuse(mnt: Path) -> None:
    """`fusermount3 -u`, then `fusermount3 -u -z` if the mount is still there."""
    done = subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True,
                          text=True, timeout=UMOUNT_TIMEOUT_S)
    if done.returncode != 0 and os.path.ismount(mnt):
        print(f"warning: fusermount3 -u failed ({done.stderr.strip()}); lazy unmount")
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True,
                       timeout=UMOUNT_TIMEOUT_S)


class Cvmfs2Mount(ClientMount):
    """One `cvmfs2` mount (it daemonizes; the FUSE process is found via `user.pid`)."""

    def __init__(self, ref: Reference, read_ahead_kb: int | None) -> None:
        super().__init__(ref.mnt, read_ahead_kb)
        self.ref = ref

    def _mount(self) -> None:
        ref = self.ref
        argv = [str(ref.binary), "-o", f"config={ref.config},allow_other,fsname=cvmfs2",
                ref.fqrn, str(ref.mnt)]
        done = subprocess.run(argv, cwd=ref.binary.parent, env=ref.env(), capture_output=True,
                              text=True, timeout=MOUNT_TIMEOUT_S)
        if done.returncode != 0 or not os.path.ismount(ref.mnt):
            raise RuntimeError(f"cvmfs2 mount failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")
        with suppress(OSError):
            ref.version = os.getxattr(ref.mnt, "user.version").decode().strip()

    def _unmount(self) -> None:
        unmount_fuse(self.mnt)



def unmount_below(root: Path) -> None:
    """Lazily unmount every mount below `root`, deepest first (a killed run's leftovers)."""
    prefix = str(root.absolute()) + "/"
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if len(line.split()) > 1 and line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["fusermount3", "-u", "-z", point], check=False, capture_output=True,
                       timeout=UMOUNT_TIMEOUT_S)
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True,
                           timeout=UMOUNT_TIMEOUT_S)
