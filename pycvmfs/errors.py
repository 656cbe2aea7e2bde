"""One exception tree for all of pycvmfs.

PycvmfsError
 ├─ NotFoundError          no such path, tag or object                    -> ENOENT
 ├─ IntegrityError         data that must not be trusted                   -> EIO
 │   ├─ HashMismatchError      object bytes do not hash to their name
 │   ├─ SizeMismatchError      decompressed size differs from the catalog
 │   ├─ DecompressionError     corrupt or oversized zlib stream
 │   ├─ BudgetExceededError    a download larger than its object may be
 │   ├─ CatalogError           catalog database unreadable or not CVMFS
 │   └─ LetterError            a signed letter (manifest/whitelist) is wrong
 │       ├─ LetterMalformedError   no `--` separator, no hash line, bad lines
 │       ├─ MissingFieldError      a required key/line is absent
 │       ├─ LetterHashError        body does not hash to the printed hash line
 │       ├─ SignatureError         RSA signature does not verify
 │       ├─ WhitelistExpiredError  whitelist past its expiry hour
 │       ├─ NameMismatchError      letter names another repository
 │       ├─ RootMismatchError      manifest R is not MD5("")
 │       ├─ OutdatedError          manifest T older than one already seen
 │       ├─ CertificateError       certificate object unreadable
 │       └─ FingerprintNotListedError  certificate not on the whitelist
 ├─ FetchError             every source failed for an object              -> EIO
 ├─ CacheFullError         the cache quota cannot make room (pinned)       -> ENOSPC
 ├─ ImageError             a container image reference, manifest or archive is unusable
 │   └─ RegistryError          a registry answered with an error, or not at all (.status)
 ├─ PublishError           the publisher refuses an input                 (CLI only)
 │   └─ LockError              another publisher holds the storage lock
 └─ ConfigError            bad configuration or keys                       (CLI only)
     └─ CacheSecurityError     a cache directory or file another user could control

Each error's message names the cause (path, URL, repository, dates) so the CLI can
print it verbatim.
"""

from __future__ import annotations

import errno


class PycvmfsError(Exception):
    """Base of every error pycvmfs raises on purpose."""


class NotFoundError(PycvmfsError):
    pass


class IntegrityError(PycvmfsError):
    pass


class HashMismatchError(IntegrityError):
    pass


class SizeMismatchError(IntegrityError):
    pass


class DecompressionError(IntegrityError):
    pass


class BudgetExceededError(IntegrityError):
    """More bytes than the object may have: a Content-Length or a body over the download's
    byte budget (network/sink.py), or a local file larger than it."""


class CatalogError(IntegrityError):
    pass


class LetterError(IntegrityError):
    pass


class LetterMalformedError(LetterError):
    pass


class MissingFieldError(LetterError):
    pass


class LetterHashError(LetterError):
    pass


class SignatureError(LetterError):
    pass


class WhitelistExpiredError(LetterError):
    pass


class NameMismatchError(LetterError):
    pass


class RootMismatchError(LetterError):
    pass


class OutdatedError(LetterError):
    pass


class CertificateError(LetterError):
    pass


class FingerprintNotListedError(LetterError):
    pass


class BlacklistedError(LetterError):
    """A blacklist names the repository's certificate, or the revision is below its bound."""


class FetchError(PycvmfsError):
    pass


class CacheFullError(PycvmfsError):
    """The quota cannot make room: object bigger than limit/2, or pinned bytes too high."""


class ImageError(PycvmfsError):
    """A malformed image reference, an unsupported manifest, a broken image archive, or a
    blob over its size limit. Digest mismatches are `HashMismatchError` instead."""


class RegistryError(ImageError):
    """A registry request failed: HTTP error status (`status`), refused credentials, or no
    connection at all (`status` is None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PublishError(PycvmfsError):
    pass


class LockError(PublishError):
    pass


class ConfigError(PycvmfsError):
    pass


class ReplicationError(PycvmfsError):
    """A snapshot (Stratum-1 replication) refused to run or could not finish; the
    replica still serves the revision it served before."""


class CacheSecurityError(ConfigError):
    """A directory or file under the cache base is a symlink, belongs to another user or
    is writable by others (`cache.safe_dir`): refused, never followed, no fallback."""


# errno values that say this process or machine ran out of something (descriptors, memory):
# passed to the caller as they are, never turned into a verdict on a server or an object
LOCAL_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

ERRNO: dict[type[PycvmfsError], int] = {
    NotFoundError: errno.ENOENT,
    IntegrityError: errno.EIO,
    FetchError: errno.EIO,
    CacheFullError: errno.ENOSPC,
}


def errno_for(exc: BaseException) -> int:
    """The errno a filesystem should answer for `exc` (EIO for anything unknown)."""
    for cls in type(exc).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]
    return errno.EIO
