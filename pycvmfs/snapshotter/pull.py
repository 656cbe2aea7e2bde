"""`pycvmfs snapshotter pull`: register an image in containerd so that `ctr run
--snapshotter pycvmfs` runs it, without downloading a layer blob.

Under a lease: the manifest and config (from the registry: small documents) go into
containerd's content store with their GC labels (pull_plan.py); each layer's snapshot is
prepared through containerd's Snapshots service with the pycvmfs snapshotter and the
labels that name the layer, which the snapshotter answers ALREADY_EXISTS after adopting
the repository's layer tree; then the image record points at the manifest.

Layers not in the repository are refused, before anything is written, with an error that
names the layer and says to ingest the image with layer trees (`ctr image pull
--snapshotter pycvmfs` pulls such an image the ordinary way).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from pycvmfs.images.reference import HUB_REGISTRY, parse_reference
from pycvmfs.images.registry import RegistryClient
from pycvmfs.snapshotter.containerd_client import ContainerdClient, ContainerdError
from pycvmfs.snapshotter.errors import SnapshotterError
from pycvmfs.snapshotter.layers import RemoteLayers
from pycvmfs.snapshotter.pull_plan import SNAPSHOTTER, LayerSnapshot, PullPlan, plan_pull

CTR_HUB = "docker.io"  # how containerd's reference.ParseNormalizedNamed spells the Hub


class LayerNotInRepositoryError(SnapshotterError):
    code = "NOT_FOUND"


class Containerd(Protocol):
    """What `register` calls (ContainerdClient; a fake in unit tests)."""

    def lease(self) -> AbstractContextManager[str]: ...

    def write_content(self, ref: str, digest: str, data: bytes,
                      labels: dict[str, str]) -> bool: ...

    def prepare(self, snapshotter: str, key: str, parent: str,
                labels: dict[str, str]) -> None: ...

    def remove_snapshot(self, snapshotter: str, key: str) -> None: ...

    def put_image(self, name: str, target: dict[str, object]) -> None: ...

    def code_of(self, error: BaseException) -> str | None: ...

    def failure(self, what: str, error: Exception) -> ContainerdError: ...


def image_name(reference: str) -> str:
    """The image record's name: `registry/repository:tag` (or `@digest`), as `ctr` names
    it (no `docker://`, no scheme, Docker Hub as `docker.io`)."""
    ref = parse_reference(reference)
    suffix = f"@{ref.digest}" if ref.digest and not ref.tag else f":{ref.tag or 'latest'}"
    registry = CTR_HUB if ref.registry == HUB_REGISTRY else ref.registry
    return f"{registry}/{ref.repository}{suffix}"


def fetch_plan(reference: str, *, plain_http: bool = False) -> PullPlan:
    """Manifest and config from the registry (auth, digests checked), as a plan."""
    ref = parse_reference(reference)
    with RegistryClient.for_reference(ref, insecure=plain_http) as client:
        manifest = client.get_manifest(ref)
        config = client.get_config(ref.repository, manifest)
    return plan_pull(image_name(reference), manifest, config)


def missing_layers(plan: PullPlan, repository: Path) -> list[str]:
    """Digests of the plan's layers that the mounted repository has no tree for."""
    layers = RemoteLayers(repository)
    return [layer.layer_digest for layer in plan.layers if layers.find(layer.labels) is None]


def register(plan: PullPlan, client: Containerd, repository: Path,
             snapshotter: str = SNAPSHOTTER) -> None:
    """Send the plan to containerd (module docstring)."""
    missing = missing_layers(plan, repository)
    if missing:
        raise LayerNotInRepositoryError(
            f"{plan.name}: layer {missing[0]} is not in {repository}/.layers "
            f"({len(missing)} of {len(plan.layers)} missing); ingest the image with "
            "layer trees first")
    step = "a lease"
    try:
        with client.lease():
            for blob in (plan.config, plan.manifest):
                step = f"writing {blob.digest}"
                client.write_content(f"pycvmfs-pull-{blob.digest}", blob.digest, blob.data,
                                     blob.labels)
            for layer in plan.layers:
                step = f"preparing the snapshot of layer {layer.layer_digest}"
                _prepare(client, snapshotter, layer)
            step = f"creating the image {plan.name}"
            client.put_image(plan.name, plan.manifest.descriptor)
    except ContainerdError:
        raise
    except Exception as error:
        if client.code_of(error) is None:
            raise
        raise client.failure(step, error) from None


def _prepare(client: Containerd, snapshotter: str, layer: LayerSnapshot) -> None:
    try:
        client.prepare(snapshotter, layer.key, layer.parent, layer.labels)
    except Exception as error:
        if client.code_of(error) == "ALREADY_EXISTS":
            return
        raise
    client.remove_snapshot(snapshotter, layer.key)
    raise LayerNotInRepositoryError(
        f"the {snapshotter} snapshotter did not adopt layer {layer.layer_digest} from the "
        "repository: "
        "is `pycvmfs snapshotter serve` running on the same mount?")


def pull(reference: str, socket: Path, repository: Path, *, namespace: str = "default",
         plain_http: bool = False) -> PullPlan:
    """Register `reference` in the containerd at `socket`; the plan it sent."""
    plan = fetch_plan(reference, plain_http=plain_http)
    with ContainerdClient(socket, namespace) as client:
        register(plan, client, repository)
    return plan
