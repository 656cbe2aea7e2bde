"""`pycvmfs publish`: a directory tree becomes the next signed revision."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from pycvmfs.cli.progress import PublishProgressBar
from pycvmfs.cli.storage_options import StorageArg, storage_options
from pycvmfs.format.chunking import DEFAULT_CHUNK_PARAMS, ChunkParams
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions, publish

MAX_ID = 2**32 - 2  # uid_t is 32 bits; (uid_t)-1 means "no change" to chown


def _owner(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    uid, _, gid = value.partition(":")
    try:
        ids = int(uid), int(gid or uid)
    except ValueError:
        raise click.BadParameter(f"expected UID:GID, got {value!r}",
                                 param_hint="--owner") from None
    if not all(0 <= number <= MAX_ID for number in ids):
        raise click.BadParameter(f"{value!r}: user and group ids are 0 to {MAX_ID}",
                                 param_hint="--owner")
    return ids


@click.command("publish")
@click.argument("source_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--repo", "fqrn", required=True, help="Repository name, e.g. demo.example.org.")
@storage_options()
@click.option("--keys-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--tag", default=None, help="Name this revision in the history.")
@click.option("--hash", "hash_name", default="sha1", show_default=True,
              type=click.Choice(["sha1", "shake128", "rmd160"]))
@click.option("--compression", "compression_name", default="zlib", show_default=True,
              type=click.Choice(["zlib", "none"]))
@click.option("--ttl", type=click.IntRange(min=1), default=None,
              help="Catalog TTL in seconds (clients default to 240).")
@click.option("--chunk-sizes", default=None, metavar="MIN,AVG,MAX",
              help="Content-defined chunking sizes (default 4M,8M,16M).")
@click.option("--no-chunking", is_flag=True, help="Store every file as one object.")
@click.option("--always-compress", is_flag=True,
              help="Compress every file, also those whose first 64 KiB zlib cannot shrink "
                   "(by default they are stored raw, flagged per file).")
@click.option("--owner", default=None, metavar="UID:GID", help="Record this owner for all.")
@click.option("--rehash", is_flag=True,
              help="Read every file; by default files whose size and mtime match the previous "
                   "revision (and whose objects are stored) are not read again.")
def publish_command(source_dir: Path, fqrn: str, storage: StorageArg, keys_dir: Path,
                    tag: str | None, hash_name: str, compression_name: str,
                    ttl: int | None, chunk_sizes: str | None, no_chunking: bool,
                    always_compress: bool, owner: str | None, rehash: bool) -> None:
    """Publish SOURCE_DIR as the next revision of the repository in --storage."""
    try:
        chunking = None if no_chunking else (
            ChunkParams.parse(chunk_sizes) if chunk_sizes else DEFAULT_CHUNK_PARAMS)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chunk-sizes") from None
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    target = storage.for_publish()
    options = PublishOptions(
        fqrn=fqrn, source=source_dir, storage=target, keys_dir=keys_dir,
        settings=Settings(Algorithm.from_name(hash_name),
                          Compression.from_name(compression_name), chunking,
                          store_incompressible_raw=not always_compress),
        tag=tag, ttl_seconds=ttl, owner=_owner(owner),
        timestamp=int(epoch) if epoch and epoch.isdigit() else None, rehash=rehash,
    )
    with contextlib.ExitStack() as stack:
        if not isinstance(target, Path):
            stack.callback(target.close)
        bar = stack.enter_context(PublishProgressBar())
        result = publish(options, bar)
    m = result.manifest
    rate = result.bytes_in / 1e6 / result.seconds if result.seconds > 0 else 0.0
    click.echo(f"published {fqrn} revision {m.revision} (root catalog {m.root_hash})")
    click.echo(f"  {result.files} files, {result.bytes_in / 1e6:.1f} MB in {result.seconds:.1f} s "
               f"({rate:.1f} MB/s, {result.files / max(result.seconds, 1e-9):.0f} files/s); "
               f"{result.objects_written} new objects ({result.bytes_written / 1e6:.1f} MB stored)")
    if result.files_unchanged:
        click.echo(f"  {result.files_unchanged} unchanged files not read again "
                   "(size and mtime as in the previous revision; --rehash reads all)")
    click.echo(f"  catalogs written: {', '.join(result.catalogs_written)}")
    if result.catalogs_kept:
        click.echo(f"  catalogs kept from the previous revision (.pycvmfs-kept stubs): "
                   f"{len(result.catalogs_kept)}")
    if tag:
        click.echo(f"  tagged {tag!r}")
    if result.bundle_triggers:
        click.echo(f"  file bundle triggers: {result.bundle_triggers}")
    for warning in result.warnings:
        click.echo(f"  warning: {warning}", err=True)
    if result.whitelist_note:
        click.echo(f"  {result.whitelist_note}")


COMMANDS = [publish_command]
