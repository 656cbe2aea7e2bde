"""A private view of the host with `/cvmfs` in it, for `pycvmfs exec`: no root needed.

The technique cvmfsexec uses (cvmfs-contrib/cvmfsexec): an ordinary user unshares a user
and a mount namespace, maps its own uid and gid into it (so the command it runs sees the
same ids, and files keep showing the user as owner), makes every mount private, then
builds a new root: a tmpfs in which each top-level entry of the host is bind-mounted
(recursively, so /proc, /dev, /home and their submounts stay as they are), except
`/cvmfs`, which is a fresh directory (the host's, if any, is hidden). It pivots into that
root; FUSE mounts at `/cvmfs/<fqrn>` are then allowed by the kernel (Linux >= 4.18) to any
process of the namespace that still holds its capabilities there (the forked serving
processes; the command, started with execve as a non-root uid, drops them). The mounts
exist only in the namespace: they are gone from everywhere once its last process ends.
Root needs no user namespace (a mount namespace is enough).

Where the node refuses user namespaces, `refusal()` names the sysctl to ask for; the
sysctls are read below `PYCVMFS_PROC_SYS` (default /proc/sys), which tests point at a
directory of their own to see the refusal path without changing the node.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ConfigError

CLONE_NEWNS = 0x00020000  # <sched.h>
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2  # <sys/mount.h>
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
PROC_SYS_VARIABLE = "PYCVMFS_PROC_SYS"
CVMFS = "cvmfs"
ROOT_PREFIX = "pycvmfs-exec-"


@dataclass(frozen=True, slots=True)
class Sysctl:
    """A setting that turns unprivileged user namespaces off when it has `off`."""

    name: str  # as sysctl(8) spells it
    off: str
    on: str

    def path(self, proc_sys: Path) -> Path:
        return proc_sys / self.name.replace(".", "/")


SYSCTLS = (
    Sysctl("kernel.unprivileged_userns_clone", "0", "1"),  # Debian, older Ubuntu
    Sysctl("user.max_user_namespaces", "0", "15000"),  # RHEL 7 and others
    Sysctl("kernel.apparmor_restrict_unprivileged_userns", "1", "0"),  # Ubuntu >= 23.10
)


def id_map_line(inside: int, outside: int) -> str:
    """One line of /proc/PID/uid_map or gid_map: `inside` is `outside` on the host (the
    only mapping an unprivileged process may write: its own id, one id wide)."""
    return f"{inside} {outside} 1\n"


def proc_sys() -> Path:
    return Path(os.environ.get(PROC_SYS_VARIABLE) or "/proc/sys")


def refusal(root: Path | None = None) -> str | None:
    """Why this node refuses unprivileged user namespaces, naming the sysctl to ask the
    administrator for; None when no such setting says no."""
    base = root if root is not None else proc_sys()
    for sysctl in SYSCTLS:
        try:
            value = sysctl.path(base).read_text().strip()
        except OSError:
            continue  # the kernel does not have this setting
        if value == sysctl.off:
            return (f"user namespaces are disabled on this node ({sysctl.name}={value}): ask "
                    f"the administrator for `sysctl {sysctl.name}={sysctl.on}`")
    return None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(_libc().mount(source.encode() if source else None, os.fsencode(target),
                         fstype.encode() if fstype else None, flags,
                         data.encode() if data else None), f"mount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc().prctl(option, value, 0, 0, 0), f"prctl {option}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


CAPABILITY_VERSION_3 = 0x20080522  # <linux/capability.h>: two 32-bit words per set


def drop_capabilities() -> None:
    """Empty every capability set of the calling thread (capabilities are per thread)."""
    header = _CapHeader(CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def detach(target: str) -> bool:
    """Lazy unmount of `target`; whether it was done."""
    return int(_libc().umount2(os.fsencode(target), MNT_DETACH)) == 0


def unshare(flags: int) -> None:
    """unshare(2) (os.unshare only exists from Python 3.12)."""
    _check(_libc().unshare(flags), "unshare")


def enter(*, as_root: bool) -> None:
    """Move this process (which must run no other thread) into new namespaces: a mount
    namespace, and for an ordinary user a user namespace mapping its own uid and gid
    (setgroups denied, as an unprivileged mapping requires). Every mount is made private,
    so nothing done here reaches the host. OSError if the kernel refuses."""
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWNS if as_root else CLONE_NEWUSER | CLONE_NEWNS)
    if not as_root:
        Path("/proc/self/setgroups").write_text("deny\n")
        Path("/proc/self/uid_map").write_text(id_map_line(uid, uid))
        Path("/proc/self/gid_map").write_text(id_map_line(gid, gid))
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _pivot_root(new_root: str) -> None:
    """pivot_root(".", ".") from inside `new_root`: the old root ends up stacked on it,
    and is detached at once."""
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise ConfigError(f"pycvmfs exec does not know pivot_root on {platform.machine()}")
    libc = _libc()
    os.chdir(new_root)
    _check(libc.syscall(number, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")


def _bind_entry(name: str, new_root: str) -> None:
    """Host `/name` at `new_root/name`: symlinks copied, directories and files bound."""
    source, target = f"/{name}", os.path.join(new_root, name)
    info = os.lstat(source)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), target)
        return
    if stat.S_ISDIR(info.st_mode):
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(source, target, None, MS_BIND | MS_REC)


def private_root() -> None:
    """Pivot into a root that is the host's with an empty `/cvmfs` (see the module
    docstring); the working directory is kept when it still exists. The scratch
    directory the new root was built on is removed from the host at once."""
    import tempfile  # not imported by every mount (0.65 MB resident)

    cwd = os.getcwd()
    new_root = tempfile.mkdtemp(prefix=ROOT_PREFIX)
    try:
        _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for name in sorted(os.listdir("/")):
            if name != CVMFS:
                _bind_entry(name, new_root)
        os.mkdir(os.path.join(new_root, CVMFS), 0o755)
        _pivot_root(new_root)
    finally:
        # the bind of the host's /tmp (or wherever it was) holds a copy of the new root
        # at the same path: detach it, then the host's empty directory can go
        detach(new_root)
        with contextlib.suppress(OSError):
            os.rmdir(new_root)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir(os.path.expanduser("~") if os.path.isdir(os.path.expanduser("~")) else "/")


def explain(exc: OSError) -> str:
    """One line for a namespace the kernel refused after the sysctls said yes."""
    if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOSPC, errno.EINVAL, errno.ENOSYS):
        return (f"the kernel refused a user namespace ({exc.strerror}): ask the administrator "
                "to allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
                "kernel.unprivileged_userns_clone or "
                "kernel.apparmor_restrict_unprivileged_userns; a container needs seccomp "
                "and AppArmor profiles that permit unshare)")
    return f"cannot create the namespace: {exc.strerror}"
