"""Tar members judged before anything is written: names cleaned lexically, tar-bomb limits
counted, times read exactly.

Pure (no I/O), so the rules that keep a hostile layer inside its rootfs and within its
budget can be read and tested on their own.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from pycvmfs.images.layer_stream import LimitExceededError

__all__ = ["LayerLimits", "MemberBudget", "member_times", "normalise_member_name"]

GIB = 1 << 30


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


class MemberBudget:
    """Counts members and declared file sizes over all layers of one extraction."""

    def __init__(self, limits: LayerLimits) -> None:
        self.limits = limits
        self.members = 0
        self.declared_bytes = 0

    def check(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        """Raise `LimitExceededError` if `member` (name cleaned into `parts`) crosses a
        limit."""
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


def member_times(member: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in nanoseconds: PAX atime or the mtime, PAX mtime or the header's."""
    mtime = _time_ns(member, "mtime", None)
    return _time_ns(member, "atime", mtime), mtime
