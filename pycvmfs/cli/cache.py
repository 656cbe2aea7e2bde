"""`pycvmfs cache status|clean|verify`: look after a client cache directory.

The directory is opened and checked as a mount opens it (`pycvmfs.cache.safe_dir`): run
the commands as the user who mounts with the cache; `--alien` for a group-shared alien
cache named by `--dir`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click


@dataclass(frozen=True)
class _Target:
    """Which cache a command works on, and how it is checked."""

    directory: Path
    base: Path | None
    alien: bool

    def kwargs(self) -> dict[str, Any]:
        return {"alien": self.alien, "base": self.base}


def _target_of(fqrn: str | None, directory: Path | None, options: tuple[str, ...],
               alien: bool) -> _Target:
    """An explicit --dir, else the cache the configuration of FQRN uses (its cache
    settings only: no server URL or key is needed to find it)."""
    if directory is not None:
        return _Target(_objects_directory(directory), None, alien)
    if fqrn is None:
        raise click.UsageError("give --dir CACHE_DIRECTORY or a repository name")
    from pycvmfs.cli.mount import overrides_of
    from pycvmfs.client import cache_config_of_settings
    from pycvmfs.config import load_settings

    config = cache_config_of_settings(load_settings(fqrn, overrides=overrides_of(options)))
    return _Target(config.directory, config.base, config.alien)


def _objects_directory(directory: Path) -> Path:
    """`directory`, or its `shared/` when `directory` is a cache base (CVMFS_CACHE_BASE,
    where a shared cache keeps its objects in `shared/`) rather than a cache itself."""
    from pycvmfs.cache.identity import MARKER_NAME

    shared = directory / "shared"
    if not (directory / MARKER_NAME).exists() and (shared / MARKER_NAME).exists():
        click.echo(f"pycvmfs: cache: {directory} is a cache base; its objects are in {shared}",
                   err=True)
        return shared
    return directory


_F = TypeVar("_F", bound=Callable[..., Any])


def _target(func: _F) -> _F:
    """FQRN argument (optional), --dir, --alien and -o: the ways to name a cache."""
    func = click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]",
                        help="Configuration overrides used to find the cache.")(func)
    func = click.option("--alien", is_flag=True,
                        help="--dir is an alien cache shared by its group (CVMFS_ALIEN_CACHE)."
                        )(func)
    func = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                        help="The cache directory itself.")(func)
    return click.argument("fqrn", required=False)(func)


@click.group("cache")
def cache() -> None:
    """Inspect, verify or empty a client cache."""


@cache.command("status")
@_target
def status(fqrn: str | None, directory: Path | None, alien: bool,
           options: tuple[str, ...]) -> None:
    """Objects, bytes, pins and breadcrumbs of the cache."""
    from pycvmfs.cache.admin import cache_status

    target = _target_of(fqrn, directory, options, alien)
    for key, value in cache_status(target.directory, **target.kwargs()).items():
        click.echo(f"{key}: {value}")


@cache.command("clean")
@_target
def clean(fqrn: str | None, directory: Path | None, alien: bool,
          options: tuple[str, ...]) -> None:
    """Evict every object not pinned by a running mount."""
    from pycvmfs.cache.admin import clean as clean_cache

    target = _target_of(fqrn, directory, options, alien)
    freed = clean_cache(target.directory, **target.kwargs())
    click.echo(f"freed {freed / 1e6:.1f} MB")


@cache.command("verify")
@_target
def verify(fqrn: str | None, directory: Path | None, alien: bool,
           options: tuple[str, ...]) -> None:
    """Check structure and sizes against the index; exit 1 if anything is wrong."""
    from pycvmfs.cache.admin import verify as verify_cache

    target = _target_of(fqrn, directory, options, alien)
    problems = verify_cache(target.directory, **target.kwargs())
    for problem in problems:
        click.echo(f"{problem.kind.value}: {problem.key} {problem.detail}".rstrip())
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("cache is consistent")


COMMANDS = [cache]
