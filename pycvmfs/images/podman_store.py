"""The Podman additional image store of an image repository (`podmanStore/`, as DUCC writes
it): `podman --storage-opt overlay.imagestore=MNT/podmanStore run IMAGE` runs an ingested
image from its layer trees with no pull.

    podmanStore/overlay/<chain id>/diff      -> ../../../.layers/XX/<layer digest>/layerfs
    podmanStore/overlay/<chain id>/link      the layer's short name (26 base32 characters)
    podmanStore/overlay/<chain id>/lower     `l/<parent link>:l/<grandparent link>:...`
    podmanStore/overlay/l/<link>             -> ../<chain id>/diff
    podmanStore/overlay-layers/layers.json   containers/storage's layer records
    podmanStore/overlay-images/images.json   its image records (names, top layer)
    podmanStore/overlay-images/<config hex>/manifest, /=<base64 of the config digest>
    podmanStore/overlay-{images,layers}/*.lock   empty; containers/storage opens them

Facts from DUCC (cvmfs/cvmfs ducc/lib/podman_store.go) and containers/storage's overlay
driver: the layer directories of the overlay driver are keyed by the OCI chain ID (DUCC
uses the diff ID, which is the chain ID of a bottom layer but names one directory for a
layer reused at another depth); a layer's `lower` file lists its ancestors' links top
down; image big data lives in a file named after its key (`manifest`, and the config under
its digest, base64 with a `=` prefix as containers/storage escapes keys outside
`[.0-9a-z]`). Symlinks are relative, so the store works wherever the repository is
mounted. `podmanStore` and its three subdirectories are nested catalogs, as DUCC makes them.

No `.chains/` directory is written: containerd's snapshotter finds layer trees by layer
digest (as the reference's does) and Podman reads this store; neither needs one.

The store is derived, never edited: `plan_store` computes its whole contents from the
images of the working tree (`.metadata/<name>/manifest.json` and `config.json`), and
`sync_podman_store` rewrites only what differs, before every publish of an ingest or a
removal, so removed images and layers leave it with the rest. Link names are derived from
the chain ID, so the same images always give the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ImageError
from pycvmfs.images import layout
from pycvmfs.images.manifest import Manifest, parse_config, parse_manifest
from pycvmfs.publisher.tree_walk import CATALOG_MARKER

STORE = "podmanStore"
OVERLAY = "overlay"
IMAGES = "overlay-images"
LAYERS = "overlay-layers"
LINKS = f"{OVERLAY}/l"
CATALOG_DIRS = ("", OVERLAY, IMAGES, LAYERS)  # relative to STORE; DUCC nests each
CONFIG_FILE = "config.json"  # beside manifest.json in `.metadata/<name>/` (ingest.py)
LINK_CHARS = 26  # containers/storage's generateID(26)

_PLAIN_KEY = re.compile(r"[.0-9a-z]*")


@dataclass(frozen=True, slots=True)
class StoreImage:
    """One published image with every layer tree in the repository."""

    names: tuple[str, ...]  # public names `<registry>/<repository>:<tag>`
    manifest: Manifest
    config_raw: bytes
    diff_ids: tuple[str, ...]  # of the manifest's layers, foreign ones left out
    diff_sizes: tuple[int | None, ...] = ()  # their uncompressed sizes, where recorded


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """A file (`data`) or a relative symlink (`target`) of the store."""

    data: bytes | None = None
    target: str | None = None


def link_name(chain_id: str) -> str:
    """The short name of a layer directory (stable: derived from its chain ID)."""
    return base64.b32encode(hashlib.sha256(chain_id.encode()).digest()[:16]).decode()[
        :LINK_CHARS]


def big_data_file(key: str) -> str:
    """containers/storage's file name for an image's big-data item `key`."""
    if _PLAIN_KEY.fullmatch(key):
        return key
    return "=" + base64.b64encode(key.encode()).decode()


def plan_store(images: Iterable[StoreImage]) -> dict[str, StoreEntry]:
    """The whole store (paths relative to `podmanStore/`) for these images. An image
    published under several names is one record with every name."""
    by_config: dict[str, StoreImage] = {}
    for image in sorted(images, key=lambda i: i.names):
        known = by_config.get(image.manifest.config.digest)
        by_config[image.manifest.config.digest] = image if known is None else StoreImage(
            tuple(sorted({*known.names, *image.names})), known.manifest, known.config_raw,
            known.diff_ids, known.diff_sizes)
    entries: dict[str, StoreEntry] = {}
    layers: dict[str, dict[str, object]] = {}
    records = []
    for config_digest, image in sorted(by_config.items()):
        created = _created(image.config_raw)
        wanted = [layer for layer in image.manifest.layers if not layer.foreign]
        chains = layout.oci_chain_ids(image.diff_ids)
        lower: list[str] = []  # the links of the layers below, bottom first
        for index, (layer, diff_id, chain) in enumerate(zip(wanted, image.diff_ids, chains,
                                                            strict=True)):
            chain_hex, link = layout.digest_hex(chain), link_name(chain)
            if chain_hex not in layers:
                layers[chain_hex] = {
                    "id": chain_hex,
                    **({"parent": layout.digest_hex(chains[index - 1])} if index else {}),
                    **({"created": created} if created else {}),
                    "compressed-diff-digest": layer.digest, "compressed-size": layer.size,
                    "diff-digest": diff_id,
                    **({"diff-size": size} if (size := _at(image.diff_sizes, index)) is not None
                       else {})}
                entries[f"{OVERLAY}/{chain_hex}/diff"] = StoreEntry(target=posixpath.relpath(
                    layout.layerfs_dir(layer.digest), f"{STORE}/{OVERLAY}/{chain_hex}"))
                entries[f"{OVERLAY}/{chain_hex}/link"] = StoreEntry(link.encode())
                if lower:
                    entries[f"{OVERLAY}/{chain_hex}/lower"] = StoreEntry(
                        ":".join(reversed(lower)).encode())
                entries[f"{LINKS}/{link}"] = StoreEntry(target=f"../{chain_hex}/diff")
            lower.append(f"l/{link}")
        config_hex = layout.digest_hex(config_digest)
        manifest_digest = image.manifest.digest
        big_data = {"manifest": image.manifest.raw, config_digest: image.config_raw}
        for key, data in big_data.items():
            entries[f"{IMAGES}/{config_hex}/{big_data_file(key)}"] = StoreEntry(data)
        records.append({
            "id": config_hex, "digest": manifest_digest, "names": list(image.names),
            **({"layer": layout.digest_hex(chains[-1])} if chains else {}),
            "big-data-names": list(big_data),
            "big-data-sizes": {key: len(data) for key, data in big_data.items()},
            "big-data-digests": {"manifest": manifest_digest, config_digest: config_digest},
            **({"created": created} if created else {})})
    entries[f"{IMAGES}/images.json"] = StoreEntry(_json(records))
    entries[f"{LAYERS}/layers.json"] = StoreEntry(_json(list(layers.values())))
    entries[f"{IMAGES}/images.lock"] = StoreEntry(b"")
    entries[f"{LAYERS}/layers.lock"] = StoreEntry(b"")
    return entries


def _at(values: tuple[int | None, ...], index: int) -> int | None:
    return values[index] if index < len(values) else None


def _json(value: object) -> bytes:
    return json.dumps(value, indent=1, sort_keys=False).encode()


def _created(config_raw: bytes) -> str | None:
    """The image's creation time from its config (RFC 3339), when it has a usable one."""
    try:
        created = json.loads(config_raw).get("created")
    except (ValueError, AttributeError):
        return None
    if isinstance(created, str) and re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", created):
        return created
    return None


def stored_images(work: Path) -> list[StoreImage]:
    """The images of a working tree whose every (non-foreign) layer has its layer tree
    there; images without trees, or with metadata that does not parse, are left out."""
    found: list[StoreImage] = []
    metadata_root = work / layout.METADATA
    if not metadata_root.is_dir():
        return found
    for manifest_path in sorted(metadata_root.rglob(layout.MANIFEST_FILE)):
        name = manifest_path.parent.relative_to(metadata_root).as_posix()
        try:
            image = _stored_image(work, name, manifest_path)
        except (OSError, ImageError):  # LayoutError too: a digest that is not sha256
            continue
        if image is not None:
            found.append(image)
    return found


def _stored_image(work: Path, name: str, manifest_path: Path) -> StoreImage | None:
    manifest = parse_manifest(manifest_path.read_bytes())
    if not isinstance(manifest, Manifest):
        return None
    config_raw = (manifest_path.parent / CONFIG_FILE).read_bytes()
    config = parse_config(config_raw, manifest.config.digest)
    wanted = [(layer, diff_id) for layer, diff_id in zip(manifest.layers, config.diff_ids,
                                                         strict=False) if not layer.foreign]
    for digest in (manifest.config.digest, *(diff_id for _, diff_id in wanted)):
        layout.digest_hex(digest)  # LayoutError (skipped by the caller) unless sha256
    if (not wanted or len(config.diff_ids) != len(manifest.layers)
            or not all((work / layout.layerfs_dir(layer.digest)).is_dir()
                       for layer, _ in wanted)):
        return None
    return StoreImage((name,), manifest, config_raw, tuple(diff_id for _, diff_id in wanted),
                      tuple(_diff_size(work, layer.digest) for layer, _ in wanted))


def layer_info(layer_digest: str, diff_id: str | None, size: int) -> bytes:
    """DUCC's per-layer record (`.layers/XX/<digest>/.metadata/layers.json`), which ingest
    writes for each new layer tree and `_diff_size` reads back."""
    info: dict[str, object] = {"compressed-diff-digest": layer_digest, "diff-size": size}
    if diff_id is not None and diff_id.startswith("sha256:"):
        info = {"id": layout.digest_hex(diff_id), **info, "diff-digest": diff_id}
    return json.dumps([info], indent=1).encode()


def _diff_size(work: Path, layer_digest: str) -> int | None:
    """The uncompressed size ingest recorded for a layer (`.metadata/layers.json`)."""
    try:
        records = json.loads((work / layout.layer_info_file(layer_digest)).read_bytes())
        size = records[0]["diff-size"]
    except (OSError, ValueError, LookupError, TypeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def sync_podman_store(work: Path) -> bool:
    """Make `work/podmanStore` hold exactly `plan_store(stored_images(work))`, touching only
    what differs; no store is made for a working tree without layer trees. True when
    anything changed."""
    images = stored_images(work)
    root = work / STORE
    if not images and not root.exists():
        return False
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise ImageError(f"{root}: not a directory; move it away to let ingest write the "
                         "Podman store there")
    return _apply(root, plan_store(images))


def _apply(root: Path, plan: Mapping[str, StoreEntry]) -> bool:
    wanted = dict(plan)
    for directory in CATALOG_DIRS:
        wanted[posixpath.join(directory, CATALOG_MARKER)] = StoreEntry(b"")
    wanted_dirs = {parent for path in wanted for parent in _parents(path)}
    changed = False
    present: set[str] = set()
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_dir():
                present.add(relative)
                if relative not in wanted:
                    path.unlink()
                    changed = True
            elif relative not in wanted_dirs:
                shutil.rmtree(path)
                changed = True
    for relative, entry in sorted(wanted.items()):
        path = root / relative
        if relative in present and _same(path, entry):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.new")
        temporary.unlink(missing_ok=True)
        if entry.target is not None:
            temporary.symlink_to(entry.target)
        else:
            temporary.write_bytes(entry.data or b"")
        os.replace(temporary, path)  # a directory in the way went in the walk above
        changed = True
    return changed


def _parents(relative: str) -> Iterable[str]:
    parent = posixpath.dirname(relative)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


def _same(path: Path, entry: StoreEntry) -> bool:
    try:
        if entry.target is not None:
            return path.is_symlink() and os.readlink(path) == entry.target
        return not path.is_symlink() and path.read_bytes() == entry.data
    except OSError:
        return False
