"""The content pipeline: chunks streamed through per-chunk object writers match the
chunker's cut points for any read block size, and every stored object is sound."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.format.chunking import ChunkParams, cut_points
from pycvmfs.format.compression import Compression, open_object
from pycvmfs.format.hashes import Algorithm, Suffix
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
