"""The gRPC face of the snapshotter: containerd's `Snapshots` service (Prepare, View, Mounts,
Commit, Remove, Stat, Update, List, Usage, Cleanup) over `Snapshotter`.

Requests and answers are the message classes of pycvmfs/snapshotter/api.py; each method
takes (request, context) as grpcio calls it, and a `SnapshotterError` becomes the status
its `code` names (containerd maps those back to its errdefs). The `snapshotter` field every
request carries is the name containerd knows the plugin by and is not needed here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol

from pycvmfs.snapshotter.api import Api
from pycvmfs.snapshotter.errors import SnapshotterError
from pycvmfs.snapshotter.filters import compile_filters
from pycvmfs.snapshotter.snapshots import Mount, Snapshotter
from pycvmfs.snapshotter.store import Snapshot

log = logging.getLogger(__name__)
LIST_BATCH = 100  # Info entries per List answer (containerd streams them in batches)


class Context(Protocol):
    """What the servicer uses of grpc.ServicerContext."""

    def abort(self, code: Any, details: str) -> NoReturn: ...


class SnapshotsServicer:
    """containerd's Snapshots service over one Snapshotter."""

    def __init__(self, api: Api, snapshotter: Snapshotter) -> None:
        self._api = api
        self._snapshotter = snapshotter

    # -- conversions ----------------------------------------------------------------------

    def _mounts(self, mounts: list[Mount]) -> list[Any]:
        return [self._api.message("Mount", type=m.type, source=m.source, options=m.options)
                for m in mounts]

    def info(self, snapshot: Snapshot) -> Any:
        """containerd's Info for a stored snapshot."""
        info = self._api.message("Info", name=snapshot.key, parent=snapshot.parent,
                                 kind=snapshot.kind.name, labels=snapshot.labels)
        for field, when in (("created_at", snapshot.created), ("updated_at", snapshot.updated)):
            nanos = int(when * 1e9)
            stamp = getattr(info, field)
            stamp.seconds, stamp.nanos = divmod(nanos, 1_000_000_000)
        return info

    def _fail(self, context: Context, error: SnapshotterError) -> NoReturn:
        import grpc

        log.info("%s", error)
        context.abort(getattr(grpc.StatusCode, error.code), str(error))

    def _call(self, context: Context, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except SnapshotterError as error:
            self._fail(context, error)

    # -- the RPCs -------------------------------------------------------------------------

    def Prepare(self, request: Any, context: Context) -> Any:  # noqa: N802 (gRPC's names)
        mounts = self._call(context, lambda: self._snapshotter.prepare(
            request.key, request.parent, dict(request.labels)))
        return self._api.message("PrepareSnapshotResponse", mounts=self._mounts(mounts))

    def View(self, request: Any, context: Context) -> Any:  # noqa: N802
        mounts = self._call(context, lambda: self._snapshotter.view(
            request.key, request.parent, dict(request.labels)))
        return self._api.message("ViewSnapshotResponse", mounts=self._mounts(mounts))

    def Mounts(self, request: Any, context: Context) -> Any:  # noqa: N802
        mounts = self._call(context, lambda: self._snapshotter.mounts(request.key))
        return self._api.message("MountsResponse", mounts=self._mounts(mounts))

    def Commit(self, request: Any, context: Context) -> Any:  # noqa: N802
        self._call(context, lambda: self._snapshotter.commit(
            request.name, request.key, dict(request.labels)))
        return self._api.message("Empty")

    def Remove(self, request: Any, context: Context) -> Any:  # noqa: N802
        self._call(context, lambda: self._snapshotter.remove(request.key))
        return self._api.message("Empty")

    def Stat(self, request: Any, context: Context) -> Any:  # noqa: N802
        snapshot = self._call(context, lambda: self._snapshotter.stat(request.key))
        return self._api.message("StatSnapshotResponse", info=self.info(snapshot))

    def Update(self, request: Any, context: Context) -> Any:  # noqa: N802
        snapshot = self._call(context, lambda: self._snapshotter.update(
            request.info.name, dict(request.info.labels), list(request.update_mask.paths)))
        return self._api.message("UpdateSnapshotResponse", info=self.info(snapshot))

    def List(self, request: Any, context: Context) -> Iterator[Any]:  # noqa: N802
        def listed() -> list[Snapshot]:
            wanted = compile_filters(list(request.filters))
            return [snapshot for snapshot in self._snapshotter.walk() if wanted(snapshot)]

        found = self._call(context, listed)
        for start in range(0, len(found), LIST_BATCH):
            yield self._api.message("ListSnapshotsResponse",
                                    info=[self.info(s) for s in found[start:start + LIST_BATCH]])

    def Usage(self, request: Any, context: Context) -> Any:  # noqa: N802
        usage = self._call(context, lambda: self._snapshotter.usage(request.key))
        return self._api.message("UsageResponse", size=usage.size, inodes=usage.inodes)

    def Cleanup(self, request: Any, context: Context) -> Any:  # noqa: N802
        self._call(context, self._snapshotter.cleanup)
        return self._api.message("Empty")


def handler(api: Api, servicer: SnapshotsServicer) -> Any:
    """A grpc generic handler serving `servicer` under containerd's service name."""
    import grpc

    methods: dict[str, Any] = {}
    for name, method in api.methods.items():
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else \
            grpc.unary_unary_rpc_method_handler
        methods[name] = make(getattr(servicer, name),
                             request_deserializer=method.request.FromString,
                             response_serializer=method.response.SerializeToString)
    return grpc.method_handlers_generic_handler(api.service, methods)
