"""`pycvmfs ingest IMAGE...`: container images become flat trees in a repository (DUCC)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TextIO

import click

from pycvmfs.format.chunking import DEFAULT_CHUNK_PARAMS
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions


@click.command("ingest")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--repo", "fqrn", required=True, help="Repository name, e.g. images.example.org.")
@click.option("--storage", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Repository directory as a web server serves it.")
@click.option("--keys-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Working tree of the repository's contents [default: STORAGE.work].")
@click.option("--as", "name", default=None, metavar="REGISTRY/REPOSITORY:TAG",
              help="Public name of a local image (oci:, docker-archive:); one IMAGE only.")
@click.option("--platform", default="linux/amd64", show_default=True,
              help="Platform to pick from a multi-arch image.")
@click.option("--notify", "notify_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Append one JSON object per event to this file.")
@click.option("--username", envvar="PYCVMFS_REGISTRY_USER", default=None,
              help="Registry user (or PYCVMFS_REGISTRY_USER).")
@click.option("--password", envvar="PYCVMFS_REGISTRY_PASSWORD", default=None,
              help="Registry password (better: PYCVMFS_REGISTRY_PASSWORD).")
def ingest_command(images: tuple[str, ...], fqrn: str, storage: Path, keys_dir: Path,
                   work: Path | None, name: str | None, platform: str,
                   notify_file: Path | None, username: str | None,
                   password: str | None) -> None:
    """Ingest IMAGE... (docker://HOST/NAME:TAG[@DIGEST], oci:DIR:TAG,
    docker-archive:FILE) into the repository and publish once."""
    from pycvmfs.images.ingest import IngestOptions, ingest
    from pycvmfs.images.manifest import Platform

    if name is not None and len(images) != 1:
        raise click.BadParameter("--as names exactly one IMAGE", param_hint="--as")

    options = PublishOptions(fqrn=fqrn, source=work or storage.with_name(storage.name + ".work"),
                             storage=storage, keys_dir=keys_dir,
                             settings=Settings(chunking=DEFAULT_CHUNK_PARAMS))
    log: TextIO | None = open(notify_file, "a") if notify_file else None  # noqa: SIM115

    def notify(event: dict[str, object]) -> None:
        if log is not None:
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "pid": os.getpid(), **event}
            log.write(json.dumps(record, sort_keys=True) + "\n")
            log.flush()
        if event["action"] == "end_image":
            state = "already there" if event.get("skipped") else event.get("status")
            click.echo(f"{event['image']}: {state}")

    try:
        result = ingest(list(images), IngestOptions(options, platform=Platform.parse(platform),
                                                    username=username, password=password,
                                                    notify=notify),
                        names={images[0]: name} if name else None)
    finally:
        if log is not None:
            log.close()
    if result.published is None:
        click.echo("nothing new: no revision published")
    else:
        m = result.published.manifest
        click.echo(f"published {fqrn} revision {m.revision}: "
                   f"{result.published.objects_written} new objects "
                   f"({result.published.bytes_written / 1e6:.1f} MB stored)")


COMMANDS = [ingest_command]
