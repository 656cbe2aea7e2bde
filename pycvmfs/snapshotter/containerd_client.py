"""A client of containerd's own gRPC services (Content, Images, Leases, Snapshots, Diff) on its
unix socket, with the message classes of pycvmfs/snapshotter/api.py.

Every call carries the namespace (`containerd-namespace` metadata) and, inside `lease()`,
the lease (`containerd-lease`), so what is written stays protected from the garbage
collector until the image record refers to it. Status codes come back as grpc.RpcError;
`ContainerdError` turns the unexpected ones into one line.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pycvmfs.snapshotter.api import (
    CONTENT,
    DIFF,
    IMAGES,
    LEASES,
    SNAPSHOTS,
    Api,
    ApiMissingError,
    load,
)
from pycvmfs.snapshotter.errors import SnapshotterError

CALL_TIMEOUT_S = 30.0
LEASE_EXPIRE_S = 3600  # a pull that dies leaves a lease the GC drops after this
EXPIRE_LABEL = "containerd.io/gc.expire"


class ContainerdError(SnapshotterError):
    """containerd refused a call, or is not there."""


class ContainerdClient:
    """containerd at the unix socket `socket`, in `namespace`. Use as a context manager."""

    def __init__(self, socket: Path, namespace: str = "default") -> None:
        try:
            import grpc
        except ImportError:
            raise ApiMissingError("talking to containerd needs grpcio: "
                                  "pip install 'pycvmfs[snapshotter]'") from None

        self._grpc = grpc
        self.socket = socket
        self.apis = {name: load(service_name=name) for name in (CONTENT, IMAGES, LEASES,
                                                                 SNAPSHOTS, DIFF)}
        self._channel = grpc.insecure_channel(f"unix:{socket}")
        self._metadata: tuple[tuple[str, str], ...] = (("containerd-namespace", namespace),)

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._channel.close()

    def _call(self, service: str, method: str, request: Any) -> Any:
        api: Api = self.apis[service]
        rpc = api.methods[method]
        stub = self._channel.unary_unary(api.path(method),
                                         request_serializer=rpc.request.SerializeToString,
                                         response_deserializer=rpc.response.FromString)
        return stub(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)

    def code_of(self, error: BaseException) -> str | None:
        """The gRPC status name of a failed call (None for other exceptions)."""
        if isinstance(error, self._grpc.RpcError):
            return str(error.code().name)
        return None

    def failure(self, what: str, error: Exception) -> ContainerdError:
        """A one-line error for a failed call."""
        if isinstance(error, self._grpc.RpcError):
            if error.code() == self._grpc.StatusCode.UNAVAILABLE:
                return ContainerdError(f"containerd is not answering on {self.socket}: "
                                       "check --containerd and that containerd runs")
            return ContainerdError(f"containerd refused {what}: {error.code().name}: "
                                   f"{error.details()}")
        return ContainerdError(f"{what}: {error}")

    @contextmanager
    def lease(self) -> Iterator[str]:
        """A lease that protects everything written inside the block; deleted at its end,
        with a garbage collection (what the image record does not refer to goes)."""
        api = self.apis[LEASES]
        lease_id = f"pycvmfs-pull-{uuid.uuid4().hex}"
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + LEASE_EXPIRE_S))
        self._call(LEASES, "Create", api.message("CreateRequest", id=lease_id,
                                                 labels={EXPIRE_LABEL: expire}))
        outer = self._metadata
        self._metadata = (*outer, ("containerd-lease", lease_id))
        try:
            yield lease_id
        finally:
            self._metadata = outer
            # sync: containerd collects garbage before answering, so the image's GC labels
            # are proven (or a missing one fails the next `ctr run`) when pull returns
            self._call(LEASES, "Delete", api.message("DeleteRequest", id=lease_id, sync=True))

    def write_content(self, ref: str, digest: str, data: bytes,
                      labels: dict[str, str]) -> bool:
        """Write and commit one blob with its labels; False when containerd already had it
        (its labels are then set with Update)."""
        return self.write_stream(ref, digest, len(data), [data], labels)

    def write_stream(self, ref: str, digest: str, total: int, chunks: Iterable[bytes],
                     labels: dict[str, str], timeout: float = CALL_TIMEOUT_S) -> bool:
        """`write_content` of a blob given as chunks (WRITE each, then COMMIT)."""
        api = self.apis[CONTENT]
        rpc = api.methods["Write"]
        stub = self._channel.stream_stream(api.path("Write"),
                                           request_serializer=rpc.request.SerializeToString,
                                           response_deserializer=rpc.response.FromString)

        def requests() -> Iterator[Any]:
            offset = 0
            for chunk in chunks:
                yield api.message("WriteContentRequest", action=1, ref=ref, total=total,
                                  expected=digest, offset=offset, data=chunk)
                offset += len(chunk)
            yield api.message("WriteContentRequest", action=2, ref=ref, total=total,
                              expected=digest, offset=offset, labels=labels)

        try:
            for _ in stub(requests(), metadata=self._metadata, timeout=timeout):
                pass
        except self._grpc.RpcError as error:
            if error.code() != self._grpc.StatusCode.ALREADY_EXISTS:
                raise
            update = api.message("UpdateRequest", info=api.message("Info", digest=digest,
                                                                   labels=labels))
            update.update_mask.paths.extend(f"labels.{key}" for key in labels)
            self._call(CONTENT, "Update", update)
            return False
        return True

    def prepare(self, snapshotter: str, key: str, parent: str,
                labels: dict[str, str]) -> list[Any]:
        """Snapshots.Prepare: the active snapshot's mounts (grpc.RpcError ALREADY_EXISTS
        when the snapshot is there)."""
        api = self.apis[SNAPSHOTS]
        return list(self._call(SNAPSHOTS, "Prepare", api.message(
            "PrepareSnapshotRequest", snapshotter=snapshotter, key=key, parent=parent,
            labels=labels)).mounts)

    def commit(self, snapshotter: str, name: str, key: str) -> None:
        api = self.apis[SNAPSHOTS]
        self._call(SNAPSHOTS, "Commit", api.message("CommitSnapshotRequest",
                                                    snapshotter=snapshotter, name=name, key=key))

    def apply(self, layer: dict[str, object], mounts: list[Any]) -> str:
        """Diff.Apply of a layer blob in the content store onto `mounts`: the diff ID of
        what was applied (containerd decompresses and checks the blob's digest)."""
        api = self.apis[DIFF]
        request = api.message("ApplyRequest", diff=api.message("Descriptor", **layer))
        for mount in mounts:
            request.mounts.add().CopyFrom(mount)
        return str(self._call(DIFF, "Apply", request).applied.digest)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        api = self.apis[SNAPSHOTS]
        self._call(SNAPSHOTS, "Remove", api.message("RemoveSnapshotRequest",
                                                    snapshotter=snapshotter, key=key))

    def put_image(self, name: str, target: dict[str, object]) -> None:
        """Images.Create, or Images.Update when the name is taken (a pull again)."""
        api = self.apis[IMAGES]
        image = api.message("Image", name=name, target=api.message("Descriptor", **target))
        try:
            self._call(IMAGES, "Create", api.message("CreateImageRequest", image=image))
        except self._grpc.RpcError as error:
            if error.code() != self._grpc.StatusCode.ALREADY_EXISTS:
                raise
            self._call(IMAGES, "Update", api.message("UpdateImageRequest", image=image))
