"""The signed-letter envelope: splitting, hash inference, tamper detection, building."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.errors import LetterHashError, LetterMalformedError
from pycvmfs.format.hashes import Algorithm
from pycvmfs.format.letters import (
    Letter,
    algorithm_of,
    body_hash,
    body_lines,
    build_letter,
    check_letter_hash,
    split_letter,
)
from tests.fixtures_path import ORACLE_REPO, requires_fixtures

LETTER_ALGORITHMS = [Algorithm.SHA1, Algorithm.RIPEMD160, Algorithm.SHAKE128]


def fake_sign(hash_line: bytes) -> bytes:
    """A stand-in signature that contains the separator, to prove it is read to EOF."""
    return b"SIG\n--\n" + hash_line[::-1] + b"\n"


@requires_fixtures
def test_split_real_manifest() -> None:
    raw = (ORACLE_REPO / ".cvmfspublished").read_bytes()
    letter = split_letter(raw, what="manifest of oracle.local")
    assert letter.body.endswith(b"\n")
    assert letter.body.startswith(b"C7493141a12fcf9f6651775b69c34f4b23c4485c0\n")
    assert letter.hash_line == b"1d59f60ea9f5cc75d38e0beffc73b8106dd53893"
    assert len(letter.signature) == 256
    assert letter.algorithm is Algorithm.SHA1
    assert letter.to_bytes() == raw
    assert check_letter_hash(letter).digest == hashlib.sha1(letter.body).digest()


@requires_fixtures
def test_split_real_whitelist() -> None:
    raw = (ORACLE_REPO / ".cvmfswhitelist").read_bytes()
    letter = split_letter(raw)
    assert body_lines(letter.body)[:3] == ["20261129044324", "E20261229044324", "Noracle.local"]
    assert letter.hash_line == b"2b63385d695ca075b1480f8d14e8855cb1d4a1ef"
    check_letter_hash(letter)


@pytest.mark.parametrize("algorithm", LETTER_ALGORITHMS)
def test_build_split_check_round_trip(algorithm: Algorithm) -> None:
    body = b"Ahello\nBworld\n"
    raw = build_letter(body, algorithm, fake_sign)
    letter = split_letter(raw)
    assert letter == Letter(body, body_hash(body, algorithm), fake_sign(letter.hash_line))
    assert len(letter.hash_line) == algorithm.text_length
    assert algorithm_of(letter.hash_line) is algorithm
    assert check_letter_hash(letter).algorithm is algorithm


@given(
    lines=st.lists(st.text(st.characters(codec="ascii", exclude_characters="\n"), min_size=1)),
    algorithm=st.sampled_from(LETTER_ALGORITHMS),
)
def test_round_trip_any_body(lines: list[str], algorithm: Algorithm) -> None:
    lines = [line for line in lines if line != "--"] or ["x"]
    body = "".join(line + "\n" for line in lines).encode()
    letter = split_letter(build_letter(body, algorithm, fake_sign))
    assert letter.body == body
    assert body_lines(letter.body) == lines
    check_letter_hash(letter)


@pytest.mark.parametrize("algorithm", LETTER_ALGORITHMS)
def test_flipped_body_byte_is_a_hash_error(algorithm: Algorithm) -> None:
    raw = bytearray(build_letter(b"Cabc\nSdef\n", algorithm, fake_sign))
    raw[1] ^= 0x01
    with pytest.raises(LetterHashError, match="manifest of x.test: body hashes to"):
        check_letter_hash(split_letter(bytes(raw)), what="manifest of x.test")


def test_uppercase_printed_hash_does_not_match() -> None:
    raw = build_letter(b"Cabc\n", Algorithm.SHA1, fake_sign)
    letter = split_letter(raw)
    upper = Letter(letter.body, letter.hash_line.upper(), letter.signature)
    with pytest.raises(LetterHashError):
        check_letter_hash(upper)


def test_no_separator() -> None:
    with pytest.raises(LetterMalformedError, match="whitelist of a.b: no '--' separator"):
        split_letter(b"Cabc\nSdef\n", what="whitelist of a.b")


def test_separator_must_be_a_whole_line() -> None:
    with pytest.raises(LetterMalformedError):
        split_letter(b"--\nabc\n")  # no newline before "--": not a separator
    with pytest.raises(LetterMalformedError):
        split_letter(b"Cabc\n--abc\n")


def test_hash_line_without_newline() -> None:
    with pytest.raises(LetterMalformedError, match="hash line"):
        split_letter(b"Cabc\n--\n" + b"a" * 40)


@pytest.mark.parametrize(
    "hash_line",
    [b"a" * 39, b"a" * 32, b"a" * 47, b"a" * 40 + b"-shake12", b"", b"a" * 40 + b"-RMD160"],
)
def test_unknown_hash_line(hash_line: bytes) -> None:
    letter = split_letter(b"Cabc\n--\n" + hash_line + b"\nsig")
    with pytest.raises(LetterMalformedError, match="is not a CernVM-FS hash"):
        check_letter_hash(letter)


def test_first_separator_wins_and_signature_runs_to_eof() -> None:
    raw = build_letter(b"Cabc\n", Algorithm.SHA1, fake_sign)
    letter = split_letter(raw)
    assert b"\n--\n" in letter.signature
    assert letter.signature.endswith(b"\n")


def test_body_lines_rules() -> None:
    assert body_lines(b"a\n\nb\n") == ["a", "", "b"]
    assert body_lines(b"a\nb") == ["a"]  # a line only counts once its newline is seen
    assert body_lines(b"--\na\n") == []
    with pytest.raises(LetterMalformedError, match="not text"):
        body_lines(b"\xff\xfe\n")


@pytest.mark.parametrize("body", [b"Cabc", b"Cabc\n--\nSx\n", b"--\nC\n"])
def test_build_refuses_bodies_that_would_not_split_back(body: bytes) -> None:
    with pytest.raises(LetterMalformedError):
        build_letter(body, Algorithm.SHA1, fake_sign)


def test_build_refuses_md5() -> None:
    with pytest.raises(LetterMalformedError, match="MD5"):
        build_letter(b"Cabc\n", Algorithm.MD5, fake_sign)
