"""Webhook payloads (Docker registry envelopes, Harbor events), the durable queue, the
worker, and image removal from a working tree. (The HTTP front, the `webhook serve`
process and the queue surviving a killed process: tests/integration/test_webhook_service.py;
limits and hostile callers: test_webhook_limits.py here and
tests/integration/test_webhook_hostile.py.)"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pycvmfs.cli.images_admin import images_group
from pycvmfs.errors import ImageError
from pycvmfs.images import layout
from pycvmfs.images.ingest import INGEST_FILE, UNPUBLISHED, IngestOptions
from pycvmfs.images.removal import names_for_digest, referenced_flats, remove_images
from pycvmfs.images.webhook_http import parse_listen
from pycvmfs.images.webhook_options import WebhookOptions
from pycvmfs.images.webhook_payload import ImageEvent, PayloadError, parse_payload
from pycvmfs.images.webhook_queue import EventQueue
from pycvmfs.images.webhook_registries import RegistryAllowlist
from pycvmfs.images.webhook_worker import Worker, fetch_reference
from pycvmfs.publisher.publish import PublishOptions
from tests.publish_helpers import Keys, open_repository
from tests.waiting import wait_until

DIGEST = "sha256:" + "a" * 64
BLOB = "sha256:" + "b" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _docker_event(action: str, media_type: str | None, *, tag: str | None = "t",
                  digest: str = DIGEST, host: str | None = "127.0.0.1:5000") -> dict[str, object]:
    """The shape distribution 2.8 posts (notifications/event.go)."""
    target: dict[str, object] = {"size": 528, "digest": digest, "length": 528,
                                 "repository": "ns/debian",
                                 "url": f"http://127.0.0.1:5000/v2/ns/debian/manifests/{digest}"}
    if media_type is not None:
        target["mediaType"] = media_type
    if tag is not None:
        target["tag"] = tag
    event: dict[str, object] = {
        "id": "b3c0f3a4", "timestamp": "2026-11-29T10:00:00Z", "action": action,
        "target": target, "actor": {}, "source": {"addr": "host:5000", "instanceID": "x"},
        "request": {"id": "r1", "addr": "127.0.0.1:40000", "method": "PUT",
                    "useragent": "skopeo"}}
    if host is not None:
        event["request"]["host"] = host  # type: ignore[index]
    return event


def _envelope(*events: dict[str, object]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


# -- payloads ---------------------------------------------------------------------------


def test_docker_manifest_push_counts_blob_push_does_not() -> None:
    parsed = parse_payload(_envelope(
        _docker_event("push", "application/octet-stream", tag=None, digest=BLOB),
        _docker_event("push", "application/vnd.oci.image.layer.v1.tar+gzip", tag=None,
                      digest=BLOB),
        _docker_event("push", OCI_MANIFEST, tag="v1"),
        _docker_event("pull", OCI_MANIFEST, tag="v1"),
        _docker_event("push", OCI_MANIFEST, tag=None),  # untagged manifest push
        _docker_event("push", "application/vnd.docker.distribution.manifest.v2+json",
                      tag="v2", host=None),  # host from target.url
    ))
    assert parsed.events == [
        ImageEvent("push", "127.0.0.1:5000", "ns/debian", "v1", DIGEST),
        ImageEvent("push", "127.0.0.1:5000", "ns/debian", "v2", DIGEST)]
    assert len(parsed.ignored) == 4
    assert any("untagged manifest push" in reason for reason in parsed.ignored)
    assert any("pull" in reason for reason in parsed.ignored)


def test_docker_deletes() -> None:
    parsed = parse_payload(_envelope(
        _docker_event("delete", None, tag=None),          # manifest delete: digest only
        _docker_event("delete", None, tag="old", digest=""),  # tag delete
        _docker_event("delete", "application/octet-stream", tag=None, digest=BLOB),
    ))
    assert parsed.events == [
        ImageEvent("delete", "127.0.0.1:5000", "ns/debian", None, DIGEST),
        ImageEvent("delete", "127.0.0.1:5000", "ns/debian", "old", None)]
    assert len(parsed.ignored) == 1


def test_docker_bad_entries_are_ignored_not_fatal() -> None:
    bad_repo = _docker_event("push", OCI_MANIFEST)
    bad_repo["target"]["repository"] = "Bad Name"  # type: ignore[index]
    no_host = _docker_event("push", OCI_MANIFEST, host=None)
    del no_host["target"]["url"]  # type: ignore[attr-defined]
    parsed = parse_payload(_envelope(bad_repo, no_host, "junk",  # type: ignore[arg-type]
                                     _docker_event("push", OCI_MANIFEST)))
    assert len(parsed.events) == 1 and len(parsed.ignored) == 3


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"foo": 1}', b'{"events": 3}',
                                  b'{"type": "PUSH_ARTIFACT"}', b"\xff"])
def test_unusable_payloads(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_payload(body)


def _harbor(kind: str, *resources: dict[str, object]) -> bytes:
    return json.dumps({
        "type": kind, "occur_at": 1700000000, "operator": "admin",
        "event_data": {"resources": list(resources),
                       "repository": {"date_created": 1, "name": "debian", "namespace": "ns",
                                      "repo_full_name": "ns/debian", "repo_type": "private"}},
    }).encode()


def test_harbor_events() -> None:
    parsed = parse_payload(_harbor(
        "PUSH_ARTIFACT",
        {"digest": DIGEST, "tag": "v1", "resource_url": "harbor.example.org/ns/debian:v1"},
        {"digest": DIGEST, "tag": "", "resource_url": f"harbor.example.org/ns/debian@{DIGEST}"}))
    assert parsed.events == [ImageEvent("push", "harbor.example.org", "ns/debian", "v1", DIGEST)]
    assert "untagged" in parsed.ignored[0]
    parsed = parse_payload(_harbor(
        "DELETE_ARTIFACT",
        {"digest": DIGEST, "tag": "v1", "resource_url": "harbor.example.org/ns/debian:v1"},
        {"digest": DIGEST, "resource_url": f"harbor.example.org:8443/ns/debian@{DIGEST}"}))
    assert parsed.events == [
        ImageEvent("delete", "harbor.example.org", "ns/debian", "v1", DIGEST),
        ImageEvent("delete", "harbor.example.org:8443", "ns/debian", None, DIGEST)]
    assert parse_payload(_harbor("PULL_ARTIFACT")).events == []


def test_event_names_and_fetch_reference(tmp_path: Path) -> None:
    """Images are fetched from the configured URL of their registry (NAME=URL: published
    under NAME, fetched from URL); see test_webhook_limits.py for what is refused."""
    event = ImageEvent("push", "docker.io", "debian", "12", DIGEST)
    assert event.public_name == "registry.hub.docker.com/library/debian:12"
    assert ImageEvent.from_json(event.to_json()) == event
    local = ImageEvent("push", "registry.example.org", "ns/x", "1", DIGEST)
    registries = RegistryAllowlist.build(["registry.example.org",
                                          "other.org=https://mirror.org"])
    options = WebhookOptions(_ingest_options(tmp_path, "r.org"), "s", tmp_path / "q",
                             registries=registries)
    assert fetch_reference(local, options) == f"docker://registry.example.org/ns/x:1@{DIGEST}"
    inside = WebhookOptions(options.ingest, "s", tmp_path / "q",
                            registries=RegistryAllowlist.build(
                                ["registry.example.org=http://10.0.0.5:5000"]))
    assert fetch_reference(local, inside) == f"http://10.0.0.5:5000/ns/x:1@{DIGEST}"
    other = ImageEvent("push", "other.org", "ns/x", "1", None)
    assert fetch_reference(other, options) == "https://mirror.org/ns/x:1"
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)


# -- the durable queue ------------------------------------------------------------------


def test_queue_order_done_and_failed(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.sqlite")
    a, b, c = (ImageEvent("push", "h.org", "ns/x", tag) for tag in ("1", "2", "3"))
    ids = queue.put([a, b])
    assert queue.put([c]) == [ids[1] + 1]
    first = queue.next_due()
    assert first is not None and first.event == a and first.id == ids[0]
    queue.done(first.id)
    assert queue.attempt_failed(ids[1], "boom", 0) == 1
    second = queue.next_due()  # c arrived before b's retry was due
    assert second is not None and second.event == c and second.attempts == 0
    assert [(item.event, item.attempts) for item in queue.pending()] == [(b, 1), (c, 0)]
    queue.failed(ids[1], "boom")
    assert queue.state(ids[1]) == ("failed", "boom")
    assert [item.event for item in queue.pending()] == [c]
    assert queue.counts() == {"done": 1, "failed": 1, "pending": 1}
    queue.close()


def test_queue_survives_dropping_the_objects(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    queue = EventQueue(path)
    events = [ImageEvent("push", "h.org", "ns/x", "1"), ImageEvent("delete", "h.org", "ns/y",
                                                                   None, DIGEST)]
    ids = queue.put(events)
    queue.done(ids[0])
    del queue  # no close: the objects are just dropped
    reopened = EventQueue(path)
    assert [(item.id, item.event) for item in reopened.pending()] == [(ids[1], events[1])]
    reopened.close()


# -- worker ---------------------------------------------------------------------------


def _ingest_options(tmp_path: Path, fqrn: str) -> IngestOptions:
    return IngestOptions(PublishOptions(fqrn, tmp_path / "work", tmp_path / "storage",
                                        tmp_path / "keys"))


def test_worker_resumes_unfinished_items_and_retries(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    queue = EventQueue(path)
    queue.put([ImageEvent("push", "h.org", "ns/x", tag) for tag in ("1", "2", "3")])
    queue.close()  # "restart": a new queue and worker over the same file

    processed: list[str | None] = []
    failures = {"2": 1}  # tag 2 fails once, then works

    def fake_process(event: ImageEvent, options: WebhookOptions) -> str:
        if failures.get(event.tag or "", 0) > 0:
            failures[event.tag or ""] -= 1
            raise RuntimeError("registry hiccup")
        processed.append(event.tag)
        return "ok"

    queue = EventQueue(path)
    options = WebhookOptions(_ingest_options(tmp_path, "r.org"), "s", path, retry_seconds=0.01)
    states: list[str] = []
    worker = Worker(queue, options, on_item=lambda item, state, message: states.append(state),
                    handle=fake_process)
    worker.start()
    wait_until(lambda: not queue.counts().get("pending"), 10, "the queue to be worked off")
    worker.stop()
    worker.join(5)
    assert processed == ["1", "3", "2"]  # 2's retry came after 3 (another tag)
    assert states == ["done", "retry", "done", "done"]
    assert queue.counts() == {"done": 3}
    queue.close()


def test_worker_gives_up_after_max_attempts(tmp_path: Path) -> None:
    def failing(event: ImageEvent, options: WebhookOptions) -> str:
        raise RuntimeError("no such image")

    queue = EventQueue(tmp_path / "q.sqlite")
    [item_id] = queue.put([ImageEvent("push", "h.org", "ns/x", "1")])
    options = WebhookOptions(_ingest_options(tmp_path, "r.org"), "s", tmp_path / "q.sqlite",
                             retry_seconds=60, max_attempts=2)
    worker = Worker(queue, options, handle=failing)
    for _ in range(2):
        item = queue.next_due(now=time.time() + 3600)  # its retry is an hour away
        assert item is not None
        worker.run_one(item)
    assert queue.state(item_id) == ("failed", "no such image")
    queue.close()


# -- removal from a working tree -------------------------------------------------------


def _fake_image(work: Path, name: str, config_digest: str, manifest: bytes) -> None:
    flat_rel = layout.flat_dir(config_digest)
    flat = work / flat_rel
    (flat / "etc").mkdir(parents=True, exist_ok=True)
    (flat / "etc" / "os-release").write_text(f"image {config_digest[-4:]}\n")
    for directory in layout.nested_catalog_dirs([flat_rel]):
        (work / directory / ".cvmfscatalog").touch()
    link, target = layout.public_link(name, config_digest)
    (work / link).parent.mkdir(parents=True, exist_ok=True)
    (work / link).symlink_to(target)
    metadata = work / layout.metadata_file(name)
    metadata.parent.mkdir(parents=True, exist_ok=True)
    metadata.write_bytes(manifest)


def test_remove_images(tmp_path: Path, keys: Keys) -> None:
    work, storage = tmp_path / "work", tmp_path / "storage"
    c1, c2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    _fake_image(work, "reg.org/ns/a:v1", c1, b'{"m": 1}')
    _fake_image(work, "reg.org/ns/a:v2", c1, b'{"m": 1}')  # same image, two tags
    _fake_image(work, "reg.org/ns/b:x", c2, b'{"m": 2}')
    options = PublishOptions(keys.fqrn, work, storage, keys.keys_dir)
    assert referenced_flats(work) == {layout.flat_dir(c1), layout.flat_dir(c2)}
    digest_m1 = "sha256:" + __import__("hashlib").sha256(b'{"m": 1}').hexdigest()
    assert names_for_digest(work, "reg.org", "ns/a", digest_m1) == \
        ["reg.org/ns/a:v1", "reg.org/ns/a:v2"]

    first = remove_images(["reg.org/ns/a:v1", "docker://reg.org/ns/zzz:1"], options)
    assert first.removed == ["reg.org/ns/a:v1"] and first.missing == ["reg.org/ns/zzz:1"]
    assert first.flats_removed == [] and first.published is not None  # v2 still uses c1
    second = remove_images(["reg.org/ns/a:v2", "reg.org/ns/b:x"], options)
    assert sorted(second.flats_removed) == sorted([layout.flat_dir(c1), layout.flat_dir(c2)])
    assert not (work / "reg.org").exists() and not (work / ".metadata" / "reg.org").exists()
    assert not (work / layout.FLAT / "11").exists()
    assert remove_images(["reg.org/ns/a:v2"], options).published is None  # nothing to do
    with open_repository(storage, keys) as repo:
        names = {path for path, _entry in repo.walk("/")}
        assert not any(path.startswith(("/reg.org", "/.flat/11", "/.flat/22"))
                       for path in names)


def test_a_multi_platform_push_is_found_by_its_index_digest(tmp_path: Path) -> None:
    """A registry deletes a multi-arch push by the index digest; ingest stored the platform
    manifest and recorded the index it came from."""
    work = tmp_path / "work"
    index = "sha256:" + "9" * 64
    _fake_image(work, "reg.org/ns/multi:1", "sha256:" + "3" * 64, b'{"m": 3}')
    (work / layout.METADATA / "reg.org/ns/multi:1" / INGEST_FILE).write_text(
        json.dumps({"manifest": "sha256:" + "8" * 64, "index": index}))
    assert names_for_digest(work, "reg.org", "ns/multi", index) == ["reg.org/ns/multi:1"]
    assert names_for_digest(work, "reg.org", "ns/multi", "sha256:" + "7" * 64) == []


def test_remove_refuses_a_non_symlink(tmp_path: Path, keys: Keys) -> None:
    work = tmp_path / "work"
    (work / "reg.org" / "ns").mkdir(parents=True)
    (work / "reg.org" / "ns" / "a:v1").write_text("not a link")
    options = PublishOptions(keys.fqrn, work, tmp_path / "storage", keys.keys_dir)
    with pytest.raises(Exception, match="not an image symlink"):
        remove_images(["reg.org/ns/a:v1"], options)
    assert os.path.exists(work / "reg.org" / "ns" / "a:v1")
    assert not (work / UNPUBLISHED).exists()  # refused before anything was staged


def test_requeue_failed_and_busy_lock_is_not_a_failure(tmp_path: Path) -> None:
    calls: list[str] = []

    def busy(event: ImageEvent, options: WebhookOptions) -> str:
        calls.append("busy")
        raise ImageError(f"another ingest is working on {tmp_path}")

    queue = EventQueue(tmp_path / "q.sqlite")
    [item_id] = queue.put([ImageEvent("push", "h.org", "ns/x", "1")])
    worker = Worker(queue, WebhookOptions(_ingest_options(tmp_path, "r.org"), "s",
                                          tmp_path / "q.sqlite", retry_seconds=0,
                                          max_attempts=1), handle=busy)
    for _ in range(3):
        item = queue.next_due()
        assert item is not None and item.attempts == 0
        worker.run_one(item)
    assert len(calls) == 3 and queue.state(item_id) == ("pending", None)
    queue.failed(item_id, "gave up")
    assert queue.requeue_failed() == 1 and queue.state(item_id) == ("pending", "gave up")
    queue.close()


# -- command line (the click functions; main.py wiring is separate) --------------------


def test_cli_images_remove(tmp_path: Path, keys: Keys) -> None:
    work, storage = tmp_path / "work", tmp_path / "storage"
    _fake_image(work, "reg.org/ns/a:v1", "sha256:" + "3" * 64, b"{}")
    result = CliRunner().invoke(images_group, [
        "remove", "reg.org/ns/a:v1", "reg.org/ns/a:gone", "--repo", keys.fqrn,
        "--storage", str(storage), "--keys-dir", str(keys.keys_dir), "--work", str(work)])
    assert result.exit_code == 1, result.output  # one of the images was not there
    assert "removed reg.org/ns/a:v1" in result.output
    assert "not in the repository: reg.org/ns/a:gone" in str(result.exception)
    assert "published test.pycvmfs.org revision 1" in result.output
