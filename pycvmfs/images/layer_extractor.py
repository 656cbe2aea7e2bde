"""The layer tar extractor: applies tar members onto a rootfs held by a directory fd.

One `LayerExtractor` serves one extraction (`layers.apply_layers` or
`layers.unpack_layer_tree`, whose docstring states the semantics and every hostile case):
it dispatches each member to the writer of its type (files, directories, symlinks,
hardlinks, devices, fifos, user xattrs), applies or records whiteouts, and tracks what the
current layer wrote so whiteouts never delete it. Paths are resolved by `rootfs_tree`, member
names and limits judged by `layer_members`, findings collected in a `layer_report`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from pycvmfs.errors import ImageError
from pycvmfs.images.layer_members import MemberBudget, member_times, normalise_member_name
from pycvmfs.images.layer_report import Finding, FindingKind, LayerReport, LayerStats
from pycvmfs.images.layer_stream import (
    COPY_CHUNK_BYTES,
    CorruptLayerError,
    CountingReader,
    LimitExceededError,
    decompressed,
    opened,
)
from pycvmfs.images.rootfs_tree import (
    DIR_READ_FLAGS,
    Resolved,
    RootTree,
    UnresolvableError,
    join,
    lstat_at,
    read_fd,
    remove_at,
)
from pycvmfs.publisher.tree_walk import KEPT_ASIDE_PREFIX, KEPT_MARKER

__all__ = ["EntryCallback", "LayerExtractor"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
KEPT_XATTR_PREFIX = "user."

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DEVICE_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                 tarfile.FIFOTYPE: stat.S_IFIFO}
_ENTRY_TYPES = {tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, *_DEVICE_TYPES}

EntryCallback = Callable[[int], None]  # once per tar member, with its file bytes (progress)


@dataclass(slots=True)
class _Entry:
    """One member being applied: where it goes, and how to report about it."""

    layer: int
    member: tarfile.TarInfo
    parent: Resolved
    name: str

    @property
    def path(self) -> str:
        return join(self.parent.rel, self.name)


class LayerExtractor:
    """Applies layers, lowest first, onto the tree below `tree`'s root; `finish()` once
    after the last one, then read `report`."""

    def __init__(self, tree: RootTree, budget: MemberBudget, *, overlay: bool = False,
                 on_entry: EntryCallback | None = None) -> None:
        self.tree = tree
        self.member_budget = budget
        self.overlay = overlay  # whiteouts recorded overlayfs-style instead of applied
        self.on_entry = on_entry
        self.report = LayerReport()
        self.budget = [budget.limits.max_total_bytes]  # decompressed bytes left, all layers
        self.as_root = os.geteuid() == 0
        self.upper: set[str] = set()  # paths written by the current layer, and ancestors
        self.dir_meta: dict[str, tuple[int, int, int]] = {}  # path -> mode, atime, mtime
        self.xattrs_unsupported = False
        if not self.as_root:
            self.note(-1, "", "", FindingKind.OWNERSHIP_SKIPPED,
                      "uid/gid of entries not applied (euid != 0)")

    def note(self, layer: int, member: str, path: str, kind: FindingKind, why: str) -> None:
        self.report.findings.append(Finding(layer, member, path, kind, why))

    def note_entry(self, entry: _Entry, kind: FindingKind, why: str) -> None:
        self.note(entry.layer, entry.member.name, entry.path, kind, why)

    # -- layers --

    def apply(self, index: int, source: BinaryIO | os.PathLike[str] | str) -> None:
        label = str(source) if isinstance(source, (str, os.PathLike)) else "<stream>"
        where = "<before the first member>"
        try:
            with opened(source) as (label, raw):
                compression, stream = decompressed(raw)
                stats = LayerStats(index, label, compression)
                self.report.layers.append(stats)
                self.upper = set()
                counting = CountingReader(stream, self.budget)
                with tarfile.open(fileobj=counting, mode="r|") as tar:  # type: ignore[call-overload]
                    seen: set[str] = set()
                    for member in tar:
                        where = f"member {member.name!r}"
                        self.apply_member(index, tar, member, stats, seen)
                        if self.on_entry is not None:
                            self.on_entry(member.size if member.isreg() else 0)
                        where = f"after member {member.name!r}"
                        counting.data_end = member.offset_data + member.size
                stats.tar_bytes = counting.counted
                if counting.padded:
                    self.note(index, "", "", FindingKind.UNTERMINATED_ARCHIVE,
                              "stream ends right after the last member's data, without "
                              "padding or end-of-archive blocks; accepted as umoci does")
        except LimitExceededError as exc:
            raise ImageError(f"layer {index} ({label}), {where}: {exc}") from None
        except (ImageError, tarfile.TarError, zlib.error, EOFError, OSError, ValueError,
                OverflowError, CorruptLayerError) as exc:
            # ValueError: NUL bytes in PAX names; OverflowError: absurd ids, times, devices
            raise ImageError(f"layer {index} ({label}), {where}: {exc}") from exc


    def apply_member(self, layer: int, tar: tarfile.TarFile, member: tarfile.TarInfo,
                     stats: LayerStats, seen: set[str]) -> None:
        parts, changed = normalise_member_name(member.name)
        self.member_budget.check(member, parts)
        stats.members += 1
        clean = "/".join(parts)
        if changed:
            self.note(layer, member.name, clean, FindingKind.NAME_NORMALISED,
                      "absolute name or '..' component; cleaned lexically against '/'")
        if not parts:
            self.apply_root(layer, member)
            return
        base = parts[-1]
        reserved = [p for p in parts if p == KEPT_MARKER or p.startswith(KEPT_ASIDE_PREFIX)]
        if reserved:
            self.note(layer, member.name, clean, FindingKind.RESERVED_NAME,
                      f"{reserved[0]!r} is the publisher's own marker; entry skipped")
            return
        if base.startswith(WHITEOUT_PREFIX):
            self.apply_whiteout(layer, member, parts, stats)
            return
        if not (member.isreg() or member.type in _ENTRY_TYPES):
            self.note(layer, member.name, clean, FindingKind.UNKNOWN_TYPE,
                      f"type {member.type!r} is not a file, directory, link, device or fifo")
            return
        if clean in seen:
            self.note(layer, member.name, clean, FindingKind.DUPLICATE,
                      "the same name appears earlier in this layer; tar semantics: last wins")
        seen.add(clean)
        parent = self.resolve_parent(layer, member, parts[:-1])
        if parent is None:
            return
        entry = _Entry(layer, member, parent, base)
        try:
            self.apply_entry(tar, entry, stats)
        finally:
            os.close(parent.fd)

    def resolve_parent(self, layer: int, member: tarfile.TarInfo,
                       parts: list[str]) -> Resolved | None:
        try:
            parent = self.tree.resolve_dir(parts, create=True)
        except UnresolvableError as exc:
            self.note(layer, member.name, "/".join(parts), FindingKind.PARENT_UNRESOLVABLE,
                      f"{exc}; entry skipped")
            return None
        assert parent is not None  # create=True never answers "missing"
        for made in parent.created:
            self.note(layer, member.name, made, FindingKind.PARENT_CREATED,
                      "no directory entry before this member; created 0755")
        for hop in parent.rescoped:
            self.note(layer, member.name, parent.rel, FindingKind.PARENT_RESCOPED,
                      f"followed {hop} with the rootfs as '/'")
        return parent

    def mark_upper(self, path: str) -> None:
        while path and path not in self.upper:
            self.upper.add(path)
            path = path.rpartition("/")[0]

    def forget_dirs_under(self, path: str) -> None:
        prefix = path + "/"
        for key in [k for k in self.dir_meta if k == path or k.startswith(prefix)]:
            del self.dir_meta[key]

    def clear_leaf(self, entry: _Entry, *, keep_dir: bool) -> bool:
        """Remove what is at the entry's path (a directory stays if `keep_dir`); True if a
        directory was kept."""
        st = lstat_at(entry.name, entry.parent.fd)
        if st is None:
            return False
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return True
        remove_at(entry.name, entry.parent.fd, st)
        if stat.S_ISDIR(st.st_mode):
            self.forget_dirs_under(entry.path)
        return False

    # -- entry types --

    def apply_entry(self, tar: tarfile.TarFile, entry: _Entry, stats: LayerStats) -> None:
        member = entry.member
        if member.mode & (stat.S_ISUID | stat.S_ISGID) and not (member.issym()
                                                                 or member.islnk()):
            self.note_entry(entry, FindingKind.SETID_KEPT,
                            f"mode {member.mode:o} stored as is; nosuid mounts ignore it")
        if member.isreg():
            self.write_file(tar, entry)
            stats.files += 1
        elif member.isdir():
            self.make_dir(entry)
            stats.directories += 1
        elif member.issym():
            self.make_symlink(entry)
            stats.symlinks += 1
        elif member.islnk():
            if self.make_hardlink(entry):
                stats.hardlinks += 1
            return
        else:
            self.make_node(entry)
            if member.type == tarfile.FIFOTYPE:
                stats.fifos += 1
            else:
                stats.devices += 1
        self.mark_upper(entry.path)

    def chown(self, name: str, dir_fd: int, member: tarfile.TarInfo) -> None:
        if self.as_root:
            os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)

    def write_file(self, tar: tarfile.TarFile, entry: _Entry) -> None:
        self.clear_leaf(entry, keep_dir=False)
        member = entry.member
        fd = os.open(entry.name, _NEW_FILE_FLAGS, 0o600, dir_fd=entry.parent.fd)
        try:
            source = tar.extractfile(member)
            if source is not None:
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
            if self.as_root:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
            self.set_xattrs(fd, entry, clear=False)
            os.utime(fd, ns=member_times(member))
        finally:
            os.close(fd)

    def make_dir(self, entry: _Entry) -> None:
        if not self.clear_leaf(entry, keep_dir=True):
            os.mkdir(entry.name, 0o700, dir_fd=entry.parent.fd)
        fd = os.open(entry.name, DIR_READ_FLAGS, dir_fd=entry.parent.fd)
        try:
            self.dir_metadata(fd, entry)
        finally:
            os.close(fd)

    def dir_metadata(self, fd: int, entry: _Entry) -> None:
        member = entry.member
        if self.as_root:
            os.fchown(fd, member.uid, member.gid)
        self.set_xattrs(fd, entry, clear=True)
        self.dir_meta[entry.path] = (member.mode & 0o7777, *member_times(member))

    def apply_root(self, layer: int, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            self.note(layer, member.name, "", FindingKind.ROOT_NOT_DIRECTORY,
                      f"type {member.type!r} for the root directory; entry skipped")
            return
        root = Resolved(self.tree.root_fd, [])
        fd = os.open(".", DIR_READ_FLAGS, dir_fd=self.tree.root_fd)
        try:
            self.dir_metadata(fd, _Entry(layer, member, root, ""))
        finally:
            os.close(fd)

    def make_symlink(self, entry: _Entry) -> None:
        member = entry.member
        target = member.linkname
        if not target:
            self.note_entry(entry, FindingKind.INVALID_ENTRY, "symlink with an empty target")
            return
        if not target.startswith("/"):
            depth = len(entry.parent.parts)
            for comp in target.split("/"):
                depth += -1 if comp == ".." else 0 if comp in ("", ".") else 1
                if depth < 0:
                    self.note_entry(entry, FindingKind.SYMLINK_ESCAPES,
                                    f"target {target!r} climbs above the rootfs; stored as "
                                    "text, never followed during extraction")
                    break
        self.clear_leaf(entry, keep_dir=False)
        os.symlink(target, entry.name, dir_fd=entry.parent.fd)
        self.chown(entry.name, entry.parent.fd, member)
        os.utime(entry.name, ns=member_times(member), dir_fd=entry.parent.fd,
                 follow_symlinks=False)

    def make_hardlink(self, entry: _Entry) -> bool:
        member = entry.member
        parts, changed = normalise_member_name(member.linkname)
        if changed:
            self.note_entry(entry, FindingKind.NAME_NORMALISED,
                            f"hardlink target {member.linkname!r} cleaned lexically to "
                            f"{'/'.join(parts)!r}")
        if not parts:
            self.note_entry(entry, FindingKind.HARDLINK_SKIPPED, "target is the root")
            return False
        try:
            source = self.tree.resolve_dir(parts[:-1], create=False)
        except UnresolvableError as exc:
            self.note_entry(entry, FindingKind.HARDLINK_SKIPPED, f"target unresolvable: {exc}")
            return False
        if source is None:
            self.note_entry(entry, FindingKind.HARDLINK_SKIPPED,
                            f"target {member.linkname!r} does not exist")
            return False
        try:
            return self.link_to(entry, source, parts[-1])
        finally:
            os.close(source.fd)

    def link_to(self, entry: _Entry, source: Resolved, name: str) -> bool:
        target = join(source.rel, name)
        if source.crossed:
            self.note_entry(entry, FindingKind.HARDLINK_THROUGH_SYMLINK,
                            f"target {entry.member.linkname!r} resolved to {target!r}")
        st = lstat_at(name, source.fd)
        why = None
        if st is None:
            why = f"target {entry.member.linkname!r} does not exist"
        elif stat.S_ISDIR(st.st_mode):
            why = f"target {target!r} is a directory"
        elif target == entry.path:
            why = "hardlink to itself"
        if why is None:
            self.clear_leaf(entry, keep_dir=False)
            try:
                os.link(name, entry.name, src_dir_fd=source.fd, dst_dir_fd=entry.parent.fd,
                        follow_symlinks=False)
            except FileNotFoundError:  # the target lived inside what the entry replaced
                why = f"target {target!r} was removed by this entry"
        if why is not None:
            self.note_entry(entry, FindingKind.HARDLINK_SKIPPED, why)
            return False
        self.mark_upper(entry.path)
        return True

    def make_node(self, entry: _Entry) -> None:
        member = entry.member
        self.clear_leaf(entry, keep_dir=False)
        fd = entry.parent.fd
        kind = _DEVICE_TYPES[member.type]
        try:
            os.mknod(entry.name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                     dir_fd=fd)
            mode = member.mode & 0o7777
        except PermissionError:
            if kind == stat.S_IFIFO:
                raise
            os.close(os.open(entry.name, _NEW_FILE_FLAGS, 0, dir_fd=fd))
            mode = 0
            self.note_entry(entry, FindingKind.DEVICE_AS_FILE,
                            f"mknod {member.devmajor}:{member.devminor} refused; empty file "
                            "with mode 0 instead (umoci rootless behaviour)")
        self.chown(entry.name, fd, member)
        os.chmod(entry.name, mode, dir_fd=fd)  # just created by us: not a symlink
        os.utime(entry.name, ns=member_times(member), dir_fd=fd, follow_symlinks=False)

    def set_xattrs(self, fd: int, entry: _Entry, *, clear: bool) -> None:
        wanted: dict[str, bytes] = {}
        dropped: list[str] = []
        for key, value in entry.member.pax_headers.items():
            if key.startswith(XATTR_PAX_PREFIX):
                name = key[len(XATTR_PAX_PREFIX):]
                if name.startswith(KEPT_XATTR_PREFIX):
                    wanted[name] = value.encode("utf-8", "surrogateescape")
                else:
                    dropped.append(name)
        if dropped:
            self.note_entry(entry, FindingKind.XATTR_DROPPED,
                            f"{', '.join(sorted(dropped))}: only user.* xattrs are kept")
        if self.xattrs_unsupported or not (wanted or clear):
            return
        try:
            if clear:
                for name in os.listxattr(fd):
                    if name.startswith(KEPT_XATTR_PREFIX) and name not in wanted:
                        os.removexattr(fd, name)
            for name, data in wanted.items():
                os.setxattr(fd, name, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            self.xattrs_unsupported = True
            self.note_entry(entry, FindingKind.XATTR_UNSUPPORTED,
                            f"{exc.strerror}; user xattrs not applied from here on")

    # -- whiteouts --

    def apply_whiteout(self, layer: int, member: tarfile.TarInfo, parts: list[str],
                       stats: LayerStats) -> None:
        base = parts[-1]
        clean = "/".join(parts)
        opaque = base == OPAQUE_MARKER
        target = base[len(WHITEOUT_PREFIX):]
        if not opaque and (target in ("", ".", "..") or base.startswith(".wh..wh.")):
            self.note(layer, member.name, clean, FindingKind.WHITEOUT_INVALID,
                      f"whiteout names {target!r}: not a removable entry")
            return
        if self.overlay:
            self.record_whiteout(layer, member, parts, stats)
            return
        try:
            parent = self.tree.resolve_dir(parts[:-1], create=False)
        except UnresolvableError as exc:
            self.note(layer, member.name, clean, FindingKind.PARENT_UNRESOLVABLE,
                      f"{exc}; whiteout skipped")
            return
        if parent is None:  # nothing below a missing directory to remove
            return
        try:
            if parent.crossed:
                self.note(layer, member.name, join(parent.rel, target),
                          FindingKind.WHITEOUT_THROUGH_SYMLINK,
                          f"parent {'/'.join(parts[:-1])!r} resolved to {parent.rel!r}")
            if opaque:
                stats.opaque += 1
                with read_fd(parent.fd) as dir_fd:
                    self.purge_children(dir_fd, parent.rel)
            else:
                stats.whiteouts += 1
                self.remove_lower(parent.fd, target, join(parent.rel, target))
        finally:
            os.close(parent.fd)

    def record_whiteout(self, layer: int, member: tarfile.TarInfo, parts: list[str],
                        stats: LayerStats) -> None:
        """overlayfs' own encoding: a 0/0 char device for `.wh.NAME`, the xattr
        `trusted.overlay.opaque=y` on the directory of `.wh..wh..opq`."""
        parent = self.resolve_parent(layer, member, parts[:-1])
        if parent is None:
            return
        try:
            if parts[-1] == OPAQUE_MARKER:
                with read_fd(parent.fd) as fd:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                stats.opaque += 1
                return
            entry = _Entry(layer, member, parent, parts[-1][len(WHITEOUT_PREFIX):])
            self.clear_leaf(entry, keep_dir=False)
            os.mknod(entry.name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent.fd)
            self.chown(entry.name, parent.fd, member)
            os.utime(entry.name, ns=member_times(member), dir_fd=parent.fd,
                     follow_symlinks=False)
            stats.whiteouts += 1
            self.mark_upper(entry.path)
        except PermissionError as exc:
            raise ImageError(f"a layer tree stores whiteouts as overlayfs does (0/0 char "
                             f"devices, trusted.overlay.opaque), which needs root: "
                             f"{exc.strerror}; skip layer trees to ingest unprivileged"
                             ) from None
        finally:
            os.close(parent.fd)

    def remove_lower(self, dir_fd: int, name: str, path: str) -> None:
        """Remove `path` except what the current layer wrote (and their ancestors)."""
        st = lstat_at(name, dir_fd)
        if st is None:
            return
        if path not in self.upper:
            remove_at(name, dir_fd, st)
            if stat.S_ISDIR(st.st_mode):
                self.forget_dirs_under(path)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR_READ_FLAGS, dir_fd=dir_fd)
            try:
                self.purge_children(fd, path)
            finally:
                os.close(fd)

    def purge_children(self, dir_fd: int, path: str) -> None:
        for child in os.listdir(dir_fd):
            self.remove_lower(dir_fd, child, join(path, child))

    # -- the end --

    def finish(self) -> None:
        """Directory modes and times, deepest first, now that nothing writes into them."""
        for path in sorted(self.dir_meta, key=lambda p: p.count("/") + bool(p), reverse=True):
            mode, atime, mtime = self.dir_meta[path]
            fd = self.tree.open_real_dir(path.split("/") if path else [])
            if fd is None:
                continue
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)

