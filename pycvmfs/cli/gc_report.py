"""`pycvmfs gc` (sweep unreferenced objects from a storage) and `pycvmfs report dedup`
(what the repository's images cost with layer-, file- and chunk-level dedup)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click

from pycvmfs.cli.storage_options import StorageArg, storage_options
from pycvmfs.errors import ConfigError

_STORAGE = click.option("--storage", required=True,
                        type=click.Path(file_okay=False, exists=True, path_type=Path),
                        help="Repository directory as a web server serves it.")
_REPO = click.option("--repo", "fqrn", required=True, help="Repository name.")
_KEYS = click.option("--keys-dir", required=True,
                     type=click.Path(file_okay=False, exists=True, path_type=Path))


def _human(n: int) -> str:
    from pycvmfs.images.report import human

    return human(n)


@click.command("gc")
@storage_options(must_exist=True)
@_REPO
@_KEYS
@click.option("--keep-revisions", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also keep the N revisions before the trunk (tagged or not).")
@click.option("--tags/--no-tags", "keep_tags", default=True, show_default=True,
              help="Keep every tagged revision (trunk-previous and named tags); with "
                   "--no-tags only the trunk and --keep-revisions are kept.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("-v", "--verbose", is_flag=True, help="List the objects deleted.")
def gc_command(storage: StorageArg, fqrn: str, keys_dir: Path, keep_revisions: int,
               keep_tags: bool, dry_run: bool, verbose: bool) -> None:
    """Delete objects of STORAGE no kept revision references (under the publish lock)."""
    from pycvmfs.publisher.gc import collect_garbage
    from pycvmfs.publisher.keys import load_keys

    keys = load_keys(fqrn, keys_dir)
    with contextlib.closing(storage.open()) as target:
        if storage.is_s3:  # a directory is checked by the collection itself
            target.prepare()
        result = collect_garbage(target, fqrn, keys, keep_revisions=keep_revisions,
                                 keep_tags=keep_tags, dry_run=dry_run)
    for root in result.kept:
        click.echo(f"kept {root.reason}: revision {root.revision} ({root.root_hash})")
    if result.skipped_tags:
        click.echo(f"tags whose revision was already collected: "
                   f"{', '.join(result.skipped_tags)}")
    if result.dropped_tags:
        click.echo(f"warning: tags no longer usable after this sweep: "
                   f"{', '.join(result.dropped_tags)}", err=True)
    if verbose:
        for path in result.deleted:
            click.echo(f"{'would delete' if dry_run else 'deleted'} {path}")
    verb = "would free" if dry_run else "freed"
    click.echo(f"{result.catalogs_read} catalogs read, {result.referenced_objects} objects "
               f"referenced; {verb} {_human(result.bytes_freed)} in {result.objects_deleted} "
               f"objects ({result.bytes_freed} bytes); {result.objects_remaining} objects "
               f"({_human(result.bytes_remaining)}) remain")


@click.group("report")
def report_group() -> None:
    """Reports about a repository."""


@report_group.command("dedup")
@_STORAGE
@_REPO
@click.option("--keys", "keys", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Master public key (.pub) or a directory of *.pub; repeatable (as for "
              "`pycvmfs ls`).")
@click.option("--keys-dir", "keys_dir", default=None, hidden=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Older spelling: the keys directory holding FQRN.pub.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the two charts (bytes per dedup level, image sizes) to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead.")
def dedup_command(storage: Path, fqrn: str, keys: tuple[Path, ...], keys_dir: Path | None,
                  png: Path | None, as_json: bool) -> None:
    """Bytes stored with layer-, file- and chunk-level dedup, per image and in total."""
    from rich.console import Console

    from pycvmfs.images.report import dedup_report, render, report_as_json, write_png
    from pycvmfs.publisher.keys import KeyPaths
    from pycvmfs.repository.open import open_repository
    from pycvmfs.repository.source import LocalSource
    from pycvmfs.repository.trust import load_public_keys

    if png is not None and not os.access(png.parent, os.W_OK):
        raise ConfigError(f"cannot write the charts to {png}: {png.parent} is not a writable "
                          "directory (choose another --png)")
    if not keys and keys_dir is None:
        raise click.UsageError("give the repository's public key: --keys FQRN.pub")
    if not keys and keys_dir is not None:
        key_file = KeyPaths.of(fqrn, keys_dir).public_key
        if not key_file.is_file():
            raise ConfigError(f"no public key {key_file} (--keys-dir must hold "
                              f"{key_file.name}; or pass --keys FILE)")
        keys = (key_file,)
    with open_repository(LocalSource(storage), fqrn, load_public_keys(keys)) as repo:
        report = dedup_report(repo, storage)
    if as_json:
        click.echo(json.dumps(report_as_json(report), indent=1))
    else:
        console = Console(width=max(Console().width, 140))
        for renderable in render(report):
            console.print(renderable)
    if png is not None:
        try:
            write_png(report, png)
        except OSError as exc:
            raise ConfigError(f"cannot write the charts to {png}: {exc.strerror} (choose "
                              "another --png)") from None
        click.echo(f"charts written to {png}")


COMMANDS = [gc_command, report_group]
