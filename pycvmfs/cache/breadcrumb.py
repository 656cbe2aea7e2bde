"""The breadcrumb `<cache>/cvmfschecksum.<fqrn>`: last root catalog loaded (fact sheet 9.4).

Format: ASCII, no newline, `<root catalog textual hash>T<manifest timestamp>R<revision>`.
Written atomically (temp file in the same directory, mode 0600, rename) after a new
root catalog from the server was loaded; read at mount to allow offline mounts.
Parsing is tolerant: anything unreadable gives None (a breadcrumb is a hint, never an
error); a missing `R<revision>` part (older clients) reads as revision 0, and a trailing
catalog suffix `C` on the hash is accepted.

Thread- and process-safety: writers race only on the final rename, and each rename
installs a complete file; readers see either the old or the new breadcrumb.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.format.hashes import ContentHash

BREADCRUMB_PREFIX = "cvmfschecksum."
BREADCRUMB_MODE = 0o600
MAX_BREADCRUMB_BYTES = 4096  # a valid one is < 100 bytes; refuse to read garbage blobs


@dataclass(frozen=True, slots=True)
class Breadcrumb:
    catalog_hash: ContentHash
    timestamp: int
    revision: int

    def serialize(self) -> str:
        return f"{self.catalog_hash}T{self.timestamp}R{self.revision}"

    @classmethod
    def parse(cls, text: str) -> Breadcrumb | None:
        head, sep, tail = text.strip().partition("T")
        if not sep:
            return None
        ts_text, has_rev, rev_text = tail.partition("R")
        if not ts_text.isdigit() or (has_rev and not rev_text.isdigit()):
            return None
        if head.endswith("C"):
            head = head[:-1]
        try:
            catalog_hash = ContentHash.parse(head)
        except ValueError:
            return None
        return cls(catalog_hash, int(ts_text), int(rev_text) if has_rev else 0)


def breadcrumb_path(directory: Path | str, fqrn: str) -> Path:
    return Path(directory) / f"{BREADCRUMB_PREFIX}{fqrn}"


def read_breadcrumb(directory: Path | str, fqrn: str) -> Breadcrumb | None:
    try:
        with open(breadcrumb_path(directory, fqrn), "rb") as fh:
            raw = fh.read(MAX_BREADCRUMB_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_BREADCRUMB_BYTES:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return Breadcrumb.parse(text)


def write_breadcrumb(directory: Path | str, fqrn: str, crumb: Breadcrumb) -> Path:
    target = breadcrumb_path(directory, fqrn)
    fd, temp = tempfile.mkstemp(prefix=f".{BREADCRUMB_PREFIX}", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            os.fchmod(fh.fileno(), BREADCRUMB_MODE)
            fh.write(crumb.serialize())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return target
