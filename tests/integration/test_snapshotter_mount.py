"""containerd runs a container whose layers are the layer trees of a pycvmfs-mounted image
repository: the test image (two layers) ingested with layer trees, served by nginx and
mounted; its manifest and config imported into a private containerd without unpacking;
each layer's snapshot prepared through containerd with the labels a remote-aware client
sends (chain ID, layer digest), each answered "already exists" by the snapshotter; then
`ctr run` starts the container on an overlay whose lowerdirs are on the mount."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.images import layout
from tests.containerd import (
    PLUGIN,
    PrivateContainerd,
    SnapshotsClient,
    Snapshotter,
    missing_requirement,
)
from tests.ingested import IngestedImages
from tests.mounting import cli_mount
from tests.publish_helpers import Keys
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX,
              pytest.mark.skipif(missing_requirement() is not None,
                                 reason=missing_requirement() or "")]


def _archive_without_layers(image_layout: Path, manifest_digest: str, dest: Path) -> Path:
    """An OCI archive holding the image's manifest and config only: containerd records the
    image; its layers come from the snapshotter."""
    blobs = image_layout / "blobs" / "sha256"
    manifest = (blobs / manifest_digest.split(":")[1]).read_bytes()
    config_digest = json.loads(manifest)["config"]["digest"]
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "python"}}]}
    (dest / "index.json").write_text(json.dumps(index))
    archive = dest / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(dest / "index.json", "index.json")
        tar.add(image_layout / "oci-layout", "oci-layout")
        for digest in (manifest_digest, config_digest):
            tar.add(blobs / digest.split(":")[1], f"blobs/sha256/{digest.split(':')[1]}")
    return archive


@pytest.fixture
def mounted(ingested_images: IngestedImages, keys: Keys) -> Iterator[tuple[Path, Path]]:
    """(mountpoint of the repository, a scratch directory)."""
    with shared_scratch("pycvmfs-snapshotter-") as base, Nginx() as server:
        mnt = base / "mnt"
        mnt.mkdir()
        with cli_mount(keys.fqrn, mnt, env=dict(os.environ), options={
                "CVMFS_SERVER_URL": server.publish(f"cvmfs/{keys.fqrn}",
                                                   ingested_images.storage),
                "CVMFS_HTTP_PROXY": "DIRECT", "CVMFS_PUBLIC_KEY": str(keys.public_key_file),
                "CVMFS_CACHE_BASE": str(base / "cache")}):
            yield mnt, base


def test_containerd_runs_from_the_layer_trees(ingested_images: IngestedImages,
                                             mounted: tuple[Path, Path]) -> None:
    import grpc

    mnt, base = mounted
    image = ingested_images.images.python
    manifest = json.loads((mnt / layout.metadata_file(ingested_images.name("python")))
                          .read_text())
    digests = [layer["digest"] for layer in manifest["layers"]]
    chains = layout.oci_chain_ids(list(image.config["rootfs"]["diff_ids"]))  # type: ignore[index]
    assert len(chains) == len(digests) == 2
    snapshotter = Snapshotter(base / "snapshotter.sock", mnt, base / "snapshotter")
    containerd = PrivateContainerd(base, base / "snapshotter.sock")
    with snapshotter, containerd:
        archive = _archive_without_layers(image.layout, image.manifest_digest, base)
        containerd.ctr("images", "import", "--no-unpack", "--snapshotter", PLUGIN,
                       "--base-name", "localhost/t", str(archive))
        client = SnapshotsClient(containerd.socket)
        try:
            for number, (chain, digest) in enumerate(zip(chains, digests, strict=True)):
                with pytest.raises(grpc.RpcError) as answer:
                    client.call("Prepare", key=f"extract-{number} {chain}",
                                parent=chains[number - 1] if number else "", labels={
                                    "containerd.io/snapshot.ref": chain,
                                    "containerd.io/snapshot/cri.layer-digest": digest,
                                    "containerd.io/gc.root": "test"})
                assert answer.value.code() == grpc.StatusCode.ALREADY_EXISTS
        finally:
            client.close()
        output = containerd.ctr("run", "--snapshotter", PLUGIN, "localhost/t:python", "run-1",
                                "python3", "-c", "print('hello from', 6 * 7)", timeout=90)
        assert output.strip() == "hello from 42"
        mounts = containerd.ctr("snapshots", "--snapshotter", PLUGIN, "mounts", "/x", "run-1")
        lower = ":".join(str(mnt / layout.layerfs_dir(d)) for d in reversed(digests))
        assert f"lowerdir={lower}" in mounts
        containerd.ctr("containers", "rm", "run-1")
