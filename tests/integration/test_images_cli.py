"""`pycvmfs images list` and `images remove` of an image that is not there, on a small
repository ingested from local OCI layouts (in-process, no registry, no mount)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from tests.oci_layouts import file_member, tar_bytes, write_oci_layout
from tests.publish_helpers import Keys

FIRST, SECOND = "example.org/ns/first:1.0", "example.org:5000/ns/second:latest"


@pytest.fixture
def repository(tmp_path: Path, keys: Keys) -> list[str]:
    """`--repo ... --storage ... --keys-dir ... --work ...` of two ingested images."""
    common = ["--repo", keys.fqrn, "--storage", str(tmp_path / "storage"),
              "--keys-dir", str(keys.keys_dir), "--work", str(tmp_path / "work")]
    for name, layers in ((FIRST, 1), (SECOND, 2)):
        layout_dir = tmp_path / f"layout{layers}"
        write_oci_layout(layout_dir, [tar_bytes(file_member(f"f{i}.txt", b"%d\n" % i * 100))
                                      for i in range(layers)])
        assert main(["ingest", f"oci:{layout_dir}:latest", "--as", name, *common]) == 0
    return common


def test_images_list_from_storage_and_from_a_tree(tmp_path: Path, keys: Keys,
                                                  repository: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["images", "list", "--storage", str(tmp_path / "storage"), "--keys",
                 str(keys.public_key_file), "--repo", keys.fqrn, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [image["public_name"] for image in listed] == [FIRST, SECOND]
    first, second = listed
    assert (first["name"], first["tag"], first["layers"]) == ("example.org/ns/first", "1.0", 1)
    assert (second["name"], second["tag"], second["layers"]) == (
        "example.org:5000/ns/second", "latest", 2)
    ingest_json = json.loads((tmp_path / "work" / ".metadata" / FIRST / "ingest.json")
                             .read_text())
    assert first["digest"] == ingest_json["manifest"]
    assert first["size"] > 0 and first["ingested"].endswith("Z")
    assert first["config"].startswith("sha256:")

    assert main(["images", "list", "--mount", str(tmp_path / "work")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "TAG", "DIGEST", "SIZE", "LAYERS", "INGESTED"]
    assert lines[1].split()[:3] == ["example.org/ns/first", "1.0",
                                    first["digest"].removeprefix("sha256:")[:12]]
    assert lines[2].split()[0] == "example.org:5000/ns/second"


def test_images_list_needs_one_repository(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "list"]) == 2
    assert main(["images", "list", "--storage", str(tmp_path)]) == 2  # and its --keys
    assert "--keys" in capsys.readouterr().err


def test_removing_an_image_that_is_not_there_fails(tmp_path: Path, repository: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["images", "remove", "example.org/ns/nothere:1", *repository]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "example.org/ns/nothere:1" in captured.err and "images list" in captured.err
    # one there, one not: the one there goes (published), and the command still fails
    assert main(["images", "remove", FIRST, "example.org/ns/nothere:1", *repository]) == 1
    captured = capsys.readouterr()
    assert f"removed {FIRST}" in captured.out and "revision 3" in captured.out
    assert "nothere" in captured.err and FIRST not in captured.err
