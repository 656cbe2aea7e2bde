"""`pycvmfs snapshotter pull`: register an image in containerd so that `ctr run
--snapshotter pycvmfs` runs it, without downloading a layer blob.

Under a lease: the manifest and config (from the registry: small documents) go into
containerd's content store with their GC labels (pull_plan.py); each layer's snapshot is
prepared through containerd's Snapshots service with the pycvmfs snapshotter and the
labels that name the layer, which the snapshotter answers ALREADY_EXISTS after adopting
the repository's layer tree; then the image record points at the manifest.

A layer the repository lacks is downloaded from the registry (digest-checked), written
into the content store and applied by containerd's Diff service onto a local snapshot,
which is committed under its chain ID after the applied diff ID is checked against the
config: an image only partly in the repository still runs. Without a downloader
(`fetch_layer=None`) such an image is refused before anything is written, naming the layer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from pycvmfs.errors import ConfigError
from pycvmfs.images.layout import LAYERS
from pycvmfs.images.reference import HUB_REGISTRY, parse_reference
from pycvmfs.images.registry import RegistryClient
from pycvmfs.snapshotter.containerd_client import ContainerdClient, ContainerdError
from pycvmfs.snapshotter.errors import SnapshotterError
from pycvmfs.snapshotter.layers import TARGET_LABEL, RemoteLayers
from pycvmfs.snapshotter.pull_plan import SNAPSHOTTER, LayerSnapshot, PullPlan, plan_pull

LayerFetcher = Callable[[LayerSnapshot, Path], None]  # the blob into a file, digest-checked
CHUNK_BYTES = 1 << 20
APPLY_TIMEOUT_S = 600.0  # writing and applying one downloaded layer
CTR_HUB = "docker.io"  # how containerd's reference.ParseNormalizedNamed spells the Hub


class LayerNotInRepositoryError(SnapshotterError):
    code = "NOT_FOUND"


class LayerMismatchError(SnapshotterError):
    """A downloaded layer whose content is not what the image config lists."""

    code = "DATA_LOSS"


class Containerd(Protocol):
    """What `register` calls (ContainerdClient; a fake in unit tests)."""

    def lease(self) -> AbstractContextManager[str]: ...

    def write_content(self, ref: str, digest: str, data: bytes,
                      labels: dict[str, str]) -> bool: ...

    def write_stream(self, ref: str, digest: str, total: int, chunks: Iterator[bytes],
                     labels: dict[str, str], timeout: float = ...) -> bool: ...

    def prepare(self, snapshotter: str, key: str, parent: str,
                labels: dict[str, str]) -> list[Any]: ...

    def commit(self, snapshotter: str, name: str, key: str) -> None: ...

    def apply(self, layer: dict[str, object], mounts: list[Any]) -> str: ...

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


def missing_layers(plan: PullPlan, repository: Path) -> list[str]:
    """Digests of the plan's layers that the mounted repository has no tree for."""
    layers = RemoteLayers(repository)
    return [layer.layer_digest for layer in plan.layers if layers.find(layer.labels) is None]


def register(plan: PullPlan, client: Containerd, repository: Path,
             fetch_layer: LayerFetcher | None = None,
             snapshotter: str = SNAPSHOTTER) -> list[str]:
    """Send the plan to containerd (module docstring); the digests of the layers that had
    to be downloaded."""
    missing = missing_layers(plan, repository)
    if missing and fetch_layer is None:
        raise LayerNotInRepositoryError(
            f"{plan.name}: layer {missing[0]} is not in {repository}/.layers "
            f"({len(missing)} of {len(plan.layers)} missing); ingest the image with "
            "layer trees first")
    step = "a lease"
    try:
        with client.lease(), tempfile.TemporaryDirectory(prefix="pycvmfs-pull-") as scratch:
            for blob in (plan.config, plan.manifest):
                step = f"writing {blob.digest}"
                client.write_content(f"pycvmfs-pull-{blob.digest}", blob.digest, blob.data,
                                     blob.labels)
            for layer in plan.layers:
                step = f"preparing the snapshot of layer {layer.layer_digest}"
                if layer.layer_digest in missing:
                    assert fetch_layer is not None
                    _download_and_apply(client, snapshotter, layer, fetch_layer,
                                        Path(scratch))
                else:
                    _prepare(client, snapshotter, layer)
            step = f"creating the image {plan.name}"
            client.put_image(plan.name, plan.manifest.descriptor)
    except ContainerdError:
        raise
    except Exception as error:
        if client.code_of(error) is None:
            raise
        raise client.failure(step, error) from None
    return missing


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


def _download_and_apply(client: Containerd, snapshotter: str, layer: LayerSnapshot,
                        fetch_layer: LayerFetcher, scratch: Path) -> None:
    """The ordinary unpack of one layer the repository lacks."""
    try:
        mounts = client.prepare(snapshotter, layer.key, layer.parent,
                                {TARGET_LABEL: layer.chain_id})
    except Exception as error:
        if client.code_of(error) == "ALREADY_EXISTS":
            return  # unpacked by an earlier pull
        raise
    try:
        blob = scratch / layer.layer_digest.replace(":", "-")
        fetch_layer(layer, blob)
        with blob.open("rb") as stream:
            client.write_stream(f"pycvmfs-pull-{layer.layer_digest}", layer.layer_digest,
                                blob.stat().st_size, iter(lambda: stream.read(CHUNK_BYTES), b""),
                                {}, timeout=APPLY_TIMEOUT_S)
        blob.unlink()
        applied = client.apply(layer.descriptor, mounts)
        if applied != layer.diff_id:
            raise LayerMismatchError(f"layer {layer.layer_digest} unpacks to {applied}, but "
                                     f"the image config says {layer.diff_id}")
        client.commit(snapshotter, layer.chain_id, layer.key)
    except BaseException:
        client.remove_snapshot(snapshotter, layer.key)
        raise


def registry_fetcher(client: RegistryClient, repository: str) -> LayerFetcher:
    """Layer blobs from the registry, digest- and size-checked."""
    def fetch(layer: LayerSnapshot, dest: Path) -> None:
        client.get_blob(repository, layer.layer_digest, dest, size=layer.size)
    return fetch


def pull(reference: str, socket: Path, repository: Path, *, namespace: str = "default",
         plain_http: bool = False) -> tuple[PullPlan, list[str]]:
    """Register `reference` in the containerd at `socket`: the plan it sent and the layers
    it downloaded."""
    if not (repository / LAYERS).is_dir():
        raise ConfigError(f"--repository {repository}: no {LAYERS}/ there; give the "
                          "mountpoint of an image repository ingested with layer trees")
    ref = parse_reference(reference)
    with RegistryClient.for_reference(ref, insecure=plain_http) as registry:
        manifest = registry.get_manifest(ref)
        config = registry.get_config(ref.repository, manifest)
        plan = plan_pull(image_name(reference), manifest, config)
        with ContainerdClient(socket, namespace) as client:
            downloaded = register(plan, client, repository,
                                  registry_fetcher(registry, ref.repository))
    return plan, downloaded
