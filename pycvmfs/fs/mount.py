"""Mount lifecycle, once for all adapters: choose the backend, serve, unmount.

`PYCVMFS_FUSE=lowlevel,pyfuse3,mfusepy` (the default order) picks the first binding that
imports; the reasons others failed are kept for error messages. `lowlevel` is libfuse3's
low-level API through ctypes (no build step; refuses libfuse versions it has no layouts
for): first because only it lets the kernel cache directory listings and symlinks (a warm
walk of 20,000 entries 1.0x local disk against 4x with pyfuse3, bench/client.py).

Deciding about a mount never touches it: a mount whose serving process died answers
ENOTCONN and one whose process is stopped blocks every `stat` until it continues, so what
is mounted where comes from /proc/self/mountinfo (`mount_table`, `MountEntry`), and who
serves it from /proc (the processes holding /dev/fuse whose command line names the mount
point). `unmount` uses that to unmount a healthy mount politely and to detach a dead or
hung one (FUSE connection abort through /sys/fs/fuse/connections, lazy unmount); every
unmount call that could wait runs in a child process with a time limit.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import importlib
import logging
import os
import re
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pycvmfs.errors import ConfigError

if TYPE_CHECKING:  # `pycvmfs umount` needs none of the filesystem core
    from pycvmfs.fs.cpu_policy import AdaptiveCpus
    from pycvmfs.fs.vfs import RepositoryVFS

log = logging.getLogger(__name__)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes ' ' as \040
BACKENDS = ("lowlevel", "pyfuse3", "mfusepy")
DEFAULT_KCACHE_TIMEOUT_S = 60.0  # CVMFS_KCACHE_TIMEOUT default
READ_AHEAD_KB = 4096  # kernel read-ahead of the mount: 1 MiB requests, several in flight
MOUNT_WAIT_S = 30.0
READY_POLL_S = 0.005  # how often a new mount looks for itself in the mount table
FUSE_DEVICE = "/dev/fuse"
FUSECTL = Path("/sys/fs/fuse/connections")  # fusectl: one directory per FUSE connection
UNMOUNT_TIMEOUT_S = 5.0  # an unmount call that takes longer is treated as hung
STOP_SAMPLES = 3  # a serving process counts as stopped only if seen stopped this often...
STOP_SAMPLE_GAP_S = 0.05  # ...this far apart (a traced process stops for a moment)
MNT_DETACH = 2  # umount2 flags (<sys/mount.h>)
UMOUNT_NOFOLLOW = 8
_MINOR_BITS = 20  # the kernel's dev_t is (major << 20) | minor


def load_backend(preference: str | None = None) -> tuple[str, ModuleType]:
    """The adapter module of the first importable binding in the preference list."""
    order = (preference or os.environ.get("PYCVMFS_FUSE") or ",".join(BACKENDS)).split(",")
    reasons = []
    for name in (n.strip() for n in order if n.strip()):
        if name not in BACKENDS:
            raise ConfigError(f"unknown FUSE backend {name!r} (choose from {', '.join(BACKENDS)})")
        try:
            module = importlib.import_module(f"pycvmfs.fs.adapter_{name}")
            getattr(module, "probe", lambda: None)()  # lowlevel: loads libfuse3 only now
            return name, module
        except Exception as exc:  # mfusepy raises OSError when libfuse is missing
            reasons.append(f"{name}: {exc}")
    raise ConfigError("no usable FUSE binding: " + "; ".join(reasons))


def _unescape(text: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def mount_table() -> dict[str, list[str]]:
    """Mount point -> its /proc/self/mountinfo fields (the last mount on a point wins);
    octal escapes in paths decoded. Reading it never touches a mount."""
    table: dict[str, list[str]] = {}
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                fields = line.split()
                table[_unescape(fields[4])] = fields
    except OSError:
        pass
    return table


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One mount as /proc/self/mountinfo describes it."""

    mountpoint: str
    device: str  # major:minor
    fstype: str  # fuse, fuse.SUBTYPE, fuseblk, ext4, ...
    source: str  # pycvmfs mounts say cvmfs2#FQRN
    super_options: tuple[str, ...]

    @classmethod
    def from_fields(cls, fields: list[str]) -> MountEntry:
        tail = fields.index("-", 6)  # optional fields end with a lone "-"
        return cls(_unescape(fields[4]), fields[2], fields[tail + 1],
                   _unescape(fields[tail + 2]), tuple(fields[tail + 3].split(",")))

    @property
    def is_fuse(self) -> bool:
        return self.fstype in ("fuse", "fuseblk") or self.fstype.startswith("fuse.")

    @property
    def user_id(self) -> int | None:
        """The user a FUSE mount belongs to (fusermount3 mounts it for them)."""
        for option in self.super_options:
            if option.startswith("user_id="):
                return int(option.removeprefix("user_id="))
        return None


def mount_point_path(path: str | os.PathLike[str]) -> str:
    """The path /proc/self/mountinfo shows for mount point `path`, found without touching
    the mount: symlinks are resolved in the parent directory only (a stat of the mount
    point itself would reach its server)."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


def mount_entry(mountpoint: str | os.PathLike[str]) -> MountEntry | None:
    """What is mounted at `mountpoint` (None if nothing), from the mount table only."""
    fields = mount_table().get(mount_point_path(mountpoint))
    return MountEntry.from_fields(fields) if fields is not None else None


def mounted_device(mountpoint: str) -> str | None:
    """`major:minor` of the filesystem mounted at `mountpoint` (never touches the mount
    itself: its own server may not be answering yet)."""
    fields = mount_table().get(os.path.abspath(mountpoint))
    return fields[2] if fields is not None else None


def abort_connection(device: str, *, mount_fusectl: bool = False) -> str | None:
    """Abort the kernel side of the FUSE connection of the mount with `device`
    (`major:minor`): every request waiting on it fails at once, whatever its server does.
    The connection's files belong to the mounting user, so root and that user may do it.
    With `mount_fusectl`, root mounts the fusectl file system for this if it is not
    mounted (systemd does at boot; containers often do not) and unmounts it again.
    None when aborted, else why not."""
    major, minor = (int(part) for part in device.split(":"))  # fusectl names connections
    abort_file = FUSECTL / str((major << _MINOR_BITS) | minor) / "abort"  # by the dev_t
    mounted_here = (mount_fusectl and os.geteuid() == 0 and str(FUSECTL) not in mount_table()
                    and _mount_fusectl())
    try:
        descriptor = os.open(abort_file, os.O_WRONLY)
        try:
            os.write(descriptor, b"1")
        finally:
            os.close(descriptor)
    except OSError as exc:
        if str(FUSECTL) not in mount_table():
            return f"{FUSECTL} is not mounted"
        return f"{abort_file}: {exc.strerror}"
    finally:
        if mounted_here:
            _libc().umount2(bytes(FUSECTL), 0)
    return None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _mount_fusectl() -> bool:
    return int(_libc().mount(b"fusectl", bytes(FUSECTL), b"fusectl", 0, None)) == 0


def set_read_ahead(mountpoint: str, kilobytes: int = READ_AHEAD_KB) -> bool:
    """Raise the kernel read-ahead of the FUSE mount at `mountpoint` (the default 128 KiB
    makes a sequential reader pay one round trip per 128 KiB). Only after FUSE INIT: the
    kernel sets it from the INIT reply. Needs root; False (default kept) otherwise."""
    device = mounted_device(mountpoint)
    if device is None:
        return False
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{kilobytes}\n")
    except OSError as exc:
        log.debug("keeping the default read-ahead of %s: %s", mountpoint, exc)
        return False
    return True


def tune_read_ahead(mountpoint: str, before: str | None, wait_s: float = MOUNT_WAIT_S,
                    ready: Callable[[], None] | None = None) -> None:
    """Once a mount other than `before` is there and answering (INIT done: the kernel
    sets the read-ahead from INIT's reply), set its read-ahead and call `ready`. Runs in
    a thread of the serving process (a background mount's parent sets the read-ahead too
    before it reports the mount ready)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        device = mounted_device(mountpoint)
        if device is not None and device != before and os.path.ismount(mountpoint):
            set_read_ahead(mountpoint)
            if ready is not None:
                ready()
            return
        time.sleep(READY_POLL_S)


def serve(vfs: RepositoryVFS, mountpoint: str, *, backend: str | None = None,
          kcache_timeout_s: float = DEFAULT_KCACHE_TIMEOUT_S,
          ready: Callable[[], None] | None = None, no_open: bool = True,
          cpus: AdaptiveCpus | None = None) -> None:
    """Mount `vfs` at `mountpoint` and serve requests until unmounted (blocks); `ready`
    is called (from another thread) once the mount is in place. `no_open`
    (PYCVMFS_NO_OPEN): the lowlevel backend lets the kernel open files without asking;
    `cpus` (PYCVMFS_CPU_POLICY=adaptive): it moves its threads between CPUs as that
    decides (the other backends leave them to the scheduler)."""
    name, adapter = load_backend(backend)
    threading.Thread(target=tune_read_ahead, args=(mountpoint, mounted_device(mountpoint)),
                     kwargs={"ready": ready}, daemon=True, name="read-ahead-tuning").start()
    fsname = f"cvmfs2#{vfs.repository.fqrn}"
    if name == "lowlevel":
        adapter.serve(vfs, mountpoint, fsname=fsname, entry_timeout=kcache_timeout_s,
                      no_open=no_open, cpus=cpus)
    elif name == "pyfuse3":
        adapter.serve(vfs, mountpoint, fsname=fsname, entry_timeout=kcache_timeout_s)
    else:
        adapter.serve(vfs, mountpoint, fsname=fsname,
                      options={"entry_timeout": kcache_timeout_s,
                               "attr_timeout": kcache_timeout_s, "nodev": True})


def check_fuse_usable(*, through_fusermount: bool = True) -> None:
    """Before mounting, the two things a mount needs from the node, as named errors instead
    of a failure deep inside libfuse: /dev/fuse open for reading and writing, and for an
    ordinary user `fusermount3` installed setuid root (libfuse mounts through it), unless
    not `through_fusermount` (in a user namespace of its own, libfuse mounts directly)."""
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR))
    except FileNotFoundError:
        raise ConfigError(f"{FUSE_DEVICE} does not exist: load the fuse kernel module "
                          "(modprobe fuse), or in a container pass the device in "
                          "(--device /dev/fuse)") from None
    except OSError as exc:
        try:
            mode = f"mode {stat.S_IMODE(os.stat(FUSE_DEVICE).st_mode):04o}"
        except OSError:
            mode = "mode unknown"
        raise ConfigError(f"{FUSE_DEVICE} cannot be opened for reading and writing by uid "
                          f"{os.geteuid()} ({exc.strerror}, {mode}): ask the administrator "
                          f"for `chmod 666 {FUSE_DEVICE}` (HPC nodes ship it 0666)") from None
    if os.geteuid() == 0 or not through_fusermount:
        return
    helper = shutil.which("fusermount3")
    if helper is None:
        raise ConfigError("fusermount3 is not installed: ordinary users mount through it "
                          "(install the fuse3 package)")
    info = os.stat(helper)
    if not (info.st_mode & stat.S_ISUID and info.st_uid == 0):
        raise ConfigError(f"{helper} is not setuid root: ordinary users mount through it "
                          f"(ask the administrator for `chown root {helper}; "
                          f"chmod u+s {helper}`)")


# -- who serves a mount, and taking it down ----------------------------------------------


class Health(enum.Enum):
    """What the serving process of a mount says about it (never the mount itself)."""

    SERVING = "serving"  # a serving process runs
    HUNG = "hung"  # every serving process is stopped (SIGSTOP, a debugger)
    DEAD = "dead"  # a pycvmfs/cvmfs2 mount whose serving process is gone
    UNKNOWN = "unknown"  # not a mount we can tell about (not FUSE, or another server)


@dataclass(frozen=True, slots=True)
class MountState:
    entry: MountEntry
    health: Health
    pids: tuple[int, ...]  # the serving processes found

    def describe(self) -> str:
        pids = ", ".join(str(pid) for pid in self.pids)
        if self.health is Health.UNKNOWN and not self.entry.is_fuse:
            return f"a {self.entry.fstype} file system"
        return {Health.SERVING: f"served by pid {pids}",
                Health.HUNG: f"hung mount: its serving process {pids} is stopped",
                Health.DEAD: "dead mount: its serving process is gone",
                Health.UNKNOWN: "no serving process found"}[self.health]


def inspect_mount(mountpoint: str | os.PathLike[str]) -> MountState | None:
    """The mount at `mountpoint` and the health of its serving process, read from
    /proc/self/mountinfo and /proc only; None if nothing is mounted there."""
    entry = mount_entry(mountpoint)
    if entry is None:
        return None
    if not entry.is_fuse:
        return MountState(entry, Health.UNKNOWN, ())
    pids = serving_processes(entry.mountpoint)
    if not pids:
        ours = entry.source.startswith("cvmfs2")  # pycvmfs and the reference client
        return MountState(entry, Health.DEAD if ours else Health.UNKNOWN, ())
    for sample in range(STOP_SAMPLES):
        if sample:
            time.sleep(STOP_SAMPLE_GAP_S)
        if not all(_process_state(pid) in ("T", "t") for pid in pids):
            return MountState(entry, Health.SERVING, tuple(pids))
    return MountState(entry, Health.HUNG, tuple(pids))


def serving_processes(mountpoint: str) -> list[int]:
    """Processes that hold /dev/fuse open and name `mountpoint` on their command line
    (relative to their working directory): how pycvmfs and cvmfs2 daemons are started.
    Only processes this user may inspect are seen (all of them for root). Reading /proc
    never waits on a mount; command lines are read only of /dev/fuse holders."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        if _holds_fuse_device(pid) and names_path(pid, mountpoint) \
                and _process_state(pid) not in (None, "Z", "X"):
            found.append(pid)
    return found


def _holds_fuse_device(pid: int) -> bool:
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") == FUSE_DEVICE:
                return True
        except OSError:
            continue
    return False


def names_path(pid: int, path: str) -> bool:
    """Whether process `pid`'s command line names `path` (relative to its directory)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            arguments = handle.read().split(b"\0")[1:]
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return any(os.path.normpath(os.path.join(cwd, os.fsdecode(argument))) == path
               for argument in arguments if argument)


def _process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, T, t, Z, ...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class _Attempt:
    """How one unmount call ended."""

    done: bool
    timed_out: bool = False
    message: str = ""

    @property
    def busy(self) -> bool:
        return os.strerror(errno.EBUSY) in self.message


# umount2 in a child process: a call that waits cannot hang the caller
_UMOUNT2 = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
if libc.umount2(os.fsencode(sys.argv[1]), int(sys.argv[2])) != 0:
    sys.exit(os.strerror(ctypes.get_errno()))
"""


def _unmount_call(mountpoint: str, *, lazy: bool, timeout_s: float) -> _Attempt:
    """One bounded unmount: umount2 as root (not util-linux `umount`, which stats the
    mount point to canonicalise it), `fusermount3 -u [-z]` for an ordinary user. A child
    that does not finish in time is killed and never waited for (a task stuck in the
    kernel cannot be reaped until it wakes)."""
    import subprocess  # an unmount's: not imported by every serving process (0.76 MB)

    if os.geteuid() == 0:
        flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
        command = [sys.executable, "-S", "-c", _UMOUNT2, mountpoint, str(flags)]
    else:
        helper = shutil.which("fusermount3") or shutil.which("fusermount")
        if helper is None:
            return _Attempt(False, message="fusermount3 is not installed (install fuse3)")
        command = [helper, "-u", *(["-z"] if lazy else []), mountpoint]
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True,
                             env={**os.environ, "LC_ALL": "C"})
    try:
        _, errors = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        return _Attempt(False, timed_out=True)
    return _Attempt(child.returncode == 0, message=errors.decode(errors="replace").strip())


def unmount(mountpoint: str | os.PathLike[str], *, force: bool = False,
            timeout_s: float = UNMOUNT_TIMEOUT_S) -> str:
    """Unmount `mountpoint` without touching it; what was done, in one line.

    A served mount is unmounted politely (refused while busy unless `force`); a mount
    whose serving process is stopped, or any mount with `force`, gets its FUSE connection
    aborted and is detached lazily, with no polite attempt first; a dead one (serving
    process gone) is unmounted, or detached if busy. A polite unmount that does not finish
    within `timeout_s` is treated as hung."""
    path = mount_point_path(mountpoint)
    state = inspect_mount(path)
    if state is None:
        raise ConfigError(f"{mountpoint} is not mounted (not in /proc/self/mountinfo)")
    _check_may_unmount(state.entry)
    if force or state.health is Health.HUNG:
        why = state.describe() if state.health is Health.HUNG else f"forced ({state.describe()})"
        return _detach(state, why, abort=True)
    attempt = _unmount_call(path, lazy=False, timeout_s=timeout_s)
    if attempt.done:
        suffix = "" if state.health is Health.SERVING else f" ({state.describe()})"
        return f"unmounted {path}{suffix}"
    if attempt.timed_out:
        return _detach(state, f"unmounting did not finish in {timeout_s:g} s (hung mount)",
                       abort=True)
    if attempt.busy and state.health is Health.DEAD:
        return _detach(state, f"{state.describe()}, and still in use", abort=False)
    if attempt.busy:
        raise ConfigError(f"{path} is busy (a process has a file, directory or working "
                          f"directory open in it): end those, or detach it now with "
                          f"`pycvmfs umount --force {path}`")
    raise ConfigError(f"cannot unmount {path}: {attempt.message or 'unknown reason'}")


def _check_may_unmount(entry: MountEntry) -> None:
    """Only FUSE mounts (not /proc, not a disk, even for root), and only the mounting
    user's unless root."""
    if not entry.is_fuse:
        raise ConfigError(f"{entry.mountpoint} is a {entry.fstype} file system, not a FUSE "
                          "mount: pycvmfs umount leaves it alone (use umount(8))")
    if os.geteuid() != 0 and entry.user_id is not None and entry.user_id != os.getuid():
        raise ConfigError(f"{entry.mountpoint} was mounted by uid {entry.user_id}: only that "
                          "user or root can unmount it")


def _detach(state: MountState, why: str, *, abort: bool) -> str:
    """Abort the FUSE connection (waiting requests fail instead of hanging), then detach
    the mount point lazily (what still uses the mount keeps it until it lets go)."""
    path = state.entry.mountpoint
    not_aborted = None
    if abort and state.entry.is_fuse:
        not_aborted = abort_connection(state.entry.device, mount_fusectl=True)
    attempt = _unmount_call(path, lazy=True, timeout_s=UNMOUNT_TIMEOUT_S)
    if not attempt.done:
        reason = ("the lazy unmount did not finish in time" if attempt.timed_out
                  else attempt.message or "unknown reason")
        raise ConfigError(f"cannot detach {path} ({why}): {reason}")
    done = "FUSE connection aborted, detached" if abort and not_aborted is None else "detached"
    line = f"{path}: {why}: {done}"
    if state.health is Health.HUNG:
        pids = " ".join(str(pid) for pid in state.pids)
        line += f"; the serving process exits once continued (kill -CONT {pids}) or killed"
    if not_aborted is not None:
        line += (f"; FUSE connection not aborted ({not_aborted}): processes waiting in the "
                 "mount stay blocked until its serving process goes on or ends")
    return line


def main(argv: list[str] | None = None) -> int:
    """Mount a storage directory or URL directly, without configuration or cache (tests,
    publishers checking their output): `python -m pycvmfs.fs.mount REPO_URL_OR_STORAGE
    MOUNTPOINT --fqrn NAME --keys K [--tag T] [--backend B]`, in the foreground."""
    import argparse

    from pycvmfs.fs.vfs import RepositoryVFS
    from pycvmfs.repository.open import RevisionSelector, open_repository
    from pycvmfs.repository.source import open_source
    from pycvmfs.repository.trust import load_public_keys

    parser = argparse.ArgumentParser(prog="python -m pycvmfs.fs.mount")
    parser.add_argument("repo")
    parser.add_argument("mountpoint")
    parser.add_argument("--keys", action="append", type=Path, required=True)
    parser.add_argument("--fqrn", required=True)
    parser.add_argument("--tag")
    parser.add_argument("--backend")
    args = parser.parse_args(argv)
    source = open_source(args.repo)
    with open_repository(source, args.fqrn, load_public_keys(args.keys),
                         RevisionSelector.of(tag=args.tag)) as repo:
        serve(RepositoryVFS(repo), args.mountpoint, backend=args.backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
