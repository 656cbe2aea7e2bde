"""Every SQL statement the reader runs, as named constants (cvmfs `catalog_sql.h` style).

Statements that select catalog rows are templates with one `{columns}` slot: the column list
is decided once per catalog when it is opened (`mtimens` and `xattr` exist only in newer
schema revisions), never per query.
"""

from __future__ import annotations

from pycvmfs.format.history import TAG_COLUMNS

# --- catalog: introspection, done once at open --------------------------------------------
LIST_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
CATALOG_COLUMNS = "PRAGMA table_info(catalog)"  # row[1] is the column name
SELECT_PROPERTIES = "SELECT key, value FROM properties"

# --- catalog: entries (templates, formatted once at open) ----------------------------------
ENTRY_BY_MD5PATH = "SELECT {columns} FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?"
ENTRIES_BY_PARENT = "SELECT {columns} FROM catalog WHERE parent_1 = ? AND parent_2 = ?"
ENTRIES_BY_PARENT_AFTER = (  # a range scan of idx_catalog_parent (rowid is its last column)
    "SELECT {columns} FROM catalog WHERE parent_1 = ? AND parent_2 = ? AND rowid > ? "
    "ORDER BY rowid LIMIT ?"
)
CHUNKS_BY_MD5PATH = (
    "SELECT offset, size, hash FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? "
    "ORDER BY offset"
)
HARDLINKED = (  # rows in a hardlink group (the group id is the high half of `hardlinks`)
    "SELECT {columns} FROM catalog WHERE hardlinks >= 4294967296 OR hardlinks < 0 LIMIT ?"
)
NESTED_CATALOGS = "SELECT path, sha1, size FROM nested_catalogs"
BIND_MOUNTPOINTS = "SELECT path, sha1, size FROM bind_mountpoints"
SELECT_STATISTICS = "SELECT counter, value FROM statistics"
MAX_ROWID = "SELECT max(rowid) FROM catalog"

# --- history database (fact sheet 7) --------------------------------------------------------
TAG_SELECT_COLUMNS = ", ".join(TAG_COLUMNS)  # the order Tag.from_row expects
TAG_BY_NAME = f"SELECT {TAG_SELECT_COLUMNS} FROM tags WHERE name = ?"
ALL_TAGS = f"SELECT {TAG_SELECT_COLUMNS} FROM tags ORDER BY revision DESC, name"
TAG_NAMES = "SELECT name FROM tags ORDER BY name"
