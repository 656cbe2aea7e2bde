"""Apply container image layers (OCI / Docker tar diffs) to a directory, safely.

`apply_layers(layers, rootfs, limits=...)` streams each layer tar (plain, gzip or zstd,
detected by magic bytes) onto `rootfs` in order, with OCI/Docker semantics, and returns a
`LayerReport`: per-layer counts plus one `Finding` (layer, member, path, what, why) for every
entry that was neutralised, skipped or is worth a reviewer's look. `unpack_layer_tree` writes
one layer as an overlayfs lower directory instead (DUCC's `layerfs`: whiteouts recorded, not
applied). Compression and byte budgets live in `layer_stream`, symlink-safe path resolution
in `rootfs_tree`.

I/O: reads the layer streams; creates, changes and removes files **only below `rootfs`**.
Every path is walked component by component from a directory fd of `rootfs`
(`openat(O_PATH|O_DIRECTORY|O_NOFOLLOW)`), symlinks met on the way are interpreted as if
`rootfs` were `/` (like umoci's `securejoin` and Docker's `FollowSymlinkInScope`), and the
final component is always operated on with `*at(..., AT_SYMLINK_NOFOLLOW)` semantics, so the
kernel never follows a symlink out of the tree. Thread-safety: one call works on one rootfs;
nothing else may modify that rootfs meanwhile.

Semantics (reference: `umoci unpack` 0.4, checked by tests/integration/test_layers_vs_umoci.py)
- Later entries replace earlier ones; a directory over a directory merges (metadata updated),
  anything else clobbers what was there (a directory subtree included).
- `.wh.NAME` deletes NAME from lower layers; `.wh..wh..opq` empties its directory of
  lower-layer content. Entries of the *same* layer are never deleted by either, whatever the
  order inside the tar (the set of paths written by this layer is tracked).
- Regular files, directories, symlinks, hardlinks, char/block devices and fifos: created with
  uid/gid (when running as root), mode (setuid/setgid/sticky included), mtime (atime = PAX
  atime or mtime). Directory modes and times are applied after all layers, deepest first, so
  later writes inside them do not change them.
- Device nodes: `mknod` as umoci does as root. When mknod is refused (not root, user
  namespace) an empty regular file with mode 0 takes its place, as umoci does rootless
  (finding DEVICE_AS_FILE).
- Hardlinks point at entries already extracted (this layer or lower ones); they carry no
  metadata of their own. A hardlink to a symlink links the symlink itself.
- Symlink targets are stored as text and never resolved for extraction.
- xattrs: PAX `SCHILY.xattr.user.*` are applied (to regular files and directories; Linux
  refuses `user.*` on other types). Every other namespace (`security.capability`,
  `trusted.*`, `security.selinux`, ...) is dropped and reported (XATTR_DROPPED): file
  capabilities would grant privileges to whoever runs the binary from a local copy, and a
  publisher has no business writing `trusted.*`.
- setuid/setgid bits are kept as plain mode bits and reported (SETID_KEPT). They only take
  effect where the tree is executed from a filesystem honouring them; the CernVM-FS client
  mounts with `nosuid`, which ignores both set-id bits and file capabilities.

Hostile input (each case is a `FindingKind`; nothing outside `rootfs` is ever touched)
- absolute member names and `..` components: normalised lexically against `/`, exactly as
  umoci's `CleanPath` (`/etc/x` -> `etc/x`, `../../etc/x` -> `etc/x`, `a/../b` -> `b`);
  NAME_NORMALISED. Same for hardlink targets.
- writing through a symlink in a parent component (layer 1 `etc -> /etc`, layer 2
  `etc/passwd`): the symlink is followed *inside* rootfs; a target that is absolute or climbs
  above the root is PARENT_RESCOPED. `etc -> /etc` resolves to itself: a loop, so the entry is
  skipped (PARENT_UNRESOLVABLE; umoci fails the whole unpack there). A parent that is not a
  directory is PARENT_UNRESOLVABLE too.
- symlinks whose relative target climbs above the rootfs: kept as text (SYMLINK_ESCAPES).
  Absolute targets are normal in images (they mean the container's `/`) and not reported.
- hardlinks: to a missing path, a directory, itself, or the root are skipped
  (HARDLINK_SKIPPED); a target reached through a symlink is resolved inside rootfs
  (HARDLINK_THROUGH_SYMLINK); a target outside rootfs cannot be named (normalisation).
- whiteouts of `.`, `..`, the empty name, or reserved `.wh..wh.*` names: skipped
  (WHITEOUT_INVALID). Whiteouts whose parent path crosses a symlink are applied inside rootfs
  (WHITEOUT_THROUGH_SYMLINK); the named entry itself is removed, never its symlink target.
- duplicate entries in one layer: the later wins (tar semantics) — DUPLICATE.
- a non-directory entry for the root itself: skipped (ROOT_NOT_DIRECTORY).
- unknown member types (GNU volume headers, vendor types): skipped (UNKNOWN_TYPE).
- the publisher's own stub markers (`.pycvmfs-kept`, `.pycvmfs-kept-aside.*`): skipped
  (RESERVED_NAME), so an image cannot make the publisher graft or hide a directory.
- tar bombs: `LayerLimits` bounds decompressed bytes, member count, single file size, path
  depth and length; crossing one raises `ImageError` naming the layer and member.

Failure: any `ImageError` leaves `rootfs` partially extracted; it is the caller's to discard
(extract into a fresh directory and rename it into place on success).

Caveats
- Paths with missing parent directories get them created 0755 root:root (PARENT_CREATED);
  their mtime is whatever the extraction leaves.
- `LIBARCHIVE.xattr.*` PAX records (bsdtar) and POSIX ACL records are ignored.
- Data after the tar end-of-archive marker is not read.
- Regular files are written densely (GNU sparse members are expanded).
- Without root, ownership is not applied (OWNERSHIP_SKIPPED, once) and mknod falls back as
  above.
"""

from __future__ import annotations

import enum
import errno
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import BinaryIO

from pycvmfs.errors import ImageError
from pycvmfs.images.layer_stream import (
    COPY_CHUNK_BYTES,
    CorruptLayerError,
    CountingReader,
    LimitExceededError,
    decompressed,
    opened,
)
from pycvmfs.images.rootfs_tree import (
    DIR_PATH_FLAGS,
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

__all__ = ["EntryCallback", "Finding", "FindingKind", "LayerLimits", "LayerReport",
           "LayerStats", "apply_layers", "normalise_member_name", "unpack_layer_tree"]

GIB = 1 << 30
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
KEPT_XATTR_PREFIX = "user."

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DEVICE_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                 tarfile.FIFOTYPE: stat.S_IFIFO}


EntryCallback = Callable[[int], None]  # once per tar member, with its file bytes (progress)


@dataclass(frozen=True, slots=True)
class LayerLimits:
    """Bounds against tar bombs; crossing one raises `ImageError`.

    Defaults fit the largest images on unpacked.cern.ch (tens of GB, ~1 M files) with room
    to spare, and stop a 1 KB gzip that inflates forever.
    """

    max_total_bytes: int = 64 * GIB   # decompressed tar bytes, all layers together
    max_files: int = 4_000_000        # tar members, all layers together
    max_file_bytes: int = 16 * GIB    # one regular file
    max_path_depth: int = 256         # components of a member name (after normalisation)
    max_path_bytes: int = 4096        # PATH_MAX: member names, link targets


class FindingKind(enum.Enum):
    """What was done to an entry; the `Finding.why` text says why for that entry."""

    NAME_NORMALISED = "name normalised inside the rootfs"
    PARENT_CREATED = "missing parent directory created"
    PARENT_RESCOPED = "parent symlink followed inside the rootfs"
    PARENT_UNRESOLVABLE = "skipped: parent path unresolvable"
    ROOT_NOT_DIRECTORY = "skipped: non-directory entry for the root"
    DUPLICATE = "duplicate entry replaced the earlier one"
    SYMLINK_ESCAPES = "symlink target escapes the rootfs, kept as text"
    HARDLINK_SKIPPED = "skipped: unusable hardlink"
    HARDLINK_THROUGH_SYMLINK = "hardlink target resolved through a symlink inside the rootfs"
    WHITEOUT_INVALID = "skipped: invalid whiteout"
    WHITEOUT_THROUGH_SYMLINK = "whiteout applied through a symlink inside the rootfs"
    UNKNOWN_TYPE = "skipped: unknown member type"
    RESERVED_NAME = "skipped: a name the publisher reserves"
    UNTERMINATED_ARCHIVE = "tar without end-of-archive blocks accepted"
    INVALID_ENTRY = "skipped: invalid entry"
    XATTR_DROPPED = "xattrs outside user.* dropped"
    XATTR_UNSUPPORTED = "the rootfs filesystem refuses user xattrs"
    DEVICE_AS_FILE = "device node replaced by an empty file"
    SETID_KEPT = "setuid/setgid bits kept as data"
    OWNERSHIP_SKIPPED = "not root: ownership not applied"


@dataclass(frozen=True, slots=True)
class Finding:
    layer: int      # index in the `layers` argument
    member: str     # the member name as written in the archive
    path: str       # resulting path relative to rootfs ("" = the root itself)
    kind: FindingKind
    why: str


@dataclass(slots=True)
class LayerStats:
    index: int
    source: str
    compression: str  # "plain" | "gzip" | "zstd"
    members: int = 0
    tar_bytes: int = 0  # decompressed bytes read
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    fifos: int = 0
    whiteouts: int = 0
    opaque: int = 0


@dataclass(slots=True)
class LayerReport:
    layers: list[LayerStats] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def of_kind(self, kind: FindingKind) -> list[Finding]:
        return [f for f in self.findings if f.kind is kind]


def normalise_member_name(name: str) -> tuple[list[str], bool]:
    """Components of `name` cleaned lexically against `/` (umoci `CleanPath`), and whether
    that changed anything beyond a trailing slash or `./` prefixes."""
    parts: list[str] = []
    changed = name.startswith("/")
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            changed = True
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    return parts, changed


def _time_ns(member: tarfile.TarInfo, key: str, fallback: int | None) -> int:
    """PAX times exactly (tarfile rounds them through float), else the header's seconds."""
    text = member.pax_headers.get(key)
    if text is not None:
        try:
            return int(Decimal(text) * 1_000_000_000)
        except InvalidOperation:
            pass
    if fallback is not None:
        return fallback
    return int(member.mtime) * 1_000_000_000


# --- extraction ----------------------------------------------------------------------------


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


class _Extractor:
    def __init__(self, root_fd: int, limits: LayerLimits, *, overlay: bool = False,
                 on_entry: EntryCallback | None = None) -> None:
        self.tree = RootTree(root_fd)
        self.limits = limits
        self.overlay = overlay  # whiteouts recorded overlayfs-style instead of applied
        self.on_entry = on_entry
        self.report = LayerReport()
        self.budget = [limits.max_total_bytes]
        self.declared_bytes = 0
        self.members = 0
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

    def check_limits(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        lim = self.limits
        self.members += 1
        if self.members > lim.max_files:
            raise LimitExceededError(f"more than max_files={lim.max_files} members")
        if len(os.fsencode(member.name)) > lim.max_path_bytes:
            raise LimitExceededError(f"name longer than max_path_bytes={lim.max_path_bytes}")
        if len(os.fsencode(member.linkname)) > lim.max_path_bytes:
            raise LimitExceededError(
                f"link target longer than max_path_bytes={lim.max_path_bytes}")
        if len(parts) > lim.max_path_depth:
            raise LimitExceededError(f"deeper than max_path_depth={lim.max_path_depth}")
        if member.isreg():
            if member.size > lim.max_file_bytes:
                raise LimitExceededError(
                    f"file of {member.size} bytes exceeds max_file_bytes={lim.max_file_bytes}")
            self.declared_bytes += member.size
            if self.declared_bytes > lim.max_total_bytes:
                raise LimitExceededError("declared file sizes exceed max_total_bytes")

    def apply_member(self, layer: int, tar: tarfile.TarFile, member: tarfile.TarInfo,
                     stats: LayerStats, seen: set[str]) -> None:
        parts, changed = normalise_member_name(member.name)
        self.check_limits(member, parts)
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

    def times(self, member: tarfile.TarInfo) -> tuple[int, int]:
        mtime = _time_ns(member, "mtime", None)
        return _time_ns(member, "atime", mtime), mtime

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
            os.utime(fd, ns=self.times(member))
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
        self.dir_meta[entry.path] = (member.mode & 0o7777, *self.times(member))

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
        os.utime(entry.name, ns=self.times(member), dir_fd=entry.parent.fd,
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
        os.utime(entry.name, ns=self.times(member), dir_fd=fd, follow_symlinks=False)

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
            os.utime(entry.name, ns=self.times(member), dir_fd=parent.fd,
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


_ENTRY_TYPES = {tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, *_DEVICE_TYPES}


def apply_layers(layers: Iterable[BinaryIO | os.PathLike[str] | str], rootfs: Path, *,
                 limits: LayerLimits | None = None,
                 on_entry: EntryCallback | None = None) -> LayerReport:
    """Apply `layers` (lowest first; open binary streams or paths of layer blobs) onto
    `rootfs`, created if missing (it must not be a symlink).

    Raises `ImageError` naming the layer and member on a corrupt or over-limit layer; the
    partially extracted rootfs is then the caller's to discard.
    """
    return _extract(list(layers), rootfs, limits, False, on_entry)


def unpack_layer_tree(layer: BinaryIO | os.PathLike[str] | str, layerfs: Path, *,
                      limits: LayerLimits | None = None,
                      on_entry: EntryCallback | None = None) -> LayerReport:
    """One layer as an overlayfs lower directory (DUCC's `.layers/XX/<digest>/layerfs`):
    nothing is deleted; `.wh.NAME` becomes a 0/0 character device `NAME` and
    `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory. Every other entry,
    and every hostile case, is handled as `apply_layers` handles it.

    Whiteouts need root (CAP_MKNOD, and CAP_SYS_ADMIN for trusted.*): without it a layer
    that has one raises `ImageError` saying so.
    """
    return _extract([layer], layerfs, limits, True, on_entry)


def _extract(layers: list[BinaryIO | os.PathLike[str] | str], rootfs: Path,
             limits: LayerLimits | None, overlay: bool,
             on_entry: EntryCallback | None) -> LayerReport:
    rootfs.mkdir(parents=True, exist_ok=True)
    try:
        root_fd = os.open(rootfs, DIR_PATH_FLAGS)
    except OSError as exc:
        raise ImageError(f"rootfs {rootfs}: {exc.strerror}") from exc
    try:
        extractor = _Extractor(root_fd, limits or LayerLimits(), overlay=overlay,
                                   on_entry=on_entry)
        for index, layer in enumerate(layers):
            extractor.apply(index, layer)
        extractor.finish()
        return extractor.report
    finally:
        os.close(root_fd)
