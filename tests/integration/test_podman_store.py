"""Podman runs ingested images from the repository's additional image store (`podmanStore/`)
on a pycvmfs mount, with no pull; removing an image from the repository removes it from the
store; and the root filesystem an image's container sees is the same through Podman (layer
trees), containerd with the pycvmfs snapshotter (layer trees) and `pycvmfs run` (the flat
tree), apart from what each runtime mounts."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycvmfs.images import layout
from pycvmfs.images.podman_store import STORE
from pycvmfs.images.removal import remove_images
from pycvmfs.images.singularity import BIND_TARGETS, MOUNT_POINTS, SING_DIR, SYMLINKS
from pycvmfs.publisher.publish import PublishOptions
from tests import containerd
from tests.ingested import IngestedImages
from tests.mounting import cli_mount
from tests.podman import NEEDS_PODMAN, PrivatePodman
from tests.publish_helpers import Keys
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX, NEEDS_PODMAN]

# Lists the container's root filesystem (path, type, mode, owner, size or link target),
# leaving out what the runtime mounts: each mount point but / is printed as "mount PATH"
# instead, and the test leaves out, from every listing, what any runtime mounted.
LISTING = r"""
import os, stat, sys
skip = {"/proc", "/sys", "/dev"} | set(sys.argv[1:])
for line in open("/proc/self/mountinfo"):
    point = line.split()[4].replace("\\040", " ")
    if point != "/":
        skip.add(point)
        print("mount", point)
def walk(directory):
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if path in skip:
            continue
        st = os.lstat(path)
        head = f"{path} {stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid}"
        if stat.S_ISDIR(st.st_mode):
            print(head)
            walk(path)
        elif stat.S_ISLNK(st.st_mode):
            print(head, "->", os.readlink(path))
        else:
            print(head, st.st_size if stat.S_ISREG(st.st_mode) else st.st_rdev)
walk("/")
"""
# The flat tree also holds Apptainer's files and the mount points it needs (ingest writes
# them, images/singularity.py); the layer trees do not.
FLAT_ONLY = tuple(f"/{p}" for p in (SING_DIR, *MOUNT_POINTS, *BIND_TARGETS, *SYMLINKS))


@dataclass(frozen=True)
class Served:
    mnt: Path
    base: Path
    options: dict[str, str]


def _mount(keys: Keys, storage: Path, base: Path) -> Iterator[Served]:
    with Nginx() as server:
        mnt = base / "mnt"
        mnt.mkdir()
        options = {"CVMFS_SERVER_URL": server.publish(f"cvmfs/{keys.fqrn}", storage),
                   "CVMFS_HTTP_PROXY": "DIRECT", "CVMFS_PUBLIC_KEY": str(keys.public_key_file),
                   "CVMFS_CACHE_BASE": str(base / "cache")}
        with cli_mount(keys.fqrn, mnt, env=dict(os.environ), options=options):
            yield Served(mnt, base, options)


@pytest.fixture
def served(ingested_images: IngestedImages, keys: Keys) -> Iterator[Served]:
    """The ingested repository, mounted with pycvmfs."""
    with shared_scratch("pycvmfs-podman-") as base:
        yield from _mount(keys, ingested_images.storage, base)


def _blob_requests(log: str) -> list[str]:
    return [line for line in log.splitlines() if '"GET ' in line and "/blobs/" in line]


def test_podman_runs_from_the_store_with_no_pull(ingested_images: IngestedImages,
                                                 served: Served) -> None:
    python = ingested_images.name("python")
    store = served.mnt / STORE
    assert (store / "overlay-images" / "images.json").is_file()
    before = len(ingested_images.registry.log())
    with PrivatePodman(served.base, store) as podman:
        listed = podman.podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}")
        names = dict(line.split(" ", 1) for line in listed.stdout.splitlines())
        assert set(names) == {python, ingested_images.name("base")}
        assert "MB" in names[python]  # the layer sizes ingest recorded
        done = podman.run(python, "python3", "-c", "print('podman', 6 * 7)")
        assert done.stdout.strip() == "podman 42"
    assert _blob_requests(ingested_images.registry.log()[before:]) == []


def test_each_layer_tree_records_its_diff_id_and_size(ingested_images: IngestedImages,
                                                      served: Served) -> None:
    """DUCC's `.metadata/layers.json` beside each layer tree: what the store's sizes are."""
    image = ingested_images.images.python
    diff_ids = image.config["rootfs"]["diff_ids"]  # type: ignore[index]
    for digest, diff_id in zip(image.layer_digests, diff_ids, strict=True):
        blob = image.layout / "blobs" / "sha256" / digest.split(":")[1]
        with gzip.open(blob) as stream:
            size = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))
        [info] = json.loads((served.mnt / layout.layer_info_file(digest)).read_bytes())
        assert info == {"id": diff_id.split(":")[1], "compressed-diff-digest": digest,
                        "diff-size": size, "diff-digest": diff_id}


def test_a_removed_image_leaves_the_store(ingested_images: IngestedImages,
                                          keys: Keys) -> None:
    base_name, python = ingested_images.name("base"), ingested_images.name("python")
    with shared_scratch("pycvmfs-podman-removal-") as scratch:
        storage = ingested_images.copy_storage(scratch / "storage")
        work = scratch / "work"
        shutil.copytree(ingested_images.work, work, symlinks=True)
        result = remove_images([base_name], PublishOptions(keys.fqrn, work, storage,
                                                           keys.keys_dir))
        assert result.removed == [base_name] and result.published is not None
        for served in _mount(keys, storage, scratch):
            with PrivatePodman(scratch, served.mnt / STORE) as podman:
                listed = podman.podman("images", "--format", "{{.Repository}}:{{.Tag}}")
                assert listed.stdout.split() == [python]
                gone = podman.run(base_name, "true", check=False)
                assert gone.returncode != 0 and "image not known" in gone.stderr
                # python's bottom layer is base's layer: still in the store, still runs
                done = podman.run(python, "python3", "-c", "print('still here')")
                assert done.stdout.strip() == "still here"


def _mount_points(*outputs: str) -> tuple[str, ...]:
    return tuple(sorted({line.split(" ", 1)[1] for output in outputs
                         for line in output.splitlines() if line.startswith("mount ")}))


def _listing(output: str, skip: tuple[str, ...]) -> set[str]:
    return {line for line in output.splitlines() if not line.startswith("mount ")
            and not any(line.startswith((f"{p} ", f"{p}/")) for p in skip)}


def test_root_filesystems_are_alike_in_every_runtime(ingested_images: IngestedImages,
                                                     keys: Keys, served: Served) -> None:
    """Podman and containerd stack the layer trees; `pycvmfs run` uses the flat tree."""
    if (reason := containerd.missing_requirement()) is not None:
        pytest.skip(reason)
    python = ingested_images.name("python")
    with PrivatePodman(served.base, served.mnt / STORE) as podman:
        by_podman = podman.run(python, "python3", "-c", LISTING, *FLAT_ONLY).stdout
    with containerd.Snapshotter(served.base / "snapshotter.sock", served.mnt,
                                served.base / "snapshotter"), \
            containerd.PrivateContainerd(served.base,
                                         served.base / "snapshotter.sock") as daemon:
        pulled = containerd.snapshotter_pull(python, daemon, served.mnt)
        assert pulled.returncode == 0, pulled.stderr
        by_containerd = daemon.ctr("run", "--rm", "--snapshotter", containerd.PLUGIN, python,
                                   "listing", "python3", "-c", LISTING, *FLAT_ONLY,
                                   timeout=120)
    flat = subprocess.run(
        [sys.executable, "-m", "pycvmfs", "run", "--mount", str(served.mnt), "--runner",
         "bwrap", *[arg for k, v in served.options.items() for arg in ("-o", f"{k}={v}")],
         f"{keys.fqrn}/{python}", "--", "python3", "-c", LISTING, *FLAT_ONLY],
        capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, PYCVMFS_CONFIG_ROOT="/nonexistent"))
    assert flat.returncode == 0, flat.stderr
    skip = _mount_points(by_podman, by_containerd, flat.stdout)
    listings = {"podman": _listing(by_podman, skip), "containerd": _listing(by_containerd, skip),
                "pycvmfs run": _listing(flat.stdout, skip)}
    assert len(listings["podman"]) > 5000  # the whole image, python3 included
    assert any(line.startswith("/usr/bin/python3") for line in listings["podman"])
    for runtime in ("containerd", "pycvmfs run"):
        differ = sorted(listings["podman"] ^ listings[runtime])
        assert not differ, f"podman vs {runtime}: {differ[:20]}"
