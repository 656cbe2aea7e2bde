"""Terminal progress for long jobs (rich), shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported only when a terminal will show it (startup time)
    from rich.progress import Progress, TaskID


class PublishProgressBar:
    """One line: files done of total, bytes done of total, MB/s and time left.

    A no-op when stderr is not a terminal (logs and pipes stay clean). `advance` is
    called from worker threads."""

    def __init__(self, label: str = "publishing", *, force: bool = False) -> None:
        self._enabled = force or sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._label = label
        self._files = 0
        self._lock = threading.Lock()

    def __enter__(self) -> PublishProgressBar:
        if self._enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description} "
                           "{task.fields[files]}/{task.fields[files_total]} files"),
                BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
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
            self._task = self._progress.add_task(self._label, total=total_bytes, files=0,
                                                 files_total=total_files)

    def advance(self, files: int, nbytes: int) -> None:
        if self._progress is None or self._task is None:
            return
        with self._lock:
            self._files += files
            self._progress.update(self._task, advance=nbytes, files=self._files)
