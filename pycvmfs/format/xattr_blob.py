"""Catalog xattr blob: version byte, count byte, then (key_len, value_len, key, value)
with 1-byte lengths (fact sheet 6.9; the official docs' 8-byte layout is wrong)."""

from __future__ import annotations

XATTR_BLOB_VERSION = 1
MAX_KEY_BYTES = 255
MAX_VALUE_BYTES = 255
MAX_ATTRIBUTES = 255


def encode_xattrs(xattrs: dict[str, bytes]) -> bytes | None:
    """Blob for the catalog, or None for no attributes (stored as NULL)."""
    if not xattrs:
        return None
    if len(xattrs) > MAX_ATTRIBUTES:
        raise ValueError(f"too many extended attributes ({len(xattrs)} > {MAX_ATTRIBUTES})")
    out = bytearray([XATTR_BLOB_VERSION, len(xattrs)])
    for key in sorted(xattrs, key=lambda k: k.encode("utf-8", "surrogateescape")):
        kb = key.encode("utf-8", "surrogateescape")
        vb = xattrs[key]
        if not kb or b"\0" in kb or len(kb) > MAX_KEY_BYTES:
            raise ValueError(f"extended attribute name {key!r} not storable")
        if len(vb) > MAX_VALUE_BYTES:
            raise ValueError(f"extended attribute {key!r}: value over {MAX_VALUE_BYTES} bytes")
        out += bytes([len(kb), len(vb)]) + kb + vb
    return bytes(out)


def decode_xattrs(blob: bytes | bytearray | memoryview | None | object) -> dict[str, bytes]:
    """Parse a blob; a malformed one means "no xattrs", as in the reference client."""
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) < 2:
        return {}
    data = bytes(blob)
    if data[0] != XATTR_BLOB_VERSION:
        return {}
    count, pos, out = data[1], 2, {}
    for _ in range(count):
        if pos + 2 > len(data):
            return {}
        klen, vlen = data[pos], data[pos + 1]
        pos += 2
        if klen == 0 or pos + klen + vlen > len(data):
            return {}
        key = data[pos : pos + klen].decode("utf-8", "surrogateescape")
        out[key] = data[pos + klen : pos + klen + vlen]
        pos += klen + vlen
    return out
