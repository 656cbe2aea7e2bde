"""What `pycvmfs snapshotter pull` sends to containerd: chain IDs, snapshot keys and
labels, content labels and the image record's target (pycvmfs/snapshotter/pull_plan.py),
and the order and refusals of the sequence (pull.py, against a fake containerd)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pycvmfs.images.layout import layerfs_dir, oci_chain_ids
from pycvmfs.images.manifest import Manifest, parse_config, parse_manifest
from pycvmfs.snapshotter.containerd_client import ContainerdError
from pycvmfs.snapshotter.layers import LAYER_DIGEST_LABEL
from pycvmfs.snapshotter.pull import (
    LayerMismatchError,
    LayerNotInRepositoryError,
    image_name,
    register,
)
from pycvmfs.snapshotter.pull_plan import (
    LayerSnapshot,
    PullPlan,
    PullPlanError,
    plan_pull,
)

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
    assert oci_chain_ids(DIFF_IDS) == [DIFF_IDS[0], second]
    assert oci_chain_ids([]) == []


def test_layers_are_prepared_bottom_up_with_the_labels_the_snapshotter_reads() -> None:
    manifest, config, config_digest = _image()
    plan = plan_pull("r/i:t", manifest, parse_config(config, config_digest))
    chains = oci_chain_ids(DIFF_IDS)
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


class _RefusedError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class FakeContainerd:
    """Records register's calls; Prepare answers `prepare_answer` (a status name, or None
    for an accepted Prepare)."""

    def __init__(self, prepare_answer: str | None = "ALREADY_EXISTS",
                 applied: str | None = None) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.prepare_answer = prepare_answer
        self.applied = applied  # the diff ID Apply answers; None: the right one

    @contextmanager
    def lease(self) -> Iterator[str]:
        self.calls.append(("lease",))
        try:
            yield "l"
        finally:
            self.calls.append(("lease end",))

    def write_content(self, ref: str, digest: str, data: bytes,
                      labels: dict[str, str]) -> bool:
        self.calls.append(("write", digest, dict(labels)))
        return True

    def write_stream(self, ref: str, digest: str, total: int, chunks: Iterator[bytes],
                     labels: dict[str, str], timeout: float = 0.0) -> bool:
        self.calls.append(("write", digest, b"".join(chunks)))
        return True

    def prepare(self, snapshotter: str, key: str, parent: str,
                labels: dict[str, str]) -> list[Any]:
        self.calls.append(("prepare", snapshotter, key, parent))
        if self.prepare_answer is not None and LAYER_DIGEST_LABEL in labels:
            raise _RefusedError(self.prepare_answer)
        return ["mount"]

    def commit(self, snapshotter: str, name: str, key: str) -> None:
        self.calls.append(("commit", name, key))

    def apply(self, layer: dict[str, object], mounts: list[Any]) -> str:
        self.calls.append(("apply", layer["digest"], mounts))
        return self.applied or DIFF_IDS[LAYERS.index(str(layer["digest"]))]

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self.calls.append(("remove", key))

    def put_image(self, name: str, target: dict[str, object]) -> None:
        self.calls.append(("image", name, target["digest"]))

    def code_of(self, error: BaseException) -> str | None:
        return error.code if isinstance(error, _RefusedError) else None

    def failure(self, what: str, error: Exception) -> ContainerdError:
        return ContainerdError(f"containerd refused {what}: {error}")


def _repository_with(tmp_path: Path, digests: list[str]) -> Path:
    for digest in digests:
        (tmp_path / layerfs_dir(digest)).mkdir(parents=True)
    return tmp_path


def _plan() -> PullPlan:
    manifest, config, config_digest = _image()
    return plan_pull("r/i:t", manifest, parse_config(config, config_digest))


def test_register_sends_content_then_snapshots_then_the_image_under_a_lease(
        tmp_path: Path) -> None:
    plan, client = _plan(), FakeContainerd()
    register(plan, client, _repository_with(tmp_path, LAYERS))
    chains = oci_chain_ids(DIFF_IDS)
    assert client.calls == [
        ("lease",), ("write", plan.config.digest, plan.config.labels),
        ("write", plan.manifest.digest, plan.manifest.labels),
        ("prepare", "pycvmfs", f"extract-0 {chains[0]}", ""),
        ("prepare", "pycvmfs", f"extract-1 {chains[1]}", chains[0]),
        ("image", "r/i:t", plan.manifest.digest), ("lease end",)]


def test_a_layer_missing_from_the_repository_is_refused_before_any_call(
        tmp_path: Path) -> None:
    client = FakeContainerd()
    with pytest.raises(LayerNotInRepositoryError, match=f"layer {LAYERS[1]} is not in"):
        register(_plan(), client, _repository_with(tmp_path, LAYERS[:1]))
    assert client.calls == []


def _fetch(layer: LayerSnapshot, dest: Path) -> None:
    dest.write_bytes(b"blob of " + layer.layer_digest.encode())


def test_a_layer_missing_from_the_repository_is_downloaded_applied_and_committed(
        tmp_path: Path) -> None:
    plan, client = _plan(), FakeContainerd()
    downloaded = register(plan, client, _repository_with(tmp_path, LAYERS[:1]), _fetch)
    assert downloaded == [LAYERS[1]]
    key = plan.layers[1].key
    assert client.calls[4:9] == [
        ("prepare", "pycvmfs", key, plan.layers[0].chain_id),
        ("write", LAYERS[1], b"blob of " + LAYERS[1].encode()),
        ("apply", LAYERS[1], ["mount"]), ("commit", plan.layers[1].chain_id, key),
        ("image", "r/i:t", plan.manifest.digest)]


def test_a_downloaded_layer_unpacking_to_another_diff_id_is_removed(tmp_path: Path) -> None:
    client = FakeContainerd(applied=DIFF_IDS[0])
    with pytest.raises(LayerMismatchError, match=f"says {DIFF_IDS[1]}"):
        register(_plan(), client, _repository_with(tmp_path, LAYERS[:1]), _fetch)
    assert client.calls[-2][0] == "remove"  # then the lease ends
    assert not [call for call in client.calls if call[0] in ("commit", "image")]


def test_a_layer_the_snapshotter_did_not_adopt_is_removed_and_named(tmp_path: Path) -> None:
    client = FakeContainerd(prepare_answer=None)
    with pytest.raises(LayerNotInRepositoryError, match=f"did not adopt layer {LAYERS[0]}"):
        register(_plan(), client, _repository_with(tmp_path, LAYERS))
    assert ("remove", client.calls[3][2]) in client.calls
    assert not [call for call in client.calls if call[0] == "image"]


def test_containerd_refusals_are_one_line(tmp_path: Path) -> None:
    client = FakeContainerd(prepare_answer="FAILED_PRECONDITION")
    with pytest.raises(ContainerdError, match=f"preparing the snapshot of layer {LAYERS[0]}"):
        register(_plan(), client, _repository_with(tmp_path, LAYERS))
