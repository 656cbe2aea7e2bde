"""A repository we published, tampered with after the fact: each kind of damage is
refused with its named error, and nothing wrong is ever returned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pycvmfs.errors import (
    FingerprintNotListedError,
    HashMismatchError,
    LetterHashError,
    NameMismatchError,
    SignatureError,
)
from pycvmfs.format.manifest import parse_manifest
from tests.publish_helpers import Keys, make_full_tree, open_repository, run_publish


@pytest.fixture()
def storage(tmp_path: Path, keys: Keys) -> Path:
    run_publish(make_full_tree(tmp_path / "src"), tmp_path / "repo", keys)
    return tmp_path / "repo"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _in_timestamp(storage: Path) -> int:
    """A digit of the manifest's T line (a flipped low bit keeps it a digit)."""
    return (storage / ".cvmfspublished").read_bytes().index(b"\nT") + 3


def _in_fingerprint(storage: Path) -> int:
    """An offset inside the last fingerprint line of the whitelist body."""
    return (storage / ".cvmfswhitelist").read_bytes().index(b"\n--\n") - 3


def _object(storage: Path, what: str) -> Path:
    manifest, _ = parse_manifest((storage / ".cvmfspublished").read_bytes())
    text = str(manifest.root_hash if what == "C" else manifest.certificate)
    return storage / "data" / text[:2] / (text[2:] + what)


TAMPERS: list[tuple[str, Callable[[Path], None], type[Exception], str]] = [
    ("manifest body", lambda s: _flip(s / ".cvmfspublished", _in_timestamp(s)),
     LetterHashError, "manifest"),
    ("manifest signature", lambda s: _flip(s / ".cvmfspublished", -5), SignatureError,
     "manifest"),
    ("whitelist body", lambda s: _flip(s / ".cvmfswhitelist", _in_fingerprint(s)),
     LetterHashError, "whitelist"),
    ("whitelist signature", lambda s: _flip(s / ".cvmfswhitelist", -5), SignatureError,
     "whitelist"),
    ("root catalog", lambda s: _flip(_object(s, "C"), 100), HashMismatchError, "catalog"),
    ("certificate", lambda s: _flip(_object(s, "X"), 50), HashMismatchError, "certificate"),
]


@pytest.mark.parametrize(("damage", "error", "word"), [t[1:] for t in TAMPERS],
                         ids=[t[0] for t in TAMPERS])
def test_tampered_metadata_refused(storage: Path, keys: Keys, damage: Callable[[Path], None],
                                   error: type[Exception], word: str) -> None:
    damage(storage)
    with pytest.raises(error, match=word), open_repository(storage, keys) as repo:
        repo.lookup("/plain.txt")


def test_tampered_objects_never_served(storage: Path, keys: Keys) -> None:
    with open_repository(storage, keys) as repo:
        victims = {path: repo.pieces(path)[1][0] for path in ("/plain.txt", "/big.bin")}
    for piece in victims.values():
        _flip(storage / piece.hash.object_path(piece.suffix), -1)
    with open_repository(storage, keys) as repo:
        for path in victims:
            with pytest.raises(HashMismatchError, match=path):
                repo.read(path)
        assert repo.read("/exec.sh") == b"#!/bin/sh\necho hi\n"


def test_other_repository_keys_refused(storage: Path, keys: Keys, tmp_path: Path) -> None:
    from pycvmfs.publisher.keys import create_keys

    other = Keys("other.pycvmfs.org", tmp_path / "other-keys")
    create_keys(other.fqrn, other.keys_dir)
    (other.keys_dir / f"{keys.fqrn}.pub").write_bytes(other.public_key_file.read_bytes())
    with pytest.raises(SignatureError, match="whitelist"):
        open_repository(storage, Keys(keys.fqrn, other.keys_dir))
    with pytest.raises(NameMismatchError):
        open_repository(storage, other)


def test_certificate_not_on_whitelist(storage: Path, keys: Keys, tmp_path: Path) -> None:
    """A whitelist signed by the right master key but listing another certificate."""
    import shutil

    from pycvmfs.publisher.keys import create_keys, load_keys
    from pycvmfs.publisher.storage import LocalStorage
    from pycvmfs.publisher.whitelist_sign import write_whitelist

    stranger = tmp_path / "stranger"
    create_keys(keys.fqrn, stranger)
    mixed = tmp_path / "mixed"
    shutil.copytree(keys.keys_dir, mixed)
    for suffix in (".crt", ".key"):
        (mixed / f"{keys.fqrn}{suffix}").unlink()
        shutil.copy(stranger / f"{keys.fqrn}{suffix}", mixed / f"{keys.fqrn}{suffix}")
    write_whitelist(LocalStorage(storage), keys.fqrn, load_keys(keys.fqrn, mixed), 5)
    with pytest.raises(FingerprintNotListedError):
        open_repository(storage, keys)
