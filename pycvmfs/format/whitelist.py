"""The certificate whitelist `.cvmfswhitelist` (fact sheet section 3).

A signed letter listing the fingerprints of the certificates allowed to sign manifests,
valid until an expiry hour. Its signature is raw RSA PKCS#1 v1.5 type 1 over the ASCII
printed hash *without* DigestInfo, made with the master key whose public half clients hold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

from pycvmfs.errors import (
    CertificateError,
    FingerprintNotListedError,
    LetterMalformedError,
    MissingFieldError,
    NameMismatchError,
    SignatureError,
    WhitelistExpiredError,
)
from pycvmfs.format.certificates import (
    Certificate,
    certificate_fingerprint,
    fingerprint_text,
    parse_fingerprint,
)
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.format.letters import Letter, body_lines, build_letter, check_letter_hash, split_letter

DEFAULT_VALIDITY = dt.timedelta(days=30)  # publisher default with a master key file
PKCS7_LINE = "Vpkcs7"
CACHAIN_LINE = "Wcachain"
_PKCS1_MIN_PADDING = 11  # 00 01 + at least eight FF + 00


@dataclass(frozen=True, kw_only=True)
class Whitelist:
    """Whitelist content; times are timezone-aware UTC with whole seconds."""

    created: dt.datetime
    expires: dt.datetime
    fqrn: str
    fingerprints: tuple[ContentHash, ...] = field(default=())
    pkcs7: bool = False
    cachain: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprints", tuple(self.fingerprints))

    @property
    def expiry_hour(self) -> dt.datetime:
        """The instant the whitelist stops being valid: minutes and seconds are ignored."""
        return _utc(self.expires, "expires").replace(minute=0, second=0, microsecond=0)

    def is_valid_at(self, now: dt.datetime) -> bool:
        return _utc(now, "now") < self.expiry_hour


def _utc(moment: dt.datetime, name: str) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC)")
    return moment.astimezone(dt.UTC)


# --- parsing ------------------------------------------------------------------------------


def parse_whitelist(raw: bytes, *, what: str = "whitelist") -> tuple[Whitelist, Letter]:
    """Parse `.cvmfswhitelist` (syntax only; `verify_whitelist` decides whether to trust it)."""
    letter = split_letter(raw, what=what)
    lines = body_lines(letter.body, what=what)
    if len(lines) < 2:
        raise LetterMalformedError(f"{what}: needs a creation and an expiry line")
    if len(lines[0]) != 14:
        raise LetterMalformedError(f"{what}: line 1 {lines[0]!r} is not YYYYMMDDhhmmss")
    if len(lines[1]) != 15:
        raise LetterMalformedError(f"{what}: line 2 {lines[1]!r} is not EYYYYMMDDhhmmss")
    created = _timestamp(lines[0], what)
    expires = _timestamp(lines[1][1:], what)  # the leading 'E' is not checked (reference)
    if len(lines) < 3 or not lines[2].startswith("N"):
        raise MissingFieldError(f"{what}: line 3 must name the repository (N<fqrn>)")
    fqrn = lines[2][1:]
    rest = lines[3:]
    pkcs7 = bool(rest) and rest[0] == PKCS7_LINE
    rest = rest[1:] if pkcs7 else rest
    cachain = bool(rest) and rest[0] == CACHAIN_LINE
    rest = rest[1:] if cachain else rest
    fingerprints = [fp for fp in map(parse_fingerprint, rest) if fp is not None]
    whitelist = Whitelist(
        created=created,
        expires=expires,
        fqrn=fqrn,
        fingerprints=tuple(fingerprints),
        pkcs7=pkcs7,
        cachain=cachain,
    )
    return whitelist, letter


def _timestamp(text: str, what: str) -> dt.datetime:
    try:
        if not text.isascii() or not text.isdigit():
            raise ValueError(text)
        parts = (text[0:4], text[4:6], text[6:8], text[8:10], text[10:12], text[12:14])
        year, month, day, hour, minute, second = map(int, parts)
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError:
        raise LetterMalformedError(f"{what}: {text!r} is not a YYYYMMDDhhmmss time") from None


# --- writing ------------------------------------------------------------------------------


def make_whitelist(
    fqrn: str,
    fingerprints: Iterable[ContentHash],
    *,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> Whitelist:
    """A fresh whitelist created at `now` (whole seconds) and expiring `validity` later."""
    created = _utc(now, "now").replace(microsecond=0)
    return Whitelist(
        created=created, expires=created + validity, fqrn=fqrn, fingerprints=tuple(fingerprints)
    )


def _format_time(moment: dt.datetime, name: str) -> str:
    text = _utc(moment, name).strftime("%Y%m%d%H%M%S")
    if len(text) != 14:
        raise LetterMalformedError(f"whitelist: {name} {moment} is out of range")
    return text


def serialise(whitelist: Whitelist) -> bytes:
    """Body: creation, `E`+expiry, `N`+fqrn, optional `Vpkcs7`/`Wcachain`, fingerprints."""
    w = whitelist
    if not w.fqrn or "\n" in w.fqrn:
        raise LetterMalformedError(f"whitelist: cannot write repository name {w.fqrn!r}")
    lines = [_format_time(w.created, "created"), "E" + _format_time(w.expires, "expires")]
    lines.append("N" + w.fqrn)
    if w.pkcs7:
        lines.append(PKCS7_LINE)
    if w.cachain:
        lines.append(CACHAIN_LINE)
    lines += [fingerprint_text(fp) for fp in w.fingerprints]
    return "".join(line + "\n" for line in lines).encode("utf-8")


serialise_whitelist = serialise


def sign_whitelist(
    whitelist: Whitelist,
    master_private_key: rsa.RSAPrivateKey,
    *,
    algorithm: Algorithm | None = None,
) -> bytes:
    """Complete `.cvmfswhitelist`, reproducing `openssl pkeyutl -sign` byte for byte.

    The letter hash uses `algorithm`, else that of the first fingerprint, else SHA-1.
    """
    if algorithm is None:
        algorithm = whitelist.fingerprints[0].algorithm if whitelist.fingerprints else None
    algorithm = algorithm or Algorithm.SHA1

    def sign(hash_line: bytes) -> bytes:
        return master_private_key.sign(hash_line, padding.PKCS1v15(), NoDigestInfo())

    what = f"whitelist of {whitelist.fqrn}"
    return build_letter(serialise(whitelist), algorithm, sign, what=what)


# --- verification -------------------------------------------------------------------------


def verify_whitelist(
    raw: bytes,
    public_keys: Sequence[rsa.RSAPublicKey],
    *,
    fqrn: str,
    now: dt.datetime,
) -> Whitelist:
    """Parse and trust a whitelist: syntax, expiry (hour granular, UTC), name, hash, RSA.

    `now` is explicit so callers (and tests) own the clock. Any key of `public_keys` may
    have signed it. Whether a certificate is listed is `check_certificate_listed`.
    """
    what = f"whitelist of {fqrn}"
    whitelist, letter = parse_whitelist(raw, what=what)
    if not whitelist.is_valid_at(now):
        expired = whitelist.expiry_hour.strftime("%Y-%m-%d %H:%M UTC")
        shown = _utc(now, "now").strftime("%Y-%m-%d %H:%M:%S UTC")
        raise WhitelistExpiredError(
            f"{what}: expired at {expired} (now {shown}); re-sign it with the master key"
        )
    if whitelist.fqrn != fqrn:
        raise NameMismatchError(f"{what}: names {whitelist.fqrn!r}, expected {fqrn!r}")
    if whitelist.pkcs7:
        raise SignatureError(f"{what}: PKCS#7-signed whitelists (Vpkcs7) are not supported")
    check_letter_hash(letter, what=what)
    if not any(_rsa_recovers(key, letter.signature, letter.hash_line) for key in public_keys):
        raise SignatureError(
            f"{what}: signature does not verify with any of {len(public_keys)} public key(s)"
        )
    return whitelist


def _rsa_recovers(key: rsa.RSAPublicKey, signature: bytes, message: bytes) -> bool:
    """RSA_public_decrypt with PKCS#1 padding, then an exact comparison with `message`."""
    numbers = key.public_numbers()
    size = (numbers.n.bit_length() + 7) // 8
    if size < len(message) + _PKCS1_MIN_PADDING or len(signature) > size:
        return False  # key too small for this hash string (skipped like the reference)
    value = int.from_bytes(signature, "big")
    if value >= numbers.n:
        return False
    block = pow(value, numbers.e, numbers.n).to_bytes(size, "big")
    if block[:2] != b"\x00\x01":
        return False
    end = block.find(b"\x00", 2)
    if end < 2 + 8 or block[2:end].strip(b"\xff"):
        return False
    return block[end + 1 :] == message


def check_certificate_listed(whitelist: Whitelist, certificate: Certificate) -> None:
    """The certificate's fingerprint, in each listed fingerprint's algorithm, must be listed."""
    what = f"whitelist of {whitelist.fqrn}"
    for listed in whitelist.fingerprints:
        if certificate_fingerprint(certificate, listed.algorithm) == listed:
            if whitelist.cachain:
                raise CertificateError(
                    f"{what}: requires CA-chain verification (Wcachain), which is not supported"
                )
            return
    algorithm = whitelist.fingerprints[0].algorithm if whitelist.fingerprints else Algorithm.SHA1
    mine = fingerprint_text(certificate_fingerprint(certificate, algorithm))
    raise FingerprintNotListedError(f"{what}: certificate {mine} is not on the whitelist")
