"""The typed image values every image source returns, and their parsers (pure but for
the verifying stream): `Platform`, `Descriptor`, `Layer`, `Manifest`, `ImageIndex`,
`ImageConfig`; `parse_manifest`, `select_platform`, `parse_config` turn JSON bytes into them;
`VerifyingReader` streams a blob and checks its digest at EOF; `ImageSource` is what
ingestion reads (`manifest`, `config`, `open_blob(digest)`), `ImageParts` its shared half.

Caveats: Docker schema-1 manifests are refused; only sha256 and sha512 digests are verified
(the only ones the OCI spec registers).
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from pycvmfs.errors import HashMismatchError, ImageError, SizeMismatchError

# Media types --------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
ACCEPT_MANIFESTS = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))

# Limits -------------------------------------------------------------------------------
MAX_MANIFEST_BYTES = 4 << 20  # distribution refuses to store manifests over 4 MiB
MAX_CONFIG_BYTES = 64 << 20  # configs carry history and labels; real ones are < 1 MiB
MAX_BLOB_BYTES = 16 << 30  # default ceiling for one layer; ingest passes its own
MAX_INDEX_DEPTH = 4  # an index may name another index; a cycle must end
BLOCK_BYTES = 1 << 20  # one read from the socket or file

_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


# Values -------------------------------------------------------------------------------
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armel": "arm", "i386": "386", "i686": "386"}


@dataclass(frozen=True, slots=True)
class Platform:
    """os/architecture[/variant], normalised as containerd does (`aarch64` is `arm64`,
    `arm` means `arm/v7`, `arm64/v8` is plain `arm64`)."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/amd64`, `linux/arm/v7`, `linux/arm64`."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ImageError(f"invalid platform {text!r} (expected OS/ARCH[/VARIANT])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalized()

    def normalized(self) -> Platform:
        arch = _ARCH_ALIASES.get(self.architecture, self.architecture)
        variant = self.variant
        if variant.isdigit():
            variant = f"v{variant}"
        if arch == "arm64" and variant == "v8" or arch == "amd64" and variant == "v1":
            variant = ""
        if arch == "arm" and not variant:
            variant = "v7"
        return Platform(self.os.lower(), arch, variant)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


LINUX_AMD64 = Platform("linux", "amd64")


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_TYPES: Mapping[str, tuple[Compression, bool]] = MappingProxyType({
    # media type: (compression, foreign/non-distributable)
    "application/vnd.oci.image.layer.v1.tar": (Compression.NONE, False),
    "application/vnd.oci.image.layer.v1.tar+gzip": (Compression.GZIP, False),
    "application/vnd.oci.image.layer.v1.tar+zstd": (Compression.ZSTD, False),
    "application/vnd.oci.image.layer.nondistributable.v1.tar": (Compression.NONE, True),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": (Compression.GZIP, True),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": (Compression.ZSTD, True),
    "application/vnd.docker.image.rootfs.diff.tar": (Compression.NONE, False),
    "application/vnd.docker.image.rootfs.diff.tar.gzip": (Compression.GZIP, False),
    "application/vnd.docker.image.rootfs.diff.tar.zstd": (Compression.ZSTD, False),
    "application/vnd.docker.image.rootfs.foreign.diff.tar": (Compression.NONE, True),
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (Compression.GZIP, True),
})
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_UNCOMPRESSED = "application/vnd.docker.image.rootfs.diff.tar"


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what an index lists, what a manifest's `config` is."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}),
                                           hash=False)


@dataclass(frozen=True, slots=True)
class Layer:
    """One filesystem layer. `foreign` layers (Windows base layers, OCI non-distributable)
    may live at `urls` instead of the registry; DUCC skips them."""

    digest: str
    size: int
    media_type: str
    compression: Compression
    foreign: bool = False
    urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest. `raw` is the exact bytes (for `.metadata/.../manifest.json`),
    `digest` their hash; `index_digest` is the index it was chosen from, if any."""

    media_type: str
    digest: str
    raw: bytes
    config: Descriptor
    layers: tuple[Layer, ...]
    index_digest: str | None = None
    platform: Platform | None = None


@dataclass(frozen=True, slots=True)
class ImageIndex:
    """A multi-platform index (OCI image index or Docker manifest list)."""

    media_type: str
    digest: str
    raw: bytes
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What an ingest needs from the image configuration blob. `entrypoint` and `cmd` are
    None when the image does not set them (not the same as empty)."""

    digest: str
    raw: bytes
    os: str
    architecture: str
    variant: str
    env: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    working_dir: str
    user: str
    labels: Mapping[str, str] = field(hash=False)
    diff_ids: tuple[str, ...] = ()

    @property
    def hex(self) -> str:
        """The config digest without `sha256:`: the `.flat/XX/<hex>` directory name."""
        return self.digest.split(":", 1)[1]


# Digests and verifying streams -----------------------------------------------------------
def check_digest(digest: object) -> str:
    """`digest` if it is a sha256/sha512 digest; else `ImageError`."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"invalid or unsupported digest {digest!r}")
    return digest


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_HASHES[algorithm](data).hexdigest()}"


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Raise `HashMismatchError` unless `data` hashes to `digest`."""
    algorithm = check_digest(digest).split(":", 1)[0]
    actual = digest_of(data, algorithm)
    if actual != digest:
        raise HashMismatchError(f"{what}: content hashes to {actual}, expected {digest}")


class _Readable(Protocol):
    def read(self, amt: int, /) -> bytes: ...


class VerifyingReader(io.RawIOBase):
    """A read-only stream over `source` that counts and hashes what passes through and, at
    EOF, raises `HashMismatchError` (digest) or `SizeMismatchError` (declared `size`).
    More than `size` or `max_bytes` bytes fail as soon as they arrive. `close()` closes
    the source (`closer`) without verifying; `verify_rest()` drains and verifies."""

    def __init__(self, source: _Readable, digest: str, *, size: int | None = None,
                 max_bytes: int = MAX_BLOB_BYTES, what: str = "blob",
                 closer: Callable[[], None] | None = None) -> None:
        super().__init__()
        algorithm = check_digest(digest).split(":", 1)[0]
        self._source = source
        self._closer = closer
        self._hash = _HASHES[algorithm]()
        self._algorithm = algorithm
        self.digest = digest
        self.size = size
        self.max_bytes = max_bytes
        self.what = what
        self.bytes_read = 0
        self.verified = False
        if size is not None and size > max_bytes:
            raise ImageError(f"{what} {digest} is {size} bytes, over the limit of "
                             f"{max_bytes}")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.verified or len(view) == 0:
            return 0
        data = self._source.read(len(view))
        if not data:
            self._finish()
            return 0
        self.bytes_read += len(data)
        if self.bytes_read > self.max_bytes:
            raise ImageError(f"{self.what} {self.digest} is over the limit of "
                             f"{self.max_bytes} bytes")
        if self.size is not None and self.bytes_read > self.size:
            raise SizeMismatchError(f"{self.what} {self.digest} is longer than its "
                                    f"declared {self.size} bytes")
        self._hash.update(data)
        view[: len(data)] = data
        return len(data)

    def _finish(self) -> None:
        if self.size is not None and self.bytes_read != self.size:
            raise SizeMismatchError(f"{self.what} {self.digest}: got {self.bytes_read} "
                                    f"bytes, declared {self.size}")
        actual = f"{self._algorithm}:{self._hash.hexdigest()}"
        if actual != self.digest:
            raise HashMismatchError(f"{self.what}: content hashes to {actual}, expected "
                                    f"{self.digest}")
        self.verified = True

    def verify_rest(self) -> None:
        """Read to EOF (discarding) and verify; a tar reader may stop before EOF."""
        while self.read(BLOCK_BYTES):
            pass

    def close(self) -> None:
        if not self.closed and self._closer is not None:
            self._closer()
        super().close()


class ImageSource(Protocol):
    """One image to ingest, from any source: a registry, an OCI layout, a docker archive.
    `open_blob` returns a stream that verifies the digest at EOF."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def config(self) -> ImageConfig: ...

    def open_blob(self, digest: str, *, max_bytes: int = MAX_BLOB_BYTES) -> VerifyingReader: ...

    def close(self) -> None: ...


# Parsing ----------------------------------------------------------------------------------
def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{what} must be a list of strings")
    return tuple(value)


def _str_map(value: Any, what: str) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImageError(f"{what} must be an object of strings")
    return MappingProxyType(dict(value))


def parse_descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a descriptor object")
    media_type = value.get("mediaType", "")
    size = value.get("size")
    if not isinstance(media_type, str):
        raise ImageError(f"{what}: mediaType is not a string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: size must be a non-negative integer, not {size!r}")
    digest = check_digest(value.get("digest"))
    platform = None
    if isinstance(value.get("platform"), dict):
        spec = value["platform"]
        platform = Platform(str(spec.get("os", "")), str(spec.get("architecture", "")),
                            str(spec.get("variant", "")))
    urls = _str_tuple(value.get("urls", []), f"{what}: urls")
    annotations = _str_map(value.get("annotations"), f"{what}: annotations")
    return Descriptor(media_type, digest, size, platform, urls, annotations)


def _media_type_of(document: Mapping[str, Any], header_type: str | None) -> str:
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if header_type and header_type.split(";")[0].strip() not in ("", "application/json"):
        return header_type.split(";")[0].strip()
    if document.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def parse_manifest(raw: bytes, header_type: str | None = None,
                   platform: Platform | None = None) -> Manifest | ImageIndex:
    """An image manifest or an index from its bytes (`header_type`: the Content-Type)."""
    document = _load_json(raw, "manifest")
    media_type = _media_type_of(document, header_type)
    digest = digest_of(raw)
    if media_type in DOCKER_SCHEMA1:
        raise ImageError("Docker schema-1 manifests are not supported (push the image again "
                         "with a current client)")
    if media_type in INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise ImageError("image index without a `manifests` list")
        return ImageIndex(media_type, digest, raw, tuple(
            parse_descriptor(entry, f"index entry {i}") for i, entry in enumerate(entries)))
    if media_type not in MANIFEST_TYPES:
        raise ImageError(f"unsupported manifest media type {media_type!r}")
    config = parse_descriptor(document.get("config"), "manifest config")
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise ImageError(f"not a container image: config media type {config.media_type!r}")
    raw_layers = document.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError("image manifest without a `layers` list")
    layers = []
    for i, entry in enumerate(raw_layers):
        descriptor = parse_descriptor(entry, f"layer {i}")
        kind = _LAYER_TYPES.get(descriptor.media_type)
        if kind is None:
            raise ImageError(f"layer {i} ({descriptor.digest}) has unsupported media type "
                             f"{descriptor.media_type!r}")
        layers.append(Layer(descriptor.digest, descriptor.size, descriptor.media_type,
                            kind[0], kind[1], descriptor.urls))
    return Manifest(media_type, digest, raw, config, tuple(layers), platform=platform)


def select_platform(index: ImageIndex, wanted: Platform = LINUX_AMD64) -> Descriptor:
    """The index entry for `wanted`: the same OS and architecture and the exact variant;
    when no variant is asked for, any; for `arm`, an older variant (v6 for v7) last."""
    want = wanted.normalized()
    candidates = [d for d in index.manifests if d.platform is not None
                  and d.media_type in MANIFEST_TYPES | INDEX_TYPES | {""}]
    same_arch = []
    for descriptor in candidates:
        assert descriptor.platform is not None
        have = descriptor.platform.normalized()
        if have.os == want.os and have.architecture == want.architecture:
            same_arch.append((have, descriptor))
    for have, descriptor in same_arch:
        if have.variant == want.variant:
            return descriptor
    if not wanted.variant and same_arch and want.architecture != "arm":
        return same_arch[0][1]
    if want.architecture == "arm":
        for older in range(int(want.variant[1:] or 7) - 1, 4, -1):
            for have, descriptor in same_arch:
                if have.variant == f"v{older}":
                    return descriptor
    offered = ", ".join(str(d.platform) for d in candidates) or "none"
    raise ImageError(f"image index {index.digest} has no manifest for {wanted} "
                     f"(offered: {offered})")


def parse_config(raw: bytes, digest: str) -> ImageConfig:
    """The image configuration blob (already verified against `digest`)."""
    document = _load_json(raw, "image config")
    container = document.get("config") or {}
    if not isinstance(container, dict):
        raise ImageError("image config: `config` is not an object")
    rootfs = document.get("rootfs") or {}
    if not isinstance(rootfs, dict):
        raise ImageError("image config: `rootfs` is not an object")

    def optional_list(key: str) -> tuple[str, ...] | None:
        value = container.get(key)
        return None if value is None else _str_tuple(value, f"image config {key}")

    def text(source: Mapping[str, Any], key: str) -> str:
        value = source.get(key) or ""
        if not isinstance(value, str):
            raise ImageError(f"image config {key} is not a string")
        return value

    return ImageConfig(
        digest=digest, raw=raw, os=text(document, "os"),
        architecture=text(document, "architecture"), variant=text(document, "variant"),
        env=_str_tuple(container.get("Env") or [], "image config Env"),
        entrypoint=optional_list("Entrypoint"), cmd=optional_list("Cmd"),
        working_dir=text(container, "WorkingDir"), user=text(container, "User"),
        labels=_str_map(container.get("Labels"), "image config Labels"),
        diff_ids=tuple(check_digest(d) for d in
                       _str_tuple(rootfs.get("diff_ids") or [], "image config diff_ids")),
    )



class ImageParts:
    """The `manifest` and `config` half of an `ImageSource`, once for every kind of source
    (subclasses set `_manifest` and `_config`)."""

    _manifest: Manifest
    _config: ImageConfig

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def config(self) -> ImageConfig:
        return self._config
