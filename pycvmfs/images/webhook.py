"""Registry webhooks: a push makes the image appear in the repository, a delete removes it.

    registry --POST events--> WebhookServer (http.server, Bearer token, constant-time check)
                                 -> parse: Docker registry envelope / Harbor event
                                 -> EventQueue.put (SQLite, synchronous=FULL: on disk)
                                 -> 200
    Worker thread (one item at a time, in order):
        push   -> ingest `<registry>/<repository>:<tag>@<digest>` (one publish)
        delete -> remove_images(tags) (a digest-only delete: the tags whose ingested
                  manifest has that digest)
        the item is marked done only after its publish; a restart resumes what is pending.

Payloads (fact sheet 14.5):
- Docker registry notifications (`application/vnd.docker.distribution.events.v1+json`):
  `{"events": [{"action": "push"|"delete"|..., "target": {"mediaType", "repository",
  "tag", "digest", "url"}, "request": {"host"}}]}`. Only manifest pushes with a tag count
  (blob pushes, pulls, mounts and untagged manifest pushes are ignored and logged); a
  delete names a tag or only the manifest digest.
- Harbor: `{"type": "PUSH_ARTIFACT"|"DELETE_ARTIFACT", "event_data": {"resources":
  [{"resource_url": "host/project/repo:tag", "tag", "digest"}], "repository": {...}}}`.

The registry host is the one the webhook saw (`request.host`, the resource URL's host):
images are published under that name. `registry_url` (or `host_map` per host) says where to
fetch them from when the publisher reaches the registry differently.

Failures: an item that fails is retried after `retry_seconds`, up to `max_attempts` times,
then marked failed (kept in the database with its error; `requeue_failed` or `serve
--retry-failed` makes them pending again) so one bad image cannot block the queue. Another
ingest holding the working tree's lock is waited out, not counted as a failure.
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pycvmfs.errors import ImageError
from pycvmfs.images.ingest import IngestOptions, ingest
from pycvmfs.images.manifest import INDEX_TYPES, MANIFEST_TYPES
from pycvmfs.images.reference import ImageReference, parse_reference
from pycvmfs.images.removal import names_for_digest, remove_images

log = logging.getLogger(__name__)

DOCKER_EVENTS_TYPE = "application/vnd.docker.distribution.events.v1+json"
MAX_BODY_BYTES = 4 << 20
MANIFEST_MEDIA_TYPES = MANIFEST_TYPES | INDEX_TYPES | frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws"})

_BUSY = "another ingest is working on"  # ingest's lock message
Action = Literal["push", "delete"]


class PayloadError(ImageError):
    """A request body that is not a webhook payload we understand."""


@dataclass(frozen=True, slots=True)
class ImageEvent:
    """One thing to do: push (ingest) or delete (remove) an image seen at `registry`."""

    action: Action
    registry: str  # host[:port] as the webhook saw it
    repository: str
    tag: str | None = None
    digest: str | None = None

    def reference(self) -> ImageReference:
        text = f"docker://{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return parse_reference(text)

    @property
    def public_name(self) -> str:
        """`<registry>/<repository>:<tag>` (tagged events only)."""
        if not self.tag:
            raise ImageError(f"{self}: no tag")
        return parse_reference(f"docker://{self.registry}/{self.repository}:{self.tag}"
                               ).public_path()

    def to_json(self) -> str:
        return json.dumps({"action": self.action, "registry": self.registry,
                           "repository": self.repository, "tag": self.tag,
                           "digest": self.digest}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ImageEvent:
        data = json.loads(text)
        action = data["action"]
        if action not in ("push", "delete"):
            raise PayloadError(f"unknown action {action!r}")
        return cls(action, data["registry"], data["repository"], data.get("tag"),
                   data.get("digest"))

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return f"{self.action} {name}"


@dataclass(frozen=True, slots=True)
class ParsedPayload:
    events: list[ImageEvent]
    ignored: list[str]  # why each ignored entry was ignored


# -- payload parsing --------------------------------------------------------------------


def parse_payload(body: bytes) -> ParsedPayload:
    """A Docker registry notification envelope or a Harbor event (told apart by shape)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PayloadError("the payload must be a JSON object")
    if "events" in document:
        return parse_docker_envelope(document)
    if "type" in document:
        return parse_harbor_event(document)
    raise PayloadError("neither a Docker registry envelope ('events') nor a Harbor event "
                       "('type')")


def parse_docker_envelope(document: Mapping[str, Any]) -> ParsedPayload:
    entries = document.get("events")
    if not isinstance(entries, list):
        raise PayloadError("'events' must be a list")
    events: list[ImageEvent] = []
    ignored: list[str] = []
    for index, entry in enumerate(entries):
        try:
            event = _docker_event(entry)
        except (PayloadError, ImageError) as exc:
            ignored.append(f"events[{index}]: {exc}")
            continue
        if isinstance(event, str):
            ignored.append(f"events[{index}]: {event}")
        else:
            events.append(event)
    return ParsedPayload(events, ignored)


def _docker_event(entry: Any) -> ImageEvent | str:
    if not isinstance(entry, dict):
        raise PayloadError("not an object")
    action = entry.get("action")
    target = entry.get("target")
    if not isinstance(target, dict):
        raise PayloadError("no 'target'")
    if action not in ("push", "delete"):
        return f"action {action!r} ignored"
    repository = _str_field(target, "repository", required=True)
    tag = _str_field(target, "tag")
    digest = _str_field(target, "digest")
    media_type = _str_field(target, "mediaType")
    host = _event_host(entry, target)
    if action == "push":
        if media_type not in MANIFEST_MEDIA_TYPES:
            return f"push of {media_type or 'an unknown type'} (not a manifest) ignored"
        if not tag:
            return f"untagged manifest push {repository}@{digest} ignored"
    elif not tag and not digest:
        return "delete names neither tag nor digest"
    elif media_type and media_type not in MANIFEST_MEDIA_TYPES:
        return f"delete of {media_type} (not a manifest) ignored"
    event = ImageEvent(action, host, repository, tag or None, digest or None)
    event.reference()  # validates every part
    return event


def _event_host(entry: Mapping[str, Any], target: Mapping[str, Any]) -> str:
    request = entry.get("request")
    if isinstance(request, dict):
        host = request.get("host")
        if isinstance(host, str) and host:
            return host
    url = target.get("url")
    if isinstance(url, str) and url:
        netloc = urlsplit(url).netloc
        if netloc:
            return netloc
    raise PayloadError("no registry host (request.host, target.url)")


def parse_harbor_event(document: Mapping[str, Any]) -> ParsedPayload:
    kind = document.get("type")
    actions: dict[Any, Action] = {"PUSH_ARTIFACT": "push", "DELETE_ARTIFACT": "delete"}
    if kind not in actions:
        return ParsedPayload([], [f"Harbor event type {kind!r} ignored"])
    action = actions[kind]
    data = document.get("event_data")
    if not isinstance(data, dict):
        raise PayloadError("Harbor event without 'event_data'")
    resources = data.get("resources")
    if not isinstance(resources, list):
        raise PayloadError("Harbor event without 'event_data.resources'")
    repo_info = data.get("repository") if isinstance(data.get("repository"), dict) else {}
    events: list[ImageEvent] = []
    ignored: list[str] = []
    for index, resource in enumerate(resources):
        where = f"resources[{index}]"
        try:
            if not isinstance(resource, dict):
                raise PayloadError("not an object")
            url = _str_field(resource, "resource_url", required=True)
            reference = parse_reference(url if "://" in url else f"docker://{url}")
            tag = _str_field(resource, "tag") or None
            digest = _str_field(resource, "digest") or reference.digest
            name_part = url.rsplit("/", 1)[-1].split("@", 1)[0]
            # parse_reference says `latest` when the URL names no tag: not a tag push
            explicit_tag = reference.tag if ":" in name_part else tag
            repository = reference.repository
            full = repo_info.get("repo_full_name") if isinstance(repo_info, dict) else None
            if isinstance(full, str) and full and full != repository:
                ignored.append(f"{where}: repository {repository!r} differs from "
                               f"event_data.repository {full!r}; using the resource URL")
            if action == "push" and not explicit_tag:
                ignored.append(f"{where}: untagged push {url} ignored")
                continue
            if action == "delete" and not explicit_tag and not digest:
                ignored.append(f"{where}: delete names neither tag nor digest")
                continue
            event = ImageEvent(action, reference.registry, repository, explicit_tag, digest)
            event.reference()
            events.append(event)
        except (PayloadError, ImageError) as exc:
            ignored.append(f"{where}: {exc}")
    return ParsedPayload(events, ignored)


def _str_field(mapping: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = mapping.get(name)
    if value is None or value == "":
        if required:
            raise PayloadError(f"missing {name!r}")
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{name!r} must be a string")
    return value


# -- the durable queue ------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    received REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS items_state ON items(state, id);
"""


@dataclass(frozen=True, slots=True)
class QueueItem:
    id: int
    event: ImageEvent
    attempts: int


class EventQueue:
    """Accepted events in an SQLite file (WAL, synchronous=FULL: `put` returns only once
    the events are on disk). Thread-safe; `wait_for_work` wakes the worker on `put`."""

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def put(self, events: list[ImageEvent]) -> list[int]:
        """Append the events in one durable transaction; their ids in order."""
        ids: list[int] = []
        if not events:
            return ids
        now = time.time()
        with self._changed:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    cursor = self._db.execute(
                        "INSERT INTO items (event, received) VALUES (?, ?)",
                        (event.to_json(), now))
                    ids.append(int(cursor.lastrowid or 0))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._changed.notify_all()
        return ids

    def next_pending(self) -> QueueItem | None:
        """The oldest pending item (it stays pending until `done` or `failed`)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, event, attempts FROM items WHERE state = 'pending' "
                "ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return QueueItem(int(row[0]), ImageEvent.from_json(row[1]), int(row[2]))

    def pending(self) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute("SELECT id, event, attempts FROM items "
                                    "WHERE state = 'pending' ORDER BY id").fetchall()
        return [QueueItem(int(r[0]), ImageEvent.from_json(r[1]), int(r[2])) for r in rows]

    def done(self, item_id: int) -> None:
        self._finish(item_id, "done", None)

    def failed(self, item_id: int, error: str) -> None:
        self._finish(item_id, "failed", error)

    def attempt_failed(self, item_id: int, error: str) -> int:
        """Count a failed attempt (the item stays pending); the attempts so far."""
        with self._lock:
            self._db.execute("UPDATE items SET attempts = attempts + 1, error = ? "
                             "WHERE id = ?", (error, item_id))
            row = self._db.execute("SELECT attempts FROM items WHERE id = ?",
                                   (item_id,)).fetchone()
        return int(row[0]) if row else 0

    def requeue_failed(self) -> int:
        """Make every failed item pending again (attempts reset); how many."""
        with self._changed:
            cursor = self._db.execute("UPDATE items SET state = 'pending', attempts = 0, "
                                      "finished = NULL WHERE state = 'failed'")
            self._changed.notify_all()
            return int(cursor.rowcount)

    def _finish(self, item_id: int, state: str, error: str | None) -> None:
        with self._changed:
            self._db.execute("UPDATE items SET state = ?, error = ?, finished = ? "
                             "WHERE id = ?", (state, error, time.time(), item_id))
            self._changed.notify_all()

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state")
            return {str(state): int(count) for state, count in rows}

    def state(self, item_id: int) -> tuple[str, str | None] | None:
        with self._lock:
            row = self._db.execute("SELECT state, error FROM items WHERE id = ?",
                                   (item_id,)).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def wait_for_work(self, timeout: float) -> None:
        """Block until something is put (or `timeout` seconds pass)."""
        with self._changed:
            pending = self._db.execute(
                "SELECT 1 FROM items WHERE state = 'pending' LIMIT 1").fetchone()
            if pending is None:
                self._changed.wait(timeout)

    def notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- processing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    ingest: IngestOptions  # the repository; its `publish.source` is the working tree
    token: str
    queue_file: Path
    registry_url: str | None = None  # fetch every image from here (scheme://host[:port])
    host_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    retry_seconds: float = 5.0
    max_attempts: int = 3


def fetch_reference(event: ImageEvent, options: WebhookOptions) -> str:
    """Where to download a pushed image from: the event's registry, or the URL configured
    for it (`host_map[host]`, else `registry_url`)."""
    base = options.host_map.get(event.registry) or options.registry_url
    if base is None:
        prefix = f"docker://{event.registry}"
    else:
        parts = urlsplit(base if "://" in base else f"docker://{base}")
        if not parts.netloc:
            raise ImageError(f"registry URL {base!r} names no host")
        scheme = parts.scheme if parts.scheme in ("http", "https") else "docker"
        prefix = f"{scheme}://{parts.netloc}"
    text = f"{prefix}/{event.repository}:{event.tag}"
    if event.digest:
        text += f"@{event.digest}"
    return text


def process(event: ImageEvent, options: WebhookOptions) -> str:
    """Carry out one event (ingest or remove; each publishes at most once). Returns a
    one-line summary."""
    if event.action == "push":
        reference = fetch_reference(event, options)
        result = ingest([reference], options.ingest, names={reference: event.public_name})
        image = result.images[0]
        state = "already there" if image.skipped else "published"
        return f"{event.public_name}: {state}"
    work = options.ingest.publish.source
    if event.tag:
        names = [event.public_name]
    elif event.digest:
        names = names_for_digest(work, event.registry, event.repository, event.digest)
        if not names:
            return f"{event}: no ingested tag has this manifest; nothing to remove"
    else:
        return f"{event}: nothing to remove"
    removed = remove_images(names, options.ingest)
    return f"removed {', '.join(removed.removed) or 'nothing'}"


class Worker(threading.Thread):
    """Processes the queue, one item at a time, oldest first."""

    def __init__(self, queue: EventQueue, options: WebhookOptions,
                 on_item: Callable[[QueueItem, str, str], None] | None = None) -> None:
        super().__init__(name="pycvmfs-webhook-worker", daemon=True)
        self.queue = queue
        self.options = options
        self.on_item = on_item  # (item, state, message) after each attempt
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.queue.notify()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                item = self.queue.next_pending()
            except Exception:  # a corrupt row must not kill the worker silently
                log.exception("reading the webhook queue failed")
                self.stopping.wait(self.options.retry_seconds)
                continue
            if item is None:
                self.queue.wait_for_work(1.0)
                continue
            self.run_one(item)

    def run_one(self, item: QueueItem) -> None:
        notify = self.options.ingest.notify
        notify({"action": "webhook_item", "id": item.id, "event": str(item.event)})
        try:
            message = process(item.event, self.options)
        except Exception as exc:
            if _BUSY in str(exc):  # another ingest holds the working tree: not a failure
                log.info("webhook item %d waits: %s", item.id, exc)
                self.stopping.wait(self.options.retry_seconds)
                return
            attempts = self.queue.attempt_failed(item.id, str(exc))
            if attempts >= self.options.max_attempts:
                self.queue.failed(item.id, str(exc))
                log.error("webhook item %d (%s) failed for good: %s", item.id, item.event, exc)
                state = "failed"
            else:
                log.warning("webhook item %d (%s) failed (attempt %d): %s", item.id,
                            item.event, attempts, exc)
                state = "retry"
                self.stopping.wait(self.options.retry_seconds)
            notify({"action": "webhook_item_end", "id": item.id, "status": "error",
                    "error": str(exc), "final": state == "failed"})
            if self.on_item is not None:
                self.on_item(item, state, str(exc))
            return
        self.queue.done(item.id)
        log.info("webhook item %d: %s", item.id, message)
        notify({"action": "webhook_item_end", "id": item.id, "status": "ok",
                "message": message})
        if self.on_item is not None:
            self.on_item(item, "done", message)


# -- the HTTP server --------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WebhookHTTPServer
    server_version = "pycvmfs-webhook"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, document: Mapping[str, Any]) -> None:
        body = (json.dumps(document, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="pycvmfs-webhook"')
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "").strip().encode("utf-8", "replace")
        expected = f"Bearer {self.server.token}".encode()
        return hmac.compare_digest(given, expected)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") in ("/healthz", "/status"):
            self._answer(200, {"status": "ok", "queue": self.server.queue.counts()})
        else:
            self._answer(404, {"error": "POST events to /"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            self.close_connection = True
            self._answer(401, {"error": "missing or wrong token"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._answer(411, {"error": "Content-Length required"})
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        try:
            parsed = parse_payload(body)
        except PayloadError as exc:
            self._answer(400, {"error": str(exc)})
            return
        for reason in parsed.ignored:
            log.info("webhook: %s", reason)
        try:
            ids = self.server.queue.put(parsed.events)
        except Exception as exc:  # not on disk: the sender must retry
            log.exception("queueing webhook events failed")
            self._answer(503, {"error": f"could not queue: {exc}"})
            return
        for event, item_id in zip(parsed.events, ids, strict=True):
            log.info("webhook: queued %d: %s", item_id, event)
        self._answer(200, {"queued": ids, "ignored": parsed.ignored})


class WebhookHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str, queue: EventQueue) -> None:
        if not token:
            raise ImageError("the webhook needs a non-empty token")
        self.token = token
        self.queue = queue
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up is routine (registries keep connections alive); anything
        else is logged with its traceback instead of printed to stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            log.debug("webhook: connection from %s ended: %s", client_address, error)
        else:
            log.exception("webhook: error handling a request from %s", client_address)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ImageError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class WebhookService:
    """Queue + worker + HTTP server. `start()` returns once the port listens; `stop()`
    ends all three (an item being processed finishes first)."""

    def __init__(self, listen: tuple[str, int], options: WebhookOptions,
                 on_item: Callable[[QueueItem, str, str], None] | None = None) -> None:
        self.options = options
        self.queue = EventQueue(options.queue_file)
        try:
            self.server = WebhookHTTPServer(listen, options.token, self.queue)
        except BaseException:
            self.queue.close()
            raise
        self.worker = Worker(self.queue, options, on_item)
        self._serving: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.worker.start()
        self._serving = threading.Thread(target=self.server.serve_forever,
                                         name="pycvmfs-webhook-http", daemon=True)
        self._serving.start()

    def serve_forever(self) -> None:
        """For the command line: serve until KeyboardInterrupt, then stop."""
        self.worker.start()
        try:
            self.server.serve_forever()
        finally:
            self.server.server_close()
            self.worker.stop()
            self.worker.join()
            self.queue.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._serving is not None:
            self._serving.join()
        self.worker.stop()
        self.worker.join()
        self.queue.close()

    def __enter__(self) -> WebhookService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
