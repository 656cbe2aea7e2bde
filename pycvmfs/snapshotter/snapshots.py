"""The snapshotter's semantics, free of gRPC: containerd's Snapshotter interface over the
metadata store, remote layer trees and local overlay directories.

Where a snapshot's files are:

- a remote layer: the layer tree on the pycvmfs mount (read-only, never copied);
- anything else: `STATE/snapshots/<id>/fs` (the layer's files, or the container's upper
  directory) and, for an active snapshot, `STATE/snapshots/<id>/work` (overlayfs' workdir).

Mounts follow containerd's overlay snapshotter, so the local fallback behaves like the
default snapshotter: no parent -> a bind mount of `fs` (rw for active, ro for a view);
a view of one parent -> a read-only bind mount of the parent's files; otherwise an overlay
whose lowerdirs are the parents' files, nearest first, plus `upperdir`/`workdir` for an
active snapshot. A lowerdir on the pycvmfs mount is what makes a container start without
any download.

Prepare with `containerd.io/snapshot.ref` (the chain ID containerd's unpacker will commit
the layer as) for a layer the repository has records a committed remote snapshot carrying
that label and answers ALREADY_EXISTS, as the reference's (stargz-based) snapshotter does;
containerd (metadata/snapshot.go) then lists committed snapshots with
`labels."containerd.io/snapshot.ref"==TARGET,parent=="PARENT"`, adopts the one found and
skips fetching and applying the layer.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pycvmfs.snapshotter.errors import (
    InvalidSnapshotError,
    SnapshotExistsError,
    SnapshotInUseError,
    SnapshotNotFoundError,
)
from pycvmfs.snapshotter.layers import REMOTE_LABEL, REMOTE_LABEL_VALUE, TARGET_LABEL, RemoteLayers
from pycvmfs.snapshotter.store import Kind, MetadataStore, Snapshot

OVERLAY_OPTIONS = ("index=off",)  # lowerdirs on FUSE cannot be indexed by file handle


@dataclass(frozen=True)
class Mount:
    """One entry of containerd's `[]mount.Mount` (the target is always empty)."""

    type: str
    source: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Usage:
    size: int
    inodes: int


def disk_usage(root: Path) -> Usage:
    """Bytes allocated (st_blocks, as containerd's fs.DiskUsage) and inodes under `root`,
    each hard-linked inode once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for directory, dirs, files in os.walk(root):
        for name in (directory, *(os.path.join(directory, entry) for entry in dirs + files)):
            try:
                info = os.lstat(name)
            except FileNotFoundError:
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            size += info.st_blocks * 512
    return Usage(size, len(seen))


class Snapshotter:
    """containerd's Snapshotter operations. `state` holds the local snapshot directories,
    `store` their metadata, `layers` the repository's layer trees."""

    def __init__(self, store: MetadataStore, layers: RemoteLayers, state: Path,
                 measure: Callable[[Path], Usage] = disk_usage) -> None:
        self._store = store
        self._layers = layers
        self._root = state / "snapshots"
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._measure = measure
        self._lock = threading.RLock()

    # -- where files are ------------------------------------------------------------------

    def files(self, snapshot: Snapshot) -> Path:
        """The directory holding the snapshot's own files (its layer or its upper dir)."""
        return Path(snapshot.remote) if snapshot.remote else self._root / str(snapshot.id) / "fs"

    def _work(self, snapshot: Snapshot) -> Path:
        return self._root / str(snapshot.id) / "work"

    # -- creating -------------------------------------------------------------------------

    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        """A writable snapshot `key` on top of committed `parent` (may be empty); for a layer
        the repository has, the remote snapshot instead and SnapshotExistsError."""
        with self._lock:
            self._check_new(key, parent)
            target = labels.get(TARGET_LABEL)
            tree = self._layers.find(labels) if target else None
            if target and tree is not None:
                self._commit_remote(key, parent, target, tree, labels)
            return self.mounts_of(self._create_local(key, parent, Kind.ACTIVE, labels))

    def _commit_remote(self, key: str, parent: str, target: str, tree: Path,
                       labels: dict[str, str]) -> NoReturn:
        """Record the layer tree as committed snapshot `target` on `parent` and answer that it
        exists. containerd then finds it by listing committed snapshots labelled
        `containerd.io/snapshot.ref==TARGET` with this parent and uses whatever name it has:
        when `target` is already taken on another parent (a chain below it that is local
        in another namespace), the remote snapshot is named after the unique `key`."""
        existing = self._store.find(target)
        if existing is None or existing.parent != parent:
            self._store.create(target if existing is None else key, parent, Kind.COMMITTED,
                               {**labels, REMOTE_LABEL: REMOTE_LABEL_VALUE}, remote=str(tree))
        raise SnapshotExistsError(f"target snapshot {target!r}: already exists (remote "
                                  f"layer {tree})")

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        """A read-only snapshot `key` of committed `parent`."""
        with self._lock:
            self._check_new(key, parent)
            return self.mounts_of(self._create_local(key, parent, Kind.VIEW, labels))

    def _check_new(self, key: str, parent: str) -> None:
        if not key:
            raise InvalidSnapshotError("a snapshot key must not be empty")
        if self._store.find(key) is not None:
            raise SnapshotExistsError(f"snapshot {key!r} already exists")
        if parent:
            found = self._store.get(parent)
            if found.kind is not Kind.COMMITTED:
                raise InvalidSnapshotError(f"parent {parent!r} is not a committed snapshot")

    def _create_local(self, key: str, parent: str, kind: Kind,
                      labels: dict[str, str]) -> Snapshot:
        snapshot = self._store.create(key, parent, kind, labels)
        try:
            (self._root / str(snapshot.id) / "fs").mkdir(parents=True, mode=0o755)
            if kind is Kind.ACTIVE:
                self._work(snapshot).mkdir(mode=0o711)
        except OSError:
            self._store.delete(key)
            shutil.rmtree(self._root / str(snapshot.id), ignore_errors=True)
            raise
        return snapshot

    # -- reading --------------------------------------------------------------------------

    def mounts(self, key: str) -> list[Mount]:
        """How to mount active or view snapshot `key`."""
        return self.mounts_of(self._store.get(key))

    def mounts_of(self, snapshot: Snapshot) -> list[Mount]:
        if snapshot.kind is Kind.COMMITTED:
            raise SnapshotInUseError(f"snapshot {snapshot.key!r} is committed: only active "
                                     "and view snapshots are mounted")
        parents = self._store.chain(snapshot.parent) if snapshot.parent else []
        for gone in (p for p in parents if p.remote and not os.path.isdir(p.remote)):
            raise SnapshotNotFoundError(
                f"snapshot {gone.key!r}: its layer tree {gone.remote} is not in the "
                "repository (image removed, or the repository not mounted); remove the "
                "image from containerd and pull it again")
        if not parents:
            mode = "ro" if snapshot.kind is Kind.VIEW else "rw"
            return [Mount("bind", str(self.files(snapshot)), (mode, "rbind"))]
        if snapshot.kind is Kind.VIEW and len(parents) == 1:
            return [Mount("bind", str(self.files(parents[0])), ("ro", "rbind"))]
        options: list[str] = []
        if snapshot.kind is Kind.ACTIVE:
            options += [f"workdir={self._work(snapshot)}", f"upperdir={self.files(snapshot)}"]
        options.append("lowerdir=" + ":".join(str(self.files(found)) for found in parents))
        options += OVERLAY_OPTIONS
        return [Mount("overlay", "overlay", tuple(options))]

    def stat(self, key: str) -> Snapshot:
        return self._store.get(key)

    def usage(self, key: str) -> Usage:
        """Local disk used by `key` alone: none for a remote layer, the measure at commit
        for a committed snapshot, the current measure otherwise."""
        snapshot = self._store.get(key)
        if snapshot.remote:
            return Usage(0, 0)
        if snapshot.kind is Kind.COMMITTED:
            return Usage(snapshot.size, snapshot.inodes)
        return self._measure(self.files(snapshot))

    def walk(self) -> list[Snapshot]:
        return self._store.all()

    # -- changing -------------------------------------------------------------------------

    def commit(self, name: str, key: str, labels: dict[str, str]) -> Snapshot:
        """Active snapshot `key` becomes committed `name` (its labels replaced by `labels`
        when any are given, as containerd's storage does)."""
        with self._lock:
            snapshot = self._store.get(key)
            if snapshot.kind is not Kind.ACTIVE:
                raise InvalidSnapshotError(f"snapshot {key!r} is a {snapshot.kind.value} "
                                           "snapshot: only an active one can be committed")
            if not name:
                raise InvalidSnapshotError("a committed snapshot's name must not be empty")
            usage = self._measure(self.files(snapshot))
            committed = self._store.commit(key, name, labels or snapshot.labels, usage.size,
                                           usage.inodes)
            shutil.rmtree(self._work(committed), ignore_errors=True)
            return committed

    def update(self, key: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        """Change the labels of `key`: all of them (no paths, or `labels`) or the ones named
        `labels.NAME` (removed when absent from `labels`). Nothing else may change."""
        with self._lock:
            snapshot = self._store.get(key)
            if not paths:
                return self._store.set_labels(key, dict(labels))
            merged = dict(snapshot.labels)
            for path in paths:
                if path == "labels":
                    merged = dict(labels)
                elif path.startswith("labels."):
                    name = path.removeprefix("labels.")
                    if name in labels:
                        merged[name] = labels[name]
                    else:
                        merged.pop(name, None)
                else:
                    raise InvalidSnapshotError(f"cannot update {path!r} of snapshot {key!r}: "
                                               "only its labels can change")
            return self._store.set_labels(key, merged)

    def remove(self, key: str) -> None:
        """Forget `key` and delete its local files (a remote layer's stay on the mount)."""
        with self._lock:
            snapshot = self._store.get(key)
            if self._store.children(key):
                raise SnapshotInUseError(f"snapshot {key!r} has children: remove them first")
            self._store.delete(key)
            if not snapshot.remote:
                shutil.rmtree(self._root / str(snapshot.id), ignore_errors=True)

    def cleanup(self) -> list[Path]:
        """Delete local directories no snapshot owns (left by a crash between the metadata
        change and the file change); the directories deleted."""
        with self._lock:
            owned = {str(snapshot.id) for snapshot in self._store.all()}
            removed = [entry for entry in sorted(self._root.iterdir())
                       if entry.name not in owned]
            for entry in removed:
                shutil.rmtree(entry, ignore_errors=True)
            return removed
