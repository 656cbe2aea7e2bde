"""The reader's SQL statements (`catalog_sql`): every template has exactly its one
`{columns}` slot and prepares against a real catalog, the hot statements are index
searches (a listing page is a range scan of the parent index, never a scan of the table
or a sort), the hardlink scan finds groups however the id was stored, and the history
statements read what the publisher writes."""

from __future__ import annotations

import sqlite3
import string
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.format.catalog import ENTRY_COLUMNS, encode_hardlinks, md5path
from pycvmfs.format.history import HISTORY_DDL, TAG_COLUMNS, Tag
from pycvmfs.repository import catalog_sql as sql
from tests.catalog_files import Catalogs

TEMPLATES = ("ENTRY_BY_MD5PATH", "ENTRIES_BY_PARENT", "ENTRIES_BY_PARENT_AFTER", "HARDLINKED")
HISTORY_NAMES = {"TAG_SELECT_COLUMNS", "TAG_BY_NAME", "ALL_TAGS", "TAG_NAMES"}
COLUMNS = ", ".join(("rowid", *ENTRY_COLUMNS))


@pytest.fixture
def db(catalogs: Catalogs) -> Iterator[sqlite3.Connection]:
    with catalogs.connect("") as conn:
        yield conn
    conn.close()


def _plan(db: sqlite3.Connection, statement: str, params: tuple[object, ...]) -> str:
    return " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement, params))


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_have_one_columns_slot(name: str) -> None:
    fields = [f for _, f, _, _ in string.Formatter().parse(getattr(sql, name)) if f]
    assert fields == ["columns"]


def test_every_statement_prepares_against_a_catalog(db: sqlite3.Connection) -> None:
    names = [n for n in dir(sql) if n.isupper() and isinstance(getattr(sql, n), str)]
    catalog_statements = [n for n in names if n not in HISTORY_NAMES]
    assert len(catalog_statements) >= 12
    for name in catalog_statements:
        statement = getattr(sql, name)
        if name in TEMPLATES:
            statement = statement.format(columns=COLUMNS)
        db.execute("EXPLAIN " + statement, (0,) * statement.count("?"))


def test_lookups_and_pages_are_index_searches(db: sqlite3.Connection) -> None:
    entry = _plan(db, sql.ENTRY_BY_MD5PATH.format(columns=COLUMNS), md5path("/top.txt"))
    assert entry.startswith("SEARCH catalog USING INDEX sqlite_autoindex_catalog_1")
    page = _plan(db, sql.ENTRIES_BY_PARENT_AFTER.format(columns=COLUMNS),
                 (*md5path("/many"), 0, 10))
    assert "SEARCH catalog USING INDEX idx_catalog_parent" in page and "rowid>?" in page
    assert "TEMP B-TREE" not in page  # rows come in rowid order: no sort of the directory
    children = _plan(db, sql.ENTRIES_BY_PARENT.format(columns=COLUMNS), md5path("/many"))
    assert "USING INDEX idx_catalog_parent" in children
    chunks = _plan(db, sql.CHUNKS_BY_MD5PATH, md5path("/big.bin"))
    assert chunks.startswith("SEARCH chunks USING INDEX") and "TEMP B-TREE" not in chunks


def test_a_page_is_the_next_rows_of_one_directory(db: sqlite3.Connection) -> None:
    statement = sql.ENTRIES_BY_PARENT_AFTER.format(columns="rowid, name")
    rows = db.execute(statement, (*md5path("/many"), 0, 1000)).fetchall()
    rowids = [rowid for rowid, _ in rows]
    assert rowids == sorted(rowids) and len(rows) == 25
    page = db.execute(statement, (*md5path("/many"), rowids[4], 3)).fetchall()
    assert page == rows[5:8]


def test_the_hardlink_scan_finds_groups_however_they_were_stored(db: sqlite3.Connection
                                                                 ) -> None:
    db.execute("UPDATE catalog SET hardlinks = ? WHERE name = 'top.txt'",
               (encode_hardlinks(2**31 + 5, 2),))  # a group id stored as a negative number
    db.execute("UPDATE catalog SET hardlinks = 7 WHERE name = 'sym'")  # a link count only
    statement = sql.HARDLINKED.format(columns="name")
    assert sorted(r[0] for r in db.execute(statement, (100,))) == ["hard-a", "hard-b",
                                                                   "top.txt"]
    assert len(db.execute(statement, (2,)).fetchall()) == 2  # the limit is honoured


def test_max_rowid_and_the_reference_tables(db: sqlite3.Connection) -> None:
    assert db.execute(sql.MAX_ROWID).fetchone()[0] >= 10
    assert [row[0] for row in db.execute(sql.NESTED_CATALOGS)] == ["/nested"]
    assert db.execute(sql.BIND_MOUNTPOINTS).fetchall() == []
    assert {"schema", "schema_revision"} <= {k for k, _ in db.execute(sql.SELECT_PROPERTIES)}
    assert {row[1] for row in db.execute(sql.CATALOG_COLUMNS)} >= set(ENTRY_COLUMNS)
    assert "catalog" in {row[0] for row in db.execute(sql.LIST_TABLES)}


def test_history_statements_read_tags(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "history") as db:
        for statement in HISTORY_DDL:
            db.execute(statement)
        db.execute("INSERT INTO branches VALUES ('', NULL, 0)")
        tags = [Tag("v1", "a" * 40, 1, 100, "first"), Tag("trunk", "b" * 40, 2, 200),
                Tag("v2", "b" * 40, 2, 200, "second", size=4096)]
        db.executemany(f"INSERT INTO tags ({', '.join(TAG_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(TAG_COLUMNS))})", [t.row() for t in tags])
        assert Tag.from_row(db.execute(sql.TAG_BY_NAME, ("v2",)).fetchone()) == tags[2]
        assert db.execute(sql.TAG_BY_NAME, ("nope",)).fetchone() is None
        assert [Tag.from_row(r).name for r in db.execute(sql.ALL_TAGS)] == ["trunk", "v2", "v1"]
        assert [r[0] for r in db.execute(sql.TAG_NAMES)] == ["trunk", "v1", "v2"]
    db.close()
