"""Container image references: parse, normalise, print (pure; no I/O).

Accepted forms (`parse_reference`):

    docker://HOST[:PORT]/NS/NAME[:TAG][@sha256:HEX]   a registry (API v2)
    https://HOST/NS/NAME:TAG, http://HOST/...         DUCC wishlist style; http:// asks for http
    HOST[:PORT]/NS/NAME:TAG, NS/NAME, NAME:TAG        bare; Docker Hub when no host is given
    oci:DIR[:TAG]                                     an OCI image layout directory
    docker-archive:FILE[:NAME:TAG | :@INDEX]          a `docker save` tarball

The first path component is a host when it holds a `.` or a `:`, is `localhost` or an IPv6
literal in brackets (Docker's rule). Docker Hub is named as DUCC names it: every spelling
(`docker.io`, `index.docker.io`, `registry-1.docker.io`, none) becomes
`registry.hub.docker.com`, and a one-component repository gets `library/` — so
`centos:centos7` has the public path `registry.hub.docker.com/library/centos:centos7`
(fact sheet 14.1). Requests to the Hub go to `registry-1.docker.io` (`api_host`).

A reference without tag and digest means `:latest`. With `allow_glob=True` the tag may
hold `*` (wishlists, fact sheet 14.4); `ImageReference.matches(tag)` tests a concrete tag.

Like skopeo, `oci:` and `docker-archive:` split the path at the first `:` after the
transport name, so those paths cannot contain `:`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass

from pycvmfs.errors import ImageError

HUB_REGISTRY = "registry.hub.docker.com"  # the DUCC / unpacked.cern.ch spelling
HUB_API_HOST = "registry-1.docker.io"  # where the Hub's v2 API answers
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io",
                         "registry.hub.docker.com", "hub.docker.com"})
DEFAULT_TAG = "latest"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
OTHER_TRANSPORTS = frozenset({"oci-archive", "dir", "containers-storage", "docker-daemon",
                              "ostree", "sif", "tarball"})  # skopeo's, which we do not read
MAX_REPOSITORY_LENGTH = 255  # distribution/reference NameTotalLengthMax

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_GLOB_TAG_RE = re.compile(r"[\w*][\w.*-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")


class Transport(enum.StrEnum):
    """Where an image comes from; the values are the skopeo transport names."""

    REGISTRY = "docker"
    OCI_LAYOUT = "oci"
    DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True, slots=True)
class ImageReference:
    """One image. For `REGISTRY` `registry` and `repository` are set (normalised); for
    `OCI_LAYOUT` `path` and maybe `tag`; for `DOCKER_ARCHIVE` `path` and, when the image
    inside the archive is named, `registry`/`repository`/`tag` of that name or `index`.

    `scheme` is "http" or "https" when the text said so (`http://...`), else None: the
    client picks https, or http for loopback hosts.
    """

    transport: Transport
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: str | None = None
    index: int | None = None
    scheme: str | None = None

    @property
    def is_registry(self) -> bool:
        return self.transport is Transport.REGISTRY

    @property
    def api_host(self) -> str:
        """host[:port] to send registry API requests to."""
        return HUB_API_HOST if self.registry == HUB_REGISTRY else self.registry

    @property
    def is_local_host(self) -> bool:
        """Whether the registry is on the loopback interface (plain http allowed)."""
        return _host_of(self.registry) in LOCAL_HOSTS

    @property
    def name(self) -> str:
        """`registry/repository`, no tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_reference(self) -> str:
        """What follows `/manifests/` in the API: the digest when pinned, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else DEFAULT_TAG

    @property
    def has_glob(self) -> bool:
        return self.tag is not None and "*" in self.tag

    def public_path(self) -> str:
        """DUCC's public symlink path `<registry>/<repository>:<tag>` (fact sheet 14.1);
        `<registry>/<repository>@<digest>` for an image pinned by digest only."""
        if not self.registry or not self.repository:
            raise ImageError(f"{self} has no registry name to publish it under")
        if self.has_glob:
            raise ImageError(f"{self} has a glob in its tag; expand it first")
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{DEFAULT_TAG}"

    def matches(self, tag: str) -> bool:
        """Whether the concrete `tag` is one this reference's tag (maybe a `*` glob) names."""
        pattern = self.tag if self.tag is not None else DEFAULT_TAG
        return tag_matches(pattern, tag)

    def with_tag(self, tag: str) -> ImageReference:
        """The same image name with another (concrete) tag and no digest."""
        _check_tag(tag, allow_glob=False, text=tag)
        return dataclasses.replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> ImageReference:
        """The same reference pinned to `digest` (the tag is kept for naming)."""
        _check_digest(digest, text=digest)
        return dataclasses.replace(self, digest=digest)

    def __str__(self) -> str:
        if self.transport is Transport.OCI_LAYOUT:
            return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")
        if self.transport is Transport.DOCKER_ARCHIVE:
            suffix = ""
            if self.index is not None:
                suffix = f":@{self.index}"
            elif self.repository:
                suffix = ":" + self._name_tag_digest()
            return f"docker-archive:{self.path}{suffix}"
        return f"{self.scheme or 'docker'}://{self._name_tag_digest()}"

    def _name_tag_digest(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def tag_matches(pattern: str, tag: str) -> bool:
    """Whether `tag` matches `pattern`, where `*` stands for any run of characters
    (including none) and everything else is literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, tag) is not None


def parse_reference(text: str, *, allow_glob: bool = False) -> ImageReference:
    """Parse any accepted form (module docstring); raise `ImageError` naming the problem."""
    text = text.strip()
    if not text:
        raise ImageError("empty image reference")
    for prefix, scheme in (("docker://", None), ("https://", "https"), ("http://", "http")):
        if text.startswith(prefix):
            return parse_registry_reference(text[len(prefix):], allow_glob=allow_glob,
                                            scheme=scheme, original=text)
    if text.startswith("oci:"):
        return _parse_oci(text)
    if text.startswith("docker-archive:"):
        return _parse_docker_archive(text)
    transport = text.split(":", 1)[0]
    if "://" in text or transport in OTHER_TRANSPORTS:
        raise ImageError(f"unsupported image transport in {text!r} "
                         "(use docker://, https://, http://, oci: or docker-archive:)")
    return parse_registry_reference(text, allow_glob=allow_glob, original=text)


def parse_registry_reference(text: str, *, allow_glob: bool = False,
                             scheme: str | None = None,
                             original: str | None = None) -> ImageReference:
    """Parse `[HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST]` (no transport prefix)."""
    shown = original if original is not None else text
    if not text:
        raise ImageError(f"image reference {shown!r} names no image")
    if any(ch.isspace() for ch in text):
        raise ImageError(f"image reference {shown!r} contains whitespace")
    name, digest = _split_digest(text, shown)
    name, tag = _split_tag(name)
    registry, repository = _split_registry(name, shown)
    if tag is not None:
        _check_tag(tag, allow_glob=allow_glob, text=shown)
    elif digest is None:
        tag = DEFAULT_TAG
    return ImageReference(Transport.REGISTRY, registry=registry, repository=repository,
                          tag=tag, digest=digest, scheme=scheme)


def _split_digest(text: str, shown: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    name, digest = text.split("@", 1)
    _check_digest(digest, text=shown)
    return name, digest


def _split_tag(name: str) -> tuple[str, str | None]:
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, None


def _split_registry(name: str, shown: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and (first == "localhost" or "." in first or ":" in first or first.startswith("[")):
        if not _DOMAIN_RE.fullmatch(first):
            raise ImageError(f"invalid registry host {first!r} in {shown!r}")
        registry, repository = first, rest
    else:
        registry, repository = HUB_REGISTRY, name
    if registry.lower() in HUB_ALIASES:
        registry = HUB_REGISTRY
        if repository and "/" not in repository:
            repository = f"library/{repository}"
    _check_repository(repository, shown)
    return registry, repository


def _check_repository(repository: str, shown: str) -> None:
    if not repository:
        raise ImageError(f"image reference {shown!r} names no repository")
    if len(repository) > MAX_REPOSITORY_LENGTH:
        raise ImageError(f"repository name in {shown!r} is longer than "
                         f"{MAX_REPOSITORY_LENGTH} characters")
    for component in repository.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            hint = " (repository names are lowercase)" if component.lower() != component else ""
            raise ImageError(f"invalid repository component {component!r} in {shown!r}{hint}")


def _check_tag(tag: str, *, allow_glob: bool, text: str) -> None:
    if "*" in tag and not allow_glob:
        raise ImageError(f"tag globs are only allowed in wishlists: {text!r}")
    if not (_GLOB_TAG_RE if allow_glob else _TAG_RE).fullmatch(tag):
        raise ImageError(f"invalid tag {tag!r} in {text!r}")


def _check_digest(digest: str, *, text: str) -> None:
    if not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"invalid digest {digest!r} in {text!r} "
                         "(expected sha256:<64 hex> or sha512:<128 hex>)")


def _parse_oci(text: str) -> ImageReference:
    rest = text[len("oci:"):]
    path, sep, tag = rest.partition(":")
    if not path:
        raise ImageError(f"{text!r} names no OCI layout directory")
    if sep and not tag:
        raise ImageError(f"empty tag in {text!r}")
    if tag and not re.fullmatch(r"[A-Za-z0-9_.\-+@/]+", tag):
        raise ImageError(f"invalid OCI reference name {tag!r} in {text!r}")
    return ImageReference(Transport.OCI_LAYOUT, path=path, tag=tag or None)


def _parse_docker_archive(text: str) -> ImageReference:
    rest = text[len("docker-archive:"):]
    path, sep, name = rest.partition(":")
    if not path:
        raise ImageError(f"{text!r} names no archive file")
    if not sep:
        return ImageReference(Transport.DOCKER_ARCHIVE, path=path)
    if name.startswith("@"):
        if not name[1:].isdigit():
            raise ImageError(f"invalid image index {name!r} in {text!r} (expected @N)")
        return ImageReference(Transport.DOCKER_ARCHIVE, path=path, index=int(name[1:]))
    if not name:
        raise ImageError(f"empty image name in {text!r}")
    named = parse_registry_reference(name, original=text)
    if named.digest is not None:
        raise ImageError(f"a docker-archive image is named by NAME:TAG, not digest: {text!r}")
    return ImageReference(Transport.DOCKER_ARCHIVE, path=path, registry=named.registry,
                          repository=named.repository, tag=named.tag)


def _host_of(registry: str) -> str:
    if registry.startswith("["):
        return registry[: registry.index("]") + 1]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry
