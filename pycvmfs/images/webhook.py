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
    Worker thread (webhook_worker.py; one item at a time, the oldest due first):
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

import errno
import logging
import threading
from collections.abc import Mapping
from typing import Any

from pycvmfs.errors import ConfigError
from pycvmfs.images.webhook_http import WebhookHTTPServer
from pycvmfs.images.webhook_options import WebhookOptions
from pycvmfs.images.webhook_payload import ImageEvent, PayloadError, parse_payload
from pycvmfs.images.webhook_queue import EventQueue, QueueFullError
from pycvmfs.images.webhook_registries import RegistryAllowlist, RegistryNotAllowedError
from pycvmfs.images.webhook_worker import Handle, OnItem, Worker

__all__ = ["WebhookService", "accept_events"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1  # how soon `stop()` is noticed by the accept loop


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
