"""`pycvmfs report dedup`: what the images of a repository cost with layer-, file- and
chunk-level deduplication (the two charts of the seed talk: stored bytes per dedup level,
and the distribution of image sizes).

    images   = `.metadata/<registry>/<repository>:<tag>/manifest.json` (layer digests and
               sizes) + the public symlink `<registry>/<repository>:<tag>` -> `.flat/..`
    files    = every regular file of each flat tree, with its objects (whole file, or chunks)
    account  = pure arithmetic over those records (`account`), unit-tested on its own

Two measures, kept apart because they are not comparable with each other:
  * stored bytes: what the storage holds. Layer level = the registry's layer blobs (compressed
    tar, sizes from the manifests), each unique digest once; file level = the stored
    (compressed) objects of each unique file content once; chunk level = each unique stored
    chunk or unchunked file object once. This is the comparison of the issue.
  * logical bytes: uncompressed. Image size = sum of its regular files (hard links counted
    per path, as a tar or `umoci unpack` sees them); no dedup = sum over images; file level
    = unique contents once; chunk level = unique chunks (and unchunked files) once. The
    layer level has no logical figure: manifests give only compressed layer sizes.

A chunked file's content identity at file level is its list of chunk hashes (the catalog
stores no whole-file hash for it; the chunker is deterministic, so equal contents published
with equal settings give equal lists), and its file-level stored size is the sum of its
chunks' stored sizes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.errors import ImageError, NotFoundError, PycvmfsError
from pycvmfs.images import layout
from pycvmfs.repository.repository import Repository

ObjectId = tuple[bytes, str]  # (digest, suffix)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object of a file: identity, uncompressed size, size as stored."""

    key: ObjectId
    size: int
    stored: int


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A regular file of a flat tree: its size and the objects that hold its bytes
    (one whole-file object, several chunks, or none for an empty file)."""

    size: int
    objects: tuple[StoredObject, ...]

    @property
    def content_key(self) -> tuple[ObjectId, ...]:
        return tuple(o.key for o in self.objects)

    @property
    def stored(self) -> int:
        return sum(o.stored for o in self.objects)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    name: str  # <registry>/<repository>:<tag>
    flat: str  # repository path of the flat tree ('' if it is missing)
    layers: tuple[tuple[str, int], ...]  # (digest, size as the manifest gives it)
    files: tuple[FileRecord, ...]


@dataclass(frozen=True, slots=True)
class Level:
    """Bytes at each dedup level for one image alone, or for the whole set."""

    layer_stored: int
    file_stored: int
    chunk_stored: int
    logical: int  # no dedup, uncompressed
    file_logical: int
    chunk_logical: int
    files: int
    unique_files: int
    layers: int


@dataclass(frozen=True, slots=True)
class DedupReport:
    images: list[tuple[ImageRecord, Level]]
    total: Level
    sizes: list[int] = field(default_factory=list)  # logical size of each image

    @property
    def no_dedup_layer_stored(self) -> int:
        """Every image's layers counted again (a registry without blob sharing)."""
        return sum(level.layer_stored for _image, level in self.images)


def account_images(images: Iterable[ImageRecord]) -> Level:
    """The dedup levels of a set of images (one image alone: a list of one)."""
    layers: dict[str, int] = {}
    contents: dict[tuple[ObjectId, ...], FileRecord] = {}
    pieces: dict[ObjectId, StoredObject] = {}
    logical = files = 0
    for image in images:
        for digest, size in image.layers:
            layers.setdefault(digest, size)
        for record in image.files:
            files += 1
            logical += record.size
            contents.setdefault(record.content_key, record)
            for obj in record.objects:
                pieces.setdefault(obj.key, obj)
    unique = [r for r in contents.values() if r.objects]
    return Level(
        layer_stored=sum(layers.values()),
        file_stored=sum(r.stored for r in unique),
        chunk_stored=sum(o.stored for o in pieces.values()),
        logical=logical,
        file_logical=sum(r.size for r in unique),
        chunk_logical=sum(o.size for o in pieces.values()),
        files=files,
        unique_files=len(unique),
        layers=len(layers),
    )


def account(images: Sequence[ImageRecord]) -> DedupReport:
    rows = [(image, account_images([image])) for image in images]
    return DedupReport(rows, account_images(images), [level.logical for _i, level in rows])


# --- reading a repository -----------------------------------------------------------------


def image_names(repo: Repository) -> list[str]:
    """`<registry>/<repository>:<tag>` of every image with a `.metadata` manifest."""
    names = []
    try:
        for path, entry in repo.walk("/" + layout.METADATA):
            if entry.is_regular and path.endswith("/" + layout.MANIFEST_FILE):
                names.append(path[len(layout.METADATA) + 2:-len(layout.MANIFEST_FILE) - 1])
    except NotFoundError:
        return []
    return sorted(names)


def read_image(repo: Repository, storage: Path, name: str) -> ImageRecord:
    manifest_path = "/" + layout.metadata_file(name)
    try:
        manifest = json.loads(repo.read(manifest_path))
        layers = tuple((str(layer["digest"]), int(layer["size"]))
                       for layer in manifest.get("layers", []))
        config_digest = str(manifest["config"]["digest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"{manifest_path}: not an image manifest ({exc})") from exc
    flat = _flat_of(repo, name) or "/" + layout.flat_dir(config_digest)
    files = tuple(_files(repo, storage, flat))
    return ImageRecord(name, flat, layers, files)


def _flat_of(repo: Repository, name: str) -> str | None:
    """Where the public symlink points (repository path), if it exists."""
    try:
        target = repo.readlink("/" + name)
    except PycvmfsError:
        return None
    return posixpath.normpath(posixpath.join("/" + posixpath.dirname(name), target))


def _files(repo: Repository, storage: Path, flat: str) -> Iterable[FileRecord]:
    try:
        entries = list(repo.walk(flat))
    except NotFoundError:
        return
    for path, entry in entries:
        if not entry.is_regular or entry.is_external:
            continue
        _entry, pieces = repo.pieces(path)
        yield FileRecord(entry.size, tuple(
            StoredObject((p.hash.digest, p.suffix.value), p.size,
                         _stored_size(storage, p.hash.object_path(p.suffix)))
            for p in pieces))


def _stored_size(storage: Path, relative: str) -> int:
    try:
        return os.stat(storage / relative).st_size
    except OSError:
        return 0  # missing object: the reader would fail on it; the report does not


def dedup_report(repo: Repository, storage: Path) -> DedupReport:
    """Read every image of the repository (trunk) and account for it."""
    return account([read_image(repo, storage, name) for name in image_names(repo)])


# --- output ---------------------------------------------------------------------------------


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def size_histogram(sizes: Sequence[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """(low, high, count) for `bins` equal-width bins over [min, max] of `sizes`."""
    if not sizes:
        return []
    low, high = min(sizes), max(sizes)
    width = max((high - low) / bins, 1.0) if high > low else 1.0
    count = bins if high > low else 1
    counts = [0] * count
    for size in sizes:
        counts[min(int((size - low) / width), count - 1)] += 1
    return [(int(low + i * width), int(low + (i + 1) * width), c) for i, c in enumerate(counts)]


def render(report: DedupReport) -> list[object]:
    """rich renderables: the per-image table, the totals, the size distribution."""
    from rich.table import Table

    table = Table(title="Images: bytes stored per dedup level")
    for column in ("image", "layers", "files", "size (logical)", "layer-level",
                   "file-level", "chunk-level"):
        if column == "image":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for image, level in report.images:
        table.add_row(image.name, str(level.layers), str(level.files), human(level.logical),
                      human(level.layer_stored), human(level.file_stored),
                      human(level.chunk_stored))
    t = report.total
    table.add_row("[b]all images (deduplicated)[/b]", str(t.layers), str(t.files),
                  human(t.logical), human(t.layer_stored), human(t.file_stored),
                  human(t.chunk_stored), end_section=True)

    summary = Table(title="Totals over all images")
    for column in ("dedup level", "stored (compressed)", "logical (uncompressed)"):
        summary.add_column(column, justify="left" if column == "dedup level" else "right")
    summary.add_row("none (every image whole)", human(report.no_dedup_layer_stored),
                    human(t.logical))
    summary.add_row("layer-level (unique layers)", human(t.layer_stored), "n/a")
    summary.add_row(f"file-level ({t.unique_files} unique files)", human(t.file_stored),
                    human(t.file_logical))
    summary.add_row("chunk-level (unique chunks + unchunked files)", human(t.chunk_stored),
                    human(t.chunk_logical))

    histogram = Table(title="Distribution of image sizes (logical)")
    histogram.add_column("size", justify="right")
    histogram.add_column("images", justify="right")
    histogram.add_column("")
    bins = size_histogram(report.sizes)
    most = max((c for *_r, c in bins), default=1) or 1
    for low, high, count in bins:
        histogram.add_row(f"{human(low)} - {human(high)}", str(count),
                          "#" * round(20 * count / most))
    return [table, summary, histogram]


def write_png(report: DedupReport, path: Path) -> None:
    """Two charts side by side: stored bytes per dedup level, histogram of image sizes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PycvmfsError("PNG charts need matplotlib: pip install 'pycvmfs[report]'") \
            from None
    t = report.total
    labels = ["no dedup", "layer-level", "file-level", "chunk-level"]
    values = [report.no_dedup_layer_stored, t.layer_stored, t.file_stored, t.chunk_stored]
    fig, (bars, hist) = plt.subplots(1, 2, figsize=(11, 4.5))
    try:
        scale = 1e6
        drawn = bars.bar(labels, [v / scale for v in values],
                         color=["#999999", "#4c72b0", "#55a868", "#c44e52"])
        bars.bar_label(drawn, labels=[human(v) for v in values], fontsize=8)
        bars.set_ylabel("stored bytes (MB)")
        bars.set_title(f"Storage of {len(report.images)} images by dedup level")
        sizes_mb = [s / scale for s in report.sizes]
        hist.hist(sizes_mb, bins=max(1, min(20, len(sizes_mb))), color="#4c72b0",
                  edgecolor="white")
        hist.set_xlabel("image size (MB, uncompressed)")
        hist.set_ylabel("images")
        hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        hist.set_title("Distribution of image sizes")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def report_as_json(report: DedupReport) -> dict[str, object]:
    def level(value: Level) -> dict[str, int]:
        return dataclasses.asdict(value)

    return {"images": [{"name": i.name, "flat": i.flat, **level(v)} for i, v in report.images],
            "total": level(report.total), "no_dedup_layer_stored": report.no_dedup_layer_stored}

