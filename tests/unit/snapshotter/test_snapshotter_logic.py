"""The snapshotter's semantics without gRPC: remote layers answered as existing, local
fallback, mounts as containerd's overlay snapshotter makes them, commit, update, remove,
usage, cleanup, and a restart in between."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycvmfs.images.layout import layerfs_dir
from pycvmfs.snapshotter.errors import (
    InvalidSnapshotError,
    SnapshotExistsError,
    SnapshotInUseError,
    SnapshotNotFoundError,
)
from pycvmfs.snapshotter.layers import (
    LAYER_DIGEST_LABEL,
    REMOTE_LABEL,
    TARGET_LABEL,
    RemoteLayers,
)
from pycvmfs.snapshotter.snapshots import Mount, Snapshotter, Usage, disk_usage
from pycvmfs.snapshotter.store import Kind, MetadataStore

LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64
MISSING = "sha256:" + "c" * 64


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    root = tmp_path / "mnt"
    for digest in (LAYER_A, LAYER_B):
        (root / layerfs_dir(digest)).mkdir(parents=True)
    return root


def make(tmp_path: Path, mount: Path) -> Snapshotter:
    store = MetadataStore(tmp_path / "state" / "metadata.db")
    return Snapshotter(store, RemoteLayers(mount), tmp_path / "state",
                       measure=lambda path: Usage(1234, 5))


def unpack_labels(chain: str, digest: str) -> dict[str, str]:
    return {TARGET_LABEL: chain, LAYER_DIGEST_LABEL: digest}


def test_remote_layers_are_committed_and_answered_as_existing(tmp_path: Path,
                                                              mount: Path) -> None:
    snapshotter = make(tmp_path, mount)
    with pytest.raises(SnapshotExistsError, match="chain-a"):
        snapshotter.prepare("extract-1 chain-a", "", unpack_labels("chain-a", LAYER_A))
    with pytest.raises(SnapshotExistsError, match="chain-b"):
        snapshotter.prepare("extract-2 chain-b", "chain-a", unpack_labels("chain-b", LAYER_B))
    a, b = snapshotter.stat("chain-a"), snapshotter.stat("chain-b")
    assert (a.kind, b.kind, b.parent) == (Kind.COMMITTED, Kind.COMMITTED, "chain-a")
    assert a.remote == str(mount / layerfs_dir(LAYER_A))
    assert b.labels[REMOTE_LABEL] == "remote snapshot"
    with pytest.raises(SnapshotNotFoundError):
        snapshotter.stat("extract-2 chain-b")
    assert snapshotter.usage("chain-b") == Usage(0, 0)
    # the container: overlay, lowerdirs on the mount (nearest first), upper and work local
    (rootfs,) = snapshotter.prepare("container", "chain-b", {})
    work = tmp_path / "state" / "snapshots" / "3" / "work"
    upper = tmp_path / "state" / "snapshots" / "3" / "fs"
    assert rootfs == Mount("overlay", "overlay", (
        f"workdir={work}", f"upperdir={upper}",
        f"lowerdir={mount / layerfs_dir(LAYER_B)}:{mount / layerfs_dir(LAYER_A)}",
        "index=off"))
    assert upper.is_dir() and work.is_dir()
    assert snapshotter.mounts("container") == [rootfs]
    # preparing the same chain again: still there
    with pytest.raises(SnapshotExistsError):
        snapshotter.prepare("extract-3 chain-a", "", unpack_labels("chain-a", LAYER_A))


def test_layers_not_in_the_repository_fall_back_to_local(tmp_path: Path, mount: Path) -> None:
    snapshotter = make(tmp_path, mount)
    (first,) = snapshotter.prepare("extract-1", "", unpack_labels("chain-c", MISSING))
    local = tmp_path / "state" / "snapshots" / "1" / "fs"
    assert first == Mount("bind", str(local), ("rw", "rbind"))
    committed = snapshotter.commit("chain-c", "extract-1", {"containerd.io/gc.root": "x"})
    assert (committed.kind, committed.remote) == (Kind.COMMITTED, None)
    assert snapshotter.usage("chain-c") == Usage(1234, 5)
    assert not (tmp_path / "state" / "snapshots" / "1" / "work").exists()
    # a remote layer on top of a local one, then a view of both
    with pytest.raises(SnapshotExistsError):
        snapshotter.prepare("extract-2", "chain-c", unpack_labels("chain-ca", LAYER_A))
    (view,) = snapshotter.view("view", "chain-ca", {})
    assert view == Mount("overlay", "overlay", (
        f"lowerdir={mount / layerfs_dir(LAYER_A)}:{local}", "index=off"))
    (single,) = snapshotter.view("view-1", "chain-c", {})
    assert single == Mount("bind", str(local), ("ro", "rbind"))
    (empty,) = snapshotter.view("view-0", "", {})
    assert empty.options == ("ro", "rbind")


def test_without_the_digest_label_layers_are_local(tmp_path: Path, mount: Path) -> None:
    snapshotter = make(tmp_path, mount)
    (found,) = snapshotter.prepare("extract-1", "", {TARGET_LABEL: "chain-a"})
    assert found.type == "bind"
    (found,) = snapshotter.prepare("extract-2", "", {LAYER_DIGEST_LABEL: LAYER_A})
    assert found.type == "bind"  # no target: containerd is not unpacking
    (found,) = snapshotter.prepare("extract-3", "", unpack_labels("chain-x", "md5:zz"))
    assert found.type == "bind"


def test_refusals(tmp_path: Path, mount: Path) -> None:
    snapshotter = make(tmp_path, mount)
    snapshotter.prepare("active", "", {})
    with pytest.raises(SnapshotExistsError):
        snapshotter.prepare("active", "", {})
    with pytest.raises(InvalidSnapshotError, match="not a committed"):
        snapshotter.prepare("child", "active", {})
    with pytest.raises(SnapshotNotFoundError):
        snapshotter.prepare("child", "missing-parent", {})
    with pytest.raises(InvalidSnapshotError):
        snapshotter.prepare("", "", {})
    snapshotter.view("view", "", {})
    with pytest.raises(InvalidSnapshotError, match="only an active"):
        snapshotter.commit("name", "view", {})
    snapshotter.commit("base", "active", {})
    with pytest.raises(SnapshotInUseError, match="committed"):
        snapshotter.mounts("base")
    snapshotter.prepare("top", "base", {})
    with pytest.raises(SnapshotInUseError, match="children"):
        snapshotter.remove("base")
    with pytest.raises(SnapshotNotFoundError):
        snapshotter.remove("never")


def test_update_labels(tmp_path: Path, mount: Path) -> None:
    snapshotter = make(tmp_path, mount)
    snapshotter.prepare("k", "", {"a": "1", "b": "2"})
    assert snapshotter.update("k", {"a": "9", "c": "3"}, ["labels.a", "labels.b"]).labels == {
        "a": "9"}
    assert snapshotter.update("k", {"z": "0"}, []).labels == {"z": "0"}
    assert snapshotter.update("k", {"y": "1"}, ["labels"]).labels == {"y": "1"}
    with pytest.raises(InvalidSnapshotError, match="parent"):
        snapshotter.update("k", {}, ["parent"])


def test_remove_cleanup_and_restart(tmp_path: Path, mount: Path) -> None:
    snapshotter = make(tmp_path, mount)
    with pytest.raises(SnapshotExistsError):
        snapshotter.prepare("x", "", unpack_labels("chain-a", LAYER_A))
    snapshotter.prepare("rw", "chain-a", {})
    snapshotter.prepare("gone", "", {})
    snapshotter.remove("gone")
    assert not (tmp_path / "state" / "snapshots" / "3").exists()
    stray = tmp_path / "state" / "snapshots" / "99"
    stray.mkdir()
    assert snapshotter.cleanup() == [stray]
    # a new snapshotter over the same state sees the same snapshots and mounts
    before = snapshotter.mounts("rw")
    again = make(tmp_path, mount)
    assert [s.key for s in again.walk()] == ["chain-a", "rw"]
    assert again.mounts("rw") == before
    again.remove("rw")
    again.remove("chain-a")
    assert (mount / layerfs_dir(LAYER_A)).is_dir()  # remote files are never touched
    assert again.walk() == []


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10000)
    os.link(tmp_path / "d" / "f", tmp_path / "d" / "g")
    usage = disk_usage(tmp_path / "d")
    assert usage.inodes == 2
    assert usage.size >= 10000


def test_containerds_lookup_after_already_exists(tmp_path: Path, mount: Path) -> None:
    """containerd finds the remote snapshot with this filter (metadata/snapshot.go); a
    target name taken on another parent (a local chain in another namespace) still gets a
    snapshot of its own."""
    from pycvmfs.snapshotter.filters import matches

    snapshotter = make(tmp_path, mount)
    snapshotter.prepare("A/1/extract", "", {})
    snapshotter.commit("A/2/base", "A/1/extract", {})
    snapshotter.prepare("B/1/extract", "", {})
    snapshotter.commit("B/2/base", "B/1/extract", {})
    for namespace in ("A", "B"):
        with pytest.raises(SnapshotExistsError):
            snapshotter.prepare(f"{namespace}/3/extract", f"{namespace}/2/base",
                                unpack_labels("sha256:chain", LAYER_A))
        wanted = f'labels."containerd.io/snapshot.ref"==sha256:chain,parent=="{namespace}/2/base"'
        found = [s for s in snapshotter.walk()
                 if s.kind is Kind.COMMITTED and matches(s, [wanted])]
        assert len(found) == 1 and found[0].remote == str(mount / layerfs_dir(LAYER_A))
    assert {s.key for s in snapshotter.walk() if s.remote} == {"sha256:chain", "B/3/extract"}
    # the same chain prepared again on the same parent: nothing new
    with pytest.raises(SnapshotExistsError):
        snapshotter.prepare("A/4/extract", "A/2/base", unpack_labels("sha256:chain", LAYER_A))
    assert len(snapshotter.walk()) == 4
