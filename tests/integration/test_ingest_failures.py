"""Failures during an ingest: one bad image does not keep the others out of the repository,
and changes a failed publish left in the working tree are published by the next ingest."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.errors import PublishError
from pycvmfs.images import ingest as ingest_module
from pycvmfs.images.ingest import UNPUBLISHED, IngestError, IngestOptions, ingest
from pycvmfs.images.layer_members import LayerLimits
from pycvmfs.publisher.publish import PublishOptions
from tests.oci_layouts import file_member, tar_bytes, write_oci_layout
from tests.publish_helpers import Keys, open_repository

GOOD, OTHER = "example.org/ns/good:1", "example.org/ns/other:1"


def _image(root: Path, text: bytes) -> str:
    write_oci_layout(root, [tar_bytes(file_member("hello.txt", text))])
    return f"oci:{root}:latest"


def _published(storage: Path, keys: Keys) -> set[str]:
    with open_repository(storage, keys) as repo:
        return {path.lstrip("/") for path, entry in repo.walk("/example.org")
                if entry.is_symlink}


def test_a_bad_image_does_not_hold_back_the_others(tmp_path: Path, keys: Keys,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    good, other = _image(tmp_path / "good", b"good\n"), _image(tmp_path / "other", b"other\n")
    missing = f"oci:{tmp_path / 'nowhere'}:latest"
    storage = tmp_path / "storage"
    options = IngestOptions(PublishOptions(keys.fqrn, tmp_path / "work", storage,
                                           keys.keys_dir))
    with pytest.raises(IngestError, match="nowhere.*published as revision 1") as failed:
        ingest([good, missing], options, {good: GOOD})
    assert failed.value.result.published is not None
    assert [image.public_path for image in failed.value.result.images] == [GOOD]
    assert _published(storage, keys) == {GOOD}

    # the command line says what was published, then the error, and exits 1
    assert main(["ingest", other, "--as", OTHER, "--repo", keys.fqrn, "--storage",
                 str(storage), "--keys-dir", str(keys.keys_dir), "--work",
                 str(tmp_path / "work")]) == 0
    capsys.readouterr()
    assert main(["ingest", missing, "--repo", keys.fqrn, "--storage", str(storage),
                 "--keys-dir", str(keys.keys_dir), "--work", str(tmp_path / "work")]) == 1
    captured = capsys.readouterr()
    assert "nothing new" in captured.out and "nowhere" in captured.err


def test_a_failed_publish_is_made_up_for_next_time(tmp_path: Path, keys: Keys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    good = _image(tmp_path / "good", b"good\n")
    work, storage = tmp_path / "work", tmp_path / "storage"
    options = IngestOptions(PublishOptions(keys.fqrn, work, storage, keys.keys_dir))
    real_publish = ingest_module.publish

    def full_disk(*args: object, **kwargs: object) -> None:
        raise PublishError("storage full while writing: no space left on device")

    monkeypatch.setattr(ingest_module, "publish", full_disk)
    with pytest.raises(PublishError, match="no space left"):
        ingest([good], options, {good: GOOD})
    assert (work / UNPUBLISHED).exists()
    assert not (storage / ".cvmfspublished").exists()

    monkeypatch.setattr(ingest_module, "publish", real_publish)
    again = ingest([good], options, {good: GOOD})  # the image itself is there already
    assert again.images[0].skipped and again.published is not None
    assert not (work / UNPUBLISHED).exists()
    assert _published(storage, keys) == {GOOD}
    assert ingest([good], options, {good: GOOD}).published is None  # now nothing to do


def test_a_failed_image_leaves_the_working_tree_as_it_was(tmp_path: Path, keys: Keys) -> None:
    """Its first layer unpacks, its second crosses a limit: neither its layer trees nor its
    flat tree appear, and nothing is published."""
    write_oci_layout(tmp_path / "bomb", [tar_bytes(file_member("small.txt", b"fine\n")),
                                         tar_bytes(file_member("big.bin", b"x" * 4096))])
    work = tmp_path / "work"
    options = IngestOptions(PublishOptions(keys.fqrn, work, tmp_path / "storage",
                                           keys.keys_dir),
                            limits=LayerLimits(max_file_bytes=1024))
    reference = f"oci:{tmp_path / 'bomb'}:latest"
    with pytest.raises(IngestError, match="max_file_bytes"):
        ingest([reference], options, {reference: GOOD})
    assert sorted(p.name for p in work.iterdir()) == [".pycvmfs-ingest"]
    assert not (work / UNPUBLISHED).exists()
    assert not (tmp_path / "storage" / ".cvmfspublished").exists()
