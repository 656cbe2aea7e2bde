"""Terminal progress for long jobs (rich), shown only when stderr is a terminal.

Counting stays out of rich: a line's counters are a lock and a few additions (`unpacked` is
called once per tar member), the bar's bytes reach rich at most every FLUSH_SECONDS, and
the texts are formatted from the counters when rich's refresh thread draws a frame."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported only when a terminal will show it (startup time)
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, TaskID

FLUSH_SECONDS = 0.1  # how often a line's bar bytes go to rich (bar, speed, time left)
NAME_WIDTH = 48  # image names are shortened to their last characters


class _Line:
    """One task's counters. Rich keeps the object as a task field and formats it (with
    `template`: `{files}`, `{total}`, `{size}`) whenever it draws the line."""

    def __init__(self, progress: Progress, task: TaskID, template: str, total: int = 0) -> None:
        self.progress, self.task = progress, task
        self.template, self.total = template, total
        self.files = self.nbytes = self.pending = 0
        self.flushed = time.monotonic()
        self.closed = False  # its task is gone: a late caller's bytes go nowhere
        self.lock = threading.Lock()

    def add(self, files: int = 0, nbytes: int = 0, bar: int = 0) -> None:
        """Count files and bytes (text) and `bar` bytes (rich's bar, sent throttled)."""
        with self.lock:
            self.files += files
            self.nbytes += nbytes
            if bar:
                self.pending += bar
                now = time.monotonic()
                if now - self.flushed >= FLUSH_SECONDS:
                    self._flush(now)

    def flush(self) -> None:
        with self.lock:
            self._flush(time.monotonic())

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def _flush(self, now: float) -> None:
        if self.pending and not self.closed:
            self.progress.update(self.task, advance=self.pending)
            self.pending = 0
        self.flushed = now

    def __format__(self, spec: str) -> str:
        from rich.filesize import decimal

        return self.template.format(files=self.files, total=self.total,
                                    size=decimal(self.nbytes))


class PublishProgressBar:
    """One line: files done of total, bytes done of total, MB/s and time left
    (`PublishProgress`).

    A no-op when stderr is not a terminal (logs and pipes stay clean) unless `force`;
    `console` replaces rich's console on stderr (tests). `advance` is called from worker
    threads."""

    def __init__(self, label: str = "publishing", *, force: bool = False,
                 console: Console | None = None) -> None:
        self._enabled = force or sys.stderr.isatty()
        self._console = console
        self._progress: Progress | None = None
        self._label = label
        self._lock = threading.Lock()  # adding and removing tasks
        self._publish: _Line | None = None

    @property
    def enabled(self) -> bool:
        """Whether anything will be shown (else every call does nothing)."""
        return self._enabled

    def _columns(self) -> list[ProgressColumn]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        return [TextColumn("{task.description} {task.fields[counts]}"), BarColumn(),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]

    def __enter__(self) -> PublishProgressBar:
        if self._enabled:
            from rich.console import Console
            from rich.progress import Progress

            # stdout is drawn above the display only when it is the terminal too: piped
            # stdout must not end up on stderr
            self._progress = Progress(*self._columns(),
                                      console=self._console or Console(stderr=True),
                                      transient=True, redirect_stdout=sys.stdout.isatty())
            self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._flush()
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def refresh(self) -> None:
        """Hand pending bytes to rich and draw now (rich's thread does it 10 times a
        second anyway)."""
        if self._progress is not None:
            self._flush()
            self._progress.refresh()

    def _flush(self) -> None:
        with self._lock:
            lines = self._lines()
        for line in lines:
            line.flush()

    def _lines(self) -> list[_Line]:
        return [self._publish] if self._publish is not None else []

    def _new_line(self, description: str, total_bytes: int | None, counts: object,
                  template: str, total: int = 0) -> _Line:
        """A task and its counters; the caller holds `_lock`."""
        assert self._progress is not None
        task = self._progress.add_task(description, total=total_bytes, counts=counts,
                                       detail="")
        return _Line(self._progress, task, template, total)

    def _drop(self, line: _Line | None) -> None:
        if line is not None and self._progress is not None:
            line.close()
            self._progress.remove_task(line.task)

    def begin(self, total_files: int, total_bytes: int) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._drop(self._publish)  # an earlier publish (a wishlist loop's last round)
            line = self._new_line(self._label, total_bytes, "", "{files}/{total} files",
                                  total_files)
            self._progress.update(line.task, counts=line)
            self._publish = line

    def advance(self, files: int, nbytes: int) -> None:
        line = self._publish
        if line is not None:
            line.add(files=files, bar=nbytes)


class IngestProgressDisplay(PublishProgressBar):
    """`IngestProgress` on a terminal: a line for the image being ingested (name, layers,
    compressed bytes downloaded of its total with speed, files and bytes unpacked), then
    the publish line of `PublishProgressBar`. Skipped images show nothing (the command
    prints their outcome); an image's line goes when it ends.

    A no-op when stderr is not a terminal unless `force`. `advance` is called from the
    publisher's worker threads, the rest from the ingesting thread; all are cheap enough
    to be called per tar member or per chunk."""

    def __init__(self, *, force: bool = False, console: Console | None = None) -> None:
        super().__init__("publishing", force=force, console=console)
        self._image: _Line | None = None

    def __enter__(self) -> IngestProgressDisplay:
        super().__enter__()
        return self

    def _columns(self) -> list[ProgressColumn]:
        from rich.progress import TextColumn

        return [*super()._columns(), TextColumn("{task.fields[detail]}")]

    def _lines(self) -> list[_Line]:
        return [*super()._lines(), *([self._image] if self._image is not None else [])]

    def start_image(self, image: str, layers: int, compressed_bytes: int) -> None:
        if self._progress is None:
            return
        with self._lock:
            # a previous image whose end never came (it failed), a previous round's publish
            self._drop(self._image)
            self._drop(self._publish)
            self._publish = None
            name = image if len(image) <= NAME_WIDTH else "…" + image[-(NAME_WIDTH - 1):]
            line = self._new_line(name, compressed_bytes or None,
                                  f"{layers} layer{'' if layers == 1 else 's'}",
                                  "unpacked {files} files, {size}")
            self._progress.update(line.task, detail=line)
            self._image = line

    def downloaded(self, nbytes: int) -> None:
        line = self._image
        if line is not None:
            line.add(bar=nbytes)

    def unpacked(self, files: int, nbytes: int) -> None:
        line = self._image
        if line is not None:
            line.add(files=files, nbytes=nbytes)

    def end_image(self, image: str, *, skipped: bool) -> None:
        if self._progress is None or skipped:
            return
        with self._lock:
            self._drop(self._image)
            self._image = None
