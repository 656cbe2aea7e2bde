"""The snapshotter's errors, each carrying the gRPC status code containerd expects.

containerd's proxy snapshotter turns status codes back into its `errdefs` (NOT_FOUND ->
ErrNotFound, ALREADY_EXISTS -> ErrAlreadyExists, ...); its image unpacker treats
ALREADY_EXISTS from Prepare as "this layer's snapshot is there, skip the download", which
is how a remote layer is offered (pycvmfs/snapshotter/__init__.py).
"""

from __future__ import annotations

from pycvmfs.errors import PycvmfsError


class SnapshotterError(PycvmfsError):
    """Base of the snapshotter's errors; `code` is the grpc.StatusCode name to answer with."""

    code = "UNKNOWN"


class SnapshotNotFoundError(SnapshotterError):
    code = "NOT_FOUND"


class SnapshotExistsError(SnapshotterError):
    code = "ALREADY_EXISTS"


class InvalidSnapshotError(SnapshotterError):
    """A request that names the wrong kind of snapshot (committing a view, a parent that is
    not committed) or a malformed field."""

    code = "INVALID_ARGUMENT"


class SnapshotInUseError(SnapshotterError):
    """Removing a snapshot that still has children, or mounting a committed one."""

    code = "FAILED_PRECONDITION"
