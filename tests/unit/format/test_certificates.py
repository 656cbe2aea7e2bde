"""Certificates, fingerprints and key loading against the reference key files."""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from pycvmfs.errors import CertificateError, ConfigError, HashMismatchError
from pycvmfs.format.certificates import (
    certificate_common_name,
    certificate_fingerprint,
    certificate_from_object,
    certificate_pem,
    create_certificate,
    fingerprint_text,
    load_certificate,
    load_private_key,
    load_public_key,
    parse_fingerprint,
    private_key_pem,
    public_key_pem,
    same_public_key,
)
from pycvmfs.format.compression import open_object
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.format.manifest import parse_manifest
from tests.fixtures_path import (
    LEGACY,
    LEGACY_FQRN,
    ORACLE_KEYS,
    ORACLE_REPO,
    requires_fixtures,
    unpack_legacy,
)

LEGACY_FINGERPRINT = "93:AB:A3:C4:89:BE:F9:B7:3E:90:8F:42:C1:8A:EF:12:BB:05:C4:15"
ORACLE_FINGERPRINT = "68:56:52:D5:10:F3:3F:D1:B0:27:B3:C4:A5:78:79:7D:0C:BC:5C:65"
NOW = dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def legacy_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LEGACY.is_dir():
        pytest.skip(f"shared fixtures not found at {LEGACY}")
    return unpack_legacy(tmp_path_factory.mktemp("legacy"))[1]


@pytest.fixture(scope="module")
def small_key() -> rsa.RSAPrivateKey:
    """A real but fast key for tests that create certificates."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@requires_fixtures
def test_oracle_certificate_fingerprint() -> None:
    cert = load_certificate((ORACLE_KEYS / "oracle.local.crt").read_bytes())
    assert fingerprint_text(certificate_fingerprint(cert)) == ORACLE_FINGERPRINT
    assert certificate_fingerprint(cert) == parse_fingerprint(ORACLE_FINGERPRINT)


@requires_fixtures
def test_legacy_certificate_fingerprint(legacy_keys: Path) -> None:
    cert = load_certificate((legacy_keys / f"{LEGACY_FQRN}.crt").read_bytes())
    assert fingerprint_text(certificate_fingerprint(cert)) == LEGACY_FINGERPRINT


@requires_fixtures
def test_certificate_object_named_by_the_manifest() -> None:
    manifest, _ = parse_manifest((ORACLE_REPO / ".cvmfspublished").read_bytes())
    assert manifest.certificate is not None
    stored = (ORACLE_REPO / manifest.certificate.object_path("X")).read_bytes()
    pem = open_object(stored, manifest.certificate, what="certificate")
    assert pem == (ORACLE_KEYS / "oracle.local.crt").read_bytes()
    cert = certificate_from_object(stored, manifest.certificate)
    assert fingerprint_text(certificate_fingerprint(cert)) == ORACLE_FINGERPRINT
    key = load_private_key((ORACLE_KEYS / "oracle.local.key").read_bytes())
    assert same_public_key(cert.public_key(), key.public_key())  # type: ignore[arg-type]


@requires_fixtures
def test_certificate_object_with_wrong_hash() -> None:
    stored = zlib.compress((ORACLE_KEYS / "oracle.local.crt").read_bytes())
    with pytest.raises(HashMismatchError):
        certificate_from_object(stored, ContentHash.of(Algorithm.SHA1, b"other"))


def test_certificate_object_that_is_not_a_certificate() -> None:
    stored = zlib.compress(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    expected = ContentHash.of(Algorithm.SHA1, stored)
    with pytest.raises(CertificateError, match=f"certificate {expected}"):
        certificate_from_object(stored, expected)


@pytest.mark.parametrize("pem", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\n"])
def test_bad_certificate(pem: bytes) -> None:
    with pytest.raises(CertificateError, match="not a PEM X.509 certificate"):
        load_certificate(pem)


@pytest.mark.parametrize(
    ("algorithm", "suffix"),
    [(Algorithm.SHA1, ""), (Algorithm.RIPEMD160, "-RMD160"), (Algorithm.SHAKE128, "-SHAKE128")],
)
def test_fingerprint_text_round_trip(algorithm: Algorithm, suffix: str) -> None:
    fingerprint = ContentHash.of(algorithm, b"certificate")
    text = fingerprint_text(fingerprint)
    assert text.endswith(suffix)
    assert text[: 59].count(":") == 19 and text == text.upper()
    assert parse_fingerprint(text) == fingerprint
    assert parse_fingerprint(text.lower() + "  # comment") == fingerprint
    assert parse_fingerprint(text.replace(":", "") + "\tlabel") == fingerprint


@pytest.mark.parametrize(
    "line", ["", "# comment", "Wcachain", "AB:CD", "ZZ" * 20, " " + LEGACY_FINGERPRINT, "x" * 40]
)
def test_unparsable_fingerprint_lines(line: str) -> None:
    assert parse_fingerprint(line) is None


@requires_fixtures
def test_master_public_key_matches_master_key() -> None:
    public = load_public_key((ORACLE_KEYS / "oracle.local.pub").read_bytes())
    master = load_private_key((ORACLE_KEYS / "oracle.local.masterkey").read_bytes())
    assert same_public_key(public, master.public_key())
    assert public_key_pem(public) == (ORACLE_KEYS / "oracle.local.pub").read_bytes()


@requires_fixtures
def test_pkcs1_private_keys_of_the_legacy_repository(legacy_keys: Path) -> None:
    pem = (legacy_keys / f"{LEGACY_FQRN}.key").read_bytes()
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = load_private_key(pem)
    assert key.key_size == 2048
    assert private_key_pem(key) == pem  # we write the very same PKCS#1 form


def test_rsa_public_key_pem_is_rejected(small_key: rsa.RSAPrivateKey) -> None:
    pkcs1 = small_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    with pytest.raises(ConfigError, match="BEGIN PUBLIC KEY"):
        load_public_key(pkcs1, what="/etc/cvmfs/keys/x.pub")


def test_bad_keys() -> None:
    with pytest.raises(ConfigError, match="x.pub: not a PEM public key"):
        load_public_key(b"nothing", what="x.pub")
    with pytest.raises(ConfigError, match="x.key: not a PEM private key"):
        load_private_key(b"nothing", what="x.key")


def test_encrypted_private_key_is_refused(small_key: rsa.RSAPrivateKey) -> None:
    pem = small_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ConfigError, match="encrypted"):
        load_private_key(pem)


def test_common_name_truncation() -> None:
    assert certificate_common_name("oracle.local") == "oracle.local CernVM-FS Release Managers"
    name = "a-very-long-repository-name.example.org"
    assert certificate_common_name(name) == (
        "a-very-long-repository-name.ex[...] CernVM-FS Release Managers"
    )
    assert certificate_common_name("x" * 30) == "x" * 30 + " CernVM-FS Release Managers"


def test_create_certificate(small_key: rsa.RSAPrivateKey) -> None:
    fqrn = "a-very-long-repository-name.example.org"
    cert = create_certificate(fqrn, small_key, not_valid_before=NOW, serial_number=42)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == certificate_common_name(fqrn)
    assert cert.issuer == cert.subject
    assert cert.not_valid_before_utc == NOW
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
    assert same_public_key(cert.public_key(), small_key.public_key())  # type: ignore[arg-type]
    small_key.public_key().verify(
        cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256()
    )
    again = create_certificate(fqrn, small_key, not_valid_before=NOW, serial_number=42)
    assert certificate_pem(again) == certificate_pem(cert)  # deterministic
    reloaded = load_certificate(certificate_pem(cert))
    assert certificate_fingerprint(reloaded) == certificate_fingerprint(cert)


def test_create_certificate_needs_an_aware_date(small_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        create_certificate("x.test", small_key, not_valid_before=dt.datetime(2026, 1, 1))
