"""`Catalog`: one verified catalog file read-only. What is decided at open (tables, schema,
columns, properties), lookups, listings whole and paged (hidden and refused rows skipped,
paging always advancing), hardlink groups in one scan, chunk lists, nested references, and
bad rows reported as CatalogError naming the row instead of a crash.

Catalogs are a real publish (`conftest.published`) decompressed into private copies and
edited with SQL where a test needs a broken one."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from pycvmfs.errors import CatalogError, NotFoundError, PycvmfsError
from pycvmfs.format.catalog import Flags, encode_hardlinks, md5path
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.repository.catalog import Catalog, NestedRef, ref_problem
from tests.catalog_files import Catalogs

MANY = 25  # files in /many (conftest.published)


def _open(catalogs: Catalogs, mountpoint: str = "") -> Catalog:
    text = catalogs.hash_of[mountpoint]
    return Catalog(catalogs.files[text], content_hash=ContentHash.parse(text))


def _names(catalog: Catalog, path: str) -> list[str]:
    return [name for name, _ in catalog.listdir(path)]


# --- open ------------------------------------------------------------------------------------


def test_what_is_read_at_open(catalogs: Catalogs) -> None:
    with _open(catalogs) as root, _open(catalogs, "/nested") as nested:
        assert root.root_prefix == "" and nested.root_prefix == "/nested"
        assert root.schema == (2, 5, 7) and root.revision >= 1
        assert root.last_modified > 0 and root.previous_revision is None
        assert str(root.content_hash) == catalogs.root
        assert f"{catalogs.root} at / rev {root.revision}" in repr(root)
        assert "at /nested" in repr(nested)
        assert root.statistics()["self_regular"] >= 4
        assert root.max_rowid() >= len(root.listdir(""))


@pytest.mark.parametrize(("statement", "message"), [
    ("DROP TABLE catalog", "not a CernVM-FS catalog .missing tables catalog"),
    ("UPDATE properties SET value = '3.0' WHERE key = 'schema'",
     "unsupported catalog schema 3.0"),
    ("UPDATE properties SET value = 'x.y' WHERE key = 'schema'", "bad catalog schema"),
    ("UPDATE properties SET value = '9' WHERE key = 'schema_revision'",
     "unsupported schema revision 9"),
    ("ALTER TABLE catalog DROP COLUMN uid", "lacks columns uid"),
    ("ALTER TABLE catalog DROP COLUMN mtimens", "revision 7 requires the mtimens column"),
    ("UPDATE properties SET value = 'seven' WHERE key = 'revision'",
     "property revision='seven' is not an integer"),
])
def test_a_catalog_that_cannot_be_read_is_refused_at_open(catalogs: Catalogs, statement: str,
                                                          message: str) -> None:
    catalogs.sql("", statement)
    with pytest.raises(CatalogError, match=message):
        _open(catalogs)


def test_older_schema_revisions_open_without_the_newer_columns(catalogs: Catalogs) -> None:
    catalogs.sql("", "UPDATE properties SET value = '6' WHERE key = 'schema_revision'")
    catalogs.sql("", "ALTER TABLE catalog DROP COLUMN mtimens")
    catalogs.sql("", "ALTER TABLE catalog DROP COLUMN xattr")
    catalogs.sql("", "DELETE FROM properties WHERE key = 'revision'")
    with _open(catalogs) as root:
        entry = root.lookup("/top.txt")
        assert entry is not None and entry.mtimens == 0 and entry.xattrs == ()
        assert root.revision == 0


def test_a_file_that_is_no_database_is_a_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(CatalogError):
        Catalog(tmp_path / "junk")


def test_a_corrupt_catalog_file_is_a_catalog_error(catalogs: Catalogs, tmp_path: Path
                                                   ) -> None:
    broken = tmp_path / "broken"
    shutil.copy(catalogs.files[catalogs.root], broken)
    broken.write_bytes(broken.read_bytes()[:2048])
    with pytest.raises(PycvmfsError):
        Catalog(broken).listdir("")


# --- entries ---------------------------------------------------------------------------------


def test_lookups(catalogs: Catalogs) -> None:
    with _open(catalogs) as root, _open(catalogs, "/nested") as nested:
        top = root.lookup("")
        assert top is not None and top.is_dir
        entry = root.lookup("/top.txt")
        assert entry is not None and entry.is_regular and entry.size == len("top.txt")
        assert entry.rowid > 0 and entry.content_hash is not None
        sym = root.lookup("/sym")
        assert sym is not None and sym.is_symlink and sym.symlink == "top.txt"
        assert root.lookup("/missing") is None
        assert root.lookup("/nested/in.txt") is None  # another catalog's row
        mountpoint, nested_root = root.lookup("/nested"), nested.lookup("/nested")
        assert mountpoint is not None and mountpoint.is_nested_mountpoint
        assert nested_root is not None and nested_root.is_nested_root


def test_listdir_and_pages_agree_and_pages_advance(catalogs: Catalogs) -> None:
    with _open(catalogs) as root:
        whole = _names(root, "/many")
        assert sorted(whole) == [f"f{i:02}" for i in range(MANY)]
        paged, after, pages = [], 0, 0
        while True:
            page = root.listdir_page("/many", after, 4)
            assert page.last_rowid > after or not page.entries
            assert [e.rowid for e in page.entries] == sorted(e.rowid for e in page.entries)
            paged += [entry.name for entry in page.entries]
            after, pages = page.last_rowid, pages + 1
            if not page.more:
                break
        assert sorted(paged) == sorted(whole) and pages == -(-MANY // 4)
        full = root.listdir_page("/many", 0, MANY)  # exactly full: one more (empty) page
        assert full.more and len(full.entries) == MANY
        empty = root.listdir_page("/many", full.last_rowid, MANY)
        assert empty.entries == [] and not empty.more and empty.last_rowid == full.last_rowid
        assert root.listdir_page("/top.txt", 0, 10).entries == []


def test_hidden_and_refused_rows_are_skipped_but_paging_covers_them(catalogs: Catalogs
                                                                    ) -> None:
    catalogs.sql("", "UPDATE catalog SET flags = flags | ? WHERE name = 'f00'",
                 int(Flags.HIDDEN))
    catalogs.sql("", "UPDATE catalog SET name = 'f01-renamed' WHERE name = 'f01'")
    with _open(catalogs) as root:
        assert set(_names(root, "/many")) == {f"f{i:02}" for i in range(2, MANY)}
        first = root.listdir_page("/many", 0, 2)  # only the two skipped rows
        assert first.entries == [] and first.more and first.last_rowid > 0
        rest = root.listdir_page("/many", first.last_rowid, MANY)
        assert [entry.name for entry in rest.entries] == [f"f{i:02}" for i in range(2, MANY)]


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "nul\0", "x" * 256])
def test_listings_skip_rows_with_unusable_names(catalogs: Catalogs, name: str) -> None:
    path = f"/{name}"
    catalogs.sql("", "UPDATE catalog SET name = ?, md5path_1 = ?, md5path_2 = ? "
                 "WHERE name = 'top.txt'", name, *md5path(path))
    tree = catalogs.tree()
    names = [child for child, _ in tree.listdir("")]
    assert name not in names and "nested" in names


def test_listings_skip_rows_whose_md5path_is_not_their_path(catalogs: Catalogs) -> None:
    catalogs.sql("", "UPDATE catalog SET name = 'renamed.txt' WHERE name = 'top.txt'")
    tree = catalogs.tree()
    assert "renamed.txt" not in [child for child, _ in tree.listdir("")]
    page = tree.root.listdir_page("", 0, 100)
    assert "renamed.txt" not in [entry.name for entry in page.entries]
    assert page.last_rowid > 0 and not page.more


def test_text_stored_as_blob_and_names_that_are_not_utf8(catalogs: Catalogs) -> None:
    catalogs.sql("", "UPDATE catalog SET name = CAST(name AS BLOB), "
                 "symlink = CAST(symlink AS BLOB) WHERE name = 'sym'")
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")
    catalogs.sql("", "UPDATE catalog SET name = ?, md5path_1 = ?, md5path_2 = ? "
                 "WHERE name = 'top.txt'", b"caf\xe9", *md5path(f"/{odd}"))
    with _open(catalogs) as root:
        names = _names(root, "")
        assert "sym" in names and odd in names
        sym = root.lookup("/sym")
        assert sym is not None and sym.symlink == "top.txt"
        found = root.lookup(f"/{odd}")
        assert found is not None and found.name == odd


@pytest.mark.parametrize(("column", "value"), [("flags", (7 << 8) | int(Flags.FILE)),
                                                ("hash", b"short")])
def test_a_bad_row_is_a_catalog_error_naming_it(catalogs: Catalogs, column: str,
                                                value: object) -> None:
    catalogs.sql("", f"UPDATE catalog SET {column} = ? WHERE name = 'top.txt'", value)
    with _open(catalogs) as root:
        with pytest.raises(CatalogError, match="bad row 'top.txt'"):
            root.lookup("/top.txt")
        with pytest.raises(CatalogError, match="bad row 'top.txt'"):
            root.listdir("")
        assert root.lookup("/sym") is not None  # the other rows still read


def test_hardlink_groups_in_one_scan(catalogs: Catalogs) -> None:
    with _open(catalogs) as root:
        rows = root.hardlinked(10)
        assert rows is not None
        assert sorted(row.name for row in rows) == ["hard-a", "hard-b"]
        assert len({row.hardlink_group for row in rows}) == 1 and rows[0].hardlink_group
        assert root.hardlinked(1) is None  # more than the limit
    catalogs.sql("", "UPDATE catalog SET hardlinks = ? WHERE name = 'top.txt'",
                 encode_hardlinks(2**31 + 5, 2))  # stored negative: found too
    with _open(catalogs) as root:
        rows = root.hardlinked(10)
        assert rows is not None and "top.txt" in [row.name for row in rows]


# --- chunks ----------------------------------------------------------------------------------


def test_chunk_lists(catalogs: Catalogs) -> None:
    with _open(catalogs) as root:
        entry = root.lookup("/big.bin")
        assert entry is not None and entry.is_chunked and entry.size > 64 * 1024
        chunks = root.chunks("/big.bin")
        assert len(chunks) > 1 and chunks[0].offset == 0
        assert all(a.offset + a.size == b.offset for a, b in zip(chunks, chunks[1:],
                                                                  strict=False))
        assert sum(chunk.size for chunk in chunks) == entry.size
        assert all(c.content_hash.algorithm == entry.hash_algorithm for c in chunks)
        assert root.chunks("/big.bin", Algorithm.SHA1) == chunks
        assert root.chunks("/top.txt") == []
        with pytest.raises(NotFoundError):
            root.chunks("/missing")
        assert root.chunks("/missing", Algorithm.SHA1) == []  # no lookup when told


@pytest.mark.parametrize(("statement", "message"), [
    ("UPDATE chunks SET hash = 'text'", "bad chunk row"),
    ("UPDATE chunks SET hash = x'0102'", "chunk of '/big.bin'"),
    ("UPDATE chunks SET offset = 'zero'", "bad chunk row"),
])
def test_bad_chunk_rows_are_catalog_errors(catalogs: Catalogs, statement: str, message: str
                                           ) -> None:
    catalogs.sql("", statement)
    with _open(catalogs) as root, pytest.raises(CatalogError, match=message):
        root.chunks("/big.bin")


def test_tables_that_may_be_missing(catalogs: Catalogs) -> None:
    for table in ("chunks", "statistics", "nested_catalogs", "bind_mountpoints"):
        catalogs.sql("", f"DROP TABLE {table}")
    with _open(catalogs) as root:
        assert root.chunks("/big.bin") == [] and root.statistics() == {}
        assert root.nested_catalogs() == [] and root.broken_refs() == {}
    catalogs.sql("", "DELETE FROM catalog")
    with _open(catalogs) as root:
        assert root.max_rowid() == 0 and root.listdir("") == []


# --- nested references -----------------------------------------------------------------------


def test_nested_references(catalogs: Catalogs) -> None:
    with _open(catalogs) as root, _open(catalogs, "/nested") as nested:
        [ref] = root.nested_catalogs()
        assert ref == NestedRef("/nested", ContentHash.parse(catalogs.hash_of["/nested"]),
                                ref.size)
        assert ref.size > 0 and root.bind_mountpoints() == [] and root.broken_refs() == {}
        assert [r.path for r in nested.nested_catalogs()] == ["/nested/deeper/leaf"]


def test_bad_references_are_refused_with_their_reason(catalogs: Catalogs) -> None:
    catalogs.sql("", "INSERT INTO nested_catalogs VALUES ('/bad-hash', 'zz', 0)")
    catalogs.sql("", "INSERT INTO nested_catalogs VALUES ('/nested/inner', ?, 0)",
                 catalogs.root)
    catalogs.sql("", "INSERT INTO bind_mountpoints VALUES ('/bound', ?, 7)", catalogs.root)
    with _open(catalogs) as root:
        broken = root.broken_refs()
        assert "bad catalog hash 'zz'" in broken["/bad-hash"]
        assert "inside nested catalog '/nested'" in broken["/nested/inner"]
        assert [r.path for r in root.nested_catalogs()] == ["/nested", "/bound"]
        assert [(r.path, r.size) for r in root.bind_mountpoints()] == [("/bound", 7)]
    catalogs.sql("", "INSERT INTO nested_catalogs VALUES (NULL, 'zz', 0)")
    with _open(catalogs) as root, pytest.raises(CatalogError, match="bad nested_catalogs row"):
        root.nested_catalogs()


def test_ref_problem_rules() -> None:
    assert ref_problem("/a", "") is None and ref_problem("/a/b", "/a") is None
    assert ref_problem("/a", "/a") and ref_problem("/b", "/a") and ref_problem("", "")
    assert ref_problem("/a/./b", "") and ref_problem("/a/", "") and ref_problem("/ab", "/a")


# --- lifecycle -------------------------------------------------------------------------------


def test_release_once_then_close(catalogs: Catalogs) -> None:
    released: list[int] = []
    catalog = Catalog(catalogs.files[catalogs.root], on_release=lambda: released.append(1))
    catalog.release()
    catalog.release()
    assert released == [1] and catalog.lookup("/top.txt") is not None  # still reads
    with catalog:
        pass
    assert released == [1]
    with pytest.raises(CatalogError):
        catalog.lookup("/top.txt")
    assert "Catalog" in repr(catalog) and str(catalogs.files[catalogs.root]) in repr(catalog)


def test_the_file_is_opened_read_only(catalogs: Catalogs) -> None:
    with _open(catalogs) as root, pytest.raises(sqlite3.OperationalError, match="readonly"):
        root._conn.execute("DELETE FROM catalog")
