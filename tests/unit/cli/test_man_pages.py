"""The committed man pages (pycvmfs/man, made by tools/man_pages.py with click-man) are
those of the CLI as it is, and shell completion works through the lazy command group."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from tools.man_pages import DEFAULT_TARGET, write_pages


def _body(page: Path) -> list[str]:
    """A page without its title line (it carries the generation date)."""
    return page.read_text().splitlines()[1:]


# click-man 0.6.0 calls a click helper that click 8.3 deprecates (removed in click 9)
@pytest.mark.filterwarnings("ignore:'click.utils.make_default_short_help' is deprecated")
def test_committed_man_pages_are_current(tmp_path: Path) -> None:
    fresh = write_pages(tmp_path)
    committed = sorted(DEFAULT_TARGET.glob("*.1"))
    stale = "the man pages in pycvmfs/man are stale: run `make man` and commit them"
    assert [p.name for p in committed] == [p.name for p in fresh], stale
    for new, old in zip(fresh, committed, strict=True):
        assert _body(new) == _body(old), f"{old.name}: {stale}"
    assert {"pycvmfs.1", "pycvmfs-images-list.1", "pycvmfs-run.1"} <= {p.name for p in fresh}


def test_the_main_page_says_how_to_complete_and_where_the_manual_is() -> None:
    text = (DEFAULT_TARGET / "pycvmfs.1").read_text()
    assert "_PYCVMFS_COMPLETE=bash_source pycvmfs" in text and "man pycvmfs" in text


def _complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              shell: str, words: str) -> str:
    monkeypatch.setenv("_PYCVMFS_COMPLETE", f"{shell}_complete")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ")
                                                                else 1)))
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_completion_of_commands_and_options(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert "plain,images" in _complete(monkeypatch, capsys, "bash", "pycvmfs ima").split()
    assert set(_complete(monkeypatch, capsys, "bash", "pycvmfs images ").split()) >= {
        "plain,list", "plain,remove"}
    assert "plain,--resume" in _complete(monkeypatch, capsys, "bash",
                                         "pycvmfs ingest --res").split()


def test_completion_script(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("_PYCVMFS_COMPLETE", "zsh_source")
    with pytest.raises(SystemExit):
        main([])
    assert "_PYCVMFS_COMPLETE=zsh_complete" in capsys.readouterr().out
