"""The no-FUSE reader against repositories made by the reference tools (shared fixtures).

Proves compatibility end to end: trust chain, nested catalogs, chunked files, tags and the
listing format of `expected-trunk.tsv`; and that tampering with any verified byte is caught.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.errors import (
    CatalogError,
    ConfigError,
    HashMismatchError,
    LetterHashError,
    NameMismatchError,
    NotFoundError,
    PycvmfsError,
    SignatureError,
    WhitelistExpiredError,
)
from pycvmfs.format.catalog import Flags
from pycvmfs.format.certificates import generate_private_key, public_key_pem
from pycvmfs.format.compression import open_object
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.catalog_tree import CatalogTree
from pycvmfs.repository.open import RevisionSelector, open_repository
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import LocalSource
from pycvmfs.repository.trust import establish_trust, load_public_keys
from tests.fixtures_path import (
    LEGACY,
    LEGACY_FQRN,
    ORACLE,
    ORACLE_KEYS,
    ORACLE_REPO,
    requires_fixtures,
    unpack_legacy,
)
from tests.tree_listing import expected_lines, expected_sha1s

pytestmark = requires_fixtures

FQRN = "oracle.local"
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)  # fixture whitelist expires 2026-12-29 04:00 UTC
NOW_ARG = "2026-12-01T00:00Z"
LEGACY_NOW = dt.datetime(2015, 11, 1, tzinfo=dt.UTC)  # legacy whitelist expired 2015-11-20
HELLO_HASH = "2c24752953b9611dec212edd09299c34d3758c7f"  # /docs/hello.txt, "hello world..."
NESTED_CATALOG = "1e578edef70663d51bc75f06dd1dd14990ddb804"  # /data/nested
TAG_REV1 = "generic-2026-11-29T04:43:29.000Z"
TAG_REV2 = "generic-2026-11-29T04:43:34.000Z"
BIG = "/data/big20m.bin"


def oracle_keys() -> list:
    return load_public_keys([ORACLE_KEYS / "oracle.local.pub"])


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    workdir = tmp_path_factory.mktemp("oracle-work")
    with open_repository(LocalSource(ORACLE_REPO), FQRN, oracle_keys(), now=NOW,
                         workdir=workdir) as repository:
        yield repository


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- (a) oracle.local from its storage directory ---------------------------------------------


def test_trust_chain_verifies() -> None:
    trusted = establish_trust(LocalSource(ORACLE_REPO), FQRN, oracle_keys(), now=NOW)
    assert trusted.revision == 6
    assert trusted.manifest.fqrn == FQRN
    assert str(trusted.root_hash) == "7493141a12fcf9f6651775b69c34f4b23c4485c0"
    assert trusted.whitelist.fqrn == FQRN


def test_every_catalog_opens(oracle: Repository) -> None:
    list(oracle.walk())
    attached = oracle.tree.attached()
    assert sorted(attached) == ["", "/data/nested", "/tarball"]
    for mountpoint, catalog in attached.items():
        assert catalog.schema == (2, 5, 7)
        assert catalog.root_prefix == mountpoint
    assert oracle.revision == 6 == oracle.manifest.revision
    assert oracle.statistics()["chunked"] == 1


def test_ls_long_recursive_matches_reference(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["ls", "-lR", "-e", "hex", str(ORACLE_REPO), "--keys",
                              str(ORACLE_KEYS), "--fqrn", FQRN, "--now", NOW_ARG], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == expected_lines(ORACLE)


def test_walk_order_and_paths(oracle: Repository) -> None:
    paths = [path for path, _ in oracle.walk()]
    assert paths == [line.split("\t")[0] for line in expected_lines(ORACLE)]


def test_plain_ls_prints_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["ls", str(ORACLE_REPO), "/sw", "--keys", str(ORACLE_KEYS),
                            "--fqrn", FQRN, "--now", NOW_ARG], capsys)
    assert code == 0
    assert out.splitlines() == ["current", "hello-link", "v1", "v2"]


def test_default_fqrn_from_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    """`.../repo` is no repository name: the manifest's (checked by the whitelist) is used."""
    code, out, err = run_cli(["ls", str(ORACLE_REPO), "/sw", "--keys", str(ORACLE_KEYS),
                              "--now", NOW_ARG], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["current", "hello-link", "v1", "v2"]


def test_default_fqrn_mismatch_is_explained(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    (tmp_path / "other.example.org").symlink_to(ORACLE_REPO)
    code, _, err = run_cli(["ls", str(tmp_path / "other.example.org"), "--keys",
                            str(ORACLE_KEYS), "--now", NOW_ARG], capsys)
    assert code == 1
    assert "'oracle.local'" in err and "--fqrn" in err


def test_cat_and_stat(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    common = ["--keys", str(ORACLE_KEYS), "--fqrn", FQRN, "--now", NOW_ARG]
    assert main(["cat", str(ORACLE_REPO), "/docs/hello.txt", *common]) == 0
    content = capsysbinary.readouterr().out
    assert hashlib.sha1(content).hexdigest() == "19e040e76491c59f39c372dee41686d92d7a99fb"
    assert main(["stat", str(ORACLE_REPO), BIG, *common]) == 0
    text = capsysbinary.readouterr().out.decode()
    assert "size: 20000000" in text and "chunks: 2" in text
    assert main(["stat", str(ORACLE_REPO), "/docs/hello.txt", *common]) == 0
    assert 'xattrs: user.foo="bar"' in capsysbinary.readouterr().out.decode()


def test_tags(oracle: Repository) -> None:
    tags = {tag.name: tag for tag in oracle.tags()}
    assert tags["trunk"].revision == 6
    assert tags["trunk-previous"].revision == 5
    assert tags[TAG_REV1].revision == 1 and tags[TAG_REV2].revision == 2
    assert len(tags) == 8


@pytest.mark.parametrize(("tag", "revision", "sums"), [
    (TAG_REV1, 1, "expected-rev1.sha1"),
    (TAG_REV2, 2, "expected-rev2.sha1"),
])
def test_tagged_revision_content(tag: str, revision: int, sums: str, tmp_path: Path) -> None:
    with open_repository(LocalSource(ORACLE_REPO), FQRN, oracle_keys(),
                         RevisionSelector.of(tag=tag), now=NOW, workdir=tmp_path) as repository:
        assert repository.revision == revision
        assert repository.tag is not None and repository.tag.name == tag
        got = {path: hashlib.sha1(repository.read(path)).hexdigest()
               for path, entry in repository.walk() if entry.is_regular}
    assert got == expected_sha1s(sums)


def test_unknown_tag_lists_available(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="available: .*trunk"):
        open_repository(LocalSource(ORACLE_REPO), FQRN, oracle_keys(),
                        RevisionSelector.of(tag="nope"), now=NOW, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the work directory was removed


def test_chunked_file_reads_across_chunks(oracle: Repository) -> None:
    entry, pieces = oracle.pieces(BIG)
    assert entry.is_chunked and len(pieces) == 2
    assert all(piece.suffix is Suffix.PARTIAL for piece in pieces)
    whole = oracle.read(BIG)
    assert len(whole) == 20_000_000
    assert hashlib.sha1(whole).hexdigest() == "fb25cc60c8a32d5149c68127a2c1fcb34b6718f6"
    boundary = pieces[1].offset
    assert oracle.read_range(BIG, boundary - 1000, 3000) == whole[boundary - 1000:boundary + 2000]
    assert oracle.read_range(BIG, 19_999_990, 100) == whole[-10:]
    assert oracle.read_range(BIG, 20_000_000, 10) == b""
    assert b"".join(oracle.iter_read(BIG, 1 << 22)) == whole


def test_metadata_api(oracle: Repository) -> None:
    assert oracle.readlink("/sw/current") == "v2"
    mountpoint = oracle.lookup("/data/nested")
    assert mountpoint.flags & Flags.NESTED_MOUNTPOINT  # the parent's entry, fact sheet 6.13
    assert [name for name, _ in oracle.listdir("/data/nested")] == [
        ".cvmfscatalog", "new.txt", "random100k.bin"]
    assert oracle.lookup("/") == oracle.lookup("")
    assert dict(oracle.lookup("/docs/hello.txt").xattrs) == {"user.foo": b"bar"}
    with pytest.raises(NotFoundError):
        oracle.lookup("/docs/nope")
    with pytest.raises(NotFoundError):
        oracle.lookup("/tarball/pkg/missing")
    with pytest.raises(PycvmfsError, match="not a regular file"):
        oracle.read("/docs")


def test_catalog_rejects_unknown_schema(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "bad.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE properties (key TEXT, value TEXT);"
                       "CREATE TABLE catalog (md5path_1 INTEGER);"
                       "INSERT INTO properties VALUES ('schema', '3.0');")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogError, match="schema 3.0"):
        Catalog(path)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CatalogError):
        Catalog(path)


# --- (b) legacy_aufs.cern.ch -----------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return unpack_legacy(tmp_path_factory.mktemp("legacy"))


def test_legacy_listing(legacy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = legacy
    code, out, err = run_cli(["ls", "-lR", "-e", "hex", str(repo), "--keys", str(keys),
                              "--now", "2015-11-01T00:00:00+00:00"], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == expected_lines(LEGACY)


def test_legacy_expired_whitelist(legacy: tuple[Path, Path]) -> None:
    repo, keys = legacy
    source = LocalSource(repo)
    establish_trust(source, LEGACY_FQRN, load_public_keys([keys]), now=LEGACY_NOW)
    with pytest.raises(WhitelistExpiredError, match="2015-11-20"):
        establish_trust(source, LEGACY_FQRN, load_public_keys([keys]),
                        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


# --- (c) tampering with a copy ----------------------------------------------------------------


@pytest.fixture
def oracle_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(ORACLE_REPO, copy, symlinks=True)
    for root, dirs, files in os.walk(copy):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    return copy


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def open_copy(copy: Path, tmp_path: Path, keys: list | None = None) -> Repository:
    return open_repository(LocalSource(copy), FQRN, keys or oracle_keys(), now=NOW,
                           workdir=tmp_path / "work")


def test_corrupt_nested_catalog(oracle_copy: Path, tmp_path: Path) -> None:
    flip_byte(oracle_copy / ContentHash.parse(NESTED_CATALOG).object_path(Suffix.CATALOG))
    with open_copy(oracle_copy, tmp_path) as repository:
        assert repository.lookup("/docs/hello.txt").size == 15  # root catalog is fine
        with pytest.raises(HashMismatchError, match="catalog of /data/nested"):
            repository.lookup("/data/nested/new.txt")


def test_corrupt_root_catalog(oracle_copy: Path, tmp_path: Path) -> None:
    root = establish_trust(LocalSource(oracle_copy), FQRN, oracle_keys(), now=NOW).root_hash
    flip_byte(oracle_copy / root.object_path(Suffix.CATALOG))
    with pytest.raises(HashMismatchError, match=str(oracle_copy)):
        open_copy(oracle_copy, tmp_path)


def test_corrupt_data_object(oracle_copy: Path, tmp_path: Path) -> None:
    flip_byte(oracle_copy / ContentHash.parse(HELLO_HASH).object_path())
    with open_copy(oracle_copy, tmp_path) as repository:
        with pytest.raises(HashMismatchError, match="/docs/hello.txt"):
            repository.read("/docs/hello.txt")
        assert repository.read("/docs/dup1") == b"same\n"  # other objects still read


def test_corrupt_chunk(oracle_copy: Path, tmp_path: Path) -> None:
    with open_copy(oracle_copy, tmp_path) as repository:
        _, pieces = repository.pieces(BIG)
        flip_byte(oracle_copy / pieces[1].hash.object_path(Suffix.PARTIAL))
        assert len(repository.read_range(BIG, 0, 100)) == 100  # first chunk intact
        with pytest.raises(HashMismatchError):
            repository.read_range(BIG, pieces[1].offset, 10)


def test_missing_object(oracle_copy: Path, tmp_path: Path) -> None:
    (oracle_copy / ContentHash.parse(HELLO_HASH).object_path()).unlink()
    with open_copy(oracle_copy, tmp_path) as repository, \
            pytest.raises(NotFoundError, match="no such file"):
        repository.read("/docs/hello.txt")


def test_corrupt_manifest_body(oracle_copy: Path, tmp_path: Path) -> None:
    manifest = oracle_copy / ".cvmfspublished"
    manifest.write_bytes(manifest.read_bytes().replace(b"\nD240\n", b"\nD241\n", 1))
    with pytest.raises(LetterHashError, match="oracle.local"):
        open_copy(oracle_copy, tmp_path)


def test_corrupt_manifest_signature(oracle_copy: Path, tmp_path: Path) -> None:
    manifest = oracle_copy / ".cvmfspublished"
    flip_byte(manifest, offset=manifest.stat().st_size - 5)
    with pytest.raises(SignatureError, match="manifest of oracle.local"):
        open_copy(oracle_copy, tmp_path)


def test_wrong_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(public_key_pem(generate_private_key().public_key()))
    with pytest.raises(SignatureError, match="whitelist of oracle.local"):
        open_repository(LocalSource(ORACLE_REPO), FQRN, load_public_keys([other]), now=NOW)
    code, _, err = run_cli(["ls", str(ORACLE_REPO), "--keys", str(other), "--fqrn", FQRN,
                            "--now", NOW_ARG], capsys)
    assert code == 1 and "signature" in err


def test_wrong_name(oracle_copy: Path) -> None:
    with pytest.raises(NameMismatchError, match=str(oracle_copy)):
        establish_trust(LocalSource(oracle_copy), "other.local", oracle_keys(), now=NOW)


# --- catalog tree with its own loader (style R13) --------------------------------------------


class FixtureLoader:
    """Loads catalogs straight from the fixture storage, optionally swapping one."""

    def __init__(self, workdir: Path, swap: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.swap = swap or {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, content_hash: ContentHash, mountpoint: str) -> Catalog:
        with self.lock:
            self.calls.append(mountpoint)
        actual = ContentHash.parse(self.swap.get(str(content_hash), str(content_hash)))
        stored = (ORACLE_REPO / actual.object_path(Suffix.CATALOG)).read_bytes()
        path = self.workdir / f"{actual}-{threading.get_ident()}-{len(self.calls)}"
        path.write_bytes(open_object(stored, actual))
        return Catalog(path, content_hash=actual)


def oracle_root() -> ContentHash:
    return establish_trust(LocalSource(ORACLE_REPO), FQRN, oracle_keys(), now=NOW).root_hash


def test_tree_checks_root_prefix(tmp_path: Path) -> None:
    tarball = "4314eaa84d620fa763abaf0132d8b281f81083cc"
    tree = CatalogTree(oracle_root(), FixtureLoader(tmp_path, {tarball: NESTED_CATALOG}))
    try:
        assert tree.lookup("/data/nested/new.txt").catalog.root_prefix == "/data/nested"
        with pytest.raises(CatalogError, match="root_prefix '/data/nested'"):
            tree.lookup("/tarball/pkg")
    finally:
        tree.close()


def test_tree_attaches_each_nested_catalog_once(tmp_path: Path) -> None:
    loader = FixtureLoader(tmp_path)
    tree = CatalogTree(oracle_root(), loader)
    paths = ["/data/nested/new.txt", "/tarball/pkg/lib/libx.so", "/data/nested"] * 8
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(tree.resolve, paths))
        assert all(item is not None for item in found)
        assert sorted(loader.calls) == ["", "/data/nested", "/tarball"]
    finally:
        tree.close()


def test_open_by_root_hash(tmp_path: Path) -> None:
    rev1 = "452f349a45f6db70b5aa5a5cb217875395ecd44a"
    with open_repository(LocalSource(ORACLE_REPO), FQRN, oracle_keys(),
                         RevisionSelector.of(root_hash=rev1), now=NOW,
                         workdir=tmp_path) as repository:
        assert repository.revision == 1
        assert str(repository.root_hash) == rev1
    with pytest.raises(ConfigError):
        open_repository(LocalSource(ORACLE_REPO), FQRN, oracle_keys(),
                        RevisionSelector.of(root_hash=rev1, tag="trunk"), now=NOW)
