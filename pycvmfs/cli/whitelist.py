"""`pycvmfs whitelist sign`: re-sign `.cvmfswhitelist` with the master key."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from pycvmfs.cli.storage_options import StorageArg, storage_options
from pycvmfs.publisher.keys import load_keys
from pycvmfs.publisher.whitelist_sign import DEFAULT_WHITELIST_DAYS, write_whitelist

MAX_WHITELIST_DAYS = 3650  # ten years; the expiry is written as YYYYMMDDhhmmss


@click.group("whitelist")
def whitelist() -> None:
    """Manage the certificate whitelist."""


@whitelist.command("sign")
@click.option("--keys-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--repo", "fqrn", required=True)
@storage_options()
@click.option("--days", default=DEFAULT_WHITELIST_DAYS, show_default=True,
              type=click.IntRange(min=1, max=MAX_WHITELIST_DAYS))
def sign(keys_dir: Path, fqrn: str, storage: StorageArg, days: int) -> None:
    """Sign a whitelist listing the repository certificate, valid for --days."""
    keys = load_keys(fqrn, keys_dir)
    with contextlib.closing(storage.open()) as target:
        target.prepare()
        target.create_layout()
        with target.lock():
            expires = write_whitelist(target, fqrn, keys, days)
    click.echo(f"signed whitelist of {fqrn}, valid until {expires:%Y-%m-%d %H:%M} UTC")


COMMANDS = [whitelist]
