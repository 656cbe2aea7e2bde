"""Certificates, fingerprints and RSA keys as CernVM-FS uses them (fact sheet 3.2, 4, 15.1).

Pure functions over PEM bytes: callers read and write the files. A repository certificate
is only a carrier for the signing public key (dates and issuer are not checked by clients);
its identity is the fingerprint, the hash of its DER encoding, listed on the whitelist.

So clients read a certificate into `Certificate` (the DER bytes and the RSA key), and a
master key, through `der` (a bounded walk of the few DER structures involved) and
`rsa.RSAPublicNumbers`: cryptography's `x509` and `serialization` packages, which would
read them, cost every mount 6 MB and 2.8 MB resident to import. The publisher, which
writes keys and certificates, imports them where it does (`create_certificate`,
`load_private_key`, `private_key_pem`, `public_key_pem`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import CertificateError, ConfigError
from pycvmfs.format import der
from pycvmfs.format.compression import Compression, open_object
from pycvmfs.format.hashes import Algorithm, ContentHash, Hasher

RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
CERTIFICATE_DAYS = 365
CN_FQRN_LIMIT = 30
CN_SUFFIX = " CernVM-FS Release Managers"
FINGERPRINT_ALGORITHMS = (Algorithm.SHA1, Algorithm.RIPEMD160, Algorithm.SHAKE128)
_BY_LENGTH = {a.text_length: a for a in FINGERPRINT_ALGORITHMS}
_MAX_CERTIFICATE_BYTES = 1 << 20

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    """A repository certificate as clients use it: its DER encoding (what whitelists and
    blacklists fingerprint) and the RSA key it carries. `public_key` and `public_bytes`
    answer as `cryptography.x509.Certificate`'s do."""

    der: bytes
    key: rsa.RSAPublicKey

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key

    def public_bytes(self, encoding: serialization.Encoding) -> bytes:
        kind = str(encoding).rpartition(".")[2]  # `Encoding.PEM`: no serialization import
        if kind == "DER":
            return self.der
        if kind == "PEM":
            return der.pem_block(self.der, b"CERTIFICATE")
        raise ValueError(f"a certificate is DER or PEM, not {encoding}")


def load_certificate(pem: bytes, *, what: str = "certificate") -> Certificate:
    """Parse a PEM X.509 certificate carrying an RSA key; CertificateError otherwise."""
    try:
        body = der.pem_body(pem, b"CERTIFICATE")
        key = _rsa_key(der.certificate_key_info(body))
    except der.NotRsaError:
        raise CertificateError(f"{what}: certificate key is not RSA") from None
    except ValueError as exc:
        raise CertificateError(f"{what}: not a PEM X.509 certificate ({exc})") from None
    return Certificate(body, key)


def _rsa_key(key_info: bytes) -> rsa.RSAPublicKey:
    """The RSA key of a SubjectPublicKeyInfo; ValueError (NotRsaError) otherwise."""
    modulus, exponent = der.rsa_numbers(key_info)
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def certificate_from_object(
    stored: bytes, expected: ContentHash, *, what: str = "certificate"
) -> Certificate:
    """Certificate from its repository object (`data/XX/...X`: zlib PEM, hash over stored)."""
    pem = open_object(
        stored, expected, Compression.ZLIB, max_size=_MAX_CERTIFICATE_BYTES, what=what
    )
    return load_certificate(pem, what=f"{what} {expected}")


def _der_of(cert: Certificate | x509.Certificate) -> bytes:
    """The DER encoding of a client's `Certificate` or of one the publisher built."""
    if isinstance(cert, Certificate):
        return cert.der
    from cryptography.hazmat.primitives import serialization  # the publisher's certificates

    return cert.public_bytes(serialization.Encoding.DER)


def certificate_pem(cert: Certificate | x509.Certificate) -> bytes:
    """PEM as OpenSSL writes it (the same bytes as cryptography's)."""
    return der.pem_block(_der_of(cert), b"CERTIFICATE")


def certificate_fingerprint(
    cert: Certificate | x509.Certificate, algorithm: Algorithm = Algorithm.SHA1
) -> ContentHash:
    """Hash of the certificate's DER encoding, what whitelists list (fact sheet 3.2)."""
    hasher = Hasher(algorithm)
    hasher.update(_der_of(cert))
    return hasher.finish()


def fingerprint_text(fingerprint: ContentHash) -> str:
    """Whitelist form: `AB:CD:...:EF` plus the uppercased algorithm id (`-RMD160`)."""
    hex_text = fingerprint.digest.hex().upper()
    pairs = ":".join(hex_text[i : i + 2] for i in range(0, len(hex_text), 2))
    return pairs + fingerprint.algorithm.text_id.upper()


def parse_fingerprint(line: str) -> ContentHash | None:
    """Read a whitelist/blacklist fingerprint line like the reference; None if it is not one.

    Characters are taken up to the first space, tab or `#`; colons are dropped, the rest is
    lowercased and interpreted by its length.
    """
    end = len(line)
    for stop in (" ", "\t", "#"):
        pos = line.find(stop)
        if 0 <= pos < end:
            end = pos
    text = line[:end].replace(":", "").lower()
    if len(text) not in _BY_LENGTH:
        return None
    try:
        return ContentHash.parse(text)
    except ValueError:
        return None


def certificate_common_name(fqrn: str) -> str:
    """CN the reference publisher writes: fqrn cut to 30 characters (+`[...]`)."""
    short = fqrn if len(fqrn) <= CN_FQRN_LIMIT else fqrn[:CN_FQRN_LIMIT] + "[...]"
    return short + CN_SUFFIX


def create_certificate(
    fqrn: str,
    private_key: rsa.RSAPrivateKey,
    *,
    not_valid_before: dt.datetime | None = None,
    days: int = CERTIFICATE_DAYS,
    serial_number: int | None = None,
) -> x509.Certificate:
    """Self-signed repository certificate; deterministic given the date and serial."""
    from cryptography import x509  # the publisher's: mounts do without the package
    from cryptography.x509.oid import NameOID

    start = not_valid_before or dt.datetime.now(dt.UTC).replace(microsecond=0)
    if start.tzinfo is None:
        raise ValueError("not_valid_before must be timezone-aware")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certificate_common_name(fqrn))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(serial_number or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
    )
    return builder.sign(private_key, hashes.SHA256())


# --- keys ---------------------------------------------------------------------------------


def generate_private_key(bits: int = RSA_KEY_BITS) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=bits)


def load_public_key(pem: bytes, *, what: str = "public key") -> rsa.RSAPublicKey:
    """Master public key: PEM SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`) only, like clients."""
    if b"-----BEGIN RSA PUBLIC KEY-----" in pem:
        raise ConfigError(
            f"{what}: PKCS#1 'BEGIN RSA PUBLIC KEY' is not accepted by CernVM-FS clients; "
            "convert it to 'BEGIN PUBLIC KEY' (SubjectPublicKeyInfo) with "
            "`openssl rsa -RSAPublicKey_in -pubout`"
        )
    try:
        return _rsa_key(der.pem_body(pem, b"PUBLIC KEY"))
    except der.NotRsaError:
        raise ConfigError(f"{what}: not an RSA public key") from None
    except ValueError as exc:
        raise ConfigError(f"{what}: not a PEM public key ({exc})") from None


def load_private_key(pem: bytes, *, what: str = "private key") -> rsa.RSAPrivateKey:
    """Unencrypted RSA private key, PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`)."""
    from cryptography.hazmat.primitives import serialization  # the publisher's

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(f"{what}: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{what}: not a PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{what}: not an RSA private key")
    return key


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """PKCS#1 `BEGIN RSA PRIVATE KEY`, the form the reference key files use."""
    from cryptography.hazmat.primitives import serialization  # the publisher's

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_pem(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo `BEGIN PUBLIC KEY`, the only form clients load."""
    from cryptography.hazmat.primitives import serialization  # the publisher's

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(a: rsa.RSAPublicKey, b: rsa.RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()
