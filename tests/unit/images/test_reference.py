"""Image references: every accepted spelling, DUCC's Docker Hub naming, globs, errors."""

from __future__ import annotations

import pytest

from pycvmfs.errors import ImageError, PycvmfsError
from pycvmfs.images.reference import (
    HUB_API_HOST,
    HUB_REGISTRY,
    ImageReference,
    Transport,
    parse_reference,
    tag_matches,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("docker://127.0.0.1:5000/ns/name:t", "127.0.0.1:5000", "ns/name", "t", None),
    ("docker://localhost:5000/name", "localhost:5000", "name", "latest", None),
    ("docker://localhost/a/b/c:1.0", "localhost", "a/b/c", "1.0", None),
    (f"docker://ghcr.io/org/tool@{DIGEST}", "ghcr.io", "org/tool", None, DIGEST),
    (f"docker://ghcr.io/org/tool:v2@{DIGEST}", "ghcr.io", "org/tool", "v2", DIGEST),
    ("ghcr.io/org/tool:v2", "ghcr.io", "org/tool", "v2", None),
    ("registry.example.org:443/deep/name/space/img:x_y-z.1",
     "registry.example.org:443", "deep/name/space/img", "x_y-z.1", None),
    ("https://registry.hub.docker.com/library/centos:centos7",
     HUB_REGISTRY, "library/centos", "centos7", None),
    # Docker Hub shorthands, named as DUCC names them
    ("centos:centos7", HUB_REGISTRY, "library/centos", "centos7", None),
    ("ubuntu", HUB_REGISTRY, "library/ubuntu", "latest", None),
    ("docker.io/ubuntu:22.04", HUB_REGISTRY, "library/ubuntu", "22.04", None),
    ("index.docker.io/library/ubuntu:22.04", HUB_REGISTRY, "library/ubuntu", "22.04", None),
    ("docker://registry-1.docker.io/ubuntu", HUB_REGISTRY, "library/ubuntu", "latest", None),
    ("docker://registry.hub.docker.com/atlas/athena:21.0", HUB_REGISTRY, "atlas/athena",
     "21.0", None),
    ("someuser/tool:1", HUB_REGISTRY, "someuser/tool", "1", None),
    ("my__repo/a.b-c:1", HUB_REGISTRY, "my__repo/a.b-c", "1", None),
    ("docker://[::1]:5000/ns/name:t", "[::1]:5000", "ns/name", "t", None),
])
def test_registry_references(text: str, registry: str, repository: str, tag: str | None,
                             digest: str | None) -> None:
    ref = parse_reference(text)
    assert ref.transport is Transport.REGISTRY and ref.is_registry
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag,
                                                                    digest)
    assert ref.path is None


def test_public_path_is_ducc_layout() -> None:
    assert parse_reference("centos:centos7").public_path() == \
        "registry.hub.docker.com/library/centos:centos7"
    assert parse_reference("docker://127.0.0.1:5000/ns/name:t").public_path() == \
        "127.0.0.1:5000/ns/name:t"
    assert parse_reference(f"ghcr.io/o/t@{DIGEST}").public_path() == f"ghcr.io/o/t@{DIGEST}"
    assert parse_reference(f"ghcr.io/o/t:v@{DIGEST}").public_path() == "ghcr.io/o/t:v"


def test_api_host_and_manifest_reference() -> None:
    hub = parse_reference("ubuntu:22.04")
    assert hub.api_host == HUB_API_HOST and hub.manifest_reference == "22.04"
    pinned = parse_reference(f"docker://127.0.0.1:5000/ns/name:t@{DIGEST}")
    assert pinned.api_host == "127.0.0.1:5000" and pinned.manifest_reference == DIGEST
    assert pinned.is_local_host and not hub.is_local_host
    assert parse_reference("docker://[::1]:5000/a").is_local_host


def test_schemes() -> None:
    assert parse_reference("http://myreg.local:5000/a/b:1").scheme == "http"
    assert parse_reference("https://myreg.local/a/b:1").scheme == "https"
    assert parse_reference("docker://myreg.local/a/b:1").scheme is None
    assert parse_reference("myreg.local/a/b:1").scheme is None


@pytest.mark.parametrize("text", [
    "docker://127.0.0.1:5000/ns/name:t",
    f"docker://ghcr.io/org/tool:v2@{DIGEST}",
    "http://myreg.local:5000/a/b:1",
    "oci:/tmp/layout:t",
    "oci:/tmp/layout",
    "docker-archive:/tmp/a.tar",
    "docker-archive:/tmp/a.tar:@1",
    "docker-archive:/tmp/a.tar:registry.hub.docker.com/ns/name:t",
])
def test_round_trip(text: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


def test_oci_layout() -> None:
    ref = parse_reference("oci:/tmp/layout:v1.0")
    assert ref.transport is Transport.OCI_LAYOUT and not ref.is_registry
    assert (ref.path, ref.tag) == ("/tmp/layout", "v1.0")
    assert parse_reference("oci:rel/dir").tag is None
    with pytest.raises(ImageError, match="no registry name"):
        ref.public_path()


def test_docker_archive() -> None:
    plain = parse_reference("docker-archive:/tmp/a.tar")
    assert plain.transport is Transport.DOCKER_ARCHIVE
    assert (plain.path, plain.repository, plain.index) == ("/tmp/a.tar", "", None)
    named = parse_reference("docker-archive:/tmp/a.tar:ns/name:t")
    assert (named.registry, named.repository, named.tag) == (HUB_REGISTRY, "ns/name", "t")
    assert parse_reference("docker-archive:/tmp/a.tar:@3").index == 3


def test_globs_and_matches() -> None:
    ref = parse_reference("https://ghcr.io/example/tools:v2.*", allow_glob=True)
    assert ref.has_glob and ref.tag == "v2.*"
    assert ref.matches("v2.1") and ref.matches("v2.") and ref.matches("v2.10-rc1")
    assert not ref.matches("v3.1") and not ref.matches("v2") and not ref.matches("xv2.1")
    star = parse_reference("a/b:*", allow_glob=True)
    assert star.matches("anything") and star.matches("")
    plain = parse_reference("a/b:1.0")
    assert plain.matches("1.0") and not plain.matches("1x0")  # `.` is literal
    assert parse_reference("a/b").matches("latest")
    with pytest.raises(ImageError, match="glob"):
        ref.public_path()
    concrete = ref.with_tag("v2.3")
    assert concrete.tag == "v2.3" and concrete.public_path() == "ghcr.io/example/tools:v2.3"


@pytest.mark.parametrize(("pattern", "tag", "expected"), [
    ("*", "x", True), ("1.*", "1.2", True), ("1.*", "12", False), ("*-slim", "3.12-slim", True),
    ("a*b*c", "abc", True), ("a*b*c", "acb", False), ("[x]", "[x]", True), ("?", "a", False),
])
def test_tag_matches(pattern: str, tag: str, expected: bool) -> None:
    assert tag_matches(pattern, tag) is expected


def test_with_digest_and_with_tag() -> None:
    ref = parse_reference("ghcr.io/o/t:v")
    pinned = ref.with_digest(DIGEST)
    assert pinned.digest == DIGEST and pinned.tag == "v" and pinned.manifest_reference == DIGEST
    assert pinned.with_tag("w").digest is None
    with pytest.raises(ImageError):
        ref.with_digest("sha256:short")
    with pytest.raises(ImageError):
        ref.with_tag("bad tag")


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("docker://", "names no image"),
    ("docker://ghcr.io/Org/tool:1", "lowercase"),
    ("docker://ghcr.io/org//tool:1", "invalid repository component"),
    ("docker://ghcr.io/org/tool:", "invalid tag"),
    ("docker://ghcr.io/org/tool:-x", "invalid tag"),
    ("docker://ghcr.io/org/tool:" + "x" * 129, "invalid tag"),
    ("docker://ghcr.io/org/tool:v2.*", "only allowed in wishlists"),
    ("docker://ghcr.io/org/tool@sha256:abc", "invalid digest"),
    ("docker://ghcr.io/org/tool@md5:" + "ab" * 16, "invalid digest"),
    ("docker://ghcr.io/org/tool@" + DIGEST + "@" + DIGEST, "invalid digest"),
    ("docker://ghcr.io/", "no repository"),
    ("docker://bad_host.io:5000/a/b", "invalid registry host"),
    ("docker://host.io:99999999/a/b", "invalid registry host"),
    ("docker://ghcr.io/a b", "whitespace"),
    ("ftp://ghcr.io/a/b", "unsupported image transport"),
    ("oci-archive:/tmp/x.tar", "unsupported image transport"),
    ("containers-storage:x", "unsupported image transport"),
    ("oci:", "no OCI layout"),
    ("oci:/tmp/x:", "empty tag"),
    ("oci:/tmp/x:bad tag", "invalid OCI reference"),
    ("docker-archive:", "no archive file"),
    ("docker-archive:/a.tar:", "empty image name"),
    ("docker-archive:/a.tar:@x", "invalid image index"),
    (f"docker-archive:/a.tar:n/m@{DIGEST}", "not digest"),
    ("docker://ghcr.io/" + "a/" * 130 + "b", "longer than"),
    ("-leading/dash", "invalid repository component"),
])
def test_malformed(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        parse_reference(text)
    assert isinstance(caught.value, PycvmfsError)


def test_reference_is_a_frozen_value() -> None:
    ref = parse_reference("a/b:c")
    assert ref == ImageReference(Transport.REGISTRY, HUB_REGISTRY, "a/b", "c")
    assert hash(ref) == hash(parse_reference("docker.io/a/b:c"))
    with pytest.raises(AttributeError):
        ref.tag = "d"  # type: ignore[misc]
