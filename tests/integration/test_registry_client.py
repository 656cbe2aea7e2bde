"""The registry client and the local image sources against real parts: Debian's
`docker-registry` on 127.0.0.1, images built with umoci and copied with skopeo (OCI and
Docker schema-2 media types, a multi-arch index, Basic auth, OCI layouts and
`docker save`-style archives written by skopeo)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycvmfs.errors import (
    HashMismatchError,
    ImageError,
    IntegrityError,
    NotFoundError,
    RegistryError,
)
from pycvmfs.images.archives import DockerArchiveImage, OciLayoutImage, open_local_image
from pycvmfs.images.manifest import (
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Compression,
    Manifest,
    Platform,
)
from pycvmfs.images.reference import parse_reference
from pycvmfs.images.registry import RegistryClient
from tests.registry import (
    NEEDS_REGISTRY_TOOLS,
    DockerRegistry,
    build_oci_image,
    htpasswd_line,
    oci_index,
    skopeo_copy,
)

pytestmark = [NEEDS_REGISTRY_TOOLS]

TAGS = ["t", "t2", "t3", "t4"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Setup:
    registry: DockerRegistry
    layout: Path
    work: Path

    def ref(self, name: str) -> str:
        return f"docker://{self.registry.host}/{name}"


def make_rootfs(root: Path, marker: str) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(f'NAME="pycvmfs test {marker}"\n')
    (root / "hello.txt").write_text("hello\n")
    (root / "link").symlink_to("hello.txt")
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho " + marker.encode() + b"\n")
    (root / "bin/tool").chmod(0o755)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("images")
    layout = work / "layout"
    build_oci_image(layout, "t", make_rootfs(work / "rootfs-a", "a"), env=["FOO=bar"])
    build_oci_image(layout, "arm", make_rootfs(work / "rootfs-arm", "arm"),
                    architecture="arm64")
    build_oci_image(layout, "tamper", make_rootfs(work / "rootfs-t", "tamper"))
    with DockerRegistry() as registry:
        for tag in TAGS:
            registry.push(layout, "t", f"ns/name:{tag}")
        registry.push(layout, "t", "ns/v2:t", v2s2=True)
        registry.push(layout, "tamper", "ns/tamper:t")
        registry.push(layout, "t", "ns/multi:amd64")
        registry.push(layout, "arm", "ns/multi:arm64")
        entries = [(registry.manifest_bytes("ns/multi", tag, OCI_MANIFEST), OCI_MANIFEST,
                    platform) for tag, platform in (("arm64", "linux/arm64/v8"),
                                                    ("amd64", "linux/amd64"))]
        registry.put_manifest("ns/multi", "latest", oci_index(entries), OCI_INDEX)
        yield Setup(registry, layout, work)


@pytest.fixture(scope="module")
def client(setup: Setup) -> Iterator[RegistryClient]:
    with RegistryClient(setup.registry.host) as client:
        yield client


def layer_files(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return {m.name.lstrip("./"): m for m in tar.getmembers()}


def test_oci_manifest_config_and_blob(setup: Setup, client: RegistryClient,
                                      tmp_path: Path) -> None:
    client.ping()
    ref = parse_reference(setup.ref("ns/name:t"))
    manifest = client.get_manifest(ref)
    served = setup.registry.manifest_bytes("ns/name", "t", OCI_MANIFEST)
    assert manifest.raw == served and manifest.digest == sha(served)
    assert manifest.media_type == OCI_MANIFEST and manifest.index_digest is None
    (layer,) = manifest.layers
    assert layer.compression is Compression.GZIP and not layer.foreign
    config = client.get_config(ref.repository, manifest)
    assert config.digest == manifest.config.digest
    assert "FOO=bar" in config.env and config.cmd == ("/bin/sh",)
    assert (config.os, config.architecture) == ("linux", "amd64")
    assert len(config.diff_ids) == 1
    target = tmp_path / "layer.tar.gz"
    assert client.get_blob(ref.repository, layer.digest, target, size=layer.size) == layer.size
    blob = target.read_bytes()
    assert sha(blob) == layer.digest
    assert sha(gzip.decompress(blob)) == config.diff_ids[0]
    files = layer_files(blob)
    assert files["link"].issym() and files["link"].linkname == "hello.txt"
    assert files["bin/tool"].mode & 0o777 == 0o755
    # pinned by digest: the same manifest; the image source interface too
    pinned = client.get_manifest(ref.with_digest(manifest.digest))
    assert pinned.raw == manifest.raw
    image = client.open_image(ref.with_digest(manifest.digest))
    with image.open_blob(layer.digest) as reader:
        assert reader.read() == blob and reader.verified


def test_docker_schema2_manifest(setup: Setup, client: RegistryClient) -> None:
    manifest = client.get_manifest(setup.ref("ns/v2:t"))
    assert manifest.media_type == DOCKER_MANIFEST
    assert [layer.media_type for layer in manifest.layers] == [DOCKER_LAYER]
    assert client.get_config("ns/v2", manifest).cmd == ("/bin/sh",)
    oci = client.get_manifest(setup.ref("ns/name:t"))
    assert manifest.layers[0].digest == oci.layers[0].digest


def test_unknown_image_and_digest(setup: Setup, client: RegistryClient) -> None:
    with pytest.raises(RegistryError) as caught:
        client.get_manifest(setup.ref("ns/name:nope"))
    assert caught.value.status == 404
    with pytest.raises(RegistryError) as caught:
        client.get_manifest(setup.ref("ns/name@" + sha(b"not there")))
    assert caught.value.status == 404


def test_tampered_blob_on_disk_is_detected(setup: Setup, client: RegistryClient,
                                           tmp_path: Path) -> None:
    manifest = client.get_manifest(setup.ref("ns/tamper:t"))
    layer = manifest.layers[-1]
    stored = setup.registry.blob_file(layer.digest)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the digest can tell
    stored.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError):
        client.get_blob("ns/tamper", layer.digest, tmp_path / "layer", size=layer.size)
    with pytest.raises(ImageError, match="over the limit"):
        client.get_blob("ns/tamper", layer.digest, tmp_path / "layer", max_bytes=16)
    assert list(tmp_path.iterdir()) == []  # partial files removed


def test_tag_listing(client: RegistryClient) -> None:
    # distribution 2.8 ignores `n` on tags/list (it pages only `_catalog`) and does not sort:
    # the `Link` pagination itself is exercised against the fake in test_registry_auth.py
    assert sorted(client.list_tags("ns/name")) == sorted(TAGS)
    assert sorted(client.list_tags("ns/name", page_size=1)) == sorted(TAGS)
    assert sorted(client.list_tags("ns/multi", page_size=2)) == ["amd64", "arm64", "latest"]
    wish = parse_reference("docker://127.0.0.1:1/ns/name:t*", allow_glob=True)
    assert sorted(t for t in client.list_tags("ns/name") if wish.matches(t)) == TAGS
    with pytest.raises(RegistryError) as caught:
        client.list_tags("ns/unknown")
    assert caught.value.status == 404


def test_multi_arch_index(setup: Setup, client: RegistryClient) -> None:
    index = client.get_index_or_manifest(setup.ref("ns/multi:latest"))
    assert not isinstance(index, Manifest) and len(index.manifests) == 2
    amd64 = client.get_manifest(setup.ref("ns/multi:latest"))
    assert amd64.index_digest == index.digest
    assert amd64.raw == setup.registry.manifest_bytes("ns/multi", "amd64", OCI_MANIFEST)
    arm64 = client.get_manifest(setup.ref("ns/multi:latest"), Platform.parse("linux/arm64"))
    assert arm64.raw == setup.registry.manifest_bytes("ns/multi", "arm64", OCI_MANIFEST)
    assert client.get_config("ns/multi", arm64).architecture == "arm64"
    with pytest.raises(ImageError, match="no manifest for linux/s390x"):
        client.get_manifest(setup.ref("ns/multi:latest"), Platform.parse("linux/s390x"))


def test_basic_auth_registry(setup: Setup, tmp_path: Path) -> None:
    if htpasswd_line("u", "p") is None:
        pytest.skip("neither python bcrypt nor htpasswd (apache2-utils) is installed")
    with DockerRegistry(users={"alice": "s3cret"}) as registry:
        registry.push(setup.layout, "t", "ns/private:t")
        ref = f"docker://{registry.host}/ns/private:t"
        with RegistryClient(registry.host) as anonymous, \
                pytest.raises(RegistryError, match="credentials") as caught:
            anonymous.get_manifest(ref)
        assert caught.value.status == 401
        with RegistryClient(registry.host, username="alice", password="wrong") as wrong, \
                pytest.raises(RegistryError):
            wrong.get_manifest(ref)
        with RegistryClient.for_reference(ref, username="alice", password="s3cret") as client:
            client.ping()
            image = client.open_image(ref)
            assert client.list_tags("ns/private") == ["t"]
            layer = image.manifest.layers[0]
            assert client.get_blob("ns/private", layer.digest, tmp_path / "l") == layer.size


def test_oci_layout_source(setup: Setup, client: RegistryClient, tmp_path: Path) -> None:
    # the layout umoci built, read directly: several images, so a tag is required
    with pytest.raises(ImageError, match="holds 3 images"):
        OciLayoutImage(setup.layout)
    with pytest.raises(NotFoundError, match="nope"):
        OciLayoutImage(setup.layout, "nope")
    direct = OciLayoutImage(setup.layout, "t")
    registry_manifest = client.get_manifest(setup.ref("ns/name:t"))
    assert direct.manifest.raw == registry_manifest.raw  # skopeo pushed it unchanged
    assert direct.config.env == client.get_config("ns/name", registry_manifest).env
    # a copy from the registry, with the multi-arch index inside
    copy = tmp_path / "copy"
    skopeo_copy(setup.ref("ns/name:t"), f"oci:{copy}:v1")
    skopeo_copy(setup.ref("ns/multi:latest"), f"oci:{copy}:multi", all_images=True)
    with open_local_image(f"oci:{copy}:v1") as image:
        assert image.manifest.digest == registry_manifest.digest
        layer = image.manifest.layers[0]
        with image.open_blob(layer.digest) as reader:
            assert sha(reader.read()) == layer.digest and reader.verified
    multi = OciLayoutImage(copy, "multi", Platform.parse("linux/arm64"))
    assert multi.config.architecture == "arm64" and multi.manifest.index_digest is not None
    # a tampered blob is caught at the end of its stream
    blob = multi.blob_path(multi.manifest.layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with multi.open_blob(multi.manifest.layers[0].digest) as reader, \
            pytest.raises(HashMismatchError):
        reader.read()
    config_blob = multi.blob_path(multi.manifest.config.digest)
    config_blob.chmod(0o644)
    config_blob.write_bytes(config_blob.read_bytes() + b" ")
    with pytest.raises(IntegrityError):
        OciLayoutImage(copy, "multi", Platform.parse("linux/arm64"))


def test_docker_archive_source(setup: Setup, client: RegistryClient, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    skopeo_copy(setup.ref("ns/name:t"), f"docker-archive:{archive}:ns/name:t")
    registry_manifest = client.get_manifest(setup.ref("ns/name:t"))
    registry_config = client.get_config("ns/name", registry_manifest)
    for image in (DockerArchiveImage(archive), open_local_image(f"docker-archive:{archive}"),
                  open_local_image(f"docker-archive:{archive}:ns/name:t"),
                  open_local_image(f"docker-archive:{archive}:docker.io/ns/name:t"),
                  open_local_image(f"docker-archive:{archive}:@0")):
        with image:
            assert isinstance(image, DockerArchiveImage)
            assert image.config.digest == registry_config.digest
            assert image.manifest.media_type == DOCKER_MANIFEST
            assert json.loads(image.manifest.raw)["config"]["digest"] == registry_config.digest
            (layer,) = image.manifest.layers
            assert layer.compression is Compression.NONE
            assert layer.digest == registry_config.diff_ids[0]  # uncompressed: the diff_id
            with image.open_blob(layer.digest) as reader:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    names = {m.name.lstrip("./") for m in tar}
                reader.verify_rest()
                assert "hello.txt" in names and reader.verified
    with pytest.raises(NotFoundError):
        open_local_image(f"docker-archive:{archive}:ns/other:t")
    with pytest.raises(NotFoundError):
        open_local_image(f"docker-archive:{archive}:@1")


def test_docker_save_layouts_and_tampering(setup: Setup, tmp_path: Path) -> None:
    """Classic `docker save` (`<id>/layer.tar`), Docker 25+ (`blobs/sha256/<hex>`), and a
    layer that does not match its diff_id; the archives are rewritten from skopeo's output."""
    source = tmp_path / "skopeo.tar"
    skopeo_copy(f"oci:{setup.layout}:t", f"docker-archive:{source}:ns/name:t")
    with tarfile.open(source) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(members["manifest.json"])
    layer_name, config_name = manifest[0]["Layers"][0], manifest[0]["Config"]
    layer, config = members[layer_name], members[config_name]

    def write(path: Path, layer_bytes: bytes, new_layer: str, new_config: str) -> Path:
        entries = {k: v for k, v in members.items() if k not in (layer_name, config_name)}
        entries[new_layer] = layer_bytes
        entries[new_config] = config
        entries["manifest.json"] = json.dumps(
            [{**manifest[0], "Config": new_config, "Layers": [new_layer]}]).encode()
        with tarfile.open(path, "w") as out:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
        return path

    blobs = (f"blobs/sha256/{sha(layer)[7:]}", f"blobs/sha256/{sha(config)[7:]}")
    for archive in (write(tmp_path / "classic.tar", layer, "0123abcd/layer.tar", config_name),
                    write(tmp_path / "docker25.tar", layer, *blobs)):
        with DockerArchiveImage(archive, "ns/name:t") as image:
            (only,) = image.manifest.layers
            assert only.digest == sha(layer) and image.config.digest == sha(config)
            with image.open_blob(only.digest) as reader:
                assert reader.read() == layer and reader.verified
    tampered = layer[:-1] + bytes([layer[-1] ^ 1])
    with DockerArchiveImage(write(tmp_path / "t1.tar", tampered, "0123abcd/layer.tar",
                                  config_name)) as image, \
            image.open_blob(image.manifest.layers[0].digest) as reader, \
            pytest.raises(HashMismatchError):
        reader.read()
    with DockerArchiveImage(write(tmp_path / "t2.tar", tampered, *blobs)) as image, \
            image.open_blob(image.manifest.layers[0].digest) as reader, \
            pytest.raises(HashMismatchError):
        reader.read()
    with pytest.raises(HashMismatchError, match="config"):  # config not named by its hash
        DockerArchiveImage(write(tmp_path / "t3.tar", layer, blobs[0],
                                 f"blobs/sha256/{'0' * 64}"))
    broken = tmp_path / "broken.tar"
    shutil.copy(source, broken)
    with open(broken, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(ImageError):
        DockerArchiveImage(broken)
