"""The dedup accounting of `pycvmfs report dedup` on small synthetic images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pycvmfs.errors import PycvmfsError
from pycvmfs.images.report import (
    FileRecord,
    ImageRecord,
    StoredObject,
    account,
    account_images,
    render,
    size_histogram,
    write_png,
)


def _obj(name: str, size: int, stored: int, suffix: str = "") -> StoredObject:
    return StoredObject((name.encode().ljust(20, b"\0"), suffix), size, stored)


def _whole(name: str, size: int, stored: int) -> FileRecord:
    return FileRecord(size, (_obj(name, size, stored),))


def _chunked(*chunks: tuple[str, int, int]) -> FileRecord:
    return FileRecord(sum(c[1] for c in chunks),
                      tuple(_obj(n, size, stored, "P") for n, size, stored in chunks))


EMPTY = FileRecord(0, ())
LIBC = _whole("libc", 2000, 900)
BIG_V1 = _chunked(("c1", 100, 60), ("c2", 100, 60), ("c3", 100, 60))
BIG_V2 = _chunked(("c1", 100, 60), ("c2", 100, 60), ("c4", 50, 30))  # shares 2 chunks

A = ImageRecord("r/a:1", "/.flat/aa/a", (("sha256:l1", 1000), ("sha256:l2", 300)),
                (LIBC, BIG_V1, EMPTY, _whole("status-a", 40, 20)))
B = ImageRecord("r/b:1", "/.flat/bb/b", (("sha256:l1", 1000), ("sha256:l3", 500)),
                (LIBC, LIBC, BIG_V2, _whole("status-b", 40, 20)))


def test_one_image_alone() -> None:
    level = account_images([A])
    assert level.layer_stored == 1300 and level.layers == 2
    assert level.logical == 2000 + 300 + 0 + 40 and level.files == 4
    assert level.unique_files == 3  # the empty file has no object
    assert level.file_stored == 900 + 180 + 20
    assert level.chunk_stored == 900 + 180 + 20
    assert level.file_logical == level.chunk_logical == 2340


def test_dedup_across_images() -> None:
    report = account([A, B])
    total = report.total
    assert total.layer_stored == 1000 + 300 + 500  # l1 once
    assert report.no_dedup_layer_stored == 1300 + 1500
    assert total.files == 8 and total.logical == 2340 + 2000 * 2 + 250 + 40
    # file level: libc once, both versions of the big file, both status files
    assert total.unique_files == 5
    assert total.file_stored == 900 + 180 + 150 + 20 + 20
    assert total.file_logical == 2000 + 300 + 250 + 40 + 40
    # chunk level: c1, c2 shared between the two versions
    assert total.chunk_stored == 900 + 60 * 3 + 30 + 20 + 20
    assert total.chunk_logical == 2000 + 300 + 50 + 40 + 40
    assert total.chunk_stored < total.file_stored < total.layer_stored
    assert [level.layer_stored for _i, level in report.images] == [1300, 1500]
    assert report.sizes == [2340, 4290]


def test_identical_images_cost_one() -> None:
    twin = ImageRecord("r/a:2", "/.flat/aa/a", A.layers, A.files)
    report = account([A, twin])
    alone, total = account_images([A]), report.total
    assert (total.layer_stored, total.file_stored, total.chunk_stored, total.unique_files) == \
        (alone.layer_stored, alone.file_stored, alone.chunk_stored, alone.unique_files)
    assert total.logical == 2 * alone.logical and total.files == 2 * alone.files
    assert report.no_dedup_layer_stored == 2 * 1300


def test_no_images() -> None:
    report = account([])
    assert report.total.layer_stored == report.total.file_stored == 0
    assert report.sizes == [] and size_histogram([]) == []
    assert len(render(report)) == 3


def test_size_histogram() -> None:
    assert size_histogram([5, 5, 5]) == [(5, 6, 3)]
    bins = size_histogram([0, 10, 20, 100], bins=4)
    assert [c for *_r, c in bins] == [3, 0, 0, 1] and bins[0][0] == 0 and bins[-1][1] == 100
    assert sum(c for *_r, c in size_histogram(list(range(1000)))) == 1000


def test_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "charts.png"
    write_png(account([A, B]), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(PycvmfsError, match=r"pip install 'pycvmfs\[report\]'"):
        write_png(account([A]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
