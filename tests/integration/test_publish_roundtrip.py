"""Publish a tree with every kind of entry and read it back through the verifying
reader: identical bytes and metadata, for every hash algorithm and compression."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm
from pycvmfs.publisher.tree_walk import CATALOG_MARKER, DIRTAB_NAME, dirtab_selects, parse_dirtab
from tests.publish_helpers import (
    Keys,
    make_full_tree,
    open_repository,
    run_publish,
)
from tests.servers import Nginx, nginx_binary


def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
            stat.S_IFSOCK: "s", stat.S_IFCHR: "c", stat.S_IFBLK: "b"}[stat.S_IFMT(mode)]


def source_view(root: Path) -> dict[str, tuple[object, ...]]:
    """What the repository must list: the source, plus the empty `.cvmfscatalog` the
    reference creates in each directory `.cvmfsdirtab` selects (0644, the directory's
    owner and mtime)."""
    view: dict[str, tuple[object, ...]] = {}
    dirtab = root / DIRTAB_NAME
    rules = parse_dirtab(dirtab.read_text()) if dirtab.exists() else []
    for dirpath, dirnames, filenames in os.walk(root):
        directory = "/" + os.path.relpath(dirpath, root)
        if (dirpath != str(root) and CATALOG_MARKER not in filenames
                and dirtab_selects(rules, directory)):
            st = os.lstat(dirpath)
            view[f"{directory}/{CATALOG_MARKER}"] = (
                "f", 0o644, 0, st.st_mtime_ns, st.st_uid, st.st_gid,
                hashlib.sha1(b"").hexdigest(), {}, 0)
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            path = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            content: object = None
            if kind == "f":
                content = hashlib.sha1(Path(full).read_bytes()).hexdigest()
            elif kind == "l":
                content = os.readlink(full)
            xattrs = {} if kind == "l" else {
                n: os.getxattr(full, n) for n in os.listxattr(full) if n.startswith("user.")}
            size = st.st_size if kind in "fl" else None
            rdev = st.st_rdev if kind in "cb" else 0
            view[path] = (kind, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns, st.st_uid,
                          st.st_gid, content, xattrs, rdev)
    return view


def repository_view(storage: Path, keys: Keys, tag: str | None = None) -> dict[str, tuple]:
    view: dict[str, tuple[object, ...]] = {}
    with open_repository(storage, keys, tag=tag) as repo:
        for path, entry in repo.walk():
            kind = _kind(entry.mode)
            content: object = None
            if kind == "f":
                content = hashlib.sha1(repo.read(path)).hexdigest()
            elif kind == "l":
                content = entry.symlink
            size = entry.size if kind in "fl" else None
            view[path] = (kind, stat.S_IMODE(entry.mode), size,
                          entry.mtime * 10**9 + entry.mtimens, entry.uid, entry.gid, content,
                          dict(entry.xattrs), entry.rdev)
    return view


@pytest.mark.parametrize(("algorithm", "compression"), [
    (Algorithm.SHA1, Compression.ZLIB),
    (Algorithm.SHAKE128, Compression.ZLIB),
    (Algorithm.RIPEMD160, Compression.NONE),
])
def test_round_trip_every_kind_of_entry(tmp_path: Path, keys: Keys, algorithm: Algorithm,
                                        compression: Compression) -> None:
    source = make_full_tree(tmp_path / "src")
    storage = tmp_path / "repo"
    result = run_publish(source, storage, keys, algorithm=algorithm, compression=compression)
    assert result.manifest.revision == 1
    assert result.manifest.root_hash.algorithm is algorithm
    assert repository_view(storage, keys) == source_view(source)


def test_hardlinks_grouped_per_directory(tmp_path: Path, keys: Keys) -> None:
    source = make_full_tree(tmp_path / "src")
    run_publish(source, tmp_path / "repo", keys)
    with open_repository(tmp_path / "repo", keys) as repo:
        a, b = repo.lookup("/plain.txt"), repo.lookup("/hardlink-to-plain")
        assert (a.linkcount, b.linkcount) == (2, 2)
        assert a.hardlink_group == b.hardlink_group > 0
        cross = repo.lookup("/sub/cross-dir-hardlink")
        assert (cross.linkcount, cross.hardlink_group) == (1, 0)
        assert cross.content_hash == a.content_hash
        assert repo.lookup("/sub").linkcount == 2
        assert repo.lookup("").linkcount == 2 + sum(
            1 for _, e in repo.listdir("") if e.is_dir)


def test_identical_contents_stored_once(tmp_path: Path, keys: Keys) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"copy{i}").write_text("same bytes everywhere\n")
    result = run_publish(source, tmp_path / "repo", keys)
    data_objects = [p for p in (tmp_path / "repo" / "data").rglob("*")
                    if p.is_file() and p.parent.name != "txn" and p.name[-1] not in "CXHP"]
    assert len(data_objects) == 1
    assert result.files == 20


def test_chunked_file_reads_across_chunk_boundaries(tmp_path: Path, keys: Keys) -> None:
    source = make_full_tree(tmp_path / "src")
    run_publish(source, tmp_path / "repo", keys)
    expected = (source / "big.bin").read_bytes()
    with open_repository(tmp_path / "repo", keys) as repo:
        entry = repo.lookup("/big.bin")
        assert entry.is_chunked and entry.content_hash is None
        _, pieces = repo.pieces("/big.bin")
        assert len(pieces) > 1
        assert sum(p.size for p in pieces) == len(expected)
        for offset, size in ((0, 10), (16_000, 70_000), (len(expected) - 5, 100)):
            assert repo.read_range("/big.bin", offset, size) == expected[offset:offset + size]


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
def test_published_repository_served_by_nginx(tmp_path: Path, keys: Keys,
                                              capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Publish, serve the storage as a Stratum-1, read back over HTTP with the CLI."""
    source = make_full_tree(tmp_path / "src")
    storage = tmp_path / "repo"
    run_publish(source, storage, keys, tag="first")
    storage.chmod(0o755)
    for parent in storage.parents:  # nginx workers run as nobody
        if parent == Path(tmp_path.anchor):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    with Nginx() as server:
        url = server.publish(f"cvmfs/{keys.fqrn}", storage)
        common = ["--keys", str(keys.public_key_file)]
        assert main(["ls", "-lR", url, *common]) == 0
        listing = capsysbinary.readouterr().out.decode().splitlines()
        assert main(["cat", url, "/big.bin", *common, "--tag", "first"]) == 0
        assert capsysbinary.readouterr().out == (source / "big.bin").read_bytes()
    view = source_view(source)
    assert len(listing) == len(view) + sum(path.count("\n") for path in view)
    assert any(line.startswith("/plain.txt\tf\t0o644\t11\t2\t") and 'user.foo="bar"' in line
               for line in listing)
