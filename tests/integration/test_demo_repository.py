"""The bundled demo repository: up to date with its generator (byte for byte) and
exercising every feature the issue lists."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from pycvmfs.format.certificates import load_public_key
from pycvmfs.repository.open import RevisionSelector, open_repository
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import LocalSource

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "testdata" / "repo"
FQRN = "demo.pycvmfs.org"


def _open(tag: str | None = None) -> Repository:
    key = load_public_key((ROOT / "testdata" / "keys" / f"{FQRN}.pub").read_bytes())
    return open_repository(LocalSource(DEMO), FQRN, [key], RevisionSelector.of(tag=tag))


def _same_tree(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b)
    diffs = cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files
    for sub in cmp.common_dirs:
        diffs += [f"{sub}/{d}" for d in _same_tree(a / sub, b / sub)]
    return diffs


def test_regenerating_gives_identical_bytes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "testdata" / "build_demo.py"), "--output",
                    str(tmp_path / "repo")], check=True, capture_output=True)
    assert _same_tree(DEMO, tmp_path / "repo") == []
    for a in DEMO.rglob("*"):
        if a.is_file():
            assert filecmp.cmp(a, tmp_path / "repo" / a.relative_to(DEMO), shallow=False)


def test_features() -> None:
    with _open() as repo:
        assert repo.revision == 2
        assert {t.name for t in repo.tags()} >= {"trunk", "trunk-previous", "v1", "v2"}
        nested = {path for path, _ in repo.walk() if repo.lookup(path).is_nested_mountpoint}
        assert nested == {"/data", "/software/v1", "/software/v2"}
        _, pieces = repo.pieces("/data/random.bin")
        assert len(pieces) > 1
        guide, hard = repo.lookup("/docs/guide.txt"), repo.lookup("/docs/guide-hardlink.txt")
        assert guide.linkcount == hard.linkcount == 2 and guide.hardlink_group > 0
        assert repo.lookup("/links/arch-lib").symlink == "$(DEMO_ARCH:-x86_64)/lib"
        assert dict(repo.lookup("/docs/notes.txt").xattrs) == {"user.author": b"pycvmfs"}
        assert repo.read("/README.txt").endswith(b"revision 2: updated\n")
    with _open(tag="v1") as old:
        assert old.revision == 1
        assert old.read("/README.txt") == b"pycvmfs demo repository\n"
        with pytest.raises(Exception, match="v2"):
            old.lookup("/software/v2")
