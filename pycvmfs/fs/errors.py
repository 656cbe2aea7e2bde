"""The errno a filesystem request answers, decided in one place for every adapter.

Library errors carry their errno in `pycvmfs.errors.errno_for` (ENOENT, EIO, ENOSPC, ...).
Operating-system errors that describe this machine rather than the repository pass through:
a caller that runs out of descriptors gets EMFILE or ENFILE (it can close some and retry),
a full cache ENOSPC, a lack of memory ENOMEM; any other OSError is EIO. Nothing else is
ever turned into success or into another file's bytes.
"""

from __future__ import annotations

import errno
import os

from pycvmfs.errors import LOCAL_RESOURCE_ERRNOS, PycvmfsError, errno_for

PASSED_THROUGH = LOCAL_RESOURCE_ERRNOS | {errno.ENOSPC, errno.EDQUOT}


class FsError(Exception):
    """An errno for the adapter to return (ENOENT, ENOTDIR, EIO, ...)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


EXPECTED = (PycvmfsError, OSError)  # what a request may meet; anything else is a bug


def fs_error(exc: BaseException) -> FsError:
    """`exc` as the FsError a request answers (see the module docstring)."""
    if isinstance(exc, FsError):
        return exc
    if isinstance(exc, PycvmfsError):
        return FsError(errno_for(exc), str(exc))
    if isinstance(exc, OSError) and exc.errno in PASSED_THROUGH:
        return FsError(exc.errno, str(exc))
    return FsError(errno.EIO, f"{type(exc).__name__}: {exc}")


def errno_of(exc: BaseException) -> int:
    """The errno an adapter replies for whatever a VFS call raised."""
    return fs_error(exc).errno
