"""Images into a repository, DUCC-style: flat root filesystems, layer trees, public
symlinks, metadata.

    refs -> source (registry / OCI layout / docker archive) -> manifest + config
         -> already published with this manifest and all its layer trees? skip
         -> layers downloaded and verified (only those something still needs)
            -> each missing layer tree (`layers.unpack_layer_tree`, overlayfs whiteouts)
               renamed into `.layers/XX/<digest>/layerfs`, its origin.json updated
            -> applied in order into a fresh rootfs (`layers.apply_layers`: whiteouts,
               hostile entries neutralised), Apptainer files, start sets (`--start-set`:
               start_set.py, file bundles recorded by running a command in it), renamed
               into `.flat/XX/<config>`
         -> `<registry>/<repository>:<tag>` symlink, `.metadata/.../{manifest,config,ingest}.json`
         -> the Podman image store `podmanStore/` brought in line (podman_store.py)
         -> one publish of the working tree (unchanged files are not read again)

The working tree (`work`) is the repository's contents on the publisher's disk; the
publisher turns it into the next revision. Images and layers already there are not unpacked
again; identical files of different images become one object (content addressing), and
every image directory and every layerfs is its own nested catalog. A failed ingest leaves
the published repository alone: new trees are built beside the working tree and renamed in
only when complete, and the repository changes only if the final publish succeeds. What it
staged in the working tree is journalled (staging.py): a later ingest refuses to start
while it is there, unless told to publish it (RESUME) or undo it (DISCARD). Keys, storage
and working tree are checked before anything is fetched (preflight.py).

After a successful publish every image and layer tree in the working tree shrinks to a
`.pycvmfs-kept` stub (`keep_published_images`): later publishes graft their catalogs from
the previous revision, so the working tree holds only what is new, as the reference's DUCC
works on the mounted repository. The working tree therefore belongs to its storage.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pycvmfs.errors import ImageError
from pycvmfs.images import layout
from pycvmfs.images.archives import open_local_image
from pycvmfs.images.layer_members import LayerLimits
from pycvmfs.images.layer_report import LayerReport
from pycvmfs.images.layer_stream import COPY_CHUNK_BYTES
from pycvmfs.images.layers import apply_layers, unpack_layer_tree
from pycvmfs.images.manifest import LINUX_AMD64, ImageSource, Platform
from pycvmfs.images.podman_store import layer_info, sync_podman_store
from pycvmfs.images.preflight import check_can_publish
from pycvmfs.images.reference import ImageReference, parse_reference
from pycvmfs.images.registry import RegistryClient
from pycvmfs.images.singularity import ImageConfig as RunConfig
from pycvmfs.images.singularity import write_singularity_files
from pycvmfs.images.staging import JOURNAL, SCRATCH, StagedPolicy, StagingJournal
from pycvmfs.images.start_set import DEFAULT_TIMEOUT_S, record_start_sets_at_ingest
from pycvmfs.publisher.kept import is_kept, keep_published
from pycvmfs.publisher.publish import PublishOptions, PublishResult, publish
from pycvmfs.publisher.tree_walk import CATALOG_MARKER

UNPUBLISHED = JOURNAL  # the working tree has unpublished changes (staging.py)
CONFIG_FILE = "config.json"
INGEST_FILE = "ingest.json"  # ours: reference, manifest and index digests, platform

Notify = Callable[[dict[str, object]], None]
STAGED_FIX = ("publish them with this ingest (--resume), or undo them (--discard-staged)")


class IngestProgress(Protocol):
    """What a terminal display is told while images are ingested (from the ingesting
    thread, except `advance` which the publisher calls from its workers)."""

    def start_image(self, image: str, layers: int, compressed_bytes: int) -> None:
        """An image's layers are about to be fetched and unpacked (not for skipped ones)."""

    def downloaded(self, nbytes: int) -> None:
        """More compressed layer bytes arrived."""

    def unpacked(self, files: int, nbytes: int) -> None:
        """More tar members were written (flat tree or layer tree)."""

    def end_image(self, image: str, *, skipped: bool) -> None: ...

    def begin(self, total_files: int, total_bytes: int) -> None:
        """The publish starts (`PublishProgress`)."""

    def advance(self, files: int, nbytes: int) -> None: ...


@dataclass(frozen=True, slots=True)
class IngestOptions:
    publish: PublishOptions  # its `source` is the working tree
    platform: Platform = LINUX_AMD64
    limits: LayerLimits = field(default_factory=LayerLimits)
    username: str | None = None
    password: str | None = None
    notify: Notify = lambda event: None  # one JSON-able dict per event
    progress: IngestProgress | None = None  # a terminal display
    layer_trees: bool = True  # also write `.layers/XX/<digest>/layerfs` (DUCC)
    start_sets: tuple[tuple[str, ...], ...] = ()  # commands recorded in a new flat tree
    start_set_timeout: float = DEFAULT_TIMEOUT_S
    staged: StagedPolicy = StagedPolicy.REFUSE  # changes an earlier ingest did not publish


@dataclass(frozen=True, slots=True)
class IngestedImage:
    reference: str
    public_path: str
    config_digest: str
    skipped: bool  # already published with the same manifest
    report: LayerReport | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    images: list[IngestedImage]
    published: PublishResult | None  # None: nothing changed


class IngestError(ImageError):
    """Some images failed; the others were published all the same (`result`)."""

    def __init__(self, message: str, result: IngestResult) -> None:
        super().__init__(message)
        self.result = result


def ingest(references: list[str], options: IngestOptions,
           names: Mapping[str, str] | None = None) -> IngestResult:
    """Ingest every reference (see the module docstring), then publish once if anything
    changed. `names` gives local images (`oci:`, `docker-archive:`) the public name
    `<registry>/<repository>:<tag>` to publish them under (a docker archive's own RepoTags
    serve otherwise).

    Before any image is fetched: the keys, storage and working tree are checked
    (preflight.py), and changes an earlier ingest staged without publishing them are
    refused, resumed or discarded (`options.staged`, staging.py).

    An image that fails does not stop the others: they are published, then IngestError
    names every failure (the publisher's own errors propagate as they are). Changes a
    failed publish left in the working tree stay staged for `options.staged` to decide."""
    work = options.publish.source
    work.mkdir(parents=True, exist_ok=True)
    done: list[IngestedImage] = []
    failures: list[tuple[str, Exception]] = []
    with work_tree_lock(work):
        journal = StagingJournal(work)
        if references or journal.read() is not None:
            check_can_publish(options.publish)
        staged = journal.settle(options.staged, fix=STAGED_FIX)
        if staged is not None:
            options.notify({"action": "staged", "policy": options.staged.value,
                            "images": staged.images, "message": staged.describe()})
        for text in references:
            started = time.monotonic()
            options.notify({"action": "start_image", "image": text})
            try:
                image = _ingest_one(parse_reference(text), text, work, options,
                                    (names or {}).get(text))
            except Exception as exc:  # one image's failure, whatever it is, ends only it
                options.notify({"action": "end_image", "image": text, "status": "error",
                                "error": str(exc)})
                _end_progress(options, text, skipped=False)
                failures.append((text, exc))
                continue
            options.notify({"action": "end_image", "image": text, "status": "ok",
                            "skipped": image.skipped, "config": image.config_digest,
                            "seconds": round(time.monotonic() - started, 3)})
            done.append(image)
        result = None
        store_changed = sync_podman_store(work)
        if (not all(image.skipped for image in done) or store_changed
                or journal.read() is not None):
            options.notify({"action": "start_publish", "repository": options.publish.fqrn})
            result = publish(options.publish, options.progress)
            options.notify({"action": "end_publish", "repository": options.publish.fqrn,
                            "revision": result.manifest.revision, "files": result.files,
                            "bytes_written": result.bytes_written,
                            "seconds": round(result.seconds, 3)})
            keep_published_images(work)
            journal.clear()
    outcome = IngestResult(done, result)
    if failures:
        first = failures[0][1]
        raise IngestError("; ".join(f"{ref}: {exc}" for ref, exc in failures)
                          + ("" if result is None else
                             f" (the other images were published as revision "
                             f"{result.manifest.revision})"), outcome) from first
    return outcome


def keep_published_images(work: Path) -> list[str]:
    """Shrink every published image and layer tree of the working tree to a kept stub
    (publisher.kept): the next publish grafts their catalogs from the previous revision,
    so the working tree stays small and its walk quick. Only directories with a catalog
    marker are published nested catalogs; only call this right after a successful publish.
    Returns the paths stubbed."""
    stubbed = []
    for pattern in (f"{layout.FLAT}/??/*", f"{layout.LAYERS}/??/*/{layout.LAYERFS}"):
        for directory in sorted(work.glob(pattern)):
            if (directory.is_dir() and not directory.is_symlink() and not is_kept(directory)
                    and (directory / CATALOG_MARKER).is_file()):
                relative = directory.relative_to(work).as_posix()
                keep_published(work, relative)
                stubbed.append(relative)
    return stubbed


def _ingest_one(reference: ImageReference, text: str, work: Path,
                options: IngestOptions, given_name: str | None) -> IngestedImage:
    with _opened(reference, options) as source:
        name = _public_name(reference, source, given_name)
        manifest, config = source.manifest, source.config
        metadata = work / layout.metadata_file(name)
        flat_rel = layout.flat_dir(config.digest)
        flat = work / flat_rel
        layers = list(dict.fromkeys(layer.digest for layer in manifest.layers
                                    if not layer.foreign))  # DUCC skips foreign layers
        trees = [digest for digest in layers if options.layer_trees
                 and not (work / layout.layerfs_dir(digest)).is_dir()]
        if (metadata.is_file() and metadata.read_bytes() == manifest.raw and flat.is_dir()
                and not trees):
            _end_progress(options, text, skipped=True)
            return IngestedImage(text, name, config.digest, skipped=True)
        report = None
        diff_sizes: dict[str, int] = {}  # layer digest -> uncompressed bytes, new trees
        if trees or not flat.is_dir():
            report, diff_sizes = _unpack(source, text, work,
                                         flat if not flat.is_dir() else None, trees, options)
        _end_progress(options, text, skipped=False)
    link_path, target = layout.public_link(name, config.digest)
    origins = [layout.layer_origin_file(d) for d in layers] if options.layer_trees else []
    infos = [layout.layer_info_file(d) for d in diff_sizes]
    StagingJournal(work).stage_image(name, [link_path, *origins, *infos, *(
        f"{layout.METADATA}/{name}/{file}"
        for file in (layout.MANIFEST_FILE, CONFIG_FILE, INGEST_FILE))])
    layer_trees = [layout.layerfs_dir(d) for d in layers] if options.layer_trees else []
    for directory in layout.nested_catalog_dirs([flat_rel, *layer_trees]):
        if not is_kept(work / directory):  # a stub already stands for a published catalog
            (work / directory).mkdir(parents=True, exist_ok=True)
            (work / directory / CATALOG_MARKER).touch()
    for digest in layers if options.layer_trees else []:
        _add_origin(work / layout.layer_origin_file(digest), name)
    diff_ids = dict(zip((layer.digest for layer in manifest.layers), config.diff_ids,
                        strict=False))
    for digest, size in diff_sizes.items():
        replace_file(work / layout.layer_info_file(digest),
                     layer_info(digest, diff_ids.get(digest), size))
    _replace_symlink(work / link_path, target)
    replace_file(metadata, manifest.raw)
    replace_file(metadata.with_name(CONFIG_FILE), config.raw)
    replace_file(metadata.with_name(INGEST_FILE), json.dumps({
        "reference": text, "manifest": manifest.digest, "index": manifest.index_digest,
        "platform": str(manifest.platform) if manifest.platform else None,
    }, indent=1).encode())
    return IngestedImage(text, name, config.digest, skipped=False, report=report)


def _unpack(source: ImageSource, text: str, work: Path, flat: Path | None,
            trees: list[str], options: IngestOptions) -> tuple[LayerReport, dict[str, int]]:
    """Download and verify the layers needed, write the missing layer trees and (when `flat`
    is given) the flat rootfs in a scratch directory, and rename them into place only when
    all are complete: a failed image leaves the working tree as it was. Returns the report
    and the uncompressed size of each new layer tree's layer."""
    scratch_root = work / SCRATCH
    scratch_root.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="image-", dir=scratch_root))
    progress = options.progress
    on_entry = None if progress is None else lambda nbytes: progress.unpacked(1, nbytes)
    try:
        wanted = [layer for layer in source.manifest.layers if not layer.foreign
                  and (flat is not None or layer.digest in trees)]
        unique = {layer.digest: layer for layer in wanted}
        if progress is not None:
            progress.start_image(text, len(unique), sum(lay.size for lay in unique.values()))
        blobs: dict[str, Path] = {}
        for digest, layer in unique.items():
            blobs[digest] = scratch / f"layer-{len(blobs)}"
            _download(source, digest, blobs[digest], progress)
            options.notify({"action": "layer", "layer": digest, "size": layer.size})
        report = LayerReport()
        sizes: dict[str, int] = {}
        ready: list[tuple[Path, Path]] = []  # (scratch directory, its place in `work`)
        for digest in trees:
            started = time.monotonic()
            tree = scratch / f"tree-{layout.digest_hex(digest)}"
            part = unpack_layer_tree(blobs[digest], tree, limits=options.limits,
                                     on_entry=on_entry)
            report.layers += part.layers
            report.findings += part.findings
            sizes[digest] = sum(stats.tar_bytes for stats in part.layers)
            ready.append((tree, work / layout.layerfs_dir(digest)))
            options.notify({"action": "layer_tree", "layer": digest,
                            "files": part.layers[0].members if part.layers else 0,
                            "seconds": round(time.monotonic() - started, 3)})
        if flat is not None:
            rootfs = scratch / "rootfs"
            report = apply_layers([blobs[layer.digest] for layer in wanted], rootfs,
                                  limits=options.limits, on_entry=on_entry)
            run_config = RunConfig.from_oci(json.loads(source.config.raw))
            write_singularity_files(rootfs, run_config)
            if options.start_sets:
                record_start_sets_at_ingest(
                    rootfs, run_config, options.start_sets,
                    "/" + flat.relative_to(work).as_posix(), options.start_set_timeout,
                    lambda event: options.notify({"image": text, **event}))
            ready.append((rootfs, flat))
        StagingJournal(work).stage_dirs([t.relative_to(work).as_posix() for _, t in ready])
        for built, target in ready:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(built, target)
        return report, sizes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(source: ImageSource, digest: str, path: Path,
              progress: IngestProgress | None) -> None:
    with source.open_blob(digest) as stream, open(path, "wb") as out:
        while chunk := stream.read(COPY_CHUNK_BYTES):  # verified at EOF
            out.write(chunk)
            if progress is not None:
                progress.downloaded(len(chunk))


def _end_progress(options: IngestOptions, text: str, *, skipped: bool) -> None:
    if options.progress is not None:
        options.progress.end_image(text, skipped=skipped)


def _add_origin(path: Path, name: str) -> None:
    """DUCC's backlink from a layer to the images using it (`{"origin": [names]}`)."""
    origin = read_origins(path)
    if name not in origin:
        write_origins(path, sorted({*origin, name}))


def read_origins(path: Path) -> list[str]:
    """The image names of a layer's origin.json ([] when missing or unreadable)."""
    origin = json_field(path, "origin")
    return [str(name) for name in origin] if isinstance(origin, list) else []


def write_origins(path: Path, names: list[str]) -> None:
    replace_file(path, json.dumps({"origin": names}).encode())


def json_field(path: Path, key: str) -> object:
    """`key` of the JSON object in `path`; None when missing, unreadable or not an object
    (the small metadata files ingest writes)."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document.get(key) if isinstance(document, dict) else None


def _public_name(reference: ImageReference, source: ImageSource, given: str | None) -> str:
    """Where the image appears: the registry reference's own name, the name given for a
    local image, or a docker archive's first RepoTag."""
    if given is None and reference.is_registry:
        return reference.public_path()
    if given is None:
        tags = getattr(source, "repo_tags", ())
        if not tags:
            raise ImageError(f"{reference}: a local image needs a name to publish it under "
                             "(registry/repository:tag)")
        given = tags[0]
    named = parse_reference(given if "://" in given else f"docker://{given}")
    if not named.is_registry or named.digest or not named.tag:
        raise ImageError(f"{given!r}: expected registry/repository:tag")
    return named.public_path()


@contextmanager
def _opened(reference: ImageReference, options: IngestOptions) -> Iterator[ImageSource]:
    if reference.is_registry:
        client = RegistryClient.for_reference(reference, username=options.username,
                                              password=options.password)
        try:
            image = client.open_image(reference, options.platform)
            try:
                yield image
            finally:
                image.close()
        finally:
            client.close()
    else:
        local = open_local_image(reference, options.platform)
        try:
            yield local
        finally:
            local.close()


@contextmanager
def work_tree_lock(work: Path) -> Iterator[None]:
    """One ingest per working tree at a time (the publisher locks the storage too)."""
    (work / SCRATCH).mkdir(exist_ok=True)
    with open(work / SCRATCH / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImageError(f"another ingest is working on {work}") from None
        yield


def _replace_symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, path)


def replace_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    os.replace(temporary, path)
