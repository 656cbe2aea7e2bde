"""The lowlevel adapter's struct-format packers against its ctypes layouts (`_libfuse3`), and
the libfuse versions it loads (the layouts against the C compiler:
tests/integration/test_lowlevel_abi_c.py)."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from pycvmfs.fs import _libfuse3 as ll
from pycvmfs.fs.vfs import Attr


def test_packers_match_ctypes_layouts() -> None:
    attr = Attr(ino=123456789, mode=0o100644, nlink=3, uid=1000, gid=1001, size=2**40 + 7,
                mtime_ns=1_700_000_000_123_456_789, rdev=0x0801)
    stat = ll.Stat()
    stat.st_ino, stat.st_mode, stat.st_nlink = attr.ino, attr.mode, attr.nlink
    stat.st_uid, stat.st_gid, stat.st_rdev, stat.st_size = attr.uid, attr.gid, attr.rdev, attr.size
    stat.st_blksize, stat.st_blocks = ll.BLOCK_SIZE, attr.blocks
    for name in ("st_atim", "st_mtim", "st_ctim"):
        getattr(stat, name).tv_sec = 1_700_000_000
        getattr(stat, name).tv_nsec = 123_456_789
    assert ll.pack_stat(attr) == bytes(stat)
    entry = ll.EntryParam(ino=attr.ino, attr=stat, attr_timeout=60.0, entry_timeout=60.0)
    assert ll.pack_entry(attr, 60.0) == bytes(entry)
    negative = ll.EntryParam(ino=0, attr_timeout=0.0, entry_timeout=5.0)
    assert ll.pack_entry(None, 5.0) == bytes(negative)


def test_cache_readdir_bit_moves_in_3_15_and_3_16_only() -> None:
    assert [ll.fi_cache_readdir_bit(v) for v in (310, 314, 315, 316, 317, 319)] == [
        64, 64, 128, 128, 64, 64]


def test_file_info_grew_in_3_17() -> None:
    assert [ll.file_info_size(v) for v in (310, 316, 317, 319)] == [40, 40, 64, 64]


@pytest.mark.parametrize(("version", "accepted"), [(309, False), (310, True), (316, True),
                                                   (317, True), (319, True), (320, False)])
def test_only_declared_libfuse_versions_load(monkeypatch: pytest.MonkeyPatch, version: int,
                                             accepted: bool) -> None:
    try:
        real = ll.load().cdll
    except ImportError as exc:
        pytest.skip(f"no usable libfuse3: {exc}")

    class VersionOnly:
        restype: Any = None
        argtypes: Any = None

        def __call__(self) -> int:
            return version

    class Library:
        fuse_version = VersionOnly()

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Library())
    monkeypatch.setenv(ll.LIBRARY_ENV, "libfuse3-version-only.so")
    try:
        if accepted:
            assert ll.load().version == version
        else:
            with pytest.raises(ImportError, match=f"libfuse 3.{version % 100} is not supported"):
                ll.load()
    finally:
        ll._load.cache_clear()
