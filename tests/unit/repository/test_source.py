"""The `ObjectSource` contract, run against a storage directory (`LocalSource`) and an
in-memory source alike: small files within a byte budget, objects verified through a
`VerifyingSink`, NotFoundError for what is not there, and paths that never leave the base."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pycvmfs.errors import BudgetExceededError, FetchError, HashMismatchError, NotFoundError
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.network.sink import MemoryDestination, VerifyingSink
from pycvmfs.repository.network_source import NetworkSource
from pycvmfs.repository.source import (
    DEFAULT_FETCH_BYTES,
    LocalSource,
    ObjectSource,
    check_relative,
    open_source,
)

if TYPE_CHECKING:
    from tests.unit.repository.conftest import MemorySource

MakeSource = Callable[[dict[str, bytes]], ObjectSource]


@pytest.fixture(params=["directory", "memory"])
def make_source(request: pytest.FixtureRequest, tmp_path: Path,
                memory_source: MemorySource) -> MakeSource:
    """A source of either kind holding `files` (path relative to the base -> bytes)."""

    def make(files: dict[str, bytes]) -> ObjectSource:
        if request.param == "memory":
            memory_source.files.update(files)
            return memory_source
        for path, data in files.items():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(data)
        return LocalSource(tmp_path)

    return make


def test_small_files_come_back_within_their_budget(make_source: MakeSource) -> None:
    source = make_source({".cvmfspublished": b"m" * 10,
                          ".cvmfswhitelist": b"w" * (DEFAULT_FETCH_BYTES + 1)})
    assert isinstance(source, ObjectSource)
    assert source.fetch(".cvmfspublished") == b"m" * 10
    assert source.fetch(".cvmfspublished", max_bytes=10) == b"m" * 10
    with pytest.raises(BudgetExceededError):
        source.fetch(".cvmfspublished", max_bytes=9)
    with pytest.raises(BudgetExceededError):  # the default budget
        source.fetch(".cvmfswhitelist")
    with pytest.raises(NotFoundError):
        source.fetch(".cvmfs_missing")
    assert isinstance(source.describe(), str) and source.describe()
    source.close()
    source.close()


def test_objects_are_verified_on_their_way_in(make_source: MakeSource) -> None:
    data = b"object bytes " * 500
    digest, stored = make_object(data)
    other = ContentHash.of(Algorithm.SHA1, b"what the catalog says")
    source = make_source({digest.object_path(): stored, other.object_path(): stored})
    out = MemoryDestination()
    with VerifyingSink(digest, Compression.ZLIB, out, expected_size=len(data)) as sink:
        source.fetch_into(digest.object_path(), sink)
    assert out.getvalue() == data
    with pytest.raises(HashMismatchError), \
            VerifyingSink(other, Compression.ZLIB, MemoryDestination(),
                          expected_size=len(data)) as sink:
        source.fetch_into(other.object_path(), sink)
    missing = ContentHash.of(Algorithm.SHA1, b"nowhere")
    with pytest.raises(NotFoundError), \
            VerifyingSink(missing, Compression.ZLIB, MemoryDestination()) as sink:
        source.fetch_into(missing.object_path(), sink)


def test_a_sink_used_again_starts_from_nothing(make_source: MakeSource) -> None:
    data = b"twice"
    digest, stored = make_object(data, compression=Compression.NONE)
    source = make_source({digest.object_path(): stored})
    out = MemoryDestination()
    with VerifyingSink(digest, Compression.NONE, out, expected_size=len(data)) as sink:
        source.fetch_into(digest.object_path(), sink)
        source.fetch_into(digest.object_path(), sink)  # a retry resets the sink
    assert out.getvalue() == data


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../outside", "data/../../x", ".."])
def test_paths_never_leave_the_base(make_source: MakeSource, path: str) -> None:
    source = make_source({})
    with pytest.raises(FetchError, match="must be relative"):
        source.fetch(path)
    with pytest.raises(FetchError, match="must be relative"):
        check_relative(path)


def test_relative_paths_pass_unchanged() -> None:
    for path in ("data/ab/cdefC", ".cvmfspublished", "./x", "a//b"):
        assert check_relative(path) == path


def test_local_source_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        LocalSource(tmp_path / "missing")
    (tmp_path / "data").mkdir()
    source = LocalSource(tmp_path)
    with pytest.raises(FetchError):
        source.fetch("data")  # a directory
    assert source.describe() == str(tmp_path) and repr(source) == f"LocalSource({str(tmp_path)!r})"


def test_open_source_picks_the_kind_from_the_address(tmp_path: Path) -> None:
    local = open_source(tmp_path)
    assert isinstance(local, LocalSource) and local.describe() == str(tmp_path)
    ring = "http://127.0.0.1:9/cvmfs/r;https://127.0.0.1:9/cvmfs/r"
    remote = open_source(ring)  # nothing is connected until a fetch
    assert isinstance(remote, NetworkSource) and remote.describe() == ring
    assert isinstance(remote, ObjectSource)
    remote.close()
