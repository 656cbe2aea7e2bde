"""Hostile catalog graphs and rows: a walk through nested catalogs is bounded and a loop is a
named integrity error (EIO for that subtree) instead of a hang; a nested catalog must be
the catalog of its directory; listings serve only rows whose names and md5paths are sane.

Catalogs are a real publish, decompressed and rewritten with SQL (the tree's loader maps
hashes to the rewritten files; hash checks are the loader's job and tested elsewhere)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pycvmfs.errors import CatalogError, PycvmfsError
from pycvmfs.format.catalog import md5path
from pycvmfs.repository.catalog import Catalog, ref_problem
from tests.catalog_files import Catalogs
from tests.publish_helpers import Keys, run_publish

WALK_DEADLINE_S = 5.0  # a walk that loops would never return


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    base = tmp_path_factory.mktemp("graph")
    source = base / "src"
    for name in ("top.txt", "nested/in.txt", "nested/deeper/leaf/x", "nested/deeper/y"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    (source / "nested/.cvmfscatalog").write_bytes(b"")
    (source / "nested/deeper/leaf/.cvmfscatalog").write_bytes(b"")
    run_publish(source, base / "storage", keys)
    return base / "storage"


@pytest.fixture
def catalogs(published: Path, tmp_path: Path) -> Catalogs:
    return Catalogs(published, tmp_path / "catalogs")


def _bounded(call: Callable[[], object]) -> object:
    """Run `call` in a thread; fail (instead of hanging the suite) if it does not end."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WALK_DEADLINE_S)
    assert not thread.is_alive(), "the walk did not end: a catalog loop hangs it"
    return result[0]


def test_the_untouched_graph_resolves(catalogs: Catalogs) -> None:
    tree = catalogs.tree()
    assert tree.lookup("/nested/deeper/leaf/x").entry.size == len("nested/deeper/leaf/x")
    assert tree.resolve("/nested/deeper/leaf/missing") is None
    assert set(tree.attached()) == {"", "/nested", "/nested/deeper/leaf"}


def test_a_catalog_listing_itself_is_an_error_not_a_hang(catalogs: Catalogs) -> None:
    catalogs.sql("/nested", "INSERT INTO nested_catalogs VALUES (?, ?, 0)", "/nested",
                 catalogs.hash_of["/nested"])
    tree = catalogs.tree()
    outcome = _bounded(lambda: tree.resolve("/nested/missing"))
    assert isinstance(outcome, CatalogError) and "own mount point" in str(outcome)
    assert tree.lookup("/nested/in.txt").entry.size == len("nested/in.txt")  # hits still work
    assert tree.lookup("/top.txt").entry.is_regular  # and the rest of the repository


def test_a_root_listing_a_catalog_at_the_root_is_an_error_not_a_hang(
        catalogs: Catalogs) -> None:
    catalogs.sql("", "INSERT INTO nested_catalogs VALUES ('', ?, 0)", catalogs.root)
    tree = catalogs.tree()
    outcome = _bounded(lambda: tree.resolve("/no/such/file"))
    assert isinstance(outcome, CatalogError)
    assert tree.lookup("/top.txt").entry.is_regular


@pytest.mark.parametrize("ref_path", ["/", "/elsewhere", "/nested", "/nested/", "//x",
                                      "/nested/../top", "relative"])
def test_references_outside_the_subtree_are_refused(catalogs: Catalogs, ref_path: str
                                                    ) -> None:
    catalogs.sql("/nested", "INSERT INTO nested_catalogs VALUES (?, ?, 0)", ref_path,
                 catalogs.root)
    tree = catalogs.tree()
    nested = tree.lookup("/nested/in.txt").catalog
    assert ref_path in nested.broken_refs()
    assert all(ref.path != ref_path for ref in nested.nested_catalogs())
    assert isinstance(_bounded(lambda: tree.resolve("/nested/deeper/y")), object)


def test_a_grandchild_listed_in_the_root_is_refused(catalogs: Catalogs) -> None:
    catalogs.sql("", "INSERT INTO nested_catalogs VALUES (?, ?, 0)", "/nested/deeper/leaf",
                 catalogs.hash_of["/nested/deeper/leaf"])
    tree = catalogs.tree()
    assert "/nested/deeper/leaf" in tree.root.broken_refs()
    assert tree.lookup("/nested/deeper/leaf/x").entry.is_regular  # through /nested


def test_ref_problem_rules() -> None:
    assert ref_problem("/a", "") is None and ref_problem("/a/b", "/a") is None
    assert ref_problem("/a", "/a") and ref_problem("/b", "/a") and ref_problem("", "")
    assert ref_problem("/a/./b", "") and ref_problem("/a/", "") and ref_problem("/ab", "/a")


def test_a_nested_catalog_swapped_for_the_root_is_refused(catalogs: Catalogs) -> None:
    catalogs.sql("", "UPDATE nested_catalogs SET sha1 = ? WHERE path = '/nested'",
                 catalogs.root)
    tree = catalogs.tree()
    with pytest.raises(CatalogError, match="root_prefix"):
        tree.lookup("/nested/in.txt")
    assert tree.lookup("/top.txt").entry.is_regular


def test_a_nested_catalog_swapped_for_another_nested_one_is_refused(
        catalogs: Catalogs) -> None:
    catalogs.sql("", "UPDATE nested_catalogs SET sha1 = ? WHERE path = '/nested'",
                 catalogs.hash_of["/nested/deeper/leaf"])
    with pytest.raises(CatalogError, match="not the catalog of that directory"):
        catalogs.tree().lookup("/nested/in.txt")


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


def test_a_corrupt_catalog_file_is_a_catalog_error(catalogs: Catalogs, tmp_path: Path
                                                   ) -> None:
    broken = tmp_path / "broken"
    shutil.copy(catalogs.files[catalogs.root], broken)
    broken.write_bytes(broken.read_bytes()[:2048])
    with pytest.raises(PycvmfsError):
        Catalog(broken).listdir("")
