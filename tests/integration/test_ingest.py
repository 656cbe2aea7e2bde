"""Ingest real Debian images (minbase, and the same plus python3) from a real registry into
a repository: the flat trees equal `umoci unpack`, the second image stores only what
differs, an ingested image is skipped the next time."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.format.certificates import load_public_key
from pycvmfs.format.chunking import DEFAULT_CHUNK_PARAMS
from pycvmfs.images import layout
from pycvmfs.images.ingest import IngestOptions, ingest
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions
from pycvmfs.repository.open import open_repository
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import LocalSource
from tests.images import ImageSet, require_images
from tests.ingested import IngestedImages
from tests.publish_helpers import Keys
from tests.registry import NEEDS_REGISTRY_TOOLS, skopeo_copy

pytestmark = [NEEDS_REGISTRY_TOOLS, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, owners)")]

ADDED_BY_INGEST = (".singularity.d", "environment", "singularity", ".exec", ".run", ".shell",
                   ".test", ".cvmfscatalog")


def _local_tree(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """path -> (type, permissions, size, symlink target) of a directory on disk."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(directory, name)
            st = full.lstat()
            kind = ("d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode)
                    else "f" if stat.S_ISREG(st.st_mode) else "s")
            out["/" + str(full.relative_to(root))] = (
                kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "f" else 0,
                os.readlink(full) if kind == "l" else "")
    return out


def _repo_tree(repo: Repository, base: str) -> dict[str, tuple[str, int, int, str]]:
    out = {}
    for path, entry in repo.walk(base):
        kind = ("d" if entry.is_dir else "l" if entry.is_symlink
                else "f" if entry.is_regular else "s")
        out[path.removeprefix(base)] = (kind, stat.S_IMODE(entry.mode),
                                        entry.size if kind == "f" else 0, entry.symlink)
    return out


def _ours(path: str) -> bool:
    first = path.split("/")[1]
    return first in ADDED_BY_INGEST or path in ("/etc/hosts", "/etc/resolv.conf")


def test_ingest_from_registry(ingested_images: IngestedImages, tmp_path: Path, keys: Keys,
                              capsys: pytest.CaptureFixture[str]) -> None:
    shared = ingested_images  # first: ingest([base]); second: ingest([python, base])
    images, registry, events = shared.images, shared.registry, shared.events
    work, storage = shared.work, shared.storage
    base_ref, python_ref = shared.base_ref, shared.python_ref
    options = IngestOptions(PublishOptions(keys.fqrn, work, storage, keys.keys_dir,
                                           Settings(chunking=DEFAULT_CHUNK_PARAMS)))
    first, second = shared.first, shared.second
    assert first.published is not None and not first.images[0].skipped
    again = ingest([base_ref, python_ref], options)
    log = tmp_path / "events.jsonl"  # the command line: nothing new to publish
    assert main(["ingest", base_ref, "--repo", keys.fqrn, "--storage", str(storage),
                 "--keys-dir", str(keys.keys_dir), "--work", str(work),
                 "--notify", str(log)]) == 0
    assert "nothing new" in capsys.readouterr().out
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["action"] for e in logged] == ["start_image", "end_image"]
    assert logged[1]["skipped"] is True and logged[1]["status"] == "ok"
    assert second.published is not None
    assert [i.skipped for i in second.images] == [False, True]
    assert again.published is None and all(i.skipped for i in again.images)
    assert {e["action"] for e in events} >= {"start_image", "end_image", "layer",
                                             "start_publish", "end_publish"}

    # published images and layers are stubs in the working tree: it keeps only metadata
    work_bytes = sum(f.lstat().st_size for f in work.rglob("*") if f.is_file())
    assert work_bytes < 200_000, work_bytes
    assert second.published.catalogs_kept  # the first image was grafted, not walked again

    # the second image shares everything but python3 with the first: it adds ~what differs
    base_bytes = sum(f.stat().st_size for f in images.base.rootfs.rglob("*")
                     if f.is_file() and not f.is_symlink())
    assert second.published.bytes_written < base_bytes / 3

    public = load_public_key(keys.public_key_file.read_bytes())
    with open_repository(LocalSource(storage), keys.fqrn, [public]) as repo:
        for image in (images.base, images.python):
            name = f"{registry.host}/ns/debian:{image.tag}"
            flat = "/" + layout.flat_dir(image.config_digest)
            assert repo.readlink("/" + name) == layout.public_link(name, image.config_digest)[1]
            assert repo.read(f"/{layout.metadata_file(name)}")  # the manifest as ingested
            got = {p: v for p, v in _repo_tree(repo, flat).items() if not _ours(p)}
            want = {p: v for p, v in _local_tree(image.rootfs).items() if not _ours(p)}
            assert len(want) > 3000 and got == want  # a real Debian tree, entry for entry
            for probe in ("/etc/os-release", "/bin/sh" if image.tag == "base" else
                          "/usr/bin/python3"):
                real = (image.rootfs / probe.lstrip("/")).resolve()
                inside = "/" + str(real.relative_to(image.rootfs.resolve()))
                assert hashlib.sha256(repo.read(flat + inside)).digest() == \
                    hashlib.sha256(real.read_bytes()).digest()
            assert repo.lookup(flat + "/.singularity.d/runscript").is_regular


def test_ingest_local_images_under_a_name(tmp_path: Path, keys: Keys,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    images: ImageSet = require_images()
    work, storage = tmp_path / "work", tmp_path / "storage"
    # flat images only: layer trees of real images are the shared fixture's (ingested_images)
    common = ["--repo", keys.fqrn, "--storage", str(storage), "--keys-dir", str(keys.keys_dir),
              "--work", str(work), "--skip-layers"]
    oci = f"oci:{images.base.layout}:{images.base.tag}"
    assert main(["ingest", oci, *common]) == 1  # no name to publish it under
    assert "needs a name" in capsys.readouterr().err
    assert main(["ingest", oci, "--as", "example.org/debian:base", *common]) == 0
    archive = tmp_path / "python.tar"  # a docker archive names itself (RepoTags)
    skopeo_copy(f"oci:{images.python.layout}:{images.python.tag}",
                f"docker-archive:{archive}:example.org/debian:python")
    assert main(["ingest", f"docker-archive:{archive}", *common]) == 0
    public = load_public_key(keys.public_key_file.read_bytes())
    with open_repository(LocalSource(storage), keys.fqrn, [public]) as repo:
        for image in (images.base, images.python):
            name = f"example.org/debian:{image.tag}"
            assert repo.readlink("/" + name) == layout.public_link(name, image.config_digest)[1]
            flat = "/" + layout.flat_dir(image.config_digest)
            assert repo.read(flat + "/etc/debian_version")
