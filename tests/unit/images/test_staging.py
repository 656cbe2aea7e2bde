"""The staging journal: what an ingest changed and did not publish, refused, resumed or
undone (the whole ingest is in tests/integration/test_ingest_failures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.images.staging import JOURNAL, StagedChangesError, StagedPolicy, StagingJournal


def _tree(work: Path) -> dict[str, str]:
    return {p.relative_to(work).as_posix(): (f"-> {p.readlink()}" if p.is_symlink()
                                             else p.read_text() if p.is_file() else "/")
            for p in sorted(work.rglob("*")) if ".pycvmfs-ingest" not in p.parts}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "reg.org/ns").mkdir(parents=True)
    (work / "reg.org/ns/a:1").symlink_to("../../.flat/11/old")
    (work / ".metadata/reg.org/ns/a:1").mkdir(parents=True)
    (work / ".metadata/reg.org/ns/a:1/manifest.json").write_text("old manifest")
    (work / ".flat/11/old").mkdir(parents=True)
    (work / ".flat/11/old/.pycvmfs-kept").write_text("")
    return work


def _stage(work: Path) -> None:
    """What an ingest of a:1 (moved to a new tree) and b:1 (new) does."""
    journal = StagingJournal(work)
    journal.stage_dirs([".flat/22/new", ".flat/11/old"])  # the second exists: not created
    (work / ".flat/22/new").mkdir(parents=True)
    (work / ".flat/22/.cvmfscatalog").write_text("")
    (work / ".flat/22/new/file").write_text("contents")
    journal.stage_image("reg.org/ns/a:1", ["reg.org/ns/a:1",
                                           ".metadata/reg.org/ns/a:1/manifest.json"])
    (work / "reg.org/ns/a:1").unlink()
    (work / "reg.org/ns/a:1").symlink_to("../../.flat/22/new")
    (work / ".metadata/reg.org/ns/a:1/manifest.json").write_text("new manifest")
    journal.stage_image("reg.org/ns/b:1", ["reg.org/ns/b:1",
                                           ".metadata/reg.org/ns/b:1/manifest.json"])
    (work / "reg.org/ns/b:1").symlink_to("../../.flat/22/new")
    (work / ".metadata/reg.org/ns/b:1").mkdir(parents=True)
    (work / ".metadata/reg.org/ns/b:1/manifest.json").write_text("b manifest")


def test_refuse_names_the_images_and_the_ways_on(work: Path) -> None:
    journal = StagingJournal(work)
    assert journal.settle(StagedPolicy.REFUSE, fix="FIX") is None  # nothing staged
    _stage(work)
    with pytest.raises(StagedChangesError, match="reg.org/ns/a:1, reg.org/ns/b:1.*FIX"):
        journal.settle(StagedPolicy.REFUSE, fix="FIX")
    staged = journal.settle(StagedPolicy.RESUME, fix="FIX")
    assert staged is not None and staged.images == ["reg.org/ns/a:1", "reg.org/ns/b:1"]
    assert staged.created == [".flat/22/new"]


def test_discard_puts_the_working_tree_back(work: Path) -> None:
    before = _tree(work)
    _stage(work)
    assert _tree(work) != before
    StagingJournal(work).settle(StagedPolicy.DISCARD, fix="")
    assert _tree(work) == before
    assert not (work / JOURNAL).exists() and StagingJournal(work).read() is None


def test_an_old_empty_journal_can_be_resumed_not_discarded(work: Path) -> None:
    (work / JOURNAL).parent.mkdir(parents=True)
    (work / JOURNAL).touch()
    journal = StagingJournal(work)
    assert journal.settle(StagedPolicy.RESUME, fix="") is not None
    with pytest.raises(StagedChangesError, match="cannot be discarded"):
        journal.settle(StagedPolicy.DISCARD, fix="")


def test_a_removal_cannot_be_discarded(work: Path) -> None:
    journal = StagingJournal(work)
    journal.stage_removal(["reg.org/ns/a:1"])
    with pytest.raises(StagedChangesError, match="removal of reg.org/ns/a:1.*--resume"):
        journal.settle(StagedPolicy.DISCARD, fix="")
