"""`.cvmfswhitelist`: parse, serialise, sign and verify against the reference repositories.

Every verification passes an explicit `now`: the fixtures expire (oracle.local on
2026-12-29 04:00 UTC, legacy_aufs on 2015-11-20 11:00 UTC).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.errors import (
    CertificateError,
    FingerprintNotListedError,
    LetterHashError,
    LetterMalformedError,
    MissingFieldError,
    NameMismatchError,
    SignatureError,
    WhitelistExpiredError,
)
from pycvmfs.format.certificates import (
    certificate_fingerprint,
    fingerprint_text,
    load_certificate,
    load_private_key,
    load_public_key,
)
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.format.letters import build_letter, split_letter
from pycvmfs.format.whitelist import (
    Whitelist,
    check_certificate_listed,
    make_whitelist,
    parse_whitelist,
    serialise,
    sign_whitelist,
    verify_whitelist,
)
from tests.fixtures_path import LEGACY, LEGACY_FQRN, ORACLE_KEYS, ORACLE_REPO, unpack_legacy

LETTER_ALGORITHMS = [Algorithm.SHA1, Algorithm.RIPEMD160, Algorithm.SHAKE128]
UTC = dt.UTC
ORACLE_NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORACLE_EXPIRY_HOUR = dt.datetime(2026, 12, 29, 4, 0, tzinfo=UTC)
LEGACY_NOW = dt.datetime(2015, 11, 1, tzinfo=UTC)
LEGACY_EXPIRY_HOUR = dt.datetime(2015, 11, 20, 11, 0, tzinfo=UTC)
ONE_SECOND = dt.timedelta(seconds=1)


@dataclasses.dataclass(frozen=True)
class Keys:
    master: rsa.RSAPrivateKey
    public: rsa.RSAPublicKey
    certificate: x509.Certificate


def _need(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"shared fixtures not found at {path}")


@pytest.fixture(scope="module")
def oracle_raw() -> bytes:
    _need(ORACLE_REPO)
    return (ORACLE_REPO / ".cvmfswhitelist").read_bytes()


@pytest.fixture(scope="module")
def oracle() -> Keys:
    _need(ORACLE_KEYS)
    return Keys(
        master=load_private_key((ORACLE_KEYS / "oracle.local.masterkey").read_bytes()),
        public=load_public_key((ORACLE_KEYS / "oracle.local.pub").read_bytes()),
        certificate=load_certificate((ORACLE_KEYS / "oracle.local.crt").read_bytes()),
    )


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Keys]:
    _need(LEGACY)
    repo, keys = unpack_legacy(tmp_path_factory.mktemp("legacy"))
    loaded = Keys(
        master=load_private_key((keys / f"{LEGACY_FQRN}.masterkey").read_bytes()),
        public=load_public_key((keys / f"{LEGACY_FQRN}.pub").read_bytes()),
        certificate=load_certificate((keys / f"{LEGACY_FQRN}.crt").read_bytes()),
    )
    return (repo / ".cvmfswhitelist").read_bytes(), loaded


# --- the reference repositories -------------------------------------------------------------


def test_parse_oracle(oracle_raw: bytes) -> None:
    whitelist, letter = parse_whitelist(oracle_raw)
    assert whitelist == Whitelist(
        created=dt.datetime(2026, 11, 29, 4, 43, 24, tzinfo=UTC),
        expires=dt.datetime(2026, 12, 29, 4, 43, 24, tzinfo=UTC),
        fqrn="oracle.local",
        fingerprints=(ContentHash.parse("685652d510f33fd1b027b3c4a578797d0cbc5c65"),),
    )
    assert whitelist.expiry_hour == ORACLE_EXPIRY_HOUR
    assert letter.hash_line == b"2b63385d695ca075b1480f8d14e8855cb1d4a1ef"
    assert serialise(whitelist) == letter.body


def test_verify_oracle(oracle_raw: bytes, oracle: Keys) -> None:
    whitelist = verify_whitelist(oracle_raw, [oracle.public], fqrn="oracle.local", now=ORACLE_NOW)
    check_certificate_listed(whitelist, oracle.certificate)


def test_signing_reproduces_the_reference_whitelists(
    oracle_raw: bytes, oracle: Keys, legacy: tuple[bytes, Keys]
) -> None:
    assert sign_whitelist(parse_whitelist(oracle_raw)[0], oracle.master) == oracle_raw
    legacy_raw, legacy_keys = legacy
    assert sign_whitelist(parse_whitelist(legacy_raw)[0], legacy_keys.master) == legacy_raw


def test_legacy(legacy: tuple[bytes, Keys]) -> None:
    raw, keys = legacy
    whitelist = verify_whitelist(raw, [keys.public], fqrn=LEGACY_FQRN, now=LEGACY_NOW)
    assert split_letter(raw).hash_line == b"929b0716d322e6b740352c7e67da1058454cc4d2"
    assert [fingerprint_text(fp) for fp in whitelist.fingerprints] == [
        "93:AB:A3:C4:89:BE:F9:B7:3E:90:8F:42:C1:8A:EF:12:BB:05:C4:15"
    ]
    assert whitelist.expiry_hour == LEGACY_EXPIRY_HOUR
    check_certificate_listed(whitelist, keys.certificate)


def test_legacy_is_expired_today(legacy: tuple[bytes, Keys]) -> None:
    raw, keys = legacy
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(WhitelistExpiredError, match="legacy_aufs.cern.ch: expired at 2015-11-20"):
        verify_whitelist(raw, [keys.public], fqrn=LEGACY_FQRN, now=now)


# --- expiry at hour granularity -------------------------------------------------------------


def test_expiry_hour_edges(oracle_raw: bytes, oracle: Keys) -> None:
    keys = [oracle.public]
    verify_whitelist(oracle_raw, keys, fqrn="oracle.local", now=ORACLE_EXPIRY_HOUR - ONE_SECOND)
    with pytest.raises(WhitelistExpiredError) as caught:
        verify_whitelist(oracle_raw, keys, fqrn="oracle.local", now=ORACLE_EXPIRY_HOUR)
    assert "whitelist of oracle.local" in str(caught.value)
    assert "2026-12-29 04:00 UTC" in str(caught.value)
    # 04:30 is before the printed 04:43:24, but minutes are ignored: still expired
    with pytest.raises(WhitelistExpiredError):
        verify_whitelist(oracle_raw, keys, fqrn="oracle.local",
                         now=ORACLE_EXPIRY_HOUR + dt.timedelta(minutes=30))


def test_legacy_expiry_hour_edges(legacy: tuple[bytes, Keys]) -> None:
    raw, keys = legacy
    verify_whitelist(raw, [keys.public], fqrn=LEGACY_FQRN, now=LEGACY_EXPIRY_HOUR - ONE_SECOND)
    with pytest.raises(WhitelistExpiredError):
        verify_whitelist(raw, [keys.public], fqrn=LEGACY_FQRN, now=LEGACY_EXPIRY_HOUR)


def test_now_in_another_timezone_is_compared_in_utc(oracle_raw: bytes, oracle: Keys) -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    just_before = dt.datetime(2026, 12, 29, 4, 59, 59, tzinfo=cet)  # 03:59:59 UTC
    verify_whitelist(oracle_raw, [oracle.public], fqrn="oracle.local", now=just_before)
    with pytest.raises(WhitelistExpiredError):
        verify_whitelist(oracle_raw, [oracle.public], fqrn="oracle.local",
                         now=dt.datetime(2026, 12, 29, 5, 0, tzinfo=cet))


def test_naive_now_is_refused(oracle_raw: bytes, oracle: Keys) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_whitelist(oracle_raw, [oracle.public], fqrn="oracle.local",
                         now=dt.datetime(2026, 12, 1))


# --- tampering ------------------------------------------------------------------------------


def test_wrong_fqrn(oracle_raw: bytes, oracle: Keys) -> None:
    with pytest.raises(NameMismatchError, match="names 'oracle.local', expected 'other.local'"):
        verify_whitelist(oracle_raw, [oracle.public], fqrn="other.local", now=ORACLE_NOW)


def test_flipped_body_byte(oracle_raw: bytes, oracle: Keys) -> None:
    raw = oracle_raw.replace(b"68:56", b"68:57")
    with pytest.raises(LetterHashError, match="whitelist of oracle.local: body hashes to"):
        verify_whitelist(raw, [oracle.public], fqrn="oracle.local", now=ORACLE_NOW)


def test_flipped_signature_byte(oracle_raw: bytes, oracle: Keys) -> None:
    raw = bytearray(oracle_raw)
    raw[-1] ^= 0x01
    with pytest.raises(SignatureError, match="any of 1 public key"):
        verify_whitelist(bytes(raw), [oracle.public], fqrn="oracle.local", now=ORACLE_NOW)


def test_signature_with_digest_info_is_not_accepted(oracle_raw: bytes, oracle: Keys) -> None:
    """The manifest scheme (PKCS#1 v1.5 + SHA-1 DigestInfo) must not pass as a whitelist."""
    from cryptography.hazmat.primitives import hashes

    body = split_letter(oracle_raw).body
    raw = build_letter(body, Algorithm.SHA1,
                       lambda line: oracle.master.sign(line, padding.PKCS1v15(), hashes.SHA1()))
    with pytest.raises(SignatureError):
        verify_whitelist(raw, [oracle.public], fqrn="oracle.local", now=ORACLE_NOW)


def test_any_key_may_verify(oracle_raw: bytes, oracle: Keys, legacy: tuple[bytes, Keys]) -> None:
    other = legacy[1].public
    verify_whitelist(oracle_raw, [other, oracle.public], fqrn="oracle.local", now=ORACLE_NOW)
    with pytest.raises(SignatureError):
        verify_whitelist(oracle_raw, [other], fqrn="oracle.local", now=ORACLE_NOW)
    with pytest.raises(SignatureError):
        verify_whitelist(oracle_raw, [], fqrn="oracle.local", now=ORACLE_NOW)


def test_keys_too_small_for_the_hash_are_skipped(oracle_raw: bytes, oracle: Keys) -> None:
    tiny = rsa.RSAPublicNumbers(65537, (1 << 255) | 0x1234567).public_key()  # 32-byte modulus
    verify_whitelist(oracle_raw, [tiny, oracle.public], fqrn="oracle.local", now=ORACLE_NOW)
    with pytest.raises(SignatureError):
        verify_whitelist(oracle_raw, [tiny], fqrn="oracle.local", now=ORACLE_NOW)


def test_certificate_not_listed(oracle_raw: bytes, legacy: tuple[bytes, Keys]) -> None:
    whitelist, _ = parse_whitelist(oracle_raw)
    stranger = legacy[1].certificate
    with pytest.raises(FingerprintNotListedError) as caught:
        check_certificate_listed(whitelist, stranger)
    assert fingerprint_text(certificate_fingerprint(stranger)) in str(caught.value)
    assert "93:AB:A3:C4" in str(caught.value)
    assert "whitelist of oracle.local" in str(caught.value)


def test_cachain_is_not_silently_accepted(oracle: Keys) -> None:
    whitelist = dataclasses.replace(
        make_whitelist("oracle.local", [certificate_fingerprint(oracle.certificate)],
                       now=ORACLE_NOW),
        cachain=True,
    )
    with pytest.raises(CertificateError, match="Wcachain"):
        check_certificate_listed(whitelist, oracle.certificate)


def test_pkcs7_whitelists_are_refused(oracle: Keys) -> None:
    whitelist = dataclasses.replace(make_whitelist("oracle.local", [], now=ORACLE_NOW), pkcs7=True)
    raw = sign_whitelist(whitelist, oracle.master)
    with pytest.raises(SignatureError, match="PKCS#7"):
        verify_whitelist(raw, [oracle.public], fqrn="oracle.local", now=ORACLE_NOW)


# --- syntax ---------------------------------------------------------------------------------


def _letter(body: bytes, algorithm: Algorithm = Algorithm.SHA1) -> bytes:
    return build_letter(body, algorithm, lambda line: b"sig")


def test_fingerprint_lines_follow_the_reference_rules() -> None:
    sha1 = ContentHash.of(Algorithm.SHA1, b"a")
    rmd = ContentHash.of(Algorithm.RIPEMD160, b"b")
    shake = ContentHash.of(Algorithm.SHAKE128, b"c")
    body = "\n".join([
        "20260101000000", "E20260201000000", "Nx.test",
        "# a comment", "",
        fingerprint_text(sha1).lower() + " # with a comment",
        "garbage line",
        fingerprint_text(rmd).replace(":", "") + "\tlabel",
        fingerprint_text(shake),
        "Wcachain",  # only recognised right after N / Vpkcs7
        "",
    ]).encode()
    whitelist, _ = parse_whitelist(_letter(body))
    assert whitelist.fingerprints == (sha1, rmd, shake)
    assert not whitelist.cachain and not whitelist.pkcs7


def test_flag_lines() -> None:
    body = b"20260101000000\nE20260201000000\nNx.test\nVpkcs7\nWcachain\n"
    whitelist, _ = parse_whitelist(_letter(body))
    assert whitelist.pkcs7 and whitelist.cachain
    assert serialise(whitelist) == body
    body = b"20260101000000\nE20260201000000\nNx.test\nWcachain\n"
    whitelist, _ = parse_whitelist(_letter(body))
    assert whitelist.cachain and not whitelist.pkcs7


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"2026010100000\nE20260201000000\nNx\n", LetterMalformedError, "line 1"),
        (b"20260101000000\nE2026020100000\nNx\n", LetterMalformedError, "line 2"),
        (b"20260101000000\n", LetterMalformedError, "expiry"),
        (b"20260101000000\nE20261301000000\nNx\n", LetterMalformedError, "YYYYMMDDhhmmss"),
        (b"20260101000000\nE2026020100000x\nNx\n", LetterMalformedError, "YYYYMMDDhhmmss"),
        (b"20260101000000\nE20260201000000\n", MissingFieldError, "line 3"),
        (b"20260101000000\nE20260201000000\nXx\n", MissingFieldError, "N<fqrn>"),
    ],
)
def test_malformed(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_whitelist(_letter(body))


def test_expiry_letter_is_not_checked() -> None:
    whitelist, _ = parse_whitelist(_letter(b"20260101000000\nX20260201000000\nNx.test\n"))
    assert whitelist.expires == dt.datetime(2026, 2, 1, tzinfo=UTC)


def test_make_whitelist() -> None:
    fp = ContentHash.of(Algorithm.SHA1, b"cert")
    whitelist = make_whitelist("x.test", [fp], now=dt.datetime(2026, 1, 1, 10, 0, 0, 999, UTC))
    assert whitelist.created == dt.datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert whitelist.expires == dt.datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert whitelist.fingerprints == (fp,)


# --- round trips ----------------------------------------------------------------------------


@st.composite
def whitelists(draw: st.DrawFn) -> Whitelist:
    moment = st.datetimes(
        min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59),
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=0))
    fingerprint = st.builds(
        ContentHash, st.sampled_from(LETTER_ALGORITHMS), st.binary(min_size=20, max_size=20)
    )
    return Whitelist(
        created=draw(moment),
        expires=draw(moment),
        fqrn=draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,60}", fullmatch=True)),
        fingerprints=tuple(draw(st.lists(fingerprint, max_size=4))),
        pkcs7=draw(st.booleans()),
        cachain=draw(st.booleans()),
    )


@given(whitelists(), st.sampled_from(LETTER_ALGORITHMS))
def test_serialise_parse_round_trip(whitelist: Whitelist, algorithm: Algorithm) -> None:
    parsed, letter = parse_whitelist(_letter(serialise(whitelist), algorithm))
    assert parsed == whitelist
    assert letter.algorithm is algorithm


@pytest.mark.parametrize("algorithm", LETTER_ALGORITHMS)
def test_sign_verify_round_trip(algorithm: Algorithm, oracle: Keys) -> None:
    fingerprint = certificate_fingerprint(oracle.certificate, algorithm)
    assert fingerprint_text(fingerprint).endswith(algorithm.text_id.upper())
    whitelist = make_whitelist("oracle.local", [fingerprint], now=ORACLE_NOW)
    raw = sign_whitelist(whitelist, oracle.master)
    letter = split_letter(raw)
    assert letter.algorithm is algorithm  # follows the fingerprints' algorithm
    assert letter.signature == oracle.master.sign(letter.hash_line, padding.PKCS1v15(),
                                                  NoDigestInfo())
    verified = verify_whitelist(raw, [oracle.public], fqrn="oracle.local", now=ORACLE_NOW)
    assert verified == whitelist
    check_certificate_listed(verified, oracle.certificate)


def test_sign_with_explicit_algorithm(oracle: Keys) -> None:
    whitelist = make_whitelist("oracle.local", [], now=ORACLE_NOW)
    raw = sign_whitelist(whitelist, oracle.master, algorithm=Algorithm.SHAKE128)
    assert split_letter(raw).algorithm is Algorithm.SHAKE128
    assert verify_whitelist(raw, [oracle.public], fqrn="oracle.local", now=ORACLE_NOW).fqrn == (
        "oracle.local"
    )
