"""The user-namespace probe `pycvmfs doctor` runs in a child process: can this user make a
user + mount namespace and mount FUSE inside it, as `pycvmfs exec` needs?

`python -m pycvmfs.doctor.probe` (single-threaded, so `unshare(CLONE_NEWUSER)` is allowed):
1. unshare(CLONE_NEWUSER | CLONE_NEWNS), map this user to root inside (`setgroups deny`,
   one-line uid and gid maps), make every mount private;
2. open /dev/fuse read-write (still checked against the real uid and mode);
3. mount an empty FUSE file system on a fresh temporary directory (the kernel accepts FUSE
   in a user namespace since Linux 4.18) and read the kernel's INIT request, which says the
   FUSE protocol version and what the kernel offers (splice, passthrough), waiting at most
   `INIT_WAIT_S`;
4. detach the mount, close the device (the connection ends), remove the directory; the
   namespaces end with the process, so nothing is left on the host.
It prints one JSON object (`ProbeReport` fields) and always exits 0; the parent bounds it
in time. The INIT parsing is pure (`parse_init`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import select
import shutil
import struct
import sys
import tempfile
from dataclasses import asdict, dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2
FUSE_DEVICE = "/dev/fuse"
FUSE_INIT = 26
INIT_WAIT_S = 2.0
READ_BYTES = 1 << 17  # /dev/fuse refuses reads smaller than 8 KiB
IN_HEADER = struct.Struct("<IIQQIIIHH")  # struct fuse_in_header (40 bytes)
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags
FLAGS2 = struct.Struct("<I")  # flags2 (protocol 7.36 and later, with FUSE_INIT_EXT)
FUSE_SPLICE_WRITE, FUSE_SPLICE_MOVE, FUSE_SPLICE_READ = 1 << 7, 1 << 8, 1 << 9
FUSE_INIT_EXT = 1 << 30
FUSE_PASSTHROUGH_FLAGS2 = 1 << (37 - 32)


@dataclass(frozen=True, slots=True)
class KernelInit:
    """What the kernel's FUSE INIT request offers."""

    major: int
    minor: int
    splice: bool  # read replies may be spliced (FUSE_SPLICE_WRITE/READ)
    passthrough: bool  # FUSE_PASSTHROUGH (Linux 6.9+, built with CONFIG_FUSE_PASSTHROUGH)

    @property
    def protocol(self) -> str:
        return f"{self.major}.{self.minor}"


def parse_init(data: bytes) -> KernelInit | None:
    """The INIT request read from /dev/fuse; None if `data` is not one."""
    if len(data) < IN_HEADER.size + INIT_IN.size:
        return None
    length, opcode, *_ = IN_HEADER.unpack_from(data)
    if opcode != FUSE_INIT or length > len(data):
        return None
    major, minor, _readahead, flags = INIT_IN.unpack_from(data, IN_HEADER.size)
    flags2 = 0
    end = IN_HEADER.size + INIT_IN.size
    if flags & FUSE_INIT_EXT and len(data) >= end + FLAGS2.size:
        (flags2,) = FLAGS2.unpack_from(data, end)
    splice = bool(flags & (FUSE_SPLICE_WRITE | FUSE_SPLICE_READ))
    return KernelInit(major, minor, splice, bool(flags2 & FUSE_PASSTHROUGH_FLAGS2))


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """Each step's outcome: "" (worked), "skipped", or the error text."""

    unshare: str = "skipped"
    uid_map: str = "skipped"
    fuse_open: str = "skipped"
    fuse_mount: str = "skipped"
    protocol: str = ""  # "7.41" when the INIT request was read
    splice: bool = False
    passthrough: bool = False

    @property
    def namespaces(self) -> bool:
        return self.unshare == "" and self.uid_map == ""

    @property
    def exec_possible(self) -> bool:
        return self.namespaces and self.fuse_open == "" and self.fuse_mount == ""

    @classmethod
    def from_json(cls, text: str) -> ProbeReport:
        fields = json.loads(text)
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


def _error(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def call(self, name: str, *args: object) -> str:
        """"" when the call worked, else its errno as text."""
        if getattr(self.lib, name)(*args) == 0:
            return ""
        return _error(ctypes.get_errno())


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _map_user(uid: int, gid: int) -> str:
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror}"
    return ""


def _read_init(fd: int) -> KernelInit | None:
    ready, _, _ = select.select([fd], [], [], INIT_WAIT_S)
    if not ready:
        return None
    try:
        return parse_init(os.read(fd, READ_BYTES))
    except OSError:
        return None


def _mount_fuse(libc: _Libc, fd: int, report: dict[str, object]) -> None:
    try:
        directory = tempfile.mkdtemp(prefix="pycvmfs-doctor-")
    except OSError as exc:
        report["fuse_mount"] = f"no temporary directory to mount on: {exc.strerror}"
        return
    try:
        options = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
        report["fuse_mount"] = libc.call("mount", b"pycvmfs-doctor", directory.encode(),
                                         b"fuse", MS_RDONLY | MS_NOSUID | MS_NODEV, options)
        if report["fuse_mount"] != "":
            return
        init = _read_init(fd)
        if init is not None:
            report.update(protocol=init.protocol, splice=init.splice,
                          passthrough=init.passthrough)
        libc.call("umount2", directory.encode(), MNT_DETACH)  # nobody answers: detach
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run() -> ProbeReport:
    """The steps of the module docstring, each only if the one before worked."""
    report: dict[str, object] = {}
    libc = _Libc()
    uid, gid = os.geteuid(), os.getegid()
    report["unshare"] = libc.call("unshare", CLONE_NEWUSER | CLONE_NEWNS)
    if report["unshare"] == "":
        report["uid_map"] = _map_user(uid, gid)
    if report.get("uid_map") == "":
        private = libc.call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
        if private:
            report["uid_map"] = f"making mounts private: {private}"
    if report.get("uid_map") == "":
        try:
            fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            report["fuse_open"] = f"{FUSE_DEVICE}: {exc.strerror}"
        else:
            report["fuse_open"] = ""
            try:
                _mount_fuse(libc, fd, report)
            finally:
                os.close(fd)
    return ProbeReport(**report)  # type: ignore[arg-type]


if __name__ == "__main__":
    print(json.dumps(asdict(run())))
    sys.exit(0)
