"""xattr values in `pycvmfs ls -l` and `stat`: as getfattr shows them (quoted text when
printable UTF-8, 0x-hex otherwise), or the reference listing's bare hex."""

from __future__ import annotations

import pytest

from pycvmfs.cli.read import xattr_value


@pytest.mark.parametrize(("value", "shown"), [
    (b"bar", '"bar"'),
    (b"", '""'),
    ("grüße 日本".encode(), '"grüße 日本"'),
    (b'say "hi"\\now', '"say \\042hi\\042\\134now"'),
    (b"two\nlines\tand tab", '"two\\012lines\\011and tab"'),
    (b"\x00\x01binary", "0x000162696e617279"),
    (b"\xff\xfe", "0xfffe"),
    (b"ends in nul\x00", "0x656e647320696e206e756c00"),
    (b"bell\x07", "0x62656c6c07"),
])
def test_text_encoding(value: bytes, shown: str) -> None:
    assert xattr_value(value) == shown


def test_hex_encoding_is_the_reference_listing() -> None:
    assert xattr_value(b"bar", "hex") == "626172"
    assert xattr_value(b"\xff", "hex") == "ff"
