"""Failures during an ingest: one bad image does not keep the others out of the repository,
and changes a failed publish left in the working tree are published by a later ingest only
when asked (`--resume`; `--discard-staged` undoes them). An ingest checks its keys and
storage before it fetches anything."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.errors import PublishError
from pycvmfs.images import ingest as ingest_module
from pycvmfs.images.ingest import UNPUBLISHED, IngestError, IngestOptions, ingest
from pycvmfs.images.layer_members import LayerLimits
from pycvmfs.images.podman_store import STORE
from pycvmfs.images.staging import StagedChangesError, StagedPolicy
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
    with pytest.raises(StagedChangesError, match=f"{GOOD}.*--resume.*--discard-staged"):
        ingest([good], options, {good: GOOD})  # not published unless asked
    resumed = dataclasses.replace(options, staged=StagedPolicy.RESUME)
    again = ingest([good], resumed, {good: GOOD})  # the image itself is there already
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


def _fail_publishing(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise PublishError("storage full while writing: no space left on device")

    monkeypatch.setattr(ingest_module, "publish", full_disk)


def test_discarding_staged_changes_restores_the_published_working_tree(
        tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """GOOD is published; then GOOD moves to new contents and OTHER is added, but that
    publish fails. Discarding puts GOOD's symlink and metadata back, removes OTHER and both
    new trees; the next ingest publishes only what it was asked to."""
    work, storage = tmp_path / "work", tmp_path / "storage"
    options = IngestOptions(PublishOptions(keys.fqrn, work, storage, keys.keys_dir))
    good = _image(tmp_path / "good", b"good\n")
    ingest([good], options, {good: GOOD})
    before = {p.relative_to(work).as_posix(): (p.readlink().as_posix() if p.is_symlink()
                                               else p.read_bytes() if p.is_file() else None)
              for p in sorted(work.rglob("*")) if ".pycvmfs-ingest" not in p.parts
              and STORE not in p.parts}  # derived from the images: third joins it below
    moved = _image(tmp_path / "moved", b"good, version 2\n")
    other = _image(tmp_path / "other", b"other\n")
    real_publish = ingest_module.publish
    _fail_publishing(monkeypatch)
    with pytest.raises(PublishError):
        ingest([moved, other], options, {moved: GOOD, other: OTHER})
    assert (work / OTHER).is_symlink() and (work / GOOD).readlink().as_posix() != before[GOOD]
    monkeypatch.setattr(ingest_module, "publish", real_publish)

    third = _image(tmp_path / "third", b"third\n")
    events: list[dict[str, object]] = []
    discard = dataclasses.replace(options, staged=StagedPolicy.DISCARD, notify=events.append)
    result = ingest([third], discard, {third: "example.org/ns/third:1"})
    assert events[0]["action"] == "staged" and events[0]["images"] == [GOOD, OTHER]
    assert result.published is not None and result.published.manifest.revision == 2
    assert _published(storage, keys) == {GOOD, "example.org/ns/third:1"}
    after = {p.relative_to(work).as_posix(): (p.readlink().as_posix() if p.is_symlink()
                                              else p.read_bytes() if p.is_file() else None)
             for p in sorted(work.rglob("*")) if ".pycvmfs-ingest" not in p.parts}
    assert {path: after[path] for path in before} == before  # GOOD as published
    images = json.loads((work / STORE / "overlay-images" / "images.json").read_bytes())
    assert sorted(name for image in images for name in image["names"]) == sorted(
        [GOOD, "example.org/ns/third:1"])
    for top in (".flat", ".layers"):
        assert len([p for p in work.glob(f"{top}/??/*") if len(p.name) == 64]) == 2
    assert not (work / OTHER).exists() and not (work / ".metadata" / OTHER).exists()
    assert not (work / UNPUBLISHED).exists()


def test_the_command_line_refuses_resumes_or_discards(
        tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    good = _image(tmp_path / "good", b"good\n")
    other = _image(tmp_path / "other", b"other\n")
    common = ["--repo", keys.fqrn, "--storage", str(tmp_path / "storage"),
              "--keys-dir", str(keys.keys_dir), "--work", str(tmp_path / "work")]
    real_publish = ingest_module.publish
    _fail_publishing(monkeypatch)
    assert main(["ingest", good, "--as", GOOD, *common]) == 1
    monkeypatch.setattr(ingest_module, "publish", real_publish)
    capsys.readouterr()

    assert main(["ingest", other, "--as", OTHER, *common]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and GOOD in err and "--resume" in err
    assert main(["images", "remove", GOOD, *common]) == 1  # a removal publishes too
    assert "--discard-staged" in capsys.readouterr().err

    assert main(["ingest", other, "--as", OTHER, "--resume", *common]) == 0
    captured = capsys.readouterr()
    assert f"found unpublished changes of an earlier ingest: {GOOD}" in captured.err
    assert "revision 1" in captured.out
    assert _published(tmp_path / "storage", keys) == {GOOD, OTHER}


@pytest.mark.parametrize("problem", ["no-keys", "other-keys", "not-a-repository",
                                     "unwritable"])
def test_ingest_checks_keys_and_storage_before_fetching(
        tmp_path: Path, keys: Keys, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The image is on a registry that refuses connections: the error must be the local
    problem, found before any attempt to reach it."""
    from pycvmfs.publisher.keys import create_keys

    storage, keys_dir = tmp_path / "storage", keys.keys_dir
    expected = ""
    if problem == "no-keys":
        keys_dir, expected = tmp_path / "empty-keys", "missing key file"
        keys_dir.mkdir()
    elif problem == "other-keys":  # a repository published with other keys
        _image(tmp_path / "good", b"good\n")
        ingest([f"oci:{tmp_path / 'good'}:latest"], IngestOptions(PublishOptions(
            keys.fqrn, tmp_path / "work0", storage, keys.keys_dir)),
            {f"oci:{tmp_path / 'good'}:latest": GOOD})
        keys_dir, expected = tmp_path / "other-keys", "not the repository"
        create_keys(keys.fqrn, keys_dir)
    elif problem == "not-a-repository":
        storage.mkdir()
        (storage / "notes.txt").write_text("my files\n")
        expected = "neither a repository"
    else:
        storage.mkdir()
        storage.chmod(0o555)
        expected = "not writable"
        if os.access(storage, os.W_OK):
            pytest.skip("root writes through any permission")
    code = main(["ingest", "docker://127.0.0.1:1/ns/image:1", "--repo", keys.fqrn,
                 "--storage", str(storage), "--keys-dir", str(keys_dir), "--work",
                 str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert code == 1 and expected in err and "127.0.0.1" not in err, err
