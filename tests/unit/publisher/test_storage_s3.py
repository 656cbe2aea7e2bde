"""S3Storage over an in-memory S3 (tests/fake_s3.py): the same repository as a directory
publish, objects never rewritten, catalogs after their objects and `.cvmfspublished` last,
a failed transaction removing what it created, gc through the listing, and the lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("botocore")

from pycvmfs.errors import ConfigError, LockError, PublishError  # noqa: E402
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix  # noqa: E402
from pycvmfs.publisher.gc import collect_garbage  # noqa: E402
from pycvmfs.publisher.keys import load_keys  # noqa: E402
from pycvmfs.publisher.pipeline import Settings  # noqa: E402
from pycvmfs.publisher.publish import PublishOptions, publish  # noqa: E402
from pycvmfs.publisher.s3_lock import LockOwner, S3PublishLock  # noqa: E402
from pycvmfs.publisher.s3_settings import S3Settings, s3_settings  # noqa: E402
from pycvmfs.publisher.storage import LocalStorage  # noqa: E402
from pycvmfs.publisher.storage_s3 import S3Storage  # noqa: E402
from tests.fake_s3 import FakeS3  # noqa: E402
from tests.publish_helpers import SMALL_CHUNKS, Keys, versioned_tree  # noqa: E402

STAMP = 1_700_000_000


def _storage(fake: FakeS3, prefix: str = "repo") -> S3Storage:
    return S3Storage(S3Settings(fake.bucket, prefix, "http://s3.invalid", parallel=4), fake)


def _tree(root: Path, version: int) -> Path:
    return versioned_tree(root, version, big_bytes=150_000, stamp=STAMP)


def _publish(source: Path, storage: object, keys: Keys):  # type: ignore[no-untyped-def]
    return publish(PublishOptions(keys.fqrn, source, storage, keys.keys_dir,  # type: ignore[arg-type]
                                  Settings(chunking=SMALL_CHUNKS), timestamp=STAMP))


def _local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and "txn" not in p.parts and not p.name.startswith(".pycvmfs")
            and p.name != ".cvmfs_publish.lock"}


def test_objects_match_local_layout_and_order(tmp_path: Path, keys: Keys) -> None:
    source = _tree(tmp_path / "src", 1)
    _publish(source, tmp_path / "local", keys)
    fake = FakeS3()
    storage = _storage(fake)
    try:
        result = _publish(source, storage, keys)
    finally:
        storage.close()
    stored = {key.removeprefix("repo/"): data for key, data in fake.objects.items()}
    assert stored == _local_files(tmp_path / "local")
    assert stored[".cvmfs_master_replica"] == b""  # replicable, as cvmfs_server mkfs makes it
    assert set(fake.acls.values()) == {"public-read"}
    order = fake.puts
    assert order[-1] == "repo/.cvmfspublished"
    last_data = max(i for i, k in enumerate(order) if k[-1] not in "CHX" and "/data/" in k)
    first_catalog = min(i for i, k in enumerate(order) if k.endswith("C"))
    assert last_data < first_catalog  # every catalog after every object it names
    assert result.objects_written == sum(1 for k in order if "/data/" in k and k[-1] not in "CHX")


def test_second_publish_uploads_only_new_objects(tmp_path: Path, keys: Keys) -> None:
    fake = FakeS3()
    storage = _storage(fake)
    try:
        _publish(_tree(tmp_path / "src", 1), storage, keys)
        first = set(fake.puts)
        fake.puts.clear()
        result = _publish(_tree(tmp_path / "src", 2), storage, keys)
    finally:
        storage.close()
    assert not set(k for k in fake.puts if "/data/" in k) & first  # nothing uploaded twice
    assert len(fake.puts) == len(set(fake.puts))
    assert result.files_unchanged >= 1


def test_put_object_never_rewrites(keys: Keys) -> None:
    fake = FakeS3()
    storage = _storage(fake)
    digest = ContentHash(Algorithm.SHA1, bytes(20))
    assert storage.put_object(digest, b"one")
    assert not storage.put_object(digest, b"two")
    fake2 = _storage(fake)  # a fresh storage learns it by HEAD
    assert not fake2.put_object(digest, b"three")
    assert fake.objects["repo/" + digest.object_path(Suffix.NONE)] == b"one"
    assert fake.puts.count("repo/" + digest.object_path(Suffix.NONE)) == 1


def test_failed_publish_removes_its_objects_and_keeps_the_revision(tmp_path: Path,
                                                                   keys: Keys) -> None:
    fake = FakeS3()
    storage = _storage(fake)
    try:
        _publish(_tree(tmp_path / "src", 1), storage, keys)
        before = dict(fake.objects)
        fake.fail_put = lambda key: key.endswith("C")  # the catalogs of revision 2 fail
        with pytest.raises(PublishError, match="InternalError"):
            _publish(_tree(tmp_path / "src", 2), storage, keys)
    finally:
        storage.close()
    assert fake.objects == before  # new objects deleted again, lock released
    fake.fail_put = lambda key: False
    storage = _storage(fake)
    try:
        assert _publish(_tree(tmp_path / "src", 2), storage, keys).manifest.revision == 2
    finally:
        storage.close()


def test_gc_deletes_what_a_directory_gc_deletes(tmp_path: Path, keys: Keys) -> None:
    local = tmp_path / "local"
    fake = FakeS3()
    storage = _storage(fake)
    try:
        for version in (1, 2):
            source = _tree(tmp_path / f"src{version}", version)
            _publish(source, local, keys)
            _publish(source, storage, keys)
        loaded = load_keys(keys.fqrn, keys.keys_dir)
        expected = collect_garbage(LocalStorage(local), keys.fqrn, loaded, keep_tags=False)
        before = dict(fake.objects)
        dry = collect_garbage(storage, keys.fqrn, loaded, keep_tags=False, dry_run=True)
        assert fake.objects == before
        swept = collect_garbage(storage, keys.fqrn, loaded, keep_tags=False)
    finally:
        storage.close()
    assert dry.deleted == swept.deleted == expected.deleted and expected.deleted
    assert swept.bytes_freed == expected.bytes_freed
    assert set(before) - set(fake.objects) == {f"repo/{p}" for p in expected.deleted}


def _lock(fake: FakeS3, *, clock: float = 1000.0, host: str = "here",
          alive: bool = True) -> S3PublishLock:
    return S3PublishLock(_storage(fake), ".cvmfs_publish.lock", "s3://bucket/repo",
                         clock=lambda: clock, host=host, alive=lambda pid: alive)


def test_lock_refuses_a_second_holder_naming_the_first() -> None:
    fake = FakeS3()
    with _lock(fake, host="alpha"):
        with pytest.raises(LockError) as caught, _lock(fake, host="beta"):
            pass
        message = str(caught.value)
        assert "host alpha" in message and f"pid {os.getpid()}" in message
        assert "s3://bucket/repo/.cvmfs_publish.lock" in message and "\n" not in message
    assert "repo/.cvmfs_publish.lock" not in fake.objects  # released


def test_stale_locks_are_broken() -> None:
    fake = FakeS3()
    gone = LockOwner("here", 999_999, 0.0, 10_000.0, "old")
    fake.objects["repo/.cvmfs_publish.lock"] = gone.encode()
    with _lock(fake, alive=False) as lock:  # same host, the pid is gone
        assert lock.broke == gone
    expired = LockOwner("elsewhere", 1, 0.0, 500.0, "old")
    fake.objects["repo/.cvmfs_publish.lock"] = expired.encode()
    with _lock(fake, clock=1000.0) as lock:  # lease over
        assert lock.broke == expired
    live = LockOwner("elsewhere", 1, 0.0, 5000.0, "old")
    fake.objects["repo/.cvmfs_publish.lock"] = live.encode()
    with pytest.raises(LockError, match="host elsewhere"), _lock(fake, clock=1000.0):
        pass


def test_lock_detects_a_gateway_that_ignores_the_condition() -> None:
    fake = FakeS3(honour_if_none_match=False)
    other = LockOwner("racer", 7, 1000.0, 5000.0, "theirs")

    def racer(key: str) -> None:  # another publisher's write lands after ours
        if key.endswith(".lock") and fake.puts and fake.puts[-1].endswith(".lock"):
            fake.objects[key] = other.encode()
            fake.before_read = lambda key: None

    fake.before_read = racer
    fake.objects.pop("repo/.cvmfs_publish.lock", None)
    with pytest.raises(LockError, match="host racer"), _lock(fake):
        pass


def test_lock_lease_is_renewed() -> None:
    fake = FakeS3()
    now = [1000.0]
    lock = S3PublishLock(_storage(fake), ".cvmfs_publish.lock", "s3://bucket/repo",
                         clock=lambda: now[0], lease=100.0)
    with lock:
        now[0] = 1050.0
        lock.renew()
        owner = LockOwner.decode(fake.objects["repo/.cvmfs_publish.lock"])
        assert owner is not None and owner.lease_until == 1150.0


def test_settings_file(tmp_path: Path) -> None:
    conf = tmp_path / "s3.conf"
    conf.write_text("CVMFS_S3_HOST=127.0.0.1\nCVMFS_S3_PORT=8333\nCVMFS_S3_BUCKET=cvmfs\n"
                    "CVMFS_S3_ACCESS_KEY=ak\nCVMFS_S3_SECRET_KEY=sk\n"
                    "CVMFS_S3_DNS_BUCKETS=false\n"
                    "CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS=8\n")
    settings = s3_settings("s3:///repo", None, conf)
    assert (settings.bucket, settings.prefix, settings.endpoint_url) == \
        ("cvmfs", "repo", "http://127.0.0.1:8333")
    assert (settings.access_key, settings.secret_key, settings.parallel) == ("ak", "sk", 8)
    assert settings.path_style and settings.location == "s3://cvmfs/repo"
    conf.write_text("CVMFS_S3_HOST=h\nCVMFS_S3_ACCESS_KEY=ak\n")
    with pytest.raises(ConfigError, match="CVMFS_S3_SECRET_KEY"):
        s3_settings("s3://cvmfs", None, conf)
    with pytest.raises(ConfigError, match="CVMFS_S3_BUCKET"):
        s3_settings("s3://", None, conf)
    with pytest.raises(ConfigError, match="--s3-endpoint"):
        s3_settings("s3://cvmfs", "ftp://x", None)
    with pytest.raises(ConfigError, match="bucket name"):
        s3_settings("s3://No_Such", None, None)
    with pytest.raises(ConfigError, match="cannot read"):
        s3_settings("s3://cvmfs", None, tmp_path / "missing.conf")
    plain = s3_settings("s3://cvmfs/a/b/", "http://127.0.0.1:1/", None)
    assert (plain.prefix, plain.endpoint_url, plain.path_style) == \
        ("a/b", "http://127.0.0.1:1", True)


def test_missing_bucket_is_one_line(tmp_path: Path) -> None:
    storage = S3Storage(S3Settings("nope", "", "http://s3.invalid"), FakeS3())
    with pytest.raises(PublishError, match="bucket 'nope' does not exist"):
        storage.prepare()


def test_uploads_run_in_parallel_with_bounded_memory() -> None:
    import threading
    import time

    from pycvmfs.publisher.storage_s3 import IN_FLIGHT_BYTES

    fake = FakeS3()
    storage = _storage(fake)
    seen = {"running": 0, "most": 0, "bytes": 0}
    guard = threading.Lock()
    put = fake.put_object

    def slow_put(**kwargs: object) -> dict[str, object]:
        with guard:
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
            seen["bytes"] = max(seen["bytes"], storage._budget._bytes)
        time.sleep(0.01)
        try:
            return put(**kwargs)  # type: ignore[arg-type]
        finally:
            with guard:
                seen["running"] -= 1

    fake.put_object = slow_put  # type: ignore[method-assign]
    blob = bytes(8 << 20)
    with storage.transaction():
        for index in range(24):
            digest = ContentHash(Algorithm.SHA1, index.to_bytes(20, "big"))
            assert storage.put_object(digest, blob)
    assert len(fake.objects) == 24
    assert 1 < seen["most"] <= storage.settings.parallel
    assert seen["bytes"] <= IN_FLIGHT_BYTES


def test_the_lock_forgets_what_was_stored(keys: Keys) -> None:
    """Another process's gc may delete objects between two publishes of one storage."""
    fake = FakeS3()
    storage = _storage(fake)
    digest = ContentHash(Algorithm.SHA1, bytes(20))
    assert storage.put_object(digest, b"one")
    fake.objects.clear()  # swept meanwhile
    with storage.lock():
        assert storage.put_object(digest, b"one")


class CountingS3(FakeS3):
    """FakeS3 that counts the HEAD and list requests."""

    def __init__(self) -> None:
        super().__init__(page_size=1000)
        self.heads = self.listings = 0

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        self.heads += 1
        return super().head_object(**kwargs)

    def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
        self.listings += 1
        return super().list_objects_v2(**kwargs)


def test_an_unchanged_republish_learns_what_is_stored_from_listings(tmp_path: Path,
                                                                     keys: Keys) -> None:
    fake = CountingS3()
    source = _tree(tmp_path / "src", 1)
    for _ in range(2):  # a fresh storage each time, as a new `pycvmfs publish` has
        storage = _storage(fake)
        try:
            fake.heads = fake.listings = 0
            result = _publish(source, storage, keys)
        finally:
            storage.close()
    fanouts = {key.split("/")[2] for key in fake.objects if "/data/" in key}
    assert result.files_unchanged == 5
    assert fake.heads == 0 and 0 < fake.listings <= len(fanouts) + 1
