"""containerd's filter syntax over snapshots (List requests)."""

from __future__ import annotations

import pytest

from pycvmfs.snapshotter.errors import InvalidSnapshotError
from pycvmfs.snapshotter.filters import Selector, matches, parse
from pycvmfs.snapshotter.store import Kind, Snapshot


def snap(key: str, parent: str = "", kind: Kind = Kind.COMMITTED,
         labels: dict[str, str] | None = None) -> Snapshot:
    return Snapshot(1, key, parent, kind, labels or {}, 0.0, 0.0, None, 0, 0)


def test_parse_selectors() -> None:
    assert parse('name==foo,labels."a.b/c"') == [
        Selector(("name",), "==", "foo"), Selector(("labels", "a.b/c"), None, "")]
    assert parse('kind != view , labels.x=="1,2"') == [
        Selector(("kind",), "!=", "view"), Selector(("labels", "x"), "==", "1,2")]


@pytest.mark.parametrize(("filters", "expected"), [
    ([], True),
    (["name==k"], True),
    (["name==other"], False),
    (["name==other", "kind==active"], True),
    (["kind==active,parent==p"], True),
    (["kind==active,parent!=p"], False),
    (["labels.containerd.io/gc.root"], True),
    (['labels."containerd.io/gc.root"==yes'], True),
    (["labels.missing"], False),
    (["parent~=^p$"], True),
])
def test_matches(filters: list[str], expected: bool) -> None:
    snapshot = snap("k", "p", Kind.ACTIVE, {"containerd.io/gc.root": "yes"})
    assert matches(snapshot, filters) is expected


def test_bad_filters_are_invalid_arguments() -> None:
    with pytest.raises(InvalidSnapshotError):
        matches(snap("k"), ["name~=("])
    with pytest.raises(InvalidSnapshotError):
        parse("==x")
