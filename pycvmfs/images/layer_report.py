"""What applying layers reports: per-layer counts and one `Finding` per entry worth a look.

Kept apart from the extractor so callers (ingest, the CLI report, tests) read results
without importing the code that writes files. The kinds are explained in `layers.py`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Finding", "FindingKind", "LayerReport", "LayerStats"]


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
