"""Mount lifecycle, once for all adapters: choose the backend, serve, unmount.

`PYCVMFS_FUSE=lowlevel,pyfuse3,mfusepy` (the default order) picks the first binding that
imports; the reasons others failed are kept for error messages. `lowlevel` is libfuse3's
low-level API through ctypes (no build step; refuses libfuse versions it has no layouts
for): first because only it lets the kernel cache directory listings and symlinks (a warm
walk of 20,000 entries 1.0x local disk against 4x with pyfuse3, bench/client.py).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pycvmfs.errors import ConfigError

if TYPE_CHECKING:  # `pycvmfs umount` needs none of the filesystem core
    from pycvmfs.fs.vfs import RepositoryVFS

log = logging.getLogger(__name__)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes ' ' as \040
BACKENDS = ("lowlevel", "pyfuse3", "mfusepy")
DEFAULT_KCACHE_TIMEOUT_S = 60.0  # CVMFS_KCACHE_TIMEOUT default
READ_AHEAD_KB = 4096  # kernel read-ahead of the mount: 1 MiB requests, several in flight
MOUNT_WAIT_S = 30.0


def load_backend(preference: str | None = None) -> tuple[str, ModuleType]:
    """The adapter module of the first importable binding in the preference list."""
    order = (preference or os.environ.get("PYCVMFS_FUSE") or ",".join(BACKENDS)).split(",")
    reasons = []
    for name in (n.strip() for n in order if n.strip()):
        if name not in BACKENDS:
            raise ConfigError(f"unknown FUSE backend {name!r} (choose from {', '.join(BACKENDS)})")
        try:
            return name, importlib.import_module(f"pycvmfs.fs.adapter_{name}")
        except Exception as exc:  # mfusepy raises OSError when libfuse is missing
            reasons.append(f"{name}: {exc}")
    raise ConfigError("no usable FUSE binding: " + "; ".join(reasons))


def mount_table() -> dict[str, list[str]]:
    """Mount point -> its /proc/self/mountinfo fields (the last mount on a point wins);
    octal escapes in paths decoded. Reading it never touches a mount."""
    table: dict[str, list[str]] = {}
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                fields = line.split()
                table[_OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])] = fields
    except OSError:
        pass
    return table


def mounted_device(mountpoint: str) -> str | None:
    """`major:minor` of the filesystem mounted at `mountpoint` (never touches the mount
    itself: its own server may not be answering yet)."""
    fields = mount_table().get(os.path.abspath(mountpoint))
    return fields[2] if fields is not None else None


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


def tune_read_ahead(mountpoint: str, before: str | None, wait_s: float = MOUNT_WAIT_S) -> None:
    """Once a mount other than `before` is there and answering (INIT done), set its
    read-ahead. Runs in a thread of the serving process (`pycvmfs mount --foreground`; a
    background mount's parent sets it too before it reports the mount ready)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        device = mounted_device(mountpoint)
        if device is not None and device != before and os.path.ismount(mountpoint):
            set_read_ahead(mountpoint)
            return
        time.sleep(0.02)


def serve(vfs: RepositoryVFS, mountpoint: str, *, backend: str | None = None,
          kcache_timeout_s: float = DEFAULT_KCACHE_TIMEOUT_S) -> None:
    """Mount `vfs` at `mountpoint` and serve requests until unmounted (blocks)."""
    name, adapter = load_backend(backend)
    threading.Thread(target=tune_read_ahead, args=(mountpoint, mounted_device(mountpoint)),
                     daemon=True, name="read-ahead-tuning").start()
    fsname = f"cvmfs2#{vfs.repository.fqrn}"
    if name in ("pyfuse3", "lowlevel"):
        adapter.serve(vfs, mountpoint, fsname=fsname, entry_timeout=kcache_timeout_s)
    else:
        adapter.serve(vfs, mountpoint, fsname=fsname,
                      options={"entry_timeout": kcache_timeout_s,
                               "attr_timeout": kcache_timeout_s, "nodev": True})


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """`fusermount3 -u` (works for ordinary users), falling back to umount as root."""
    for command in (["fusermount3", "-u"] + (["-z"] if lazy else []),
                    ["fusermount", "-u"] + (["-z"] if lazy else []),
                    ["umount"] + (["-l"] if lazy else [])):
        try:
            result = subprocess.run([*command, mountpoint], capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if result.returncode == 0:
            return
    raise ConfigError(f"cannot unmount {mountpoint}")


def main(argv: list[str] | None = None) -> int:
    """Mount a storage directory or URL directly, without configuration or cache (tests,
    publishers checking their output): `python -m pycvmfs.fs.mount REPO_URL_OR_STORAGE
    MOUNTPOINT --fqrn NAME --keys K [--tag T] [--backend B]`, in the foreground."""
    import argparse

    from pycvmfs.fs.vfs import RepositoryVFS
    from pycvmfs.repository.repository import Repository
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
    with Repository.open(source, args.fqrn, load_public_keys(args.keys), tag=args.tag) as repo:
        serve(RepositoryVFS(repo), args.mountpoint, backend=args.backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
