"""Catalog rows: md5path split, hardlink encoding, flags, row <-> entry, xattr blob,
statistics and history tags (fact sheet 6 and 7)."""

from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.format.catalog import (
    COUNTER_NAMES,
    ENTRY_COLUMNS,
    Counters,
    DirEntry,
    Flags,
    decode_hardlinks,
    encode_hardlinks,
    entry_flags,
    entry_to_row,
    md5path,
    parse_schema,
    row_to_entry,
    statistics_rows,
    total_counters,
    type_flags,
)
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.format.history import Tag
from pycvmfs.format.xattr_blob import decode_xattrs, encode_xattrs


def test_md5path_reference_values() -> None:
    assert md5path("") == (338333539836370388, 9098107892288553193)


def test_hardlinks_reference_value() -> None:
    assert encode_hardlinks(1, 2) == 4294967298
    assert decode_hardlinks(4294967298) == (1, 2)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_hardlinks_round_trip_in_int64(group: int, count: int) -> None:
    value = encode_hardlinks(group, count)
    assert -(2**63) <= value < 2**63
    assert decode_hardlinks(value) == (group, count)


@pytest.mark.parametrize(("mode", "flags"), [
    (stat.S_IFDIR | 0o755, Flags.DIR), (stat.S_IFREG | 0o644, Flags.FILE),
    (stat.S_IFLNK | 0o777, Flags.FILE | Flags.LINK), (stat.S_IFIFO | 0o644, 20),
    (stat.S_IFSOCK | 0o755, 20), (stat.S_IFCHR | 0o600, 20),
])
def test_type_flags(mode: int, flags: int) -> None:
    assert type_flags(mode) == flags


def test_algorithm_and_compression_bits() -> None:
    h = ContentHash.of(Algorithm.SHAKE128, b"x")
    entry = DirEntry("f", stat.S_IFREG | 0o644, 1, 0, int(Flags.FILE), content_hash=h,
                     hash_algorithm=Algorithm.SHAKE128, compression=Compression.NONE)
    assert entry_flags(entry) == Flags.FILE | (2 << 8) | (1 << 11)
    chunked = DirEntry("c", stat.S_IFREG | 0o644, 1, 0, int(Flags.FILE | Flags.CHUNKED),
                       hash_algorithm=Algorithm.RIPEMD160)
    assert entry_flags(chunked) == Flags.FILE | Flags.CHUNKED | (1 << 8)
    link = DirEntry("l", stat.S_IFLNK | 0o777, 1, 0, int(Flags.FILE | Flags.LINK), symlink="x")
    assert entry_flags(link) == 12  # no hash bits, no compression bits


entries = st.builds(
    DirEntry,
    name=st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and "\0" not in s),
    mode=st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFREG | 0o4755]),
    size=st.integers(0, 2**40), mtime=st.integers(0, 2**33), flags=st.just(int(Flags.FILE)),
    mtimens=st.integers(0, 999_999_999), uid=st.integers(0, 2**31), gid=st.integers(0, 2**31),
    linkcount=st.integers(1, 100), hardlink_group=st.integers(0, 1000),
    content_hash=st.binary(min_size=20, max_size=20).map(
        lambda d: ContentHash(Algorithm.SHA1, d)),
    xattrs=st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda s: "\0" not in s)
                           .map(lambda s: "user." + s),
                           st.binary(max_size=50), max_size=3).map(
        lambda d: tuple(sorted(d.items()))),
)


@given(entries)
def test_row_round_trip(entry: DirEntry) -> None:
    row = dict(zip(ENTRY_COLUMNS, entry_to_row(entry, "/dir/" + entry.name), strict=True))
    assert (row["parent_1"], row["parent_2"]) == md5path("/dir")
    back = row_to_entry(row)
    assert back.content_hash == entry.content_hash
    assert back == DirEntry(**{**{f: getattr(entry, f) for f in entry.__slots__},
                               "flags": entry_flags(entry)})


def test_root_row_has_zero_parent() -> None:
    root = DirEntry("", stat.S_IFDIR | 0o755, 4096, 0, int(Flags.DIR), linkcount=2)
    row = dict(zip(ENTRY_COLUMNS, entry_to_row(root, ""), strict=True))
    assert (row["parent_1"], row["parent_2"]) == (0, 0)
    assert (row["md5path_1"], row["md5path_2"]) == md5path("")


def test_old_rows_without_mtimens_or_xattr() -> None:
    row = {"flags": 4, "hash": b"\x01" * 20, "hardlinks": 1, "name": "f", "mode": 0o100644,
           "size": 1, "mtime": 5, "symlink": "", "uid": 0, "gid": 0}
    entry = row_to_entry(row)
    assert (entry.mtimens, entry.xattrs) == (0, ())


@given(st.dictionaries(st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s),
                       st.binary(max_size=255), max_size=10))
def test_xattr_blob_round_trip(xattrs: dict[str, bytes]) -> None:
    xattrs = {k: v for k, v in xattrs.items() if len(k.encode()) <= 255}
    assert decode_xattrs(encode_xattrs(xattrs)) == xattrs


def test_xattr_blob_layout_and_limits() -> None:
    assert encode_xattrs({"user.foo": b"bar"}) == b"\x01\x01\x08\x03user.foobar"
    assert encode_xattrs({}) is None
    with pytest.raises(ValueError):
        encode_xattrs({"user.x": b"v" * 256})
    assert decode_xattrs(b"\x02\x01\x08\x03user.foobar") == {}  # bad version: no xattrs
    assert decode_xattrs(b"\x01\x02\x08\x03user.foobar") == {}  # truncated
    assert decode_xattrs(None) == {}


def test_statistics_rows_and_totals() -> None:
    mine, below = Counters(), Counters()
    mine.count_entry(DirEntry("", stat.S_IFDIR | 0o755, 4096, 0, 1))
    mine.count_entry(DirEntry("f", stat.S_IFREG | 0o644, 10, 0, 68), chunks=3)
    below.values["regular"] = 5
    rows = statistics_rows(mine, below)
    assert sorted(name for name, _ in rows) == sorted(COUNTER_NAMES) and len(rows) == 24
    totals = total_counters(rows)
    assert totals["regular"] == 6 and totals["chunks"] == 3 and totals["dir"] == 1
    assert totals["chunked_size"] == 10


def test_schema_parsing() -> None:
    assert parse_schema("2.5", "7") == (2, 5, 7)
    with pytest.raises(ValueError):
        parse_schema("two", "7")


def test_tag_row_round_trip() -> None:
    tag = Tag("v1", "a" * 40, 3, 1700000000, "desc", 4096)
    assert Tag.from_row(tag.row()) == tag
