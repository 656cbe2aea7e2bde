"""`pycvmfs snapshot SOURCE_URL --storage DIR|s3://... --keys K.pub`: make a Stratum-1
replica (`cvmfs_server snapshot`); the work is replica/snapshot.py, this parses options,
shows progress on a terminal and prints one summary line."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import click

from pycvmfs.cli.read import _check_proxy, _manifest_name, default_fqrn
from pycvmfs.cli.storage_options import StorageArg, storage_options
from pycvmfs.errors import NameMismatchError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from pycvmfs.replica.copy import Counts

REFRESH_SECONDS = 0.2  # how often the counters reach rich


class SnapshotProgress:
    """One line on stderr (a terminal only): objects copied and present, bytes, speed."""

    def __init__(self) -> None:
        self._enabled = sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last = 0.0

    def __enter__(self) -> SnapshotProgress:
        if self._enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                      TimeElapsedColumn(), console=Console(stderr=True),
                                      transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("snapshot: verifying the source")
        return self

    def __call__(self, counts: Counts) -> None:
        now = time.monotonic()
        if self._progress is None or self._task is None or now - self._last < REFRESH_SECONDS:
            return
        self._last = now
        copied, present, catalogs, nbytes = counts.view()
        from rich.filesize import decimal

        self._progress.update(self._task, description=(
            f"snapshot: {copied} objects copied ({decimal(nbytes)}, {catalogs} catalogs), "
            f"{present} present"))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None


@click.command("snapshot")
@click.argument("source_url", metavar="SOURCE_URL")
@storage_options(help_text="Where the replica goes: a directory a web server serves, or an "
                 "S3 bucket s3://BUCKET[/PREFIX] (its HTTP endpoint then serves it).")
@click.option("--keys", "keys", multiple=True, required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Master public key (.pub) or a directory of *.pub; repeatable.")
@click.option("--fqrn", default=None,
              help="Repository name [default: last component of SOURCE_URL if it has a dot, "
              "else the name in the manifest].")
@click.option("--force", is_flag=True,
              help="Replicate even when the source serves an older revision than the "
              "replica (or the storage holds another repository).")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 16),
              help="Objects copied in parallel (at most 16: the connections kept per host).")
@click.option("--proxy", default="DIRECT", show_default=True, callback=_check_proxy,
              help="HTTP proxies for SOURCE_URL, in CVMFS_HTTP_PROXY syntax.")
def snapshot_command(source_url: str, storage: StorageArg, keys: tuple[Path, ...],
                     fqrn: str | None, force: bool, workers: int, proxy: str) -> None:
    """Replicate the repository SOURCE_URL serves into STORAGE (a Stratum-1 snapshot).

    SOURCE_URL is a Stratum-0/1 URL (several, ';'-separated, fail over) or a storage
    directory. The trust chain is verified with --keys first; then the history, every
    catalog of the current revision and of the tags, and every object they reference are
    copied, each verified against its hash, in parallel; objects the replica holds are
    not fetched again (a killed snapshot resumes). .cvmfspublished is written last, then
    .cvmfs_last_snapshot. A source older than the replica is refused without --force.
    """
    from pycvmfs.replica.snapshot import snapshot
    from pycvmfs.repository.source import open_source
    from pycvmfs.repository.trust import load_public_keys

    public_keys = load_public_keys(keys)
    source = open_source(source_url, proxy=proxy)
    with contextlib.closing(source), contextlib.closing(storage.open()) as target:
        name = fqrn or default_fqrn(source_url) or _manifest_name(source, source_url)
        with SnapshotProgress() as progress:
            try:
                result = snapshot(source, target, name, public_keys, force=force,
                                  workers=workers, progress=progress)
            except NameMismatchError as exc:
                if fqrn is not None:
                    raise
                raise NameMismatchError(f"{exc}; {name!r} was taken from SOURCE_URL or its "
                                        "manifest: pass --fqrn with the repository name"
                                        ) from exc
    click.echo(result.summary())
    if result.skipped_tags:
        click.echo(f"tags whose revision the source no longer has: "
                   f"{', '.join(result.skipped_tags)}")


COMMANDS = [snapshot_command]
