"""Repository key files in a keys directory (fact sheet 15.1), like `/etc/cvmfs/keys/`.

`<fqrn>.masterkey` signs whitelists, `<fqrn>.pub` is its public half (what clients trust),
`<fqrn>.key` + `<fqrn>.crt` sign manifests. Files are written through a temporary file
and a rename, so a crash never leaves half a key behind.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import CertificateError, ConfigError
from pycvmfs.format.certificates import (
    Certificate,
    certificate_pem,
    create_certificate,
    generate_private_key,
    load_certificate,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    same_public_key,
)

_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
PRIVATE_MODE = 0o600
MASTER_MODE = 0o400
PUBLIC_MODE = 0o644


@dataclass(frozen=True, slots=True)
class KeyPaths:
    """Where the four key files of one repository live."""

    master_key: Path
    public_key: Path
    signing_key: Path
    certificate: Path

    @classmethod
    def of(cls, fqrn: str, keys_dir: Path | str) -> KeyPaths:
        base = Path(keys_dir)
        return cls(
            master_key=base / f"{fqrn}.masterkey",
            public_key=base / f"{fqrn}.pub",
            signing_key=base / f"{fqrn}.key",
            certificate=base / f"{fqrn}.crt",
        )

    def all(self) -> tuple[Path, Path, Path, Path]:
        return (self.master_key, self.public_key, self.signing_key, self.certificate)


@dataclass(frozen=True, slots=True)
class RepositoryKeys:
    """Loaded keys; `certificate_pem` is the file's exact bytes (they name the X object)."""

    fqrn: str
    master_key: rsa.RSAPrivateKey | None
    public_key: rsa.RSAPublicKey
    signing_key: rsa.RSAPrivateKey
    certificate: Certificate
    certificate_pem: bytes
    paths: KeyPaths


def _check_fqrn(fqrn: str) -> None:
    if not _FQRN.match(fqrn):
        raise ConfigError(f"invalid repository name {fqrn!r} (letters, digits, '.', '-', '_')")


def create_keys(fqrn: str, keys_dir: Path | str, *, force: bool = False) -> KeyPaths:
    """Generate master key, signing key and self-signed certificate; refuse to overwrite."""
    _check_fqrn(fqrn)
    paths = KeyPaths.of(fqrn, keys_dir)
    existing = [str(p) for p in paths.all() if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"keys of {fqrn} already exist ({', '.join(existing)}); "
            "refusing to overwrite them (use --force to replace them)"
        )
    try:
        Path(keys_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create keys directory {keys_dir}: {exc.strerror}") from None
    master = generate_private_key()
    signing = generate_private_key()
    cert = create_certificate(fqrn, signing)
    _write(paths.master_key, private_key_pem(master), MASTER_MODE)
    _write(paths.public_key, public_key_pem(master.public_key()), PUBLIC_MODE)
    _write(paths.signing_key, private_key_pem(signing), PRIVATE_MODE)
    _write(paths.certificate, certificate_pem(cert), PUBLIC_MODE)
    return paths


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with an exact mode (umask-independent)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _read(path: Path, *, required: bool = True) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"missing key file {path}") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None


def load_keys(fqrn: str, keys_dir: Path | str) -> RepositoryKeys:
    """Load `<fqrn>.{pub,key,crt}` (and `.masterkey` if present) and check they belong together."""
    _check_fqrn(fqrn)
    paths = KeyPaths.of(fqrn, keys_dir)
    public = load_public_key(_read(paths.public_key) or b"", what=str(paths.public_key))
    signing = load_private_key(_read(paths.signing_key) or b"", what=str(paths.signing_key))
    pem = _read(paths.certificate) or b""
    try:
        cert = load_certificate(pem, what=str(paths.certificate))
    except CertificateError as exc:
        raise ConfigError(str(exc)) from None
    master_pem = _read(paths.master_key, required=False)
    master = None
    if master_pem is not None:
        master = load_private_key(master_pem, what=str(paths.master_key))
    if not same_public_key(cert.public_key(), signing.public_key()):
        raise ConfigError(f"{paths.certificate} does not belong to {paths.signing_key}")
    if master is not None and not same_public_key(public, master.public_key()):
        raise ConfigError(f"{paths.public_key} does not belong to {paths.master_key}")
    return RepositoryKeys(
        fqrn=fqrn,
        master_key=master,
        public_key=public,
        signing_key=signing,
        certificate=cert,
        certificate_pem=pem,
        paths=paths,
    )
