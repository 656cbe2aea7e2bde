"""The snapshotter's SQLite metadata: keys, kinds, labels, commit renames, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.snapshotter.errors import SnapshotExistsError, SnapshotNotFoundError
from pycvmfs.snapshotter.store import Kind, MetadataStore


def test_create_get_and_duplicate(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "meta.db")
    made = store.create("k1", "", Kind.ACTIVE, {"a": "b"})
    got = store.get("k1")
    assert got == made
    assert got.kind is Kind.ACTIVE and got.labels == {"a": "b"} and got.remote is None
    with pytest.raises(SnapshotExistsError, match="k1"):
        store.create("k1", "", Kind.VIEW, {})
    with pytest.raises(SnapshotNotFoundError, match="nope"):
        store.get("nope")
    assert store.find("nope") is None


def test_commit_keeps_the_row_and_sets_usage(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "meta.db")
    active = store.create("extract-1", "", Kind.ACTIVE, {"x": "1"})
    committed = store.commit("extract-1", "sha256:c1", {"y": "2"}, 4096, 3)
    assert committed.id == active.id
    assert (committed.key, committed.kind, committed.labels) == ("sha256:c1", Kind.COMMITTED,
                                                                 {"y": "2"})
    assert (committed.size, committed.inodes) == (4096, 3)
    assert store.find("extract-1") is None
    store.create("other", "", Kind.ACTIVE, {})
    with pytest.raises(SnapshotExistsError):
        store.commit("other", "sha256:c1", {}, 0, 0)


def test_children_chain_labels_delete(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "meta.db")
    store.create("c1", "", Kind.COMMITTED, {}, remote="/mnt/.layers/aa/aa/layerfs")
    store.create("c2", "c1", Kind.COMMITTED, {})
    store.create("rw", "c2", Kind.ACTIVE, {})
    assert [s.key for s in store.chain("rw")] == ["rw", "c2", "c1"]
    assert store.children("c1") == 1 and store.children("rw") == 0
    assert store.set_labels("c2", {"gc": "1"}).labels == {"gc": "1"}
    store.delete("rw")
    assert [s.key for s in store.all()] == ["c1", "c2"]


def test_survives_a_restart(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "state" / "meta.db")
    store.create("c1", "", Kind.COMMITTED, {"l": "v"}, remote="/mnt/x")
    store.close()
    again = MetadataStore(tmp_path / "state" / "meta.db")
    found = again.get("c1")
    assert (found.remote, found.labels, found.kind) == ("/mnt/x", {"l": "v"}, Kind.COMMITTED)
    assert again.create("c2", "c1", Kind.ACTIVE, {}).id > found.id
