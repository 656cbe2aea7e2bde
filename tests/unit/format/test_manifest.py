"""`.cvmfspublished`: parse, serialise, sign and verify against the reference repositories."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.errors import (
    LetterHashError,
    LetterMalformedError,
    MissingFieldError,
    NameMismatchError,
    OutdatedError,
    RootMismatchError,
    SignatureError,
)
from pycvmfs.format.certificates import (
    certificate_from_object,
    load_certificate,
    load_private_key,
)
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.format.letters import build_letter, split_letter
from pycvmfs.format.manifest import (
    ROOT_PATH_MD5,
    Manifest,
    check_manifest,
    parse_manifest,
    serialise,
    sign_manifest,
    verify_manifest,
)
from tests.fixtures_path import (
    LEGACY,
    LEGACY_FQRN,
    ORACLE_KEYS,
    ORACLE_REPO,
    unpack_legacy,
)

LETTER_ALGORITHMS = [Algorithm.SHA1, Algorithm.RIPEMD160, Algorithm.SHAKE128]
ORACLE_T = 1795927638


def h(text: str) -> ContentHash:
    return ContentHash.parse(text)


@pytest.fixture(scope="module")
def oracle_raw() -> bytes:
    if not ORACLE_REPO.is_dir():
        pytest.skip(f"shared fixtures not found at {ORACLE_REPO}")
    return (ORACLE_REPO / ".cvmfspublished").read_bytes()


@pytest.fixture(scope="module")
def oracle_cert() -> x509.Certificate:
    """The certificate as clients get it: the object named by X, hash-checked."""
    if not ORACLE_REPO.is_dir():
        pytest.skip(f"shared fixtures not found at {ORACLE_REPO}")
    manifest, _ = parse_manifest((ORACLE_REPO / ".cvmfspublished").read_bytes())
    assert manifest.certificate is not None
    stored = (ORACLE_REPO / manifest.certificate.object_path("X")).read_bytes()
    return certificate_from_object(stored, manifest.certificate)


@pytest.fixture(scope="module")
def oracle_key() -> rsa.RSAPrivateKey:
    if not ORACLE_KEYS.is_dir():
        pytest.skip(f"shared fixtures not found at {ORACLE_KEYS}")
    return load_private_key((ORACLE_KEYS / "oracle.local.key").read_bytes())


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not LEGACY.is_dir():
        pytest.skip(f"shared fixtures not found at {LEGACY}")
    return unpack_legacy(tmp_path_factory.mktemp("legacy"))


def resign(body: bytes, key: rsa.RSAPrivateKey, algorithm: Algorithm = Algorithm.SHA1) -> bytes:
    """A correctly signed letter around an arbitrary (possibly bad) body."""
    return build_letter(
        body, algorithm, lambda line: key.sign(line, padding.PKCS1v15(), hashes.SHA1())
    )


# --- the reference repositories -------------------------------------------------------------


def test_parse_oracle(oracle_raw: bytes) -> None:
    manifest, letter = parse_manifest(oracle_raw)
    assert manifest == Manifest(
        root_hash=h("7493141a12fcf9f6651775b69c34f4b23c4485c0"),
        root_catalog_size=57344,
        ttl_seconds=240,
        revision=6,
        garbage_collectable=False,
        alt_paths=False,
        fqrn="oracle.local",
        certificate=h("6431971d3b85ad6f435fc4ffebcb70a1d9064e87"),
        history=h("e9f661013d8b13d9f2e093cb1d0ed20430cb3976"),
        timestamp=ORACLE_T,
        metainfo=h("b29a7c2d8d5f442bedbc58683bcb709d6d4c72e7"),
        reflog=h("7195045bd5837024a6bb261bb652b58d998c0f02"),
    )
    assert manifest.algorithm is Algorithm.SHA1
    assert letter.hash_line == b"1d59f60ea9f5cc75d38e0beffc73b8106dd53893"


def test_serialise_reproduces_the_reference_body(oracle_raw: bytes) -> None:
    manifest, letter = parse_manifest(oracle_raw)
    assert serialise(manifest) == letter.body


def test_signing_reproduces_the_reference_manifest(
    oracle_raw: bytes, oracle_key: rsa.RSAPrivateKey
) -> None:
    manifest, _ = parse_manifest(oracle_raw)
    assert sign_manifest(manifest, oracle_key) == oracle_raw


def test_verify_oracle(oracle_raw: bytes, oracle_cert: x509.Certificate) -> None:
    manifest = verify_manifest(oracle_raw, oracle_cert, fqrn="oracle.local")
    assert manifest.revision == 6
    assert verify_manifest(
        oracle_raw, oracle_cert, fqrn="oracle.local", min_timestamp=ORACLE_T
    ) == manifest
    if ORACLE_KEYS.is_dir():
        crt = load_certificate((ORACLE_KEYS / "oracle.local.crt").read_bytes())
        assert verify_manifest(oracle_raw, crt, fqrn="oracle.local") == manifest


def test_legacy_manifest(legacy: tuple[Path, Path]) -> None:
    repo, keys = legacy
    raw = (repo / ".cvmfspublished").read_bytes()
    manifest, letter = parse_manifest(raw)
    assert letter.hash_line == b"a7c0345bd49103a80f2341c0319e020d1acf454b"
    assert manifest.root_hash == h("6ed3d49a5c64f21f36936ab350d49aaf57585b9a")
    assert (manifest.root_catalog_size, manifest.ttl_seconds, manifest.revision) == (14336, 900, 2)
    assert (manifest.fqrn, manifest.timestamp) == (LEGACY_FQRN, 1445428515)
    assert manifest.alt_paths is False  # this older publisher wrote no A line
    assert manifest.certificate is not None
    stored = (repo / manifest.certificate.object_path("X")).read_bytes()
    cert = certificate_from_object(stored, manifest.certificate)
    assert verify_manifest(raw, cert, fqrn=LEGACY_FQRN) == manifest
    key = load_private_key((keys / f"{LEGACY_FQRN}.key").read_bytes())
    assert resign(letter.body, key) == raw  # same key, same body: the same signature bytes
    # Our writer adds the A line that publisher left out; everything else is identical.
    assert serialise(manifest) == letter.body.replace(b"Gno\n", b"Gno\nAno\n")


def test_legacy_certificate_does_not_verify_oracle(
    oracle_raw: bytes, legacy: tuple[Path, Path]
) -> None:
    cert = load_certificate((legacy[1] / f"{LEGACY_FQRN}.crt").read_bytes())
    with pytest.raises(SignatureError, match="manifest of oracle.local: signature"):
        verify_manifest(oracle_raw, cert, fqrn="oracle.local")


# --- tampering and the order of the checks --------------------------------------------------


def test_flipped_body_byte(oracle_raw: bytes, oracle_cert: x509.Certificate) -> None:
    raw = bytearray(oracle_raw)
    raw[raw.index(b"\nS6\n") + 2] = ord("7")  # S6 -> S7: still a valid manifest
    with pytest.raises(LetterHashError, match="manifest of oracle.local: body hashes to"):
        verify_manifest(bytes(raw), oracle_cert, fqrn="oracle.local")


def test_flipped_signature_byte(oracle_raw: bytes, oracle_cert: x509.Certificate) -> None:
    raw = bytearray(oracle_raw)
    raw[-10] ^= 0x40
    with pytest.raises(SignatureError):
        verify_manifest(bytes(raw), oracle_cert, fqrn="oracle.local")


def test_truncated_signature(oracle_raw: bytes, oracle_cert: x509.Certificate) -> None:
    with pytest.raises(SignatureError):
        verify_manifest(oracle_raw[:-1], oracle_cert, fqrn="oracle.local")


def test_wrong_fqrn(oracle_raw: bytes, oracle_cert: x509.Certificate) -> None:
    with pytest.raises(NameMismatchError, match="names 'oracle.local', expected 'other.local'"):
        verify_manifest(oracle_raw, oracle_cert, fqrn="other.local")


def test_outdated(oracle_raw: bytes, oracle_cert: x509.Certificate) -> None:
    with pytest.raises(OutdatedError, match=str(ORACLE_T)):
        verify_manifest(oracle_raw, oracle_cert, fqrn="oracle.local", min_timestamp=ORACLE_T + 1)


@pytest.mark.parametrize("key", ["C", "R", "D", "S"])
def test_missing_required_key(key: str, oracle_raw: bytes, oracle_cert: x509.Certificate) -> None:
    letter = split_letter(oracle_raw)
    lines = [line for line in letter.body.split(b"\n") if not line.startswith(key.encode())]
    raw = b"\n".join(lines) + letter.to_bytes()[len(letter.body) - 1 :]
    with pytest.raises(MissingFieldError, match=f"required key {key} is missing"):
        verify_manifest(raw, oracle_cert, fqrn="oracle.local")


def test_missing_key_comes_before_a_name_mismatch(
    oracle_raw: bytes, oracle_cert: x509.Certificate
) -> None:
    raw = oracle_raw.replace(b"\nS6\n", b"\n")
    with pytest.raises(MissingFieldError):
        verify_manifest(raw, oracle_cert, fqrn="other.local")


def test_missing_name_is_a_mismatch(oracle_raw: bytes, oracle_key: rsa.RSAPrivateKey,
                                    oracle_cert: x509.Certificate) -> None:
    raw = resign(split_letter(oracle_raw).body.replace(b"Noracle.local\n", b""), oracle_key)
    with pytest.raises(NameMismatchError, match="no repository name"):
        verify_manifest(raw, oracle_cert, fqrn="oracle.local")


def test_root_mismatch_even_when_signed(
    oracle_raw: bytes, oracle_key: rsa.RSAPrivateKey, oracle_cert: x509.Certificate
) -> None:
    body = split_letter(oracle_raw).body.replace(ROOT_PATH_MD5.encode(), b"0" * 32)
    with pytest.raises(RootMismatchError, match="root path hash"):
        verify_manifest(resign(body, oracle_key), oracle_cert, fqrn="oracle.local")


def test_root_mismatch_is_checked_before_the_hash(
    oracle_raw: bytes, oracle_cert: x509.Certificate
) -> None:
    raw = oracle_raw.replace(ROOT_PATH_MD5.encode(), b"0" * 32)  # body no longer hashes
    with pytest.raises(RootMismatchError):
        verify_manifest(raw, oracle_cert, fqrn="oracle.local")


def test_outdated_is_checked_before_the_signature(
    oracle_raw: bytes, oracle_cert: x509.Certificate
) -> None:
    with pytest.raises(OutdatedError):
        verify_manifest(oracle_raw[:-5], oracle_cert, fqrn="oracle.local", min_timestamp=2**40)


def test_no_timestamp_is_outdated_when_one_is_known() -> None:
    manifest = Manifest(root_hash=h("a" * 40), revision=1, fqrn="x.test")
    check_manifest(manifest, fqrn="x.test")
    with pytest.raises(OutdatedError):
        check_manifest(manifest, fqrn="x.test", min_timestamp=1)


# --- syntax ---------------------------------------------------------------------------------


def _letter(body: bytes, algorithm: Algorithm = Algorithm.SHA1) -> bytes:
    return build_letter(body, algorithm, lambda line: b"sig")


def test_parse_rules_duplicates_z_and_unknown_keys() -> None:
    body = (
        b"C" + b"a" * 40 + b"\nR" + ROOT_PATH_MD5.encode() + b"\nD10\nS1\nS2\n\n"
        b"Zone\nQkeep me\nZtwo\nGyes\nAmaybe\nL" + b"b" * 40 + b"\n"
    )
    manifest, _ = parse_manifest(_letter(body))
    assert manifest.revision == 2  # later duplicates win
    assert manifest.garbage_collectable is True
    assert manifest.alt_paths is False  # anything but "yes" is no
    assert manifest.micro_catalog == h("b" * 40)
    assert manifest.extra == (("Z", "one|two"), ("Q", "keep me"))
    again, _ = parse_manifest(_letter(serialise(manifest)))
    assert again == manifest


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"Sabc", "key S is not a number"),
        (b"S-1", "key S is not a number"),
        (b"B 5", "key B is not a number"),
        (b"X" + b"A" * 40, "key X .certificate hash. is not a hash"),
        (b"C" + b"a" * 39, "key C .root catalog hash. is not a hash"),
    ],
)
def test_malformed_values(line: bytes, message: str) -> None:
    body = b"C" + b"a" * 40 + b"\nR" + ROOT_PATH_MD5.encode() + b"\nD10\nS1\n" + line + b"\n"
    with pytest.raises(LetterMalformedError, match=message):
        parse_manifest(_letter(body))


def test_messages_name_the_repository_when_parsing() -> None:
    body = b"Nmy.repo\nC" + b"a" * 40 + b"\nD10\nS1\n"
    with pytest.raises(MissingFieldError, match="manifest of my.repo: required key R"):
        parse_manifest(_letter(body))


def test_serialise_refuses_newlines() -> None:
    manifest = Manifest(root_hash=h("a" * 40), revision=1, fqrn="x\nS9")
    with pytest.raises(LetterMalformedError):
        serialise(manifest)
    with pytest.raises(LetterMalformedError):
        serialise(dataclasses.replace(manifest, fqrn="x.test", extra=(("S", "9"),)))


# --- round trips ----------------------------------------------------------------------------


def hashes_of(algorithm: Algorithm) -> st.SearchStrategy[ContentHash]:
    return st.binary(min_size=20, max_size=20).map(lambda d: ContentHash(algorithm, d))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    algorithm = draw(st.sampled_from(LETTER_ALGORITHMS))
    opt_hash = st.none() | hashes_of(algorithm)
    number = st.integers(min_value=0, max_value=2**63)
    return Manifest(
        root_hash=draw(hashes_of(algorithm)),
        revision=draw(number),
        ttl_seconds=draw(number),
        root_catalog_size=draw(st.none() | number),
        garbage_collectable=draw(st.booleans()),
        alt_paths=draw(st.booleans()),
        micro_catalog=draw(opt_hash),
        fqrn=draw(st.none() | st.from_regex(r"[a-z0-9][a-z0-9.-]{0,40}", fullmatch=True)),
        certificate=draw(opt_hash),
        history=draw(opt_hash),
        timestamp=draw(st.none() | number),
        metainfo=draw(opt_hash),
        reflog=draw(opt_hash),
        extra=tuple(draw(st.lists(st.tuples(st.sampled_from("EFIJKOPUVWZ"),
                                            st.from_regex(r"[ -~]*", fullmatch=True)),
                                  unique_by=lambda kv: kv[0], max_size=3))),
    )


@given(manifests())
def test_serialise_parse_round_trip(manifest: Manifest) -> None:
    parsed, letter = parse_manifest(_letter(serialise(manifest), manifest.algorithm))
    assert parsed == manifest
    assert letter.algorithm is manifest.algorithm


@pytest.mark.parametrize("algorithm", LETTER_ALGORITHMS)
def test_sign_verify_round_trip(
    algorithm: Algorithm, oracle_key: rsa.RSAPrivateKey, oracle_cert: x509.Certificate
) -> None:
    manifest = Manifest(
        root_hash=ContentHash.of(algorithm, b"root catalog"),
        revision=7,
        root_catalog_size=4096,
        fqrn="oracle.local",
        certificate=ContentHash.of(algorithm, b"certificate"),
        timestamp=ORACLE_T + 60,
    )
    raw = sign_manifest(manifest, oracle_key)
    assert split_letter(raw).algorithm is algorithm
    assert len(split_letter(raw).hash_line) == algorithm.text_length
    assert verify_manifest(raw, oracle_cert, fqrn="oracle.local", min_timestamp=ORACLE_T) == (
        manifest
    )
