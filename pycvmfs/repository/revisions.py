"""Keeping a mount on the newest revision (fact sheet 10): the TTL alarm and the swap.

A `RevisionWatcher` owns the repository a mount currently serves. A daemon thread sleeps
until the root catalog's TTL (capped by `CVMFS_MAX_TTL`) runs out, then asks `check`
for a newer revision: `check(current)` verifies the manifest again and returns a freshly
attached `Repository`, or None when the server has nothing newer. A new one is swapped in
at once (lookups that already hold the old object finish on it) and `on_swap` tells the
filesystem core, which drops kernel caches of what changed. If the check fails (network
gone, manifest refused), the mount stays on what it has and retries with a backoff: the
TTL, doubled after each failure in a row, up to `OFFLINE_RETRY_S` (the reference's
short-term TTL after a failed reload).

The TTL has a floor (`min_ttl_s`, `PYCVMFS_MIN_TTL`, default `MIN_TTL_S`): the TTL comes
from the repository, and a root catalog with TTL 0 would otherwise make every client
fetch the manifest in a loop. The reference client has no floor (its remount trigger
polls with the TTL as given); the default matches the 61 s for which Stratum-1s let
proxies cache `.cvmfspublished`, so a shorter TTL would only fetch the same manifest again.

Replaced repositories are closed one swap later (or at `stop`), never while a lookup that
started before the swap may still read their catalogs; files already open keep reading
their old objects, which they hold by hash.

A fixed revision (a tag, a date, a root hash, `CVMFS_AUTO_UPDATE=no`) is never checked:
`user.expires` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pycvmfs.errors import PycvmfsError
from pycvmfs.repository.repository import Repository

log = logging.getLogger(__name__)

OFFLINE_RETRY_S = 180.0  # reference: after a failed check, try again in 3 minutes
MIN_TTL_S = 60.0  # floor of the repository's TTL (see the module docstring)
FIXED = "never (fixed root catalog)"

Check = Callable[[Repository], Repository | None]


class RevisionWatcher:
    """The current revision of one mount; see the module docstring."""

    def __init__(self, current: Repository, check: Check, *,
                 on_swap: Callable[[Repository], None] = lambda repository: None,
                 max_ttl_s: float | None = None, min_ttl_s: float = MIN_TTL_S,
                 auto_update: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._current = current
        self._check = check
        self.on_swap = on_swap
        self._max_ttl_s = max_ttl_s
        self._min_ttl_s = min_ttl_s
        self.failures = 0  # failed checks in a row
        self.enabled = auto_update and not current.fixed
        self._clock = clock
        self._lock = threading.Lock()  # one check at a time
        self._stop = threading.Event()
        self._retired: list[Repository] = []
        self._thread: threading.Thread | None = None
        self.offline = current.trusted is None
        self.last_error = ""
        self.deadline = clock() + (self._retry_s() if self.offline else self.ttl_s(current))

    @property
    def current(self) -> Repository:
        return self._current

    def ttl_s(self, repository: Repository) -> float:
        """The root catalog's TTL, capped by CVMFS_MAX_TTL, never below the floor."""
        ttl = float(repository.tree.root.ttl)
        if self._max_ttl_s:
            ttl = min(ttl, self._max_ttl_s)
        return max(ttl, self._min_ttl_s)

    def _retry_s(self) -> float:
        """After `failures` failed checks in a row: the TTL doubled each time, capped."""
        doublings = min(max(self.failures - 1, 0), 16)
        return min(OFFLINE_RETRY_S, self.ttl_s(self._current) * float(1 << doublings))

    def expires(self) -> str:
        """`user.expires`: whole minutes until the next check."""
        if not self.enabled:
            return FIXED
        return str(max(int((self.deadline - self._clock()) // 60), 0))

    def check_now(self) -> bool:
        """Look for a newer revision now; True if one was swapped in."""
        with self._lock:
            current = self._current
            try:
                newer = self._check(current)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any failure
                if not isinstance(exc, PycvmfsError):
                    log.exception("%s: revision check failed unexpectedly", current.fqrn)
                self.offline, self.last_error = True, str(exc)
                self.failures += 1
                self.deadline = self._clock() + self._retry_s()
                log.warning("%s: revision check failed, staying on revision %d "
                            "(retry in %.0f s): %s", current.fqrn, current.revision,
                            self._retry_s(), exc)
                return False
            self.offline, self.last_error, self.failures = False, "", 0
            if newer is None:
                self.deadline = self._clock() + self.ttl_s(current)
                return False
            self._current = newer
            self.deadline = self._clock() + self.ttl_s(newer)
            for old in self._retired:
                old.close()
            self._retired = [current]
        log.info("%s: now serving revision %d (root catalog %s)", newer.fqrn, newer.revision,
                 newer.root_hash)
        self.on_swap(newer)
        return True

    def start(self) -> None:
        """Check in the background whenever the deadline passes (no-op when fixed)."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="revision-watcher",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(self.deadline - self._clock(), 0.05)):
            if self._clock() >= self.deadline:
                self.check_now()

    def stop(self) -> None:
        """End the thread and close every repository this watcher still holds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for old in self._retired:
                old.close()
            self._retired = []
            self._current.close()
