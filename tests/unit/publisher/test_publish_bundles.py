"""File bundles at publish time: a `.cvmfsbundle-<name>` spec marks `<name>` with the
reference's catalog flag; an unusable spec warns and publishes everything else."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

from pycvmfs.format.bundles import render_spec
from pycvmfs.format.catalog import Flags, md5path
from pycvmfs.publisher.bundles import find_bundles
from pycvmfs.publisher.publish import PublishResult
from pycvmfs.publisher.tree_walk import Node, TreeWalker
from tests.publish_helpers import Keys, open_repository, run_publish

REFERENCE_BUNDLE_TRIGGER = 0x20000  # kFlagBundleTrigger, bit 17 of the catalog flags


def _flags(storage: Path, result: PublishResult, path: str) -> int:
    raw = zlib.decompress((storage / result.manifest.root_hash.object_path("C")).read_bytes())
    db = sqlite3.connect(":memory:")
    db.deserialize(raw)
    a, b = md5path(path)
    row = db.execute("SELECT flags FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?",
                     (a, b)).fetchone()
    assert row is not None, path
    return int(row[0])


def _tree(root: Path) -> Path:
    (root / "lib" / "sub").mkdir(parents=True)
    (root / "lib" / "tool").write_text("trigger\n")
    (root / "lib" / "dep1.so").write_text("one\n")
    (root / "lib" / "sub" / "dep2.so").write_text("two\n")
    (root / "data.bin").write_bytes(b"\0" * 100)
    (root / "lib" / ".cvmfsbundle-tool").write_bytes(
        render_spec(["/data.bin", "dep1.so", "./sub/dep2.so"]))
    return root


def test_trigger_gets_the_reference_flag(tmp_path: Path, keys: Keys) -> None:
    assert int(Flags.BUNDLE_TRIGGER) == REFERENCE_BUNDLE_TRIGGER == 131072
    storage = tmp_path / "repo"
    result = run_publish(_tree(tmp_path / "src"), storage, keys)
    assert result.bundle_triggers == 1 and result.warnings == ()
    assert _flags(storage, result, "/lib/tool") == int(Flags.FILE) | REFERENCE_BUNDLE_TRIGGER
    for other in ("/lib/dep1.so", "/lib/.cvmfsbundle-tool", "/data.bin"):
        assert _flags(storage, result, other) == int(Flags.FILE)
    with open_repository(storage, keys) as repo:
        assert repo.lookup("/lib/tool").is_bundle_trigger
        assert not repo.lookup("/lib/dep1.so").is_bundle_trigger
        assert b"CVMFS_BUNDLE" in repo.read("/lib/.cvmfsbundle-tool")


def test_bad_specs_warn_and_publish_the_rest(tmp_path: Path, keys: Keys) -> None:
    source = _tree(tmp_path / "src")
    (source / "lib" / "broken").write_text("x")
    (source / "lib" / ".cvmfsbundle-broken").write_text("{ not json")
    (source / "lib" / ".cvmfsbundle-absent").write_bytes(render_spec(["/data.bin"]))
    (source / "lib" / "escape").write_text("x")
    (source / "lib" / ".cvmfsbundle-escape").write_bytes(render_spec(["../../../etc"]))
    (source / "lib" / ".cvmfsbundle-sub").write_bytes(render_spec(["/data.bin"]))
    storage = tmp_path / "repo"
    result = run_publish(source, storage, keys)
    assert result.bundle_triggers == 1
    text = "\n".join(result.warnings)
    assert len(result.warnings) == 4, text
    assert "/lib/.cvmfsbundle-broken: unusable bundle spec (the spec is not JSON" in text
    assert "/lib/broken is not a bundle trigger" in text
    assert "/lib/.cvmfsbundle-absent: unusable bundle spec (no regular file 'absent'" in text
    assert "/lib/.cvmfsbundle-escape: unusable bundle spec (dependency 0 ('../../../etc') " \
           "leaves the repository)" in text
    assert "/lib/.cvmfsbundle-sub: unusable bundle spec (no regular file 'sub'" in text
    assert _flags(storage, result, "/lib/broken") == int(Flags.FILE)
    assert _flags(storage, result, "/lib/tool") & REFERENCE_BUNDLE_TRIGGER
    with open_repository(storage, keys) as repo:
        assert repo.read("/lib/.cvmfsbundle-broken") == b"{ not json"


def test_listed_files_missing_from_the_tree_only_warn(tmp_path: Path, keys: Keys) -> None:
    source = _tree(tmp_path / "src")
    (source / "lib" / ".cvmfsbundle-tool").write_bytes(
        render_spec(["dep1.so", "gone1", "gone2", "/lib/sub", "gone3", "gone4"]))
    result = run_publish(source, tmp_path / "repo", keys)
    assert result.bundle_triggers == 1
    assert result.warnings == (
        "/lib/.cvmfsbundle-tool: 5 of the 6 listed files are not regular files in this "
        "revision (/lib/gone1, /lib/gone2, /lib/sub and 2 more); clients skip them",)


def test_scan_without_reading_unrelated_files(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    (source / "lib" / ".cvmfsbundle-dir").mkdir()
    (source / "lib" / "dir").write_text("x")
    read: list[str] = []

    def reader(node: Node) -> bytes:
        read.append(node.path)
        return render_spec(["/data.bin"])

    scan = find_bundles(TreeWalker(source).walk(), reader)
    assert scan.triggers == {"/lib/tool"}
    assert read == ["/lib/.cvmfsbundle-tool"]
    assert scan.warnings == ("/lib/.cvmfsbundle-dir: unusable bundle spec (the spec is not "
                             "a regular file); published as an ordinary file, /lib/dir is not "
                             "a bundle trigger",)


def test_unreadable_spec_is_a_warning(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")

    def reader(node: Node) -> bytes:
        raise PermissionError(13, "Permission denied")

    scan = find_bundles(TreeWalker(source).walk(), reader)
    assert scan.triggers == frozenset()
    assert "cannot read it: Permission denied" in scan.warnings[0]
