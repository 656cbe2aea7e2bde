"""What a replica must hold, decided from catalogs (replica/plan.py), and the order rules of
the copy pool (replica/pool.py): no network, repositories published into tmp_path."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import ReplicationError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.format.manifest import Manifest
from pycvmfs.replica.plan import (
    ObjectRef,
    catalog_objects,
    check_direction,
    date_utc,
    history_tags,
    last_snapshot_text,
    status_json,
    tag_roots,
)
from pycvmfs.replica.pool import Batch, CopyPool
from pycvmfs.repository.catalog import Catalog
from tests.publish_helpers import Keys, make_full_tree, run_publish


def _inflate(storage: Path, content_hash: ContentHash, suffix: Suffix, into: Path) -> Path:
    into.write_bytes(zlib.decompress((storage / content_hash.object_path(suffix)).read_bytes()))
    return into


def _tree_objects(storage: Path, root: ContentHash, work: Path) -> tuple[set[str], int]:
    """Object paths every catalog of the tree below `root` references, and how many
    catalogs there are, walked with the planner and the reader's Catalog."""
    paths: set[str] = set()
    pending, catalogs = [root], 0
    while pending:
        content_hash = pending.pop()
        catalogs += 1
        db = _inflate(storage, content_hash, Suffix.CATALOG, work / f"{content_hash}.db")
        paths.update(ref.path for ref in catalog_objects(db))
        with Catalog(db, content_hash=content_hash) as catalog:
            pending += [ref.hash for ref in catalog.nested_catalogs()]
    return paths, catalogs


def test_catalog_objects_are_exactly_the_stored_files_and_chunks(
        tmp_path: Path, keys: Keys) -> None:
    storage = tmp_path / "storage"
    result = run_publish(make_full_tree(tmp_path / "src"), storage, keys,
                         compression=Compression.ZLIB)
    referenced, catalogs = _tree_objects(storage, result.manifest.root_hash, tmp_path)
    stored = {str(p.relative_to(storage)) for p in (storage / "data").glob("??/*")}
    data = {p for p in stored if p[-1] not in "CHXM"}
    assert referenced == data
    assert any(p.endswith("P") for p in referenced)  # big.bin is chunked
    assert catalogs == len([p for p in stored if p.endswith("C")]) >= 4  # root + nested


def test_objects_carry_algorithm_compression_and_size(tmp_path: Path, keys: Keys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    storage = tmp_path / "storage"
    result = run_publish(src, storage, keys, algorithm=Algorithm.SHAKE128,
                         compression=Compression.NONE)
    db = _inflate(storage, result.manifest.root_hash, Suffix.CATALOG, tmp_path / "c.db")
    (ref,) = list(catalog_objects(db))
    assert ref.content_hash == ContentHash.of(Algorithm.SHAKE128, b"hello\n")
    assert (ref.suffix, ref.compression, ref.size) == (Suffix.NONE, Compression.NONE, 6)
    assert ref.path.endswith("-shake128")


def test_history_tags_and_their_roots(tmp_path: Path, keys: Keys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    storage = tmp_path / "storage"
    (src / "f").write_text("1\n")
    first = run_publish(src, storage, keys, tag="v1")
    (src / "f").write_text("2\n")
    second = run_publish(src, storage, keys)
    assert second.manifest.history is not None
    db = _inflate(storage, second.manifest.history, Suffix.HISTORY, tmp_path / "h.db")
    tags = history_tags(db)
    assert {t.name for t in tags} >= {"trunk", "trunk-previous", "v1"}
    roots = tag_roots(tags, second.manifest.root_hash)
    # trunk is the manifest's; v1 and trunk-previous share one root, listed once
    assert [root for _, root in roots] == [first.manifest.root_hash]


def test_a_bad_tag_hash_is_named() -> None:
    tag = Tag("broken", "zz", 1, 0)
    with pytest.raises(Exception, match="broken"):
        tag_roots([tag], ContentHash.of(Algorithm.SHA1, b""))


def _manifest(revision: int, fqrn: str = "a.example.org") -> Manifest:
    return Manifest(root_hash=ContentHash.of(Algorithm.SHA1, b"x"), revision=revision, fqrn=fqrn)


def test_backwards_and_foreign_replicas_are_refused_unless_forced() -> None:
    check_direction(None, _manifest(1), "a.example.org", "R", force=False)
    check_direction(_manifest(3), _manifest(3), "a.example.org", "R", force=False)
    check_direction(_manifest(3), _manifest(4), "a.example.org", "R", force=False)
    with pytest.raises(ReplicationError, match="revision 2, older than revision 3.*--force"):
        check_direction(_manifest(3), _manifest(2), "a.example.org", "R", force=False)
    check_direction(_manifest(3), _manifest(2), "a.example.org", "R", force=True)
    with pytest.raises(ReplicationError, match="replica of b.example.org"):
        check_direction(_manifest(1, "b.example.org"), _manifest(2), "a.example.org", "R",
                        force=False)


def test_last_snapshot_is_date_utc() -> None:
    moment = dt.datetime(2026, 12, 7, 13, 41, 43, tzinfo=dt.UTC)
    assert date_utc(moment) == "Mon Dec  7 13:41:43 UTC 2026"
    assert last_snapshot_text(moment.replace(day=17)) == b"Thu Dec 17 13:41:43 UTC 2026\n"
    status = json.loads(status_json(b'{"last_gc": "x"}', moment))
    assert status == {"last_gc": "x", "last_snapshot": "Mon Dec  7 13:41:43 UTC 2026"}
    assert json.loads(status_json(b"not json", moment)) == {
        "last_snapshot": "Mon Dec  7 13:41:43 UTC 2026"}


def _ref(n: int) -> ObjectRef:
    return ObjectRef(ContentHash.of(Algorithm.SHA1, bytes([n])), Suffix.NONE)


def test_a_batch_waits_for_an_object_another_batch_is_copying() -> None:
    release = threading.Event()
    copied: list[ObjectRef] = []

    def copy(ref: ObjectRef) -> bool:
        release.wait(5)
        copied.append(ref)
        return True

    pool = CopyPool(copy, 2)
    try:
        first, second = Batch(), Batch()
        pool.submit(first, _ref(1))
        pool.submit(second, _ref(1))  # underway for `first`: not copied twice
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (second.wait(), done.set()))
        waiter.start()
        time.sleep(0.05)
        assert not done.is_set()  # the object is not stored yet
        release.set()
        waiter.join(5)
        assert done.is_set()
        first.wait()
        third = Batch()
        pool.submit(third, _ref(1))  # stored in this run: nothing to wait for
        third.wait()
        assert copied == [_ref(1)]
    finally:
        release.set()
        pool.close()


def test_a_failed_copy_fails_its_batch_and_stops_the_walk() -> None:
    def copy(ref: ObjectRef) -> bool:
        if ref == _ref(2):
            raise ReplicationError("object 2 is corrupt")
        return True

    pool = CopyPool(copy, 2)
    try:
        batch = Batch()
        with pytest.raises(ReplicationError, match="object 2"):
            for n in range(4):  # raised by a later submit, or else by the wait
                pool.submit(batch, _ref(n))
            batch.wait()
        with pytest.raises(ReplicationError, match="object 2"):
            batch.wait()
        with pytest.raises(ReplicationError, match="object 2"):
            pool.submit(Batch(), _ref(9))
    finally:
        pool.close()
