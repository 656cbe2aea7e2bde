"""The images of an image repository, from what ingest records for each under
`.metadata/<registry>/<repository>:<tag>/`: `manifest.json` (layers and their sizes),
`ingest.json` (manifest digest; its modification time is the ingest date) and the public
symlink `<registry>/<repository>:<tag>` beside it.

The files are read through a `MetadataTree`: a directory (a mounted repository, or a
working tree) or a verified `Repository` (a storage directory or Stratum-1 URL, read
without mounting).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from pycvmfs.errors import ImageError, NotFoundError
from pycvmfs.images import layout
from pycvmfs.images.ingest import INGEST_FILE
from pycvmfs.images.manifest import Manifest, parse_manifest
from pycvmfs.repository.repository import Repository

MAX_METADATA_BYTES = 4 << 20  # a manifest or ingest.json; registries cap manifests at 4 MiB


@dataclass(frozen=True, slots=True)
class ListedImage:
    name: str  # registry/repository
    tag: str  # "" for an image published by digest only
    digest: str  # the manifest's sha256 digest
    size: int  # compressed bytes of its layers, as the registry lists them
    layers: int
    ingested: str  # ISO 8601 UTC, the time ingest recorded it
    config: str  # the config digest: the image is `.flat/XX/<its hex>`

    @property
    def public_name(self) -> str:
        return f"{self.name}:{self.tag}" if self.tag else self.name

    def as_json(self) -> dict[str, object]:
        return {"public_name": self.public_name, **asdict(self)}


class MetadataTree(Protocol):
    """Read access to a repository's files (paths relative to its root)."""

    def image_dirs(self) -> Iterator[str]:
        """`.metadata/...` directories holding a manifest.json."""
        ...

    def read(self, path: str) -> bytes | None:
        """A small file's bytes; None when it is not there."""
        ...

    def mtime(self, path: str) -> int | None: ...


class DirectoryTree:
    """A repository as a directory: a mount point or a working tree."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def image_dirs(self) -> Iterator[str]:
        top = self.root / layout.METADATA
        for directory, dirs, files in os.walk(top):  # symlinks are not followed
            dirs.sort()
            if layout.MANIFEST_FILE in files:
                yield Path(directory).relative_to(self.root).as_posix()

    def read(self, path: str) -> bytes | None:
        try:
            with open(self.root / path, "rb") as handle:
                return handle.read(MAX_METADATA_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def mtime(self, path: str) -> int | None:
        try:
            return int(os.lstat(self.root / path).st_mtime)
        except FileNotFoundError:
            return None


class RepositoryTree:
    """A repository read without mounting (every object verified)."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def image_dirs(self) -> Iterator[str]:
        try:
            entries = list(self.repository.walk(f"/{layout.METADATA}"))
        except NotFoundError:
            return
        for path, entry in entries:
            if not entry.is_dir and path.rsplit("/", 1)[-1] == layout.MANIFEST_FILE:
                yield path.lstrip("/").rsplit("/", 1)[0]

    def read(self, path: str) -> bytes | None:
        try:
            entry = self.repository.lookup(f"/{path}")
        except NotFoundError:
            return None
        if not entry.is_regular or entry.size > MAX_METADATA_BYTES:
            return None
        return self.repository.read(f"/{path}")

    def mtime(self, path: str) -> int | None:
        try:
            return int(self.repository.lookup(f"/{path}").mtime)
        except NotFoundError:
            return None


def list_images(tree: MetadataTree) -> list[ListedImage]:
    """Every image recorded in `tree`, sorted by public name. An image whose manifest
    cannot be read is listed with what there is (size and layers 0)."""
    images = []
    for directory in tree.image_dirs():
        public = directory.removeprefix(f"{layout.METADATA}/")
        raw = tree.read(f"{directory}/{layout.MANIFEST_FILE}") or b""
        ingest_file = f"{directory}/{INGEST_FILE}"
        digest = _ingest_field(tree, ingest_file, "manifest") or (
            "sha256:" + hashlib.sha256(raw).hexdigest())
        size = layers = 0
        config = ""
        try:
            manifest = parse_manifest(raw)
        except ImageError:
            manifest = None
        if isinstance(manifest, Manifest):
            counted = [layer for layer in manifest.layers if not layer.foreign]
            size, layers, config = sum(lay.size for lay in counted), len(counted), \
                manifest.config.digest
        when = tree.mtime(ingest_file) or tree.mtime(f"{directory}/{layout.MANIFEST_FILE}")
        ingested = "" if when is None else dt.datetime.fromtimestamp(when, dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        name, tag = _split(public)
        images.append(ListedImage(name, tag, digest, size, layers, ingested, config))
    return sorted(images, key=lambda image: image.public_name)


def _ingest_field(tree: MetadataTree, path: str, key: str) -> str | None:
    raw = tree.read(path)
    if raw is None:
        return None
    try:
        value = json.loads(raw).get(key)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _split(public: str) -> tuple[str, str]:
    """`registry/repository:tag` -> (registry/repository, tag); a name by digest (`@`)
    keeps its digest in the name and has no tag."""
    head, _, last = public.rpartition("/")
    if "@" in last or ":" not in last:
        return public, ""
    base, _, tag = last.rpartition(":")
    return f"{head}/{base}" if head else base, tag

