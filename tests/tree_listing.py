"""The `expected-trunk.tsv` listing, from the fixtures and from a mounted tree.

`expected-trunk.tsv` (shared fixtures) and `pycvmfs ls -lR` print one line per entry:
path, type (d/f/l/p/...), permissions, size, nlink, mtime, sha1 of the content or the link
target, stored xattrs (`name=hexvalue`, comma-separated); directories have `-` for size and
nlink. `mounted_tree_lines` produces the same lines from a FUSE mount with nothing but
`os.lstat`, `os.readlink`, reading files and `os.listxattr`/`os.getxattr`, in the same order
as `Repository.walk` (a directory's children sorted by name bytes, then each subdirectory,
depth first). The mount root itself has no line, so the magic xattrs (`user.fqrn`, ...),
which a mount lists on its root only (CVMFS_MAGIC_XATTRS_VISIBILITY=rootonly, the
default), never reach the "stored xattrs" column, as in the reference listing.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from pycvmfs.cli.read import type_char
from tests.fixtures_path import ORACLE

READ_BLOCK = 1 << 20


def expected_lines(fixture_dir: Path) -> list[str]:
    """The lines of a fixture's `expected-trunk.tsv`."""
    return (fixture_dir / "expected-trunk.tsv").read_text().splitlines()


def expected_sha1s(name: str, fixture_dir: Path = ORACLE) -> dict[str, str]:
    """`sha1sum` output (`sha1  ./path`) as {"/path": sha1}."""
    out = {}
    for line in (fixture_dir / name).read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        out[path.removeprefix(".")] = digest
    return out


def file_sha1(path: Path | str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def walk_mount(mnt: Path) -> Iterator[tuple[str, os.stat_result]]:
    """("/relative/path", lstat) of every entry below `mnt`, in `Repository.walk` order."""
    stack = [""]
    while stack:
        directory = stack.pop()
        subdirs = []
        names = sorted(os.listdir(f"{mnt}{directory}"), key=os.fsencode)
        for name in names:
            child = f"{directory}/{name}"
            info = os.lstat(f"{mnt}{child}")
            yield child, info
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def stored_xattrs(path: str) -> str:
    """`name=hex,...` of the xattrs listed on `path` (not following a symlink)."""
    names = os.listxattr(path, follow_symlinks=False)
    return ",".join(f"{name}={os.getxattr(path, name, follow_symlinks=False).hex()}"
                    for name in names)


def mounted_line(mnt: Path, path: str, info: os.stat_result) -> str:
    full = f"{mnt}{path}"
    directory = stat.S_ISDIR(info.st_mode)
    if stat.S_ISREG(info.st_mode):
        content = file_sha1(full)
    elif stat.S_ISLNK(info.st_mode):
        content = os.readlink(full)
    else:
        content = ""
    return "\t".join((
        path, type_char(info.st_mode), oct(info.st_mode & 0o7777),
        "-" if directory else str(info.st_size), "-" if directory else str(info.st_nlink),
        str(info.st_mtime_ns // 1_000_000_000), content, stored_xattrs(full),
    ))


def mounted_tree_lines(mnt: Path) -> list[str]:
    """The `expected-trunk.tsv` lines of everything below the mount point `mnt`."""
    return [mounted_line(mnt, path, info) for path, info in walk_mount(mnt)]


def mounted_file_sha1s(mnt: Path) -> dict[str, str]:
    """{"/path": sha1} of every regular file below `mnt` (the `expected-revN.sha1` form)."""
    return {path: file_sha1(f"{mnt}{path}") for path, info in walk_mount(mnt)
            if stat.S_ISREG(info.st_mode)}
