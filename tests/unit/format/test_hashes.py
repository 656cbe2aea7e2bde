"""Content hashes: textual forms, length-based parsing and object paths (fact sheet 1)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix


@pytest.mark.parametrize(("algorithm", "suffix_id", "length"), [
    (Algorithm.SHA1, "", 40), (Algorithm.RIPEMD160, "-rmd160", 47),
    (Algorithm.SHAKE128, "-shake128", 49), (Algorithm.MD5, "", 32),
])
def test_text_forms(algorithm: Algorithm, suffix_id: str, length: int) -> None:
    h = ContentHash.of(algorithm, b"foo\n")
    assert str(h).endswith(suffix_id) and len(str(h)) == length
    assert ContentHash.parse(str(h)) == h


def test_digests_match_standard_algorithms() -> None:
    assert ContentHash.of(Algorithm.SHA1, b"x").digest == hashlib.sha1(b"x").digest()
    assert ContentHash.of(Algorithm.SHAKE128, b"x").digest == hashlib.shake_128(b"x").digest(20)
    assert ContentHash.of(Algorithm.RIPEMD160, b"x").digest == \
        hashlib.new("ripemd160", b"x").digest()


def test_object_paths() -> None:
    h = ContentHash.parse("6ed3d49a5c64f21f36936ab350d49aaf57585b9a")
    assert h.object_path(Suffix.CATALOG) == "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC"
    assert h.object_path() == "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9a"
    assert h.alt_path("X") == ".cvmfsalt-6ed3d49a5c64f21f36936ab350d49aaf57585b9aX"
    assert h.cache_path() == "6e/d3d49a5c64f21f36936ab350d49aaf57585b9a"
    r = ContentHash.of(Algorithm.RIPEMD160, b"")
    assert r.object_path("P").endswith("-rmd160P")


@pytest.mark.parametrize("text", [
    "", "xyz", "6ED3D49A5C64F21F36936AB350D49AAF57585B9A",  # uppercase is refused
    "6ed3d49a5c64f21f36936ab350d49aaf57585b9g", "6ed3d49a5c64f21f36936ab350d49aaf57585b9a-rmd",
    "a" * 40 + "-sha256",
])
def test_bad_texts_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ContentHash.parse(text)


def test_wrong_digest_width_refused() -> None:
    with pytest.raises(ValueError):
        ContentHash(Algorithm.SHA1, b"\x00" * 16)


@given(st.sampled_from(list(Algorithm)), st.binary(max_size=200))
def test_parse_round_trip(algorithm: Algorithm, data: bytes) -> None:
    h = ContentHash.of(algorithm, data)
    assert ContentHash.parse(h.text) == h


@pytest.mark.parametrize(("name", "algorithm"), [
    ("sha1", Algorithm.SHA1), ("SHAKE128", Algorithm.SHAKE128), ("rmd160", Algorithm.RIPEMD160),
    ("ripemd160", Algorithm.RIPEMD160)])
def test_names(name: str, algorithm: Algorithm) -> None:
    assert Algorithm.from_name(name) is algorithm


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="sha1, rmd160 or shake128"):
        Algorithm.from_name("md5")
