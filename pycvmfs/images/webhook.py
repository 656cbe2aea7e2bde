"""Registry webhooks: a push makes the image appear in the repository, a delete removes it.

    registry --POST events--> WebhookHTTPServer (webhook_http.py: strict framing, deadlines,
                                 connection caps, Bearer token, constant-time check)
                                 -> parse_payload (webhook_payload.py: Docker registry
                                    envelope / Harbor event)
                                 -> RegistryAllowlist.admit (webhook_registries.py): events
                                    for registries the operator did not configure are
                                    ignored (logged, listed as ignored in the answer)
                                 -> EventQueue.put (webhook_queue.py: SQLite, on disk)
                                 -> 200 {"queued": [ids], "ignored": [reasons]}
    Worker thread (one item at a time, the oldest due first):
        push   -> ingest `<configured URL>/<repository>:<tag>@<digest>` published as
                  `<registry>/<repository>:<tag>` (one publish)
        delete -> remove_images(tags) (a digest-only delete: the tags whose ingested
                  manifest has that digest)
        the item is marked done only after its publish; a restart resumes what is pending.

No request ever goes to a host taken from an event: the worker resolves each item against
the allowlist again and fetches from the configured URL (an item queued under an older
configuration whose registry is no longer configured fails at once, without a fetch).

Failures: an item that fails is retried after `retry_seconds`, then twice that, and so on
up to `max_retry_seconds`, `max_attempts` times in all, then marked failed (kept in the
database with its error; `requeue_failed` or `serve --retry-failed` makes them pending
again). Meanwhile the worker goes on with the next due items, so failing events cannot
hold back later ones (only later events of the same image wait, to keep their order: same
repository and tag, or a delete by digest). Another ingest holding the working tree's lock
is waited out, not counted as a failure.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycvmfs.errors import ConfigError
from pycvmfs.images.ingest import IngestOptions, ingest
from pycvmfs.images.removal import names_for_digest, remove_images
from pycvmfs.images.webhook_http import MAX_BODY_BYTES, HttpLimits, WebhookHTTPServer, parse_listen
from pycvmfs.images.webhook_payload import (
    DOCKER_EVENTS_TYPE,
    MAX_EVENTS_PER_PAYLOAD,
    ImageEvent,
    ParsedPayload,
    PayloadError,
    parse_payload,
)
from pycvmfs.images.webhook_queue import EventQueue, QueueFullError, QueueItem, retry_delay
from pycvmfs.images.webhook_registries import (
    RegistryAllowlist,
    RegistryNotAllowedError,
    RegistrySource,
)

__all__ = ["DOCKER_EVENTS_TYPE", "MAX_BODY_BYTES", "MAX_EVENTS_PER_PAYLOAD", "EventQueue",
           "HttpLimits", "ImageEvent", "ParsedPayload", "PayloadError", "QueueItem",
           "RegistryAllowlist", "RegistrySource", "WebhookOptions", "WebhookService", "Worker",
           "accept_events", "fetch_reference", "parse_listen", "parse_payload", "process"]

log = logging.getLogger(__name__)

_BUSY = "another ingest is working on"  # ingest's lock message
_POLL_SECONDS = 0.1  # how soon `stop()` is noticed by the accept loop
Handle = Callable[[ImageEvent, "WebhookOptions"], str]
OnItem = Callable[[QueueItem, str, str], None]


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    ingest: IngestOptions  # the repository; its `publish.source` is the working tree
    token: str
    queue_file: Path
    registries: RegistryAllowlist = dataclasses.field(default_factory=RegistryAllowlist)
    retry_seconds: float = 5.0  # before the first retry; doubled for each further one
    max_retry_seconds: float = 300.0
    max_attempts: int = 5
    http: HttpLimits = dataclasses.field(default_factory=HttpLimits)


def fetch_reference(event: ImageEvent, options: WebhookOptions) -> str:
    """Where to download a pushed image from: the configured URL of its registry, never a
    host the event names (RegistryNotAllowedError when its registry is not configured)."""
    source = options.registries.resolve(event)
    text = f"{source.url}/{event.repository}:{event.tag}"
    if event.digest:
        text += f"@{event.digest}"
    return text


def process(event: ImageEvent, options: WebhookOptions) -> str:
    """Carry out one event (ingest or remove; each publishes at most once). Returns a
    one-line summary."""
    event = options.registries.admit(event)  # the configured name, or refused
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


def accept_events(body: bytes, queue: EventQueue,
                  registries: RegistryAllowlist) -> tuple[int, Mapping[str, Any]]:
    """What the HTTP front answers a POST body with: 400 for a payload we cannot use, 503
    when the events could not be put on disk (the sender retries), else 200 with the ids
    queued and the reasons for every entry ignored (unconfigured registries included)."""
    try:
        parsed = parse_payload(body)
    except PayloadError as exc:
        log.info("webhook: refused a payload: %s", exc)
        return 400, {"error": str(exc)}
    ignored = list(parsed.ignored)
    admitted: list[ImageEvent] = []
    for event in parsed.events:
        try:
            admitted.append(registries.admit(event))
        except RegistryNotAllowedError as exc:
            ignored.append(str(exc))
    for reason in ignored:
        log.info("webhook: %s", reason)
    try:
        ids = queue.put(admitted)
    except QueueFullError as exc:
        log.warning("webhook: %s", exc)
        return 503, {"error": str(exc)}
    except Exception as exc:  # not on disk: the sender must retry
        log.exception("queueing webhook events failed")
        return 503, {"error": f"could not queue: {exc}"}
    for event, item_id in zip(admitted, ids, strict=True):
        log.info("webhook: queued %d: %s", item_id, event)
    return 200, {"queued": ids, "ignored": ignored}


class Worker(threading.Thread):
    """Processes the queue, one item at a time: the oldest due item first; a failed item
    is scheduled again later and the next one taken meanwhile."""

    def __init__(self, queue: EventQueue, options: WebhookOptions,
                 on_item: OnItem | None = None, handle: Handle | None = None) -> None:
        super().__init__(name="pycvmfs-webhook-worker", daemon=True)
        self.queue = queue
        self.options = options
        self.on_item = on_item  # (item, state, message) after each attempt
        self.handle = handle or process  # (event, options) -> summary; tests pass fakes
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.queue.notify()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                item = self.queue.next_due()
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
            message = self.handle(item.event, self.options)
        except Exception as exc:
            if _BUSY in str(exc):  # another ingest holds the working tree: not a failure
                log.info("webhook item %d waits: %s", item.id, exc)
                self.stopping.wait(self.options.retry_seconds)
                return
            self._failed(item, exc)
            return
        self.queue.done(item.id)
        log.info("webhook item %d: %s", item.id, message)
        notify({"action": "webhook_item_end", "id": item.id, "status": "ok",
                "message": message})
        if self.on_item is not None:
            self.on_item(item, "done", message)

    def _failed(self, item: QueueItem, exc: Exception) -> None:
        attempts = item.attempts + 1
        final = (attempts >= self.options.max_attempts
                 or isinstance(exc, RegistryNotAllowedError))  # retrying cannot help
        retry_in = None if final else retry_delay(attempts, self.options.retry_seconds,
                                                  self.options.max_retry_seconds)
        self.queue.attempt_failed(item.id, str(exc), retry_in)
        if retry_in is None:
            log.error("webhook item %d (%s) failed for good: %s", item.id, item.event, exc)
        else:
            log.warning("webhook item %d (%s) failed (attempt %d, next in %g s): %s", item.id,
                        item.event, attempts, retry_in, exc)
        self.options.ingest.notify({"action": "webhook_item_end", "id": item.id,
                                    "status": "error", "error": str(exc),
                                    "final": retry_in is None})
        if self.on_item is not None:
            self.on_item(item, "failed" if retry_in is None else "retry", str(exc))


class WebhookService:
    """Queue + worker + HTTP server. `start()` returns once the port listens; `stop()`
    ends all three (an item being processed finishes first)."""

    def __init__(self, listen: tuple[str, int], options: WebhookOptions,
                 on_item: OnItem | None = None, handle: Handle | None = None) -> None:
        if options.registries.empty:
            raise ConfigError("the webhook acts only for registries it is told about: give "
                              "--registry-url URL (repeatable) or --wishlist FILE")
        self.options = options
        self.queue = EventQueue(options.queue_file)
        try:
            self.server = WebhookHTTPServer(
                listen, options.token,
                lambda body: accept_events(body, self.queue, options.registries),
                lambda: {"queue": self.queue.counts()}, options.http)
        except OSError as exc:
            self.queue.close()
            host, port = listen
            hint = ("another server uses that port; choose another --listen"
                    if exc.errno == errno.EADDRINUSE else "check --listen HOST:PORT")
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                              f"({hint})") from None
        except BaseException:
            self.queue.close()
            raise
        self.worker = Worker(self.queue, options, on_item, handle)
        self._serving: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.worker.start()
        self._serving = threading.Thread(target=self.server.serve_forever,
                                         kwargs={"poll_interval": _POLL_SECONDS},
                                         name="pycvmfs-webhook-http", daemon=True)
        self._serving.start()

    def serve_forever(self) -> None:
        """For the command line: serve until KeyboardInterrupt, then stop."""
        self.worker.start()
        try:
            self.server.serve_forever(poll_interval=_POLL_SECONDS)
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
