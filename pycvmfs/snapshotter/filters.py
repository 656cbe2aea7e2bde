"""containerd's filter syntax, as List requests carry it, applied to stored snapshots.

A filter is selectors joined by `,` (all must match); a request's filters are alternatives
(any may match; none means everything). A selector is `FIELDPATH[OP VALUE]` with OP one of
`==`, `!=`, `~=` (regular expression search); without an operator the field must be present.
Field path parts are separated by `.` and may be quoted (`labels."a.b/c"==x`); a value may be
quoted too. The fields of a snapshot are `name`, `parent`, `kind` (`active`, `view`,
`committed`) and `labels.NAME`, as containerd's snapshot adaptor names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pycvmfs.snapshotter.errors import InvalidSnapshotError
from pycvmfs.snapshotter.store import Snapshot

_QUOTED = r'"(?:[^"\\]|\\.)*"|`[^`]*`'
_PART = rf"(?:{_QUOTED}|[A-Za-z0-9_/\-]+)"
_SELECTOR = re.compile(rf"\s*(?P<path>{_PART}(?:\.{_PART})*)\s*"
                       rf"(?:(?P<op>==|!=|~=)\s*(?P<value>{_QUOTED}|[^,]*?))?\s*(?:,|$)")
_PARTS = re.compile(rf"({_PART})(?:\.|$)")


@dataclass(frozen=True)
class Selector:
    path: tuple[str, ...]
    operator: str | None
    value: str


def _unquote(text: str) -> str:
    if text[:1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if text[:1] == "`":
        return text[1:-1]
    return text


def parse(text: str) -> list[Selector]:
    """The selectors of one filter (InvalidSnapshotError when it does not parse)."""
    selectors: list[Selector] = []
    position = 0
    while position < len(text):
        found = _SELECTOR.match(text, position)
        if found is None or found.end() == position:
            raise InvalidSnapshotError(f"filter {text!r} does not parse at {position}")
        path = tuple(_unquote(part) for part in _PARTS.findall(found["path"]))
        value = _unquote(found["value"].strip()) if found["value"] is not None else ""
        selectors.append(Selector(path, found["op"], value))
        position = found.end()
    return selectors


def _field(snapshot: Snapshot, path: tuple[str, ...]) -> str | None:
    if path == ("name",):
        return snapshot.key
    if path == ("parent",):
        return snapshot.parent
    if path == ("kind",):
        return snapshot.kind.value
    if len(path) >= 2 and path[0] == "labels":
        return snapshot.labels.get(".".join(path[1:]))
    return None


def _matches_one(snapshot: Snapshot, selector: Selector) -> bool:
    value = _field(snapshot, selector.path)
    if selector.operator is None:
        return value is not None
    if selector.operator == "==":
        return value == selector.value
    if selector.operator == "!=":
        return value != selector.value
    try:
        return value is not None and re.search(selector.value, value) is not None
    except re.error as exc:
        raise InvalidSnapshotError(f"filter value {selector.value!r}: {exc}") from None


def compile_filters(filters: Sequence[str]) -> Callable[[Snapshot], bool]:
    """A test passing the snapshots that match any of the filters (every snapshot when none
    is given); the filters are parsed once, here (InvalidSnapshotError)."""
    parsed = [parse(text) for text in filters]
    if not parsed:
        return lambda snapshot: True
    return lambda snapshot: any(all(_matches_one(snapshot, s) for s in selectors)
                                for selectors in parsed)


def matches(snapshot: Snapshot, filters: Sequence[str]) -> bool:
    """Whether the snapshot passes any of the filters (all of them pass when none is given)."""
    return compile_filters(filters)(snapshot)
