"""`.cvmfsdirtab` patterns decide which directories become nested catalogs."""

from __future__ import annotations

import pytest

from pycvmfs.publisher.tree_walk import dirtab_selects, parse_dirtab

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
