"""Where DUCC puts things in a repository (fact sheet 14.1, 14.2): pure path arithmetic.

    <registry>/<repository>:<tag>                 relative symlink -> the flat image
    .flat/<d[:2]>/<config digest hex>/            the image's whole root filesystem
    .layers/<d[:2]>/<layer digest hex>/layerfs/   one unpacked layer (overlayfs whiteouts)
    .layers/<d[:2]>/<layer digest hex>/.metadata/origin.json   images using the layer
    .layers/<d[:2]>/<layer digest hex>/.metadata/layers.json   its diff ID and size
    podmanStore/                                  Podman's additional image store
    .metadata/<registry>/<repository>:<tag>/manifest.json

Every image and layerfs directory is the root of its own nested catalog, and so are `.flat`,
`.layers` and their two-letter fan-out directories: publishing one more image rewrites only
the catalogs on its own path. DUCC's `.chains/` (layers 0..i applied, for its thin images)
is not written: neither containerd's snapshotter nor Podman's store needs it
(podman_store.py).

Digests are the registry's `sha256:<64 hex>` strings; anything else is refused here, so a
digest from a manifest can never become `..` or an absolute path.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterator, Sequence

from pycvmfs.errors import ImageError

FLAT = ".flat"
LAYERS = ".layers"
METADATA = ".metadata"
LAYERFS = "layerfs"
MANIFEST_FILE = "manifest.json"
ORIGIN_FILE = "origin.json"
LAYER_INFO_FILE = "layers.json"
CATALOG_ROOTS = (FLAT, LAYERS)  # each, and each fan-out below it, is nested

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class LayoutError(ImageError):
    """A digest or image name that cannot become a repository path."""


def digest_hex(digest: str) -> str:
    """The 64 hex digits of `sha256:<hex>` (LayoutError for anything else)."""
    found = _DIGEST.fullmatch(digest)
    if found is None:
        raise LayoutError(f"not a sha256 digest: {digest!r}")
    return found.group(1)


def _fanned(root: str, hex_digest: str) -> str:
    return f"{root}/{hex_digest[:2]}/{hex_digest}"


def flat_dir(config_digest: str) -> str:
    """`.flat/ab/abcdef...`: the flat root filesystem of the image with this config."""
    return _fanned(FLAT, digest_hex(config_digest))


def layer_dir(layer_digest: str) -> str:
    """`.layers/ab/abcdef...` (the layer's files are in its `layerfs/`)."""
    return _fanned(LAYERS, digest_hex(layer_digest))


def layerfs_dir(layer_digest: str) -> str:
    """`.layers/ab/abcdef.../layerfs`: the layer's files, overlayfs-style (its own catalog)."""
    return f"{layer_dir(layer_digest)}/{LAYERFS}"


def layer_origin_file(layer_digest: str) -> str:
    """`.layers/ab/abcdef.../.metadata/origin.json`: `{"origin": [image names]}`."""
    return f"{layer_dir(layer_digest)}/{METADATA}/{ORIGIN_FILE}"


def oci_chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI chain IDs (`sha256:<hex>`) of a stack of layer diff IDs: the first layer's diff
    ID, then sha256("<previous chain ID> <diff ID>"). containerd names its layer snapshots
    so, and containers/storage its layer directories (podman_store.py)."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else "sha256:" + hashlib.sha256(
            f"{chains[-1]} {diff_id}".encode("ascii")).hexdigest())
    return chains


def layer_info_file(layer_digest: str) -> str:
    """`.layers/ab/abcdef.../.metadata/layers.json`: DUCC's record of the layer's diff ID
    and uncompressed size (`[{"id", "compressed-diff-digest", "diff-digest", "diff-size"}]`)."""
    return f"{layer_dir(layer_digest)}/{METADATA}/{LAYER_INFO_FILE}"


def public_name(registry: str, repository: str, tag: str) -> str:
    """`<registry>/<repository>:<tag>`, checked component by component."""
    parts = [registry, *repository.split("/")]
    if not all(_NAME_PART.fullmatch(part) for part in parts) or not _TAG.fullmatch(tag):
        raise LayoutError(f"not a usable image name: {registry}/{repository}:{tag}")
    return f"{registry}/{repository}:{tag}"


def public_link(name: str, config_digest: str) -> tuple[str, str]:
    """(symlink path, relative target) of the public entry point of an image, e.g.
    `registry.hub.docker.com/library/centos:centos7` -> `../../.flat/ab/abcdef...`."""
    return name, posixpath.relpath(flat_dir(config_digest), posixpath.dirname(name) or ".")


def metadata_file(name: str) -> str:
    """`.metadata/<registry>/<repository>:<tag>/manifest.json`."""
    return f"{METADATA}/{name}/{MANIFEST_FILE}"


def nested_catalog_dirs(paths: Sequence[str]) -> Iterator[str]:
    """Every directory that is a nested catalog root on the way to these image or layerfs
    directories (the top directory, its fan-out and the directory itself), once. A
    layer's catalog starts at its `layerfs` (as DUCC's `ingest --catalog -b ...layerfs`), so
    its `.metadata` stays in the fan-out's catalog."""
    seen: set[str] = set()
    for path in paths:
        parts = path.split("/")
        wanted = 4 if parts[0] == LAYERS else 3
        if (parts[0] not in CATALOG_ROOTS or len(parts) != wanted
                or (wanted == 4 and parts[3] != LAYERFS)):
            raise LayoutError(f"{path}: not an image or layerfs directory")
        for depth in (1, 2, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in seen:
                seen.add(directory)
                yield directory
