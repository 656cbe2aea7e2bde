"""What `pycvmfs snapshotter pull` sends to containerd: chain IDs, snapshot keys and
labels, content labels and the image record's target (pycvmfs/snapshotter/pull_plan.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from pycvmfs.images.manifest import Manifest, parse_config, parse_manifest
from pycvmfs.snapshotter.pull import image_name
from pycvmfs.snapshotter.pull_plan import PullPlanError, chain_ids, plan_pull

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYERS = [_digest(b"layer-a"), _digest(b"layer-b")]
DIFF_IDS = [_digest(b"diff-a"), _digest(b"diff-b")]


def _image(diff_ids: list[str] = DIFF_IDS) -> tuple[Manifest, bytes, str]:
    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": _digest(config),
                                 "size": len(config)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                  "digest": d, "size": 1} for d in LAYERS]}).encode()
    manifest = parse_manifest(raw, OCI_MANIFEST)
    assert isinstance(manifest, Manifest)
    return manifest, config, _digest(config)


def test_chain_ids_are_containerds() -> None:
    second = "sha256:" + hashlib.sha256(f"{DIFF_IDS[0]} {DIFF_IDS[1]}".encode()).hexdigest()
    assert chain_ids(DIFF_IDS) == [DIFF_IDS[0], second]
    assert chain_ids([]) == []


def test_layers_are_prepared_bottom_up_with_the_labels_the_snapshotter_reads() -> None:
    manifest, config, config_digest = _image()
    plan = plan_pull("r/i:t", manifest, parse_config(config, config_digest))
    chains = chain_ids(DIFF_IDS)
    assert [(layer.parent, layer.chain_id) for layer in plan.layers] == [
        ("", chains[0]), (chains[0], chains[1])]
    assert plan.layers[1].key == f"extract-1 {chains[1]}"
    assert plan.layers[1].labels == {"containerd.io/snapshot.ref": chains[1],
                                     "containerd.io/snapshot/cri.layer-digest": LAYERS[1]}
    assert plan.top_chain_id == chains[1]


def test_content_labels_keep_config_and_snapshots_and_the_target_is_the_manifest() -> None:
    manifest, config, config_digest = _image()
    plan = plan_pull("r/i:t", manifest, parse_config(config, config_digest))
    assert plan.manifest.labels == {"containerd.io/gc.ref.content.config": config_digest}
    assert plan.config.labels == {"containerd.io/gc.ref.snapshot.pycvmfs": plan.top_chain_id}
    assert plan.manifest.descriptor == {"media_type": OCI_MANIFEST, "digest": manifest.digest,
                                        "size": len(manifest.raw)}
    assert plan.config.descriptor == {"media_type": OCI_CONFIG, "digest": config_digest,
                                      "size": len(config)}
    assert plan.config.data == config and plan.manifest.data == manifest.raw


def test_diff_ids_not_matching_the_layers_are_refused() -> None:
    manifest, config, config_digest = _image(DIFF_IDS[:1])
    with pytest.raises(PullPlanError, match="1 diff IDs for 2 layers"):
        plan_pull("r/i:t", manifest, parse_config(config, config_digest))


@pytest.mark.parametrize(("reference", "name"), [
    ("127.0.0.1:5000/ns/debian:python", "127.0.0.1:5000/ns/debian:python"),
    ("docker://127.0.0.1:5000/ns/debian", "127.0.0.1:5000/ns/debian:latest"),
    ("debian", "docker.io/library/debian:latest"),
    ("http://127.0.0.1:5000/ns/debian@" + LAYERS[0], "127.0.0.1:5000/ns/debian@" + LAYERS[0]),
])
def test_the_image_record_is_named_as_ctr_names_it(reference: str, name: str) -> None:
    assert image_name(reference) == name
