"""Layer trees (`.layers/XX/<digest>/layerfs`): each layer once, overlayfs-style whiteouts
(0/0 character devices, `trusted.overlay.opaque`), DUCC's origin backlinks, and the proof
that they are right: the kernel's overlayfs, stacking the layer trees of the *mounted*
repository, shows exactly the flat image."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.images import layout
from pycvmfs.images.ingest import IngestOptions, ingest
from pycvmfs.images.removal import remove_images
from pycvmfs.images.singularity import BIND_TARGETS, MOUNT_POINTS
from pycvmfs.publisher.kept import is_kept
from pycvmfs.publisher.publish import PublishOptions
from tests.mounting import cli_mount
from tests.oci_layouts import dir_member, file_member, link_member, tar_bytes, write_oci_layout
from tests.publish_helpers import Keys
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = NEEDS_FUSE_AND_NGINX

FIRST, SECOND = "example.org/ns/app:1", "example.org/ns/app:2"
SHARED = b"the same bytes in two places\n" * 100
# what ingest adds to a flat image, and the catalog markers of every layer tree
NOT_FROM_LAYERS = {".singularity.d", "environment", "singularity", ".exec", ".run", ".shell",
                   ".test", ".cvmfscatalog"}


def _whiteout(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return file_member(name, b"")


BASE = tar_bytes(
    dir_member("etc"), file_member("etc/a.txt", b"a0\n"), dir_member("a"),
    file_member("a/old.txt", b"old\n"), dir_member("a/sub"), file_member("a/sub/x", b"x\n"),
    file_member("keep.txt", b"keep\n"), file_member("gone.txt", b"gone\n"), dir_member("b"),
    file_member("b/shared.bin", SHARED), link_member("b/link", "../keep.txt", tarfile.SYMTYPE))
CHANGES = tar_bytes(
    _whiteout(".wh.gone.txt"), _whiteout("a/.wh..wh..opq"), file_member("a/new.txt", b"new\n"),
    file_member("etc/a.txt", b"a1\n"), _whiteout("b/.wh.shared.bin"))
MORE = tar_bytes(dir_member("c"), file_member("c/copy.bin", SHARED, 0o755))
OTHER = tar_bytes(file_member("other.txt", b"only in the second image\n"))


def _tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """path -> (type, permissions, contents or link target) below root, ingest's own files
    left out."""
    out = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (directory == str(root) and d in NOT_FROM_LAYERS)]
        for name in dirs + files:
            if directory == str(root) and name in NOT_FROM_LAYERS:
                continue
            full = Path(directory, name)
            st = full.lstat()
            kind = stat.filemode(st.st_mode)[0]
            data = (full.read_bytes() if kind == "-" else
                    os.readlink(full).encode() if kind == "l" else b"")
            out[str(full.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), data)
    return out


def test_layer_trees_stack_to_the_flat_image(keys: Keys) -> None:
    with shared_scratch("pycvmfs-layer-trees-") as base:  # nginx (nobody) reads the storage
        _stack_layer_trees(base, keys)


def _stack_layer_trees(tmp_path: Path, keys: Keys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    digests = write_oci_layout(first, [BASE, CHANGES, MORE])
    other = write_oci_layout(second, [BASE, OTHER])
    assert other[0] == digests[0]  # the base layer is shared
    work, storage = tmp_path / "work", tmp_path / "storage"
    events: list[dict[str, object]] = []
    options = IngestOptions(PublishOptions(keys.fqrn, work, storage, keys.keys_dir),
                            notify=events.append)
    result = ingest([f"oci:{first}:latest"], options, {f"oci:{first}:latest": FIRST})
    config = result.images[0].config_digest

    assert [e["layer"] for e in events if e["action"] == "layer_tree"] == digests
    # published: the working tree keeps stubs only, the repository has the trees
    published = [layout.flat_dir(config), *map(layout.layerfs_dir, digests)]
    assert all(is_kept(work / path) for path in published)

    events.clear()  # the second image: only its own layer is unpacked as a tree
    added = ingest([f"oci:{second}:latest"], options, {f"oci:{second}:latest": SECOND})
    assert [e["layer"] for e in events if e["action"] == "layer_tree"] == [other[1]]
    assert added.published is not None
    assert set(published) <= {path.lstrip("/") for path in added.published.catalogs_kept}
    origin = json.loads((work / layout.layer_origin_file(digests[0])).read_text())
    assert origin == {"origin": [FIRST, SECOND]}

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Nginx() as server, cli_mount(keys.fqrn, mnt, env=dict(os.environ), options={
            "CVMFS_SERVER_URL": server.publish(f"cvmfs/{keys.fqrn}", storage),
            "CVMFS_HTTP_PROXY": "DIRECT", "CVMFS_PUBLIC_KEY": str(keys.public_key_file),
            "CVMFS_CACHE_BASE": str(tmp_path / "cache")}):
        served = mnt / layout.layerfs_dir(digests[1])
        gone = served.joinpath("gone.txt").lstat()
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert os.getxattr(served / "a", "trusted.overlay.opaque") == b"y"
        assert not served.joinpath(".wh.gone.txt").exists()
        assert all((mnt / layout.layerfs_dir(d) / ".cvmfscatalog").is_file() for d in digests)
        merged = tmp_path / "merged"
        merged.mkdir()
        lower = ":".join(str(mnt / layout.layerfs_dir(d)) for d in reversed(digests))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}",
                        str(merged)], check=True, capture_output=True)
        try:
            stacked = _tree(merged)
        finally:
            subprocess.run(["umount", str(merged)], check=True)
        flat = _tree(mnt / layout.flat_dir(config))
    removed = remove_images([FIRST], options)  # its own layers go, the shared one stays
    assert sorted(removed.flats_removed) == sorted(
        [layout.flat_dir(config), *(layout.layer_dir(d) for d in digests[1:])])
    assert json.loads((work / layout.layer_origin_file(digests[0])).read_text()) == \
        {"origin": [SECOND]}
    assert (work / layout.layerfs_dir(other[1])).is_dir()

    added = set(flat) - set(stacked)  # Apptainer's mount points, made by ingest
    assert added <= {*MOUNT_POINTS, *BIND_TARGETS, "var"}
    assert stacked == {path: flat[path] for path in flat if path not in added}
    assert "gone.txt" not in flat and "a/old.txt" not in flat and "a/new.txt" in flat
    assert flat["etc/a.txt"][2] == b"a1\n" and flat["c/copy.bin"][2] == SHARED


def test_layer_trees_can_be_skipped(tmp_path: Path, keys: Keys) -> None:
    digests = write_oci_layout(tmp_path / "oci", [BASE, CHANGES])
    work = tmp_path / "work"
    assert main(["ingest", f"oci:{tmp_path / 'oci'}:latest", "--as", FIRST, "--skip-layers",
                 "--repo", keys.fqrn, "--storage", str(tmp_path / "storage"),
                 "--keys-dir", str(keys.keys_dir), "--work", str(work)]) == 0
    assert not (work / layout.LAYERS).exists()
    assert is_kept((work / FIRST).resolve())
    # asked for later, the trees are added to the image already there
    result = ingest([f"oci:{tmp_path / 'oci'}:latest"], IngestOptions(PublishOptions(
        keys.fqrn, work, tmp_path / "storage", keys.keys_dir)),
        {f"oci:{tmp_path / 'oci'}:latest": FIRST})
    assert result.published is not None and not result.images[0].skipped
    assert all((work / layout.layerfs_dir(d)).is_dir() for d in digests)


def test_layer_trees_need_root_for_whiteouts(tmp_path: Path, keys: Keys,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CAP_MKNOD a whiteout cannot become a 0/0 device: the ingest stops, says so,
    and names the way out; nothing is published."""
    write_oci_layout(tmp_path / "oci", [BASE, CHANGES])

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refused)
    options = IngestOptions(PublishOptions(keys.fqrn, tmp_path / "work", tmp_path / "storage",
                                           keys.keys_dir))
    with pytest.raises(Exception, match="needs root.*skip layer trees"):
        ingest([f"oci:{tmp_path / 'oci'}:latest"], options,
               {f"oci:{tmp_path / 'oci'}:latest": FIRST})
    assert not (tmp_path / "storage" / ".cvmfspublished").exists()
