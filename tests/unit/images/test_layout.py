"""DUCC layout paths (fact sheet 14.1/14.2)."""

from __future__ import annotations

import hashlib
import posixpath

import pytest

from pycvmfs.images.layout import (
    LayoutError,
    digest_hex,
    flat_dir,
    layer_dir,
    layer_origin_file,
    layerfs_dir,
    metadata_file,
    nested_catalog_dirs,
    oci_chain_ids,
    public_link,
    public_name,
)

CONFIG = "sha256:" + "ab" * 32
L0, L1 = "sha256:" + "01" * 32, "sha256:" + "02" * 32


def test_flat_layer_and_metadata_paths() -> None:
    assert flat_dir(CONFIG) == f".flat/ab/{'ab' * 32}"
    assert layer_dir(L0) == f".layers/01/{'01' * 32}"
    name = public_name("registry.hub.docker.com", "library/centos", "centos7")
    assert metadata_file(name) == (".metadata/registry.hub.docker.com/library/centos:centos7/"
                                   "manifest.json")


def test_public_link_is_relative_and_lands_on_the_flat_image() -> None:
    name = public_name("registry.hub.docker.com", "library/centos", "centos7")
    link, target = public_link(name, CONFIG)
    assert link == "registry.hub.docker.com/library/centos:centos7"
    assert target == f"../../.flat/ab/{'ab' * 32}"
    assert posixpath.normpath(posixpath.join(posixpath.dirname(link), target)) == \
        flat_dir(CONFIG)
    port_link, port_target = public_link(public_name("127.0.0.1:5000", "x", "t"), CONFIG)
    assert port_target == f"../.flat/ab/{'ab' * 32}" and port_link == "127.0.0.1:5000/x:t"


def test_oci_chain_ids() -> None:
    """The OCI image spec's ChainID, as containerd and containers/storage compute it."""
    second = "sha256:" + hashlib.sha256(f"{L0} {L1}".encode()).hexdigest()
    assert oci_chain_ids([L0]) == [L0]
    assert oci_chain_ids([L0, L1]) == [L0, second]


@pytest.mark.parametrize("bad", ["sha256:" + "AB" * 32, "sha512:" + "ab" * 64, "../../etc",
                                 "sha256:" + "ab" * 31, ""])
def test_bad_digests_are_refused(bad: str) -> None:
    with pytest.raises(LayoutError):
        digest_hex(bad)


@pytest.mark.parametrize(("registry", "repository", "tag"), [
    ("..", "x", "t"), ("r", "../etc", "t"), ("r", "a//b", "t"), ("r", "x", "../t"),
    ("r", "/abs", "t"), ("r", "x", ""), ("r", "x", "a/b")])
def test_bad_names_are_refused(registry: str, repository: str, tag: str) -> None:
    with pytest.raises(LayoutError):
        public_name(registry, repository, tag)


def test_nested_catalog_dirs_cover_the_path_once() -> None:
    dirs = list(nested_catalog_dirs([flat_dir(CONFIG), layerfs_dir(L0), layerfs_dir(L1),
                                     flat_dir("sha256:" + "ac" * 32)]))
    assert dirs == [".flat", ".flat/ab", flat_dir(CONFIG), ".layers", ".layers/01",
                    layerfs_dir(L0), ".layers/02", layerfs_dir(L1), ".flat/ac",
                    flat_dir("sha256:" + "ac" * 32)]
    assert layerfs_dir(L0) == f"{layer_dir(L0)}/layerfs"
    assert layer_origin_file(L0) == f"{layer_dir(L0)}/.metadata/origin.json"
    for wrong in ["somewhere/else", layer_dir(L0), f"{layer_dir(L0)}/other"]:
        with pytest.raises(LayoutError):
            list(nested_catalog_dirs([wrong]))
