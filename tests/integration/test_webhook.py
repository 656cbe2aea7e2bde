"""A real docker-registry notifies the webhook server: a push makes the image appear in the
repository without any other command, a manifest delete removes it, requests without the
token are refused, and the registry is one the service was told about (`--registry-url`):
a second registry pushing to the same webhook is ignored. And a wishlist with a tag glob
expanded against the registry's tags."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pycvmfs.errors import PycvmfsError
from pycvmfs.images import layout
from pycvmfs.images.ingest import IngestOptions
from pycvmfs.images.webhook import WebhookService
from pycvmfs.images.webhook_options import WebhookOptions
from pycvmfs.images.webhook_queue import QueueItem
from pycvmfs.images.webhook_registries import RegistryAllowlist
from pycvmfs.images.wishlist import convert
from pycvmfs.publisher.publish import PublishOptions
from tests.images import ImageSet, require_images
from tests.publish_helpers import Keys, open_repository
from tests.registry import NEEDS_REGISTRY_TOOLS, DockerRegistry, oci_index
from tests.servers import free_port
from tests.waiting import poll_until

pytestmark = [NEEDS_REGISTRY_TOOLS, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, owners)")]

TOKEN = "webhook-test-secret"
WAIT_SECONDS = 60.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _published_link(storage: Path, keys: Keys, name: str) -> str | None:
    """The public symlink's target in the latest published revision, or None."""
    if not (storage / ".cvmfspublished").exists():
        return None
    try:
        with open_repository(storage, keys) as repo:
            return repo.readlink("/" + name)
    except (PycvmfsError, OSError):
        return None


def _wait_for(condition: Callable[[], bool], what: str, log: list[str]) -> None:
    if not poll_until(condition, WAIT_SECONDS, interval_s=0.2):
        raise AssertionError(f"timed out waiting for {what}; worker log: {log}")


def _post(url: str, token: str | None) -> int:
    headers = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=b'{"events": []}', headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def test_registry_notifications_drive_the_repository(tmp_path: Path, keys: Keys) -> None:
    images: ImageSet = require_images()
    work, storage = tmp_path / "work", tmp_path / "storage"
    ingest_options = IngestOptions(PublishOptions(keys.fqrn, work, storage, keys.keys_dir),
                                   layer_trees=False)  # flat images: what the events change
    log: list[str] = []

    def on_item(item: QueueItem, state: str, message: str) -> None:
        log.append(f"{item.id} {item.event}: {state}: {message}")

    port = free_port()  # chosen up front: the registries' configuration names it
    url = f"http://127.0.0.1:{port}/events"
    # the registries start first (they retry notifications until the webhook listens);
    # the webhook acts for the first one only
    with DockerRegistry(notify_url=url, notify_token=TOKEN) as registry, \
            DockerRegistry(notify_url=url, notify_token=TOKEN) as other, \
            WebhookService(("127.0.0.1", port), WebhookOptions(
                ingest_options, TOKEN, tmp_path / "queue.sqlite", retry_seconds=0.5,
                registries=RegistryAllowlist.build([registry.url])), on_item=on_item):
        assert _post(url, None) == 401
        assert _post(url, "wrong-token") == 401
        assert _post(url, TOKEN) == 200

        other.push(images.base.layout, images.base.tag, "ns/ignored:base")
        registry.push(images.base.layout, images.base.tag, "ns/debian:base")
        name = f"{registry.host}/ns/debian:base"
        expected = layout.public_link(name, images.base.config_digest)[1]
        _wait_for(lambda: _published_link(storage, keys, name) == expected,
                  f"{name} to be published", log)
        with open_repository(storage, keys) as repo:
            flat = "/" + layout.flat_dir(images.base.config_digest)
            assert repo.lookup(flat + "/usr/lib/os-release").is_regular
            assert repo.read("/" + layout.metadata_file(name))

        request = urllib.request.Request(f"{registry.url}/v2/ns/debian/manifests/base",
                                         headers={"Accept": OCI_MANIFEST}, method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as response:
            digest = response.headers["Docker-Content-Digest"]
        delete = urllib.request.Request(f"{registry.url}/v2/ns/debian/manifests/{digest}",
                                        method="DELETE")
        with urllib.request.urlopen(delete, timeout=10) as response:
            assert response.status == 202
        _wait_for(lambda: _published_link(storage, keys, name) is None,
                  f"{name} to be removed", log)
        with open_repository(storage, keys) as repo:
            assert not any(path.startswith(flat) for path, _ in repo.walk("/.flat"))

        # a multi-platform push: ingested for linux/amd64, deleted by the index's digest
        registry.push(images.base.layout, images.base.tag, "ns/multi:amd64")
        single = f"{registry.host}/ns/multi:amd64"
        _wait_for(lambda: _published_link(storage, keys, single) is not None,
                  f"{single} to be published", log)
        entry = registry.manifest_bytes("ns/multi", "amd64", OCI_MANIFEST)
        index = oci_index([(entry, OCI_MANIFEST, "linux/amd64")])
        registry.put_manifest("ns/multi", "latest", index, OCI_INDEX)
        multi = f"{registry.host}/ns/multi:latest"
        _wait_for(lambda: _published_link(storage, keys, multi) == expected,  # same depth
                  f"{multi} to be published", log)
        delete = urllib.request.Request(
            f"{registry.url}/v2/ns/multi/manifests/sha256:{hashlib.sha256(index).hexdigest()}",
            method="DELETE")
        with urllib.request.urlopen(delete, timeout=10) as response:
            assert response.status == 202
        _wait_for(lambda: _published_link(storage, keys, multi) is None,
                  f"{multi} to be removed by its index digest", log)
        assert _published_link(storage, keys, single) is not None  # another manifest
    assert not (work / name).exists()
    assert not any("ns/ignored" in line for line in log), log  # never queued, never fetched
    assert not (work / other.host).exists()
    assert any("published" in line for line in log), log
    assert any(": done: removed " in line for line in log), log


def test_wishlist_glob_against_the_registry(tmp_path: Path, keys: Keys) -> None:
    images: ImageSet = require_images()
    work, storage = tmp_path / "work", tmp_path / "storage"
    events: list[dict[str, object]] = []
    options = IngestOptions(PublishOptions(keys.fqrn, work, storage, keys.keys_dir),
                            notify=events.append, layer_trees=False)  # flat images suffice
    with DockerRegistry() as registry:
        for tag in ("v1", "v2", "x"):
            registry.push(images.base.layout, images.base.tag, f"ns/debian:{tag}")
        wishlist = tmp_path / "wishlist.yaml"
        wishlist.write_text(f"version: 1\nuser: bot\ncvmfs_repo: {keys.fqrn}\n"
                            "output_format: '$(scheme)://example.org/thin/$(image)'\n"
                            f"input:\n  - '{registry.host}/ns/debian:v*'\n")
        result = convert(wishlist, options)
    assert [image.reference for image in result.images] == [
        f"docker://{registry.host}/ns/debian:v1", f"docker://{registry.host}/ns/debian:v2"]
    assert [image.skipped for image in result.images] == [False, False]
    assert result.published is not None
    assert {"action": "wishlist", "wishlist": str(wishlist), "images": 2} in events
    with open_repository(storage, keys) as repo:
        for tag in ("v1", "v2"):
            name = f"{registry.host}/ns/debian:{tag}"
            assert repo.readlink("/" + name) == \
                layout.public_link(name, images.base.config_digest)[1]
        with pytest.raises(PycvmfsError):
            repo.lookup(f"/{registry.host}/ns/debian:x")
    assert json.loads((work / layout.metadata_file(f"{registry.host}/ns/debian:v1"))
                      .read_bytes())["layers"]
