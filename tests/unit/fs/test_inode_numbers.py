"""Inode numbers derived from catalog rows: unique across catalogs, the same for the same
catalog met again, shared by hardlink members only when type, content and size agree
(a hostile catalog's mixed group never serves one file's bytes under another's name)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycvmfs.format.catalog import encode_hardlinks
from pycvmfs.fs.inodes import ROOT_INODE, InodeTable
from tests.catalog_files import Catalogs
from tests.publish_helpers import Keys, run_publish


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    base = tmp_path_factory.mktemp("inodes")
    source = base / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("same bytes")
    os.link(source / "a.txt", source / "a-link")
    (source / "other.txt").write_text("other bytes, other size")
    (source / "twin.txt").write_text("same bytes")  # same content, not a hardlink
    os.symlink("a.txt", source / "sym")
    (source / "sub" / ".cvmfscatalog").write_bytes(b"")
    (source / "sub" / "inner.txt").write_text("inner")
    run_publish(source, base / "storage", keys)
    return base / "storage"


@pytest.fixture
def catalogs(published: Path, tmp_path: Path) -> Catalogs:
    return Catalogs(published, tmp_path / "catalogs")


def _numbers(catalogs: Catalogs, table: InodeTable, *paths: str) -> dict[str, int]:
    tree = catalogs.tree()
    out = {}
    for path in paths:
        entry, catalog = tree.lookup(path)
        out[path] = table.number(path, entry, catalog)
    return out


def test_numbers_are_unique_and_stable(catalogs: Catalogs) -> None:
    table = InodeTable()
    paths = ("/a.txt", "/other.txt", "/twin.txt", "/sym", "/sub", "/sub/inner.txt")
    first = _numbers(catalogs, table, *paths)
    assert len(set(first.values())) == len(paths) and ROOT_INODE not in first.values()
    assert _numbers(catalogs, table, *paths) == first  # a fresh tree: same catalogs, same
    assert table.count() == 1  # numbering recorded nothing
    assert table.highest() >= max(first.values())


def test_real_hardlinks_share_one_number(catalogs: Catalogs) -> None:
    numbers = _numbers(catalogs, InodeTable(), "/a.txt", "/a-link", "/twin.txt")
    assert numbers["/a.txt"] == numbers["/a-link"] != numbers["/twin.txt"]


def test_a_mixed_hardlink_group_shares_only_between_equal_members(
        catalogs: Catalogs, caplog: pytest.LogCaptureFixture) -> None:
    with catalogs.connect("") as db:
        group = db.execute("SELECT hardlinks FROM catalog WHERE name = 'a.txt'").fetchone()[0]
        db.execute("UPDATE catalog SET hardlinks = ? WHERE name IN ('other.txt', 'sym', "
                   "'twin.txt')", (group,))
    table = InodeTable(tracking=True)
    tree = catalogs.tree()
    handed = {}
    for path in ("/sym", "/other.txt", "/a.txt", "/twin.txt", "/a-link"):
        entry, catalog = tree.lookup(path)
        handed[path] = table.hand_out(path, entry, catalog)
    assert handed["/a.txt"] == handed["/a-link"] == handed["/twin.txt"]  # same bytes: may
    assert len({handed["/sym"], handed["/other.txt"], handed["/a.txt"]}) == 3
    assert any("mixes entries" in record.message for record in caplog.records)
    assert table.forget([(handed["/sym"], 1)]) == [handed["/sym"]]
    assert table.path_of(handed["/a.txt"]) == "/a.txt"


def test_rows_without_a_usable_rowid_get_private_numbers(catalogs: Catalogs) -> None:
    with catalogs.connect("") as db:
        db.execute("UPDATE catalog SET rowid = -5 WHERE name = 'other.txt'")
        db.execute("UPDATE catalog SET rowid = 0 WHERE name = 'twin.txt'")
    numbers = _numbers(catalogs, InodeTable(), "/a.txt", "/other.txt", "/twin.txt", "/sym")
    assert len(set(numbers.values())) == 4


def test_hardlink_groups_in_a_huge_catalog_fall_back_to_own_numbers(
        monkeypatch: pytest.MonkeyPatch, catalogs: Catalogs) -> None:
    monkeypatch.setattr("pycvmfs.fs.inodes.MAX_HARDLINKED_ROWS", 1)
    numbers = _numbers(catalogs, InodeTable(), "/a.txt", "/a-link")
    assert numbers["/a.txt"] != numbers["/a-link"]


def test_encode_hardlinks_roundtrip_for_groups_above_2_31() -> None:
    assert encode_hardlinks(2**31 + 5, 2) < 0  # stored signed: the scan must find these too
