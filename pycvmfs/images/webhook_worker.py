"""The webhook's worker: takes queued events one at a time and carries them out.

    push   -> ingest `<configured URL>/<repository>:<tag>@<digest>` published as
              `<registry>/<repository>:<tag>` (one publish)
    delete -> remove_images(tags) (a digest-only delete: the tags whose ingested manifest
              has that digest)

An item is marked done only after its publish. One that fails is scheduled again later
(`retry_delay`) and the next due item taken meanwhile, until `max_attempts`; an event whose
registry is no longer configured fails at once, without a fetch. Another ingest holding the
working tree's lock is waited out, not counted as a failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pycvmfs.images.ingest import ingest
from pycvmfs.images.removal import names_for_digest, remove_images
from pycvmfs.images.webhook_options import WebhookOptions
from pycvmfs.images.webhook_payload import ImageEvent
from pycvmfs.images.webhook_queue import EventQueue, QueueItem, retry_delay
from pycvmfs.images.webhook_registries import RegistryNotAllowedError

__all__ = ["Handle", "OnItem", "Worker", "fetch_reference", "process"]

log = logging.getLogger(__name__)

_BUSY = "another ingest is working on"  # ingest's lock message
Handle = Callable[[ImageEvent, WebhookOptions], str]
OnItem = Callable[[QueueItem, str, str], None]


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
