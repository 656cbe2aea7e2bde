"""libfuse3 low-level adapter through ctypes: inode-based, multi-threaded, no compiler.

Binds the runtime libfuse3 directly (`_libfuse3`: the ABI, which library, which versions;
`lowlevel_session`: mount, signals, unmount), so it is also the inode-based backend for
hosts that have libfuse3 but cannot build pyfuse3. Nothing is loaded at import (`probe`,
`serve` load it; handlers get it from their constructor). Requests are served by
libfuse's own worker threads (WORKER_THREADS of them); each callback takes the GIL and
answers inline what needs no download: metadata from attached catalogs (`vfs.inline()`)
and reads already in the page cache (`vfs.read_nowait`). Whatever has to wait for the
network is answered from a pool of BLOCKING_THREADS (libfuse allows replying from any
thread), so slow downloads never hold the few libfuse workers. Few on purpose: every
thread in Python fights for the GIL; with 16 workers a page-cache-hot read ran at half
the speed.

What it adds over the pyfuse3 adapter (pyfuse3 3.5 exposes neither):
  * directory listings cached by the kernel: OPENDIR opens a VFS directory handle (one
    revision from opendir to closedir, read page by page, `vfs.readdir`) and asks for
    FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, so later opens are answered from the kernel's
    listing cache — except in the drain window after a revision change, when handles
    get no cache flag: they neither read nor fill the kernel's cache.
  * FUSE_CAP_CACHE_SYMLINKS: the kernel keeps symlink targets (no READLINK round trips).
  * FUSE no-open (FUSE_CAP_NO_OPEN_SUPPORT, `no_open`, PYCVMFS_NO_OPEN): the first OPEN
    answers ENOSYS, which the kernel takes as success and as "open alone from now on",
    keeping the page cache (FOPEN_KEEP_CACHE) and sending no RELEASE: a file costs a
    LOOKUP and its READs. READs then carry handle 0 and the inode, which the VFS reads
    through the inode's own file (`vfs.read_unopened`). The catalog's direct-I/O flag
    cannot be passed on any more (the kernel asks nothing per file).
  * FORGET/BATCH_FORGET go to `vfs.forget`, so the inode tables shrink as the kernel
    evicts inodes (the VFS counts every LOOKUP and READDIRPLUS entry it hands out, before
    the reply is sent, and takes back what did not fit: `kernel_cache.HandOut`). A plain
    READDIR hands nothing out: its d_ino is the number a LOOKUP would answer.

CPUs (`cpu_policy.AdaptiveCpus`, PYCVMFS_CPU_POLICY=adaptive): every request's Python
code, on a libfuse worker or in the pool, is counted (`enter`/`leave`, with the thread
that sent it: `Libfuse3.caller`), except READs past a file's start (`_counts`: their
work is mostly outside Python and gains from more CPUs); from that, the threads are kept
on one CPU while requests come in parallel and on all of them while they come one at a
time.

Kernel caches (`kernel_cache.KernelCache`, shared with the pyfuse3 adapter): entries,
attributes and negative lookups are cached for the `entry_timeout` the VFS hands out, the
page cache across opens unless the catalog asks for direct I/O; a revision change drops
what changed, and listings answered in the drain window once more after it (REDRAIN_S).

Errors: a handler replies `errno_of(exc)` for whatever a VFS call raised; only exceptions
that are not FsError, PycvmfsError or OSError (bugs) are logged with their traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pycvmfs.errors import PycvmfsError
from pycvmfs.fs import _libfuse3
from pycvmfs.fs._libfuse3 import (
    FI_DIRECT_IO,
    FI_KEEP_CACHE,
    FileInfoPointer,
    Libfuse3,
    pack_entry,
    pack_stat,
)
from pycvmfs.fs.cpu_policy import AdaptiveCpus
from pycvmfs.fs.errors import errno_of
from pycvmfs.fs.kernel_cache import HandOut, KernelCache
from pycvmfs.fs.lowlevel_session import Notifier, run_session
from pycvmfs.fs.vfs import Attr, FsError, RepositoryVFS, WouldBlock

log = logging.getLogger(__name__)

WORKER_THREADS = 4  # libfuse's workers answer what needs no waiting (see the docstring)
BLOCKING_THREADS = 16  # reads that wait for a download run here and reply from here
REDRAIN_S = 2.5  # after a swap, listings answered meanwhile are invalidated again
UNGUARDED = ("init", "forget", "forget_multi")  # no reply / always reply none: no _guarded
EXPECTED = (FsError, PycvmfsError, OSError)  # anything else a VFS call raises is a bug


def probe() -> None:
    """Raise ImportError (`UnsupportedLibfuseError`) if this host's libfuse3 cannot be
    served with (`mount.load_backend` then tries the next backend)."""
    _libfuse3.load()


def _anyone(req: int) -> int:
    return 0


class _Unmeasured:
    """Where no `AdaptiveCpus` decides: requests are not counted."""

    def enter(self, caller: int = 0) -> None:
        pass

    resume = leave = start = stop = enter


_worker = threading.local()  # per libfuse worker: `kept` once its thread state is kept


def _keeping_thread_state(handler: Callable[..., None]) -> Callable[..., None]:
    """`handler` for a ctypes callback that keeps its worker thread's Python thread state.
    A callback on a thread Python did not start gets a thread state made for the call and
    destroyed after it (an mmap, munmap and gettid per request, and a cold thread-local
    world); one extra `PyGILState_Ensure`, never released, makes it last as long as the
    worker, which libfuse 3.12+ keeps for the whole session (`Libfuse3.workers_persist`)."""

    def kept(*args: Any) -> None:
        if not hasattr(_worker, "kept"):
            _keep_gil_state()
            _worker.kept = True
        handler(*args)

    return kept


def _keep_gil_state() -> None:
    ensure = ctypes.pythonapi.PyGILState_Ensure
    ensure.restype, ensure.argtypes = ctypes.c_int, []
    ensure()


class LowlevelOperations:
    """Request handlers. Each runs in a libfuse worker thread holding the GIL; every one
    replies exactly once, through `lib` (the real library or a fake)."""

    def __init__(self, lib: Libfuse3, vfs: RepositoryVFS, entry_timeout: float,
                 notifier: Notifier, *, no_open: bool = True,
                 cpus: AdaptiveCpus | None = None) -> None:
        self.lib = lib
        self.cpus = cpus if cpus is not None else _Unmeasured()
        self._caller = lib.caller if cpus is not None else _anyone  # what `cpus` is told
        self._fuse = lib.cdll
        self._cache_readdir = lib.cache_readdir_bit
        self.vfs = vfs
        vfs.track_lookups()  # FORGET is answered: the VFS may drop what the kernel lets go
        self.entry_timeout = entry_timeout
        self.splice = False  # READ replies spliced from cache files (FUSE_CAP_SPLICE_WRITE)
        self._no_open_wanted = no_open
        self.no_open = False  # files opened by the kernel alone (FUSE_CAP_NO_OPEN_SUPPORT)
        self.kernel = KernelCache(vfs, notifier.inval_inode, notifier.inval_entry,
                                  entry_timeout, redrain_s=REDRAIN_S)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.ops = _libfuse3.LowlevelOps()
        self._callbacks: list[Any] = []  # ctypes keeps no reference: we must
        keep = lib.workers_persist
        for name, callback_type in _libfuse3.CALLBACK_TYPES.items():
            handler = getattr(self, f"_op_{name}")
            wrapped = handler if name in UNGUARDED else self._guarded(name, handler)
            # latency by operation (`op_timing`): the one timing point of this adapter
            timed = vfs.stats.operations.timed(name, wrapped)
            callback = callback_type(_keeping_thread_state(timed) if keep else timed)
            self._callbacks.append(callback)
            setattr(self.ops, name, callback)

    # --- plumbing --------------------------------------------------------------------
    def _guarded(self, name: str, handler: Callable[..., None]) -> Callable[..., None]:
        """Run a handler on the libfuse worker with downloads forbidden (lookups in
        attached catalogs take microseconds); if it would have to download, answer from
        the blocking pool instead, so a slow download never ties up one of the few
        libfuse workers. Reply with an errno when the handler raised. A handler's reply
        is its last statement and replies never raise, so no request is answered twice."""
        inline, copy_file_info = self.vfs.inline, self.lib.copy_file_info
        enter, leave, counts = self.cpus.enter, self.cpus.leave, self._counts
        caller = self._caller
        reads = name == "read"

        def guarded(req: int, *args: Any) -> None:
            counted = not reads or counts(args[2])  # (ino, size, offset, fi)
            if counted:
                enter(caller(req))
            try:
                with inline():
                    handler(req, *args)
                return
            except WouldBlock:
                pass
            except BaseException as exc:
                self._reply_error(name, req, exc)
                return
            finally:
                if counted:
                    leave()
            # libfuse's fuse_file_info lives on the worker's stack: keep a copy
            kept = tuple(copy_file_info(arg) if isinstance(arg, FileInfoPointer) and arg
                         else arg for arg in args)
            self._blocking().submit(self._unrestricted, name, handler, req, kept, counted)

        return guarded

    def _unrestricted(self, name: str, handler: Callable[..., None], req: int,
                      args: tuple[Any, ...], counted: bool = True) -> None:
        if counted:
            self.cpus.resume()  # the same request: running again, not arriving
        try:
            handler(req, *args)
        except BaseException as exc:
            self._reply_error(name, req, exc)
        finally:
            if counted:
                self.cpus.leave()

    @staticmethod
    def _counts(offset: int) -> bool:
        """Whether a READ at `offset` is told to the CPU policy: only a file's first. Past
        it, the work is the kernel's copy, or inflating and hashing a chunk in C with the
        interpreter lock released, which gains from more CPUs (a 1 GiB read of an empty
        cache took 8.5 s on one CPU, 4.0 s on two); the first READ of a small file is
        most of its cost, in Python."""
        return offset == 0

    def _reply_error(self, name: str, req: int, exc: BaseException) -> None:
        if not isinstance(exc, EXPECTED):
            log.error("unexpected error in %s", name, exc_info=exc)
        self._fuse.fuse_reply_err(req, errno_of(exc))

    def _blocking(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(BLOCKING_THREADS,
                                                thread_name_prefix="fuse-blocking")
            return self._pool

    def _timeout(self) -> float:
        return self.vfs.entry_timeout(self.entry_timeout)

    # --- requests --------------------------------------------------------------------
    def _op_init(self, userdata: int, conn: int) -> None:
        try:
            cached = self.lib.want(conn, _libfuse3.FUSE_CAP_CACHE_SYMLINKS)
            self.splice = self.lib.want(conn, _libfuse3.FUSE_CAP_SPLICE_WRITE)
            if self._no_open_wanted and self.lib.want(conn, _libfuse3.FUSE_CAP_NO_OPEN_SUPPORT):
                self.vfs.read_unopened()  # before any request: READs of handle 0 name inodes
                self.no_open = True
            log.debug("FUSE init: symlinks cached by the kernel: %s; reads spliced: %s; "
                      "files opened without OPEN: %s", cached, self.splice, self.no_open)
            self.cpus.start()  # stopped by `stop`, which the session always calls
        except BaseException:
            log.exception("unexpected error in init")

    def _op_lookup(self, req: int, parent: int, name: bytes) -> None:
        try:
            attr: Attr | None = self.vfs.lookup(parent, name.decode("utf-8", "surrogateescape"))
        except WouldBlock:
            raise
        except BaseException as exc:
            if not self.kernel.missing(parent, name, errno_of(exc)):
                raise
            attr = None
        try:
            packed = pack_entry(attr, self._timeout())
        except BaseException:
            if attr is not None:
                self.vfs.forget([(attr.ino, 1)])  # counted by vfs.lookup, never sent
            raise
        if self._fuse.fuse_reply_entry(req, packed) != 0 and attr is not None:
            # not delivered (the request was interrupted): the kernel never counted it
            with contextlib.suppress(Exception):  # replied: must not raise into _guarded
                self.vfs.forget([(attr.ino, 1)])

    def _op_getattr(self, req: int, ino: int, fi: Any) -> None:
        attr = self.vfs.getattr(ino)
        self._fuse.fuse_reply_attr(req, pack_stat(attr), self._timeout())

    def _op_readlink(self, req: int, ino: int) -> None:
        self._fuse.fuse_reply_readlink(req, self.vfs.readlink(ino))

    def _op_open(self, req: int, ino: int, fi: Any) -> None:
        if self.no_open:  # ENOSYS: this open succeeds, and the kernel opens alone from now
            self._fuse.fuse_reply_err(req, errno.ENOSYS)
            return
        info = fi.contents
        handle = self.vfs.open(ino, info.flags)
        try:
            direct = self.vfs.direct_io(handle)
        except BaseException:
            self.vfs.release(handle)
            raise
        info.fh = handle
        info.bits |= FI_DIRECT_IO if direct else FI_KEEP_CACHE
        if self._fuse.fuse_reply_open(req, fi) != 0:  # interrupted: nobody owns it
            with contextlib.suppress(Exception):  # replied: must not raise into _guarded
                self.vfs.release(handle)

    def _op_read(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        handle = fi.contents.fh  # 0: opened without OPEN (no-open), read by inode
        cached: bool | None = False  # False: not tried; None: must be downloaded first
        if self.splice:
            cached = self.vfs.send_cached(handle, off, size,
                                          lambda fd, position, length:
                                          self._reply_spliced(req, fd, position, length),
                                          ino)
            if cached:
                return
        data = None if cached is None else self.vfs.read_nowait(handle, off, size, ino)
        if data is None:  # may wait for the network: reply later, from a pool thread
            self._blocking().submit(self._unrestricted, "read", self._read_blocking, req,
                                    (handle, off, size, ino), self._counts(off))
            return
        self._fuse.fuse_reply_buf(req, data, len(data))

    def _reply_spliced(self, req: int, fd: int, position: int, length: int) -> None:
        """The reply to a READ, spliced by libfuse from cache file `fd` (no copy through
        Python); the caller holds the file open until this returns."""
        self._fuse.fuse_reply_data(req, ctypes.byref(_libfuse3.fd_buffer(fd, position, length)),
                                   0)

    def _read_blocking(self, req: int, handle: int, off: int, size: int, ino: int) -> None:
        data = self.vfs.read(handle, off, size, ino)
        self._fuse.fuse_reply_buf(req, data, len(data))

    def _op_release(self, req: int, ino: int, fi: Any) -> None:
        self.vfs.release(fi.contents.fh)
        self._fuse.fuse_reply_err(req, 0)

    def _op_opendir(self, req: int, ino: int, fi: Any) -> None:
        info = fi.contents
        handle = self.vfs.opendir(ino)
        info.fh = handle
        if not self.vfs.draining():  # a listing that may be old must not be cached
            info.bits |= self._cache_readdir | FI_KEEP_CACHE
            self.kernel.listed(ino)
        if self._fuse.fuse_reply_open(req, fi) != 0:  # interrupted: nobody will release it
            with contextlib.suppress(Exception):  # replied: must not raise into _guarded
                self.vfs.releasedir(handle)

    def _op_releasedir(self, req: int, ino: int, fi: Any) -> None:
        self.vfs.releasedir(fi.contents.fh)
        self._fuse.fuse_reply_err(req, 0)

    def _readdir(self, req: int, ino: int, size: int, off: int, fi: Any, plus: bool) -> None:
        """One page of the handle's listing from `off`; READDIRPLUS hands out its entries
        (`HandOut`)."""
        timeout = self._timeout()
        buffer = ctypes.create_string_buffer(size)
        base, used = ctypes.addressof(buffer), 0
        add = self._fuse.fuse_add_direntry_plus if plus else self._fuse.fuse_add_direntry
        handed = HandOut(self.vfs)
        entries = self.vfs.readdir(fi.contents.fh, max(off, 0))
        try:
            for item in entries:
                if plus:
                    packed = pack_entry(handed.attr(item), timeout)
                else:
                    packed = pack_stat(self.vfs.listed_attr(item, hand_out=False))
                needed = add(req, base + used, size - used,
                             item.name.encode("utf-8", "surrogateescape"), packed, item.offset)
                if needed > size - used:
                    handed.take_back_last()  # did not fit: not handed out
                    break
                used += needed
        except BaseException:
            handed.take_back()
            raise
        finally:
            entries.close()
        if self._fuse.fuse_reply_buf(req, buffer, used) != 0:  # not delivered
            with contextlib.suppress(Exception):
                handed.take_back()
        # replied: nothing below may raise into _guarded (a second reply)
        if off <= 0:
            with contextlib.suppress(Exception):
                self.kernel.answered_listing(ino)

    def _op_readdir(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        self._readdir(req, ino, size, off, fi, plus=False)

    def _op_readdirplus(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        self._readdir(req, ino, size, off, fi, plus=True)

    def _op_forget(self, req: int, ino: int, nlookup: int) -> None:
        self._forget([(ino, nlookup)], req)

    def _op_forget_multi(self, req: int, count: int, forgets: Any) -> None:
        try:
            items = [(forgets[i].ino, forgets[i].nlookup) for i in range(count)]
        except BaseException:
            log.exception("unexpected error in forget_multi")
            items = []
        self._forget(items, req)

    def _forget(self, items: list[tuple[int, int]], req: int) -> None:
        """Take the kernel's lookups back; always reply none (FORGET has no answer)."""
        try:
            forgotten = self.vfs.forget(items)
            if forgotten:  # the kernel dropped these inodes, and any listing cached on them
                self.kernel.forgotten(forgotten)
        except BaseException:
            log.exception("unexpected error in forget")
        self._fuse.fuse_reply_none(req)

    def _op_statfs(self, req: int, ino: int) -> None:
        s = self.vfs.statfs()
        out = _libfuse3.Statvfs(f_bsize=s.block_size, f_frsize=s.block_size, f_blocks=s.blocks,
                      f_bfree=s.blocks_free, f_bavail=s.blocks_free, f_files=s.files,
                      f_ffree=s.files_free, f_favail=s.files_free, f_namemax=s.name_max)
        self._fuse.fuse_reply_statfs(req, ctypes.byref(out))

    def _reply_sized(self, req: int, value: bytes, size: int) -> None:
        """The xattr protocol: size 0 asks for the length, a short buffer is ERANGE."""
        if size == 0:
            self._fuse.fuse_reply_xattr(req, len(value))
        elif len(value) > size:
            self._fuse.fuse_reply_err(req, errno.ERANGE)
        else:
            self._fuse.fuse_reply_buf(req, value, len(value))

    def _op_getxattr(self, req: int, ino: int, name: bytes, size: int) -> None:
        value = self.vfs.find_xattr(ino, name.decode("utf-8", "surrogateescape"))
        if value is None:
            self._fuse.fuse_reply_err(req, errno.ENODATA)
            return
        self._reply_sized(req, value, size)

    def _op_listxattr(self, req: int, ino: int, size: int) -> None:
        names = self.vfs.listxattr(ino)
        value = b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)
        self._reply_sized(req, value, size)

    def stop(self) -> None:
        """After the session loop: no timer, no pool thread left behind."""
        self.cpus.stop()
        self.kernel.stop()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def serve(vfs: RepositoryVFS, mountpoint: str, *, fsname: str, entry_timeout: float,
          no_open: bool = True, cpus: AdaptiveCpus | None = None) -> None:
    """Mount and serve with libfuse's worker threads until unmounted or signalled
    (blocks); always unmounts and destroys the session. `no_open`: let the kernel open
    files without asking where it can (PYCVMFS_NO_OPEN; see the module docstring);
    `cpus`: told of every request, it moves the threads between CPUs (`cpu_policy`)."""
    lib = _libfuse3.load()
    notifier = Notifier(lib)
    operations = LowlevelOperations(lib, vfs, entry_timeout, notifier, no_open=no_open,
                                    cpus=cpus)
    listener = operations.kernel.invalidate_all

    def stop() -> None:
        with contextlib.suppress(ValueError):  # no revision change is passed on any more
            vfs.unsubscribe(listener)
        operations.stop()

    vfs.subscribe(listener)
    try:
        run_session(lib, operations.ops, notifier, mountpoint, fsname=fsname,
                    threads=WORKER_THREADS, stop=stop)
    finally:
        with contextlib.suppress(ValueError):  # the session was never created
            vfs.unsubscribe(listener)


__all__ = ["serve", "probe", "LowlevelOperations"]
