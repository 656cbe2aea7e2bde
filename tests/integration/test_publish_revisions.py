"""Later publishes: revision + 1, history tags, unchanged objects and catalogs kept."""

from __future__ import annotations

import os
import sqlite3
import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import PublishError
from pycvmfs.format.manifest import parse_manifest
from tests.publish_helpers import Keys, make_full_tree, open_repository, run_publish


def _manifest(storage: Path):  # type: ignore[no-untyped-def]
    return parse_manifest((storage / ".cvmfspublished").read_bytes())[0]


def _object_files(storage: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (storage / "data").rglob("*")
            if p.is_file() and p.parent.name != "txn"}


def test_second_revision(tmp_path: Path, keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    first = run_publish(source, storage, keys, tag="release-1")
    before = _object_files(storage)
    (source / "plain.txt").write_text("changed in revision 2\n")
    (source / "added.txt").write_text("new file\n")
    second = run_publish(source, storage, keys, tag="release-2")
    assert second.manifest.revision == 2
    assert second.manifest.timestamp >= first.manifest.timestamp
    after = _object_files(storage)
    assert all(after[p] == m for p, m in before.items()), "existing objects never rewritten"
    assert second.objects_written < first.objects_written
    # unchanged nested catalogs keep their hash: only the root catalog is new
    assert second.catalogs_written == ["/"]
    with open_repository(storage, keys) as repo:
        assert repo.revision == 2
        assert repo.read("/plain.txt") == b"changed in revision 2\n"
        tags = {t.name: t for t in repo.tags()}
    assert tags["trunk"].revision == 2 and tags["trunk-previous"].revision == 1
    assert tags["release-1"].hash == str(first.manifest.root_hash)
    assert tags["release-2"].hash == str(second.manifest.root_hash)
    with open_repository(storage, keys, tag="release-1") as old:
        assert old.read("/plain.txt") == b"plain text\n"
        with pytest.raises(Exception, match="added.txt"):
            old.lookup("/added.txt")
    raw = zlib.decompress((storage / second.manifest.root_hash.object_path("C")).read_bytes())
    (tmp_path / "root.db").write_bytes(raw)
    props = dict(sqlite3.connect(tmp_path / "root.db").execute("SELECT * FROM properties"))
    assert props["previous_revision"] == str(first.manifest.root_hash)
    assert props["revision"] == "2"


def test_changed_nested_catalog_gets_new_revision(tmp_path: Path, keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys)
    (source / "nested" / "deeper" / "file").write_text("edited\n")
    result = run_publish(source, storage, keys)
    assert sorted(result.catalogs_written) == ["/", "/nested"]
    with open_repository(storage, keys) as repo:
        assert repo.read("/nested/deeper/file") == b"edited\n"
        assert repo.read("/nested/deeper/leaf/x") == b"grandchild catalog\n"


def test_existing_tag_refused_before_any_work(tmp_path: Path, keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys, tag="v1")
    manifest = (storage / ".cvmfspublished").read_bytes()
    with pytest.raises(PublishError, match="tag 'v1' already exists"):
        run_publish(source, storage, keys, tag="v1")
    assert (storage / ".cvmfspublished").read_bytes() == manifest


def test_timestamp_never_goes_backwards(tmp_path: Path, keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys, timestamp=2_000_000_000)
    second = run_publish(source, storage, keys, timestamp=1_000_000_000)
    assert second.manifest.timestamp == 2_000_000_000
    assert _manifest(storage).revision == 2


def test_publish_of_unchanged_tree_writes_no_content(tmp_path: Path, keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys)

    def content() -> set[Path]:
        """Stored objects but catalogs (C) and histories (H), which every publish makes
        anew (with a new timestamp: one of them lands in any fanout now and then)."""
        return {p for p in (storage / "data").glob("*/*") if not p.name.endswith(("C", "H"))}

    before = content()
    result = run_publish(source, storage, keys)
    assert result.objects_written == 0
    assert content() == before


def test_unchanged_files_not_read_again(tmp_path: Path, keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    first = run_publish(source, storage, keys)
    assert first.files_unchanged == 0
    second = run_publish(source, storage, keys)
    assert second.files_unchanged == second.files > 0
    # same size, new mtime: read again
    (source / "plain.txt").write_text("PLAIN TEXT\n")
    third = run_publish(source, storage, keys)
    assert third.files_unchanged == third.files - 1
    # same size and mtime restored by hand: only --rehash notices
    stamp = (source / "medium.bin").stat().st_mtime_ns
    (source / "medium.bin").write_bytes(b"\x00" * 12_000)
    os.utime(source / "medium.bin", ns=(stamp, stamp))
    run_publish(source, storage, keys)
    with open_repository(storage, keys) as repo:
        assert repo.read("/medium.bin") != b"\x00" * 12_000
        assert repo.read("/plain.txt") == b"PLAIN TEXT\n"
    from pycvmfs.publisher.pipeline import Settings
    from pycvmfs.publisher.publish import PublishOptions, publish
    from tests.publish_helpers import SMALL_CHUNKS

    options = PublishOptions(keys.fqrn, source, storage, keys.keys_dir,
                             Settings(chunking=SMALL_CHUNKS), rehash=True)
    assert publish(options).files_unchanged == 0
    with open_repository(storage, keys) as repo:
        assert repo.read("/medium.bin") == b"\x00" * 12_000


def test_changed_settings_or_missing_objects_read_again(tmp_path: Path, keys: Keys) -> None:
    from pycvmfs.format.hashes import Algorithm

    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys)
    assert run_publish(source, storage, keys, algorithm=Algorithm.SHAKE128).files_unchanged == 0
    with open_repository(storage, keys) as repo:
        victim = repo.lookup("/exec.sh").content_hash
        assert victim is not None and victim.algorithm is Algorithm.SHAKE128
    (storage / victim.object_path()).unlink()  # e.g. removed by a garbage collection
    result = run_publish(source, storage, keys, algorithm=Algorithm.SHAKE128)
    assert result.files_unchanged == result.files - 1
    with open_repository(storage, keys) as repo:
        assert repo.read("/exec.sh") == b"#!/bin/sh\necho hi\n"
