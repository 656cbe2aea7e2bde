"""Apply container image layers (OCI / Docker tar diffs) to a directory, safely.

`apply_layers(layers, rootfs, limits=...)` streams each layer tar (plain, gzip or zstd,
detected by magic bytes) onto `rootfs` in order, with OCI/Docker semantics, and returns a
`LayerReport`: per-layer counts plus one `Finding` (layer, member, path, what, why) for every
entry that was neutralised, skipped or is worth a reviewer's look. `unpack_layer_tree` writes
one layer as an overlayfs lower directory instead (DUCC's `layerfs`: whiteouts recorded, not
applied). The entry points live here with the contract below; the work is split by
concern: `layer_extractor` (the tar extractor: entry writers, whiteouts, hardlinks),
`layer_members` (member names cleaned, limits counted), `layer_stream` (compression, byte
budgets), `rootfs_tree` (symlink-safe path resolution), `layer_report` (what is reported).

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

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from pycvmfs.errors import ImageError
from pycvmfs.images.layer_extractor import EntryCallback, LayerExtractor
from pycvmfs.images.layer_members import LayerLimits, MemberBudget
from pycvmfs.images.layer_report import LayerReport
from pycvmfs.images.rootfs_tree import DIR_PATH_FLAGS, RootTree

__all__ = ["apply_layers", "unpack_layer_tree"]


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
        extractor = LayerExtractor(RootTree(root_fd), MemberBudget(limits or LayerLimits()),
                                   overlay=overlay, on_entry=on_entry)
        for index, layer in enumerate(layers):
            extractor.apply(index, layer)
        extractor.finish()
        return extractor.report
    finally:
        os.close(root_fd)
