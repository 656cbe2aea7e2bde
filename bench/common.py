"""Helpers the benchmark scripts share: running the CLI, system probes (CPU, memory, page
cache), file trees, and what nginx served (its access log)."""

from __future__ import annotations

import os
import re
import resource
import stat
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
MIB = 1024 * 1024
# combined log format: ... "GET /path HTTP/1.1" 200 12345 "referer" "agent"
LOG_LINE = re.compile(r'"[A-Z]+ (\S+) [^"]*" (\d{3}) (\d+|-)')


def child_env(**extra: str) -> dict[str, str]:
    """This environment, with the repository importable (`python -m pycvmfs`) and its
    bytecode where an installed package keeps it (`compile_package`)."""
    env = dict(os.environ, **extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def read_file(path: Path, buffer: bytearray | None = None) -> int:
    """Read `path` sequentially into one buffer (1 MiB unless `buffer` is given, which
    parallel readers reuse); bytes read."""
    buf = buffer if buffer is not None else bytearray(MIB)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return total


def compile_package() -> None:
    """Write the bytecode (__pycache__) of pycvmfs and of every package it imports from
    this interpreter's site-packages, as `pip install` leaves them, even where
    PYTHONDONTWRITEBYTECODE is set or `make` put the bytecode under PYTHONPYCACHEPREFIX:
    otherwise every `python -m pycvmfs` the benchmark starts (a mount, a container
    start) compiles the client, click, urllib3 and cryptography first, and the mount
    times measure the compiler (0.5 s of CPU per mount instead of 0.25 s, measured)."""
    paths = sysconfig.get_paths()
    trees = dict.fromkeys([str(REPO_ROOT / "pycvmfs"), paths["purelib"], paths["platlib"]])
    subprocess.run([sys.executable, "-m", "compileall", "-q", *trees],
                   env=child_env(), check=True, stdout=subprocess.DEVNULL)


def pycvmfs(*args: str, env: dict[str, str] | None = None, timeout: float = 3600,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m pycvmfs ARGS` from the repository root; a failure raises with its output."""
    done = subprocess.run([sys.executable, "-m", "pycvmfs", *args], cwd=REPO_ROOT,
                          env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"pycvmfs {' '.join(args[:4])} ... failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return done


# -- system probes -------------------------------------------------------------------


@contextmanager
def journaled_scratch(directory: Path, size_bytes: int) -> Iterator[str | None]:
    """`directory` on a fresh journaled ext4 for the run (a sparse image file beside it,
    loop-mounted; root only), where the clients' caches go. On ext4 without a journal (the
    root file system of some VMs) every file create scans past the inodes deleted in the
    last minutes (the kernel's `recently_deleted`), so a cache emptied just before a cold
    round made each object cost ~0.7 ms of kernel CPU, for either client, depending on
    where the new directory landed: cvmfs2's 8 cold readers took 1.6 s or 5.4 s by that
    alone. Nodes cache on journaled file systems, which skip the check. Yields why the
    plain directory is used instead, or None."""
    image = directory.with_name(directory.name + ".ext4")
    problem = None
    if os.geteuid() != 0:
        problem = "not root"
    else:
        try:
            with open(image, "wb") as fh:
                fh.truncate(size_bytes)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)], check=True,
                           capture_output=True, timeout=120)
            directory.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-o", "loop", str(image), str(directory)], check=True,
                           capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"cannot make one ({exc})"
            image.unlink(missing_ok=True)
    try:
        yield problem
    finally:
        if problem is None:
            done = subprocess.run(["umount", str(directory)], check=False, capture_output=True)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(directory)], check=False,
                               capture_output=True)
            image.unlink(missing_ok=True)


def drop_caches(enabled: bool) -> bool:
    """sync + drop page cache, dentries and inodes (root only); False if not done."""
    if not enabled:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError as exc:
        print(f"warning: cannot drop caches ({exc}); local reads may come from memory")
        return False
    return True


def process_cpu(pid: int) -> float | None:
    """user+sys CPU seconds of `pid` (all threads), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy() -> float | None:
    """CPU seconds all processes used since boot (not idle, not iowait)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and of its children waited for (the timed commands)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB (10^6 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024 / MB
    return values["VmRSS"], values["VmHWM"]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# -- file trees ----------------------------------------------------------------------


def warm_files(root: Path) -> int:
    """Read every regular file below `root` (into the page cache); their total size."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                while chunk := fh.read(MIB):
                    total += len(chunk)
    return total


def tree_bytes(root: Path) -> int:
    """Sum of regular file sizes below `root` (hard links once; files that vanish during
    the walk, such as a client cache's sqlite `-shm` file after the unmount, are skipped)."""
    seen: set[int] = set()
    total = 0
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


# -- what nginx served ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    """What nginx logged in one window."""

    bytes: int  # body bytes sent
    requests: int
    twice: int  # object URLs (/data/) answered 200 more than once: fetched again


class AccessLog:
    """What nginx sent since the last `take()` (from its access log)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def take(self) -> tuple[int, int]:
        """(bytes, requests) logged since the last call."""
        served = self.served()
        return served.bytes, served.requests

    def skip(self) -> None:
        """Forget what was logged so far (the next window starts now)."""
        self.served()

    def settle(self, quiet: float = 0.3, limit: float = 5.0) -> None:
        """Wait until nothing was logged for `quiet` seconds (at most `limit`): what a client
        still fetches in the background after the timed work belongs to it."""
        deadline = time.monotonic() + limit
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.path.stat().st_size if self.path.exists() else 0
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def served(self) -> Served:
        """Bytes, requests and objects fetched twice since the last call."""
        time.sleep(0.05)  # nginx writes the log line after the response
        if not self.path.exists():
            return Served(0, 0, 0)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
            self.offset = fh.tell()
        total = requests = 0
        objects: Counter[str] = Counter()
        for line in text.splitlines():
            match = LOG_LINE.search(line)
            if match:
                requests += 1
                total += 0 if match.group(3) == "-" else int(match.group(3))
                if match.group(2) == "200" and "/data/" in match.group(1):
                    objects[match.group(1)] += 1
        return Served(total, requests, sum(1 for n in objects.values() if n > 1))
