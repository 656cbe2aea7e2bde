"""`pycvmfs ls | cat | stat`: read a repository without mounting it.

Thin front end over `repository.Repository`: parse options, open a source (URL or storage
directory), verify the trust chain, print. `ls -lR` prints the tab-separated format of the
shared fixtures' `expected-trunk.tsv` (path, type, permissions, size, nlink, mtime, sha1 of
the content or link target, stored xattrs), reading and verifying every file; xattr values
print as getfattr shows them, or (`-e hex`) as the fixtures' bare hex.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat as stat_module
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import click

from pycvmfs.errors import ConfigError, NameMismatchError
from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.manifest import parse_manifest
from pycvmfs.repository import open as repository_open
from pycvmfs.repository.open import RevisionSelector
from pycvmfs.repository.repository import Repository, apparent_size, normalize_path
from pycvmfs.repository.source import ObjectSource, open_source
from pycvmfs.repository.trust import MANIFEST_MAX_BYTES, MANIFEST_PATH, load_public_keys

_F = TypeVar("_F", bound=Callable[..., object])
_TYPE_CHARS = (
    (stat_module.S_ISDIR, "d"), (stat_module.S_ISREG, "f"), (stat_module.S_ISLNK, "l"),
    (stat_module.S_ISCHR, "c"), (stat_module.S_ISBLK, "b"), (stat_module.S_ISFIFO, "p"),
    (stat_module.S_ISSOCK, "s"),
)
_TYPE_NAMES = {"d": "directory", "f": "regular file", "l": "symbolic link",
               "c": "character device", "b": "block device", "p": "fifo", "s": "socket"}


def default_fqrn(location: str) -> str | None:
    """Last path component of a URL or directory when it looks like a repository name
    (`http://h/cvmfs/a.b` -> `a.b`); None for names without a dot such as `repo`."""
    text = location.rstrip("/")
    if not text.startswith(("http://", "https://")):
        text = os.path.abspath(text)  # the name the user gave, symlinks not resolved
    name = text.rsplit("/", 1)[-1]
    return name if "." in name else None


def _manifest_name(source: ObjectSource, location: str) -> str:
    """The name the manifest claims; the whitelist signed by --keys must agree with it."""
    name = parse_manifest(source.fetch(MANIFEST_PATH, max_bytes=MANIFEST_MAX_BYTES),
                          what=f"manifest at {location}")[0].fqrn
    if not name:
        raise NameMismatchError(f"manifest at {location} names no repository: pass --fqrn")
    return name


def _parse_now(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _check_proxy(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse a --proxy that does not parse, before anything is fetched."""
    from pycvmfs.network.proxies import parse_proxies

    try:
        parse_proxies(value)
    except (ValueError, ConfigError) as exc:  # urlsplit raises ValueError on `http://[::1`
        raise click.BadParameter(f"{value!r}: {exc}") from None
    return value


def repository_options(func: _F) -> _F:
    """REPO argument plus --keys, --fqrn, --tag and the hidden --now."""
    decorators = [
        click.argument("repo", metavar="REPO_URL_OR_STORAGE_DIR"),
        click.option("--keys", "keys", multiple=True, required=True,
                     type=click.Path(exists=True, path_type=Path),
                     help="Master public key (.pub) or a directory of *.pub; repeatable."),
        click.option("--fqrn", default=None,
                     help="Repository name [default: last component of REPO if it has a dot, "
                     "else the name in the manifest]."),
        click.option("--tag", default=None, help="Read a tagged revision instead of trunk."),
        click.option("--proxy", default="DIRECT", show_default=True, callback=_check_proxy,
                     help="HTTP proxies for a URL, in CVMFS_HTTP_PROXY syntax "
                     "('http://p1|http://p2;DIRECT'). REPO may list several ';'-separated "
                     "Stratum-1 URLs for failover."),
        click.option("--now", default=None, hidden=True, callback=_parse_now,
                     help="Verify the whitelist as of this ISO 8601 time (debugging)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@contextmanager
def open_repository(repo: str, keys: Iterable[Path], fqrn: str | None, tag: str | None,
                    now: dt.datetime | None, proxy: str = "DIRECT") -> Iterator[Repository]:
    """Source -> keys -> `repository.open.open_repository`; both are closed on exit."""
    public_keys = load_public_keys(keys)
    source = open_source(repo, proxy=proxy)
    try:
        name = fqrn or default_fqrn(repo) or _manifest_name(source, repo)
        try:
            repository = repository_open.open_repository(
                source, name, public_keys, RevisionSelector.of(tag=tag), now=now)
        except NameMismatchError as exc:
            if fqrn is not None:
                raise
            raise NameMismatchError(f"{exc}; {name!r} was taken from the last component of "
                                    f"{repo}: pass --fqrn with the repository name") from exc
        with repository:
            yield repository
    finally:
        source.close()


def _echo(text: str) -> None:
    """Print names exactly, also those that are not valid UTF-8 (surrogate-escaped)."""
    click.echo(text.encode("utf-8", "surrogateescape"))


def type_char(mode: int) -> str:
    for test, char in _TYPE_CHARS:
        if test(mode):
            return char
    return "?"


def content_sha1(repository: Repository, path: str) -> str:
    """SHA-1 of the file's bytes as read (every object verified on the way)."""
    digest = hashlib.sha1()
    for block in repository.iter_read(path):
        digest.update(block)
    return digest.hexdigest()


XATTR_ENCODINGS = ("text", "hex")


def xattr_value(value: bytes, encoding: str = "text") -> str:
    """An xattr value for people, as `getfattr` prints it: printable UTF-8 as a quoted
    string (`"`, `\\` and control characters escaped as `\\ooo`), anything else as
    `0x` and hex. `hex`: bare hex digits, the reference listing's (`expected-trunk.tsv`)
    format."""
    if encoding == "hex":
        return value.hex()
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    if any(not (char.isprintable() or char in "\t\n\r") for char in text):
        return "0x" + value.hex()
    escaped = "".join(f"\\{ord(char):03o}" if char in '"\\\t\n\r' else char for char in text)
    return f'"{escaped}"'


def xattrs_field(entry: DirEntry, encoding: str = "text") -> str:
    return ",".join(f"{name}={xattr_value(value, encoding)}" for name, value in entry.xattrs)


def long_line(repository: Repository, path: str, entry: DirEntry,
              xattr_encoding: str = "text") -> str:
    """One `expected-trunk.tsv` line (eight tab-separated fields, the last may be empty);
    the reference's exact format with `xattr_encoding="hex"`."""
    directory = entry.is_dir
    if entry.is_regular:
        content = content_sha1(repository, path)
    elif entry.is_symlink:
        content = entry.symlink
    else:
        content = ""
    return "\t".join((
        path, type_char(entry.mode), oct(entry.mode & 0o7777),
        "-" if directory else str(apparent_size(entry)), "-" if directory else str(entry.linkcount),
        str(entry.mtime), content, xattrs_field(entry, xattr_encoding),
    ))


@click.command("ls")
@repository_options
@click.argument("path", default="/")
@click.option("-R", "--recursive", is_flag=True, help="List subdirectories recursively.")
@click.option("-l", "--long", "long_format", is_flag=True,
              help="Tab-separated details; reads every listed file to print its SHA-1.")
@click.option("-e", "--xattr-encoding", type=click.Choice(XATTR_ENCODINGS), default="text",
              show_default=True, help="xattr values as getfattr shows them (text: quoted "
              "when printable UTF-8, else 0x-hex), or as bare hex (the reference listing).")
def ls(repo: str, keys: tuple[Path, ...], fqrn: str | None, tag: str | None, proxy: str,
       now: dt.datetime | None, path: str, recursive: bool, long_format: bool,
       xattr_encoding: str) -> None:
    """List PATH (default: the root) of a repository."""
    with open_repository(repo, keys, fqrn, tag, now, proxy) as repository:
        canonical = normalize_path(path)
        entry = repository.lookup(canonical)
        items: Iterable[tuple[str, DirEntry]]
        if not entry.is_dir:
            items = [(canonical, entry)]
        elif recursive:
            items = repository.walk(canonical)
        else:
            items = [(f"{canonical}/{name}", child)
                     for name, child in repository.listdir(canonical)]
        for item_path, item in items:
            if long_format:
                _echo(long_line(repository, item_path, item, xattr_encoding))
            elif recursive or not entry.is_dir:
                _echo(item_path)
            else:
                _echo(item.name)


@click.command("cat")
@repository_options
@click.argument("path")
def cat(repo: str, keys: tuple[Path, ...], fqrn: str | None, tag: str | None, proxy: str,
        now: dt.datetime | None, path: str) -> None:
    """Write the content of file PATH to standard output (every object verified)."""
    with open_repository(repo, keys, fqrn, tag, now, proxy) as repository:
        out = sys.stdout.buffer
        for block in repository.iter_read(path):
            out.write(block)
        out.flush()


def stat_lines(repository: Repository, path: str) -> list[str]:
    """Human-readable fields of one entry (used by `stat`)."""
    canonical = normalize_path(path)
    entry, catalog = repository.resolve(canonical)
    mtime = dt.datetime.fromtimestamp(entry.mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"path: {canonical or '/'}",
        f"type: {_TYPE_NAMES.get(type_char(entry.mode), 'unknown')}",
        f"mode: {oct(entry.mode & 0o7777)} ({stat_module.filemode(entry.mode)})",
        f"size: {apparent_size(entry)}",
        f"nlink: {entry.linkcount}",
        f"uid: {entry.uid}",
        f"gid: {entry.gid}",
        f"mtime: {entry.mtime}.{entry.mtimens:09d} ({mtime})",
        f"hash: {entry.content_hash or '-'}",
        f"flags: {entry.flags:#x}",
        f"catalog: {catalog.content_hash} (at {catalog.root_prefix or '/'})",
    ]
    if entry.is_regular and entry.is_chunked:
        _, pieces = repository.pieces(canonical)
        lines.append(f"chunks: {len(pieces)}")
        lines += [f"  {p.offset}+{p.size} {p.hash}" for p in pieces]
    else:
        lines.append("chunks: 0")
    lines.append(f"symlink: {entry.symlink}")
    lines.append(f"xattrs: {xattrs_field(entry)}")
    return lines


@click.command("stat")
@repository_options
@click.argument("path", default="/")
def stat(repo: str, keys: tuple[Path, ...], fqrn: str | None, tag: str | None, proxy: str,
         now: dt.datetime | None, path: str) -> None:
    """Print the catalog fields of PATH."""
    with open_repository(repo, keys, fqrn, tag, now, proxy) as repository:
        for line in stat_lines(repository, path):
            _echo(line)


COMMANDS = [ls, cat, stat]
