"""`pycvmfs snapshotter serve`'s refusals before serving, each one line naming the fix, and a
remote layer that has left the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError
from pycvmfs.images.layout import layerfs_dir
from pycvmfs.snapshotter.api import ApiMissingError, load
from pycvmfs.snapshotter.errors import SnapshotExistsError, SnapshotNotFoundError
from pycvmfs.snapshotter.layers import LAYER_DIGEST_LABEL, TARGET_LABEL, RemoteLayers
from pycvmfs.snapshotter.server import build, socket_path
from pycvmfs.snapshotter.snapshots import Snapshotter
from pycvmfs.snapshotter.store import MetadataStore


def test_socket_addresses() -> None:
    assert socket_path("unix:///run/x.sock") == Path("/run/x.sock")
    assert socket_path("/run/x.sock") == Path("/run/x.sock")
    for bad in ("tcp://127.0.0.1:1", "unix://relative.sock", "x.sock"):
        with pytest.raises(ConfigError, match="absolute unix socket path"):
            socket_path(bad)


def test_repository_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        build(tmp_path / "missing", tmp_path / "state")


def test_missing_api_names_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(ApiMissingError, match="make grpc-stubs"):
        load(tmp_path / "none.binpb")


def test_a_layer_gone_from_the_repository_is_named(tmp_path: Path) -> None:
    digest = "sha256:" + "e" * 64
    tree = tmp_path / "mnt" / layerfs_dir(digest)
    tree.mkdir(parents=True)
    snapshotter = Snapshotter(MetadataStore(tmp_path / "s" / "db"),
                              RemoteLayers(tmp_path / "mnt"), tmp_path / "s")
    with pytest.raises(SnapshotExistsError):
        snapshotter.prepare("x", "", {TARGET_LABEL: "c", LAYER_DIGEST_LABEL: digest})
    snapshotter.prepare("rootfs", "c", {})
    tree.rmdir()
    with pytest.raises(SnapshotNotFoundError, match="not in the repository"):
        snapshotter.mounts("rootfs")
