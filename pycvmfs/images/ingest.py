"""Images into a repository, DUCC-style: flat root filesystems, public symlinks, metadata.

    refs -> source (registry / OCI layout / docker archive) -> manifest + config
         -> already published with this manifest? skip
         -> layers downloaded and verified -> applied in order into a fresh rootfs
            (`layers.apply_layers`: whiteouts, hostile entries neutralised)
         -> Apptainer files -> renamed into `.flat/XX/<config>` of the working tree
         -> `<registry>/<repository>:<tag>` symlink, `.metadata/.../manifest.json`
         -> one publish of the working tree (unchanged files are not read again)

The working tree (`work`) is the repository's contents on the publisher's disk; the
publisher turns it into the next revision. Images already there are not unpacked again;
identical files of different images become one object (content addressing), and every
image directory is its own nested catalog. A failed ingest leaves the working tree's
published state alone: new images are built beside it and renamed in only when complete,
and the repository changes only if the final publish succeeds.

Caveats: the working tree holds every image unpacked (the reference's DUCC works on the
mounted repository instead); `.layers/` and `.chains/` are not written yet.
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

from pycvmfs.errors import ImageError
from pycvmfs.images import layout
from pycvmfs.images.archives import open_local_image
from pycvmfs.images.layers import LayerLimits, LayerReport, apply_layers
from pycvmfs.images.manifest import LINUX_AMD64, ImageSource, Platform
from pycvmfs.images.reference import ImageReference, parse_reference
from pycvmfs.images.registry import RegistryClient
from pycvmfs.images.singularity import ImageConfig as RunConfig
from pycvmfs.images.singularity import write_singularity_files
from pycvmfs.publisher.publish import PublishOptions, PublishResult, publish

SCRATCH = ".pycvmfs-ingest"  # in the working tree: unfinished images, the lock
CONFIG_FILE = "config.json"

Notify = Callable[[dict[str, object]], None]


@dataclass(frozen=True, slots=True)
class IngestOptions:
    publish: PublishOptions  # its `source` is the working tree
    platform: Platform = LINUX_AMD64
    limits: LayerLimits = field(default_factory=LayerLimits)
    username: str | None = None
    password: str | None = None
    notify: Notify = lambda event: None  # one JSON-able dict per event


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


def ingest(references: list[str], options: IngestOptions,
           names: Mapping[str, str] | None = None) -> IngestResult:
    """Ingest every reference (see the module docstring), then publish once if anything
    changed. `names` gives local images (`oci:`, `docker-archive:`) the public name
    `<registry>/<repository>:<tag>` to publish them under (a docker archive's own RepoTags
    serve otherwise). Raises ImageError (or the publisher's errors) naming the image."""
    work = options.publish.source
    work.mkdir(parents=True, exist_ok=True)
    done: list[IngestedImage] = []
    with _locked(work):
        for text in references:
            reference = parse_reference(text)
            started = time.monotonic()
            options.notify({"action": "start_image", "image": text})
            try:
                image = _ingest_one(reference, text, work, options,
                                    (names or {}).get(text))
            except Exception as exc:
                options.notify({"action": "end_image", "image": text, "status": "error",
                                "error": str(exc)})
                raise
            options.notify({"action": "end_image", "image": text, "status": "ok",
                            "skipped": image.skipped, "config": image.config_digest,
                            "seconds": round(time.monotonic() - started, 3)})
            done.append(image)
        if all(image.skipped for image in done):
            return IngestResult(done, None)
        options.notify({"action": "start_publish", "repository": options.publish.fqrn})
        result = publish(options.publish)
        options.notify({"action": "end_publish", "repository": options.publish.fqrn,
                        "revision": result.manifest.revision, "files": result.files,
                        "bytes_written": result.bytes_written,
                        "seconds": round(result.seconds, 3)})
    return IngestResult(done, result)


def _ingest_one(reference: ImageReference, text: str, work: Path,
                options: IngestOptions, given_name: str | None) -> IngestedImage:
    with _opened(reference, options) as source:
        name = _public_name(reference, source, given_name)
        manifest, config = source.manifest, source.config
        metadata = work / layout.metadata_file(name)
        flat_rel = layout.flat_dir(config.digest)
        flat = work / flat_rel
        if metadata.is_file() and metadata.read_bytes() == manifest.raw and flat.is_dir():
            return IngestedImage(text, name, config.digest, skipped=True)
        report = None
        if not flat.is_dir():
            report = _build_flat(source, work, flat, options)
    for directory in layout.nested_catalog_dirs([flat_rel]):
        (work / directory).mkdir(parents=True, exist_ok=True)
        (work / directory / ".cvmfscatalog").touch()
    link_path, target = layout.public_link(name, config.digest)
    _replace_symlink(work / link_path, target)
    _replace_file(metadata, manifest.raw)
    _replace_file(metadata.with_name(CONFIG_FILE), config.raw)
    return IngestedImage(text, name, config.digest, skipped=False, report=report)


def _build_flat(source: ImageSource, work: Path, flat: Path,
                options: IngestOptions) -> LayerReport:
    """Download, verify and apply the layers into a scratch rootfs; rename it into place."""
    scratch_root = work / SCRATCH
    scratch_root.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="image-", dir=scratch_root))
    try:
        blobs = []
        for index, layer in enumerate(source.manifest.layers):
            if layer.foreign:
                continue  # non-distributable layers are skipped, as DUCC does
            path = scratch / f"layer-{index}"
            with source.open_blob(layer.digest) as stream, open(path, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)  # verified at EOF
            options.notify({"action": "layer", "layer": layer.digest, "size": layer.size})
            blobs.append(path)
        rootfs = scratch / "rootfs"
        report = apply_layers(blobs, rootfs, limits=options.limits)
        write_singularity_files(rootfs, RunConfig.from_oci(json.loads(source.config.raw)))
        flat.parent.mkdir(parents=True, exist_ok=True)
        os.rename(rootfs, flat)
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
def _locked(work: Path) -> Iterator[None]:
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


def _replace_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    os.replace(temporary, path)
