"""`InodeTable` under random sequences of LOOKUP, READDIR, READDIRPLUS, FORGET and revision
changes (a Hypothesis state machine), checked against a plain model of the contract in
`fs/inodes.py`: a catalog's range is met once (width max rowid + 1, from 2 on), a row's
number is its range's base plus its rowid (a hardlink member: the lowest rowid of its group
and identity), a path handed out keeps its number while its identity stays the same, and
lookup counts go up by one per hand-out and down by FORGET, dropping at zero only.

Revisions: A and B are two publishes into one storage (B changes a file's content, another's
mode only, removes and adds files, breaks a hardlink, changes one nested catalog, keeps
another unchanged (same hash: same range) and makes a directory a nested catalog); H is B
with a hostile root catalog whose hardlink group mixes files, a symlink and equal copies.

Derandomized and without an example database: every run tries the same 40 programs of up
to 30 steps (about 2 s); names that change between revisions and numbers a newer revision
replaced are drawn more often, so the short programs reach those cases."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.fs.inodes import FIRST_BASE, ROOT_INODE, InodeTable
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.catalog_tree import CatalogTree
from tests.catalog_files import Catalogs
from tests.publish_helpers import Keys, run_publish

UNKNOWN_INODE = 1 << 40  # beyond every range: FORGET of it is ignored
FOCUS = ("/changed.txt", "/attr.txt", "/a-link2", "/a.txt", "/a-link", "/sym", "/new.txt",
         "/sub/inner.txt", "/sub/h1", "/dir/f1")  # what changes between revisions: drawn often
SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None,
                    derandomize=True, database=None)

Identity = tuple[object, ...]
CatalogKey = tuple[str, str]


def identity_of(entry: DirEntry) -> Identity:
    """What must stay equal for a path to keep its number (the model's, in plain fields)."""
    if entry.is_dir:
        return ("directory",)
    digest = entry.content_hash.digest if entry.content_hash is not None else b""
    return stat.S_IFMT(entry.mode), digest, entry.size, entry.is_chunked, entry.symlink


def attributes_of(entry: DirEntry) -> tuple[int, ...]:
    return (entry.mode, entry.uid, entry.gid, entry.mtime, entry.mtimens, entry.linkcount,
            entry.size)


def key_of(catalog: Catalog) -> CatalogKey:
    return catalog.root_prefix, str(catalog.content_hash or catalog.path)


@dataclass(frozen=True)
class Revision:
    """Every path of one revision ('' is the root) resolved once, and every listing."""

    name: str
    resolved: dict[str, tuple[DirEntry, Catalog]]
    listings: dict[str, list[tuple[str, DirEntry, Catalog]]]  # directory -> children

    @property
    def paths(self) -> list[str]:
        return sorted(self.resolved)

    @property
    def focus(self) -> list[str]:
        return [path for path in FOCUS if path in self.resolved]

    @property
    def directories(self) -> list[str]:
        return sorted(self.listings)


def _walk(name: str, tree: CatalogTree) -> Revision:
    resolved: dict[str, tuple[DirEntry, Catalog]] = {}
    listings: dict[str, list[tuple[str, DirEntry, Catalog]]] = {}
    pending = [""]
    while pending:
        path = pending.pop()
        found = tree.lookup(path)
        resolved[path] = found.entry, found.catalog
        if found.entry.is_dir:
            holder = tree.listing_catalog(path, found)
            listings[path] = [(f"{path}/{child}", entry, holder)
                              for child, entry in holder.listdir(path)]
            pending += [child for child, _, _ in listings[path]]
    return Revision(name, resolved, listings)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory, keys: Keys
              ) -> Iterator[dict[str, Revision]]:
    base = tmp_path_factory.mktemp("inode-machine")
    source, storage = base / "src", base / "storage"
    _write(source, {"a.txt": "same", "changed.txt": "one", "attr.txt": "attr", "gone.txt": "g",
                    "dir/f1": "f1", "dir/f2": "f2", "sub/inner.txt": "in", "sub/h1": "hard",
                    "stable/s.txt": "s", "stable/deep/t.txt": "t"})
    for directory in ("sub", "stable"):
        (source / directory / ".cvmfscatalog").write_bytes(b"")
    os.link(source / "a.txt", source / "a-link")
    os.link(source / "a.txt", source / "a-link2")
    os.link(source / "sub/h1", source / "sub/h2")
    os.symlink("a.txt", source / "sym")
    run_publish(source, storage, keys)
    first = Catalogs(storage, base / "catalogs-a")

    (source / "changed.txt").write_text("two two")  # another identity
    os.chmod(source / "attr.txt", 0o600)  # other attributes only
    (source / "gone.txt").unlink()
    (source / "new.txt").write_text("new")
    (source / "a-link2").unlink()
    (source / "a-link2").write_text("same")  # no longer linked, the same identity
    (source / "sub/inner.txt").write_text("inner changed")
    (source / "dir/.cvmfscatalog").write_bytes(b"")  # dir becomes a nested catalog
    run_publish(source, storage, keys)
    second = Catalogs(storage, base / "catalogs-b")
    assert first.hash_of["/stable"] == second.hash_of["/stable"] != ""
    assert first.hash_of["/sub"] != second.hash_of["/sub"]

    hostile = base / "hostile-root"
    shutil.copy(second.files[second.root], hostile)
    with sqlite3.connect(hostile) as db:
        group = db.execute("SELECT hardlinks FROM catalog WHERE name = 'a.txt'").fetchone()[0]
        db.execute("UPDATE catalog SET hardlinks = ? WHERE name IN "
                   "('sym', 'new.txt', 'a-link2', 'changed.txt')", (group,))
    hostile_hash = ContentHash.of(Algorithm.SHA1, b"the hostile root catalog")
    files = {**first.files, **second.files, str(hostile_hash): hostile}

    def load(content_hash: ContentHash, mountpoint: str) -> Catalog:
        return Catalog(files[str(content_hash)], content_hash=content_hash)

    trees = {"A": CatalogTree(ContentHash.parse(first.root), load),
             "B": CatalogTree(ContentHash.parse(second.root), load),
             "H": CatalogTree(hostile_hash, load)}
    yield {name: _walk(name, tree) for name, tree in trees.items()}
    for tree in trees.values():
        tree.close()


@dataclass
class Held:
    """A path handed out, as the model remembers it."""

    ino: int
    identity: Identity
    attributes: tuple[int, ...]


class InodeTableMachine(RuleBasedStateMachine):
    """The table (tracking lookups, as inode-based adapters use it) against the model."""

    revisions: ClassVar[dict[str, Revision]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.table = InodeTable(tracking=True)
        self.revision = self.revisions["A"]
        self.bases: dict[CatalogKey, int] = {}
        self.next_base = FIRST_BASE
        self.leaders: dict[CatalogKey, dict[tuple[int, Identity], int]] = {}
        self.known: dict[str, Held] = {}  # path -> what it was handed out as
        self.counts: dict[int, int] = {}  # number -> the kernel's lookups
        self.first: dict[int, str] = {}  # number -> the first path handed out with it

    # --- the model ---------------------------------------------------------------------
    def meet(self, catalog: Catalog) -> int:
        key = key_of(catalog)
        if key not in self.bases:
            self.bases[key] = self.next_base
            self.next_base += catalog.max_rowid() + 1
        return self.bases[key]

    def leader(self, catalog: Catalog, entry: DirEntry) -> int:
        key = key_of(catalog)
        if key not in self.leaders:
            rows = catalog.hardlinked(10_000)
            assert rows is not None
            lowest: dict[tuple[int, Identity], int] = {}
            for row in rows:
                if not row.is_dir:
                    group = (row.hardlink_group, identity_of(row))
                    lowest[group] = min(lowest.get(group, row.rowid), row.rowid)
            self.leaders[key] = lowest
        return self.leaders[key][entry.hardlink_group, identity_of(entry)]

    def expected(self, path: str, entry: DirEntry, catalog: Catalog) -> int:
        if path == "":
            return ROOT_INODE
        base = self.meet(catalog)
        held = self.known.get(path)
        if held is not None and held.identity == identity_of(entry):
            return held.ino
        if entry.hardlink_group and not entry.is_dir:
            return base + self.leader(catalog, entry)
        return base + entry.rowid

    def hand_out(self, path: str, entry: DirEntry, catalog: Catalog) -> int:
        expected = self.expected(path, entry, catalog)
        assert self.table.number(path, entry, catalog) == expected  # d_ino == st_ino
        ino = self.table.hand_out(path, entry, catalog)
        assert ino == expected
        if path:
            self.known[path] = Held(ino, identity_of(entry), attributes_of(entry))
            self.counts[ino] = self.counts.get(ino, 0) + 1
            self.first.setdefault(ino, path)
        return ino

    # --- what the kernel does ----------------------------------------------------------
    @rule(data=st.data())
    def lookup(self, data: st.DataObject) -> None:
        paths = st.sampled_from(self.revision.paths) | st.sampled_from(self.revision.focus)
        path = data.draw(paths, label="path")
        self.hand_out(path, *self.revision.resolved[path])

    @precondition(lambda self: any(path in self.revision.resolved for path in self.known))
    @rule(data=st.data())
    def lookup_again(self, data: st.DataObject) -> None:
        """A name the kernel holds, looked up again (after a revision change: in the new one)."""
        held = sorted(path for path in self.known if path in self.revision.resolved)
        path = data.draw(st.sampled_from(held), label="held path")
        self.hand_out(path, *self.revision.resolved[path])

    @rule(data=st.data(), plus=st.booleans())
    def readdir(self, data: st.DataObject, plus: bool) -> None:
        """READDIRPLUS hands out every child; a plain READDIR records nothing."""
        directory = data.draw(st.sampled_from(self.revision.directories), label="directory")
        for path, entry, catalog in self.revision.listings[directory]:
            if plus:
                self.hand_out(path, entry, catalog)
            else:
                assert self.table.number(path, entry, catalog) == \
                    self.expected(path, entry, catalog)

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        numbers = st.sampled_from([*sorted(self.counts), ROOT_INODE, FIRST_BASE + 1,
                                   UNKNOWN_INODE])
        current = {held.ino for held in self.known.values()}
        stale = sorted(set(self.counts) - current)  # replaced in a newer revision
        if stale:
            numbers |= st.sampled_from(stale)
        items = data.draw(st.lists(st.tuples(numbers, st.integers(0, 3)), min_size=1,
                                   max_size=4), label="forget")
        dropped = []
        for ino, nlookup in items:
            count = self.counts.get(ino)
            if count is None or ino == ROOT_INODE:
                continue
            if count > nlookup:
                self.counts[ino] = count - nlookup
                continue
            del self.counts[ino], self.first[ino]
            self.known = {p: h for p, h in self.known.items() if h.ino != ino}
            dropped.append(ino)
        assert self.table.forget(items) == dropped

    @rule(name=st.sampled_from(["A", "B", "H"]))
    def new_revision(self, name: str) -> None:
        """What `RepositoryVFS.revision_changes` asks of the table: every name handed out
        is numbered in the new revision; a kept number (same identity) has its attributes
        refreshed, an identity that changed gets another number."""
        self.revision = self.revisions[name]
        for parent, child_name in list(self.table.known_entries()):
            parent_path = self.table.path_of(parent)
            assert parent_path is not None
            child = f"{parent_path}/{child_name}"
            if child not in self.revision.resolved:
                continue  # gone: the kernel's name goes
            entry, catalog = self.revision.resolved[child]
            current = self.table.number(child, entry, catalog)
            assert current == self.expected(child, entry, catalog)
            held = self.table.held_number(child)
            was = self.known.get(child)
            assert held == (was.ino if was is not None else None)
            if was is None:
                continue
            if current != held:
                assert was.identity != identity_of(entry)
                continue
            assert was.identity == identity_of(entry)
            fresh = attributes_of(entry)
            assert self.table.refresh_attributes(child, entry) == (was.attributes != fresh)
            was.attributes = fresh

    @rule()
    def sweep(self) -> None:
        """Every path of the revision served, numbered: what the model says; one number is
        one identity; hardlink members not handed out share their leader's number."""
        owners: dict[int, tuple[str, Identity]] = {}
        for path in self.revision.paths:
            entry, catalog = self.revision.resolved[path]
            number = self.table.number(path, entry, catalog)
            assert number == self.expected(path, entry, catalog)
            assert (number == ROOT_INODE) == (path == "")
            other = owners.setdefault(number, (path, identity_of(entry)))
            assert other[1] == identity_of(entry), f"{path} and {other[0]} share {number}"
            if entry.hardlink_group and not entry.is_dir and path not in self.known:
                assert number == self.meet(catalog) + self.leader(catalog, entry)

    # --- invariants --------------------------------------------------------------------
    @invariant()
    def held_numbers_map_back(self) -> None:
        for ino, count in self.counts.items():
            assert count > 0 and self.table.lookup_count(ino) == count
            assert self.table.path_of(ino) == self.first[ino]
        assert self.table.path_of(ROOT_INODE) == "" and self.table.lookup_count(ROOT_INODE) == 0
        assert self.table.path_of(UNKNOWN_INODE) is None
        assert self.table.count() == 1 + len(self.counts)
        assert self.table.highest() == self.next_base - 1

    @invariant()
    def known_paths(self) -> None:
        identities: dict[int, Identity] = {}
        for path, held in self.known.items():
            assert self.table.held_number(path) == held.ino and held.ino in self.counts
            assert identities.setdefault(held.ino, held.identity) == held.identity
        entries = []
        for path in self.known:
            parent, name = path.rsplit("/", 1)
            if parent == "":
                entries.append((ROOT_INODE, name))
            elif parent in self.known:
                entries.append((self.known[parent].ino, name))
        assert sorted(self.table.known_entries()) == sorted(entries)


def test_the_inode_table_follows_its_model(revisions: dict[str, Revision]) -> None:
    machine = type("Machine", (InodeTableMachine,), {"revisions": revisions})
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_the_revisions_cover_what_the_machine_needs(revisions: dict[str, Revision]) -> None:
    """The scenarios above exist: a kept and a changed nested catalog, a broken and a mixed
    hardlink group, a change of content and one of attributes only."""
    a, b, h = revisions["A"], revisions["B"], revisions["H"]
    stable_a, stable_b = a.resolved["/stable/s.txt"][1], b.resolved["/stable/s.txt"][1]
    assert stable_a is not stable_b and key_of(stable_a) == key_of(stable_b)
    assert key_of(a.resolved["/sub/h1"][1]) != key_of(b.resolved["/sub/h1"][1])
    assert a.resolved["/dir/f1"][1].root_prefix == "" != b.resolved["/dir/f1"][1].root_prefix
    assert a.resolved["/a-link2"][0].hardlink_group and not b.resolved["/a-link2"][0].hardlink_group
    assert identity_of(a.resolved["/a-link2"][0]) == identity_of(b.resolved["/a-link2"][0])
    assert identity_of(a.resolved["/changed.txt"][0]) != identity_of(b.resolved["/changed.txt"][0])
    attr_a, attr_b = a.resolved["/attr.txt"][0], b.resolved["/attr.txt"][0]
    assert identity_of(attr_a) == identity_of(attr_b)
    assert attributes_of(attr_a) != attributes_of(attr_b)
    groups = {h.resolved[p][0].hardlink_group for p in ("/sym", "/a.txt", "/changed.txt")}
    assert len(groups) == 1 and groups != {0}
