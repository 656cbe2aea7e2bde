"""`.cvmfsdirtab` patterns decide which directories become nested catalogs, and those
directories list a `.cvmfscatalog` marker as the reference's do."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pycvmfs.publisher.tree_walk import (
    CATALOG_MARKER,
    DIRTAB_NAME,
    TreeWalker,
    dirtab_selects,
    parse_dirtab,
)
from tests.publish_helpers import Keys, open_repository, run_publish

DIR_MTIME = int(time.time()) - 200  # recent: the whitelist is signed with PUBLISHED_AT
PUBLISHED_AT = DIR_MTIME + 100

RULES = parse_dirtab("""
# software releases
/software/releases/*
/data/*/run?   # trailing comment
! *.git
!/software/releases/tmp*
""")


@pytest.mark.parametrize(("path", "selected"), [
    ("/software/releases/v1", True),
    ("/software/releases/v1/bin", False),  # `*` never crosses a `/`
    ("/software/releases", False),
    ("/software/releases/repo.git", False),
    ("/software/releases/tmp-build", False),
    ("/data/2024/run1", True),
    ("/data/2024/run10", False),
    ("/other", False),
])
def test_dirtab(path: str, selected: bool) -> None:
    assert dirtab_selects(RULES, path) is selected


def test_parse_skips_blank_and_comments() -> None:
    assert [(r.pattern, r.negated) for r in RULES] == [
        ("/software/releases/*", False), ("/data/*/run?", False), ("*.git", True),
        ("/software/releases/tmp*", True)]


def _dirtab_tree(root: Path) -> Path:
    (root / "releases" / "r1").mkdir(parents=True)
    (root / "releases" / "r2").mkdir()
    (root / "releases" / "r1" / "f").write_text("one\n")
    (root / "releases" / "r2" / CATALOG_MARKER).write_text("")  # made by hand: kept as is
    (root / DIRTAB_NAME).write_text("/releases/*\n")
    os.utime(root / "releases" / "r1", (DIR_MTIME, DIR_MTIME))
    return root


def test_a_directory_the_dirtab_selects_gets_the_marker_the_reference_creates(
        tmp_path: Path) -> None:
    root = TreeWalker(_dirtab_tree(tmp_path)).walk()
    releases = next(c for c in root.children if c.name == "releases")
    r1, r2 = releases.children
    assert r1.nested_root and r2.nested_root
    assert [c.name for c in r1.children] == [CATALOG_MARKER, "f"]
    marker = r1.children[0]
    assert marker.content == b"" and marker.is_regular
    assert stat.S_IMODE(marker.st.st_mode) == 0o644 and marker.st.st_size == 0
    assert marker.st.st_mtime == DIR_MTIME
    assert marker.st.st_uid == r1.st.st_uid
    assert [c.name for c in r2.children] == [CATALOG_MARKER]
    assert r2.children[0].content is None  # read from the source, as every file


def test_the_made_marker_is_published_and_republished_identically(
        tmp_path: Path, keys: Keys) -> None:
    source, storage = _dirtab_tree(tmp_path / "src"), tmp_path / "repo"
    first = run_publish(source, storage, keys, timestamp=PUBLISHED_AT)
    assert sorted(first.catalogs_written) == ["/", "/releases/r1", "/releases/r2"]
    marker = f"/releases/r1/{CATALOG_MARKER}"
    with open_repository(storage, keys) as repo:
        entry = repo.lookup(marker)
        assert entry.size == 0 and stat.S_IMODE(entry.mode) == 0o644
        assert repo.read(marker) == b""
        assert marker in dict(repo.walk())
    assert not (source / marker.lstrip("/")).exists()  # the source is never written
    second = run_publish(source, storage, keys, timestamp=PUBLISHED_AT)
    assert second.catalogs_written == ["/"]  # nothing below changed, marker included
