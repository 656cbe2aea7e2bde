"""The ingest progress display: what it draws on a terminal, that it is silent otherwise,
that counting from many threads adds up, and that `pycvmfs ingest` output stays the same
when stderr is not a terminal (a real terminal and a fresh interpreter:
tests/integration/test_ingest_progress_terminal.py)."""

from __future__ import annotations

import io
import json
import re
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from rich.console import Console

from pycvmfs.cli import images_admin
from pycvmfs.cli.main import main
from pycvmfs.cli.progress import IngestProgressDisplay, PublishProgressBar
from tests.ingest_args import ANSI, ingest_args
from tests.publish_helpers import Keys


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system=None, width=200), out


def _frame(display: PublishProgressBar, out: io.StringIO) -> str:
    """The text drawn by a refresh from now on (the refresh thread may add frames of the
    same state)."""
    out.seek(0)
    out.truncate()
    display.refresh()
    return ANSI.sub("", out.getvalue())


def test_image_and_publish_lines() -> None:
    console, out = _terminal()
    with IngestProgressDisplay(force=True, console=console) as display:
        assert display.enabled
        display.start_image("oci:/images/app:1.0", 3, 3_000_000)
        for _ in range(3):
            display.downloaded(1_000_000)
        for _ in range(1000):
            display.unpacked(1, 100)
        frame = _frame(display, out)
        assert "oci:/images/app:1.0 3 layers" in frame
        assert "3.0/3.0 MB" in frame
        assert "unpacked 1000 files, 100.0 kB" in frame

        display.end_image("oci:/images/app:1.0", skipped=False)
        assert "app:1.0" not in _frame(display, out)  # an image's line goes when it ends

        display.begin(10, 5_000_000)
        for _ in range(4):
            display.advance(1, 500_000)
        frame = _frame(display, out)
        assert re.search(r"publishing 4/10 files .*2\.0/5\.0 MB", frame), frame

        display.start_image("docker://example.org/" + "x" * 80 + ":2", 1, 0)  # next round
        frame = _frame(display, out)
        assert "publishing" not in frame  # the last round's publish line is gone
        assert re.search(r"…x+:2 1 layer ", frame), frame  # long names keep their end


def test_skipped_images_show_nothing() -> None:
    console, out = _terminal()
    with IngestProgressDisplay(force=True, console=console) as display:
        display.end_image("oci:/images/same:1", skipped=True)
        frame = _frame(display, out)
    assert "same" not in frame and "unchanged" not in frame


def test_calls_after_a_line_ended_are_harmless() -> None:
    console, out = _terminal()
    with IngestProgressDisplay(force=True, console=console) as display:
        display.begin(1, 10)
        display.start_image("oci:/a:1", 1, 10)  # drops the publish line
        display.advance(1, 10)  # a late worker: its line's task is gone
        display.end_image("oci:/a:1", skipped=False)
        display.downloaded(5)
        display.unpacked(1, 5)
        assert "oci:/a:1" not in _frame(display, out)


def test_silent_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stderr)
    for display in (IngestProgressDisplay(), PublishProgressBar()):
        assert not display.enabled
        with display:
            display.begin(3, 300)
            display.advance(1, 100)
            display.refresh()
            if isinstance(display, IngestProgressDisplay):
                display.start_image("oci:/a:1", 1, 10)
                display.downloaded(10)
                display.unpacked(1, 1)
                display.end_image("oci:/a:1", skipped=False)
    assert stderr.getvalue() == ""


def test_advance_from_many_threads() -> None:
    console, out = _terminal()
    threads, calls = 8, 2000
    with IngestProgressDisplay(force=True, console=console) as display:
        display.begin(threads * calls, threads * calls * 10)
        start = threading.Barrier(threads)

        def work() -> None:
            start.wait()
            for _ in range(calls):
                display.advance(1, 10)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        frame = _frame(display, out)
    assert f"publishing {threads * calls}/{threads * calls} files" in frame
    assert "160.0/160.0 kB" in frame


# -- the command --------------------------------------------------------------------------




def test_ingest_command_output_without_a_terminal(tmp_path: Path, keys: Keys,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = ingest_args(tmp_path, keys)
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no display when stderr is not a terminal
    assert out.splitlines() == [f"{args[1]}: ok", out.splitlines()[1]]
    assert re.fullmatch(r"published test\.pycvmfs\.org revision 1: \d+ new objects "
                        r"\(\d+\.\d MB stored\)", out.splitlines()[1])
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"{args[1]}: already there\nnothing new: no revision published\n",
                          "")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    actions = [e["action"] for e in events]  # the notify log is unaffected by the display
    assert actions[0] == "start_image" and actions.count("end_image") == 2


class _Recording(IngestProgressDisplay):
    last: ClassVar[_Recording]

    def __init__(self) -> None:
        super().__init__(force=True, console=Console(file=io.StringIO()))
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        _Recording.last = self

    def start_image(self, image: str, layers: int, compressed_bytes: int) -> None:
        self.calls.append(("start_image", (image, layers, compressed_bytes)))
        super().start_image(image, layers, compressed_bytes)

    def end_image(self, image: str, *, skipped: bool) -> None:
        self.calls.append(("end_image", (image, skipped)))
        super().end_image(image, skipped=skipped)

    def begin(self, total_files: int, total_bytes: int) -> None:
        self.calls.append(("begin", (total_files, total_bytes)))
        super().begin(total_files, total_bytes)


def test_ingest_command_drives_the_display(tmp_path: Path, keys: Keys,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(images_admin, "IngestProgressDisplay", _Recording)
    args = ingest_args(tmp_path, keys)
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert f"{args[1]}: ok" in out and "published" in out  # the normal output
    names = [name for name, _ in _Recording.last.calls]
    assert names == ["start_image", "end_image", "begin"], _Recording.last.calls
    assert _Recording.last.calls[0][1][:2] == (args[1], 1)
    assert main(args) == 0
    assert _Recording.last.calls == [("end_image", (args[1], True))]
