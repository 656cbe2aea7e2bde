"""Breadcrumb `cvmfschecksum.<fqrn>`: round trip, atomic write, tolerant parse."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.cache.breadcrumb import (
    Breadcrumb,
    breadcrumb_path,
    read_breadcrumb,
    write_breadcrumb,
)
from pycvmfs.format.hashes import Algorithm, ContentHash

FQRN = "example.cern.ch"
SAMPLE = ContentHash.parse("6ed3bbb7b3ee43f0d3e0a86ca21c8beb1b3ac29a")


def test_reference_format(tmp_path: Path) -> None:
    crumb = Breadcrumb(SAMPLE, 1445428515, 2)
    path = write_breadcrumb(tmp_path, FQRN, crumb)
    assert path == tmp_path / f"cvmfschecksum.{FQRN}"
    assert path.read_bytes() == b"6ed3bbb7b3ee43f0d3e0a86ca21c8beb1b3ac29aT1445428515R2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_breadcrumb(tmp_path, FQRN) == crumb
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file left


@given(
    st.sampled_from(list(Algorithm)),
    st.binary(min_size=20, max_size=20),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
)
def test_round_trip(algo: Algorithm, digest: bytes, ts: int, rev: int) -> None:
    crumb = Breadcrumb(ContentHash(algo, digest[: algo.digest_size]), ts, rev)
    assert Breadcrumb.parse(crumb.serialize()) == crumb


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "T1R2", f"{SAMPLE}T", f"{SAMPLE}Tx", f"{SAMPLE}T1R", f"{SAMPLE}T1Rx",
     f"{str(SAMPLE)[:-1]}T1R2", f"{SAMPLE}T-1R2"],
)
def test_garbage_is_none(text: str) -> None:
    assert Breadcrumb.parse(text) is None


def test_tolerated_variants() -> None:
    assert Breadcrumb.parse(f"{SAMPLE}T17") == Breadcrumb(SAMPLE, 17, 0)
    assert Breadcrumb.parse(f"{SAMPLE}CT17R3\n") == Breadcrumb(SAMPLE, 17, 3)


def test_unreadable_files(tmp_path: Path) -> None:
    assert read_breadcrumb(tmp_path, FQRN) is None
    path = breadcrumb_path(tmp_path, FQRN)
    path.write_bytes(b"\xff\xfe binary")
    assert read_breadcrumb(tmp_path, FQRN) is None
    path.write_bytes(b"a" * 10000)
    assert read_breadcrumb(tmp_path, FQRN) is None
    write_breadcrumb(tmp_path, FQRN, Breadcrumb(SAMPLE, 1, 1))  # replaces the garbage
    assert read_breadcrumb(tmp_path, FQRN) == Breadcrumb(SAMPLE, 1, 1)


@given(st.text(max_size=120))
def test_parse_never_raises(text: str) -> None:
    result = Breadcrumb.parse(text)
    assert result is None or Breadcrumb.parse(result.serialize()) == result
