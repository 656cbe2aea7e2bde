"""`check_command`: a command missing from the image gives 127, one that is there but not
executable 126, as a shell reports them; symlinks resolve inside the image."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.images.runner import (
    CommandNotRunnableError,
    RunRequest,
    check_command,
    resolve_in_image,
)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for directory in ("usr/bin", "bin", "etc", "opt/app"):
        (root / directory).mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/bin/plain").write_text("data\n")
    (root / "usr/bin/plain").chmod(0o644)
    (root / "bin/link").symlink_to("/usr/bin/tool")  # absolute: inside the image
    (root / "bin/up").symlink_to("../../../../usr/bin/tool")  # `..` stops at the root
    (root / "bin/loop").symlink_to("loop")
    (root / "opt/app/run.sh").write_text("#!/bin/sh\n")
    (root / "opt/app/run.sh").chmod(0o700)
    return root


def _status(root: Path, *argv: str, env: tuple[str, ...] | None = ("PATH=/usr/bin:/bin",),
            cwd: str = "/") -> int:
    try:
        check_command(RunRequest(root, argv, env, cwd))
    except CommandNotRunnableError as exc:
        return exc.status
    return 0


def test_resolve_in_image(image: Path) -> None:
    assert resolve_in_image(image, "/bin/link") == image / "usr/bin/tool"
    assert resolve_in_image(image, "/bin/up") == image / "usr/bin/tool"
    assert resolve_in_image(image, "/bin/loop") is None
    assert resolve_in_image(image, "/no/such") is None


@pytest.mark.parametrize(("argv", "status"), [
    (("tool", "--version"), 0), (("link",), 0), (("/bin/link",), 0),
    (("missing",), 127), (("/usr/bin/missing",), 127), (("/bin/loop",), 127),
    (("plain",), 126), (("/usr/bin/plain",), 126), (("/etc",), 126),
    (("./run.sh",), 0), (("app/run.sh",), 127),
])
def test_command_lookup_as_a_shell(image: Path, argv: tuple[str, ...], status: int) -> None:
    assert _status(image, *argv, cwd="/opt/app") == status


def test_names_without_a_known_path_are_left_to_the_image(image: Path) -> None:
    """Without the image's Env, its env scripts may extend PATH: only paths are checked."""
    assert _status(image, "missing", env=None) == 0
    assert _status(image, "/usr/bin/missing", env=None) == 127


def test_the_message_names_the_command(image: Path) -> None:
    with pytest.raises(CommandNotRunnableError, match="^missing: command not found$"):
        check_command(RunRequest(image, ("missing",), ("PATH=/usr/bin",)))
