"""The few DER structures a client reads from repository keys and certificates: PEM blocks,
a certificate's SubjectPublicKeyInfo, and the RSA key inside one (pure, no I/O).

Why by hand: cryptography reads these through its `serialization` and `x509` packages,
whose imports cost every mount 2.8 MB and 6 MB resident (the x509 parser and the key
loaders import them too); `rsa.RSAPublicNumbers` builds the key from the two integers
without either. Nothing is trusted from a parse alone: a certificate is admitted by the
whitelist's fingerprint over every DER byte, and the master key is the site's own file.
Every length is checked against its enclosing element; anything DER does not allow here
is a ValueError (`NotRsaError` for a key of another algorithm).
"""

from __future__ import annotations

import base64
import binascii

SEQUENCE, BIT_STRING, INTEGER, OID, NULL, VERSION = 0x30, 0x03, 0x02, 0x06, 0x05, 0xA0
RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
SPKI_FIELD = 5  # tbsCertificate: [version], serial, signature, issuer, validity, subject, SPKI


class NotRsaError(ValueError):
    """A well-formed key of another algorithm."""


def pem_body(pem: bytes, label: bytes) -> bytes:
    """The DER bytes of the first `-----BEGIN <label>-----` block (text around it is
    ignored, as OpenSSL does)."""
    begin, end_marker = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    start = pem.find(begin)
    end = pem.find(end_marker, start + len(begin)) if start >= 0 else -1
    if end < 0:
        raise ValueError(f"no {label.decode()} block")
    try:
        return base64.b64decode(b"".join(pem[start + len(begin):end].split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


def pem_block(der: bytes, label: bytes) -> bytes:
    """`der` as OpenSSL writes a PEM block: 64 base64 characters a line."""
    body = base64.b64encode(der)
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([b"-----BEGIN " + label + b"-----", *lines,
                       b"-----END " + label + b"-----"]) + b"\n"


def element(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at `pos`, which must lie within
    `end`."""
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


def elements(der: bytes, start: int, end: int, limit: int) -> list[tuple[int, int, int]]:
    """(tag, element start, element end) of at most `limit` elements in [start, end)."""
    found: list[tuple[int, int, int]] = []
    while start < end and len(found) < limit:
        tag, _, element_end = element(der, start, end)
        found.append((tag, start, element_end))
        start = element_end
    return found


def _contents(der: bytes, tags: list[int]) -> list[tuple[int, int]]:
    """The contents of a SEQUENCE spanning all of `der` whose elements have exactly
    `tags`."""
    tag, start, end = element(der, 0, len(der))
    if tag != SEQUENCE or end != len(der):
        raise ValueError("not a DER SEQUENCE")
    found = elements(der, start, end, len(tags) + 1)
    if [t for t, _, _ in found] != tags or found[-1][2] != end:
        raise ValueError("unexpected DER structure")
    return [element(der, pos, element_end)[1:] for _, pos, element_end in found]


def certificate_key_info(der: bytes) -> bytes:
    """The SubjectPublicKeyInfo of certificate `der`: SEQUENCE {tbsCertificate SEQUENCE,
    signatureAlgorithm SEQUENCE, signatureValue BIT STRING} spanning every byte, the key
    the seventh field of tbsCertificate (the sixth without the optional version)."""
    (tbs_start, tbs_end), _, _ = _contents(der, [SEQUENCE, SEQUENCE, BIT_STRING])
    fields = elements(der, tbs_start, tbs_end, SPKI_FIELD + 2)
    if fields and fields[0][0] == VERSION:
        fields = fields[1:]
    if len(fields) <= SPKI_FIELD or fields[SPKI_FIELD][0] != SEQUENCE:
        raise ValueError("no subject public key in the certificate")
    _, key_start, key_end = fields[SPKI_FIELD]
    return der[key_start:key_end]


def rsa_numbers(key_info: bytes) -> tuple[int, int]:
    """(modulus, public exponent) of an rsaEncryption SubjectPublicKeyInfo; NotRsaError
    for another algorithm."""
    (algorithm_start, algorithm_end), (bits_start, bits_end) = _contents(
        key_info, [SEQUENCE, BIT_STRING])
    parts = elements(key_info, algorithm_start, algorithm_end, 3)
    if not parts or parts[0][0] != OID:
        raise ValueError("no algorithm in the key")
    _, oid_start, oid_end = element(key_info, parts[0][1], parts[0][2])
    if key_info[oid_start:oid_end] != RSA_ENCRYPTION:
        raise NotRsaError("not an RSA key")
    parameters = parts[1:]
    if len(parameters) > 1 or (parameters and (parameters[0][0] != NULL
                                               or parameters[0][2] - parameters[0][1] != 2)):
        raise ValueError("RSA key parameters are not NULL")
    if bits_end <= bits_start or key_info[bits_start] != 0:
        raise ValueError("RSA key bits do not start on a byte")
    inner = key_info[bits_start + 1:bits_end]
    (n_start, n_end), (e_start, e_end) = _contents(inner, [INTEGER, INTEGER])
    return _positive(inner[n_start:n_end]), _positive(inner[e_start:e_end])


def _positive(content: bytes) -> int:
    """A DER INTEGER's value, which must be positive and minimally encoded."""
    if not content or content[0] & 0x80:
        raise ValueError("RSA key number is not positive")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise ValueError("RSA key number is not minimally encoded")
    return int.from_bytes(content, "big")
