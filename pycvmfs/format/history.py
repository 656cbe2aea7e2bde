"""History (tag) database schema 1.0 revision 3 (fact sheet section 7)."""

from __future__ import annotations

from dataclasses import dataclass

HISTORY_SCHEMA = "1.0"
HISTORY_SCHEMA_REVISION = 3
TRUNK = "trunk"
TRUNK_PREVIOUS = "trunk-previous"

HISTORY_DDL = (  # the reference's statements, spacing included
    "CREATE TABLE properties (key TEXT, value TEXT, "
    "CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER,  "
    "CONSTRAINT pk_branch PRIMARY KEY (branch),   FOREIGN KEY (parent) REFERENCES "
    "branches (branch),   CHECK ((branch <> '') OR (parent IS NULL)),   "
    "CHECK ((branch = '') OR (parent IS NOT NULL)))",
    "CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER,   timestamp INTEGER, "
    "channel INTEGER, description TEXT, size INTEGER,   branch TEXT, "
    "CONSTRAINT pk_tags PRIMARY KEY (name),   FOREIGN KEY (branch) REFERENCES branches (branch))",
    "CREATE TABLE recycle_bin (hash TEXT, flags INTEGER,   "
    "CONSTRAINT pk_hash PRIMARY KEY (hash))",
)
INITIAL_BRANCH_ROW = ("", None, 0)
TAG_COLUMNS = ("name", "hash", "revision", "timestamp", "channel", "description", "size", "branch")


@dataclass(frozen=True, slots=True)
class Tag:
    """A named root catalog: `hash` is the textual root catalog hash without suffix."""

    name: str
    hash: str
    revision: int
    timestamp: int
    description: str = ""
    size: int = 0
    channel: int = 0
    branch: str = ""

    def row(self) -> tuple[object, ...]:
        return (self.name, self.hash, self.revision, self.timestamp, self.channel,
                self.description, self.size, self.branch)

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> Tag:
        name, hash_, revision, timestamp, channel, description, size, branch = row
        return cls(str(name), str(hash_), int(revision or 0), int(timestamp or 0),  # type: ignore[call-overload]
                   str(description or ""), int(size or 0), int(channel or 0),  # type: ignore[call-overload]
                   str(branch or ""))
