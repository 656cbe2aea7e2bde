"""Finding a layer's tree in the mounted image repository from containerd's snapshot labels.

containerd's image unpacker prepares one snapshot per layer and labels the request with
`containerd.io/snapshot.ref` (the chain ID it will commit the snapshot as). A client that
wants remote snapshots (the CRI plugin, `ctr images rpull`, stargz's and cvmfs's tools)
also copies the layer descriptor's annotations `containerd.io/snapshot/cri.layer-digest`
(the layer blob's digest), `cri.image-ref` and `cri.image-layers` into the labels. Like
the reference's snapshotter, the digest alone locates the layer: ingest writes each layer
once at `MNT/.layers/<d[:2]>/<digest hex>/layerfs` (pycvmfs/images/layout.py).
"""

from __future__ import annotations

from pathlib import Path

from pycvmfs.images.layout import LayoutError, layerfs_dir

TARGET_LABEL = "containerd.io/snapshot.ref"
LAYER_DIGEST_LABEL = "containerd.io/snapshot/cri.layer-digest"
IMAGE_REF_LABEL = "containerd.io/snapshot/cri.image-ref"
IMAGE_LAYERS_LABEL = "containerd.io/snapshot/cri.image-layers"
REMOTE_LABEL = "containerd.io/snapshot/remote"  # set on snapshots whose files are remote
REMOTE_LABEL_VALUE = "remote snapshot"  # the value stargz's and cvmfs's snapshotters use


class RemoteLayers:
    """Layer trees under the pycvmfs mount of an image repository."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint

    def find(self, labels: dict[str, str]) -> Path | None:
        """The layer tree the labels name, if the repository has it; None otherwise (no
        digest label, a digest that is not `sha256:<hex>`, or a layer not ingested)."""
        digest = labels.get(LAYER_DIGEST_LABEL)
        if digest is None:
            return None
        try:
            tree = self.mountpoint / layerfs_dir(digest)
        except LayoutError:
            return None
        return tree if tree.is_dir() else None
