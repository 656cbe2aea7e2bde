"""The pycvmfs snapshotter behind a private containerd (Debian's 1.6), through containerd's
own API: a layer the repository has is adopted as a remote snapshot (Prepare answers
ALREADY_EXISTS, containerd finds it by its label), a container's snapshot mounts as an
overlay over the layer tree, snapshots survive restarts of the snapshotter and of
containerd, and an image whose layers the repository lacks is unpacked locally and runs.

The repository here is a plain directory laid out as ingest lays out `.layers/`: the
snapshotter only reads paths under it, so a pycvmfs mount behaves the same."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.images.layout import layerfs_dir
from tests.containerd import (
    PLUGIN,
    PrivateContainerd,
    SnapshotsClient,
    Snapshotter,
    missing_requirement,
)

pytestmark = pytest.mark.skipif(missing_requirement() is not None,
                                reason=missing_requirement() or "")

LAYER = "sha256:" + "5e" * 32
CHAIN = "sha256:" + "c4" * 32


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Snapshotter,
                                                                     PrivateContainerd]]:
    base = tmp_path_factory.mktemp("containerd")
    repository = base / "repository"
    tree = repository / layerfs_dir(LAYER)
    tree.mkdir(parents=True)
    (tree / "greeting").write_text("from the repository\n")
    snapshotter = Snapshotter(base / "snapshotter.sock", repository, base / "snapshotter")
    containerd = PrivateContainerd(base, base / "snapshotter.sock")
    with snapshotter, containerd:
        yield base, snapshotter, containerd


def snapshots(containerd: PrivateContainerd) -> dict[str, tuple[str, str]]:
    """`ctr snapshots ls`: key -> (parent, kind)."""
    rows = containerd.ctr("snapshots", "--snapshotter", PLUGIN, "ls").splitlines()[1:]
    found: dict[str, tuple[str, str]] = {}
    for row in rows:
        fields = row.split()
        found[fields[0]] = (fields[1], fields[2]) if len(fields) == 3 else ("", fields[1])
    return found


def test_remote_layer_is_adopted_and_mounted(rig: tuple[Path, Snapshotter,
                                                        PrivateContainerd]) -> None:
    import grpc

    base, snapshotter, containerd = rig
    client = SnapshotsClient(containerd.socket)
    try:
        with pytest.raises(grpc.RpcError) as answer:
            client.call("Prepare", key=f"extract-1 {CHAIN}", parent="", labels={
                "containerd.io/snapshot.ref": CHAIN,
                "containerd.io/snapshot/cri.layer-digest": LAYER,
                # containerd's garbage collector keeps only what something refers to (an
                # image's config does, for an unpacked image); this test holds a root
                "containerd.io/gc.root": "test"})
        assert answer.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info = client.call("Stat", key=CHAIN).info
        assert info.labels["containerd.io/snapshot/remote"] == "remote snapshot"
    finally:
        client.close()
    mounts = json.loads(containerd.ctr("snapshots", "--snapshotter", PLUGIN, "prepare",
                                       "--mounts", "rootfs-1", CHAIN))
    assert [m["Type"] for m in mounts] == ["overlay"]
    lowerdir = str(snapshotter.repository / layerfs_dir(LAYER))
    assert f"lowerdir={lowerdir}" in mounts[0]["Options"]
    target = base / "target"
    target.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", str(target), "-o",
                    ",".join(mounts[0]["Options"])], check=True, timeout=30)
    try:
        assert (target / "greeting").read_text() == "from the repository\n"
        (target / "written").write_text("local")
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=30)
    assert not (Path(lowerdir) / "written").exists()


def test_snapshots_survive_restarts(rig: tuple[Path, Snapshotter, PrivateContainerd]) -> None:
    _base, snapshotter, containerd = rig
    before = snapshots(containerd)
    assert before[CHAIN] == ("", "Committed") and before["rootfs-1"] == (CHAIN, "Active")
    mounts = containerd.ctr("snapshots", "--snapshotter", PLUGIN, "mounts", "/x", "rootfs-1")
    snapshotter.stop()
    snapshotter.start()
    containerd.stop()
    containerd.start()
    assert snapshots(containerd) == before
    assert containerd.ctr("snapshots", "--snapshotter", PLUGIN, "mounts", "/x",
                          "rootfs-1") == mounts
    containerd.ctr("snapshots", "--snapshotter", PLUGIN, "rm", "rootfs-1")
    assert "rootfs-1" not in snapshots(containerd)


def _image_archive(dest: Path) -> Path | None:
    """An OCI archive of the cached test image `base` alone (None when not built)."""
    from tests.images import images_cached, require_images

    if not images_cached():
        return None
    image = require_images().base
    manifest = json.loads((image.layout / "blobs" / "sha256" /
                           image.manifest_digest.split(":")[1]).read_bytes())
    digests = [image.manifest_digest, manifest["config"]["digest"],
               *(layer["digest"] for layer in manifest["layers"])]
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.manifest_digest,
        "size": len((image.layout / "blobs" / "sha256" /
                     image.manifest_digest.split(":")[1]).read_bytes()),
        "annotations": {"org.opencontainers.image.ref.name": "base"}}]}
    (dest / "index.json").write_text(json.dumps(index))
    archive = dest / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(dest / "index.json", "index.json")
        tar.add(image.layout / "oci-layout", "oci-layout")
        for digest in digests:
            hex_digest = digest.split(":")[1]
            tar.add(image.layout / "blobs" / "sha256" / hex_digest, f"blobs/sha256/{hex_digest}")
    return archive


def test_image_not_in_the_repository_runs(rig: tuple[Path, Snapshotter,
                                                     PrivateContainerd]) -> None:
    base, _snapshotter, containerd = rig
    archive = _image_archive(base)
    if archive is None:
        pytest.skip("the test images are not built (tests/images.py builds them)")
    containerd.ctr("images", "import", "--snapshotter", PLUGIN, "--base-name", "localhost/t",
                   str(archive), timeout=120)
    output = containerd.ctr("run", "--rm", "--snapshotter", PLUGIN, "localhost/t:base",
                            "run-1", "cat", "/etc/debian_version", timeout=60)
    assert output.strip()[:2].isdigit()
    local = [key for key, (_parent, kind) in snapshots(containerd).items()
             if kind == "Committed" and key != CHAIN]
    assert local  # the image's layer, unpacked by containerd into a local snapshot
