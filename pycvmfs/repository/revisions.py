"""Keeping a mount on the newest revision (fact sheet 10): where revisions come from, the
TTL alarm and the swap.

`RevisionSource` proves revisions: the trust chain every time (the blacklist read again
each time), the last one remembered in the cache's breadcrumb so a later mount can start
offline from it when the server is unreachable.

A `RevisionWatcher` owns the repository a mount currently serves. A daemon thread sleeps
until the root catalog's TTL (capped by `CVMFS_MAX_TTL`) runs out, then asks `check`
for a newer revision: `check(current)` verifies the manifest again and returns a freshly
attached `Repository`, or None when the server has nothing newer; `revocation(current)`
says whether the blacklist now refuses the served revision. A new one is swapped in at
once (lookups that already hold the old object finish on it) and the subscribers (the
filesystem core, `subscribe`) are told, in the watcher's thread: it drops kernel caches of
what changed, or refuses reads of a revoked revision. If the check fails (network
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

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.cache.breadcrumb import Breadcrumb, read_breadcrumb, write_breadcrumb
from pycvmfs.errors import BlacklistedError, FetchError, OutdatedError, PycvmfsError
from pycvmfs.repository.objects import ObjectLoader
from pycvmfs.repository.open import RevisionSelector, attach_repository, open_repository
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import establish_trust, load_blacklist

log = logging.getLogger(__name__)

OFFLINE_RETRY_S = 180.0  # reference: after a failed check, try again in 3 minutes
MIN_TTL_S = 60.0  # floor of the repository's TTL (see the module docstring)
FIXED = "never (fixed root catalog)"

Check = Callable[[Repository], Repository | None]
Revocation = Callable[[Repository], str | None]


class RevisionSource:
    """Revisions of one repository for a mount, proven by the trust chain (see the module
    docstring). Objects and catalogs go through the mount's `loader` (its cache)."""

    def __init__(self, source: ObjectSource, fqrn: str, keys: Sequence[rsa.RSAPublicKey],
                 selector: RevisionSelector, loader: ObjectLoader, *,
                 blacklist_files: Sequence[Path] = ()) -> None:
        self.source, self.fqrn, self.keys = source, fqrn, keys
        self.selector, self.loader = selector, loader
        self.blacklist_files = blacklist_files
        self.cache = loader.fetcher.host  # breadcrumbs live in the checked cache directory

    def _remember(self, repository: Repository) -> None:
        trusted = repository.trusted
        if trusted is None or repository.fixed:
            return
        crumb = Breadcrumb(repository.root_hash, trusted.timestamp or 0, repository.revision)
        try:
            write_breadcrumb(self.cache.root, self.fqrn, crumb)
        except OSError as exc:  # a hint for offline mounts, never worth failing a mount
            log.warning("cannot write the breadcrumb in %s: %s", self.cache.root, exc)

    def first(self) -> Repository:
        """The revision to mount: as selected, else the newest the server proves, else
        (server unreachable or older than what this cache saw) the breadcrumb's."""
        crumb = None if self.selector.fixed else read_breadcrumb(self.cache.root, self.fqrn)
        blacklist = load_blacklist(self.blacklist_files)
        try:
            repository = open_repository(
                self.source, self.fqrn, self.keys, self.selector, loader=self.loader,
                blacklist=blacklist,
                min_timestamp=crumb.timestamp if crumb is not None else None)
        except (FetchError, OutdatedError) as exc:
            if crumb is None or not self.cache.store.contains(crumb.catalog_hash):
                raise
            blacklist.check_revision(self.fqrn, crumb.revision)  # offline, too
            log.warning("%s: %s; mounting revision %d from the cache (offline)",
                        self.fqrn, exc, crumb.revision)
            return attach_repository(self.source, self.fqrn, None,
                                     RevisionSelector.of(root_hash=crumb.catalog_hash),
                                     loader=self.loader)
        self._remember(repository)
        return repository

    def revocation(self, current: Repository) -> str | None:
        """Why the blacklist now refuses the served revision or its certificate, or None."""
        blacklist = load_blacklist(self.blacklist_files)
        try:
            blacklist.check_revision(self.fqrn, current.revision)
            if current.trusted is not None:
                blacklist.check_certificate(current.trusted.certificate, self.fqrn)
        except BlacklistedError as exc:  # the reference aborts the mount here
            log.error("%s: its files are refused until a newer revision verifies", exc)
            return str(exc)
        return None

    def newer(self, current: Repository) -> Repository | None:
        """The server's revision if it is newer than `current` (the TTL check)."""
        known = current.trusted.timestamp if current.trusted is not None else None
        trusted = establish_trust(self.source, self.fqrn, self.keys,
                                  now=dt.datetime.now(dt.UTC), min_timestamp=known,
                                  blacklist=load_blacklist(self.blacklist_files))
        if trusted.root_hash == current.root_hash or trusted.revision <= current.revision:
            return None
        repository = attach_repository(self.source, self.fqrn, trusted, loader=self.loader)
        self._remember(repository)
        return repository


class RevisionListener(Protocol):
    """What the watcher tells (the filesystem core)."""

    def set_repository(self, repository: Repository) -> None:
        """Serve this newer revision from now on."""
        ...

    def revoke(self, reason: str | None) -> None:
        """Refuse reads of the served revision (`reason`), or serve it again (None)."""
        ...


class RevisionWatcher:
    """The current revision of one mount; see the module docstring."""

    def __init__(self, current: Repository, check: Check, *,
                 revocation: Revocation = lambda current: None,
                 max_ttl_s: float | None = None, min_ttl_s: float = MIN_TTL_S,
                 auto_update: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._current = current
        self._check = check
        self._revocation = revocation
        self._listeners: list[RevisionListener] = []
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

    def subscribe(self, listener: RevisionListener) -> None:
        """Tell `listener` of every swap and revocation from now on."""
        self._listeners.append(listener)

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
                revoked = self._revocation(current)
                for listener in self._listeners:
                    listener.revoke(revoked)
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
        for listener in self._listeners:
            listener.set_repository(newer)
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
