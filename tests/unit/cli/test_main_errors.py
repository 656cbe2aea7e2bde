"""The CLI's last-resort error handling: whatever a command raises, one line on stderr and
a non-zero exit, the traceback only with PYCVMFS_DEBUG=1."""

from __future__ import annotations

import errno

import pytest

from pycvmfs.cli import main as cli_main
from pycvmfs.errors import ConfigError


def _run_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> int:
    def command(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(cli_main.cli, "main", command)
    return cli_main.main(["anything"])


@pytest.mark.parametrize(("exc", "code", "line"), [
    (ConfigError("bad value\nsecond line"), 1, "pycvmfs: error: bad value second line"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"), 1,
     "pycvmfs: error: /x/y: No such file or directory"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), 1,
     "pycvmfs: error: /a -> /b: Invalid cross-device link"),
    (OSError("no errno at all"), 1, "pycvmfs: error: no errno at all"),
    (ValueError("Invalid IPv6 URL"), 70,
     "pycvmfs: internal error: ValueError: Invalid IPv6 URL (set PYCVMFS_DEBUG=1 for the "
     "traceback; please report it)"),
    (RuntimeError("a\nb"), 70, "pycvmfs: internal error: RuntimeError: a b"),
], ids=["named", "os-error", "two-files", "os-error-plain", "bug", "multi-line"])
def test_one_line_and_exit_code(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str], exc: BaseException,
                                code: int, line: str) -> None:
    monkeypatch.delenv("PYCVMFS_DEBUG", raising=False)
    assert _run_raising(monkeypatch, exc) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0].startswith(line)
    assert len(captured.err.splitlines()) == 1
    assert "Traceback" not in captured.err


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYCVMFS_DEBUG", "1")
    assert _run_raising(monkeypatch, KeyError("k")) == 70
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "KeyError" in err
    assert err.splitlines()[-1].startswith("pycvmfs: internal error: KeyError")


def test_broken_pipe_and_interrupt_keep_their_meaning(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_raising(monkeypatch, BrokenPipeError()) == 0
    assert _run_raising(monkeypatch, KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == "pycvmfs: interrupted\n"
