"""The repository manifest `.cvmfspublished` (fact sheet section 2).

A signed letter whose body is one `<key letter><value>` line per key. The signature is
RSA PKCS#1 v1.5 with SHA-1 over the ASCII printed hash (not over the body), made with the
key matching the repository certificate named by `X`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pycvmfs.errors import (
    CertificateError,
    LetterMalformedError,
    MissingFieldError,
    NameMismatchError,
    OutdatedError,
    RootMismatchError,
    SignatureError,
)
from pycvmfs.format.certificates import Certificate
from pycvmfs.format.hashes import Algorithm, ContentHash, md5_hex
from pycvmfs.format.letters import Letter, body_lines, build_letter, check_letter_hash, split_letter

ROOT_PATH_MD5 = md5_hex(b"")  # R: MD5 of the root path "", always
DEFAULT_TTL_SECONDS = 240
REQUIRED_KEYS = ("C", "R", "D", "S")
_KNOWN_KEYS = frozenset("CBRDSGALNXHTMY")
_NUMBER = re.compile(r"[0-9]+\Z")
_HASH_FIELDS = {
    "C": "root catalog hash",
    "L": "micro catalog hash",
    "X": "certificate hash",
    "H": "history hash",
    "M": "meta-info hash",
    "Y": "reflog hash",
}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Manifest keys; `extra` keeps unknown keys (in order) so nothing is silently lost."""

    root_hash: ContentHash  # C
    revision: int  # S
    ttl_seconds: int = DEFAULT_TTL_SECONDS  # D (the client uses the catalog's TTL instead)
    root_catalog_size: int | None = None  # B, uncompressed bytes
    root_path_md5: str = ROOT_PATH_MD5  # R
    garbage_collectable: bool = False  # G
    alt_paths: bool = False  # A
    micro_catalog: ContentHash | None = None  # L (reserved)
    fqrn: str | None = None  # N
    certificate: ContentHash | None = None  # X
    history: ContentHash | None = None  # H
    timestamp: int | None = None  # T, Unix seconds
    metainfo: ContentHash | None = None  # M
    reflog: ContentHash | None = None  # Y
    extra: tuple[tuple[str, str], ...] = ()  # e.g. Z; written after Y

    @property
    def algorithm(self) -> Algorithm:
        """The repository hash algorithm (that of the root catalog hash)."""
        return self.root_hash.algorithm


# --- parsing ------------------------------------------------------------------------------


def parse_manifest(raw: bytes, *, what: str = "manifest") -> tuple[Manifest, Letter]:
    """Parse `.cvmfspublished`; checks only the syntax (see `verify_manifest` for trust)."""
    letter = split_letter(raw, what=what)
    fields = _key_values(body_lines(letter.body, what=what))
    if what == "manifest" and fields.get("N"):
        what = f"manifest of {fields['N']}"
    for key in REQUIRED_KEYS:
        if key not in fields:
            raise MissingFieldError(f"{what}: required key {key} is missing")
    return _manifest_from(fields, what), letter


def _key_values(lines: list[str]) -> dict[str, str]:
    """Reference rules: key = first char, later duplicates win, repeated `Z` joined by `|`."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        key, value = line[0], line[1:]
        if key == "Z" and key in fields:
            fields[key] = fields[key] + "|" + value
        else:
            fields[key] = value
    return fields


def _manifest_from(fields: dict[str, str], what: str) -> Manifest:
    hashes_ = {k: _hash(fields, k, what) for k in _HASH_FIELDS}
    root_hash = hashes_["C"]
    assert root_hash is not None  # C is required
    return Manifest(
        root_hash=root_hash,
        revision=_required_int(fields, "S", what),
        ttl_seconds=_required_int(fields, "D", what),
        root_catalog_size=_int(fields, "B", what),
        root_path_md5=fields["R"],
        garbage_collectable=fields.get("G") == "yes",
        alt_paths=fields.get("A") == "yes",
        micro_catalog=hashes_["L"],
        fqrn=fields.get("N"),
        certificate=hashes_["X"],
        history=hashes_["H"],
        timestamp=_int(fields, "T", what),
        metainfo=hashes_["M"],
        reflog=hashes_["Y"],
        extra=tuple((k, v) for k, v in fields.items() if k not in _KNOWN_KEYS),
    )


def _int(fields: dict[str, str], key: str, what: str) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    if not _NUMBER.match(value):
        raise LetterMalformedError(f"{what}: key {key} is not a number: {value!r}")
    return int(value)


def _required_int(fields: dict[str, str], key: str, what: str) -> int:
    value = _int(fields, key, what)
    if value is None:
        raise MissingFieldError(f"{what}: required key {key} is missing")
    return value


def _hash(fields: dict[str, str], key: str, what: str) -> ContentHash | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        return ContentHash.parse(value)
    except ValueError:
        raise LetterMalformedError(
            f"{what}: key {key} ({_HASH_FIELDS[key]}) is not a hash: {value!r}"
        ) from None


# --- writing ------------------------------------------------------------------------------


def serialise(manifest: Manifest) -> bytes:
    """Body in the reference order `C B R D S G A` then `L N X H T M Y` (extras last)."""
    m = manifest
    lines = [("C", str(m.root_hash))]
    if m.root_catalog_size is not None:
        lines.append(("B", str(m.root_catalog_size)))
    lines += [
        ("R", m.root_path_md5),
        ("D", str(m.ttl_seconds)),
        ("S", str(m.revision)),
        ("G", "yes" if m.garbage_collectable else "no"),
        ("A", "yes" if m.alt_paths else "no"),
    ]
    optional = [
        ("L", m.micro_catalog),
        ("N", m.fqrn),
        ("X", m.certificate),
        ("H", m.history),
        ("T", m.timestamp),
        ("M", m.metainfo),
        ("Y", m.reflog),
    ]
    lines += [(key, str(value)) for key, value in optional if value is not None]
    what = f"manifest of {m.fqrn or '(unnamed)'}"
    for key, _ in m.extra:
        if key in _KNOWN_KEYS or len(key) != 1 or key in "\n-":
            raise LetterMalformedError(f"{what}: cannot write extra key {key!r}")
    return _join(lines + list(m.extra), what)


def _join(lines: list[tuple[str, str]], what: str) -> bytes:
    for key, value in lines:
        if "\n" in value or (key == "N" and not value):
            raise LetterMalformedError(f"{what}: cannot write key {key} = {value!r}")
    return "".join(f"{key}{value}\n" for key, value in lines).encode("utf-8")


serialise_manifest = serialise


def sign_manifest(manifest: Manifest, private_key: rsa.RSAPrivateKey) -> bytes:
    """Complete `.cvmfspublished`; the letter hash uses the repository algorithm of `C`."""

    def sign(hash_line: bytes) -> bytes:
        return private_key.sign(hash_line, padding.PKCS1v15(), hashes.SHA1())

    what = f"manifest of {manifest.fqrn or '(unnamed)'}"
    return build_letter(serialise(manifest), manifest.algorithm, sign, what=what)


# --- verification -------------------------------------------------------------------------


def check_manifest(manifest: Manifest, *, fqrn: str, min_timestamp: int | None = None) -> None:
    """Steps 3-5 of the client procedure (2.4): name, root path, not older than known."""
    what = f"manifest of {fqrn}"
    if manifest.fqrn != fqrn:
        found = "no repository name (N)" if manifest.fqrn is None else repr(manifest.fqrn)
        raise NameMismatchError(f"{what}: names {found}, expected {fqrn!r}")
    if manifest.root_path_md5 != ROOT_PATH_MD5:
        raise RootMismatchError(
            f"{what}: root path hash R is {manifest.root_path_md5!r}, expected {ROOT_PATH_MD5}"
        )
    timestamp = manifest.timestamp or 0
    if min_timestamp is not None and timestamp < min_timestamp:
        raise OutdatedError(
            f"{what}: published at {timestamp} (T), older than the known {min_timestamp}"
        )


def verify_manifest_letter(
    letter: Letter, certificate: Certificate, *, what: str = "manifest"
) -> None:
    """Step 8: body hash, then RSA PKCS#1 v1.5 SHA-1 over the printed hash."""
    check_letter_hash(letter, what=what)
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertificateError(f"{what}: certificate key is not RSA")
    try:
        key.verify(letter.signature, letter.hash_line, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        raise SignatureError(
            f"{what}: signature does not verify with the repository certificate"
        ) from None


def verify_manifest(
    raw: bytes,
    certificate: Certificate,
    *,
    fqrn: str,
    min_timestamp: int | None = None,
) -> Manifest:
    """Parse and trust a manifest in the reference order: fields, N, R, T, hash, signature.

    The certificate must already be fetched and hash-checked (object `X`); whether it is on
    the whitelist is a separate check (`whitelist.check_certificate_listed`).
    """
    what = f"manifest of {fqrn}"
    manifest, letter = parse_manifest(raw, what=what)
    check_manifest(manifest, fqrn=fqrn, min_timestamp=min_timestamp)
    verify_manifest_letter(letter, certificate, what=what)
    return manifest
