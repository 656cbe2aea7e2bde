"""Find the pycvmfs mounts of this machine and read what each says about itself.

Mounts come from /proc/self/mountinfo (`fs.mount.mount_table`: reading it never
touches a mount); each answers the stats document (`fs.stats_document`) on its root as
the hidden xattr `user.pycvmfs_stats`. A mount whose serving process is stopped never
answers, so each read runs in a daemon thread and is given up after a time limit (the
mount is then reported as not answering; the thread stays parked in the kernel until
the mount answers or the process ends). At most one read per mount point is in flight:
a long-running `metrics --listen` never piles up threads on a hung mount.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycvmfs.errors import ConfigError
from pycvmfs.fs.mount import MountEntry, mount_entry, mount_table
from pycvmfs.fs.stats_document import FORMAT, STATS_XATTR

READ_TIMEOUT_S = 3.0  # a mount that takes longer is reported as not answering
SOURCE_PREFIX = "cvmfs2#"  # pycvmfs mounts (and the reference's) name cvmfs2#FQRN
ALLOW_SYS_ADMIN = Path("/sys/module/fuse/parameters/allow_sys_admin_access")

_inflight: dict[str, threading.Thread] = {}  # mount point -> its read still waiting
_inflight_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class MountReport:
    """One mount: its document, or why there is none (`problem`)."""

    mountpoint: str
    fqrn: str
    document: dict[str, Any] | None
    problem: str | None = None
    foreign: bool = False  # a CernVM-FS mount that pycvmfs does not serve

    @property
    def answering(self) -> bool:
        return self.document is not None


def candidate_mounts() -> list[MountEntry]:
    """FUSE mounts whose source says cvmfs2#FQRN, in mount table order. Without root
    only the user's own mounts (and those mounted with allow_other) can answer."""
    found = []
    for fields in mount_table().values():
        try:
            entry = MountEntry.from_fields(fields)
        except (ValueError, IndexError):
            continue
        if entry.is_fuse and entry.source.startswith(SOURCE_PREFIX):
            found.append(entry)
    return found


def _visible(entry: MountEntry) -> bool:
    """Whether this user may ask the mount at all: FUSE refuses other users' mounts,
    root's requests included, unless mounted with allow_other (or, for root, the fuse
    module's allow_sys_admin_access, Linux 6.2 and later)."""
    uid = os.getuid()
    if entry.user_id in (None, uid) or "allow_other" in entry.super_options:
        return True
    try:
        return uid == 0 and ALLOW_SYS_ADMIN.read_text().strip() == "Y"
    except OSError:
        return False


def _read(mountpoint: str, result: dict[str, Any]) -> None:
    try:
        result["value"] = os.getxattr(mountpoint, STATS_XATTR)
    except OSError as exc:
        result["error"] = exc


def read_document(entry: MountEntry, timeout_s: float = READ_TIMEOUT_S, *,
                  wait_s: float | None = None) -> MountReport:
    """The mount's stats document, or a report saying why it gave none; waits
    `timeout_s` (or what is left of it, `wait_s`)."""
    fqrn = entry.source.removeprefix(SOURCE_PREFIX)
    where = entry.mountpoint
    result: dict[str, Any] = {}
    with _inflight_lock:
        waiting = _inflight.get(where)
        if waiting is not None and waiting.is_alive():
            return MountReport(where, fqrn, None, "not answering (an earlier request "
                               "is still waiting)")
        reader = threading.Thread(target=_read, args=(where, result), daemon=True,
                                  name=f"stats-read {where}")
        _inflight[where] = reader
        reader.start()
    reader.join(timeout_s if wait_s is None else wait_s)
    if reader.is_alive():
        return MountReport(where, fqrn, None, f"not answering within {timeout_s:g} s "
                           f"(hung? see `pycvmfs umount --force {where}`)")
    with _inflight_lock:
        if _inflight.get(where) is reader:
            del _inflight[where]
    return _report(where, fqrn, result)


def _report(where: str, fqrn: str, result: dict[str, Any]) -> MountReport:
    error: OSError | None = result.get("error")
    if error is not None and error.errno in (errno.ENODATA, errno.ENOTSUP):
        return MountReport(where, fqrn, None, "not served by pycvmfs (no stats attribute)",
                           foreign=True)
    if error is not None:
        problem = {errno.ENOTCONN: "dead mount: its serving process is gone (pycvmfs "
                                   f"umount {where})",
                   errno.EACCES: "permission denied (mounted by another user)",
                   errno.EPERM: "permission denied (mounted by another user)"
                   }.get(error.errno or 0, f"cannot read its stats: {error.strerror}")
        return MountReport(where, fqrn, None, problem)
    try:
        document = json.loads(result["value"])
    except (ValueError, UnicodeDecodeError):
        return MountReport(where, fqrn, None, "its stats attribute is not a JSON document")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return MountReport(where, fqrn, None, "its stats document has another format "
                           "(a different pycvmfs version serves it)")
    return MountReport(where, fqrn, document)


def survey(mountpoints: list[str] | None = None, *,
           timeout_s: float = READ_TIMEOUT_S) -> list[MountReport]:
    """Reports of the given mount points, else of every pycvmfs mount this user can ask
    (other users' mounts and reference `cvmfs2` mounts left out). Mounts are read in
    parallel, all within about `timeout_s`."""
    if mountpoints:
        entries = []
        for path in mountpoints:
            entry = mount_entry(path)
            if entry is None:
                raise ConfigError(f"{path} is not a mount point (not in /proc/self/mountinfo)"
                                  "; give a pycvmfs mount point, or none for all")
            if not (entry.is_fuse and entry.source.startswith(SOURCE_PREFIX)):
                raise ConfigError(f"{path} is not a CernVM-FS mount ({entry.fstype}, "
                                  f"{entry.source}); give a pycvmfs mount point")
            entries.append(entry)
    else:
        entries = [e for e in candidate_mounts() if _visible(e)]
    reports: list[MountReport | None] = [None] * len(entries)
    deadline = time.monotonic() + timeout_s

    def run(index: int, entry: MountEntry) -> None:
        reports[index] = read_document(entry, timeout_s,
                                       wait_s=max(deadline - time.monotonic(), 0.05))

    workers = [threading.Thread(target=run, args=(i, e), daemon=True)
               for i, e in enumerate(entries)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()  # each returns within its time limit
    done = [r for r in reports if r is not None]
    if mountpoints:
        return done
    return [r for r in done if not r.foreign]
