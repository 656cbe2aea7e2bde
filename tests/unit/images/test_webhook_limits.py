"""The webhook against hostile callers, without sockets: strict framing headers, JSON depth
and envelope size, the registry allowlist (no fetch from a host an event names), and the
queue's retry schedule (failing items do not hold back the others).
Over real sockets: tests/integration/test_webhook_hostile.py."""

from __future__ import annotations

import http.client
import io
import json
import sqlite3
import threading
import time
from email.message import Message
from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError
from pycvmfs.images import webhook_worker
from pycvmfs.images.ingest import IngestOptions
from pycvmfs.images.webhook import WebhookService, accept_events
from pycvmfs.images.webhook_http import FramingError, check_header_fields, request_body_length
from pycvmfs.images.webhook_options import WebhookOptions
from pycvmfs.images.webhook_payload import (
    MAX_EVENTS_PER_PAYLOAD,
    MAX_REASON_CHARS,
    ImageEvent,
    PayloadError,
    parse_payload,
)
from pycvmfs.images.webhook_queue import EventQueue, QueueFullError, retry_delay
from pycvmfs.images.webhook_registries import (
    RegistryAllowlist,
    RegistryNotAllowedError,
    RegistrySource,
    parse_registry_option,
    registry_name,
)
from pycvmfs.images.webhook_worker import Worker, fetch_reference, process
from pycvmfs.images.wishlist import parse_wishlist
from pycvmfs.publisher.publish import PublishOptions

DIGEST = "sha256:" + "a" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _headers(*lines: str) -> Message:
    raw = "".join(f"{line}\r\n" for line in lines) + "\r\n"
    return http.client.parse_headers(io.BytesIO(raw.encode("latin-1")))


# -- framing headers (RFC 9112 section 6) ----------------------------------------------


@pytest.mark.parametrize(("lines", "length"), [
    ((), None),
    (("Content-Length: 14",), 14),
    (("Content-Length: 0",), 0),
    (("Content-Length: 014",), 14),
    (("Content-Length: 14", "Content-Length: 14"), 14),  # identical repeats
    (("Content-Length: 14, 14",), 14),
    (("Content-Length:  14 ",), 14),
    (("Content-Length: " + "9" * 40,), 10 ** 18),  # over any limit, still a number
])
def test_content_length_accepted(lines: tuple[str, ...], length: int | None) -> None:
    assert request_body_length(_headers("Host: h", *lines)) == length


@pytest.mark.parametrize("lines", [
    ("Content-Length: +14",), ("Content-Length: -1",), ("Content-Length: 1_4",),
    ("Content-Length: 1e3",), ("Content-Length: 0x10",), ("Content-Length: 14 14",),
    ("Content-Length: 14.0",), ("Content-Length: ",), ("Content-Length: 14,",),
    ("Content-Length: 1\u00b2",),  # "1²": str.isdigit() says yes
    ("Content-Length: 14, 15",), ("Content-Length: 14", "Content-Length: 15"),
    ("Content-Length: 14", "Content-Length: 014"),  # same value, not identical
    ("Transfer-Encoding: chunked", "Content-Length: 14"),
    ("Transfer-Encoding: chunked, gzip",), ("Transfer-Encoding: gzip",),
    ("Transfer-Encoding: identity",),
])
def test_framing_refused_with_400(lines: tuple[str, ...]) -> None:
    with pytest.raises(FramingError) as caught:
        request_body_length(_headers("Host: h", *lines))
    assert caught.value.status == 400 and str(caught.value)


@pytest.mark.parametrize(("lines", "status"), [
    (("Transfer-Encoding: chunked",), 411),
    (("Transfer-Encoding: Chunked",), 411),
    (("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 411),
    (("Transfer-Encoding: gzip, chunked",), 501),
    (("Transfer-Encoding: gzip", "Transfer-Encoding: chunked"), 501),
])
def test_transfer_encoding_statuses(lines: tuple[str, ...], status: int) -> None:
    with pytest.raises(FramingError) as caught:
        request_body_length(_headers("Host: h", *lines))
    assert caught.value.status == status


@pytest.mark.parametrize("lines", [
    ("Host: h", "Content-Length : 5"),        # whitespace before the colon
    ("Host: h", "X-A: 1", " folded: 2"),      # obs-fold
    ("Host: h", "X-A: a\x00b"),               # control character
    ("Host: h", "X\"A: 1"),                   # not a token
    ("Host: h", "no colon at all"),
    ("Content-Length: 5",),                   # HTTP/1.1 without Host
    ("Host: a", "Host: b"),                   # two Hosts
])
def test_header_fields_refused(lines: tuple[str, ...]) -> None:
    with pytest.raises(FramingError) as caught:
        check_header_fields(_headers(*lines), "HTTP/1.1")
    assert caught.value.status == 400


def test_header_fields_accepted() -> None:
    check_header_fields(_headers("Host: h", "Authorization: Bearer x\ty",
                                 "User-Agent: caf\xe9"), "HTTP/1.1")
    check_header_fields(_headers("Content-Length: 2"), "HTTP/1.0")  # 1.0 needs no Host


# -- payload size and depth -------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[" * 1_000_000, b'{"a":' * 200_000 + b"1",
                                  b'{"events": ' + b"[" * 100_000])
def test_deep_json_is_a_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError, match="nested too deeply"):
        parse_payload(body)


def test_json_oddities_are_payload_errors() -> None:
    with pytest.raises(PayloadError, match="not JSON"):
        parse_payload(b'{"events": [' + b"1" * 5000 + b"]}")  # int over the digit limit
    with pytest.raises(PayloadError, match="not JSON"):
        parse_payload(b'{"events": NaN')


def _push(repository: str = "ns/x", tag: str = "1",
          host: str = "reg.example.org") -> dict[str, object]:
    return {"action": "push", "request": {"host": host},
            "target": {"mediaType": OCI_MANIFEST, "repository": repository, "tag": tag,
                       "digest": DIGEST}}


def test_envelope_entry_cap() -> None:
    assert len(parse_payload(json.dumps(
        {"events": [_push()] * MAX_EVENTS_PER_PAYLOAD}).encode()).events) == \
        MAX_EVENTS_PER_PAYLOAD
    with pytest.raises(PayloadError, match="at most"):
        parse_payload(json.dumps({"events": [_push()] * (MAX_EVENTS_PER_PAYLOAD + 1)}).encode())
    harbor = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [
        {"resource_url": "reg.example.org/ns/x:1"}] * (MAX_EVENTS_PER_PAYLOAD + 1)}}
    with pytest.raises(PayloadError, match="at most"):
        parse_payload(json.dumps(harbor).encode())


def test_reasons_do_not_echo_long_strings() -> None:
    parsed = parse_payload(json.dumps({"events": [
        _push(repository="x" * 100_000), _push(tag="!" * 100_000),
        {"action": "push", "target": {"mediaType": "y" * 100_000}}]}).encode())
    assert len(parsed.ignored) == 3
    assert all(len(reason) <= MAX_REASON_CHARS + 3 for reason in parsed.ignored)


# -- the registry allowlist -------------------------------------------------------------


@pytest.mark.parametrize(("text", "source"), [
    ("https://Harbor.Example.org", RegistrySource("harbor.example.org",
                                                  "https://Harbor.Example.org")),
    ("http://127.0.0.1:5000/", RegistrySource("127.0.0.1:5000", "http://127.0.0.1:5000")),
    ("registry.example.org:8443", RegistrySource("registry.example.org:8443",
                                                 "docker://registry.example.org:8443")),
    ("localhost:5000", RegistrySource("localhost:5000", "docker://localhost:5000")),
    ("reg.example.org=http://10.0.0.5:5000", RegistrySource("reg.example.org",
                                                             "http://10.0.0.5:5000")),
    ("docker.io=https://mirror.example.org", RegistrySource("registry.hub.docker.com",
                                                            "https://mirror.example.org")),
    ("[::1]:5000", RegistrySource("[::1]:5000", "docker://[::1]:5000")),
])
def test_registry_option_forms(text: str, source: RegistrySource) -> None:
    assert parse_registry_option(text) == source


@pytest.mark.parametrize("text", [
    "", "=https://x.org", "x.org=", "ftp://x.org", "https://user:pw@x.org",
    "https://x.org/v2/", "https://x.org?a=b", "https://x.org#f", "https://x.org:99999",
    "https://", "myregistry", "bad name=https://x.org", "no/slash=https://x.org",
])
def test_registry_option_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--registry-url"):
        parse_registry_option(text)


def test_a_registry_configured_twice_differently_is_refused() -> None:
    RegistryAllowlist.build(["https://a.org", "https://a.org"])  # the same twice is fine
    with pytest.raises(ConfigError, match="twice"):
        RegistryAllowlist.build(["https://a.org", "a.org=http://10.0.0.1"])


@pytest.mark.parametrize("host", ["evil.example.org", "reg.example.org:444",
                                  "10.0.0.5:5000", "127.0.0.1:1", "reg.example.org.evil.org",
                                  "xreg.example.org", "nohost", "reg.example.org/ns",
                                  "user@reg.example.org", ""])
def test_events_for_unconfigured_registries_are_refused(host: str) -> None:
    """Only the name counts, and only as configured: the URL's address (10.0.0.5:5000) is
    not a name the events may use."""
    registries = RegistryAllowlist.build(["reg.example.org=http://10.0.0.5:5000"])
    with pytest.raises(RegistryNotAllowedError):
        registries.resolve(ImageEvent("push", host, "ns/x", "1"))


def test_names_compare_as_registries_do() -> None:
    registries = RegistryAllowlist.build(["https://Reg.Example.org", "docker.io"])
    for host in ("reg.example.org", "REG.EXAMPLE.ORG"):
        event = registries.admit(ImageEvent("push", host, "ns/x", "1"))
        assert event.registry == "reg.example.org"
    for host in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        assert registries.resolve(ImageEvent("push", host, "library/x", "1")).name == \
            "registry.hub.docker.com"
    assert registry_name("LocalHost:5000") == "localhost:5000"


def _wishlist_allowlist() -> RegistryAllowlist:
    wishlist = parse_wishlist(
        "version: 1\nuser: bot\ncvmfs_repo: r.org\ninput:\n"
        "  - 'ghcr.io/example/tools:v2.*'\n"
        "  - 'https://registry.hub.docker.com/library/alpine:3.19'\n"
        f"  - 'quay.io/ns/pinned@{DIGEST}'\n")
    return RegistryAllowlist.build([], wishlist)


@pytest.mark.parametrize(("event", "fetch"), [
    (ImageEvent("push", "ghcr.io", "example/tools", "v2.1", DIGEST),
     f"docker://ghcr.io/example/tools:v2.1@{DIGEST}"),
    (ImageEvent("push", "docker.io", "library/alpine", "3.19"),
     "https://registry.hub.docker.com/library/alpine:3.19"),
    (ImageEvent("push", "quay.io", "ns/pinned", "any", DIGEST),
     f"docker://quay.io/ns/pinned:any@{DIGEST}"),
])
def test_wishlist_allows_its_images(tmp_path: Path, event: ImageEvent, fetch: str) -> None:
    options = WebhookOptions(_ingest_options(tmp_path), "s", tmp_path / "q",
                             registries=_wishlist_allowlist())
    assert fetch_reference(event, options) == fetch


@pytest.mark.parametrize("event", [
    ImageEvent("push", "ghcr.io", "example/tools", "v3.0"),
    ImageEvent("push", "ghcr.io", "example/other", "v2.1"),
    ImageEvent("push", "docker.io", "library/alpine", "3.20"),
    ImageEvent("push", "quay.io", "ns/pinned", "any", "sha256:" + "b" * 64),
    ImageEvent("push", "evil.org", "example/tools", "v2.1"),
])
def test_wishlist_refuses_other_images(event: ImageEvent) -> None:
    with pytest.raises(RegistryNotAllowedError):
        _wishlist_allowlist().resolve(event)


def test_wishlist_allows_a_digest_delete_in_its_repositories() -> None:
    registries = _wishlist_allowlist()
    assert registries.resolve(ImageEvent("delete", "ghcr.io", "example/tools", None,
                                         DIGEST)).name == "ghcr.io"


def _ingest_options(tmp_path: Path) -> IngestOptions:
    return IngestOptions(PublishOptions("r.org", tmp_path / "work", tmp_path / "storage",
                                        tmp_path / "keys"))


def test_accept_events_ignores_unconfigured_registries(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.sqlite")
    registries = RegistryAllowlist.build(["https://reg.example.org"])
    body = json.dumps({"events": [_push(), _push(host="evil.example.org"),
                                  _push(host="REG.example.org", tag="2")]}).encode()
    status, answer = accept_events(body, queue, registries)
    assert status == 200 and answer["queued"] == [1, 2]
    assert len(answer["ignored"]) == 1 and "evil.example.org" in answer["ignored"][0]
    assert [item.event.registry for item in queue.pending()] == ["reg.example.org"] * 2
    status, answer = accept_events(b"[" * 100_000, queue, registries)
    assert status == 400 and "nested too deeply" in answer["error"]
    queue.close()


def test_process_refuses_before_any_fetch(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An item queued under an older configuration: no ingest, no removal is started."""
    calls: list[object] = []
    monkeypatch.setattr(webhook_worker, "ingest", lambda *args, **kw: calls.append(args))
    monkeypatch.setattr(webhook_worker, "remove_images", lambda *args: calls.append(args))
    options = WebhookOptions(_ingest_options(tmp_path), "s", tmp_path / "q",
                             registries=RegistryAllowlist.build(["https://reg.example.org"]))
    for event in (ImageEvent("push", "127.0.0.1:9", "ns/x", "1"),
                  ImageEvent("delete", "evil.org", "ns/x", "1")):
        with pytest.raises(RegistryNotAllowedError):
            process(event, options)
    assert calls == []


def test_a_service_without_registries_is_refused(tmp_path: Path) -> None:
    options = WebhookOptions(_ingest_options(tmp_path), "s", tmp_path / "q.sqlite")
    with pytest.raises(ConfigError, match="--registry-url"):
        WebhookService(("127.0.0.1", 0), options)


# -- the retry schedule -----------------------------------------------------------------


def test_retry_delay_is_exponential_and_capped() -> None:
    assert [retry_delay(n, 5, 300) for n in range(9)] == \
        [0, 5, 10, 20, 40, 80, 160, 300, 300]
    assert retry_delay(10_000, 5, 300) == 300  # no overflow


def test_a_deferred_item_lets_the_others_pass_but_keeps_its_images_order(
        tmp_path: Path) -> None:
    """A failed push of ns/a:1 is retried later: ns/a:2 and ns/b go first; a later delete
    of ns/a:1, and a delete of ns/a by digest (it may concern any tag), wait for it."""
    queue = EventQueue(tmp_path / "q.sqlite")
    push_a1, push_a2, push_b = (ImageEvent("push", "r.org", repo, tag) for repo, tag in
                                (("ns/a", "1"), ("ns/a", "2"), ("ns/b", "1")))
    delete_a1 = ImageEvent("delete", "r.org", "ns/a", "1")
    delete_digest = ImageEvent("delete", "r.org", "ns/a", None, DIGEST)
    ids = queue.put([push_a1, delete_a1, push_a2, delete_digest, push_b])
    now = time.time()
    first = queue.next_due(now)
    assert first is not None and first.id == ids[0]
    queue.attempt_failed(first.id, "boom", 100)
    order = []
    while (item := queue.next_due(now)) is not None:
        order.append(item.event)
        queue.done(item.id)
    assert order == [push_a2, push_b]  # not delete_a1, not delete_digest: push_a1 holds them
    wakeup = queue.next_wakeup()
    assert wakeup is not None and 99 < wakeup - now < 102
    again = queue.next_due(now + 101)
    assert again is not None and again.id == ids[0] and again.attempts == 1
    queue.attempt_failed(again.id, "gone", None)  # final
    assert queue.state(ids[0]) == ("failed", "gone")
    assert [item.event for item in queue.pending()] == [delete_a1, delete_digest]
    held = queue.next_due(now)
    assert held is not None and held.event == delete_a1
    queue.attempt_failed(held.id, "boom", 100)
    assert queue.next_due(now) is None  # the digest delete waits for the tag delete
    queue.close()


def test_a_pending_digest_delete_holds_later_events_of_its_repository(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.sqlite")
    delete, push_same, push_other = (
        ImageEvent("delete", "r.org", "ns/c", None, DIGEST), ImageEvent("push", "r.org",
                                                                        "ns/c", "5"),
        ImageEvent("push", "r.org", "ns/d", "5"))
    ids = queue.put([delete, push_same, push_other])
    queue.attempt_failed(ids[0], "boom", 100)
    item = queue.next_due()
    assert item is not None and item.event == push_other
    queue.done(item.id)
    assert queue.next_due() is None
    queue.close()


def test_a_retry_queues_behind_what_arrived_before_it_was_due(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.sqlite")
    [bad] = queue.put([ImageEvent("push", "r.org", "ns/bad", "1")])
    queue.attempt_failed(bad, "boom", 0.01)
    time.sleep(0.02)  # the point: the retry falls due before the next push arrives
    [good] = queue.put([ImageEvent("push", "r.org", "ns/good", "1")])
    item = queue.next_due(time.time() + 1)
    assert item is not None and item.id == bad  # due first (its retry came before good)
    queue.attempt_failed(bad, "boom", 0.5)
    item = queue.next_due()
    assert item is not None and item.id == good
    queue.close()


def test_wait_for_work_wakes_when_a_deferred_item_is_due(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.sqlite")
    [item] = queue.put([ImageEvent("push", "r.org", "ns/x", "1")])
    queue.attempt_failed(item, "boom", 0.2)
    started = time.monotonic()
    queue.wait_for_work(5.0)
    assert 0.1 < time.monotonic() - started < 2.0
    assert queue.next_due() is not None
    queue.close()


def test_the_queue_is_bounded(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.sqlite", max_pending=3)
    event = ImageEvent("push", "r.org", "ns/x", "1")
    queue.put([event, event])
    with pytest.raises(QueueFullError, match="at most 3"):
        queue.put([event, event])
    assert queue.counts() == {"pending": 2}  # all or nothing
    registries = RegistryAllowlist.build(["r.org"])
    body = json.dumps({"events": [_push(host="r.org")] * 2}).encode()
    assert accept_events(body, queue, registries)[0] == 503
    queue.close()


def test_an_old_queue_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT,
        event TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, error TEXT, received REAL NOT NULL,
        finished REAL);""")
    for tag in ("1", "2"):
        db.execute("INSERT INTO items (event, received) VALUES (?, 0)",
                   (ImageEvent("push", "r.org", "ns/x", tag).to_json(),))
    db.commit()
    db.close()
    queue = EventQueue(path)
    item = queue.next_due()
    assert item is not None and item.event.tag == "1"
    queue.done(item.id)
    item = queue.next_due()
    assert item is not None and item.event.tag == "2"
    queue.close()


def test_failing_items_do_not_hold_back_a_later_push(tmp_path: Path) -> None:
    """Twenty events that always fail (other tags of the same repository), then a good one:
    the good one is done after one attempt of each earlier event, not after their retries
    (the worker used to wait `retry_seconds` in place after each failure)."""
    queue = EventQueue(tmp_path / "q.sqlite")
    queue.put([ImageEvent("push", "r.org", "ns/app", f"bad{n}") for n in range(20)])
    done = threading.Event()
    attempts: dict[str, int] = {}

    def handle(event: ImageEvent, options: WebhookOptions) -> str:
        attempts[str(event.tag)] = attempts.get(str(event.tag), 0) + 1
        if str(event.tag).startswith("bad"):
            raise RuntimeError("no such image")
        done.set()
        return "ok"

    options = WebhookOptions(_ingest_options(tmp_path), "s", tmp_path / "q.sqlite",
                             retry_seconds=0.5, max_attempts=10)
    worker = Worker(queue, options, handle=handle)
    worker.start()
    try:
        started = time.monotonic()
        queue.put([ImageEvent("push", "r.org", "ns/app", "good")])
        assert done.wait(5), attempts
        took = time.monotonic() - started
        assert took < 5.0, took  # in place: 20 items x 9 retries x 0.5+ s
        assert queue.counts().get("pending") == 20  # the bad ones are still being retried
    finally:
        worker.stop()
        worker.join(5)
        queue.close()


def test_a_refused_registry_fails_at_once(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.sqlite")
    [item_id] = queue.put([ImageEvent("push", "evil.org", "ns/x", "1")])
    options = WebhookOptions(_ingest_options(tmp_path), "s", tmp_path / "q.sqlite",
                             registries=RegistryAllowlist.build(["r.org"]), max_attempts=5)
    worker = Worker(queue, options)  # the real `process`: refuses before any fetch
    item = queue.next_due()
    assert item is not None
    worker.run_one(item)
    state = queue.state(item_id)
    assert state is not None and state[0] == "failed" and "not configured" in (state[1] or "")
    queue.close()
