"""The breadcrumb `<cache>/cvmfschecksum.<fqrn>`: last root catalog loaded (fact sheet 9.4).

Format: ASCII, no newline, `<root catalog textual hash>T<manifest timestamp>R<revision>`.
Written atomically (temp file in the same directory, mode 0600, rename, all relative to
the checked cache directory of `safe_dir`) after a new root catalog from the server was
loaded; read at mount to allow offline mounts (only a regular file of the cache owner).
Parsing is tolerant: anything unreadable gives None (a breadcrumb is a hint, never an
error); a missing `R<revision>` part (older clients) reads as revision 0, and a trailing
catalog suffix `C` on the hash is accepted.

Thread- and process-safety: writers race only on the final rename, and each rename
installs a complete file; readers see either the old or the new breadcrumb.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pycvmfs.cache.safe_dir import SafeDir
from pycvmfs.cache.store import as_safe_dir
from pycvmfs.errors import PycvmfsError
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


def read_breadcrumb(directory: Path | str | SafeDir, fqrn: str) -> Breadcrumb | None:
    """The breadcrumb of `fqrn`, or None (missing, unreadable, not a file of the cache
    owner, or a cache directory that cannot be opened safely)."""
    try:
        root, owned = as_safe_dir(directory)
    except (OSError, PycvmfsError):
        return None
    try:
        raw = root.read_file(f"{BREADCRUMB_PREFIX}{fqrn}", MAX_BREADCRUMB_BYTES)
    except (OSError, PycvmfsError, ValueError):
        return None
    finally:
        if owned:
            root.close()
    if raw is None or len(raw) > MAX_BREADCRUMB_BYTES:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return Breadcrumb.parse(text)


def write_breadcrumb(directory: Path | str | SafeDir, fqrn: str, crumb: Breadcrumb) -> Path:
    """Replace the breadcrumb atomically (temp file + rename relative to the checked
    directory: a planted link is replaced, never written through)."""
    root, owned = as_safe_dir(directory)
    try:
        root.write_file(f"{BREADCRUMB_PREFIX}{fqrn}", crumb.serialize().encode("ascii"),
                        BREADCRUMB_MODE)
        return root.path / f"{BREADCRUMB_PREFIX}{fqrn}"
    finally:
        if owned:
            root.close()
