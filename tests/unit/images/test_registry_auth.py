"""Registry client without a server: WWW-Authenticate parsing, a plain-http token realm
refused, the pure manifest/platform parsers and the verifying reader (the token flow, Basic
auth, digests and pagination against a stdlib fake:
tests/integration/test_registry_client_auth.py)."""

from __future__ import annotations

import json

import pytest

from pycvmfs.errors import HashMismatchError, ImageError, RegistryError
from pycvmfs.images.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Compression,
    ImageIndex,
    Manifest,
    Platform,
    VerifyingReader,
    parse_config,
    parse_manifest,
    select_platform,
)
from pycvmfs.images.registry import RegistryClient, parse_challenge
from tests.registry_samples import CONFIG, LAYER, MANIFEST, manifest_bytes, sha


# -- WWW-Authenticate --------------------------------------------------------------------
def test_parse_bearer_challenge() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.docker.io/token",'
                                'service="registry.docker.io",'
                                'scope="repository:library/ubuntu:pull,push"')
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {"realm": "https://auth.docker.io/token",
                                      "service": "registry.docker.io",
                                      "scope": "repository:library/ubuntu:pull,push"}


def test_parse_challenge_variants() -> None:
    assert parse_challenge('Basic realm="Registry Realm"').params["realm"] == "Registry Realm"
    unquoted = parse_challenge("bearer realm=https://x/t, service=svc")
    assert dict(unquoted.params) == {"realm": "https://x/t", "service": "svc"}
    escaped = parse_challenge(r'Bearer realm="a\"b", error="insufficient_scope"')
    assert escaped.params["realm"] == 'a"b' and escaped.params["error"] == "insufficient_scope"
    assert parse_challenge("Negotiate").scheme == "negotiate"
    for bad in ("", '"Bearer"', "Bearer realm=\"unterminated"):
        with pytest.raises(RegistryError):
            parse_challenge(bad)


def test_plain_http_realm_refused_for_remote_https_registry() -> None:
    client = RegistryClient("registry.invalid")
    challenge = parse_challenge('Bearer realm="http://auth.invalid/token"')
    with pytest.raises(RegistryError, match="plain http"):
        client._fetch_token(challenge, "repository:a:pull")
    client.close()


# -- pure parsers ---------------------------------------------------------------------------
@pytest.mark.parametrize(("layer_type", "compression", "foreign"), [
    ("application/vnd.oci.image.layer.v1.tar", Compression.NONE, False),
    ("application/vnd.oci.image.layer.v1.tar+gzip", Compression.GZIP, False),
    ("application/vnd.oci.image.layer.v1.tar+zstd", Compression.ZSTD, False),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression.GZIP, True),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression.GZIP, False),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression.GZIP, True),
])
def test_layer_media_types(layer_type: str, compression: Compression, foreign: bool) -> None:
    parsed = parse_manifest(manifest_bytes(DOCKER_MANIFEST, layer_type))
    assert isinstance(parsed, Manifest) and parsed.media_type == DOCKER_MANIFEST
    assert parsed.config.digest == sha(CONFIG)
    (layer,) = parsed.layers
    assert (layer.compression, layer.foreign, layer.size) == (compression, foreign, len(LAYER))


@pytest.mark.parametrize(("raw", "message"), [
    (b"not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"schemaVersion": 1, "fsLayers": []}', "schema-1"),
    (manifest_bytes(layer_type="application/vnd.oci.image.layer.v1.tar+encrypted"),
     "unsupported media type"),
    (MANIFEST.replace(b"oci.image.config.v1+json", b"cncf.helm.config.v1+json"),
     "not a container image"),
    (MANIFEST.replace(sha(LAYER).encode(), b"sha256:1234"), "invalid or unsupported digest"),
    (b'{"mediaType": "' + OCI_MANIFEST.encode() + b'", "config": {}}', "size"),
    (b'{"mediaType": "' + OCI_INDEX.encode() + b'"}', "manifests"),
    (b'{"mediaType": "text/plain"}', "unsupported manifest media type"),
])
def test_bad_manifests(raw: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_manifest(raw)


def index_of(*platforms: str, media_type: str = OCI_INDEX) -> ImageIndex:
    entries = []
    for i, text in enumerate(platforms):
        os_name, arch, *variant = text.split("/")
        spec = {"os": os_name, "architecture": arch}
        if variant:
            spec["variant"] = variant[0]
        entries.append({"mediaType": OCI_MANIFEST, "size": i,
                        "digest": "sha256:" + f"{i:x}" * 64, "platform": spec})
    parsed = parse_manifest(json.dumps({"schemaVersion": 2, "mediaType": media_type,
                                        "manifests": entries}).encode())
    assert isinstance(parsed, ImageIndex)
    return parsed


@pytest.mark.parametrize(("offered", "wanted", "chosen"), [
    (("linux/arm64", "linux/amd64"), "linux/amd64", 1),
    (("linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"), "linux/arm64", 2),
    (("linux/arm/v6", "linux/arm/v7"), "linux/arm", 1),  # arm means arm/v7
    (("linux/arm/v6", "linux/arm/v7"), "linux/arm/v6", 0),
    (("linux/arm/v6",), "linux/arm/v7", 0),  # v7 runs v6
    (("linux/arm/v5", "linux/arm/v6"), "linux/arm", 1),  # the newest that runs
    (("linux/aarch64",), "linux/arm64/v8", 0),
    (("unknown/unknown", "linux/x86_64"), "linux/amd64", 1),
    (("linux/amd64/v3", "windows/amd64"), "linux/amd64", 0),
])
def test_select_platform(offered: tuple[str, ...], wanted: str, chosen: int) -> None:
    index = index_of(*offered, media_type=DOCKER_MANIFEST_LIST)
    assert select_platform(index, Platform.parse(wanted)) == index.manifests[chosen]


def test_select_platform_missing() -> None:
    with pytest.raises(ImageError, match="no manifest for linux/s390x.*offered: linux/amd64"):
        select_platform(index_of("linux/amd64"), Platform.parse("linux/s390x"))
    with pytest.raises(ImageError, match="no manifest"):
        select_platform(index_of("linux/arm/v7"), Platform.parse("linux/arm/v6"))
    with pytest.raises(ImageError, match="invalid platform"):
        Platform.parse("linux")


def test_parse_config() -> None:
    config = parse_config(CONFIG, sha(CONFIG))
    assert config.env == ("PATH=/bin",) and config.cmd == ("/bin/sh",)
    assert config.entrypoint is None and config.working_dir == "/w"
    assert config.diff_ids == (sha(b"layer"),) and config.hex == sha(CONFIG)[7:]
    with pytest.raises(ImageError):
        parse_config(b'{"config": {"Env": "PATH=/bin"}}', sha(b""))


def test_verifying_reader_limits() -> None:
    import io

    reader = VerifyingReader(io.BytesIO(LAYER), sha(LAYER), size=len(LAYER))
    assert reader.read() == LAYER and reader.verified
    with pytest.raises(HashMismatchError):
        VerifyingReader(io.BytesIO(LAYER), sha(b"x")).read()
    with pytest.raises(ImageError, match="over the limit"):
        VerifyingReader(io.BytesIO(LAYER), sha(LAYER), max_bytes=10).read()
    with pytest.raises(ImageError, match="over the limit"):
        VerifyingReader(io.BytesIO(LAYER), sha(LAYER), size=100, max_bytes=10)
    partial = VerifyingReader(io.BytesIO(LAYER), sha(LAYER))
    partial.read(5)
    partial.verify_rest()
    assert partial.verified and partial.bytes_read == len(LAYER)


def test_client_refuses_images_of_other_registries() -> None:
    with RegistryClient("127.0.0.1:5000") as client, \
            pytest.raises(ImageError, match="not an image of the registry"):
        client.get_manifest("docker://ghcr.io/a/b:c")
    with RegistryClient.for_reference("centos:7") as hub:
        assert hub.base_url == "https://registry-1.docker.io"
    with RegistryClient.for_reference("http://myreg.example:5000/a:b") as plain:
        assert plain.base_url == "http://myreg.example:5000"
    with RegistryClient("localhost:5000") as local:
        assert local.base_url == "http://localhost:5000"
    with pytest.raises(ImageError, match="not a registry reference"):
        RegistryClient.for_reference("oci:/tmp/x")


def test_values_are_hashable() -> None:
    parsed = parse_manifest(MANIFEST)
    assert isinstance(parsed, Manifest)
    assert hash(parsed) == hash(parse_manifest(MANIFEST))
    assert hash(parse_config(CONFIG, sha(CONFIG)))
