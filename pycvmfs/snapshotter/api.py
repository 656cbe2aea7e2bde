"""containerd's snapshots API as Python message classes, built at run time.

`containerd_api.binpb` (next to this module, not committed) is the FileDescriptorSet that
`make grpc-stubs` (tools/grpc_stubs.py) compiles from containerd's own `.proto` files:
`containerd.services.snapshots.v1.Snapshots` and `containerd.types.Mount`. protobuf's
message factory turns it into classes here, so the wire format is exactly containerd's and
no generated Python is imported. grpcio and protobuf are the `snapshotter` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pycvmfs.snapshotter.errors import SnapshotterError

DESCRIPTOR_SET = Path(__file__).with_name("containerd_api.binpb")
SERVICE = "containerd.services.snapshots.v1.Snapshots"
PACKAGE = "containerd.services.snapshots.v1"


class ApiMissingError(SnapshotterError):
    """The descriptor set or the gRPC packages are not installed."""


@dataclass(frozen=True)
class Api:
    """The message classes by short name (`PrepareSnapshotRequest`, `Info`, `Mount`, ...),
    and each RPC's (request class, response class, server-streaming)."""

    messages: dict[str, Any]
    methods: dict[str, tuple[Any, Any, bool]]

    def message(self, type_name: str, **fields: Any) -> Any:
        """A new message of this short name."""
        return self.messages[type_name](**fields)


@cache
def load(path: Path = DESCRIPTOR_SET) -> Api:
    """The API from the descriptor set at `path` (ApiMissingError when it cannot be read)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as exc:
        raise ApiMissingError("the snapshotter needs protobuf and grpcio: "
                              "pip install 'pycvmfs[snapshotter]'") from exc
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ApiMissingError(f"{path}: {exc.strerror}; generate containerd's API with "
                              "`make grpc-stubs`") from exc
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    service = pool.FindServiceByName(SERVICE)
    messages: dict[str, Any] = {}
    for full_name in (f"{PACKAGE}.{name}" for name in service.file.message_types_by_name):
        messages[full_name.rsplit(".", 1)[1]] = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(full_name))
    messages["Mount"] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("containerd.types.Mount"))
    messages["Empty"] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.protobuf.Empty"))
    methods = {method.name: (message_factory.GetMessageClass(method.input_type),
                             message_factory.GetMessageClass(method.output_type),
                             method.server_streaming)
               for method in service.methods}
    return Api(messages=messages, methods=methods)
