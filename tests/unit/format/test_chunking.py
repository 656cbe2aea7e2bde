"""Tests for the xor32 chunker: reference cut marks, a per-byte oracle, streaming splits."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycvmfs.format import chunking
from pycvmfs.format.chunking import (
    DEFAULT_AVG_CHUNK_BYTES,
    DEFAULT_CHUNK_PARAMS,
    DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MIN_CHUNK_BYTES,
    ChunkParams,
    StreamingChunker,
    bounds_from_cuts,
    chunk_bounds,
    cut_points,
)

FIXTURES = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures"
CUTMARKS = FIXTURES / "chunker" / "xor32-cutmarks.txt"
SMALL = ChunkParams(64, 128, 256)
U64 = (1 << 64) - 1
quick = settings(database=None, deadline=None, max_examples=150)


# --- oracle and input generators -------------------------------------------------------


def reference_cuts(data: bytes, params: ChunkParams) -> list[int]:
    """Straight per-byte transcription of the algorithm; slow, for small inputs only."""
    window, x = [], 0
    for byte in data:
        x = ((x << 1) ^ byte) & 0xFFFFFFFF
        window.append(x)
    threshold = 0xFFFFFFFF // params.avg_size
    cuts, start = [], 0
    while True:
        cut = None
        for p in range(start + params.min_size, min(start + params.max_size, len(data))):
            # the reference's wrapping int32 abs() also cuts where W == 0xFFFFFFFF
            if abs(window[p] - 0x7FFFFFFF) < threshold or window[p] == 0xFFFFFFFF:
                cut = p
                break
        if cut is None:
            if start + params.max_size >= len(data):
                return cuts
            cut = start + params.max_size
        cuts.append(cut)
        start = cut


def lcg_bytes_slow(n: int, seed: int, mul: int, inc: int) -> bytes:
    out, state = bytearray(), seed
    for _ in range(n):
        state = (mul * state + inc) & U64
        out.append(int(float(state) * 256.0 / 2**64) % 256)
    return bytes(out)


def lcg_bytes(
    n: int, seed: int, mul: int, inc: int, block: int = 1 << 20
) -> npt.NDArray[np.uint8]:
    """Vectorised LCG: state_{s+k} = A_k*state_s + B_k with (A_k, B_k) built by doubling."""
    a_k = np.empty(block, dtype=np.uint64)  # a_k[i], b_k[i]: the map applied i+1 times
    b_k = np.empty(block, dtype=np.uint64)
    a_k[0], b_k[0], done = mul, inc, 1
    while done < block:
        m = min(done, block - done)
        a_last, b_last = a_k[done - 1 : done], b_k[done - 1 : done]  # arrays: wrap silently
        a_k[done : done + m] = a_k[:m] * a_last
        b_k[done : done + m] = b_k[:m] * a_last + b_last
        done += m
    out = np.empty(n, dtype=np.uint8)
    state = np.array([seed], dtype=np.uint64)
    for pos in range(0, n, block):
        m = min(block, n - pos)
        states = a_k[:m] * state + b_k[:m]
        # uint64 -> float64 rounds to nearest like Python's float(int); scaling is exact.
        scaled = np.floor(states.astype(np.float64) * 256.0 / 2.0**64)
        out[pos : pos + m] = (scaled.astype(np.int64) % 256).astype(np.uint8)
        state = states[-1:]
    return out


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def hit_at(position: int, total: int) -> bytes:
    """Zeros except 31 bytes of 0x01 ending at ``position``, where W == MAGIC exactly.

    Rolling 31 ones into a zero state gives 2**31 - 1. The only other hit is its echo at
    ``position + 31``, where the last 0x01 sits alone at bit 31: W == 2**31 == MAGIC + 1.
    """
    data = bytearray(total)
    data[position - 30 : position + 1] = b"\x01" * 31
    return bytes(data)


def stream(data: bytes, params: ChunkParams, block_size: int) -> list[int]:
    chunker = StreamingChunker(params)
    cuts: list[int] = []
    for start in range(0, len(data), block_size):
        cuts += chunker.feed(data[start : start + block_size])
    return cuts + chunker.finish()


# --- reference vector ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> tuple[npt.NDArray[np.uint8], ChunkParams, list[int]]:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    text = CUTMARKS.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    size = int(re.search(r"Input: (\d+) bytes", header).group(1))
    seed = int(re.search(r"state = (\d+)\n", header).group(1))
    mul, inc = map(int, re.search(r"\((\d+) \* state \+ (\d+)\) mod 2\*\*64", header).groups())
    sizes = re.search(r"min = (\d+), avg = (\d+), max = (\d+)", header).groups()
    assert "float(state) * 256.0 / 2**64" in header
    expected = [int(tok) for line in text.splitlines() if not line.startswith("#")
                for tok in line.split()]
    assert lcg_bytes(10_000, seed, mul, inc).tobytes() == lcg_bytes_slow(10_000, seed, mul, inc)
    return lcg_bytes(size, seed, mul, inc), ChunkParams(*map(int, sizes)), expected


@pytest.mark.fixtures
def test_reference_cut_marks(reference) -> None:
    data, params, expected = reference
    assert (len(data), params) == (100 * 2**20, ChunkParams(512000, 1024000, 2048000))
    assert cut_points(data, params) == expected


@pytest.mark.fixtures
@pytest.mark.parametrize("block_size", [1 << 20, int(3.3 * 2**20), 16 << 20])
def test_reference_cut_marks_streaming(reference, block_size: int) -> None:
    data, params, expected = reference
    view = memoryview(data)
    assert stream(view, params, block_size) == expected


@pytest.mark.fixtures
def test_reference_bounds(reference) -> None:
    data, params, expected = reference
    bounds = chunk_bounds(data, params)
    assert [offset for offset, _ in bounds] == [0, *expected]
    assert sum(length for _, length in bounds) == len(data)
    assert chunk_bounds(len(data), params, cuts=expected) == bounds


# --- agreement with the per-byte oracle ------------------------------------------------


params_strategy = st.integers(32, 300).flatmap(
    lambda lo: st.integers(lo, 2 * lo).flatmap(
        lambda avg: st.integers(avg, 3 * avg).map(lambda hi: ChunkParams(lo, avg, hi))
    )
)


@quick
@given(data=st.binary(max_size=3000), params=params_strategy)
def test_matches_oracle_on_arbitrary_bytes(data: bytes, params: ChunkParams) -> None:
    assert cut_points(data, params) == reference_cuts(data, params)


@quick
@given(seed=st.integers(0, 2**32), size=st.integers(0, 6000), params=params_strategy)
def test_matches_oracle_on_random_data(seed: int, size: int, params: ChunkParams) -> None:
    data = random_bytes(size, seed)
    assert cut_points(data, params) == reference_cuts(data, params)


def test_matches_oracle_across_internal_slices() -> None:
    data = random_bytes(3 * chunking._SLICE + 17, seed=7)
    expected = reference_cuts(data, SMALL)
    assert len(expected) > 1000
    assert cut_points(data, SMALL) == expected


# --- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 7, 31, 32, 33, 64, 255, 256, 257, 4096, 10**6])
def test_streaming_matches_whole_buffer(block_size: int) -> None:
    data = random_bytes(5000, seed=block_size)
    expected = cut_points(data, SMALL)
    assert expected == reference_cuts(data, SMALL)
    assert stream(data, SMALL, block_size) == expected


@quick
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 4000),
    blocks=st.lists(st.integers(1, 600), min_size=1, max_size=20),
    params=params_strategy,
)
def test_streaming_any_split(seed: int, size: int, blocks: list[int], params: ChunkParams) -> None:
    data = random_bytes(size, seed)
    chunker, cuts, pos, i = StreamingChunker(params), [], 0, 0
    while pos < size:
        step = blocks[i % len(blocks)]
        cuts += chunker.feed(data[pos : pos + step])
        pos, i = pos + step, i + 1
        assert all(cut < chunker.bytes_fed for cut in cuts)
    assert cuts + chunker.finish() == cut_points(data, params)


def test_streaming_copes_with_reused_buffer() -> None:
    data = random_bytes(4000, seed=3)
    buffer, chunker, cuts = bytearray(50), StreamingChunker(SMALL), []
    for start in range(0, len(data), 50):
        piece = data[start : start + 50]
        buffer[: len(piece)] = piece
        cuts += chunker.feed(memoryview(buffer)[: len(piece)])
    assert cuts + chunker.finish() == cut_points(data, SMALL)


def test_streaming_feed_after_finish_fails() -> None:
    chunker = StreamingChunker(SMALL)
    assert chunker.feed(b"") == []
    assert chunker.finish() == []
    with pytest.raises(RuntimeError):
        chunker.feed(b"x")


# --- specific boundaries ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 31, 32, 63, 64])
def test_small_files_are_never_cut(size: int) -> None:
    assert cut_points(bytes(size), SMALL) == []
    assert cut_points(hit_at(size - 1, size) if size >= 31 else bytes(size), SMALL) == []
    assert chunk_bounds(bytes(size), SMALL) == [(0, size)]


def test_hard_cuts_every_max_bytes() -> None:
    # W is 0 over zeros, far from MAGIC: only hard cuts, none at EOF itself.
    assert cut_points(bytes(10 * 256 + 5), SMALL) == [256 * k for k in range(1, 11)]
    assert cut_points(bytes(10 * 256), SMALL) == [256 * k for k in range(1, 10)]
    assert cut_points(bytes(257), SMALL) == [256]


@pytest.mark.parametrize(
    ("position", "total", "expected"),
    [
        (130, 331, [130]),  # plain content-defined cut; the echo at 161 is within min
        (64, 65, [64]),  # hit at exactly min: cut, leaving a 1-byte tail
        (63, 200, [94]),  # hit just below min is ignored, its echo cuts
        (255, 400, [255]),  # hit at max - 1 still counts
        (257, 600, [256, 512]),  # hard cuts: hit and echo (288) fall in the min gap
        (300, 700, [256, 331, 587]),  # hit in the min gap ignored, echo cuts, hard cut
        (330, 580, [256, 330]),  # hit at 256 + 74 >= 256 + min: cut there
        (330, 600, [256, 330, 586]),  # ... and a hard cut max bytes after it
    ],
)
def test_cut_at_exact_candidate(position: int, total: int, expected: list[int]) -> None:
    data = hit_at(position, total)
    assert reference_cuts(data, SMALL) == expected
    assert cut_points(data, SMALL) == expected
    assert stream(data, SMALL, 13) == expected


def test_input_types_agree() -> None:
    data = random_bytes(3000, seed=11)
    expected = cut_points(data, SMALL)
    arr = np.frombuffer(data, dtype=np.uint8)
    assert cut_points(bytearray(data), SMALL) == expected
    assert cut_points(memoryview(data), SMALL) == expected
    assert cut_points(arr, SMALL) == expected
    assert cut_points(arr.reshape(100, 30), SMALL) == expected
    with pytest.raises(TypeError):
        cut_points(arr.astype(np.int32), SMALL)


# --- bounds ----------------------------------------------------------------------------


def test_chunk_bounds() -> None:
    data = random_bytes(3000, seed=5)
    cuts = cut_points(data, SMALL)
    bounds = chunk_bounds(data, SMALL)
    assert bounds == bounds_from_cuts(3000, cuts)
    assert all(a + n == b for (a, n), (b, _) in zip(bounds, bounds[1:], strict=False))
    assert bounds[0][0] == 0 and sum(n for _, n in bounds) == 3000
    assert chunk_bounds(3000, SMALL, cuts=cuts) == bounds
    assert chunk_bounds(b"", SMALL) == [(0, 0)]
    assert chunk_bounds(64, SMALL) == [(0, 64)]
    with pytest.raises(TypeError):
        chunk_bounds(65, SMALL)
    with pytest.raises(ValueError):
        chunk_bounds(-1, SMALL)
    for bad in ([0], [100, 100], [200, 100], [3000], [3001]):
        with pytest.raises(ValueError):
            bounds_from_cuts(3000, bad)


# --- parameters ------------------------------------------------------------------------


def test_defaults() -> None:
    assert (DEFAULT_MIN_CHUNK_BYTES, DEFAULT_AVG_CHUNK_BYTES, DEFAULT_MAX_CHUNK_BYTES) == (
        4194304,
        8388608,
        16777216,
    )
    assert DEFAULT_CHUNK_PARAMS == ChunkParams(4194304, 8388608, 16777216)
    assert DEFAULT_CHUNK_PARAMS.threshold == 0xFFFFFFFF // 8388608


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4M,8M,16M", DEFAULT_CHUNK_PARAMS),
        ("4194304,8388608,16777216", DEFAULT_CHUNK_PARAMS),
        ("4MiB, 8 mib ,16m", DEFAULT_CHUNK_PARAMS),
        ("512000,1024000,2048000", ChunkParams(512000, 1024000, 2048000)),
        ("64K,128KiB,256k", ChunkParams(65536, 131072, 262144)),
        ("32,32,32", ChunkParams(32, 32, 32)),
    ],
)
def test_parse_accepts(text: str, expected: ChunkParams) -> None:
    assert ChunkParams.parse(text) == expected
    assert ChunkParams.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "4M,8M", "4M,8M,16M,32M", "a,b,c", "4G,8G,16G", "1.5M,2M,3M", "-1,2,3",
     "31,64,128", "8M,4M,16M", "4M,16M,8M", "4M,,16M", "0,0,0", "4 M B,8M,16M"],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        ChunkParams.parse(text)


def test_params_validation() -> None:
    with pytest.raises(ValueError):
        ChunkParams(16, 32, 64)
    with pytest.raises(ValueError):
        ChunkParams(64, 32, 128)
    with pytest.raises(ValueError):
        ChunkParams(64, 2**32, 2**33)
    with pytest.raises(TypeError):
        ChunkParams(64.0, 128, 256)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ChunkParams(True, 128, 256)


def test_all_ones_window_cuts_like_the_reference() -> None:
    """A run of 0x01 bytes makes W == 0xFFFFFFFF, where the reference's wrapping
    `abs(INT32_MIN)` is negative and cuts: 20 MB of 0x01 cut at every min (4 MiB), as the
    reference chunk detector (built from source) does."""
    data = b"\x01" * 20_000_000
    assert cut_points(data, DEFAULT_CHUNK_PARAMS) == [4194304, 8388608, 12582912, 16777216]
    small = ChunkParams(64, 128, 256)
    assert cut_points(b"\x01" * 300, small) == reference_cuts(b"\x01" * 300, small) == [64, 128,
                                                                                      192, 256]
