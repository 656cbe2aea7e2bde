"""The Podman additional image store (podmanStore/): its contents planned from the images,
and the working tree brought in line with the fewest changes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import shutil
from pathlib import Path

import pytest

from pycvmfs.errors import ImageError
from pycvmfs.images import layout
from pycvmfs.images.manifest import parse_manifest
from pycvmfs.images.podman_store import (
    STORE,
    StoreImage,
    big_data_file,
    link_name,
    plan_store,
    stored_images,
    sync_podman_store,
)
from pycvmfs.publisher.tree_walk import CATALOG_MARKER

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
CREATED = "2026-01-02T03:04:05Z"


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image_files(layers: list[str], *, foreign: tuple[int, ...] = (),
                tag: str = "x") -> tuple[bytes, bytes]:
    """(manifest bytes, config bytes) of an image with these layer names."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": CREATED,
                         "tag": tag, "rootfs": {"type": "layers", "diff_ids": [
                             digest("diff " + name) for name in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(
            config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": FOREIGN if i in foreign else OCI_LAYER,
                    "digest": digest("blob " + name), "size": 100 + i}
                   for i, name in enumerate(layers)]}).encode()
    return manifest, config


def store_image(names: tuple[str, ...], layers: list[str], **kwargs: object) -> StoreImage:
    manifest_raw, config_raw = image_files(layers, **kwargs)  # type: ignore[arg-type]
    manifest = parse_manifest(manifest_raw)
    diff_ids = tuple(json.loads(config_raw)["rootfs"]["diff_ids"])
    return StoreImage(names, manifest, config_raw, diff_ids)  # type: ignore[arg-type]


def add_image(work: Path, name: str, layers: list[str], *, trees: bool = True,
              **kwargs: object) -> None:
    """An ingested image in a working tree: its metadata and (optionally) layer trees."""
    manifest_raw, config_raw = image_files(layers, **kwargs)  # type: ignore[arg-type]
    metadata = work / layout.metadata_file(name)
    metadata.parent.mkdir(parents=True, exist_ok=True)
    metadata.write_bytes(manifest_raw)
    metadata.with_name("config.json").write_bytes(config_raw)
    for entry in json.loads(manifest_raw)["layers"]:
        if trees:
            (work / layout.layerfs_dir(entry["digest"])).mkdir(parents=True, exist_ok=True)


def chains(*names: str) -> list[str]:
    return layout.oci_chain_ids([digest("diff " + name) for name in names])


def test_layers_are_keyed_by_chain_id_with_lower_files_top_down() -> None:
    plan = plan_store([store_image(("r/a:1",), ["a", "b", "c"])])
    ids = [layout.digest_hex(c) for c in chains("a", "b", "c")]
    links = [link_name(c) for c in chains("a", "b", "c")]
    assert plan[f"overlay/{ids[0]}/link"].data == links[0].encode()
    assert f"overlay/{ids[0]}/lower" not in plan  # the bottom layer has none
    assert plan[f"overlay/{ids[2]}/lower"].data == f"l/{links[1]}:l/{links[0]}".encode()
    assert plan[f"overlay/l/{links[2]}"].target == f"../{ids[2]}/diff"
    layers = json.loads(plan["overlay-layers/layers.json"].data or b"")
    assert [layer["id"] for layer in layers] == ids
    assert "parent" not in layers[0] and layers[2]["parent"] == ids[1]
    assert layers[1]["compressed-diff-digest"] == digest("blob b")
    assert layers[1]["diff-digest"] == digest("diff b")
    assert all(len(link) == 26 and link.isupper() for link in links)


def test_diff_points_at_the_layer_tree_relative_to_the_repository_root() -> None:
    plan = plan_store([store_image(("r/a:1",), ["a"])])
    chain_hex = layout.digest_hex(chains("a")[0])
    target = plan[f"overlay/{chain_hex}/diff"].target or ""
    where = posixpath.normpath(posixpath.join(f"{STORE}/overlay/{chain_hex}", target))
    assert where == layout.layerfs_dir(digest("blob a"))
    assert not target.startswith("/")


def test_image_record_and_big_data_files() -> None:
    image = store_image(("127.0.0.1:5000/ns/x:1",), ["a", "b"])
    plan = plan_store([image])
    config_digest = image.manifest.config.digest
    config_hex = layout.digest_hex(config_digest)
    [record] = json.loads(plan["overlay-images/images.json"].data or b"")
    assert record["id"] == config_hex and record["names"] == ["127.0.0.1:5000/ns/x:1"]
    assert record["layer"] == layout.digest_hex(chains("a", "b")[-1])
    assert record["digest"] == image.manifest.digest and record["created"] == CREATED
    config_file = "=" + base64.b64encode(config_digest.encode()).decode()
    assert plan[f"overlay-images/{config_hex}/{config_file}"].data == image.config_raw
    assert plan[f"overlay-images/{config_hex}/manifest"].data == image.manifest.raw
    assert record["big-data-digests"]["manifest"] == image.manifest.digest
    assert plan["overlay-images/images.lock"].data == b""
    assert plan["overlay-layers/layers.lock"].data == b""


def test_big_data_names_are_escaped_as_containers_storage_does() -> None:
    assert big_data_file("manifest") == "manifest"
    assert big_data_file("a.b-c") == "=" + base64.b64encode(b"a.b-c").decode()
    assert big_data_file("sha256:00").startswith("=")


def test_shared_layers_and_names_are_one_record_each() -> None:
    base = store_image(("r/base:1",), ["a"])
    same_config = store_image(("r/base:latest",), ["a"])
    python = store_image(("r/python:1",), ["a", "b"])
    plan = plan_store([python, base, same_config])
    layers = json.loads(plan["overlay-layers/layers.json"].data or b"")
    assert len(layers) == 2  # layer a once, whichever image brought it
    records = json.loads(plan["overlay-images/images.json"].data or b"")
    assert sorted(tuple(r["names"]) for r in records) == [("r/base:1", "r/base:latest"),
                                                           ("r/python:1",)]
    assert plan == plan_store([same_config, base, python])  # the order given is irrelevant


def test_a_layer_reused_at_another_depth_gets_its_own_directory() -> None:
    """DUCC keys layer directories by diff ID, so `b` on `a` and `b` alone would share one
    directory and one parent; chain IDs keep them apart."""
    plan = plan_store([store_image(("r/ab:1",), ["a", "b"]), store_image(("r/b:1",), ["b"])])
    layers = json.loads(plan["overlay-layers/layers.json"].data or b"")
    assert len({layer["id"] for layer in layers}) == 3


def test_foreign_layers_are_left_out_of_the_stack(tmp_path: Path) -> None:
    add_image(tmp_path, "r/win:1", ["f", "a"], foreign=(0,))
    (tmp_path / layout.layerfs_dir(digest("blob f"))).rmdir()  # never has a tree
    [image] = stored_images(tmp_path)
    assert image.diff_ids == (digest("diff a"),)
    plan = plan_store([image])
    [layer] = json.loads(plan["overlay-layers/layers.json"].data or b"")
    assert layer["compressed-diff-digest"] == digest("blob a")


def test_images_without_every_layer_tree_are_left_out(tmp_path: Path) -> None:
    add_image(tmp_path, "r/full:1", ["a", "b"])
    add_image(tmp_path, "r/flat-only:1", ["c"], trees=False)
    (tmp_path / layout.METADATA / "r/broken:1").mkdir(parents=True)
    (tmp_path / layout.METADATA / "r/broken:1/manifest.json").write_text("{not json")
    manifest, config = image_files(["d"])
    sha512 = manifest.replace(b'"sha256:' + hashlib.sha256(config).hexdigest().encode(),
                              b'"sha512:' + hashlib.sha512(config).hexdigest().encode())
    (tmp_path / layout.METADATA / "r/sha512:1").mkdir(parents=True)
    (tmp_path / layout.METADATA / "r/sha512:1/manifest.json").write_bytes(sha512)
    (tmp_path / layout.METADATA / "r/sha512:1/config.json").write_bytes(config)
    assert [image.names for image in stored_images(tmp_path)] == [("r/full:1",)]


def test_recorded_layer_sizes_reach_the_layer_records(tmp_path: Path) -> None:
    add_image(tmp_path, "r/a:1", ["a"])
    info = tmp_path / layout.layer_info_file(digest("blob a"))
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps([{"diff-size": 12345}]))
    [layer] = json.loads(plan_store(stored_images(tmp_path))["overlay-layers/layers.json"]
                         .data or b"")
    assert layer["diff-size"] == 12345


def test_no_store_for_a_tree_without_layer_trees(tmp_path: Path) -> None:
    add_image(tmp_path, "r/flat-only:1", ["c"], trees=False)
    assert sync_podman_store(tmp_path) is False
    assert not (tmp_path / STORE).exists()


def test_sync_writes_the_plan_then_changes_nothing(tmp_path: Path) -> None:
    add_image(tmp_path, "r/a:1", ["a", "b"])
    assert sync_podman_store(tmp_path) is True
    store = tmp_path / STORE
    for directory in ("", "overlay", "overlay-images", "overlay-layers"):
        assert (store / directory / CATALOG_MARKER).is_file()
    plan = plan_store(stored_images(tmp_path))
    for relative, entry in plan.items():
        path = store / relative
        if entry.target is not None:
            assert os.readlink(path) == entry.target
        else:
            assert path.read_bytes() == entry.data
    before = {p: p.lstat().st_mtime_ns for p in store.rglob("*")}
    assert sync_podman_store(tmp_path) is False
    assert {p: p.lstat().st_mtime_ns for p in store.rglob("*")} == before
    chain_hex = layout.digest_hex(chains("a", "b")[-1])
    diff = store / "overlay" / chain_hex / "diff"
    assert diff.resolve() == (tmp_path / layout.layerfs_dir(digest("blob b"))).resolve()


def test_sync_forgets_removed_images_and_repairs_edits(tmp_path: Path) -> None:
    add_image(tmp_path, "r/a:1", ["a"])
    add_image(tmp_path, "r/b:1", ["a", "b"])
    sync_podman_store(tmp_path)
    store = tmp_path / STORE
    stray = store / "overlay" / "stray"
    stray.mkdir()
    (stray / "x").write_text("x")
    (store / "overlay-images/images.json").write_text("[]")
    shutil.rmtree(tmp_path / layout.METADATA / "r/b:1")
    assert sync_podman_store(tmp_path) is True
    assert not stray.exists()
    [record] = json.loads((store / "overlay-images/images.json").read_bytes())
    assert record["names"] == ["r/a:1"]
    b_chain = layout.digest_hex(chains("a", "b")[-1])
    assert not (store / "overlay" / b_chain).exists()
    assert sorted(p.name for p in (store / "overlay/l").iterdir()) == [
        link_name(chains("a")[0])]


def test_a_store_path_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    add_image(tmp_path, "r/a:1", ["a"])
    (tmp_path / STORE).symlink_to("/etc")
    with pytest.raises(ImageError, match="not a directory"):
        sync_podman_store(tmp_path)
