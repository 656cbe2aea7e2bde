"""`repository.open`: one revision selector, one factory, against the bundled demo
repository (two revisions `v1` and `v2`, a chunked file, a nested catalog)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError, NotFoundError
from pycvmfs.format.certificates import load_public_key
from pycvmfs.format.hashes import ContentHash
from pycvmfs.repository.open import (
    TRUNK,
    RevisionSelector,
    Selects,
    attach_repository,
    open_repository,
    parse_repository_date,
)
from pycvmfs.repository.source import LocalSource

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "testdata" / "repo"
FQRN = "demo.pycvmfs.org"
KEY = load_public_key((ROOT / "testdata" / "keys" / f"{FQRN}.pub").read_bytes())


def test_a_selector_names_one_revision_at_most() -> None:
    assert RevisionSelector.of() == TRUNK and not TRUNK.fixed
    assert RevisionSelector.of(tag="v1").kind is Selects.TAG
    dated = RevisionSelector.of(date="2020-01-02T03:04:05Z")
    assert dated.kind is Selects.DATE and dated.timestamp == 1577934245 and dated.fixed
    digest = "a" * 40
    assert RevisionSelector.of(root_hash=digest).root_hash == ContentHash.parse(digest)
    with pytest.raises(ConfigError, match="at most one"):
        RevisionSelector.of(tag="v1", root_hash=digest)
    with pytest.raises(ConfigError, match="root hash"):
        RevisionSelector.of(root_hash="not a hash")
    with pytest.raises(ConfigError, match="YYYY-MM-DDTHH:MM:SSZ"):
        parse_repository_date("yesterday")


def test_trunk_tag_and_root_hash_read_their_revision(tmp_path: Path) -> None:
    source = LocalSource(DEMO)
    with open_repository(source, FQRN, [KEY], workdir=tmp_path) as trunk:
        assert trunk.tag is None and not trunk.fixed
        assert {t.name for t in trunk.tags()} >= {"v1", "v2"}
        trunk_hash = trunk.root_hash
        assert trunk.readlink("/software/current") == "v2"
    with open_repository(source, FQRN, [KEY], RevisionSelector.of(tag="v1"),
                         workdir=tmp_path) as v1:
        assert v1.tag is not None and v1.tag.name == "v1" and v1.fixed
        assert v1.readlink("/software/current") == "v1"
        v1_hash = v1.root_hash
    assert v1_hash != trunk_hash
    with open_repository(source, FQRN, [KEY], RevisionSelector.of(root_hash=v1_hash),
                         workdir=tmp_path) as again:
        assert again.root_hash == v1_hash and again.revision == 1
    assert list(tmp_path.iterdir()) == []  # every temporary store removed on close


def test_a_failed_open_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no tag 'nope'; available: .*v1"):
        open_repository(LocalSource(DEMO), FQRN, [KEY], RevisionSelector.of(tag="nope"),
                        workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_untrusted_attach_needs_a_root_hash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="root catalog hash"):
        attach_repository(LocalSource(DEMO), FQRN, None, TRUNK, workdir=tmp_path)


def test_reads_go_through_one_open_file(tmp_path: Path) -> None:
    with open_repository(LocalSource(DEMO), FQRN, [KEY], workdir=tmp_path) as repo:
        entry, pieces = repo.pieces("/data/random.bin")
        assert len(pieces) > 1  # chunked
        whole = repo.read("/data/random.bin")
        assert len(whole) == entry.size
        assert b"".join(repo.iter_read("/data/random.bin", block=4096)) == whole
        middle = pieces[1].offset - 10
        assert repo.read_range("/data/random.bin", middle, 20) == whole[middle:middle + 20]
        assert repo.read_range("/data/random.bin", entry.size, 20) == b""
