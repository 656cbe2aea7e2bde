"""`pycvmfs snapshotter pull` registers an ingested image in a private containerd with no
layer download: the test image (two layers) is served by the session's registry, which logs its
requests, the repository holding its layer trees is mounted, the pull writes manifest and
config and has the pycvmfs snapshotter adopt both layers; `ctr run` then runs python3 from
it and the registry saw no request for a layer blob. With a repository holding only the
bottom layer, the top one is downloaded and unpacked locally, and the image still runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pycvmfs.images import layout
from tests.containerd import (
    PLUGIN,
    PULL_TIMEOUT_S,
    PrivateContainerd,
    Snapshotter,
    missing_requirement,
    snapshotter_pull,
)
from tests.ingested import IngestedImages
from tests.integration.test_snapshotter_mount import mounted  # noqa: F401 - fixture
from tests.servers import NEEDS_FUSE_AND_NGINX

pytestmark = [*NEEDS_FUSE_AND_NGINX,
              pytest.mark.skipif(missing_requirement() is not None,
                                 reason=missing_requirement() or "")]


def test_pull_registers_the_image_without_layer_downloads(
        ingested_images: IngestedImages, mounted: tuple[Path, Path]) -> None:  # noqa: F811
    mnt, base = mounted
    image = ingested_images.images.python
    manifest = json.loads((mnt / layout.metadata_file(ingested_images.name("python")))
                          .read_text())
    layer_digests = [layer["digest"] for layer in manifest["layers"]]
    registry, reference = ingested_images.registry, ingested_images.name("python")
    with _containerd_over(mnt, base) as containerd:
        pushed = len(registry.log())
        done = snapshotter_pull(reference, containerd, mnt)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{reference}: sha256:")
        assert done.stdout.rstrip().endswith(f"2 of 2 layers from {mnt}, 0 downloaded")
        assert reference in containerd.ctr("images", "ls", "-q").split()
        # the lease is gone and containerd collected garbage: the labels keep all of it
        assert containerd.ctr("leases", "ls", "-q").split() == []
        snapshots = containerd.ctr("snapshots", "--snapshotter", PLUGIN, "ls")
        assert all(chain in snapshots for chain in layout.oci_chain_ids(
            list(image.config["rootfs"]["diff_ids"])))  # type: ignore[index]
        output = containerd.ctr("run", "--snapshotter", PLUGIN, reference, "pull-1",
                                "python3", "-c", "print('pulled', 6 * 7)", timeout=90)
        assert output.strip() == "pulled 42"
        containerd.ctr("containers", "rm", "pull-1")
        requests = [line for line in registry.log()[pushed:].splitlines() if '"GET ' in line]
        assert any("/manifests/python" in line for line in requests), requests
        assert not [line for line in requests
                    if any(digest in line for digest in layer_digests)], requests
        assert snapshotter_pull(reference, containerd, mnt).returncode == 0  # a pull again is fine


@contextmanager
def _containerd_over(repository: Path, base: Path) -> Iterator[PrivateContainerd]:
    """A private containerd behind a pycvmfs snapshotter serving `repository`."""
    with Snapshotter(base / "snapshotter.sock", repository, base / "snapshotter"), \
            PrivateContainerd(base, base / "snapshotter.sock") as containerd:
        yield containerd


def _partial_repository(mnt: Path, dest: Path, digest: str) -> Path:
    """A directory like the repository's mount holding one layer tree (a symlink into it)."""
    tree = dest / layout.layerfs_dir(digest)
    tree.parent.mkdir(parents=True)
    tree.symlink_to(mnt / layout.layerfs_dir(digest))
    return dest


def test_pull_downloads_only_the_layers_the_repository_lacks(
        ingested_images: IngestedImages, mounted: tuple[Path, Path]) -> None:  # noqa: F811
    mnt, base = mounted
    manifest = json.loads((mnt / layout.metadata_file(ingested_images.name("python")))
                          .read_text())
    bottom, top = [layer["digest"] for layer in manifest["layers"]]
    partial = _partial_repository(mnt, base / "partial", bottom)
    registry, reference = ingested_images.registry, ingested_images.name("python")
    with _containerd_over(partial, base) as containerd:
        pushed = len(registry.log())
        done = snapshotter_pull(reference, containerd, partial)
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip().endswith(f"1 of 2 layers from {partial}, 1 downloaded")
        output = containerd.ctr("run", "--snapshotter", PLUGIN, reference, "pull-2",
                                "python3", "-c", "print('partly', 6 * 7)", timeout=90)
        assert output.strip() == "partly 42"
        containerd.ctr("containers", "rm", "pull-2")
        requests = [line for line in registry.log()[pushed:].splitlines() if '"GET ' in line]
        assert [line for line in requests if f"/blobs/{top}" in line], requests
        assert not [line for line in requests if bottom in line], requests


def test_pull_without_containerd_or_repository_is_one_line(ingested_images: IngestedImages,
                                             tmp_path: Path) -> None:
    (tmp_path / layout.LAYERS).mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pycvmfs", "snapshotter", "pull", ingested_images.base_ref,
         "--containerd", f"unix://{tmp_path}/none.sock", "--repository", str(tmp_path)],
        capture_output=True, text=True, timeout=PULL_TIMEOUT_S, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"containerd is not answering on {tmp_path}/none.sock" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "pycvmfs", "snapshotter", "pull", ingested_images.base_ref,
         "--containerd", f"unix://{tmp_path}/none.sock", "--repository", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=PULL_TIMEOUT_S, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "ingested with layer trees" in done.stderr
