"""The history (tag) database of a new revision: previous tags carried over,
`trunk`/`trunk-previous` moved, an optional named tag added (fact sheet section 7)."""

from __future__ import annotations

from pathlib import Path

from pycvmfs.errors import PublishError
from pycvmfs.format.history import (
    HISTORY_DDL,
    HISTORY_SCHEMA,
    HISTORY_SCHEMA_REVISION,
    INITIAL_BRANCH_ROW,
    TAG_COLUMNS,
    TRUNK,
    TRUNK_PREVIOUS,
    Tag,
)
from pycvmfs.publisher.sqlite_image import read_sqlite_rows, sqlite_image

TRUNK_DESCRIPTION = "current HEAD"
TRUNK_PREVIOUS_DESCRIPTION = "default undo target"


def read_tags(image: bytes) -> dict[str, Tag]:
    rows = read_sqlite_rows(image, f"SELECT {', '.join(TAG_COLUMNS)} FROM tags")
    return {tag.name: tag for tag in map(Tag.from_row, rows)}


def check_new_tag(previous: dict[str, Tag], named: str) -> None:
    """Refuse a tag name that exists or is reserved, before any work is done."""
    if named in previous or named in (TRUNK, TRUNK_PREVIOUS):
        raise PublishError(f"tag {named!r} already exists; choose another name")
    if not named.strip() or "\n" in named:
        raise PublishError(f"tag name {named!r} is not usable")


def next_tags(previous: dict[str, Tag], head: Tag, named: str | None) -> dict[str, Tag]:
    """Tags of the new revision; `head` is the new trunk (name ignored)."""
    if named is not None:
        check_new_tag(previous, named)
    tags = dict(previous)
    old_trunk = previous.get(TRUNK)
    if old_trunk is not None:
        tags[TRUNK_PREVIOUS] = _renamed(old_trunk, TRUNK_PREVIOUS, TRUNK_PREVIOUS_DESCRIPTION)
    tags[TRUNK] = _renamed(head, TRUNK, TRUNK_DESCRIPTION)
    if named is not None:
        tags[named] = _renamed(head, named, "")
    return tags


def history_image(tags: dict[str, Tag], fqrn: str, previous_hash: str | None,
                  tmp_dir: Path) -> bytes:
    properties = {
        "schema": HISTORY_SCHEMA,
        "schema_revision": str(HISTORY_SCHEMA_REVISION),
        "fqrn": fqrn,
    }
    if previous_hash is not None:
        properties["previous_revision"] = previous_hash
    placeholders = ", ".join("?" * len(TAG_COLUMNS))
    return sqlite_image(tmp_dir, HISTORY_DDL, [
        ("INSERT INTO properties VALUES (?, ?)", properties.items()),
        ("INSERT INTO branches VALUES (?, ?, ?)", [INITIAL_BRANCH_ROW]),
        (f"INSERT INTO tags ({', '.join(TAG_COLUMNS)}) VALUES ({placeholders})",
         [t.row() for t in sorted(tags.values(), key=lambda t: t.name)]),
    ])


def _renamed(tag: Tag, name: str, description: str) -> Tag:
    return Tag(name, tag.hash, tag.revision, tag.timestamp, description, tag.size,
               tag.channel, tag.branch)
