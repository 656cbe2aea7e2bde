"""The lowlevel adapter's session lifecycle: create the libfuse session, mount, serve with
libfuse's worker threads until unmounted or signalled, and always unmount and destroy it;
plus the kernel notifications, which may only be sent while that session is mounted.

Signals: SIGINT/SIGTERM/SIGHUP end the session loop through libfuse's own handlers
(Python's SIGINT handler could not run while the main thread waits inside libfuse).
Teardown: a notification waits for requests on the same inodes; if one is still stuck
when the loop has ended (no thread answers any more), the kernel connection is aborted
so that it returns and the session can be destroyed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from pycvmfs.fs._libfuse3 import FuseArgs, Libfuse3, LowlevelOps

log = logging.getLogger(__name__)
NOTIFY_WAIT_S = 5.0  # at unmount, a notification taking longer is stuck: abort


class Notifier:
    """`notify_inval_inode`/`notify_inval_entry` while the session is mounted: one at a
    time, none once it is closing, so a session is never destroyed under one."""

    def __init__(self, lib: Libfuse3) -> None:
        self._fuse = lib.cdll
        self.session: int | None = None  # struct fuse_session *, while notifications work
        self.closing = False
        self.lock = threading.Lock()

    def inval_inode(self, ino: int, attributes_only: bool) -> None:
        with self.lock:  # per call: unmounting never waits for a whole pass
            if not self.closing and self.session is not None:
                # ENOENT: the kernel had forgotten it; other errors: nothing to drop;
                # a negative offset drops the attributes only (the pages stay)
                self._fuse.fuse_lowlevel_notify_inval_inode(self.session, ino,
                                                            -1 if attributes_only else 0, 0)

    def inval_entry(self, parent: int, name: bytes) -> None:
        with self.lock:
            if not self.closing and self.session is not None:
                self._fuse.fuse_lowlevel_notify_inval_entry(self.session, parent, name,
                                                            len(name))


def mount_options(fsname: str) -> str:
    """As the pyfuse3 adapter mounts: fsname, ro, nodev, no default_permissions."""
    escaped = fsname.replace("\\", "\\\\").replace(",", "\\,")
    return f"fsname={escaped},ro,nodev"


def _abort_connection(mountpoint: str) -> None:
    """Abort the kernel connection of `mountpoint` (unblocks a notification waiting for
    requests no thread will answer any more), via /sys/fs/fuse/connections."""
    from pycvmfs.fs.mount import abort_connection, mounted_device  # imports adapters lazily

    device = mounted_device(mountpoint)
    if device is not None:
        not_aborted = abort_connection(device)
        if not_aborted is not None:
            log.warning("cannot abort the FUSE connection of %s: %s", mountpoint, not_aborted)


class _SignalsToLibfuse:
    """SIGINT/SIGTERM/SIGHUP end the session loop (module docstring)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, lib: Libfuse3, session: int) -> None:
        self._fuse = lib.cdll
        self.session = session
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:  # libfuse only replaces default handlers
                self.saved[signum] = signal.signal(signum, signal.SIG_DFL)
        if self._fuse.fuse_set_signal_handlers(self.session) != 0:
            log.warning("cannot install signal handlers: Ctrl-C will not unmount")

    def __exit__(self, *exc: object) -> None:
        self._fuse.fuse_remove_signal_handlers(self.session)
        for signum, handler in self.saved.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def run_session(lib: Libfuse3, ops: LowlevelOps, notifier: Notifier, mountpoint: str, *,
                fsname: str, threads: int, stop: Callable[[], None]) -> None:
    """Mount and serve with `threads` libfuse workers until unmounted or signalled
    (blocks). Afterwards `stop()` (no handler may reply once it returns), then the session
    is unmounted and destroyed, whatever happened."""
    fuse = lib.cdll
    argv_list = [b"pycvmfs", b"-o", mount_options(fsname).encode("utf-8", "surrogateescape")]
    argv = (ctypes.c_char_p * (len(argv_list) + 1))(*argv_list, None)
    args = FuseArgs(argc=len(argv_list), argv=argv, allocated=0)
    session = lib.session_new(args, ops)
    fuse.fuse_opt_free_args(ctypes.byref(args))  # what option parsing left (never our argv)
    if not session:
        raise OSError(errno.EINVAL, "fuse_session_new failed (see the message above)")
    mounted = False
    try:
        with _SignalsToLibfuse(lib, session):
            if fuse.fuse_session_mount(session, os.fsencode(mountpoint)) != 0:
                raise OSError(errno.EIO, f"cannot mount {mountpoint} (see the message above)")
            mounted = True
            notifier.session = session
            result = lib.loop(session, threads)
            if result < 0:
                log.error("FUSE session loop ended: %s", os.strerror(-result))
            elif result > 0:
                log.info("FUSE session loop ended by signal %d", result)
    finally:
        notifier.closing = True
        stop()
        if not notifier.lock.acquire(timeout=NOTIFY_WAIT_S):  # a notification is stuck
            _abort_connection(mountpoint)
            notifier.lock.acquire()
        try:
            notifier.session = None
            if mounted:
                fuse.fuse_session_unmount(session)
            fuse.fuse_session_destroy(session)
        finally:
            notifier.lock.release()
