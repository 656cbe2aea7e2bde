"""`replica.snapshot.snapshot` from a storage directory into another, in process (no
network): the replica reads like the source, a second snapshot copies only new objects, a
tag's revision is kept, corrupt objects and older sources are refused, a run that stopped
before its manifest is resumed."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from pycvmfs.errors import HashMismatchError, ReplicationError, WhitelistExpiredError
from pycvmfs.format.certificates import load_public_key
from pycvmfs.publisher.storage import LocalStorage
from pycvmfs.replica import snapshot as snapshot_module
from pycvmfs.replica.plan import LAST_SNAPSHOT_NAME, STATUS_NAME
from pycvmfs.replica.snapshot import SnapshotResult, snapshot
from pycvmfs.repository.source import LocalSource
from tests.publish_helpers import Keys, make_full_tree, open_repository, run_publish


def _objects(storage: Path) -> set[str]:
    return {str(p.relative_to(storage)) for p in (storage / "data").glob("??/*")}


def _listing(storage: Path, keys: Keys, tag: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {}
    with open_repository(storage, keys, tag=tag) as repo:
        for path, e in repo.walk():
            out[path] = (e.mode, e.size, e.mtime, e.symlink, e.xattrs,
                         repo.read(path) if e.is_regular else b"")
    return out


def _snapshot(source: Path, replica: Path, keys: Keys, **kwargs: object) -> SnapshotResult:
    public = load_public_key(keys.public_key_file.read_bytes())
    return snapshot(LocalSource(source), LocalStorage(replica), keys.fqrn, [public],
                    workers=3, **kwargs)  # type: ignore[arg-type]


@pytest.fixture()
def published(tmp_path: Path, keys: Keys) -> Path:
    storage = tmp_path / "source"
    run_publish(make_full_tree(tmp_path / "src"), storage, keys, tag="v1")
    return storage


def test_replica_reads_like_the_source_and_copies_only_new_objects(
        published: Path, tmp_path: Path, keys: Keys) -> None:
    replica = tmp_path / "replica"
    first = _snapshot(published, replica, keys)
    assert _objects(replica) == _objects(published)
    assert first.copied == len(_objects(replica)) and first.present == 0
    assert first.bytes == sum((replica / p).stat().st_size for p in _objects(replica))
    assert _listing(replica, keys) == _listing(published, keys)
    for name in (".cvmfspublished", ".cvmfswhitelist"):
        assert (replica / name).read_bytes() == (published / name).read_bytes()
    assert (replica / LAST_SNAPSHOT_NAME).read_text().endswith(" UTC "
                                                               f"{dt.date.today().year}\n")
    assert "last_snapshot" in (replica / STATUS_NAME).read_text()

    (tmp_path / "src" / "new.txt").write_text("one new file\n")
    run_publish(tmp_path / "src", published, keys)
    before = _objects(replica)
    second = _snapshot(published, replica, keys)
    new = _objects(replica) - before
    # the new file, a new root catalog and a new history
    assert second.copied == len(new) == 3 and second.catalogs == 1
    assert second.previous_revision == first.revision and second.revision == first.revision + 1
    assert _listing(replica, keys) == _listing(published, keys)
    assert _listing(replica, keys, tag="v1") == _listing(published, keys, tag="v1")

    again = _snapshot(published, replica, keys)
    assert again.copied == 0 and _objects(replica) == _objects(published)


def test_a_corrupt_object_is_refused_and_the_replica_keeps_its_revision(
        published: Path, tmp_path: Path, keys: Keys) -> None:
    replica = tmp_path / "replica"
    _snapshot(published, replica, keys)
    manifest = (replica / ".cvmfspublished").read_bytes()
    (tmp_path / "src" / "corrupt-me.txt").write_text("these bytes will be replaced\n")
    run_publish(tmp_path / "src", published, keys)
    victim = next(p for p in _objects(published) - _objects(replica) if p[-1] not in "CH")
    (published / victim).write_bytes(b"not what the catalog says")
    with pytest.raises(HashMismatchError, match="hashes to"):
        _snapshot(published, replica, keys)
    assert (replica / ".cvmfspublished").read_bytes() == manifest
    assert not (replica / victim).exists()
    assert list((replica / "data" / "txn").iterdir()) == []


def test_an_older_source_is_refused_unless_forced(published: Path, tmp_path: Path,
                                                  keys: Keys) -> None:
    old = tmp_path / "old"
    replica = tmp_path / "replica"
    _snapshot(published, old, keys)
    run_publish(tmp_path / "src", published, keys)
    _snapshot(published, replica, keys)
    newer = (replica / ".cvmfspublished").read_bytes()
    with pytest.raises(ReplicationError, match="refusing to go backwards"):
        _snapshot(old, replica, keys)
    assert (replica / ".cvmfspublished").read_bytes() == newer
    assert _snapshot(old, replica, keys, force=True).copied == 1  # its older history
    assert (replica / ".cvmfspublished").read_bytes() == (old / ".cvmfspublished").read_bytes()


def test_trust_is_checked_before_the_storage_is_touched(published: Path, tmp_path: Path,
                                                       keys: Keys) -> None:
    replica = tmp_path / "replica"
    far_future = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(WhitelistExpiredError):
        _snapshot(published, replica, keys, now=lambda: far_future)
    assert not replica.exists()


def test_a_snapshot_stopped_before_its_manifest_is_resumed(
        published: Path, tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    replica = tmp_path / "replica"

    def stop(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot_module, "_publish_files", stop)
    with pytest.raises(KeyboardInterrupt):
        _snapshot(published, replica, keys)
    assert not (replica / ".cvmfspublished").exists()
    monkeypatch.undo()
    resumed = _snapshot(published, replica, keys)
    assert resumed.copied == 0 and resumed.present > 0
    assert _listing(replica, keys) == _listing(published, keys)
    assert os.listdir(replica / "data" / "txn") == []


def test_a_key_that_did_not_sign_the_whitelist_is_refused(published: Path, tmp_path: Path,
                                                          keys: Keys) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from pycvmfs.errors import SignatureError

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    replica = tmp_path / "replica"
    with pytest.raises(SignatureError):
        snapshot(LocalSource(published), LocalStorage(replica), keys.fqrn, [other])
    assert not replica.exists()


def test_untagged_revisions_since_the_last_snapshot_are_replicated(
        published: Path, tmp_path: Path, keys: Keys) -> None:
    from pycvmfs.format.manifest import parse_manifest

    replica = tmp_path / "replica"
    _snapshot(published, replica, keys)
    roots = []
    for n in (2, 3, 4):  # at revision 4, only 3 is tagged (trunk-previous)
        (tmp_path / "src" / "counter.txt").write_text(f"{n}\n")
        roots.append(run_publish(tmp_path / "src", published, keys).manifest.root_hash)
    result = _snapshot(published, replica, keys)
    assert result.revision == 4
    assert all((replica / root.object_path("C")).exists() for root in roots)
    # everything but the histories of revisions 2 and 3 (the reference copies the current)
    assert _objects(replica) == {p for p in _objects(published) if not p.endswith("H")} | {
        p for p in _objects(replica) if p.endswith("H")}
    # a first snapshot takes the current revision and the tags only
    fresh = tmp_path / "fresh"
    _snapshot(published, fresh, keys)
    assert not (fresh / roots[0].object_path("C")).exists()
    assert parse_manifest((fresh / ".cvmfspublished").read_bytes())[0].revision == 4
