"""The webhook server against hostile callers, over real sockets on 127.0.0.1 (issue 9,
classes 7 and 14): request-smuggling framing, trickled heads and bodies, slowloris, oversized
and deeply nested bodies, events naming a registry the operator did not configure (a
listening socket stands for that host and must see no connection), and failing events that
must not hold back a later valid push.

Every sender is capped in time (SENDER_CAP_SECONDS) and bytes; the service runs with short
deadlines (LIMITS) so each test takes a few seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.images.ingest import IngestOptions
from pycvmfs.images.webhook import WebhookService
from pycvmfs.images.webhook_http import HttpLimits
from pycvmfs.images.webhook_options import WebhookOptions
from pycvmfs.images.webhook_payload import ImageEvent
from pycvmfs.images.webhook_queue import EventQueue
from pycvmfs.images.webhook_registries import RegistryAllowlist
from pycvmfs.publisher.publish import PublishOptions

TOKEN = "hostile-test-token"
REGISTRY = "registry.example.org"  # the configured registry (never contacted: fake handle)
DIGEST = "sha256:" + "a" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LIMITS = HttpLimits(header_seconds=2.0, body_seconds=2.0, write_seconds=2.0,
                    max_connections=12, max_connections_per_peer=8)
# where a test needs the deadline to outlast what it does meanwhile (slowloris, the cap)
LONG_LIMITS = dataclasses.replace(LIMITS, header_seconds=5.0)
SLACK_SECONDS = 2.0  # scheduling slack on a loaded 2-core machine
SENDER_CAP_SECONDS = 8.0  # no endless sender runs longer
SENDER_CAP_BYTES = 4096
EMPTY = b'{"events": []}'  # 14 bytes


def _push_event(repository: str = "ns/app", tag: str = "1", host: str = REGISTRY,
                url_host: str | None = None) -> dict[str, object]:
    target: dict[str, object] = {"mediaType": OCI_MANIFEST, "repository": repository,
                                 "tag": tag, "digest": DIGEST}
    event: dict[str, object] = {"action": "push", "target": target}
    if url_host is not None:
        target["url"] = f"http://{url_host}/v2/{repository}/manifests/{DIGEST}"
    if host:
        event["request"] = {"host": host}
    return event


def _envelope(*events: dict[str, object]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


@dataclass
class Recorder:
    """A fake processing function: records events; tags starting with `bad` fail after
    `bad_seconds`."""

    bad_seconds: float = 0.0
    seen: list[ImageEvent] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, event: ImageEvent, options: WebhookOptions) -> str:
        with self.arrived:
            self.seen.append(event)
            self.arrived.notify_all()
        if str(event.tag).startswith("bad"):
            time.sleep(self.bad_seconds)  # the point: a slow failing item
            raise RuntimeError(f"{event}: no such image")
        return "ok"

    def wait_for(self, repository: str, tag: str, timeout: float) -> bool:
        with self.arrived:
            return self.arrived.wait_for(
                lambda: any((event.repository, event.tag) == (repository, tag)
                            for event in self.seen), timeout)


def _options(tmp_path: Path, registries: list[str], limits: HttpLimits = LIMITS,
             **kwargs: float) -> WebhookOptions:
    ingest = IngestOptions(PublishOptions("r.org", tmp_path / "work", tmp_path / "storage",
                                          tmp_path / "keys"))
    return WebhookOptions(ingest, TOKEN, tmp_path / "queue.sqlite",
                          registries=RegistryAllowlist.build(registries), http=limits,
                          **kwargs)  # type: ignore[arg-type]


@dataclass
class Rig:
    service: WebhookService
    recorder: Recorder

    @property
    def port(self) -> int:
        return self.service.address[1]


@contextlib.contextmanager
def _rig(tmp_path: Path, limits: HttpLimits) -> Iterator[Rig]:
    recorder = Recorder()
    options = _options(tmp_path, [f"https://{REGISTRY}"], limits)
    with WebhookService(("127.0.0.1", 0), options, handle=recorder) as service:
        yield Rig(service, recorder)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with _rig(tmp_path, LIMITS) as started:
        yield started


@pytest.fixture
def long_rig(tmp_path: Path) -> Iterator[Rig]:
    with _rig(tmp_path, LONG_LIMITS) as started:
        yield started


def _request(head_lines: list[str], body: bytes = b"", *, token: bool = True) -> bytes:
    lines = ["POST /events HTTP/1.1", "Host: 127.0.0.1", *head_lines]
    if token:
        lines.append(f"Authorization: Bearer {TOKEN}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Reply:
    status: int | None
    document: dict[str, object]
    closed: bool  # the server closed the connection (within the read time)
    seconds: float
    raw: bytes


def _exchange(port: int, data: bytes, *, read_seconds: float = 5.0) -> Reply:
    """Send `data`, read until the server closes or `read_seconds` pass (64 KiB at most)."""
    started = time.monotonic()
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=read_seconds) as sock:
        with contextlib.suppress(OSError):  # the server may refuse before reading it all
            sock.sendall(data)
        deadline = started + read_seconds
        while len(received) < 65536 and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return _reply(received, closed, time.monotonic() - started)


def _reply(received: bytes, closed: bool, seconds: float) -> Reply:
    status: int | None = None
    document: dict[str, object] = {}
    head, _sep, body = received.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 "):
        status = int(head.split(b" ", 2)[1])
        try:
            document = json.loads(body)
        except ValueError:
            document = {}
    return Reply(status, document, closed, seconds, received)


def _trickle(port: int, prefix: bytes, byte: bytes = b"a", interval: float = 0.1) -> Reply:
    """Send `prefix`, then `byte` every `interval` s until the server answers or closes
    (SENDER_CAP_SECONDS, SENDER_CAP_BYTES at most); the reply and when it came."""
    started = time.monotonic()
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(prefix)
        sent = len(prefix)
        while time.monotonic() - started < SENDER_CAP_SECONDS and sent < SENDER_CAP_BYTES:
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received += chunk
                if not chunk:
                    closed = True
                    break
                continue
            try:
                sock.sendall(byte)
                sent += 1
            except OSError:
                closed = True
                break
    return _reply(received, closed, time.monotonic() - started)


def _post(port: int, body: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _queued(rig: Rig) -> int:
    return sum(rig.service.queue.counts().values())


# -- framing: Content-Length, Transfer-Encoding, header fields -------------------------


@pytest.mark.parametrize("framing", [
    ["Content-Length: +14"], ["Content-Length: 1_4"], ["Content-Length: 1e3"],
    ["Content-Length: 0x0e"], ["Content-Length: 14.0"], ["Content-Length: -14"],
    ["Content-Length: 14", "Content-Length: 15"], ["Content-Length: 14, 15"],
    ["Content-Length : 14"], ["Content-Length: 14", "X-Folded: a", " b"],
    ["Transfer-Encoding: chunked", "Content-Length: 14"],
    ["Transfer-Encoding: chunked, identity"], ["Transfer-Encoding: gzip"],
])
def test_bad_framing_is_400_and_closes(rig: Rig, framing: list[str]) -> None:
    """The body carries a second, valid request: smuggled, it would be queued."""
    smuggled = _request([f"Content-Length: {len(_envelope(_push_event()))}"],
                        _envelope(_push_event()))
    reply = _exchange(rig.port, _request(framing, EMPTY + smuggled))
    assert reply.status == 400, reply.raw
    assert reply.closed and reply.raw.count(b"HTTP/1.1 ") == 1
    assert isinstance(reply.document.get("error"), str) and reply.document["error"]
    assert _queued(rig) == 0


@pytest.mark.parametrize(("framing", "status"), [
    (["Transfer-Encoding: chunked"], 411),
    (["Transfer-Encoding: gzip, chunked"], 501),
    ([], 411),  # POST without any length
])
def test_unsupported_framing_statuses(rig: Rig, framing: list[str], status: int) -> None:
    reply = _exchange(rig.port, _request(framing, b"e\r\n" + EMPTY + b"\r\n0\r\n\r\n"))
    assert reply.status == status and reply.closed
    assert _queued(rig) == 0


def test_identical_content_lengths_are_one(rig: Rig) -> None:
    body = _envelope(_push_event())
    reply = _exchange(rig.port, _request(
        [f"Content-Length: {len(body)}", f"Content-Length: {len(body)}", "Connection: close"],
        body))
    assert reply.status == 200 and reply.document["queued"] == [1]


def test_a_request_without_host_is_400(rig: Rig) -> None:
    data = f"POST / HTTP/1.1\r\nContent-Length: 14\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    reply = _exchange(rig.port, data.encode() + EMPTY)
    assert reply.status == 400 and reply.closed


def test_oversized_body_is_413_without_reading_it(rig: Rig) -> None:
    """Only the head is sent: the answer comes at once, not after a body deadline."""
    size = LIMITS.max_body_bytes + 1
    reply = _exchange(rig.port, _request([f"Content-Length: {size}"]), read_seconds=5)
    assert reply.status == 413 and reply.closed, reply
    assert reply.seconds < LIMITS.body_seconds, reply  # it did not wait for a body
    huge = _exchange(rig.port, _request(["Content-Length: " + "9" * 30]))
    assert huge.status == 413
    unauthorised = _exchange(rig.port, _request([f"Content-Length: {size}"], token=False))
    assert unauthorised.status == 401 and unauthorised.closed


def test_expect_continue_only_after_the_checks(rig: Rig) -> None:
    reply = _exchange(rig.port, _request(["Expect: 100-continue",
                                          f"Content-Length: {LIMITS.max_body_bytes + 1}"]))
    assert reply.status == 413 and b" 100 " not in reply.raw
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
        sock.sendall(_request(["Expect: 100-continue", "Content-Length: 14",
                               "Connection: close"]))
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")
        sock.sendall(EMPTY)
        assert b"HTTP/1.1 200 " in sock.recv(65536)


# -- time and connections -----------------------------------------------------------------


def test_trickled_head_is_cut_at_the_deadline(rig: Rig) -> None:
    reply = _trickle(rig.port, b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert reply.closed, reply
    assert reply.seconds < LIMITS.header_seconds + SLACK_SECONDS, reply


def test_trickled_request_line_is_cut_at_the_deadline(rig: Rig) -> None:
    reply = _trickle(rig.port, b"POST /", byte=b"x")
    assert reply.closed and reply.seconds < LIMITS.header_seconds + SLACK_SECONDS, reply


def test_trickled_body_gets_408_at_the_deadline(rig: Rig) -> None:
    reply = _trickle(rig.port, _request(["Content-Length: 1000"]), byte=b" ")
    assert reply.status == 408 and reply.closed, reply
    assert reply.seconds < LIMITS.body_seconds + SLACK_SECONDS, reply
    assert _queued(rig) == 0


def test_slowloris_does_not_stop_a_valid_push(long_rig: Rig) -> None:
    """Six connections trickle their heads while a registry pushes: the push is answered
    while they are still connected, and processed; every trickler is cut at the header
    deadline."""
    rig = long_rig
    replies: list[Reply] = []
    lock = threading.Lock()

    def loris() -> None:
        reply = _trickle(rig.port, b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ", interval=0.2)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=loris) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + LONG_LIMITS.header_seconds / 2
    while rig.service.server.open_connections() < len(threads):  # all connected
        assert time.monotonic() < deadline, rig.service.server.open_connections()
        time.sleep(0.01)
    status, answer = _post(rig.port, _envelope(_push_event(repository="ns/good")))
    assert status == 200 and answer["queued"] == [1]
    assert rig.service.server.open_connections() >= len(threads)  # still trickling
    assert rig.recorder.wait_for("ns/good", "1", 5)
    for thread in threads:
        thread.join(SENDER_CAP_SECONDS + 5)
    assert len(replies) == 6
    assert all(reply.closed and reply.seconds < LONG_LIMITS.header_seconds + SLACK_SECONDS
               for reply in replies), replies


def test_connections_over_the_cap_get_503_then_service_resumes(long_rig: Rig) -> None:
    """Idle connections fill the per-address cap: the next one is told 503 at once (not
    held until a deadline); once the header deadline has closed them, requests are served
    again."""
    rig = long_rig
    idle = [socket.create_connection(("127.0.0.1", rig.port), timeout=5)
            for _ in range(LONG_LIMITS.max_connections_per_peer)]
    try:
        deadline = time.monotonic() + LONG_LIMITS.header_seconds / 2
        while rig.service.server.open_connections() < len(idle):  # all accepted
            assert time.monotonic() < deadline, rig.service.server.open_connections()
            time.sleep(0.01)
        reply = _exchange(rig.port, b"", read_seconds=3)
        assert reply.status == 503 and reply.closed, reply
        assert reply.seconds < LONG_LIMITS.header_seconds / 2, reply
        for sock in idle:  # the deadline ends each idle connection
            sock.settimeout(LONG_LIMITS.header_seconds + SLACK_SECONDS)
            assert sock.recv(1024) == b""
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slots are released as the threads end
        status, _answer = _post(rig.port, EMPTY)
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200


# -- payloads ---------------------------------------------------------------------------


def test_deeply_nested_json_is_400_with_a_message(rig: Rig) -> None:
    for body in (b"[" * 1_000_000, b'{"events": ' + b"[" * 500_000,
                 b'{"a": ' * 200_000 + b"1"):
        status, answer = _post(rig.port, body)
        assert status == 400 and "nested too deeply" in str(answer["error"])
    assert _post(rig.port, EMPTY)[0] == 200  # still serving


def test_too_many_events_is_400(rig: Rig) -> None:
    status, answer = _post(rig.port, _envelope(*[_push_event()] * 1001))
    assert status == 400 and "at most" in str(answer["error"])
    assert _queued(rig) == 0


# -- registries: no request to a host taken from an event -------------------------------


def test_events_for_unconfigured_registries_fetch_nothing(tmp_path: Path) -> None:
    """A socket listens for the host the events name. Events naming it (request.host,
    target.url, a Harbor resource URL) are ignored; an event for the configured registry
    whose target.url names it is fetched from the configured URL; an item queued under an
    older configuration fails without a fetch. The decoy sees no connection at all."""
    from pycvmfs.publisher.keys import create_keys

    create_keys("r.org", tmp_path / "keys")  # an ingest checks its keys before fetching
    with socket.socket() as decoy, socket.socket() as closed_port:
        decoy.bind(("127.0.0.1", 0))
        decoy.listen(16)
        evil = f"127.0.0.1:{decoy.getsockname()[1]}"
        closed_port.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        configured = f"127.0.0.1:{closed_port.getsockname()[1]}"
        old = EventQueue(tmp_path / "queue.sqlite")
        [old_item] = old.put([ImageEvent("push", evil, "ns/old", "1")])
        old.close()
        options = _options(tmp_path, [f"http://{configured}", "named.example.org="
                                      f"http://{configured}"], max_attempts=1)
        with WebhookService(("127.0.0.1", 0), options) as service:  # the real `process`
            port = service.address[1]
            status, answer = _post(port, _envelope(
                _push_event(host=evil), _push_event(host="", url_host=evil),
                _push_event(host=f"localhost:{evil.split(':')[1]}"),
                _push_event(host=f"{evil}/ns"),
                _push_event(host="named.example.org.", url_host=evil),
                _push_event(repository="ns/real", host=configured, url_host=evil)))
            assert status == 200 and answer["queued"] == [old_item + 1]
            assert len(answer["ignored"]) == 5  # type: ignore[arg-type]
            harbor = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [
                {"resource_url": f"{evil}/ns/app:1", "tag": "1", "digest": DIGEST}]}}
            status, answer = _post(port, json.dumps(harbor).encode())
            assert status == 200 and answer["queued"] == []
            assert "not configured" in str(answer["ignored"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # both queued items are tried and fail
                if service.queue.counts() == {"failed": 2}:
                    break
                time.sleep(0.1)
            assert service.queue.counts() == {"failed": 2}
            old_state = service.queue.state(old_item)
            assert old_state is not None and "not configured" in (old_state[1] or "")
            real_state = service.queue.state(old_item + 1)
            assert real_state is not None and configured in (real_state[1] or "")
        decoy.settimeout(0.5)
        with pytest.raises(TimeoutError):
            decoy.accept()  # a connection would be waiting in the backlog


# -- failing items ----------------------------------------------------------------------


def test_failing_events_do_not_hold_back_a_later_push(tmp_path: Path) -> None:
    """An envelope of 20 failing events (each attempt 50 ms; other tags of the same
    repository), then a valid push: it is processed after one attempt of each, while the
    failing ones wait for their retries (the worker used to retry each in place,
    `retry_seconds` apart: over a minute)."""
    recorder = Recorder(bad_seconds=0.05)
    options = _options(tmp_path, [f"https://{REGISTRY}"], retry_seconds=2.0,
                       max_attempts=5)
    with WebhookService(("127.0.0.1", 0), options, handle=recorder) as service:
        port = service.address[1]
        bad = [_push_event(tag=f"bad{n}") for n in range(20)]
        assert _post(port, _envelope(*bad))[0] == 200
        started = time.monotonic()
        assert _post(port, _envelope(_push_event(tag="good")))[0] == 200
        assert recorder.wait_for("ns/app", "good", 10), recorder.seen
        took = time.monotonic() - started
        assert took < 10, took  # in place, 20 items x 4 retries x 2+ s each: minutes
        counts = service.queue.counts()
        assert counts.get("done") == 1 and counts.get("pending") == 20, counts

