"""A hostile image ingested end to end: path traversal, an absolute symlink escape, a
hardlink escape and a whiteout of `..` are neutralised inside the image's rootfs; nothing
outside it is touched, the findings are reported, and the repository stays servable."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pycvmfs.format.certificates import load_public_key
from pycvmfs.images import layout
from pycvmfs.images.ingest import IngestOptions, ingest
from pycvmfs.images.layers import FindingKind
from pycvmfs.publisher.publish import PublishOptions
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import LocalSource
from tests.publish_helpers import Keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, devices)")

NAME = "example.org/hostile/image:latest"


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _directory(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _oci_layout(root: Path, layers: list[bytes]) -> None:
    """An OCI image layout with these (uncompressed) layer tars, gzip-compressed."""
    descriptors, diff_ids = [], []
    for tar in layers:
        digest, size = _blob(root, gzip.compress(tar))
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": digest, "size": size})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_digest, config_size = _blob(root, config)
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": config_size},
                           "layers": descriptors}).encode()
    manifest_digest, manifest_size = _blob(root, manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


def test_hostile_layers_stay_inside_the_image(tmp_path: Path, keys: Keys) -> None:
    outside = tmp_path / "host"  # what an escape would hit
    outside.mkdir()
    (outside / "passwd").write_text("host secret\n")
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    lower = _tar(_directory("etc"), _file("etc/os-release", b"ID=hostile\n"),
                 _link("escape", str(outside), tarfile.SYMTYPE),  # absolute symlink out
                 _file("keep.txt", b"kept\n"))
    upper = _tar(_file("../../../../../../" + str(outside / "dotdot.txt").lstrip("/"), b"x"),
                 _file(str(outside / "absolute.txt"), b"x"),  # absolute member name
                 _file("escape/through-link.txt", b"x"),  # a write through the symlink
                 _link("hard", str(outside / "passwd"), tarfile.LNKTYPE),  # hardlink out
                 _file(".wh...", b""), _file("etc/.wh...", b""))  # whiteouts of '..'
    layout_dir = tmp_path / "oci"
    _oci_layout(layout_dir, [lower, upper])

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
    with Repository.open(LocalSource(storage), keys.fqrn, [public]) as repo:
        flat = "/" + layout.flat_dir(result.images[0].config_digest)
        assert repo.read(flat + "/keep.txt") == b"kept\n"
        assert repo.read(flat + "/etc/os-release") == b"ID=hostile\n"
        assert repo.readlink(flat + "/escape") == str(outside)  # kept as text, inert
        names = {path.removeprefix(flat) for path, _ in repo.walk(flat)}
        assert not any("passwd" in name for name in names)  # the hardlink went nowhere
