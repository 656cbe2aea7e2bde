"""What the reference client relies on in a published repository (fact sheet section 17),
checked on the stored bytes themselves, not through our own reader."""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pycvmfs.format.catalog import COUNTER_NAMES, Flags, md5path
from pycvmfs.format.certificates import certificate_fingerprint, load_certificate, load_public_key
from pycvmfs.format.hashes import ContentHash
from pycvmfs.format.manifest import parse_manifest, verify_manifest
from pycvmfs.format.whitelist import check_certificate_listed, verify_whitelist
from tests.publish_helpers import Keys, make_full_tree, run_publish


@pytest.fixture()
def published(tmp_path: Path, keys: Keys) -> Path:
    run_publish(make_full_tree(tmp_path / "src"), tmp_path / "repo", keys, ttl=77)
    return tmp_path / "repo"


def _object(storage: Path, text: str, suffix: str) -> bytes:
    stored = (storage / "data" / text[:2] / (text[2:] + suffix)).read_bytes()
    assert hashlib.sha1(stored).hexdigest() == text, "hash is over the stored bytes"
    return stored


def _catalog(storage: Path, text: str, tmp: Path) -> sqlite3.Connection:
    raw = zlib.decompress(_object(storage, text, "C"))
    assert raw[18:20] == b"\x01\x01", "rollback journal mode, never WAL"
    path = tmp / f"{text}.sqlite"
    path.write_bytes(raw)
    return sqlite3.connect(path)


def test_manifest_signed_and_whitelisted(published: Path, keys: Keys) -> None:
    raw = (published / ".cvmfspublished").read_bytes()
    manifest, _ = parse_manifest(raw)
    cert = load_certificate(zlib.decompress(_object(published, str(manifest.certificate), "X")))
    assert verify_manifest(raw, cert, fqrn=keys.fqrn) == manifest
    lines = raw.split(b"\n--\n")[0].split(b"\n")
    assert [line[:1] for line in lines] == [b"C", b"B", b"R", b"D", b"S", b"G", b"A", b"N",
                                            b"X", b"H", b"T"]
    assert b"Rd41d8cd98f00b204e9800998ecf8427e" in lines and b"D77" in lines
    public = load_public_key(keys.public_key_file.read_bytes())
    whitelist = verify_whitelist((published / ".cvmfswhitelist").read_bytes(), [public],
                                 fqrn=keys.fqrn, now=datetime.now(UTC))
    check_certificate_listed(whitelist, cert)
    assert certificate_fingerprint(cert) in whitelist.fingerprints


def test_root_catalog_layout(published: Path, tmp_path: Path) -> None:
    manifest, _ = parse_manifest((published / ".cvmfspublished").read_bytes())
    db = _catalog(published, str(manifest.root_hash), tmp_path)
    props = dict(db.execute("SELECT key, value FROM properties"))
    assert props["schema"] == "2.5" and props["schema_revision"] == "7"
    assert props["revision"] == "1" == str(manifest.revision)
    assert props["TTL"] == "77" and "root_prefix" not in props
    assert int(props["last_modified"]) == manifest.timestamp
    first = db.execute("SELECT rowid, md5path_1, md5path_2, parent_1, parent_2, name, flags "
                       "FROM catalog ORDER BY rowid LIMIT 1").fetchone()
    assert first == (1, *md5path(""), 0, 0, "", int(Flags.DIR))
    columns = [r[1] for r in db.execute("PRAGMA table_info(catalog)")]
    assert "mtimens" in columns and "xattr" in columns
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"bind_mountpoints", "chunks", "nested_catalogs", "statistics"} <= tables
    counters = dict(db.execute("SELECT counter, value FROM statistics"))
    assert set(counters) == set(COUNTER_NAMES) and len(counters) == 24
    assert db.execute("SELECT COUNT(*) FROM catalog WHERE name IS NULL OR symlink IS NULL "
                      "OR hardlinks < 1").fetchone() == (0,)
    raw = zlib.decompress(_object(published, str(manifest.root_hash), "C"))
    assert manifest.root_catalog_size == len(raw)


def test_nested_catalogs_linked_both_ways(published: Path, tmp_path: Path) -> None:
    manifest, _ = parse_manifest((published / ".cvmfspublished").read_bytes())
    root = _catalog(published, str(manifest.root_hash), tmp_path)
    nested = dict((p, (h, s)) for p, h, s in root.execute("SELECT * FROM nested_catalogs"))
    assert set(nested) == {"/nested", "/releases/r1", "/releases/r2"}  # `! *.tmp` excluded
    for path, (text, size) in nested.items():
        assert ContentHash.parse(text)  # textual hash, no `C` suffix
        flags = root.execute("SELECT flags FROM catalog WHERE md5path_1=? AND md5path_2=?",
                             md5path(path)).fetchone()[0]
        assert flags & (Flags.DIR | Flags.NESTED_MOUNTPOINT) == Flags.DIR | 2
        child = _catalog(published, text, tmp_path)
        assert len(zlib.decompress(_object(published, text, "C"))) == size
        props = dict(child.execute("SELECT key, value FROM properties"))
        assert props["root_prefix"] == path
        row = child.execute("SELECT rowid, flags, name FROM catalog ORDER BY rowid").fetchone()
        assert row[0] == 1 and row[1] == Flags.DIR | Flags.NESTED_ROOT
        assert row[2] == path.rsplit("/", 1)[1]
    grandchild = _catalog(published, nested["/nested"][0], tmp_path)
    assert [r[0] for r in grandchild.execute("SELECT path FROM nested_catalogs")] == [
        "/nested/deeper/leaf"]
    counters = dict(root.execute("SELECT counter, value FROM statistics"))
    assert counters["self_nested"] == 3 and counters["subtree_nested"] == 1


def test_flags_and_hashes_of_entries(published: Path, tmp_path: Path) -> None:
    manifest, _ = parse_manifest((published / ".cvmfspublished").read_bytes())
    db = _catalog(published, str(manifest.root_hash), tmp_path)

    def row(path: str) -> tuple[int, bytes | None, int, str]:
        return db.execute("SELECT flags, hash, size, symlink FROM catalog "
                          "WHERE md5path_1=? AND md5path_2=?", md5path(path)).fetchone()

    flags, digest, size, _ = row("/big.bin")
    raw = 1 << 11  # random bytes: stored uncompressed, flagged so (bits 11-13)
    assert flags == Flags.FILE | Flags.CHUNKED | raw and digest is None and size == 300_000
    chunks = db.execute("SELECT offset, size, hash FROM chunks ORDER BY offset").fetchall()
    assert chunks[0][0] == 0 and sum(c[1] for c in chunks) == 300_000
    for _, _, chunk_hash in chunks:
        _object(published, chunk_hash.hex(), "P")
    assert row("/link-rel") == (Flags.FILE | Flags.LINK, None, len("plain.txt"), "plain.txt")
    assert row("/fifo")[0] == Flags.FILE | Flags.SPECIAL
    flags, digest, size, _ = row("/empty")
    assert flags == Flags.FILE and size == 0
    assert digest.hex() == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"  # zlib('')


def test_incompressible_files_stored_raw(tmp_path: Path, keys: Keys) -> None:
    """Random data is flagged `none` per file (chunks too); text stays zlib; small files
    are always zlib; `store_incompressible_raw=False` compresses everything."""
    from pycvmfs.format.compression import Compression
    from pycvmfs.format.hashes import Algorithm
    from pycvmfs.publisher.pipeline import Settings
    from pycvmfs.publisher.publish import PublishOptions, publish
    from tests.publish_helpers import SMALL_CHUNKS, open_repository, pseudo_random

    source = tmp_path / "src"
    source.mkdir()
    (source / "random.bin").write_bytes(pseudo_random(5, 200_000))  # chunked
    (source / "random-small.bin").write_bytes(pseudo_random(6, 1000))
    (source / "text.txt").write_bytes(b"compressible line\n" * 20_000)
    for always, expected in ((False, Compression.NONE), (True, Compression.ZLIB)):
        storage = tmp_path / f"repo-{always}"
        settings = Settings(Algorithm.SHA1, Compression.ZLIB, SMALL_CHUNKS,
                            store_incompressible_raw=not always)
        publish(PublishOptions(keys.fqrn, source, storage, keys.keys_dir, settings))
        with open_repository(storage, keys) as repo:
            entry = repo.lookup("/random.bin")
            assert entry.is_chunked and entry.compression is expected
            assert repo.read("/random.bin") == pseudo_random(5, 200_000)
            assert repo.lookup("/random-small.bin").compression is Compression.ZLIB
            assert repo.lookup("/text.txt").compression is Compression.ZLIB
            _, pieces = repo.pieces("/random.bin")
            stored = (storage / pieces[0].hash.object_path("P")).read_bytes()
            assert (stored == pseudo_random(5, 200_000)[:pieces[0].size]) is (not always)
