"""The tag database of a repository (object `H` of the manifest, fact sheet 7): named
revisions and when they were published, for `--tag`, `CVMFS_REPOSITORY_TAG` and
`CVMFS_REPOSITORY_DATE`.

Downloaded and verified through the repository's `ObjectLoader` on first use, then queried
read-only (`immutable=1`: SQLite takes no locks on a file nobody writes).

Thread-safety: every method may be called from several threads.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

from pycvmfs.errors import CatalogError, NotFoundError
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.repository import catalog_sql as sql
from pycvmfs.repository.objects import ObjectLoader


class History:
    """The tags of one repository (none when its manifest names no history)."""

    def __init__(self, loader: ObjectLoader, content_hash: ContentHash | None) -> None:
        self._loader = loader
        self._hash = content_hash
        self._path: Path | None = None
        self._lock = threading.Lock()

    def _query(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if self._hash is None:
            raise NotFoundError(f"repository {self._loader.fqrn} has no history (no H key)")
        with self._lock:
            if self._path is None:
                self._path = self._loader.database(self._hash, Suffix.HISTORY, "history")
        uri = f"file:{quote(os.fspath(self._path))}?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True)
            try:
                return conn.execute(statement, params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise CatalogError(f"history database {self._hash}: {exc}") from exc

    def tags(self) -> list[Tag]:
        """All tags, newest revision first ([] without a history)."""
        if self._hash is None:
            return []
        return [Tag.from_row(row) for row in self._query(sql.ALL_TAGS)]

    def tag(self, name: str) -> Tag:
        rows = self._query(sql.TAG_BY_NAME, (name,))
        if not rows:
            names = [str(row[0]) for row in self._query(sql.TAG_NAMES)]
            raise NotFoundError(f"repository {self._loader.fqrn}: no tag {name!r}; "
                                f"available: {', '.join(names) or '(none)'}")
        return Tag.from_row(rows[0])

    def tag_at(self, timestamp: int) -> Tag:
        """The trunk tag of the highest revision published at or before `timestamp`."""
        candidates = [t for t in self.tags() if t.branch == "" and t.timestamp <= timestamp]
        if not candidates:
            moment = dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()
            raise NotFoundError(f"repository {self._loader.fqrn}: no revision published "
                                f"at or before {moment}")
        return max(candidates, key=lambda t: t.revision)
