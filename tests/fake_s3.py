"""An in-memory stand-in for a boto3 S3 client: the calls S3Storage makes, with S3's
answers (404, 412 for If-None-Match: *, paged listings), and a record of every write so
tests can check order and count. `honour_if_none_match=False` plays a gateway that
ignores the condition; `before_read` runs a hook before each GET (to play a racing
writer)."""

# ruff: noqa: N803 - the parameter names are boto3's (S3 API field names)
from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError


def _error(code: str, status: int, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class FakeS3:
    def __init__(self, bucket: str = "bucket", *, honour_if_none_match: bool = True,
                 page_size: int = 3) -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.acls: dict[str, str] = {}
        self.puts: list[str] = []  # keys in the order their PUT completed
        self.honour_if_none_match = honour_if_none_match
        self.page_size = page_size
        self.fail_put: Callable[[str], bool] = lambda key: False
        self.before_read: Callable[[str], None] = lambda key: None
        self._lock = threading.Lock()

    def _check_bucket(self, bucket: str, operation: str) -> None:
        if bucket != self.bucket:
            raise _error("NoSuchBucket", 404, operation)

    def head_bucket(self, *, Bucket: str) -> dict[str, Any]:
        self._check_bucket(Bucket, "HeadBucket")
        return {}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._check_bucket(Bucket, "HeadObject")
        with self._lock:
            if Key not in self.objects:
                raise _error("404", 404, "HeadObject")
            return {"ContentLength": len(self.objects[Key])}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._check_bucket(Bucket, "GetObject")
        self.before_read(Key)
        with self._lock:
            if Key not in self.objects:
                raise _error("NoSuchKey", 404, "GetObject")
            return {"Body": io.BytesIO(self.objects[Key])}

    def put_object(self, *, Bucket: str, Key: str, Body: Any, IfNoneMatch: str | None = None,
                   ACL: str | None = None, CacheControl: str | None = None) -> dict[str, Any]:
        self._check_bucket(Bucket, "PutObject")
        data = Body if isinstance(Body, bytes) else Body.read()
        if self.fail_put(Key):
            raise _error("InternalError", 500, "PutObject")
        with self._lock:
            if IfNoneMatch == "*" and self.honour_if_none_match and Key in self.objects:
                raise _error("PreconditionFailed", 412, "PutObject")
            self.objects[Key] = data
            if ACL:
                self.acls[Key] = ACL
            self.puts.append(Key)
        return {}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._check_bucket(Bucket, "DeleteObject")
        with self._lock:
            self.objects.pop(Key, None)
        return {}

    def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        self._check_bucket(Bucket, "DeleteObjects")
        deleted = []
        with self._lock:
            for item in Delete["Objects"]:
                self.objects.pop(item["Key"], None)
                deleted.append({"Key": item["Key"]})
        return {"Deleted": deleted}

    def list_objects_v2(self, *, Bucket: str, Prefix: str = "",
                        ContinuationToken: str | None = None) -> dict[str, Any]:
        self._check_bucket(Bucket, "ListObjectsV2")
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(Prefix))
            sizes = {k: len(self.objects[k]) for k in keys}
        start = int(ContinuationToken or 0)
        page = keys[start:start + self.page_size]
        more = start + self.page_size < len(keys)
        answer: dict[str, Any] = {"Contents": [{"Key": k, "Size": sizes[k]} for k in page],
                                  "IsTruncated": more}
        if more:
            answer["NextContinuationToken"] = str(start + self.page_size)
        return answer

    def list_multipart_uploads(self, *, Bucket: str, Prefix: str = "") -> dict[str, Any]:
        return {"Uploads": []}

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
