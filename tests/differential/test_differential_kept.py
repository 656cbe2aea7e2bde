"""The reference `cvmfs2` client mounts a revision with kept directories (grafted nested
catalogs) and sees what our reader sees, the grafted subtrees included.

Same requirements as test_reference_client: PYCVMFS_REFERENCE_CVMFS2, root, nginx."""

from __future__ import annotations

import os
from pathlib import Path

from pycvmfs.publisher.kept import keep_published
from tests.differential.test_reference_client import (
    mount_view,
    pytestmark,  # noqa: F401 - the same skip conditions
    reader_view,
    reference_mount,
)
from tests.publish_helpers import Keys, make_full_tree, run_publish
from tests.servers import Nginx


def test_kept_directories_mount(tmp_path: Path, keys: Keys) -> None:
    source = make_full_tree(tmp_path / "src")
    storage = tmp_path / "repo"
    run_publish(source, storage, keys, tag="full")
    keep_published(source, "nested")
    keep_published(source, "releases/r1")
    (source / "plain.txt").write_text("second revision\n")
    second = run_publish(source, storage, keys)
    assert second.catalogs_kept == ["/nested", "/releases/r1"]
    for directory in [storage, *storage.parents]:
        if directory == Path("/"):
            break
        directory.chmod(directory.stat().st_mode | 0o005)  # nginx workers run as nobody
    with Nginx() as server:
        url = server.publish(f"cvmfs/{keys.fqrn}", storage)
        with reference_mount(keys.fqrn, url, keys.public_key_file, tmp_path / "m") as mnt:
            view = mount_view(mnt)
            assert view == reader_view(storage, keys)
            assert (mnt / "nested" / "deeper" / "leaf" / "x").read_text() == \
                "grandchild catalog\n"
            assert (mnt / "plain.txt").read_text() == "second revision\n"
            assert os.getxattr(mnt, "user.revision") == b"2"
            full = reader_view(storage, keys, "full")
            unchanged = {p: row for p, row in view.items() if p.startswith(("/nested",
                                                                           "/releases/r1"))}
            assert unchanged == {p: row for p, row in full.items()
                                 if p.startswith(("/nested", "/releases/r1"))}
