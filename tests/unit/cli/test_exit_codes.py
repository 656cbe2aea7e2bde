"""One exit code for usage errors (2, click's) and one for failures (1) across the CLI.

The other codes are kept on purpose: 0 for `--help`, 70 for an internal error (a bug),
130 for an interrupt (tests/unit/cli/test_main_errors.py), and `pycvmfs run` passes the
container's own status through (tests/integration/test_run.py). Every command of the tree
is checked for usage errors; failures are checked on the commands listed in FAILURES, each
with an input that fails in-process before any network, mount or subprocess.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import urllib3  # noqa: F401 - at collection: its import probes IPv6 with a socket

from pycvmfs.cli.main import cli, main
from tests.publish_helpers import Keys


def _leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        context = click.Context(command)
        for name in command.list_commands(context):
            child = command.get_command(context, name)
            assert child is not None, name
            yield from _leaves(child, (*path, name))
    else:
        yield path


COMMANDS = list(_leaves(cli))


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None
        command = found
    return command


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_an_unknown_option_is_a_usage_error(path: tuple[str, ...],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert "No such option" in err and "--no-such-option" in err and "Traceback" not in err


@pytest.mark.parametrize("path", [p for p in COMMANDS if any(
    param.required for param in _command(p).params)], ids=" ".join)
def test_a_missing_required_parameter_is_a_usage_error(
        path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(list(path)) == 2
    assert "Error: Missing" in capsys.readouterr().err


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_exits_0(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: pycvmfs " + " ".join(path))


@pytest.mark.parametrize("args", ["run no-image-path -- true", "cache status"])
def test_a_malformed_or_missing_argument_is_a_usage_error(
        args: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args.split()) == 2
    assert "Error: " in capsys.readouterr().err


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


FAILURES = {  # command -> arguments that fail ({t}: a scratch directory, {pub}, {keys})
    "keys create": "keys create ../bad --keys-dir {t}/keys",
    "publish": "publish {t}/empty --repo x.org --storage {t}/s --keys-dir {t}/empty",
    "whitelist sign": "whitelist sign --repo x.org --storage {t}/s --keys-dir {t}/empty",
    "ls": "ls {t}/empty --keys {pub}",
    "cat": "cat {t}/empty /x --keys {pub}",
    "stat": "stat {t}/empty --keys {pub}",
    "umount": "umount {t}/empty",
    "cache clean": "cache clean --dir {t}/nothere",
    "cache status": "cache status --dir {t}/nothere",
    "cache verify": "cache verify --dir {t}/nothere",
    "ingest": "ingest oci:{t}/nothing:latest --repo x.org --storage {t}/s --keys-dir {t}/empty",
    "run": "run x.org/image -o CVMFS_CACHE_BASE={t}/file -- true",
    "wishlist convert": "wishlist convert {t}/w.yaml --repo x.org --storage {t}/s "
                        "--keys-dir {keys}",
    "wishlist loop": "wishlist loop {t}/w.yaml --repo x.org --storage {t}/s --keys-dir {t}/empty",
    "webhook serve": "webhook serve --token t --wishlist {t}/w.yaml --repo x.org --storage {t}/s "
                     "--keys-dir {keys}",
    "images list": "images list --storage {t}/empty --keys {pub}",
    "images remove": "images remove a.io/b:1 --repo x.org --storage {t}/nothere --keys-dir {keys}",
    "gc": "gc --storage {t}/empty --repo x.org --keys-dir {t}/empty",
    "report dedup": "report dedup --storage {t}/empty --repo x.org --keys {pub}",
    "bundle record": "bundle record --repo-path /x --mount {t}/empty -- true",
    "snapshot": "snapshot {t}/empty --storage {t}/r --keys {pub}",
    "snapshotter serve": "snapshotter serve --address tcp://127.0.0.1:1 --repository {t}/empty",
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_a_failure_exits_1_with_one_line(name: str, tmp_path: Path, keys: Keys,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "w.yaml").write_text("version: 1\ncvmfs_repo: other.org\ninput: [a.io/b:1]\n")
    args = FAILURES[name].format(t=tmp_path, pub=keys.public_key_file, keys=keys.keys_dir)
    assert main(args.split()) == 1
    err = capsys.readouterr().err
    if name != "cache verify":  # it lists the problems it found, then exits 1
        assert err.startswith("pycvmfs: error: ") and err.count("\n") == 1, err


def test_the_program_exits_with_mains_code_and_its_objects_frozen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` (the `pycvmfs` program) exits with `main`'s code, after freezing what is
    reachable out of the exit-time garbage collection."""
    import gc

    from pycvmfs.cli import main as cli_main

    monkeypatch.setattr(cli_main, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as ended:
            cli_main.run()
        assert ended.value.code == 3 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
