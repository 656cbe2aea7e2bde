"""What `pycvmfs snapshotter pull` registers in containerd, computed from an image's
manifest and config alone (no I/O): chain IDs, snapshot keys and labels, content labels
and the image record's target descriptor.

Facts from containerd 1.6 (identity.ChainIDs, the unpacker, the garbage collector's labels):
- chain ID 0 is the first layer's diff ID; chain ID i is sha256("<chain i-1> <diff i>").
  containerd commits each layer's snapshot under its chain ID, the parent being the
  previous one; the labels `containerd.io/snapshot.ref` (the chain ID) and
  `containerd.io/snapshot/cri.layer-digest` (the layer blob) let the pycvmfs snapshotter
  find the layer tree and answer ALREADY_EXISTS (pycvmfs/snapshotter/layers.py).
- content is kept by the GC while an image record points at the manifest; the manifest's
  label `containerd.io/gc.ref.content.config` keeps the config, and the config's label
  `containerd.io/gc.ref.snapshot.<snapshotter>` keeps the top snapshot (and so its
  parents). Layer blobs are not in the content store, so no `gc.ref.content.l.N` labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycvmfs.images.layout import oci_chain_ids
from pycvmfs.images.manifest import ImageConfig, Manifest
from pycvmfs.snapshotter.errors import SnapshotterError
from pycvmfs.snapshotter.layers import LAYER_DIGEST_LABEL, TARGET_LABEL

SNAPSHOTTER = "pycvmfs"
CONFIG_REF_LABEL = "containerd.io/gc.ref.content.config"
SNAPSHOT_REF_LABEL_PREFIX = "containerd.io/gc.ref.snapshot."
GC_ROOT_LABEL = "containerd.io/gc.root"


class PullPlanError(SnapshotterError):
    """An image containerd cannot use as described (diff IDs not matching the layers)."""

    code = "INVALID_ARGUMENT"


@dataclass(frozen=True)
class BlobToStore:
    """A blob written into containerd's content store."""

    media_type: str
    digest: str
    data: bytes
    labels: dict[str, str]

    @property
    def descriptor(self) -> dict[str, object]:
        """The fields of containerd.types.Descriptor naming this blob."""
        return {"media_type": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True)
class LayerSnapshot:
    """One layer's snapshot: prepared under `key` on `parent`, committed as `chain_id`."""

    index: int
    layer_digest: str
    chain_id: str
    parent: str  # "" for the bottom layer
    media_type: str
    size: int
    diff_id: str  # what applying the blob must produce

    @property
    def key(self) -> str:
        """The active key of the Prepare (the unpacker's form: `extract-N <chain>`)."""
        return f"extract-{self.index} {self.chain_id}"

    @property
    def labels(self) -> dict[str, str]:
        return {TARGET_LABEL: self.chain_id, LAYER_DIGEST_LABEL: self.layer_digest}

    @property
    def descriptor(self) -> dict[str, object]:
        """The layer blob as containerd.types.Descriptor fields (for Diff.Apply)."""
        return {"media_type": self.media_type, "digest": self.layer_digest, "size": self.size}


@dataclass(frozen=True)
class PullPlan:
    """Everything `pull` sends to containerd, in order: manifest and config into the
    content store, the layer snapshots bottom to top, then the image record."""

    name: str
    manifest: BlobToStore
    config: BlobToStore
    layers: tuple[LayerSnapshot, ...]

    @property
    def top_chain_id(self) -> str:
        return self.layers[-1].chain_id if self.layers else ""


def plan_pull(name: str, manifest: Manifest, config: ImageConfig,
              snapshotter: str = SNAPSHOTTER) -> PullPlan:
    """The plan for registering `name` (the image record's name) in containerd."""
    if len(config.diff_ids) != len(manifest.layers):
        raise PullPlanError(f"{name}: the config lists {len(config.diff_ids)} diff IDs for "
                            f"{len(manifest.layers)} layers; the image is malformed")
    chains = oci_chain_ids(config.diff_ids)
    layers = tuple(LayerSnapshot(index, layer.digest, chain, chains[index - 1] if index else "",
                                 layer.media_type, layer.size, config.diff_ids[index])
                   for index, (layer, chain) in enumerate(zip(manifest.layers, chains,
                                                              strict=True)))
    config_labels = ({SNAPSHOT_REF_LABEL_PREFIX + snapshotter: chains[-1]} if chains else {})
    return PullPlan(
        name,
        BlobToStore(manifest.media_type, manifest.digest, manifest.raw,
                    {CONFIG_REF_LABEL: config.digest}),
        BlobToStore(manifest.config.media_type, config.digest, config.raw, config_labels),
        layers)
