"""The content pipeline: chunks streamed through per-chunk object writers match the
chunker's cut points for any read block size, and every stored object is sound."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pycvmfs.format.chunking import ChunkParams, cut_points
from pycvmfs.format.compression import Compression, open_object
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.publisher.pipeline import ContentPipeline, Settings
from pycvmfs.publisher.storage import LocalStorage
from pycvmfs.publisher.tree_walk import TreeWalker
from tests.publish_helpers import pseudo_random

PARAMS = ChunkParams(2048, 4096, 8192)


@pytest.mark.parametrize("block", [1000, 4096, 8192, 8193, 100_000])
@pytest.mark.parametrize("compressible", [True, False])
def test_streamed_chunks(tmp_path: Path, block: int, compressible: bool) -> None:
    data = (b"line of text %d\n" * 4000) if compressible else pseudo_random(3, 60_000)
    data = data.replace(b"%d", b"42")
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_bytes(data)
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    settings = Settings(Algorithm.SHAKE128, Compression.ZLIB, PARAMS)
    node = TreeWalker(source).walk().children[0]
    content = ContentPipeline(storage, settings, 2, read_block_bytes=block).run([node])[
        node.inode_key]
    assert content.size == len(data) and content.content_hash is None
    assert [c.offset for c in content.chunks[1:]] == cut_points(data, PARAMS)
    assert content.compression is (Compression.ZLIB if compressible else Compression.NONE) \
        or len(data) < 65536
    rebuilt = b""
    for chunk in content.chunks:
        stored = (tmp_path / "repo" / chunk.content_hash.object_path(Suffix.PARTIAL)).read_bytes()
        rebuilt += open_object(stored, chunk.content_hash, content.compression,
                               expected_size=chunk.size)
    assert rebuilt == data
    assert list((tmp_path / "repo" / "data" / "txn").iterdir()) == []


def test_identical_files_in_one_publish_count_once(tmp_path: Path) -> None:
    """Workers storing the same object at once: one of them writes it, the stats say one."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(64):
        (source / f"copy{i}").write_bytes(b"the same contents in every file\n" * 2000)
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    nodes = TreeWalker(source).walk().children
    pipeline = ContentPipeline(storage, Settings(Algorithm.SHA1, Compression.ZLIB, None), 8)
    contents = pipeline.run(nodes)
    assert len({c.content_hash for c in contents.values()}) == 1
    assert pipeline.stats.objects_written == 1
    assert list((tmp_path / "repo" / "data" / "txn").iterdir()) == []


def test_concurrent_commits_of_one_object(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    content_hash = ContentHash(Algorithm.SHA1, bytes(20))
    pending = [storage.open_temporary() for _ in range(16)]
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda item: storage.commit_temporary(
            item[0], item[1], content_hash, Suffix.NONE, checked=True), pending))
    assert created.count(True) == 1
    assert (tmp_path / "repo" / content_hash.object_path(Suffix.NONE)).is_file()
    assert list((tmp_path / "repo" / "data" / "txn").iterdir()) == []
