"""containerd's gRPC API as Python message classes, built at run time.

`containerd_api.binpb` (next to this module, not committed) is the FileDescriptorSet that
`make grpc-stubs` (tools/grpc_stubs.py) compiles from containerd's own `.proto` files: the
`Snapshots` service the snapshotter serves, and `Content`, `Images`, `Leases` and `Diff`,
which a client registering an image in containerd calls. protobuf's message factory turns it into
classes here, so the wire format is exactly containerd's and no generated Python is
imported. grpcio and protobuf are the `snapshotter` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pycvmfs.snapshotter.errors import SnapshotterError

DESCRIPTOR_SET = Path(__file__).with_name("containerd_api.binpb")
SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"
CONTENT = "containerd.services.content.v1.Content"
IMAGES = "containerd.services.images.v1.Images"
LEASES = "containerd.services.leases.v1.Leases"
DIFF = "containerd.services.diff.v1.Diff"
SERVICE = SNAPSHOTS  # the one the snapshotter serves
SHARED_TYPES = ("containerd.types.Mount", "containerd.types.Descriptor", "google.protobuf.Empty")


class ApiMissingError(SnapshotterError):
    """The descriptor set or the gRPC packages are not installed."""


@dataclass(frozen=True)
class Method:
    """One RPC: its message classes and which sides stream."""

    request: Any
    response: Any
    client_streaming: bool
    server_streaming: bool


@dataclass(frozen=True)
class Api:
    """One service: its full name, the message classes of its .proto file and the shared
    types it uses by short name (`PrepareSnapshotRequest`, `Info`, `Mount`, `Empty`, ...),
    and its RPCs by name."""

    service: str
    messages: dict[str, Any]
    methods: dict[str, Method]

    def message(self, type_name: str, **fields: Any) -> Any:
        """A new message of this short name."""
        return self.messages[type_name](**fields)

    def path(self, method: str) -> str:
        """The gRPC path of an RPC: `/SERVICE/METHOD`."""
        return f"/{self.service}/{method}"


@cache
def _pool(path: Path) -> Any:
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool
    except ImportError as exc:
        raise ApiMissingError("containerd's API needs protobuf and grpcio: "
                              "pip install 'pycvmfs[snapshotter]'") from exc
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ApiMissingError(f"{path}: {exc.strerror}; generate containerd's API with "
                              "`make grpc-stubs`") from exc
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(proto)
    return pool


@cache
def load(path: Path = DESCRIPTOR_SET, service_name: str = SNAPSHOTS) -> Api:
    """The service `service_name` from the descriptor set at `path` (ApiMissingError when
    it cannot be read or lacks the service)."""
    from google.protobuf import message_factory

    pool = _pool(path)
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        raise ApiMissingError(f"{path} has no {service_name}; regenerate it with "
                              "`make grpc-stubs`") from None
    messages = {short: message_factory.GetMessageClass(descriptor)
                for short, descriptor in service.file.message_types_by_name.items()}
    for full_name in SHARED_TYPES:
        try:
            messages[full_name.rsplit(".", 1)[1]] = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(full_name))
        except KeyError:
            continue
    methods = {method.name: Method(message_factory.GetMessageClass(method.input_type),
                                   message_factory.GetMessageClass(method.output_type),
                                   method.client_streaming, method.server_streaming)
               for method in service.methods}
    return Api(service_name, messages, methods)
