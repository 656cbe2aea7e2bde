"""`pycvmfs gc`: a sweep keeps every object a kept revision needs and deletes the rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycvmfs.cli.gc_report import gc_command
from pycvmfs.errors import LockError
from pycvmfs.publisher.gc import GcError, collect_garbage, parse_object_name
from pycvmfs.publisher.keys import load_keys
from pycvmfs.publisher.storage import LocalStorage
from tests.publish_helpers import Keys, open_repository, pseudo_random, run_publish


def _objects(storage: Path) -> dict[str, int]:
    out = {}
    for directory in sorted((storage / "data").iterdir()):
        if directory.name == "txn":
            continue
        for entry in directory.iterdir():
            out[f"data/{directory.name}/{entry.name}"] = entry.stat().st_size
    return out


def _read_all(storage: Path, keys: Keys, tag: str | None = None) -> dict[str, bytes]:
    """Every regular file of a revision, each object verified; symlinks and dirs listed."""
    out: dict[str, bytes] = {}
    with open_repository(storage, keys, tag=tag) as repo:
        for path, entry in repo.walk():
            out[path] = repo.read(path) if entry.is_regular else entry.symlink.encode()
    return out


def _object_paths(storage: Path, keys: Keys, tag: str | None = None) -> set[str]:
    """The data objects of every regular file of a revision."""
    with open_repository(storage, keys, tag=tag) as repo:
        return {piece.hash.object_path(piece.suffix)
                for path, entry in repo.walk() if entry.is_regular
                for piece in repo.pieces(path)[1]}


def _tree(root: Path, version: int) -> Path:
    """Revision 1 or 2 of a small tree with a nested catalog and chunked files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "same.txt").write_text("unchanged in both revisions\n")
    (root / "changing.txt").write_text(f"version {version}\n")
    (root / "big.bin").write_bytes(pseudo_random(100 + version, 200_000))  # chunked
    (root / "big-same.bin").write_bytes(pseudo_random(7, 150_000))
    (root / "link").unlink(missing_ok=True)
    os.symlink("same.txt", root / "link")
    nested = root / "nested"
    nested.mkdir(exist_ok=True)
    (nested / ".cvmfscatalog").touch()
    (nested / "inner.txt").write_text(f"nested version {version}\n")
    (nested / "stable.txt").write_text("nested, never changes\n")
    return root


@pytest.fixture()
def two_revisions(tmp_path: Path, keys: Keys) -> tuple[Path, dict[str, bytes], dict[str, bytes],
                                                       set[str]]:
    """Revision 1 (tagged `v1`) and revision 2 replacing some files; the objects only
    revision 1 has."""
    source, storage = tmp_path / "src", tmp_path / "storage"
    run_publish(_tree(source, 1), storage, keys, tag="v1")
    first = _read_all(storage, keys)
    after_first = set(_objects(storage))
    run_publish(_tree(source, 2), storage, keys)
    second = _read_all(storage, keys)
    assert first != second
    return storage, first, second, after_first


def test_trunk_only_deletes_what_only_the_old_revision_used(
        two_revisions: tuple[Path, dict[str, bytes], dict[str, bytes], set[str]],
        keys: Keys) -> None:
    storage, first, second, after_first = two_revisions
    before = _objects(storage)
    replaced = _object_paths(storage, keys, "v1") - _object_paths(storage, keys)
    assert any(p.endswith("P") for p in replaced) and any(p[-1] != "P" for p in replaced)
    result = collect_garbage(storage, keys.fqrn, load_keys(keys.fqrn, keys.keys_dir),
                             keep_tags=False)
    after = _objects(storage)
    gone = set(before) - set(after)
    assert gone == set(result.deleted) and result.objects_deleted == len(gone) > 0
    assert result.bytes_freed == sum(before[p] for p in gone)
    assert gone <= after_first  # only things revision 1 wrote
    assert replaced <= gone  # every content object only revision 1 used
    suffixes = {p[-1] if p[-1].isupper() else "" for p in gone}
    assert {"", "P", "C", "H"} <= suffixes  # a file, chunks, catalogs, the old history
    assert sorted(result.dropped_tags) == ["trunk-previous", "v1"]
    assert _read_all(storage, keys) == second  # the trunk reads completely, verified
    with pytest.raises(Exception, match="v1|catalog|no such file"):
        _read_all(storage, keys, tag="v1")
    again = collect_garbage(storage, keys.fqrn, load_keys(keys.fqrn, keys.keys_dir),
                            keep_tags=False)
    assert again.objects_deleted == 0 and _objects(storage) == after


def test_tags_kept_by_default(
        two_revisions: tuple[Path, dict[str, bytes], dict[str, bytes], set[str]],
        keys: Keys) -> None:
    storage, first, second, _ = two_revisions
    result = collect_garbage(storage, keys.fqrn, load_keys(keys.fqrn, keys.keys_dir))
    reasons = {k.reason for k in result.kept}
    assert {"trunk", "tag v1", "tag trunk-previous"} <= reasons
    assert all(not p.endswith("C") for p in result.deleted)  # no catalog of a kept revision
    assert _read_all(storage, keys, tag="v1") == first
    assert _read_all(storage, keys, tag="trunk-previous") == first
    assert _read_all(storage, keys) == second
    # only the first revision's history database is garbage: every revision is tagged
    assert [p[-1] for p in result.deleted] == ["H"]


def test_keep_revisions_follows_previous_revision(
        two_revisions: tuple[Path, dict[str, bytes], dict[str, bytes], set[str]],
        keys: Keys) -> None:
    storage, first, second, _ = two_revisions
    keys_loaded = load_keys(keys.fqrn, keys.keys_dir)
    result = collect_garbage(storage, keys.fqrn, keys_loaded, keep_tags=False,
                             keep_revisions=1)
    assert [k.reason for k in result.kept] == ["trunk", "previous-1"]
    assert result.kept[1].revision == 1 and result.dropped_tags == []
    assert _read_all(storage, keys, tag="v1") == first


def test_dry_run_deletes_nothing(
        two_revisions: tuple[Path, dict[str, bytes], dict[str, bytes], set[str]],
        keys: Keys) -> None:
    storage, first, _second, _ = two_revisions
    before = _objects(storage)
    from click.testing import CliRunner

    common = ["--storage", str(storage), "--repo", keys.fqrn, "--keys-dir", str(keys.keys_dir)]
    out = CliRunner().invoke(gc_command, [*common, "--no-tags", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "would free" in out.output
    assert _objects(storage) == before
    assert _read_all(storage, keys, tag="v1") == first
    real = CliRunner().invoke(gc_command, [*common, "--no-tags"])
    assert real.exit_code == 0, real.output
    assert "freed" in real.output and len(_objects(storage)) < len(before)


def test_gc_waits_for_no_publisher_and_refuses_broken_revisions(
        two_revisions: tuple[Path, dict[str, bytes], dict[str, bytes], set[str]],
        keys: Keys) -> None:
    storage, *_ = two_revisions
    loaded = load_keys(keys.fqrn, keys.keys_dir)
    with LocalStorage(storage).lock(), pytest.raises(LockError, match="locked"):
        collect_garbage(storage, keys.fqrn, loaded)
    # a kept catalog missing: nothing may be deleted
    with open_repository(storage, keys) as repo:
        nested = repo.tree.root.nested_catalogs()[0].hash
    path = storage / nested.object_path("C")
    path.rename(path.with_name("aside"))
    before = _objects(storage)
    with pytest.raises(GcError, match="refusing"):
        collect_garbage(storage, keys.fqrn, loaded)
    assert _objects(storage) == before


def test_parse_object_name() -> None:
    digest = bytes(range(20))
    text = digest.hex()
    assert parse_object_name(text[:2], text[2:] + "C") == (digest, "C")
    assert parse_object_name(text[:2], text[2:]) == (digest, "")
    assert parse_object_name(text[:2], text[2:] + "-rmd160P") == (digest, "P")
    assert parse_object_name(text[:2], text[2:] + "-shake128") == (digest, "")
    assert parse_object_name(text[:2], "README") is None
    assert parse_object_name(text[:2], text[2:] + ".tmp") is None
    assert parse_object_name("txn", text[2:]) is None
