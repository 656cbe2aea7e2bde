"""The reference `cvmfs2` client mounts an ingested image repository (flat tree, layer trees
with overlayfs whiteouts, nested catalogs, public symlink) and shows what our reader shows.

Stacking the layer trees with overlayfs is tested on our own mount only
(tests/integration/test_ingest_layer_trees.py): cvmfs2 2.12 answers statfs with
f_namemax = 0, and overlayfs, which takes the largest name length of its layers, then
refuses every name (ENAMETOOLONG). Our client answers 255.

Runs only with PYCVMFS_REFERENCE_CVMFS2 set (see test_reference_client.py)."""

from __future__ import annotations

import os
import stat

from pycvmfs.images import layout
from pycvmfs.images.ingest import IngestOptions, ingest
from pycvmfs.publisher.publish import PublishOptions
from tests.differential.test_reference_client import (
    mount_view,
    pytestmark,  # noqa: F401 - the same skip conditions
    reader_view,
    reference_mount,
)
from tests.integration.test_ingest_layer_trees import BASE, CHANGES, FIRST, MORE
from tests.oci_layouts import write_oci_layout
from tests.publish_helpers import Keys
from tests.servers import Nginx, shared_scratch


def test_ingested_image_repository(keys: Keys) -> None:
    with shared_scratch("pycvmfs-ref-images-") as base:
        digests = write_oci_layout(base / "oci", [BASE, CHANGES, MORE])
        storage = base / "storage"
        reference = f"oci:{base / 'oci'}:latest"
        result = ingest([reference], IngestOptions(PublishOptions(
            keys.fqrn, base / "work", storage, keys.keys_dir)), {reference: FIRST})
        config = result.images[0].config_digest
        with Nginx() as server:
            url = server.publish(f"cvmfs/{keys.fqrn}", storage)
            with reference_mount(keys.fqrn, url, keys.public_key_file, base / "ref") as mnt:
                assert mount_view(mnt) == reader_view(storage, keys)
                tree = mnt / layout.layerfs_dir(digests[1])
                whiteout = tree.joinpath("gone.txt").lstat()
                assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
                assert os.getxattr(tree / "a", "trusted.overlay.opaque") == b"y"
                assert (mnt / FIRST).resolve() == mnt / layout.flat_dir(config)
