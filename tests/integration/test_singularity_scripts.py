"""Apptainer/Singularity scripts: the env script and runscript are checked by running them
with the system's sh (and bash), not by comparing text, so quoting mistakes show up as wrong
values (the writer and the config are unit tests: tests/unit/images/test_singularity.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pycvmfs.images.singularity import (
    NO_RUNSCRIPT_MESSAGE,
    args_quoted,
    env_script,
    env_script_skipped,
    runscript,
)

SHELLS = sorted({os.path.realpath(shell) for shell in ("/bin/sh", "/bin/dash", "/bin/bash")
                 if os.access(shell, os.X_OK)})
NASTY = [
    "two  spaces",
    'double "quotes"',
    "single 'quotes'",
    "dollar $HOME and ${HOME} and $(touch /tmp/pycvmfs-pwned)",
    "back`tick` \\backslash\\ trailing\\",
    "multi\nline",
    "brace } and { and :-",
    "",
]
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


def source_and_dump(shell: str, script: str, tmp_path: Path, names: list[str],
                    env: dict[str, str] | None = None) -> dict[str, str | None]:
    """Source the script in `shell` and report each variable (None if unset), NUL-separated."""
    path = tmp_path / "env.sh"
    path.write_text(script)
    dump = "; ".join(f'if [ -n "${{{n}+x}}" ]; then printf "%s\\0" "${n}"; '
                     f'else printf "<unset>\\0"; fi' for n in names)
    result = subprocess.run([shell, "-c", f'. "$1"; {dump}', "sh", str(path)],
                            capture_output=True, env=env or CLEAN_ENV, check=True)
    values = result.stdout.decode().split("\0")[:-1]
    return {n: (None if v == "<unset>" else v) for n, v in zip(names, values, strict=True)}


# --- env script --------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_env_values_survive_quoting(shell: str, tmp_path: Path) -> None:
    env = [f"V{index}={value}" for index, value in enumerate(NASTY)]
    names = [f"V{index}" for index in range(len(NASTY))]
    values = source_and_dump(shell, env_script(env), tmp_path, names)
    assert values == {f"V{index}": value for index, value in enumerate(NASTY)}
    assert not Path("/tmp/pycvmfs-pwned").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_value_with_equals_signs_and_later_duplicate(shell: str, tmp_path: Path) -> None:
    script = env_script(["OPTS=a=b=c", "X=first", "X=second"])
    # "${X:-...}": the first assignment wins for a repeated name, as in Singularity's script
    assert source_and_dump(shell, script, tmp_path, ["OPTS", "X"]) == {"OPTS": "a=b=c",
                                                                       "X": "first"}


@pytest.mark.parametrize("shell", SHELLS)
def test_caller_value_wins_except_for_path(shell: str, tmp_path: Path) -> None:
    script = env_script(["FOO=image", "EMPTY=image", "PATH=/image/bin:/bin", "BARE"])
    env = {"PATH": "/usr/bin:/bin", "FOO": "caller", "EMPTY": ""}
    values = source_and_dump(shell, script, tmp_path, ["FOO", "EMPTY", "PATH", "BARE"], env)
    # an empty caller value counts as unset (":-"), and a bare NAME exports an empty value
    assert values == {"FOO": "caller", "EMPTY": "image", "PATH": "/image/bin:/bin", "BARE": ""}


def test_invalid_names_are_left_out_not_fatal(tmp_path: Path) -> None:
    env = ["GOOD=1", "my.var=2", "1ABC=3", "WITH SPACE=4", "=5", "ALSO_GOOD=6"]
    script = env_script(env)
    assert env_script_skipped(env) == ["my.var=2", "1ABC=3", "WITH SPACE=4", "=5"]
    values = source_and_dump("/bin/sh", script, tmp_path, ["GOOD", "ALSO_GOOD"])
    assert values == {"GOOD": "1", "ALSO_GOOD": "6"}
    assert "# skipped (not a shell variable name): my.var" in script


# --- runscript ---------------------------------------------------------------------------------


def run_runscript(tmp_path: Path, entrypoint: list[str], cmd: list[str],
                  args: list[str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "runscript"
    path.write_text(runscript(entrypoint, cmd))
    path.chmod(0o755)
    return subprocess.run([str(path), *args], capture_output=True, text=True, env=CLEAN_ENV,
                          cwd=tmp_path)


PRINT = ["printf", "[%s]"]       # prints each argument in brackets


@pytest.mark.parametrize(("entrypoint", "cmd", "args", "expected"), [
    # Entrypoint only: Entrypoint + arguments
    (PRINT, [], [], "[]"),
    (PRINT, [], ["a b", "$HOME"], "[a b][$HOME]"),
    # Cmd only: Cmd, or the arguments instead of it
    ([], [*PRINT, "cmd arg"], [], "[cmd arg]"),
    ([], [*PRINT, "cmd arg"], ["printf", "<%s>", "x y"], "<x y>"),
    # both: Entrypoint + (arguments, else Cmd)
    (PRINT, ["default 1", "'quoted' \"2\""], [], "[default 1]['quoted' \"2\"]"),
    (PRINT, ["default"], ["given", ""], "[given][]"),
    # neither: the arguments, if any
    ([], [], ["printf", "%s", "only args"], "only args"),
])
def test_runscript_semantics(tmp_path: Path, entrypoint: list[str], cmd: list[str],
                             args: list[str], expected: str) -> None:
    result = run_runscript(tmp_path, entrypoint, cmd, args)
    assert (result.returncode, result.stdout) == (0, expected), result.stderr


def test_runscript_neither_and_no_arguments_fails(tmp_path: Path) -> None:
    result = run_runscript(tmp_path, [], [], [])
    assert result.returncode == 1
    assert NO_RUNSCRIPT_MESSAGE in result.stderr


def test_runscript_never_evaluates_arguments(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    hostile = [f"$(touch {marker})", f"`touch {marker}`", "; touch evaluated", "*"]
    result = run_runscript(tmp_path, PRINT, ["x"], hostile)
    assert result.stdout == "".join(f"[{arg}]" for arg in hostile)
    result = run_runscript(tmp_path, [], [*PRINT, *hostile], [])
    assert result.stdout == "".join(f"[{arg}]" for arg in hostile)
    assert not marker.exists()


def test_runscript_keeps_singularity_variables(tmp_path: Path) -> None:
    entrypoint, cmd = ["/bin/echo", "it's"], ['say "$x"']
    text = runscript(entrypoint, cmd)
    probe = tmp_path / "probe.sh"
    # everything up to the first `if`/`set`: the variable assignments only
    header = text.split("\nif ")[0].split("\nset ")[0]
    probe.write_text(header + '\nprintf "%s\\n%s" "$OCI_ENTRYPOINT" "$OCI_CMD"\n')
    result = subprocess.run(["/bin/sh", str(probe)], capture_output=True, text=True, check=True)
    assert result.stdout == f"{args_quoted(entrypoint)}\n{args_quoted(cmd)}"
    assert args_quoted(cmd) == '"say \\"\\$x\\""'
