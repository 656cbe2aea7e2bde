"""Build a small SQLite database in a temporary file and return its bytes.

Catalogs and the history database are shipped as whole, self-contained files: the
reference client opens them read-only without journals, so they are written in
rollback-journal mode (never WAL) and committed before their bytes are taken.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pycvmfs.errors import PublishError

Insert = tuple[str, Iterable[Sequence[object]]]


def sqlite_image(tmp_dir: Path, ddl: Iterable[str], inserts: Iterable[Insert]) -> bytes:
    """Create tables from `ddl`, run each (sql, rows) insert, return the file's bytes."""
    fd, tmp = tempfile.mkstemp(prefix="sqlite.", dir=tmp_dir)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("BEGIN")
            for statement in ddl:
                db.execute(statement)
            for sql, rows in inserts:
                db.executemany(sql, rows)
            db.execute("COMMIT")
        finally:
            db.close()
        with open(tmp, "rb") as fh:
            return fh.read()
    except sqlite3.Error as exc:
        raise PublishError(f"cannot write database {tmp}: {exc}") from exc
    except OSError as exc:
        raise PublishError(f"cannot write database {tmp}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def read_sqlite_rows(image: bytes, sql: str) -> list[tuple[Any, ...]]:
    """Run one query over a database given as bytes (in memory: no disk space needed)."""
    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(image)
        return list(db.execute(sql))
    except sqlite3.Error as exc:
        raise PublishError(f"cannot read database: {exc}") from exc
    finally:
        db.close()
