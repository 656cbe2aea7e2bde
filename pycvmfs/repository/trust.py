"""The trust chain: why a root catalog hash may be believed (fact sheet 2.4, 3.4).

Order, as the reference client's `manifest_fetch.cc`:
1. fetch `.cvmfspublished`, parse it, check N (name), R (root path) and T (not outdated);
2. fetch the certificate object X (`data/..X`, or `.cvmfsalt-..X` when A=yes) and verify its
   content hash while opening it;
3. verify the manifest letter: body hash, then the RSA signature with the certificate's key;
4. fetch `.cvmfswhitelist`, verify expiry, name, hash and the master-key signature;
5. the certificate's fingerprint must be on the whitelist.
Only then is the manifest's root catalog hash trusted; everything below it is
content-addressed and verified by hash.

Each of the three downloads has a small fixed byte budget (`MANIFEST_MAX_BYTES`,
`WHITELIST_MAX_BYTES`, `CERTIFICATE_MAX_BYTES`), far above any real one and far below what
could hurt: a server streaming an endless manifest is cut after 64 KiB. The reference caps
the same downloads at 1 MiB (its `MemSink`).

The checks themselves are the pure functions of `format.manifest`, `format.whitelist` and
`format.certificates`; this module only fetches, orders and adds context: every error keeps
its class and names the repository and the source it came from.

Thread-safety: stateless functions; safe from any thread.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.config_files import MAX_KEY_BYTES, read_trusted_bytes, read_trusted_text
from pycvmfs.errors import ConfigError, IntegrityError, MissingFieldError, PycvmfsError
from pycvmfs.format.blacklist import Blacklist, parse_blacklist
from pycvmfs.format.certificates import Certificate, load_certificate, load_public_key
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.manifest import Manifest, check_manifest, parse_manifest, verify_manifest
from pycvmfs.format.whitelist import Whitelist, check_certificate_listed, verify_whitelist
from pycvmfs.network.sink import MemoryDestination, VerifyingSink
from pycvmfs.repository.source import ObjectSource

MANIFEST_PATH = ".cvmfspublished"
WHITELIST_PATH = ".cvmfswhitelist"
PUBLIC_KEY_GLOB = "*.pub"
# Byte budgets of the trust chain's downloads. A manifest is ~10 short lines and one RSA
# signature (< 1 KiB); a whitelist adds one ~60-byte line per certificate; a certificate is
# one PEM X.509 (~1-2 KiB, inflated size).
MANIFEST_MAX_BYTES = 64 * 1024
WHITELIST_MAX_BYTES = 256 * 1024
CERTIFICATE_MAX_BYTES = 64 * 1024

@dataclass(frozen=True, slots=True)
class TrustedManifest:
    """A manifest that passed the whole chain, with the evidence that made it trusted."""

    manifest: Manifest
    certificate: Certificate
    whitelist: Whitelist
    fqrn: str
    source: str  # ObjectSource.describe() of where it was fetched
    raw_manifest: bytes
    raw_whitelist: bytes = b""  # the bytes verified, as a replica copies them

    @property
    def root_hash(self) -> ContentHash:
        return self.manifest.root_hash

    @property
    def revision(self) -> int:
        return self.manifest.revision

    @property
    def history(self) -> ContentHash | None:
        return self.manifest.history

    @property
    def timestamp(self) -> int | None:
        return self.manifest.timestamp


@contextmanager
def error_context(fqrn: str, source: ObjectSource, what: str = "") -> Iterator[None]:
    """Re-raise pycvmfs errors with the same class, naming repository and source (and
    `what` was being loaded, e.g. "root catalog ...").

    Also used by `repository.Repository` for catalog and data objects."""
    try:
        yield
    except PycvmfsError as exc:
        prefix = f"{what}: " if what else ""
        message = f"{prefix}{exc} [repository {fqrn}, source {source.describe()}]"
        try:
            wrapped = type(exc)(message)
        except Exception:  # an error class with another constructor: keep the original
            raise exc from None
        raise wrapped from exc


def establish_trust(
    source: ObjectSource,
    fqrn: str,
    public_keys: Sequence[rsa.RSAPublicKey],
    *,
    now: dt.datetime,
    min_timestamp: int | None = None,
    blacklist: Blacklist | None = None,
) -> TrustedManifest:
    """Run the chain (module docstring) against `source`; `now` decides whitelist expiry,
    `blacklist` revokes certificates and revisions.

    A naive `now` is taken as UTC. Raises the specific LetterError subclass, NotFoundError
    or FetchError of the step that failed."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    if not public_keys:
        raise ConfigError(f"repository {fqrn}: no public keys given to verify the whitelist")
    with error_context(fqrn, source):
        raw = source.fetch(MANIFEST_PATH, max_bytes=MANIFEST_MAX_BYTES)
        parsed, _letter = parse_manifest(raw)
        check_manifest(parsed, fqrn=fqrn, min_timestamp=min_timestamp)
        certificate = fetch_certificate(source, parsed)
        manifest = verify_manifest(raw, certificate, fqrn=fqrn, min_timestamp=min_timestamp)
        raw_whitelist = source.fetch(WHITELIST_PATH, max_bytes=WHITELIST_MAX_BYTES)
        whitelist = verify_whitelist(raw_whitelist, public_keys, fqrn=fqrn, now=now)
        if blacklist is not None:
            blacklist.check_certificate(certificate, fqrn)
            blacklist.check_revision(fqrn, manifest.revision)
        check_certificate_listed(whitelist, certificate)
    return TrustedManifest(manifest=manifest, certificate=certificate, whitelist=whitelist,
                           fqrn=fqrn, source=source.describe(), raw_manifest=raw,
                           raw_whitelist=raw_whitelist)


def fetch_certificate(source: ObjectSource, manifest: Manifest) -> Certificate:
    """Object X from `data/` (or `.cvmfsalt-` when A=yes), hash-verified and parsed."""
    expected = manifest.certificate
    if expected is None:
        raise MissingFieldError(f"manifest of {manifest.fqrn}: no certificate hash (X)")
    path = (expected.alt_path(Suffix.CERTIFICATE) if manifest.alt_paths
            else expected.object_path(Suffix.CERTIFICATE))
    pem = MemoryDestination(CERTIFICATE_MAX_BYTES + 1)  # the sink reports an overflow
    with VerifyingSink(expected, Compression.ZLIB, pem, max_size=CERTIFICATE_MAX_BYTES) as sink:
        try:
            source.fetch_into(path, sink)
        except IntegrityError as exc:
            raise type(exc)(f"certificate object {path}: {exc}") from exc
    return load_certificate(pem.getvalue(), what=f"certificate object {path}")


# --- public keys (the files clients are configured with) ------------------------------------


def load_blacklist(paths: Iterable[str | os.PathLike[str]]) -> Blacklist:
    """The blacklist files that exist, merged (read again at every revision check, as the
    reference does). One that exists but cannot be read, or is not trusted
    (`config_files.read_trusted_text`: owner, mode, type, size), refuses the mount."""
    texts = []
    for path in map(Path, paths):
        try:
            text = read_trusted_text(path, what="blacklist")
        except OSError as exc:
            raise ConfigError(f"cannot read blacklist {path}: {exc.strerror or exc}") from exc
        if text is not None:
            texts.append(text)
    return parse_blacklist(texts)


def key_files(locations: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Each location is a `.pub` file or a directory whose `*.pub` files are all taken."""
    files: list[Path] = []
    for location in locations:
        path = Path(location)
        if path.is_dir():
            files += sorted(path.glob(PUBLIC_KEY_GLOB))
        elif path.exists():
            files.append(path)  # whether it is a trusted regular file: when it is read
        else:
            raise ConfigError(f"public key {path}: no such file or directory")
    return files


def load_public_keys(locations: Iterable[str | os.PathLike[str]]) -> list[rsa.RSAPublicKey]:
    """Load every key of `key_files(locations)`; ConfigError naming where it looked if none,
    or naming the file if it is not trusted (`config_files.read_trusted_bytes`)."""
    locations = list(locations)
    files = key_files(locations)
    if not files:
        looked = ", ".join(str(Path(p)) for p in locations) or "(no location given)"
        raise ConfigError(f"no public keys ({PUBLIC_KEY_GLOB}) found in {looked}")
    keys = []
    for file in files:
        try:
            pem = read_trusted_bytes(file, what="public key", max_bytes=MAX_KEY_BYTES)
        except OSError as exc:
            raise ConfigError(f"public key {file}: {exc.strerror or exc}") from exc
        if pem is None:
            raise ConfigError(f"public key {file}: no such file (a dangling symlink?)")
        keys.append(load_public_key(pem, what=f"public key {file}"))
    return keys
