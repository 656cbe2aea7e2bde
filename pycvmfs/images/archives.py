"""Local image sources with the registry's interface (`registry.ImageSource`): an OCI image
layout directory (`oci:DIR[:TAG]`) and a `docker save` archive (`docker-archive:FILE`).

OCI layout: `index.json` lists manifests; `TAG` is matched against the
`org.opencontainers.image.ref.name` annotation (exactly, else as the tag part of a full
name `host/repo:TAG` as containerd writes it); without a tag the index must hold exactly
one image. An entry that is itself an index resolves to the platform asked for. Every
blob is read from `blobs/<alg>/<hex>` and verified against its digest (manifest and config
on open, layers at the end of their stream).

Docker archive: `manifest.json` inside the tar lists `{Config, RepoTags, Layers}` per
image; the image is chosen by name (`docker-archive:FILE:NAME:TAG`, matched against
`RepoTags` after normalising both), by position (`:@N`) or is the only one. Both layouts
are read: the classic one (`<id>.json` config, `<id>/layer.tar` layers; skopeo writes
`<hex>.tar`) and Docker 25+'s (`blobs/sha256/<hex>` for both). The config must hash to the
digest its name gives; an uncompressed layer must hash to its `rootfs.diff_ids` entry, a
layer named `blobs/sha256/<hex>` to that digest. Since the archive holds no registry
manifest, `manifest.raw` is a Docker schema-2 manifest synthesised from what is there
(layers uncompressed, media type `...rootfs.diff.tar`).

I/O: reads the files named; nothing is written. Thread-safety: an `OciLayoutImage` may
serve `open_blob` to several threads; a `DockerArchiveImage` shares one tar file object,
so use it from one thread at a time (streams of one image may interleave in that thread).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
from pathlib import Path
from typing import IO, Any, Self

from pycvmfs.errors import HashMismatchError, ImageError, NotFoundError
from pycvmfs.images.manifest import (
    BLOCK_BYTES,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_UNCOMPRESSED,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    LINUX_AMD64,
    MAX_BLOB_BYTES,
    MAX_CONFIG_BYTES,
    MAX_INDEX_DEPTH,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Compression,
    Descriptor,
    ImageIndex,
    ImageParts,
    Layer,
    Manifest,
    Platform,
    VerifyingReader,
    check_digest,
    digest_of,
    parse_config,
    parse_manifest,
    select_platform,
)
from pycvmfs.images.reference import (
    ImageReference,
    Transport,
    parse_reference,
    parse_registry_reference,
)

REF_NAME = "org.opencontainers.image.ref.name"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HEX_NAME_RE = re.compile(r"(?:.*/)?(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json|\.tar)?")


class OciLayoutImage(ImageParts):
    """One image of an OCI image layout directory (`ImageSource`)."""

    def __init__(self, directory: str | Path, tag: str | None = None,
                 platform: Platform = LINUX_AMD64) -> None:
        self.directory = Path(directory)
        layout = self.directory / "oci-layout"
        if not layout.is_file():
            raise ImageError(f"{self.directory} is not an OCI image layout (no oci-layout)")
        index_path = self.directory / "index.json"
        try:
            index_raw = index_path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {index_path}: {exc}") from exc
        index = parse_manifest(index_raw, OCI_INDEX)
        if not isinstance(index, ImageIndex):
            raise ImageError(f"{index_path} is not an image index")
        entry = self._choose(index, tag)
        self._sizes: dict[str, int] = {}  # declared sizes of the blobs this image names
        self._manifest = self._resolve(entry, platform)
        descriptor = self._manifest.config
        self._sizes[descriptor.digest] = descriptor.size
        self._sizes.update((layer.digest, layer.size) for layer in self._manifest.layers)
        raw = self._read_small(descriptor.digest, MAX_CONFIG_BYTES, "image config")
        self._config = parse_config(raw, descriptor.digest)

    def _choose(self, index: ImageIndex, tag: str | None) -> Descriptor:
        entries = index.manifests
        if tag is None:
            if len(entries) != 1:
                raise ImageError(f"{self.directory} holds {len(entries)} images; name one "
                                 f"(oci:DIR:TAG): {', '.join(_ref_names(entries))}")
            return entries[0]
        exact = [e for e in entries if e.annotations.get(REF_NAME) == tag]
        if not exact:
            exact = [e for e in entries if e.annotations.get(REF_NAME, "").endswith(f":{tag}")]
        if not exact:
            raise NotFoundError(f"no image tagged {tag!r} in {self.directory} "
                                f"(has: {', '.join(_ref_names(entries)) or 'no names'})")
        return exact[0]

    def _resolve(self, entry: Descriptor, platform: Platform) -> Manifest:
        index_digest = None
        for _ in range(MAX_INDEX_DEPTH):
            self._sizes[entry.digest] = entry.size
            raw = self._read_small(entry.digest, MAX_MANIFEST_BYTES, "manifest")
            media_type = entry.media_type if entry.media_type else None
            parsed = parse_manifest(raw, media_type, entry.platform)
            if isinstance(parsed, Manifest):
                return Manifest(parsed.media_type, parsed.digest, parsed.raw, parsed.config,
                                parsed.layers, index_digest, parsed.platform)
            if parsed.media_type not in INDEX_TYPES:  # pragma: no cover - parse guarantees
                raise ImageError(f"unexpected {parsed.media_type}")
            index_digest = parsed.digest if index_digest is None else index_digest
            entry = select_platform(parsed, platform)
        raise ImageError(f"{self.directory}: indexes nested more than {MAX_INDEX_DEPTH} deep")

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = check_digest(digest).split(":", 1)
        return self.directory / "blobs" / algorithm / hex_digest

    def _read_small(self, digest: str, limit: int, what: str) -> bytes:
        with self.open_blob(digest, max_bytes=limit, what=what) as reader:
            return reader.read()

    def open_blob(self, digest: str, *, max_bytes: int = MAX_BLOB_BYTES,
                  what: str = "blob") -> VerifyingReader:
        path = self.blob_path(digest)
        try:
            size = self._sizes.get(digest, path.stat().st_size)
            stream = path.open("rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"{what} {digest} is missing from {self.directory}") from exc
        except OSError as exc:
            raise ImageError(f"cannot read {path}: {exc}") from exc
        try:
            return VerifyingReader(stream, digest, size=size, max_bytes=max_bytes,
                                   what=f"{what} in {self.directory}", closer=stream.close)
        except BaseException:
            stream.close()
            raise

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class DockerArchiveImage(ImageParts):
    """One image of a `docker save` tarball (`ImageSource`)."""

    def __init__(self, path: str | Path, name: ImageReference | str | None = None,
                 index: int | None = None) -> None:
        self.path = Path(path)
        try:
            self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 - open for the object's life
        except (OSError, tarfile.TarError) as exc:
            raise ImageError(f"cannot open docker archive {self.path}: {exc}") from exc
        try:
            self._members = {_normalise(m.name): m for m in self._tar.getmembers()}
            self._load(name, index)
        except BaseException:
            self._tar.close()
            raise

    def _load(self, name: ImageReference | str | None, index: int | None) -> None:
        try:
            document = json.loads(self._read_member("manifest.json", MAX_MANIFEST_BYTES))
        except ValueError as exc:
            raise ImageError(f"{self.path}: manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(document, list) or not all(isinstance(e, dict) for e in document):
            raise ImageError(f"{self.path}: manifest.json is not a list of images")
        entry = self._choose(document, name, index)
        config_name = entry.get("Config")
        layer_names = entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list) \
                or not all(isinstance(n, str) for n in layer_names):
            raise ImageError(f"{self.path}: manifest.json entry without Config/Layers")
        self.repo_tags: tuple[str, ...] = tuple(entry.get("RepoTags") or ())
        config_raw = self._read_member(config_name, MAX_CONFIG_BYTES)
        config_digest = digest_of(config_raw)
        named = _digest_from_name(config_name)
        if named is not None and named != config_digest:
            raise HashMismatchError(f"{self.path}: config {config_name} hashes to "
                                    f"{config_digest}")
        self._config = parse_config(config_raw, config_digest)
        if len(self._config.diff_ids) != len(layer_names):
            raise ImageError(f"{self.path}: {len(layer_names)} layers but "
                             f"{len(self._config.diff_ids)} diff_ids in the config")
        self._layer_members: dict[str, str] = {}
        layers = []
        for layer_name, diff_id in zip(layer_names, self._config.diff_ids, strict=True):
            member = self._member(layer_name)
            compression = self._compression_of(layer_name)
            digest = _digest_from_name(layer_name) if layer_name.startswith("blobs/") else None
            if digest is None:
                digest = diff_id if compression is Compression.NONE else \
                    self._hash_member(layer_name)
            media_type = DOCKER_LAYER_UNCOMPRESSED if compression is Compression.NONE else \
                DOCKER_LAYER
            layers.append(Layer(digest, member.size, media_type, compression))
            self._layer_members[digest] = layer_name
        config = Descriptor(DOCKER_CONFIG, config_digest, len(config_raw))
        self._layer_members[config_digest] = config_name
        raw = json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config.size, "digest": config.digest},
            "layers": [{"mediaType": layer.media_type, "size": layer.size,
                        "digest": layer.digest} for layer in layers],
        }, indent=3).encode()
        self._manifest = Manifest(DOCKER_MANIFEST, digest_of(raw), raw, config, tuple(layers))

    def _choose(self, entries: list[dict[str, Any]], name: ImageReference | str | None,
                index: int | None) -> dict[str, Any]:
        if index is not None:
            if not 0 <= index < len(entries):
                raise NotFoundError(f"{self.path} holds {len(entries)} images, no @{index}")
            return entries[index]
        if name is None:
            if len(entries) != 1:
                raise ImageError(f"{self.path} holds {len(entries)} images; name one "
                                 "(docker-archive:FILE:NAME:TAG or :@N)")
            return entries[0]
        wanted = name if isinstance(name, ImageReference) else parse_registry_reference(name)
        for entry in entries:
            for repo_tag in entry.get("RepoTags") or ():
                try:
                    have = parse_registry_reference(str(repo_tag))
                except ImageError:
                    continue
                if (have.registry, have.repository, have.tag) == \
                        (wanted.registry, wanted.repository, wanted.tag):
                    return entry
        raise NotFoundError(f"no image named {wanted.public_path()} in {self.path}")

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self._members.get(_normalise(name))
        for _ in range(8):  # skopeo writes `<id>/layer.tar -> ../<hex>.tar` symlinks
            if member is None or not member.issym():
                break
            target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name),
                                                       member.linkname))
            member = self._members.get(_normalise(target))
        if member is None or not member.isfile():
            raise ImageError(f"{self.path}: {name} is missing from the archive")
        return member

    def _open_member(self, name: str) -> IO[bytes]:
        stream = self._tar.extractfile(self._member(name))
        if stream is None:  # pragma: no cover - _member checked isfile()
            raise ImageError(f"{self.path}: {name} is not a regular file")
        return stream

    def _read_member(self, name: str, limit: int) -> bytes:
        member = self._member(name)
        if member.size > limit:
            raise ImageError(f"{self.path}: {name} is larger than {limit} bytes")
        with self._open_member(name) as stream:
            return stream.read()

    def _compression_of(self, name: str) -> Compression:
        with self._open_member(name) as stream:
            head = stream.read(4)
        if head.startswith(_GZIP_MAGIC):
            return Compression.GZIP
        if head.startswith(_ZSTD_MAGIC):
            return Compression.ZSTD
        return Compression.NONE

    def _hash_member(self, name: str) -> str:
        hasher = hashlib.sha256()
        with self._open_member(name) as stream:
            while block := stream.read(BLOCK_BYTES):
                hasher.update(block)
        return f"sha256:{hasher.hexdigest()}"

    def open_blob(self, digest: str, *, max_bytes: int = MAX_BLOB_BYTES) -> VerifyingReader:
        name = self._layer_members.get(check_digest(digest))
        if name is None:
            raise NotFoundError(f"{digest} is not a blob of this image in {self.path}")
        member = self._member(name)
        stream = self._open_member(name)
        return VerifyingReader(stream, digest, size=member.size, max_bytes=max_bytes,
                               what=f"{name} in {self.path}", closer=stream.close)

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_local_image(reference: ImageReference | str,
                     platform: Platform = LINUX_AMD64) -> OciLayoutImage | DockerArchiveImage:
    """The `ImageSource` for an `oci:` or `docker-archive:` reference."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if ref.path is None or ref.transport is Transport.REGISTRY:
        raise ImageError(f"{ref} is not a local image (oci: or docker-archive:)")
    if ref.transport is Transport.OCI_LAYOUT:
        return OciLayoutImage(ref.path, ref.tag, platform)
    name = ref if ref.repository else None
    return DockerArchiveImage(ref.path, name, ref.index)


def _ref_names(entries: tuple[Descriptor, ...]) -> list[str]:
    return [e.annotations[REF_NAME] for e in entries if REF_NAME in e.annotations]


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _digest_from_name(name: str) -> str | None:
    """`sha256:<hex>` when the member name is `<hex>.json`, `<hex>.tar` or
    `blobs/sha256/<hex>`; None for `<id>/layer.tar` (that id is no content digest)."""
    if name.endswith("/layer.tar"):
        return None
    match = _HEX_NAME_RE.fullmatch(name)
    return f"sha256:{match.group(1)}" if match else None

