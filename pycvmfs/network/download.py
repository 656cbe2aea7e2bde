"""The download loop: drive the failover plan, the transport and the sink until verified bytes.

`Downloader.download(path, sink)` asks the plan (`failover.plan`) for an attempt, sleeps its
backoff, resets the sink, calls the transport, verifies the sink (the one place an object's
bytes are checked, `_finish_attempt`), classifies, and sends the Failure back into the plan.
The sink carries the download's byte budget; a response over it (announced or streamed, or a
bomb inflating past the object's size) is cut by the transport and counts as BAD_DATA from
that host, so the plan retries once without caches and then moves to the next host.
When the plan gives up, `FetchError` lists every attempt (URL, proxy, reason). Each failure is
logged with URL, proxy and reason; counters feed the magic xattrs (`user.rx`, `user.ndownload`,
`user.nioerr`, `user.speed`) and, by Stratum-1 (`HostCounters`: downloads, bytes, failed
attempts, retries on the same host, failovers away from it) and by proxy (errors), the
stats document `pycvmfs status` and `pycvmfs metrics` read.

Thread-safety: a `Downloader` is shared by all reader threads; `RouteState` and the transport
are thread-safe and the statistics are updated under a lock. Each call needs its own sink.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pycvmfs.errors import FetchError, IntegrityError
from pycvmfs.format.hashes import ContentHash, Hasher
from pycvmfs.network.failover import Attempt, Backoff, RouteState, plan
from pycvmfs.network.failure import ErrorKind, Failure, Outcome, classify
from pycvmfs.network.proxies import Direct
from pycvmfs.network.sink import MemorySink, Sink
from pycvmfs.network.transport import Transport, request_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DownloadSettings:
    """Fact sheet 8.3 knobs; defaults are the reference client's default.conf values."""

    timeout: float = 5.0  # CVMFS_TIMEOUT: connect timeout and low-speed window via a proxy
    timeout_direct: float = 10.0  # CVMFS_TIMEOUT_DIRECT
    low_speed_limit: int = 1024  # CVMFS_LOW_SPEED_LIMIT, bytes/s
    max_retries: int = 1  # CVMFS_MAX_RETRIES
    backoff_init: float = 2.0  # CVMFS_BACKOFF_INIT, s
    backoff_max: float = 10.0  # CVMFS_BACKOFF_MAX, s


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    url: str
    proxy: str
    reason: str

    def __str__(self) -> str:
        return f"{self.url} via {self.proxy}: {self.reason}"


@dataclass(frozen=True, slots=True)
class DownloadResult:
    url: str
    proxy: str
    bytes_received: int
    attempts: tuple[AttemptRecord, ...]  # the failed ones before success


@dataclass(slots=True)
class HostCounters:
    """What one Stratum-1 (a `CVMFS_SERVER_URL` entry) did for this downloader."""

    downloads: int = 0  # verified downloads it served
    bytes: int = 0  # bytes received from it, failed attempts included
    errors: int = 0  # failed attempts
    retries: int = 0  # attempts repeated on it after a failure
    failovers: int = 0  # downloads that moved on to another host after failing here
    seconds: float = 0.0  # time spent in transfers from it


@dataclass(frozen=True, slots=True)
class Statistics:
    bytes_received: int
    downloads: int
    errors: int
    seconds: float
    hosts: dict[str, HostCounters] = dataclasses.field(default_factory=dict)  # copies
    proxy_errors: dict[str, int] = dataclasses.field(default_factory=dict)  # failed attempts

    @property
    def speed(self) -> float:
        """Average bytes/s over the time spent downloading (`user.speed`)."""
        return self.bytes_received / self.seconds if self.seconds > 0 else 0.0


@runtime_checkable
class VerifiableSink(Protocol):
    def verify(self) -> None: ...


class Downloader:
    """Verified downloads of repository-relative paths through the shared route state.

    Thread-safe: one instance serves every reader thread; give each call its own sink."""

    def __init__(self, transport: Transport, route_state: RouteState,
                 settings: DownloadSettings | None = None, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.transport = transport
        self.route_state = route_state
        self.settings = settings or DownloadSettings()
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._rx = self._ndownload = self._nerrors = 0
        self._seconds = 0.0
        self._hosts: dict[str, HostCounters] = {}
        self._proxy_errors: dict[str, int] = {}

    def statistics(self) -> Statistics:
        with self._lock:
            return Statistics(self._rx, self._ndownload, self._nerrors, self._seconds,
                              {h: dataclasses.replace(c) for h, c in self._hosts.items()},
                              dict(self._proxy_errors))

    def _host(self, attempt: Attempt) -> HostCounters:
        """The counters of `attempt`'s Stratum-1; the caller holds the lock."""
        host = attempt.route.host if attempt.route is not None else attempt.url
        counters = self._hosts.get(host)
        if counters is None:
            counters = self._hosts[host] = HostCounters()
        return counters

    def _count(self, attempt: Attempt, received: int, seconds: float,
               failure: Failure) -> None:
        with self._lock:
            self._rx += received
            self._seconds += seconds
            host = self._host(attempt)
            host.bytes += received
            host.seconds += seconds
            if failure is Failure.OK:
                self._ndownload += 1
                host.downloads += 1
            else:
                self._nerrors += 1
                host.errors += 1
                if failure.is_proxy:
                    proxy = str(attempt.proxy)
                    self._proxy_errors[proxy] = self._proxy_errors.get(proxy, 0) + 1

    def _count_next(self, failed: Attempt, following: Attempt) -> None:
        """After a failed attempt: a retry on the same host, or a failover away from it."""
        same = (failed.route is not None and following.route is not None
                and failed.route.host == following.route.host)
        with self._lock:
            host = self._host(failed)
            if same:
                host.retries += 1
            else:
                host.failovers += 1

    def download(self, path: str, sink: Sink, expected: ContentHash | None = None
                 ) -> DownloadResult:
        """Fetch `path` into `sink` until it verifies; FetchError listing every attempt.

        A sink with `verify()` (VerifyingSink) checks itself; `expected` is for a raw
        MemorySink, whose bytes are then hashed after each complete transfer."""
        s = self.settings
        steps = plan(self.route_state, path, now=self._clock, max_retries=s.max_retries,
                     backoff=Backoff(s.backoff_init, s.backoff_max), rng=self._rng)
        attempt = next(steps)
        failed: list[AttemptRecord] = []
        while True:
            outcome, failure = self._run(attempt, sink, expected)
            if failure is Failure.OK:
                return DownloadResult(attempt.url, str(attempt.proxy), outcome.bytes_received,
                                      tuple(failed))
            record = AttemptRecord(attempt.url, str(attempt.proxy), _reason(failure, outcome))
            failed.append(record)
            log.warning("download failed: %s", record)
            try:
                following = steps.send(failure)
            except StopIteration:
                raise FetchError(f"{path}: all {len(failed)} attempts failed: "
                                 + "; ".join(map(str, failed))) from None
            self._count_next(attempt, following)
            attempt = following

    def _run(self, attempt: Attempt, sink: Sink, expected: ContentHash | None
             ) -> tuple[Outcome, Failure]:
        """One attempt, verified and counted: its outcome and how it is classified."""
        if attempt.delay > 0:
            self._sleep(attempt.delay)
        s = self.settings
        timeout = s.timeout_direct if isinstance(attempt.proxy, Direct) else s.timeout
        sink.reset()
        start = self._clock()
        outcome = self.transport.get(attempt.url, proxy=attempt.proxy,
                                     headers=request_headers(attempt.no_cache), sink=sink,
                                     timeout=timeout, low_speed_limit=s.low_speed_limit)
        outcome = _finish_attempt(outcome, sink, expected)
        failure = classify(outcome)
        self._count(attempt, outcome.bytes_received, self._clock() - start, failure)
        return outcome, failure


def _finish_attempt(outcome: Outcome, sink: Sink, expected: ContentHash | None) -> Outcome:
    """Verify the sink after a complete 2xx transfer; a mismatch becomes bad_data (BAD_DATA)."""
    if classify(outcome) is not Failure.OK:
        return outcome
    try:
        if isinstance(sink, VerifiableSink):
            sink.verify()
        elif expected is not None and isinstance(sink, MemorySink):
            hasher = Hasher(expected.algorithm)
            hasher.update(sink.getvalue())
            got = hasher.finish()
            if got != expected:
                raise IntegrityError(f"object {expected}: content hashes to {got}")
    except IntegrityError as exc:
        return dataclasses.replace(outcome, bad_data=True, detail=str(exc))
    return outcome


def _reason(failure: Failure, outcome: Outcome) -> str:
    parts = [failure.value]
    if outcome.error is not ErrorKind.NONE:
        parts.append(outcome.error.value)
    if outcome.status is not None and not 200 <= outcome.status < 300:
        parts.append(f"HTTP {outcome.status}")
    if outcome.x_squid_error:
        parts.append(f"X-Squid-Error: {outcome.x_squid_error}")
    if outcome.detail and outcome.detail not in parts:
        parts.append(outcome.detail)
    if len(parts) == 1:
        return parts[0]
    return f"{parts[0]} ({', '.join(parts[1:])})"
