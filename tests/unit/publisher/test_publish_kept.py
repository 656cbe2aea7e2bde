"""Kept directories: a `.pycvmfs-kept` stub publishes the previous revision's nested
catalog unchanged, byte for byte what a full republish of the unstubbed tree gives."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import PublishError
from pycvmfs.format.catalog import md5path
from pycvmfs.publisher import kept as kept_module
from pycvmfs.publisher import previous as previous_module
from pycvmfs.publisher.gc import collect_garbage
from pycvmfs.publisher.kept import is_kept, keep_published
from pycvmfs.publisher.keys import load_keys
from pycvmfs.publisher.previous import load_previous
from pycvmfs.publisher.publish import PublishResult
from pycvmfs.publisher.storage import LocalStorage
from pycvmfs.publisher.tree_walk import KEPT_ASIDE_PREFIX, KEPT_MARKER, TreeWalker
from tests.publish_helpers import Keys, make_full_tree, open_repository, run_publish

NOW = int(time.time())  # fixed publish times; recent, the whitelist is signed with them
T1, T2, T3 = NOW - 300, NOW - 200, NOW - 100


def _listing(storage: Path, keys: Keys) -> dict[str, tuple[object, ...]]:
    """Every entry with its metadata and content, read and verified by our reader."""
    out: dict[str, tuple[object, ...]] = {}
    with open_repository(storage, keys) as repo:
        for path, e in repo.walk():
            data = repo.read(path) if e.is_regular else b""
            out[path] = (e.mode, e.size, e.mtime, e.linkcount, e.symlink, e.xattrs, data)
        out[""] = tuple(sorted(repo.statistics().items()))
    return out


def _catalog_rows(storage: Path, result: PublishResult, sql: str) -> list[tuple[object, ...]]:
    raw = zlib.decompress((storage / result.manifest.root_hash.object_path("C")).read_bytes())
    db = sqlite3.connect(":memory:")
    db.deserialize(raw)
    return list(db.execute(sql))


def _tree_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- the walk ----------------------------------------------------------------------------

def test_walk_takes_a_stub_as_kept(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / KEPT_MARKER).touch()
    (source / "c").mkdir()
    root = TreeWalker(source).walk()
    a, c = root.children
    assert a.kept and a.nested_root and a.children == []
    assert not c.kept and not c.nested_root


def test_walk_refuses_stub_with_other_entries(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / KEPT_MARKER).touch()
    (source / "a" / "leftover").write_text("x")
    with pytest.raises(PublishError, match=r"/a: kept directory has other entries .*leftover"):
        TreeWalker(source).walk()


def test_walk_refuses_kept_root(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / KEPT_MARKER).touch()
    with pytest.raises(PublishError, match="repository root cannot be kept"):
        TreeWalker(source).walk()


# --- keep_published ------------------------------------------------------------------------

@pytest.mark.parametrize("exchange", [True, False])
def test_keep_published_swaps_in_a_stub(tmp_path: Path, exchange: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:  # file systems without RENAME_EXCHANGE: two renames
        monkeypatch.setattr(kept_module, "_exchange", lambda a, b: False)
    source = tmp_path / "src"
    image = source / "images" / "one"
    (image / "usr" / "bin").mkdir(parents=True)
    (image / "usr" / "bin" / "tool").write_text("tool")
    os.chmod(image / "usr", 0o555)  # image trees have read-only directories
    os.utime(source / "images", ns=(5, 1_600_000_000_000_000_007))
    assert not is_kept(image)
    keep_published(source, "images/one")
    assert is_kept(image)
    assert os.listdir(image) == [KEPT_MARKER]
    assert os.listdir(source / "images") == ["one"]  # nothing left aside
    assert (source / "images").stat().st_mtime_ns == 1_600_000_000_000_000_007
    keep_published(source, "images/one")  # a stub already: nothing to do
    assert os.listdir(image) == [KEPT_MARKER]


def test_keep_published_refuses_bad_targets(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_text("x")
    for rel, message in [("", "not a directory below"), ("../x", "not a directory below"),
                         ("missing", "does not exist"), ("file", "not a directory")]:
        with pytest.raises(PublishError, match=message):
            keep_published(source, rel)
    assert not is_kept(source / "file")


def test_interrupted_keep_published(tmp_path: Path) -> None:
    """Each state a crash can leave: the walk publishes the right thing or refuses, and
    the next keep_published in that directory cleans up."""
    source = tmp_path / "src"
    images = source / "images"
    for name in ("before", "swapped", "fallback"):
        (images / name / "sub").mkdir(parents=True)
        (images / name / "sub" / "f").write_text(name)
    # crashed before the swap: the stub is being built aside, the directory is intact
    (images / f"{KEPT_ASIDE_PREFIX}before" / "stub").mkdir(parents=True)
    # crashed after the exchange: the stub is in place, the old tree aside
    os.rename(images / "swapped", images / "tmp")
    (images / f"{KEPT_ASIDE_PREFIX}swapped").mkdir()
    os.rename(images / "tmp", images / f"{KEPT_ASIDE_PREFIX}swapped" / "stub")
    (images / "swapped").mkdir()
    (images / "swapped" / KEPT_MARKER).touch()
    walked = TreeWalker(source).walk()
    assert [c.name for c in walked.children[0].children] == ["before", "fallback", "swapped"]
    assert walked.children[0].children[2].kept
    # crashed between the two renames of the fallback: the directory is only aside
    (images / f"{KEPT_ASIDE_PREFIX}fallback").mkdir()
    os.rename(images / "fallback", images / f"{KEPT_ASIDE_PREFIX}fallback" / "old")
    with pytest.raises(PublishError, match=r"/images/fallback is missing"):
        TreeWalker(source).walk()
    keep_published(source, "images/before")
    assert sorted(os.listdir(images)) == ["before", "fallback", "swapped"]
    assert (images / "fallback" / "sub" / "f").read_text() == "fallback"  # put back
    assert is_kept(images / "before") and is_kept(images / "swapped")


# --- publishing ----------------------------------------------------------------------------

@pytest.mark.parametrize("rel", ["nested", "nested/deeper/leaf", "releases/r1"])
def test_kept_republish_is_byte_identical(tmp_path: Path, keys: Keys, rel: str) -> None:
    """Publish, then republish once unchanged and once with `rel` stubbed: same catalogs."""
    source, plain, stubbed = make_full_tree(tmp_path / "src"), tmp_path / "a", tmp_path / "b"
    run_publish(source, plain, keys, timestamp=T1)
    shutil.copytree(plain, stubbed, symlinks=True)
    full = run_publish(source, plain, keys, timestamp=T2)
    keep_published(source, rel)
    kept = run_publish(source, stubbed, keys, timestamp=T2)
    assert kept.manifest.root_hash == full.manifest.root_hash
    assert kept.manifest == full.manifest
    assert kept.catalogs_written == full.catalogs_written == ["/"]
    assert kept.catalogs_kept == [f"/{rel}"] and full.catalogs_kept == []
    assert _tree_files(plain / "data") == _tree_files(stubbed / "data")
    assert kept.files < full.files
    assert _listing(stubbed, keys) == _listing(plain, keys)
    # and once more on top of the kept revision: still the same catalog
    third = run_publish(source, stubbed, keys, timestamp=T3)
    assert third.catalogs_kept == [f"/{rel}"] and third.catalogs_written == ["/"]
    assert _listing(stubbed, keys) == _listing(plain, keys)


def test_kept_catalog_with_changes_elsewhere(tmp_path: Path, keys: Keys) -> None:
    """The kept catalog's hash, size, mountpoint row and counters are the previous ones,
    also when the directory's stub has other metadata and the rest of the tree changes."""
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    first = run_publish(source, storage, keys, timestamp=T1)
    nested_sql = "SELECT path, sha1, size FROM nested_catalogs ORDER BY path"
    row_sql = f"SELECT * FROM catalog WHERE md5path_1 = {md5path('/nested')[0]}"
    before_nested = _catalog_rows(storage, first, nested_sql)
    before_row = _catalog_rows(storage, first, row_sql)
    keep_published(source, "nested")
    os.chmod(source / "nested", 0o700)
    os.utime(source / "nested", ns=(0, 0))
    (source / "plain.txt").write_text("changed\n")
    second = run_publish(source, storage, keys, timestamp=T2)
    assert _catalog_rows(storage, second, nested_sql) == before_nested
    assert _catalog_rows(storage, second, row_sql) == before_row
    # a fresh full publish of the same (unstubbed) content counts the same
    reference = make_full_tree(tmp_path / "ref")
    (reference / "plain.txt").write_text("changed\n")
    fresh = tmp_path / "fresh"
    run_publish(reference, fresh, keys, timestamp=T2)
    stats_sql = "SELECT counter, value FROM statistics ORDER BY counter"
    with open_repository(fresh, keys) as repo:
        fresh_stats = repo.statistics()
    with open_repository(storage, keys) as repo:
        assert repo.statistics() == fresh_stats
        assert repo.read("/nested/deeper/leaf/x") == b"grandchild catalog\n"
        assert repo.read("/plain.txt") == b"changed\n"
        assert repo.lookup("/nested").mode & 0o777 == 0o755
    counters = {str(k): v for k, v in _catalog_rows(storage, second, stats_sql)}
    assert (counters["self_nested"], counters["subtree_nested"]) == (3, 1)  # leaf via /nested


def test_kept_needs_a_nested_catalog_of_the_previous_revision(tmp_path: Path,
                                                              keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    keep_published(source, "nested")
    with pytest.raises(PublishError, match=r"cannot keep /nested .*no previous revision"):
        run_publish(source, storage, keys)
    source = make_full_tree(tmp_path / "src2")
    run_publish(source, storage, keys)
    manifest = (storage / ".cvmfspublished").read_bytes()
    keep_published(source, "sub")
    with pytest.raises(PublishError, match=r"cannot keep /sub .*not a nested catalog"):
        run_publish(source, storage, keys)
    (source / "new").mkdir()
    (source / "new" / KEPT_MARKER).touch()
    with pytest.raises(PublishError, match=r"cannot keep /new, /sub .*not a nested catalog"):
        run_publish(source, storage, keys)
    assert (storage / ".cvmfspublished").read_bytes() == manifest


def test_previous_skips_kept_catalogs(tmp_path: Path, keys: Keys) -> None:
    """Kept catalogs contribute statistics only: no file rows, no catalogs below them."""
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys)
    repo_keys = load_keys(keys.fqrn, keys.keys_dir)
    full = load_previous(LocalStorage(storage), keys.fqrn, repo_keys)
    kept = load_previous(LocalStorage(storage), keys.fqrn, repo_keys, ["/nested"])
    assert full is not None and kept is not None
    assert md5path("/nested/deeper/file") in full.files
    assert md5path("/nested/deeper/leaf/x") in full.files
    assert md5path("/nested/deeper/file") not in kept.files
    assert md5path("/nested/deeper/leaf/x") not in kept.files
    assert md5path("/plain.txt") in kept.files
    assert set(full.catalogs) - set(kept.catalogs) == {"/nested", "/nested/deeper/leaf"}
    graft = kept.kept["/nested"]
    assert graft.content_hash == full.catalogs["/nested"].content_hash
    assert graft.size == full.catalogs["/nested"].size
    assert graft.self_counters.values["nested"] == 1
    assert graft.subtree_counters.values["regular"] == 2  # leaf/x, leaf/.cvmfscatalog
    assert full.kept == {}


def test_kept_statistics_are_read_once(tmp_path: Path, keys: Keys,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog never changes under its hash: its statistics are remembered, so the next
    publishes read no kept catalog at all; a damaged memo is recomputed."""
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys)
    repo_keys = load_keys(keys.fqrn, keys.keys_dir)
    first = load_previous(LocalStorage(storage), keys.fqrn, repo_keys, ["/nested"])
    assert first is not None
    nested_hash = first.kept["/nested"].content_hash
    reads: list[object] = []
    real = previous_module._read_metadata

    def counting(store: LocalStorage, content_hash: object, suffix: object) -> bytes:
        reads.append(content_hash)
        return real(store, content_hash, suffix)  # type: ignore[arg-type]

    monkeypatch.setattr(previous_module, "_read_metadata", counting)
    again = load_previous(LocalStorage(storage), keys.fqrn, repo_keys, ["/nested"])
    assert again is not None and nested_hash not in reads
    assert again.kept["/nested"].subtree_counters.values == \
        first.kept["/nested"].subtree_counters.values
    with sqlite3.connect(storage / previous_module.STATISTICS_MEMO) as db:
        db.execute("UPDATE statistics SET counters = 'garbage'")
    db.close()
    repaired = load_previous(LocalStorage(storage), keys.fqrn, repo_keys, ["/nested"])
    assert repaired is not None and nested_hash in reads
    assert repaired.kept["/nested"].self_counters.values == \
        first.kept["/nested"].self_counters.values


def test_gc_keeps_objects_of_kept_catalogs(tmp_path: Path, keys: Keys) -> None:
    source, storage = make_full_tree(tmp_path / "src"), tmp_path / "repo"
    run_publish(source, storage, keys, timestamp=T1)
    before = _listing(storage, keys)
    keep_published(source, "nested")
    (source / "plain.txt").write_text("changed\n")  # revision 1 has garbage to collect
    run_publish(source, storage, keys, timestamp=T2)
    result = collect_garbage(storage, keys.fqrn, load_keys(keys.fqrn, keys.keys_dir),
                             keep_tags=False)
    assert result.objects_deleted > 0
    after = _listing(storage, keys)
    assert {p: v for p, v in after.items() if p.startswith("/nested")} == \
        {p: v for p, v in before.items() if p.startswith("/nested")}
    third = run_publish(source, storage, keys, timestamp=T3)  # still grafts after the sweep
    assert third.catalogs_kept == ["/nested"]
    assert _listing(storage, keys) == after
