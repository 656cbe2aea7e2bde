"""Our catalogs and history next to the reference publisher's (oracle.local, made by
cvmfs_swissknife 2.12): the same tables, columns, constraints, counters and properties."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from pycvmfs.format.manifest import parse_manifest
from tests.fixtures_path import ORACLE_REPO, requires_fixtures
from tests.publish_helpers import Keys, make_full_tree, run_publish

pytestmark = requires_fixtures


def _open(storage: Path, text: str, suffix: str) -> sqlite3.Connection:
    raw = zlib.decompress((storage / "data" / text[:2] / (text[2:] + suffix)).read_bytes())
    db = sqlite3.connect(":memory:")
    db.deserialize(raw)
    return db


def _schema(db: sqlite3.Connection) -> dict[str, str]:
    rows = db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
    return dict(rows)  # the exact text: our DDL is the reference's, spacing included


def _roots(storage: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    manifest, _ = parse_manifest((storage / ".cvmfspublished").read_bytes())
    return (_open(storage, str(manifest.root_hash), "C"),
            _open(storage, str(manifest.history), "H"))


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    base = tmp_path_factory.mktemp("vs-reference")
    run_publish(make_full_tree(base / "src"), base / "repo", keys, tag="named")
    return base / "repo"


def test_catalog_schema_identical(ours: Path) -> None:
    assert _schema(_roots(ours)[0]) == _schema(_roots(ORACLE_REPO)[0])


def test_history_schema_identical(ours: Path) -> None:
    assert _schema(_roots(ours)[1]) == _schema(_roots(ORACLE_REPO)[1])


def test_same_statistics_and_properties(ours: Path) -> None:
    mine, theirs = _roots(ours)[0], _roots(ORACLE_REPO)[0]
    counters = "SELECT counter FROM statistics ORDER BY counter"
    assert list(mine.execute(counters)) == list(theirs.execute(counters))
    keys = {k for (k,) in theirs.execute("SELECT key FROM properties")} - {"previous_revision"}
    assert keys <= {k for (k,) in mine.execute("SELECT key FROM properties")} | {"TTL"}
    history = "SELECT key FROM properties WHERE key != 'previous_revision' ORDER BY key"
    assert list(_roots(ours)[1].execute(history)) == list(_roots(ORACLE_REPO)[1].execute(history))
    pragmas = ("page_size", "encoding", "auto_vacuum", "user_version")
    assert [mine.execute(f"PRAGMA {p}").fetchone() for p in pragmas] == \
        [theirs.execute(f"PRAGMA {p}").fetchone() for p in pragmas]
