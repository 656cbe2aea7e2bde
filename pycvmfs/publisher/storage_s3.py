"""Repository storage in an S3 bucket (SeaweedFS, Ceph RGW, MinIO, AWS), laid out as a
Stratum-1 serves it: PREFIX/.cvmfspublished, PREFIX/.cvmfswhitelist, PREFIX/data/XX/...
Objects are written with a canned ACL (public-read by default), so the bucket's own HTTP
endpoint, http://HOST:PORT/BUCKET/PREFIX, is a Stratum-0/1 URL clients read directly.

Writing: an object is never rewritten. `put_object` looks first (objects known present are
remembered; else the listing of its data/XX/ directory answers, s3_presence; else a HEAD)
and then uploads with `If-None-Match: *` (a 412 means another
writer stored it first). Inside a transaction uploads run in a pool of
CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS threads, with the bytes waiting for a
connection bounded (IN_FLIGHT_BYTES; streamed objects wait in unlinked spool files, not in
memory). Catalogs, histories, certificates and named files are barriers: everything queued
before them is stored first, so a catalog is never visible before the objects it names, and
`.cvmfspublished` comes last. A transaction that fails deletes the objects it created; one
killed outright leaves only unreferenced objects (reused by the next publish, removed by
`gc`) and its lock (s3_lock), which the next publisher breaks once it is stale. S3 writes
whole objects atomically, so no reader ever sees a partial one.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pycvmfs.errors import PublishError
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.publisher.s3_lock import S3PublishLock
from pycvmfs.publisher.s3_presence import ObjectPresence
from pycvmfs.publisher.s3_settings import S3Settings
from pycvmfs.publisher.storage import LOCK_NAME, MANIFEST_NAME, WHITELIST_NAME
from pycvmfs.publisher.storage_protocol import ObjectSink, StoredObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

IN_FLIGHT_BYTES = 64 << 20  # queued object bytes held in memory at most
DELETE_BATCH = 1000  # the S3 limit for one DeleteObjects request
NAMED_FILE_CACHE = "max-age=61"  # as a Stratum-1's web server marks them
_DATA_SUFFIXES = frozenset({Suffix.NONE, Suffix.PARTIAL})
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Storage:
    """A bucket (and prefix) as repository storage; see the module docstring."""

    def __init__(self, settings: S3Settings, client: S3Client | None = None) -> None:
        self.settings = settings
        self._client = client if client is not None else make_client(settings)
        self._lock = threading.Lock()
        self._present: set[str] = set()  # keys known stored
        self.presence = ObjectPresence(self._list_page)
        self._pending: set[str] = set()  # keys being uploaded
        self._futures: list[Future[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._created: list[str] | None = None
        self._budget = _Budget(IN_FLIGHT_BYTES, 4 * settings.parallel)
        self._scratch: Path | None = None
        self.puts = 0  # objects and files uploaded (tests count them)

    # -- where ---------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return self.settings.location

    def describe(self, relative: str) -> str:
        return f"{self.location}/{relative}"

    def _key(self, relative: str) -> str:
        return self.settings.key(relative)

    # -- setup, lock, cleanup ------------------------------------------------------------

    def prepare(self) -> None:
        """The bucket must exist and answer with these credentials."""
        self._call("access the bucket", self._client.head_bucket, Bucket=self.settings.bucket)

    def create_layout(self) -> None:
        """Nothing: S3 has no directories."""

    def has_layout(self) -> bool:
        return True  # there is no layout to look at; a missing manifest says the rest

    def clean_temporaries(self) -> None:
        """Abort multipart uploads an interrupted writer left below the prefix."""
        prefix = self._key("")
        try:
            found = self._client.list_multipart_uploads(Bucket=self.settings.bucket,
                                                        Prefix=prefix)
            for upload in found.get("Uploads", []):
                self._client.abort_multipart_upload(Bucket=self.settings.bucket,
                                                    Key=upload["Key"],
                                                    UploadId=upload["UploadId"])
        except Exception:  # a gateway without multipart listing has nothing to clean
            return

    def lock(self) -> S3PublishLock:
        """The lock object (s3_lock). What this storage remembers as stored, and the
        listings, are forgotten: a `gc` may have run since (a webhook service publishes
        with one storage for days)."""
        with self._lock:
            self._present.clear()
        self.presence.reset()
        return S3PublishLock(self, LOCK_NAME, self.location)

    def scratch_dir(self) -> Path:
        with self._lock:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="pycvmfs-s3-"))
            return self._scratch

    def memo_path(self, name: str) -> Path:
        return self.scratch_dir() / name

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self._client.close()

    # -- objects -------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Parallel uploads inside; on failure the objects created are deleted again."""
        self._pool = ThreadPoolExecutor(self.settings.parallel, thread_name_prefix="s3-upload")
        self._created = []
        try:
            yield
            self.flush()
        except BaseException:
            self._drain()
            with contextlib.suppress(Exception):
                self.delete_objects(list(self._created or ()))
            raise
        finally:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)
            self._created = None

    def has_object(self, content_hash: ContentHash, suffix: Suffix = Suffix.NONE) -> bool:
        return self._exists(content_hash.object_path(suffix))

    def put_object(self, content_hash: ContentHash, stored: bytes | memoryview,
                   suffix: Suffix = Suffix.NONE) -> bool:
        relative = content_hash.object_path(suffix)
        if not self._claim(relative):
            return False
        data = bytes(stored)
        self._upload(relative, lambda: data, len(data), barrier=suffix not in _DATA_SUFFIXES,
                     in_memory=True)
        return True

    def object_sink(self) -> ObjectSink:
        return _SpoolSink(self)

    def read_object(self, content_hash: ContentHash, suffix: Suffix) -> bytes:
        relative = content_hash.object_path(suffix)
        data = self.read_file(relative)
        if data is None:
            raise PublishError(f"cannot read {self.describe(relative)}: no such object")
        return data

    def list_objects(self) -> Iterator[StoredObject]:
        strip = len(self._key("data/"))
        token: str | None = None
        while True:
            page = self._list("data/", token)
            for item in page.get("Contents", []):
                parts = item["Key"][strip:].split("/")
                if len(parts) == 2 and len(parts[0]) == 2 and parts[1]:
                    yield StoredObject(parts[0], parts[1], int(item.get("Size", 0)))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def _list(self, relative_prefix: str, token: str | None) -> dict[str, Any]:
        """One ListObjectsV2 page of the keys below PREFIX/relative_prefix."""
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket,
                                  "Prefix": self._key(relative_prefix)}
        if token:
            kwargs["ContinuationToken"] = token
        return dict(self._call("list the objects", self._client.list_objects_v2, **kwargs))

    def _list_page(self, relative_prefix: str, token: str | None
                   ) -> tuple[list[str], str | None]:
        """For s3_presence: the page's keys relative to the storage, and the next token."""
        page = self._list(relative_prefix, token)
        strip = len(self._key(""))
        keys = [item["Key"][strip:] for item in page.get("Contents", [])]
        return keys, (page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    def delete_objects(self, relatives: Iterable[str]) -> list[str]:
        wanted = list(relatives)
        deleted: list[str] = []
        for start in range(0, len(wanted), DELETE_BATCH):
            batch = {self._key(r): r for r in wanted[start:start + DELETE_BATCH]}
            answer = self._call("delete objects", self._client.delete_objects,
                                Bucket=self.settings.bucket,
                                Delete={"Objects": [{"Key": key} for key in batch],
                                        "Quiet": False})
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise PublishError(f"cannot delete {self.location}/{first.get('Key')}: "
                                   f"{first.get('Code')} {first.get('Message', '')}".rstrip())
            for item in answer.get("Deleted", []):
                relative = batch.get(item.get("Key", ""))
                if relative is not None:
                    deleted.append(relative)
                    self.presence.forget(relative)
                    with self._lock:
                        self._present.discard(relative)
        return deleted

    # -- named files ---------------------------------------------------------------------

    def read_file(self, relative: str) -> bytes | None:
        key = self._key(relative)
        try:
            answer = self._client.get_object(Bucket=self.settings.bucket, Key=key)
            return answer["Body"].read()
        except Exception as exc:
            if _code(exc) in _MISSING:
                return None
            raise describe_failure(exc, f"read {self.describe(relative)}",
                                   self.settings) from None

    def put_file(self, relative: str, data: bytes | memoryview, *, sync: bool = True) -> None:
        """Replace a named file once every queued object is stored (`sync` is implied)."""
        self.flush()
        self.replace_file(relative, bytes(data))

    def replace_file(self, relative: str, data: bytes) -> None:
        cache = NAMED_FILE_CACHE if relative in (MANIFEST_NAME, WHITELIST_NAME) else "no-store"
        self._call(f"write {self.describe(relative)}", self._client.put_object,
                   Bucket=self.settings.bucket, Key=self._key(relative), Body=data,
                   ACL=self.settings.acl, CacheControl=cache)
        with self._lock:
            self.puts += 1

    def create_file(self, relative: str, data: bytes) -> bool:
        """Create unless present (If-None-Match: *); False when it exists."""
        try:
            self._client.put_object(Bucket=self.settings.bucket, Key=self._key(relative),
                                    Body=data, IfNoneMatch="*", CacheControl="no-store")
        except Exception as exc:
            if _code(exc) in ("412", "PreconditionFailed", "409",
                              "ConditionalRequestConflict"):
                return False
            raise describe_failure(exc, f"write {self.describe(relative)}",
                                   self.settings) from None
        with self._lock:
            self.puts += 1
        return True

    def delete_file(self, relative: str) -> None:
        self._call(f"delete {self.describe(relative)}", self._client.delete_object,
                   Bucket=self.settings.bucket, Key=self._key(relative))

    # -- uploads -------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait for every queued upload; the first failure is raised."""
        with self._lock:
            futures, self._futures = self._futures, []
        failure: BaseException | None = None
        for future in futures:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                failure = failure or exc
        if failure is not None:
            raise failure

    def _drain(self) -> None:
        with self._lock:
            futures, self._futures = self._futures, []
        for future in futures:
            future.cancel()
        for future in futures:
            with contextlib.suppress(BaseException):
                future.result()

    def _exists(self, relative: str) -> bool:
        with self._lock:
            if relative in self._present:
                return True
        listed = self.presence.known(relative)
        if listed is not None:
            if listed:
                with self._lock:
                    self._present.add(relative)
            return listed
        try:
            self._client.head_object(Bucket=self.settings.bucket, Key=self._key(relative))
        except Exception as exc:
            if _code(exc) in _MISSING:
                return False
            raise describe_failure(exc, f"look for {self.describe(relative)}",
                                   self.settings) from None
        with self._lock:
            self._present.add(relative)
        return True

    def _claim(self, relative: str) -> bool:
        """True when this caller is to upload `relative` (not stored, not underway)."""
        with self._lock:
            if relative in self._present or relative in self._pending:
                return False
            self._pending.add(relative)
        try:
            there = self._exists(relative)
        except BaseException:
            with self._lock:
                self._pending.discard(relative)
            raise
        if there:
            with self._lock:
                self._pending.discard(relative)
        return not there

    def _upload(self, relative: str, body: Callable[[], bytes | IO[bytes]], size: int, *,
                barrier: bool, in_memory: bool, done: Callable[[], None] = lambda: None
                ) -> None:
        """Store a claimed object now (barrier, or outside a transaction) or in the pool."""
        def settle() -> None:
            with self._lock:
                self._pending.discard(relative)
            done()

        if barrier or self._pool is None:
            try:
                self.flush()
                self._put_new(relative, body())
            finally:
                settle()
            return
        weight = size if in_memory else 0
        self._budget.acquire(weight)

        def finished(future: Future[None]) -> None:  # also when cancelled, never run
            self._budget.release(weight)
            settle()

        future = self._pool.submit(lambda: self._put_new(relative, body()))
        future.add_done_callback(finished)
        with self._lock:
            self._futures.append(future)

    def _put_new(self, relative: str, body: bytes | IO[bytes]) -> None:
        try:
            self._client.put_object(Bucket=self.settings.bucket, Key=self._key(relative),
                                    Body=body, IfNoneMatch="*",
                                    ACL=self.settings.acl)  # type: ignore[arg-type]
        except Exception as exc:
            if _code(exc) in ("412", "PreconditionFailed"):
                with self._lock:
                    self._present.add(relative)
                return  # another writer stored it first: the same bytes, as named
            raise describe_failure(exc, f"upload {self.describe(relative)}",
                                   self.settings) from None
        with self._lock:
            self._present.add(relative)
            self.puts += 1
            if self._created is not None:
                self._created.append(relative)

    def _call(self, what: str, request: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return request(**kwargs)
        except Exception as exc:
            raise describe_failure(exc, what, self.settings) from None


class _SpoolSink:
    """An object streamed into an unlinked temporary file, uploaded from it at commit."""

    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage
        self._file: IO[bytes] | None = tempfile.TemporaryFile(  # noqa: SIM115
            dir=storage.scratch_dir())
        self._size = 0

    def write(self, stored: bytes | memoryview) -> None:
        if self._file is None:
            raise PublishError("write to an object that was committed or dropped")
        try:
            self._file.write(stored)
        except OSError as exc:
            self.abort()
            raise PublishError(f"cannot spool an upload in {self._storage.scratch_dir()}: "
                               f"{exc.strerror or exc}") from exc
        self._size += len(stored)

    def commit(self, content_hash: ContentHash, suffix: Suffix) -> bool:
        spool, self._file = self._file, None
        if spool is None:
            raise PublishError("commit of an object that was committed or dropped")
        relative = content_hash.object_path(suffix)
        try:
            claimed = self._storage._claim(relative)
        except BaseException:
            spool.close()
            raise
        if not claimed:
            spool.close()
            return False

        def body() -> IO[bytes]:
            spool.flush()
            spool.seek(0)
            return spool

        self._storage._upload(relative, body, self._size,
                              barrier=suffix not in _DATA_SUFFIXES, in_memory=False,
                              done=spool.close)
        return True

    def abort(self) -> None:
        spool, self._file = self._file, None
        if spool is not None:
            spool.close()


class _Budget:
    """Bounds what waits for an upload: bytes held in memory, and queued uploads."""

    def __init__(self, max_bytes: int, max_count: int) -> None:
        self._max_bytes = max_bytes
        self._max_count = max_count
        self._bytes = 0
        self._count = 0
        self._ready = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        with self._ready:
            self._ready.wait_for(lambda: self._count < self._max_count and (
                self._bytes == 0 or self._bytes + nbytes <= self._max_bytes))
            self._bytes += nbytes
            self._count += 1

    def release(self, nbytes: int) -> None:
        with self._ready:
            self._bytes -= nbytes
            self._count -= 1
            self._ready.notify_all()


def make_client(settings: S3Settings) -> S3Client:
    """A boto3 S3 client; credentials from the settings file or boto3's usual chain."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise PublishError("an s3:// --storage needs boto3: pip install 'pycvmfs[s3]'") from None
    session = boto3.session.Session(aws_access_key_id=settings.access_key,
                                    aws_secret_access_key=settings.secret_key,
                                    region_name=settings.region)
    config = Config(
        max_pool_connections=settings.parallel + 4, connect_timeout=5, read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path" if settings.path_style else "virtual"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required")
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config,
                          region_name=settings.region or session.region_name or "us-east-1")


def describe_failure(exc: BaseException, what: str, settings: S3Settings) -> PublishError:
    """One line naming the cause and the fix for a failed S3 request."""
    if isinstance(exc, PublishError):
        return exc
    from botocore import exceptions as boto

    endpoint = settings.endpoint_url or "the AWS S3 endpoint"
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return PublishError(f"cannot {what}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials, or CVMFS_S3_"
                            "ACCESS_KEY and CVMFS_S3_SECRET_KEY in an --s3-config file)")
    if isinstance(exc, boto.EndpointConnectionError | boto.ConnectTimeoutError
                  | boto.ConnectionClosedError | boto.ReadTimeoutError):
        return PublishError(f"cannot {what}: the S3 endpoint {endpoint} does not answer "
                            f"({exc}); check --s3-endpoint (or CVMFS_S3_HOST/CVMFS_S3_PORT) "
                            "and that the server runs")
    code = _code(exc)
    if code in ("NoSuchBucket",) or (code in _MISSING and "bucket" in what):
        return PublishError(f"cannot {what}: bucket {settings.bucket!r} does not exist at "
                            f"{endpoint}; create it (e.g. `aws s3 mb s3://{settings.bucket}"
                            f" --endpoint-url {endpoint}`) or check --storage")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "InvalidToken", "ExpiredToken"):
        return PublishError(f"cannot {what}: {endpoint} refused the request ({code}); check "
                            "the S3 credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                            "the --s3-config keys) and the bucket's permissions")
    message = ""
    if isinstance(exc, boto.ClientError):
        message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return PublishError(f"cannot {what}: S3 said {code or type(exc).__name__}"
                        f"{': ' + message if message else ''} ({endpoint})".replace("\n", " "))


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", "")) if isinstance(error, dict) else ""
        if code:
            return code
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else ""
    return ""
