"""Remove images from the working tree of an image repository, then publish once.

    remove_images(["host/ns/name:tag", ...], options)
      -> the public symlink `<registry>/<repository>:<tag>` and `.metadata/<name>/` go
      -> every `.flat/XX/<digest>` no remaining public symlink points to goes
      -> every `.layers/XX/<digest>` no remaining image's manifest lists goes; the
         `origin.json` of the others forgets the removed names
      -> empty parent directories of what went are removed
      -> the Podman image store `podmanStore/` forgets them (podman_store.py)
      -> one publish (none when nothing changed)

`names_for_digest` maps a manifest digest (a registry's delete event names only that) to the
tags in the repository whose ingested manifest has that digest, or that were chosen from an
image index with that digest (a multi-platform push is deleted by the index's digest).

Objects in storage stay until a sweep (`pycvmfs gc`) removes what no kept revision needs.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ImageError
from pycvmfs.images import layout
from pycvmfs.images.ingest import (
    INGEST_FILE,
    STAGED_FIX,
    IngestOptions,
    json_field,
    keep_published_images,
    read_origins,
    work_tree_lock,
    write_origins,
)
from pycvmfs.images.manifest import Manifest, parse_manifest
from pycvmfs.images.podman_store import sync_podman_store
from pycvmfs.images.reference import parse_reference
from pycvmfs.images.staging import StagedPolicy, StagingJournal
from pycvmfs.publisher.publish import PublishOptions, PublishResult, publish
from pycvmfs.publisher.tree_walk import CATALOG_MARKER

_FLAT_TARGET = re.compile(rf"{re.escape(layout.FLAT)}/([0-9a-f]{{2}})/([0-9a-f]{{64}})")


@dataclass(frozen=True, slots=True)
class RemovalResult:
    removed: list[str]  # public names whose symlink (or metadata) was removed
    missing: list[str]  # names that were not in the repository
    flats_removed: list[str]  # `.flat/XX/<hex>`, `.layers/XX/<hex>` no longer referenced
    published: PublishResult | None  # None: nothing changed


def public_name_of(text: str) -> str:
    """`<registry>/<repository>:<tag>` (or `@digest`) of an image name, normalised as
    ingest names it (`docker://`, `https://` prefixes and Hub aliases accepted)."""
    reference = parse_reference(text if "://" in text else f"docker://{text}")
    if not reference.is_registry:
        raise ImageError(f"{text!r}: expected registry/repository:tag")
    return reference.public_path()


def remove_images(names: list[str], options: IngestOptions | PublishOptions) -> RemovalResult:
    """Remove the images named (see the module docstring); publish once if anything
    changed. Names not in the repository are reported in `missing`, not an error. The
    publish covers the whole working tree, so changes an ingest staged without publishing
    them are settled first as for an ingest (`IngestOptions.staged`; REFUSE for bare
    PublishOptions)."""
    publish_options = options.publish if isinstance(options, IngestOptions) else options
    policy = options.staged if isinstance(options, IngestOptions) else StagedPolicy.REFUSE
    work = publish_options.source
    if not work.is_dir():
        return RemovalResult([], [public_name_of(n) for n in names], [], None)
    removed: list[str] = []
    missing: list[str] = []
    with work_tree_lock(work):
        journal = StagingJournal(work)
        staged = journal.settle(policy, fix=STAGED_FIX)
        wanted = [public_name_of(text) for text in names]
        present = [name for name in wanted if _present(work, name)]
        if present:
            journal.stage_removal(present)
        for name in wanted:
            if _remove_one(work, name):
                removed.append(name)
            else:
                missing.append(name)
        flats = _remove_unreferenced_flats(work) if removed else []
        if removed:
            flats += _remove_unreferenced_layers(work, removed)
        store_changed = sync_podman_store(work)
        if (not removed and not flats and not store_changed
                and (staged is None or policy is not StagedPolicy.RESUME)):
            return RemovalResult(removed, missing, flats, None)
        progress = options.progress if isinstance(options, IngestOptions) else None
        result = publish(publish_options, progress)
        keep_published_images(work)
        journal.clear()  # the publish covered the working tree
    return RemovalResult(removed, missing, flats, result)


def names_for_digest(work: Path, registry: str, repository: str, digest: str) -> list[str]:
    """Public names `<registry>/<repository>:<tag>` whose ingested manifest hashes to
    `digest` (sha256 only), sorted."""
    algorithm, _, wanted = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", wanted):
        return []
    prefix = public_name_of(f"{registry}/{repository}:x").rsplit(":", 1)[0]
    directory = work / layout.METADATA / posixpath.dirname(prefix)
    base = posixpath.basename(prefix)
    if not directory.is_dir():
        return []
    found = []
    for entry in sorted(directory.iterdir()):
        if not (entry.name.startswith(base + ":") or entry.name.startswith(base + "@")):
            continue
        try:
            data = (entry / layout.MANIFEST_FILE).read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == wanted or _index_digest(entry) == digest:
            found.append(f"{posixpath.dirname(prefix)}/{entry.name}")
    return found


def _index_digest(metadata_dir: Path) -> str | None:
    """The index an image was chosen from, as ingest recorded it (`ingest.json`)."""
    index = json_field(metadata_dir / INGEST_FILE, "index")
    return index if isinstance(index, str) else None


def _used_layers(work: Path) -> set[str]:
    """Layer digests listed by the manifest of some image still in the working tree."""
    used: set[str] = set()
    for manifest in (work / layout.METADATA).rglob(layout.MANIFEST_FILE):
        try:
            parsed = parse_manifest(manifest.read_bytes())
        except (OSError, ImageError):
            continue
        if isinstance(parsed, Manifest):
            used.update(layer.digest for layer in parsed.layers)
    return used


def _remove_unreferenced_layers(work: Path, removed_names: list[str]) -> list[str]:
    used = _used_layers(work)
    for digest in used:
        try:
            origin = layout.layer_origin_file(digest)
        except layout.LayoutError:  # not sha256: never had a layer tree
            continue
        _forget_origins(work / origin, removed_names)
    return _sweep_fanned(work, layout.LAYERS, lambda relative: "sha256:"
                         + relative.rsplit("/", 1)[1] not in used)


def _forget_origins(path: Path, names: list[str]) -> None:
    origin = read_origins(path)
    if set(origin) & set(names):
        write_origins(path, [n for n in origin if n not in names])


def _present(work: Path, name: str) -> bool:
    """Whether `name` is in the working tree (refused, before any change, when its public
    path is not a symlink)."""
    link = work / name
    if not link.is_symlink() and link.exists():
        raise ImageError(f"{name}: not an image symlink in {work}; refusing to remove it")
    return link.is_symlink() or (work / layout.METADATA / name).is_dir()


def _remove_one(work: Path, name: str) -> bool:
    link = work / name
    metadata = work / layout.METADATA / name
    found = False
    if link.is_symlink():
        link.unlink()
        found = True
    elif link.exists():
        raise ImageError(f"{name}: not an image symlink in {work}; refusing to remove it")
    if metadata.is_dir() and not metadata.is_symlink():
        shutil.rmtree(metadata)
        found = True
    _prune_empty(link.parent, work)
    _prune_empty(metadata.parent, work / layout.METADATA)
    return found


def _prune_empty(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def referenced_flats(work: Path) -> set[str]:
    """`.flat/XX/<hex>` paths that some public symlink of the working tree points to."""
    found: set[str] = set()
    for top in os.scandir(work):
        if top.name.startswith(".") or not top.is_dir(follow_symlinks=False):
            continue
        for directory, dirs, files in os.walk(top.path):  # does not follow symlinks
            for name in dirs + files:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    continue
                relative = os.path.relpath(path, work)
                target = posixpath.normpath(
                    posixpath.join(posixpath.dirname(relative), os.readlink(path)))
                if _FLAT_TARGET.fullmatch(target):
                    found.add(target)
    return found


def _remove_unreferenced_flats(work: Path) -> list[str]:
    keep = referenced_flats(work)
    return _sweep_fanned(work, layout.FLAT, lambda relative: relative not in keep)


def _sweep_fanned(work: Path, top: str, unused: Callable[[str], bool]) -> list[str]:
    """Remove `top/XX/<64 hex>` directories for which `unused(relative path)` holds, and
    fan-out directories left with nothing but their catalog marker."""
    if not (work / top).is_dir():
        return []
    removed = []
    for fan in sorted((work / top).iterdir()):
        if not fan.is_dir() or fan.is_symlink() or not re.fullmatch(r"[0-9a-f]{2}", fan.name):
            continue
        for entry in sorted(fan.iterdir()):
            relative = f"{top}/{fan.name}/{entry.name}"
            if (re.fullmatch(r"[0-9a-f]{64}", entry.name) and entry.is_dir()
                    and not entry.is_symlink() and unused(relative)):
                shutil.rmtree(entry)
                removed.append(relative)
        if {p.name for p in fan.iterdir()} <= {CATALOG_MARKER}:
            shutil.rmtree(fan)
    return removed
