"""`pycvmfs cache status|clean|verify`: look after a client cache directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pycvmfs.errors import ConfigError


def _directory(fqrn: str | None, directory: Path | None, options: tuple[str, ...]) -> Path:
    """An explicit --dir, else the cache the configuration of FQRN uses."""
    if directory is not None:
        return directory
    if fqrn is None:
        raise ConfigError("give --dir CACHE_DIRECTORY or a repository name")
    from pycvmfs.cli.mount import overrides_of
    from pycvmfs.config import load_config

    config = load_config(fqrn, overrides=overrides_of(options))
    return config.alien_cache or config.cache_dir


_F = TypeVar("_F", bound=Callable[..., Any])


def _target(func: _F) -> _F:
    """FQRN argument (optional), --dir and -o: the ways to name a cache."""
    func = click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]",
                        help="Configuration overrides used to find the cache.")(func)
    func = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                        help="The cache directory itself.")(func)
    return click.argument("fqrn", required=False)(func)


@click.group("cache")
def cache() -> None:
    """Inspect, verify or empty a client cache."""


@cache.command("status")
@_target
def status(fqrn: str | None, directory: Path | None, options: tuple[str, ...]) -> None:
    """Objects, bytes, pins and breadcrumbs of the cache."""
    from pycvmfs.cache.admin import cache_status

    for key, value in cache_status(_directory(fqrn, directory, options)).items():
        click.echo(f"{key}: {value}")


@cache.command("clean")
@_target
def clean(fqrn: str | None, directory: Path | None, options: tuple[str, ...]) -> None:
    """Evict every object not pinned by a running mount."""
    from pycvmfs.cache.admin import clean as clean_cache

    freed = clean_cache(_directory(fqrn, directory, options))
    click.echo(f"freed {freed / 1e6:.1f} MB")


@cache.command("verify")
@_target
def verify(fqrn: str | None, directory: Path | None, options: tuple[str, ...]) -> None:
    """Check structure and sizes against the index; exit 1 if anything is wrong."""
    from pycvmfs.cache.admin import verify as verify_cache

    problems = verify_cache(_directory(fqrn, directory, options))
    for problem in problems:
        click.echo(f"{problem.kind.value}: {problem.key} {problem.detail}".rstrip())
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("cache is consistent")


COMMANDS = [cache]
