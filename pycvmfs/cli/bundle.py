"""`pycvmfs bundle record --repo-path PATH [--mount MNT] -- CMD ARGS...`: the start set of a
command on a mounted repository (software trees that are not container images), as a file
bundle spec a publisher can publish (see `images.start_set`).

CMD runs once on the host (not in a container), under strace, bounded in time; the regular
files it opens under MNT + PATH are listed in first-open order, the first being the trigger.
The spec goes to stdout, to `--output FILE`, or with `--tree DIR` (the repository's
publisher working tree) to `DIR/<trigger's directory>/.cvmfsbundle-<trigger name>`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pycvmfs.errors import ConfigError


@click.group("bundle")
def bundle_group() -> None:
    """File bundles (CernVM-FS 2.14): files a client prefetches when a trigger is opened."""


@bundle_group.command("record")
@click.argument("command", nargs=-1, required=True)
@click.option("--repo-path", "repo_path", required=True, metavar="PATH",
              help="Repository path of the software tree (e.g. /sw/python/3.11; / for the "
              "whole repository): only files under it are recorded.")
@click.option("--mount", "mount", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None,
              help="Where the repository is mounted [default: the mount point holding the "
              "current directory].")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the spec to this file [default: stdout].")
@click.option("--tree", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None,
              help="Write the spec beside the trigger in this publisher working tree.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=24 * 3600), default=60,
              show_default=True, help="Seconds the command may run before it is stopped.")
def record_command(command: tuple[str, ...], repo_path: str, mount: Path | None,
                   output: Path | None, tree: Path | None, timeout: float) -> None:
    """Run COMMAND once and write the file bundle spec of the files it opened under the
    mounted repository's PATH."""
    from pycvmfs.images.start_set import (
        MountTree,
        Recorder,
        StartSetError,
        repository_path,
        spec_document,
        spec_path,
        start_set,
    )

    if output is not None and tree is not None:
        raise click.UsageError("give --output or --tree, not both")
    if not repo_path.startswith("/"):
        raise click.BadParameter(f"{repo_path!r} is not a repository path (start it with /)",
                                 param_hint="--repo-path")
    mount = mount if mount is not None else _enclosing_mount(Path.cwd())
    if not (mount / repo_path.lstrip("/")).exists():
        raise ConfigError(f"{mount / repo_path.lstrip('/')} does not exist: is the repository "
                          "mounted there? (check --mount and --repo-path)")
    cwd = os.getcwd()
    try:
        events = Recorder.find(timeout).trace(command, os.environ, launcher=False, cwd=cwd)
    except StartSetError as exc:
        raise StartSetError(f"{' '.join(command)!r} not recorded: {exc}") from None
    found = start_set(events, MountTree(mount, repo_path), cwd)
    if found is None:
        raise StartSetError(f"{' '.join(command)!r} opened no file under "
                            f"{mount / repo_path.lstrip('/')}")
    document = spec_document(found, "/")
    spec = spec_path(found.trigger)
    if tree is not None:
        target = tree / spec.lstrip("/")
        if not target.parent.is_dir():
            raise ConfigError(f"{target.parent} does not exist: is {tree} the working tree "
                              "of the mounted repository?")
        target.write_bytes(document)
    elif output is not None:
        output.write_bytes(document)
    else:
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
    click.echo(f"trigger {found.trigger}: {len(found.files)} files; spec "
               f"{repository_path('/', spec)}", err=True)


def _enclosing_mount(directory: Path) -> Path:
    """The mount point holding `directory` (the repository a user has cd-ed into)."""
    current = directory.resolve()
    while not os.path.ismount(current):
        current = current.parent
    if current == Path("/"):
        raise ConfigError(f"{directory} is not on a mounted repository: cd into the "
                          "repository or give --mount")
    return current


COMMANDS = [bundle_group]
