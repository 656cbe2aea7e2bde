"""The test images ingested once per session, for every module that needs an image
repository but does not test how it came about (tests/integration/conftest.py offers the
fixture to all integration tests)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.format.chunking import DEFAULT_CHUNK_PARAMS
from pycvmfs.images.ingest import IngestOptions, IngestResult, ingest
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions
from tests.images import ImageSet, require_images
from tests.publish_helpers import Keys
from tests.registry import DockerRegistry
from tests.servers import shared_scratch


@dataclass(frozen=True)
class IngestedImages:
    """Both test images pushed to one registry and ingested into one repository the way
    `pycvmfs ingest` does it (files chunked): `base` first (revision 1), then `python` with
    `base` again (revision 2; `base` skipped). The registry serves for the whole session.

    Shared by several modules: use it read-only (`copy_storage` for a repository to change);
    ingesting again is fine as long as nothing new is published."""

    images: ImageSet
    registry: DockerRegistry
    base_ref: str
    python_ref: str
    work: Path
    storage: Path  # world-traversable, so nginx workers can serve it
    first: IngestResult  # of ingest([base_ref])
    second: IngestResult  # of ingest([python_ref, base_ref])
    events: list[dict[str, object]] = field(default_factory=list)  # notified by both

    def name(self, tag: str) -> str:
        """The public name an image was ingested under: `127.0.0.1:PORT/ns/debian:TAG`."""
        return f"{self.registry.host}/ns/debian:{tag}"

    def copy_storage(self, dest: Path) -> Path:
        """A copy of the storage to change (objects hard-linked: they are only ever
        unlinked, never written in place)."""
        shutil.copytree(self.storage, dest, symlinks=True, ignore=shutil.ignore_patterns("data"))
        shutil.copytree(self.storage / "data", dest / "data", symlinks=True,
                        copy_function=os.link)
        return dest


@pytest.fixture(scope="session")
def ingested_images(keys: Keys) -> Iterator[IngestedImages]:
    """Skips where the test images cannot be built (needs root, debootstrap, umoci)."""
    images = require_images()
    with shared_scratch("pycvmfs-ingested-") as base, \
            DockerRegistry(access_log=True) as registry:
        base_ref = registry.push(images.base.layout, images.base.tag, "ns/debian:base")
        python_ref = registry.push(images.python.layout, images.python.tag, "ns/debian:python")
        events: list[dict[str, object]] = []
        options = IngestOptions(PublishOptions(keys.fqrn, base / "work", base / "storage",
                                               keys.keys_dir,
                                               Settings(chunking=DEFAULT_CHUNK_PARAMS)),
                                notify=events.append)
        first = ingest([base_ref], options)
        second = ingest([python_ref, base_ref], options)
        yield IngestedImages(images, registry, base_ref, python_ref, base / "work",
                             base / "storage", first, second, events)
