"""The decompressed catalogs of a publish, editable with SQL, behind a `CatalogTree` loader
that maps hashes to the edited files (no signatures, no hash checks: for tests of what the
tree and the VFS do with hostile rows; `tests/hostile_repo.py` forges signed repositories)."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path

from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.manifest import parse_manifest
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.catalog_tree import CatalogTree


class Catalogs:
    """The decompressed catalogs of a publish, by mount point, editable with SQL."""

    def __init__(self, storage: Path, work: Path) -> None:
        manifest, _ = parse_manifest((storage / ".cvmfspublished").read_bytes())
        self.files: dict[str, Path] = {}  # hash text -> file
        self.hash_of: dict[str, str] = {}  # mount point -> hash text
        work.mkdir()
        pending = [("", str(manifest.root_hash))]
        while pending:
            mountpoint, text = pending.pop()
            raw = (storage / ContentHash.parse(text).object_path(Suffix.CATALOG)).read_bytes()
            path = work / text
            path.write_bytes(zlib.decompress(raw))
            self.files[text], self.hash_of[mountpoint] = path, text
            with sqlite3.connect(path) as db:
                pending += [(str(p), str(h)) for p, h in
                            db.execute("SELECT path, sha1 FROM nested_catalogs")]
        self.root = self.hash_of[""]

    def connect(self, mountpoint: str) -> sqlite3.Connection:
        """A connection to the catalog at `mountpoint` (use as a context: commits)."""
        return sqlite3.connect(self.files[self.hash_of[mountpoint]])

    def sql(self, mountpoint: str, statement: str, *params: object) -> None:
        with self.connect(mountpoint) as db:
            db.execute(statement, params)

    def loader(self) -> Callable[[ContentHash, str], Catalog]:
        def load(content_hash: ContentHash, mountpoint: str) -> Catalog:
            return Catalog(self.files[str(content_hash)], content_hash=content_hash)
        return load

    def tree(self) -> CatalogTree:
        return CatalogTree(ContentHash.parse(self.root), self.loader())
