"""Certificates, fingerprints and RSA keys as CernVM-FS uses them (fact sheet 3.2, 4, 15.1).

Pure functions over PEM bytes: callers read and write the files. A repository certificate
is only a carrier for the signing public key (dates and issuer are not checked by clients);
its identity is the fingerprint, the hash of its DER encoding, listed on the whitelist.

So clients read a certificate into `Certificate` (the DER bytes and the RSA key) by taking
the key's SubjectPublicKeyInfo out of the DER themselves (`_public_key_info`, a bounded walk
of the outer fields) and loading it with cryptography: importing the `cryptography.x509`
package costs every mount 6 MB resident (its parser imports it too), and nothing is trusted
from the parse alone, since the whitelist's fingerprint covers every DER byte. The
publisher builds certificates with the package (`create_certificate`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import CertificateError, ConfigError
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
_PEM_BEGIN, _PEM_END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
_SEQUENCE, _BIT_STRING, _VERSION = 0x30, 0x03, 0xA0  # DER tags of a certificate's fields
_SPKI_FIELD = 5  # tbsCertificate: [version], serial, signature, issuer, validity, subject, SPKI

if TYPE_CHECKING:
    from cryptography import x509


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
        if encoding == serialization.Encoding.DER:
            return self.der
        if encoding == serialization.Encoding.PEM:
            body = base64.encodebytes(self.der).replace(b"\n", b"")
            lines = [body[i:i + 64] for i in range(0, len(body), 64)]
            return b"\n".join([_PEM_BEGIN, *lines, _PEM_END]) + b"\n"
        raise ValueError(f"a certificate is DER or PEM, not {encoding}")


def load_certificate(pem: bytes, *, what: str = "certificate") -> Certificate:
    """Parse a PEM X.509 certificate carrying an RSA key; CertificateError otherwise."""
    try:
        der = _pem_body(pem)
        key = serialization.load_der_public_key(_public_key_info(der))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{what}: not a PEM X.509 certificate ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertificateError(f"{what}: certificate key is not RSA")
    return Certificate(der, key)


def _pem_body(pem: bytes) -> bytes:
    """The DER bytes of the first CERTIFICATE block (text around it is ignored, as
    OpenSSL does)."""
    start = pem.find(_PEM_BEGIN)
    end = pem.find(_PEM_END, start + len(_PEM_BEGIN)) if start >= 0 else -1
    if end < 0:
        raise ValueError("no CERTIFICATE block")
    try:
        return base64.b64decode(b"".join(pem[start + len(_PEM_BEGIN):end].split()),
                                validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


def _der_element(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`, which must lie
    within `end`; ValueError for anything DER does not allow here."""
    if pos + 2 > end:
        raise ValueError("truncated DER")
    tag, first, start = der[pos], der[pos + 1], pos + 2
    if tag & 0x1F == 0x1F:
        raise ValueError("unexpected high tag number")
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or start + count > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start:start + count], "big")
        start += count
        if length < 0x80 or der[pos + 2] == 0:
            raise ValueError("non-minimal DER length")
    if start + length > end:
        raise ValueError("truncated DER")
    return tag, start, start + length


def _elements(der: bytes, start: int, end: int, limit: int) -> list[tuple[int, int, int]]:
    """(tag, element start, element end) of at most `limit` elements in [start, end)."""
    found: list[tuple[int, int, int]] = []
    while start < end and len(found) < limit:
        tag, _, element_end = _der_element(der, start, end)
        found.append((tag, start, element_end))
        start = element_end
    return found


def _public_key_info(der: bytes) -> bytes:
    """The SubjectPublicKeyInfo of certificate `der`: SEQUENCE {tbsCertificate SEQUENCE,
    signatureAlgorithm SEQUENCE, signatureValue BIT STRING} spanning every byte, and the
    key the seventh field of tbsCertificate (the sixth without the optional version)."""
    tag, start, end = _der_element(der, 0, len(der))
    if tag != _SEQUENCE or end != len(der):
        raise ValueError("not a DER certificate")
    outer = _elements(der, start, end, 4)
    if [t for t, _, _ in outer] != [_SEQUENCE, _SEQUENCE, _BIT_STRING] or outer[-1][2] != end:
        raise ValueError("not a DER certificate")
    _, tbs_start, tbs_end = _der_element(der, outer[0][1], outer[0][2])
    fields = _elements(der, tbs_start, tbs_end, _SPKI_FIELD + 2)
    if fields and fields[0][0] == _VERSION:
        fields = fields[1:]
    if len(fields) <= _SPKI_FIELD or fields[_SPKI_FIELD][0] != _SEQUENCE:
        raise ValueError("no subject public key in the certificate")
    _, key_start, key_end = fields[_SPKI_FIELD]
    return der[key_start:key_end]


def certificate_from_object(
    stored: bytes, expected: ContentHash, *, what: str = "certificate"
) -> Certificate:
    """Certificate from its repository object (`data/XX/...X`: zlib PEM, hash over stored)."""
    pem = open_object(
        stored, expected, Compression.ZLIB, max_size=_MAX_CERTIFICATE_BYTES, what=what
    )
    return load_certificate(pem, what=f"{what} {expected}")


def certificate_pem(cert: Certificate | x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_fingerprint(
    cert: Certificate | x509.Certificate, algorithm: Algorithm = Algorithm.SHA1
) -> ContentHash:
    """Hash of the certificate's DER encoding, what whitelists list (fact sheet 3.2)."""
    hasher = Hasher(algorithm)
    hasher.update(cert.public_bytes(serialization.Encoding.DER))
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
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{what}: not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{what}: not an RSA public key")
    return key


def load_private_key(pem: bytes, *, what: str = "private key") -> rsa.RSAPrivateKey:
    """Unencrypted RSA private key, PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`)."""
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
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_pem(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo `BEGIN PUBLIC KEY`, the only form clients load."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(a: rsa.RSAPublicKey, b: rsa.RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()
