"""containerd's Snapshots service, called as grpcio calls it (request message, context),
with the message classes compiled from containerd's own .proto files (`make grpc-stubs`;
skipped when they could not be made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest

grpc = pytest.importorskip("grpc")

from pycvmfs.images.layout import layerfs_dir  # noqa: E402
from pycvmfs.snapshotter import api as api_module  # noqa: E402
from pycvmfs.snapshotter.layers import LAYER_DIGEST_LABEL, TARGET_LABEL  # noqa: E402
from pycvmfs.snapshotter.server import build  # noqa: E402

if not api_module.DESCRIPTOR_SET.is_file():
    pytest.skip("containerd's API is not compiled (make grpc-stubs says why)",
                allow_module_level=True)

LAYER = "sha256:" + "d" * 64


class AbortedError(Exception):
    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code


class FakeContext:
    def abort(self, code: Any, details: str) -> NoReturn:
        raise AbortedError(code, details)


@pytest.fixture
def service(tmp_path: Path) -> tuple[Any, Any]:
    mount = tmp_path / "mnt"
    (mount / layerfs_dir(LAYER)).mkdir(parents=True)
    api, servicer, _store = build(mount, tmp_path / "state")
    return api, servicer


def call(api: Any, servicer: Any, method: str, **fields: Any) -> Any:
    """Through the wire format both ways, as containerd's client would."""
    rpc = api.methods[method]
    request = rpc.request.FromString(rpc.request(**fields).SerializeToString())
    answer = getattr(servicer, method)(request, FakeContext())
    if rpc.server_streaming:
        return [rpc.response.FromString(part.SerializeToString()) for part in answer]
    return rpc.response.FromString(answer.SerializeToString())


def test_the_api_has_containerds_methods() -> None:
    api = api_module.load()
    assert set(api.methods) == {"Prepare", "View", "Mounts", "Commit", "Remove", "Stat",
                                "Update", "List", "Usage", "Cleanup"}
    assert api.methods["List"].server_streaming and not api.methods["List"].client_streaming
    assert api.path("Prepare") == "/containerd.services.snapshots.v1.Snapshots/Prepare"


@pytest.mark.parametrize(("service", "method", "streams"), [
    (api_module.CONTENT, "Write", (True, True)), (api_module.CONTENT, "Info", (False, False)),
    (api_module.IMAGES, "Create", (False, False)), (api_module.LEASES, "Create", (False, False)),
])
def test_the_client_services_load(service: str, method: str, streams: tuple[bool, bool]) -> None:
    """What a client registering an image in containerd calls."""
    api = api_module.load(api_module.DESCRIPTOR_SET, service)
    rpc = api.methods[method]
    assert (rpc.client_streaming, rpc.server_streaming) == streams
    if service == api_module.IMAGES:
        image = api.message("Image", name="x", target=api.message("Descriptor", digest="d"))
        assert image.target.digest == "d"


def test_a_service_the_set_lacks_is_named() -> None:
    with pytest.raises(api_module.ApiMissingError, match="No.Such"):
        api_module.load(api_module.DESCRIPTOR_SET, "No.Such")


def test_remote_prepare_answers_already_exists(service: tuple[Any, Any]) -> None:
    api, servicer = service
    labels = {TARGET_LABEL: "ns/1/chain", LAYER_DIGEST_LABEL: LAYER}
    with pytest.raises(AbortedError) as aborted:
        call(api, servicer, "Prepare", key="ns/2/extract", parent="", labels=labels)
    assert aborted.value.code == grpc.StatusCode.ALREADY_EXISTS
    info = call(api, servicer, "Stat", key="ns/1/chain").info
    assert (info.name, api.messages["Info"].DESCRIPTOR.fields_by_name["kind"]
            .enum_type.values_by_number[info.kind].name) == ("ns/1/chain", "COMMITTED")
    assert info.labels["containerd.io/snapshot/remote"] == "remote snapshot"
    assert info.created_at.seconds > 1_600_000_000
    answer = call(api, servicer, "Prepare", key="ns/3/rootfs", parent="ns/1/chain")
    (mount,) = answer.mounts
    assert mount.type == "overlay" and mount.source == "overlay"
    assert any(option.startswith("lowerdir=") and option.endswith(layerfs_dir(LAYER))
               for option in mount.options)
    assert list(call(api, servicer, "Mounts", key="ns/3/rootfs").mounts) == [mount]


def test_local_lifecycle(service: tuple[Any, Any]) -> None:
    api, servicer = service
    (bind,) = call(api, servicer, "Prepare", key="extract", labels={"a": "1"}).mounts
    assert (bind.type, list(bind.options)) == ("bind", ["rw", "rbind"])
    Path(bind.source, "file").write_bytes(b"12345")
    assert call(api, servicer, "Usage", key="extract").inodes == 2
    call(api, servicer, "Commit", name="layer", key="extract", labels={"b": "2"})
    info = api.message("Info", name="layer", labels={"c": "3"})
    mask = api.messages["UpdateSnapshotRequest"].DESCRIPTOR.fields_by_name["update_mask"]
    assert mask.message_type.full_name == "google.protobuf.FieldMask"
    updated = call(api, servicer, "Update", info=info, update_mask={"paths": ["labels.c"]})
    assert dict(updated.info.labels) == {"b": "2", "c": "3"}
    (view,) = call(api, servicer, "View", key="view", parent="layer").mounts
    assert (view.type, view.source) == ("bind", bind.source)
    listed = call(api, servicer, "List", filters=["kind==view", "name==layer"])
    assert sorted(info.name for part in listed for info in part.info) == ["layer", "view"]
    with pytest.raises(AbortedError) as aborted:
        call(api, servicer, "Remove", key="layer")
    assert aborted.value.code == grpc.StatusCode.FAILED_PRECONDITION
    call(api, servicer, "Remove", key="view")
    call(api, servicer, "Remove", key="layer")
    call(api, servicer, "Cleanup")
    with pytest.raises(AbortedError) as aborted:
        call(api, servicer, "Stat", key="layer")
    assert aborted.value.code == grpc.StatusCode.NOT_FOUND
    assert call(api, servicer, "List") == []
