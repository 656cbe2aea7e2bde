"""`CatalogTree`: nested catalogs attached on demand (each loaded once, however many threads
ask), `no_loading` answering from attached catalogs only, detach under pressure, and hostile
graphs: a walk through nested catalogs is bounded and a loop is a named integrity error
(EIO for that subtree) instead of a hang; a nested catalog must be the catalog of its
directory; a root catalog must be a root.

Catalogs are a real publish (`conftest.published`), decompressed and rewritten with SQL (the
tree's loader maps hashes to the rewritten files; hash checks are the loader's job and
tested elsewhere)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pycvmfs.errors import CatalogError, NotFoundError, PycvmfsError
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.repository.catalog import Catalog, NestedRef
from pycvmfs.repository.catalog_tree import CatalogTree, WouldLoadError, no_loading
from tests.catalog_files import Catalogs

WALK_DEADLINE_S = 5.0  # a walk that loops would never return


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


# --- attaching on demand -------------------------------------------------------------------


class CountingLoader:
    """The `Catalogs` loader, counting loads per mountpoint; a mountpoint in `hold` waits
    for `release` (bounded) before it is opened, `fail` raises once per listed mountpoint."""

    def __init__(self, catalogs: Catalogs, hold: str = "", fail: str = "") -> None:
        self.load = catalogs.loader()
        self.calls: list[str] = []
        self.hold, self.fail = hold, fail
        self.started, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()

    def __call__(self, content_hash: ContentHash, mountpoint: str) -> Catalog:
        with self.lock:
            self.calls.append(mountpoint)
        if mountpoint and mountpoint == self.hold:
            self.started.set()
            assert self.release.wait(WALK_DEADLINE_S)
        if mountpoint and mountpoint == self.fail:
            self.fail = ""
            raise CatalogError(f"cannot load {mountpoint}")
        return self.load(content_hash, mountpoint)


def _tree(catalogs: Catalogs, loader: CountingLoader) -> CatalogTree:
    return CatalogTree(ContentHash.parse(catalogs.root), loader)


def test_nested_catalogs_are_loaded_when_a_path_needs_them_and_once(catalogs: Catalogs
                                                                      ) -> None:
    loader = CountingLoader(catalogs)
    tree = _tree(catalogs, loader)
    assert tree.lookup("/top.txt").catalog is tree.root and loader.calls == [""]
    mountpoint = tree.lookup("/nested")  # answered by the parent's entry: nothing loaded
    assert mountpoint.catalog is tree.root and mountpoint.entry.is_nested_mountpoint
    assert loader.calls == [""]
    assert tree.lookup("/nested/in.txt").catalog.root_prefix == "/nested"
    assert tree.lookup("/nested/deeper/y").catalog.root_prefix == "/nested"
    assert loader.calls == ["", "/nested"]
    leaf = tree.lookup("/nested/deeper/leaf/x").catalog
    for _ in range(3):
        assert tree.lookup("/nested/deeper/leaf/x").catalog is leaf
    assert loader.calls == ["", "/nested", "/nested/deeper/leaf"]
    tree.close()


def test_a_mountpoint_lists_its_child_catalog(catalogs: Catalogs) -> None:
    tree = catalogs.tree()
    resolved = tree.lookup("/nested")
    assert tree.listing_catalog("/nested", resolved).root_prefix == "/nested"
    assert {name for name, _ in tree.listdir("/nested")} == {".cvmfscatalog", "in.txt", "deeper"}
    assert {name for name, _ in tree.listdir("/nested/deeper/leaf")} == {".cvmfscatalog", "x"}
    assert tree.listing_catalog("", tree.lookup("")) is tree.root
    with pytest.raises(NotFoundError, match="not a directory"):
        tree.listdir("/top.txt")
    with pytest.raises(NotFoundError):
        tree.lookup("/no/such")
    assert tree.resolve("/top.txt/below") is None


def test_threads_needing_one_nested_catalog_share_one_load(catalogs: Catalogs) -> None:
    loader = CountingLoader(catalogs, hold="/nested")
    tree = _tree(catalogs, loader)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(tree.lookup, "/nested/in.txt") for _ in range(6)]
        assert loader.started.wait(WALK_DEADLINE_S)
        start = time.monotonic()
        assert tree.lookup("/top.txt").entry.is_regular  # attached: never waits for a load
        assert time.monotonic() - start < 1.0
        time.sleep(0.1)  # the other threads reach the load in flight
        loader.release.set()
        found = [future.result(timeout=WALK_DEADLINE_S) for future in futures]
    assert loader.calls == ["", "/nested"]
    assert len({id(resolved.catalog) for resolved in found}) == 1
    tree.close()


def test_a_failed_load_reaches_every_waiter_and_is_tried_again(catalogs: Catalogs) -> None:
    loader = CountingLoader(catalogs, hold="/nested", fail="/nested")
    tree = _tree(catalogs, loader)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(tree.resolve, "/nested/in.txt") for _ in range(4)]
        assert loader.started.wait(WALK_DEADLINE_S)
        time.sleep(0.1)
        loader.release.set()
        for future in futures:
            with pytest.raises(CatalogError, match="cannot load /nested"):
                future.result(timeout=WALK_DEADLINE_S)
    assert set(tree.attached()) == {""}
    assert tree.lookup("/nested/in.txt").entry.is_regular  # not remembered as failed
    assert loader.calls.count("/nested") == 2
    tree.close()


def test_no_loading_answers_from_attached_catalogs_only(catalogs: Catalogs) -> None:
    tree = catalogs.tree()
    with no_loading():
        assert tree.lookup("/top.txt").entry.is_regular
        assert tree.lookup("/nested").entry.is_nested_mountpoint
        with pytest.raises(WouldLoadError):
            tree.lookup("/nested/in.txt")
        with pytest.raises(WouldLoadError):
            tree.listdir("/nested")
        with no_loading():
            pass
        with pytest.raises(WouldLoadError):  # the inner block restored "forbidden"
            tree.lookup("/nested/in.txt")
        other = ThreadPoolExecutor(1)  # the flag is this thread's: another one loads
        assert other.submit(tree.lookup, "/nested/in.txt").result(WALK_DEADLINE_S)
        other.shutdown()
        assert tree.lookup("/nested/in.txt").entry.is_regular  # attached now
        with pytest.raises(WouldLoadError):
            tree.lookup("/nested/deeper/leaf/x")
    assert tree.lookup("/nested/deeper/leaf/x").entry.is_regular
    assert not issubclass(WouldLoadError, PycvmfsError)  # never turned into an I/O error
    tree.close()


def test_detached_catalogs_are_released_at_once_and_closed_at_the_next_detach(
        catalogs: Catalogs) -> None:
    released: list[str] = []

    def load(content_hash: ContentHash, mountpoint: str) -> Catalog:
        return Catalog(catalogs.files[str(content_hash)], content_hash=content_hash,
                       on_release=lambda: released.append(mountpoint))

    tree = CatalogTree(ContentHash.parse(catalogs.root), load)
    assert tree.lookup("/nested/deeper/leaf/x").entry.is_regular
    nested = tree.lookup("/nested/in.txt").catalog
    assert tree.detach_nested() == 2
    assert sorted(released) == ["/nested", "/nested/deeper/leaf"]
    assert set(tree.attached()) == {""}
    assert nested.lookup("/nested/in.txt") is not None  # a lookup running in it finishes
    again = tree.lookup("/nested/in.txt").catalog  # attached again
    assert again is not nested
    assert tree.detach_nested() == 1
    with pytest.raises(CatalogError):  # closed now
        nested.lookup("/nested/in.txt")
    root = tree.root
    tree.close()
    with pytest.raises(CatalogError):
        root.lookup("")
    with pytest.raises(CatalogError):
        again.lookup("/nested/in.txt")


# --- graph checks ----------------------------------------------------------------------------


def test_a_nested_catalog_as_the_root_is_refused(catalogs: Catalogs) -> None:
    with pytest.raises(CatalogError, match="it is a nested catalog"):
        CatalogTree(ContentHash.parse(catalogs.hash_of["/nested"]), catalogs.loader())


def test_a_mountpoint_without_its_reference_is_an_integrity_error(catalogs: Catalogs) -> None:
    catalogs.sql("", "DELETE FROM nested_catalogs WHERE path = '/nested'")
    tree = catalogs.tree()
    assert tree.lookup("/nested").entry.is_nested_mountpoint
    with pytest.raises(CatalogError, match="lists no catalog there"):
        tree.listdir("/nested")
    assert tree.resolve("/nested/in.txt") is None  # nothing references a catalog there


def test_a_refused_reference_makes_its_subtree_an_integrity_error(catalogs: Catalogs) -> None:
    catalogs.sql("", "UPDATE nested_catalogs SET sha1 = 'not a hash' WHERE path = '/nested'")
    tree = catalogs.tree()
    with pytest.raises(CatalogError, match="bad catalog hash"):
        tree.listdir("/nested")
    with pytest.raises(CatalogError, match="bad catalog hash"):
        tree.resolve("/nested/in.txt")
    assert tree.lookup("/top.txt").entry.is_regular


def test_bind_mountpoints_are_listed_but_not_entered(catalogs: Catalogs) -> None:
    catalogs.sql("", "INSERT INTO bind_mountpoints VALUES ('/bound', ?, 0)", catalogs.root)
    tree = catalogs.tree()
    assert [ref.path for ref in tree.root.bind_mountpoints()] == ["/bound"]
    with pytest.raises(PycvmfsError, match="bind mountpoints"):
        tree.resolve("/bound/anything")
    assert set(tree.attached()) == {""}


class LooseCatalog:
    """A catalog that takes any reference (a real `Catalog` refuses these), so only the
    tree's own bound can end the walk."""

    def __init__(self, root_prefix: str, refs: list[NestedRef]) -> None:
        self.root_prefix, self.refs = root_prefix, refs
        self.content_hash = ContentHash.of(Algorithm.SHA1, root_prefix.encode())
        self.path = Path("loose")

    def lookup(self, path: str) -> None:
        return None

    def nested_catalogs(self) -> list[NestedRef]:
        return self.refs

    def bind_mountpoints(self) -> list[NestedRef]:
        return []

    def broken_refs(self) -> dict[str, str]:
        return {}

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("back", ["", "/a"])
def test_a_loop_the_catalogs_let_through_is_still_an_integrity_error(back: str) -> None:
    """The tree's walk is bounded by itself (a hop per path component), not only by the
    references `Catalog` refuses."""
    hashes = {"": ContentHash.of(Algorithm.SHA1, b"root"), "/a": ContentHash.of(
        Algorithm.SHA1, b"a")}
    graph = {"": LooseCatalog("", [NestedRef("/a", hashes["/a"], 0)]),
             "/a": LooseCatalog("/a", [NestedRef(back, hashes[back], 0)])}
    tree = CatalogTree(hashes[""], lambda content_hash, mountpoint: graph[mountpoint])  # type: ignore[arg-type, return-value]
    outcome = _bounded(lambda: tree.resolve("/a/b/c"))
    assert isinstance(outcome, CatalogError) and "loops" in str(outcome)
