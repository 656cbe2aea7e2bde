"""Terminal progress for long jobs (rich), shown only when stderr is a terminal."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class PublishProgressBar:
    """Files and bytes done, MB/s and time left; a no-op when not on a terminal."""

    def __init__(self, label: str = "publishing") -> None:
        self._enabled = sys.stderr.isatty()
        self._progress: Progress | None = None
        self._files: TaskID | None = None
        self._bytes: TaskID | None = None
        self._label = label

    def __enter__(self) -> PublishProgressBar:
        if self._enabled:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def begin(self, total_files: int, total_bytes: int) -> None:
        if self._progress is not None:
            self._files = self._progress.add_task(f"{self._label} files", total=total_files)
            self._bytes = self._progress.add_task(f"{self._label} bytes", total=total_bytes)

    def advance(self, files: int, nbytes: int) -> None:
        if self._progress is not None and self._files is not None and self._bytes is not None:
            self._progress.update(self._files, advance=files)
            self._progress.update(self._bytes, advance=nbytes)
