"""`pycvmfs keys ...`: create the key files a repository is published and trusted with."""

from __future__ import annotations

from pathlib import Path

import click

from pycvmfs.errors import ConfigError
from pycvmfs.format.certificates import certificate_fingerprint, fingerprint_text
from pycvmfs.publisher.keys import create_keys, load_keys

REFERENCE_KEYS_DIR = Path("/etc/cvmfs/keys")  # cvmfs_server keeps them there


@click.group("keys")
def keys() -> None:
    """Repository keys: master key, public key, signing key and certificate."""


@keys.command("create")
@click.argument("fqrn")
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help=f"Directory for <fqrn>.masterkey, .pub, .key and .crt (the reference's place is "
    f"{REFERENCE_KEYS_DIR}; nothing is written there unless named).",
)
@click.option("--force", is_flag=True, help="Replace keys that already exist.")
def create(fqrn: str, keys_dir: Path, force: bool) -> None:
    """Generate new RSA-2048 keys and a self-signed certificate for FQRN."""
    try:
        paths = create_keys(fqrn, keys_dir, force=force)
    except OSError as exc:  # e.g. a --keys-dir in /proc, or one this user cannot enter
        raise ConfigError(f"cannot write keys to {keys_dir}: {exc.strerror} "
                          f"({exc.filename}): choose a writable --keys-dir") from None
    loaded = load_keys(fqrn, keys_dir)
    labels = (
        (paths.master_key, "master key (signs the whitelist; keep it offline)"),
        (paths.public_key, "master public key (give it to clients)"),
        (paths.signing_key, "signing key (signs manifests)"),
        (paths.certificate, "certificate"),
    )
    for path, label in labels:
        click.echo(f"wrote {path}  {label}")
    fingerprint = fingerprint_text(certificate_fingerprint(loaded.certificate))
    click.echo(f"certificate fingerprint {fingerprint}")


COMMANDS = [keys]
