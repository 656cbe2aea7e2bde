"""Reading a repository certificate and a master key without cryptography's `x509` and
`serialization` packages (`format.der`): the same DER bytes, PEM and keys as the packages
read, and any other input a CertificateError or ConfigError (never another exception, never
a key from outside the key field)."""

from __future__ import annotations

import ast
import base64
import contextlib
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from pycvmfs.errors import CertificateError, ConfigError
from pycvmfs.format import der
from pycvmfs.format.certificates import (
    Certificate,
    certificate_fingerprint,
    certificate_pem,
    create_certificate,
    load_certificate,
    load_public_key,
    public_key_pem,
)

NOW = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)
KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
CERT = create_certificate("der.example.org", KEY, not_valid_before=NOW, serial_number=7)
PEM = certificate_pem(CERT)
DER = CERT.public_bytes(serialization.Encoding.DER)


def pem_of(der: bytes, label: bytes = b"CERTIFICATE") -> bytes:
    """A PEM block as `base64.encodebytes` writes it (76-character lines, unlike OpenSSL's
    64: the reader must not care)."""
    return b"-----BEGIN " + label + b"-----\n" + base64.encodebytes(der) + \
        b"-----END " + label + b"-----\n"


def test_the_same_bytes_key_and_fingerprint_as_the_package() -> None:
    loaded = load_certificate(PEM)
    assert isinstance(loaded, Certificate)
    assert loaded.der == DER
    assert loaded.public_bytes(serialization.Encoding.PEM) == PEM  # byte for byte
    assert loaded.public_key().public_numbers() == KEY.public_key().public_numbers()
    assert certificate_fingerprint(loaded) == certificate_fingerprint(CERT)
    with pytest.raises(ValueError, match="DER or PEM"):
        loaded.public_bytes(serialization.Encoding.Raw)


def test_text_around_the_block_is_ignored() -> None:
    assert load_certificate(b"subject=...\n" + PEM + b"trailing\n").der == DER


HEAVY = ("cryptography.x509", "cryptography.hazmat.primitives.serialization")


def _imports_x509(tree: ast.Module) -> bool:
    """Whether a module imports either package when it is imported (not under
    TYPE_CHECKING, not inside a function)."""
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) \
                else ():
            if isinstance(inner, ast.ImportFrom) and inner.module is not None and any(
                    f"{inner.module}.{a.name}".startswith(HEAVY)
                    or inner.module.startswith(HEAVY) for a in inner.names):
                return True
            if isinstance(inner, ast.Import) and any(
                    a.name.startswith(HEAVY) for a in inner.names):
                return True
    return False


def test_no_module_imports_the_x509_or_serialization_package_at_import_time() -> None:
    """6 MB and 2.8 MB resident for every mount: only the publisher's functions import
    them, when called."""
    package = Path(__file__).resolve().parents[3] / "pycvmfs"
    heavy = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
             if _imports_x509(ast.parse(path.read_text()))]
    assert heavy == []


@pytest.mark.parametrize(("der", "why"), [
    (DER + b"\x00", "trailing byte"),
    (DER[:-1], "truncated"),
    (b"\x30\x81\x05" + b"\x02\x01\x01" * 2, "non-minimal length"),
    (b"\x30\x03\x02\x01\x01", "too few fields"),
    (b"\x1f\x00", "high tag number"),
    (b"\x30\x85\x00\x00\x00\x00\x01\x00", "length of five bytes"),
])
def test_broken_der_is_a_certificate_error(der: bytes, why: str) -> None:
    with pytest.raises(CertificateError, match="not a PEM X.509 certificate"):
        load_certificate(pem_of(der))


def test_a_certificate_with_another_key_type_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(other.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .sign(other, hashes.SHA256()))
    with pytest.raises(CertificateError, match="certificate key is not RSA"):
        load_certificate(cert.public_bytes(serialization.Encoding.PEM))


def test_bad_base64_is_a_certificate_error() -> None:
    with pytest.raises(CertificateError, match="bad base64"):
        load_certificate(b"-----BEGIN CERTIFICATE-----\n*!*\n-----END CERTIFICATE-----\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_a_certificate_or_a_certificate_error(data: bytes) -> None:
    for pem in (data, pem_of(data)):
        with contextlib.suppress(CertificateError):
            load_certificate(pem)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(DER) - 1), st.integers(min_value=1, max_value=255),
       st.integers(min_value=0, max_value=len(DER)))
def test_a_flipped_byte_or_a_cut_is_a_certificate_or_a_certificate_error(
        where: int, flip: int, cut: int) -> None:
    mutated = bytearray(DER)
    mutated[where] ^= flip
    for encoded in (bytes(mutated), DER[:cut]):
        try:
            loaded = load_certificate(pem_of(encoded))
        except CertificateError:
            continue
        assert loaded.der == encoded  # what is fingerprinted is every byte that was read


# --- master public keys: SubjectPublicKeyInfo PEM, read without `serialization` ---------------

SPKI = KEY.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_master_key_reads_as_the_package_reads_it() -> None:
    loaded = load_public_key(public_key_pem(KEY.public_key()))
    assert loaded.public_numbers() == KEY.public_key().public_numbers()


def _sequence(content: bytes) -> bytes:
    size = len(content)
    count = (size.bit_length() + 7) // 8
    length = bytes([size]) if size < 0x80 else bytes([0x80 | count]) + size.to_bytes(count, "big")
    return b"\x30" + length + content


def test_rsa_parameters_may_be_absent_but_not_anything_else() -> None:
    oid = bytes.fromhex("06092a864886f70d010101")
    bits = SPKI[SPKI.index(bytes.fromhex("0500")) + 2:]  # the BIT STRING, to the end
    assert _sequence(_sequence(oid + bytes.fromhex("0500")) + bits) == SPKI
    numbers = der.rsa_numbers(SPKI)
    assert der.rsa_numbers(_sequence(_sequence(oid) + bits)) == numbers
    with pytest.raises(ValueError, match="not NULL"):
        der.rsa_numbers(_sequence(_sequence(oid + bytes.fromhex("020101")) + bits))


def test_keys_of_other_algorithms_and_broken_numbers_are_refused() -> None:
    ec_spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="not an RSA public key"):
        load_public_key(pem_of(ec_spki, b"PUBLIC KEY"))
    with pytest.raises(ValueError, match="not positive"):
        der._positive(b"\x80")
    with pytest.raises(ValueError, match="not minimally encoded"):
        der._positive(b"\x00\x01")
    assert der._positive(b"\x00\x80") == 128


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(SPKI) - 1), st.integers(min_value=1, max_value=255),
       st.binary(max_size=300))
def test_broken_master_keys_are_config_errors(where: int, flip: int, data: bytes) -> None:
    mutated = bytearray(SPKI)
    mutated[where] ^= flip
    for pem in (pem_of(bytes(mutated), b"PUBLIC KEY"), pem_of(data, b"PUBLIC KEY"), data):
        with contextlib.suppress(ConfigError):
            load_public_key(pem)
