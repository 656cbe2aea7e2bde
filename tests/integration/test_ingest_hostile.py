"""A hostile image ingested end to end: path traversal, an absolute symlink escape, a
hardlink escape and a whiteout of `..` are neutralised inside the image's rootfs; nothing
outside it is touched, the findings are reported, and the repository stays servable."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from pycvmfs.format.certificates import load_public_key
from pycvmfs.images import layout
from pycvmfs.images.ingest import IngestOptions, ingest
from pycvmfs.images.layer_report import FindingKind
from pycvmfs.publisher.publish import PublishOptions
from pycvmfs.repository.open import open_repository
from pycvmfs.repository.source import LocalSource
from tests.oci_layouts import dir_member, file_member, link_member, tar_bytes, write_oci_layout
from tests.publish_helpers import Keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, devices)")

NAME = "example.org/hostile/image:latest"


def test_hostile_layers_stay_inside_the_image(tmp_path: Path, keys: Keys) -> None:
    outside = tmp_path / "host"  # what an escape would hit
    outside.mkdir()
    (outside / "passwd").write_text("host secret\n")
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    climb = "../../../../../../" + str(outside / "dotdot.txt").lstrip("/")
    lower = tar_bytes(
        dir_member("etc"), file_member("etc/os-release", b"ID=hostile\n"),
        link_member("escape", str(outside), tarfile.SYMTYPE),  # absolute symlink out
        file_member("keep.txt", b"kept\n"))
    upper = tar_bytes(
        file_member(climb, b"x"),
        file_member(str(outside / "absolute.txt"), b"x"),  # absolute member name
        file_member("escape/through-link.txt", b"x"),  # a write through the symlink
        link_member("hard", str(outside / "passwd"), tarfile.LNKTYPE),  # hardlink out
        file_member(".wh...", b""), file_member("etc/.wh...", b""))  # whiteouts of '..'
    layout_dir = tmp_path / "oci"
    write_oci_layout(layout_dir, [lower, upper])

    work, storage = tmp_path / "work", tmp_path / "storage"
    result = ingest([f"oci:{layout_dir}:latest"],
                    IngestOptions(PublishOptions(keys.fqrn, work, storage, keys.keys_dir)),
                    names={f"oci:{layout_dir}:latest": NAME})

    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before  # untouched
    report = result.images[0].report
    assert report is not None
    kinds = {finding.kind for finding in report.findings}
    assert {FindingKind.NAME_NORMALISED, FindingKind.WHITEOUT_INVALID,
            FindingKind.HARDLINK_SKIPPED, FindingKind.PARENT_RESCOPED} <= kinds
    assert result.published is not None
    public = load_public_key(keys.public_key_file.read_bytes())
    with open_repository(LocalSource(storage), keys.fqrn, [public]) as repo:
        flat = "/" + layout.flat_dir(result.images[0].config_digest)
        assert repo.read(flat + "/keep.txt") == b"kept\n"
        assert repo.read(flat + "/etc/os-release") == b"ID=hostile\n"
        assert repo.readlink(flat + "/escape") == str(outside)  # kept as text, inert
        names = {path.removeprefix(flat) for path, _ in repo.walk(flat)}
        assert not any("passwd" in name for name in names)  # the hardlink went nowhere
