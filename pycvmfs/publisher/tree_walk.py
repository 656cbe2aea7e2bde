"""Read a source directory into a tree of nodes, checking every name on the way.

Nothing is hashed here: the walk records what each entry is (lstat, link target,
stored xattrs: `user.*`, and `trusted.overlay.opaque` for container layer trees), which
directories start nested catalogs (`.cvmfscatalog` markers and `.cvmfsdirtab` patterns),
which ones stay as the previous revision published them (`.pycvmfs-kept` stubs, see
publisher.kept; never descended into), and every input it must refuse. Problems are
collected, not raised one by one, so the user sees all of them at once.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.errors import PublishError
from pycvmfs.format.xattr_blob import MAX_ATTRIBUTES, MAX_KEY_BYTES, MAX_VALUE_BYTES

CATALOG_MARKER = ".cvmfscatalog"
DIRTAB_NAME = ".cvmfsdirtab"
# A directory holding only this file stands for "this nested catalog, with everything
# below it, exactly as in the previous revision" (publisher.kept).
KEPT_MARKER = ".pycvmfs-kept"
# Names keep_published uses next to a directory while swapping in a stub; never published.
KEPT_ASIDE_PREFIX = ".pycvmfs-kept-aside."
STORED_XATTR_PREFIX = "user."
# Container layer trees mark opaque directories with it (fact sheet 14.1); other trusted.*
# and security.* names are never stored (they grant privileges on a local copy).
STORED_TRUSTED_XATTRS = frozenset({"trusted.overlay.opaque"})
RESERVED_ROOT_NAMES = {".cvmfs"}  # the reference client uses /.cvmfs for snapshots
MAX_PROBLEMS_SHOWN = 20


@dataclass(slots=True)
class Node:
    """One source entry. `path` is the repository path ('' for the root)."""

    path: str
    name: str
    source: str  # filesystem path (str with surrogateescape, as os returns it)
    st: os.stat_result
    symlink: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    nested_root: bool = False
    kept: bool = False  # graft the previous revision's nested catalog here (KEPT_MARKER)
    content: bytes | None = None  # made by the walk, not read from `source` (_made_marker)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.st.st_mode)

    @property
    def inode_key(self) -> tuple[int, int]:
        return self.st.st_dev, self.st.st_ino


@dataclass(frozen=True, slots=True)
class DirtabRule:
    pattern: str
    negated: bool

    def matches(self, path: str) -> bool:
        """Absolute patterns match whole paths component by component (`*` never
        crosses a `/`); relative ones match the last component only."""
        if not self.pattern.startswith("/"):
            return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], self.pattern)
        wanted = self.pattern.rstrip("/").split("/")
        parts = path.split("/")
        return len(parts) == len(wanted) and all(
            fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, wanted, strict=True))


def parse_dirtab(text: str) -> list[DirtabRule]:
    """`.cvmfsdirtab`: one glob per line, `! glob` excludes, `#` starts a comment."""
    rules = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        if pattern:
            rules.append(DirtabRule(pattern, negated))
    return rules


def dirtab_selects(rules: list[DirtabRule], path: str) -> bool:
    """True when a positive rule matches and no exclusion matches the path."""
    if any(r.negated and r.matches(path) for r in rules):
        return False
    return any(not r.negated and r.matches(path) for r in rules)


class TreeWalker:
    """Walk a source tree; `walk()` returns the root node or raises PublishError."""

    def __init__(self, source_dir: Path | str) -> None:
        self.source_dir = os.fspath(Path(source_dir).absolute())
        self.problems: list[str] = []
        self._rules: list[DirtabRule] = []
        self._made = 0  # markers made so far (their inode numbers)

    def walk(self) -> Node:
        try:
            st = os.lstat(self.source_dir)
        except OSError as exc:
            raise PublishError(f"cannot read source {self.source_dir}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise PublishError(f"source {self.source_dir} is not a directory")
        self._rules = self._load_dirtab()
        root = Node("", "", self.source_dir, st, xattrs=self._xattrs(self.source_dir, ""))
        root.nested_root = True
        self._fill(root)
        if any(c.name == CATALOG_MARKER for c in root.children):
            self.problems.append(f"/{CATALOG_MARKER}: a catalog marker in the repository root "
                                 "is not allowed (the root always has its own catalog)")
        if root.kept:
            root.kept = False
            self.problems.append(f"/{KEPT_MARKER}: the repository root cannot be kept "
                                 "(only nested catalogs can)")
        if self.problems:
            shown = self.problems[:MAX_PROBLEMS_SHOWN]
            more = len(self.problems) - len(shown)
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise PublishError("refusing to publish, the source has problems:\n  "
                               + "\n  ".join(shown) + tail)
        return root

    def _load_dirtab(self) -> list[DirtabRule]:
        try:
            with open(os.path.join(self.source_dir, DIRTAB_NAME), encoding="utf-8") as fh:
                return parse_dirtab(fh.read())
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise PublishError(f"cannot read /{DIRTAB_NAME}: {exc}") from exc

    def _fill(self, directory: Node) -> None:
        stack = [directory]
        while stack:
            node = stack.pop()
            node.children = self._scan(node)
            if any(c.name == KEPT_MARKER for c in node.children):
                self._keep(node)
                continue
            stack.extend(c for c in node.children if c.is_dir)
            if node.path:
                marker = next((c for c in node.children if c.name == CATALOG_MARKER), None)
                selected = dirtab_selects(self._rules, node.path)
                if marker is None and selected:
                    node.children.append(self._made_marker(node))
                node.nested_root = selected or (marker is not None and marker.is_regular)
            node.children.sort(key=lambda n: n.name.encode("utf-8", "surrogateescape"))

    def _made_marker(self, directory: Node) -> Node:
        """The empty `.cvmfscatalog` the reference's `cvmfs_server` creates in a directory
        `.cvmfsdirtab` selects (`CommandApplyDirtab::CreateCatalogMarkers`): every nested
        catalog lists its marker, and `cvmfs_swissknife check` reports one without it. Mode
        0644, the directory's owner and mtime (a republish makes the same bytes); device -1
        keeps its inode key apart from every real file's."""
        self._made += 1
        when, when_ns = directory.st.st_mtime, directory.st.st_mtime_ns
        st = os.stat_result((stat.S_IFREG | 0o644, self._made, -1, 1, directory.st.st_uid,
                             directory.st.st_gid, 0, int(when), int(when), int(when),
                             when, when, when, when_ns, when_ns, when_ns))
        return Node(f"{directory.path}/{CATALOG_MARKER}", CATALOG_MARKER, "", st,
                    content=b"")

    def _keep(self, node: Node) -> None:
        """A kept stub: its rows come from the previous revision, nothing below is read."""
        others = sorted(c.name for c in node.children if c.name != KEPT_MARKER)
        marker = next(c for c in node.children if c.name == KEPT_MARKER)
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            self.problems.append(f"{node.path or '/'}: kept directory has other entries "
                                 f"besides {KEPT_MARKER} ({shown})")
        elif not marker.is_regular:
            self.problems.append(f"{marker.path}: {KEPT_MARKER} must be a regular file")
        node.children = []
        node.kept = node.nested_root = True

    def _scan(self, directory: Node) -> list[Node]:
        try:
            entries = list(os.scandir(directory.source))
        except OSError as exc:
            self.problems.append(f"{directory.path or '/'}: cannot list directory: "
                                 f"{exc.strerror}")
            return []
        nodes = []
        names = {entry.name for entry in entries}
        for entry in entries:
            path = f"{directory.path}/{entry.name}"
            if entry.name.startswith(KEPT_ASIDE_PREFIX):
                self._check_aside(path, entry, names)
                continue
            if not self._name_ok(path, entry.name, directory.path == ""):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished between listing and stat: not part of this snapshot
            except OSError as exc:
                self.problems.append(f"{path}: cannot stat: {exc.strerror}")
                continue
            node = Node(path, entry.name, entry.path, st)
            if stat.S_ISLNK(st.st_mode):
                node.symlink = self._readlink(node)
            else:
                node.xattrs = self._xattrs(entry.path, path)
            if stat.S_ISREG(st.st_mode) and not os.access(entry.path, os.R_OK):
                self.problems.append(f"{path}: file is not readable (permission denied)")
            nodes.append(node)
        return nodes

    def _check_aside(self, path: str, entry: os.DirEntry[str], siblings: set[str]) -> None:
        """A leftover of an interrupted keep_published is skipped; it is only a problem
        when it holds the directory it was swapping and that one is missing."""
        target = entry.name.removeprefix(KEPT_ASIDE_PREFIX)
        if target not in siblings and os.path.isdir(os.path.join(entry.path, "old")):
            self.problems.append(
                f"{path}: an interrupted keep_published left this, and "
                f"{path.rsplit('/', 1)[0]}/{target} is missing; run keep_published for it "
                "again (it puts the directory back) before publishing")

    def _name_ok(self, path: str, name: str, in_root: bool) -> bool:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            self.problems.append(f"{shown}: file name is not valid UTF-8")
            return False
        if in_root and name in RESERVED_ROOT_NAMES:
            self.problems.append(f"{path}: name is reserved for CernVM-FS in the root")
            return False
        return True

    def _readlink(self, node: Node) -> str:
        try:
            target = os.readlink(node.source)
        except OSError as exc:
            self.problems.append(f"{node.path}: cannot read symlink: {exc.strerror}")
            return ""
        try:
            target.encode("utf-8")
        except UnicodeEncodeError:
            self.problems.append(f"{node.path}: symlink target is not valid UTF-8")
        return target

    def _xattrs(self, source: str, path: str) -> dict[str, bytes]:
        try:
            names = [n for n in os.listxattr(source, follow_symlinks=False)
                     if n.startswith(STORED_XATTR_PREFIX) or n in STORED_TRUSTED_XATTRS]
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.ENOENT):
                return {}
            self.problems.append(f"{path or '/'}: cannot list xattrs: {exc.strerror}")
            return {}
        result: dict[str, bytes] = {}
        for name in sorted(names):
            try:
                value = os.getxattr(source, name, follow_symlinks=False)
            except OSError as exc:
                self.problems.append(f"{path or '/'}: cannot read xattr {name}: {exc.strerror}")
                continue
            if len(name.encode()) > MAX_KEY_BYTES or len(value) > MAX_VALUE_BYTES:
                self.problems.append(
                    f"{path or '/'}: xattr {name} is too long to store (name and value "
                    f"are limited to {MAX_KEY_BYTES} bytes)")
                continue
            result[name] = value
        if len(result) > MAX_ATTRIBUTES:
            self.problems.append(f"{path or '/'}: more than {MAX_ATTRIBUTES} xattrs")
        return result
