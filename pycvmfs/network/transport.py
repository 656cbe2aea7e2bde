"""The only code in pycvmfs that touches sockets: one GET, streamed into a sink.

`Transport.get(url, *, proxy, headers, sink, timeout, low_speed_limit) -> Outcome` reports facts
(status, two headers, an error kind, bytes received); it never raises for network trouble and
never decides blame (that is `failure.classify`). `Urllib3Transport` keeps one connection pool
per proxy (keep-alive), streams in blocks and enforces the low-speed limit by measuring
throughput per `timeout` window; urllib3's read timeout is the floor for a fully stalled link.
urllib3 exceptions are mapped to `ErrorKind` in one place, `_error_kind`.

Thread-safety: `Urllib3Transport` may be used by many threads at once (urllib3 pools are
thread-safe; the pool table is guarded by a lock). `MockTransport` is as safe as its handler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    IncompleteRead,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
)

from pycvmfs import __version__
from pycvmfs.errors import IntegrityError
from pycvmfs.network.failure import ErrorKind, Outcome
from pycvmfs.network.proxies import Direct, Proxy, ProxyChoice
from pycvmfs.network.sink import Sink

USER_AGENT = f"cvmfs Fuse pycvmfs/{__version__}"
BLOCK_BYTES = 1 << 20  # one socket read at most: fewer Python round trips per verified MiB
POOL_MAXSIZE = 16  # kept-alive connections per proxy (or direct host); reader threads + prefetch
BASE_HEADERS: Mapping[str, str] = {
    "Connection": "Keep-Alive",
    "Pragma": "",  # the reference client sends an empty Pragma (fact sheet 8.5)
    "User-Agent": USER_AGENT,
}
NO_CACHE_HEADERS: Mapping[str, str] = {"Pragma": "no-cache", "Cache-Control": "no-cache"}


def request_headers(no_cache: bool = False) -> dict[str, str]:
    """Headers of a normal request, or of the no-cache retry after BAD_DATA."""
    headers = dict(BASE_HEADERS)
    if no_cache:
        headers.update(NO_CACHE_HEADERS)
    return headers


class Transport(Protocol):
    def get(self, url: str, *, proxy: ProxyChoice, headers: Mapping[str, str], sink: Sink,
            timeout: float, low_speed_limit: int) -> Outcome:
        """GET `url`; body blocks go to `sink` only for a 2xx response."""
        ...

    def close(self) -> None: ...


def _error_kind(exc: BaseException) -> ErrorKind:
    """urllib3 (and socket) exceptions -> ErrorKind; the single translation point."""
    if isinstance(exc, ProxyError):
        inner = exc.original_error if isinstance(exc.original_error, BaseException) else None
        return _error_kind(inner) if inner is not None else ErrorKind.CONNECT
    if isinstance(exc, NameResolutionError):
        return ErrorKind.RESOLVE
    if isinstance(exc, NewConnectionError | ConnectionRefusedError):
        return ErrorKind.CONNECT  # before ConnectTimeoutError: urllib3 derives one from it
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, ProtocolError | IncompleteRead | ConnectionError):
        return ErrorKind.SHORT_READ
    return ErrorKind.OTHER


class _SpeedMeter:
    """Low-speed detection: fewer than `limit * window` bytes in any `window` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit, self._window, self._clock = limit, window, clock
        self._start = clock()
        self._bytes = 0

    def too_slow(self, received: int) -> bool:
        self._bytes += received
        elapsed = self._clock() - self._start
        if elapsed < self._window:
            return False
        if self._bytes < self._limit * elapsed:
            return True
        self._start, self._bytes = self._clock(), 0
        return False


class Urllib3Transport:
    """Pooled HTTP/1.1 with one urllib3 manager per proxy (and one for DIRECT).

    Thread-safe: share one instance per mount; `close()` once at the end (it closes every
    kept-alive socket)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 block_bytes: int = BLOCK_BYTES) -> None:
        self._clock = clock
        self._block = block_bytes
        self._lock = threading.Lock()
        self._pools: dict[ProxyChoice, urllib3.PoolManager] = {}

    def _pool(self, proxy: ProxyChoice) -> urllib3.PoolManager:
        with self._lock:
            pool = self._pools.get(proxy)
            if pool is None:
                if isinstance(proxy, Proxy):
                    pool = urllib3.ProxyManager(proxy.url, maxsize=POOL_MAXSIZE, block=False)
                else:
                    pool = urllib3.PoolManager(maxsize=POOL_MAXSIZE, block=False)
                self._pools[proxy] = pool
            return pool

    def get(self, url: str, *, proxy: ProxyChoice, headers: Mapping[str, str], sink: Sink,
            timeout: float, low_speed_limit: int) -> Outcome:
        via_proxy = not isinstance(proxy, Direct)
        try:
            response = self._pool(proxy).request(
                "GET", url, headers=dict(headers), preload_content=False, decode_content=False,
                retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except HTTPError as exc:
            return Outcome(None, _error_kind(exc), via_proxy, detail=str(exc))
        status = response.status
        squid_error = response.headers.get("X-Squid-Error")
        proxy_status = response.headers.get("Proxy-Status")
        if not 200 <= status < 300:
            response.drain_conn()
            response.release_conn()
            return Outcome(status, ErrorKind.NONE, via_proxy, squid_error, proxy_status,
                           detail=f"HTTP {status}")
        error, received, detail = self._stream(response, sink, timeout, low_speed_limit)
        return Outcome(status, error, via_proxy, squid_error, proxy_status, received,
                       bad_data=error is ErrorKind.NONE and detail != "", detail=detail)

    def _stream(self, response: urllib3.BaseHTTPResponse, sink: Sink, timeout: float,
                low_speed_limit: int) -> tuple[ErrorKind, int, str]:
        """Body -> sink; (error kind, bytes received, detail). Closes the connection on error."""
        meter = _SpeedMeter(low_speed_limit, timeout, self._clock)
        received = 0
        try:
            while True:
                block = response.read1(self._block)
                if not block:
                    break
                received += len(block)
                sink.write(block)
                if meter.too_slow(len(block)):
                    response.close()
                    return ErrorKind.LOW_SPEED, received, f"below {low_speed_limit} B/s"
        except IntegrityError as exc:
            response.close()
            return ErrorKind.NONE, received, str(exc)
        except (HTTPError, OSError) as exc:
            response.close()
            return _error_kind(exc), received, str(exc)
        finally:
            response.release_conn()
        return ErrorKind.NONE, received, ""

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.clear()


Handler = Callable[[str, ProxyChoice, Mapping[str, str]], tuple[int, Mapping[str, str], bytes]]


class MockTransport:
    """Policy tests without sockets: `handler(url, proxy, headers) -> (status, headers, body)`;
    raise `MockTransport.Error(kind)` from the handler to simulate a transport error."""

    class Error(Exception):
        def __init__(self, kind: ErrorKind) -> None:
            super().__init__(kind.value)
            self.kind = kind

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[tuple[str, ProxyChoice, dict[str, str]]] = []

    def get(self, url: str, *, proxy: ProxyChoice, headers: Mapping[str, str], sink: Sink,
            timeout: float, low_speed_limit: int) -> Outcome:
        via_proxy = not isinstance(proxy, Direct)
        self.requests.append((url, proxy, dict(headers)))
        try:
            status, response_headers, body = self._handler(url, proxy, headers)
        except MockTransport.Error as exc:
            return Outcome(None, exc.kind, via_proxy, detail=str(exc))
        outcome = Outcome(status, via_proxy=via_proxy,
                          x_squid_error=response_headers.get("X-Squid-Error"),
                          proxy_status=response_headers.get("Proxy-Status"),
                          bytes_received=len(body) if 200 <= status < 300 else 0)
        if 200 <= status < 300:
            try:
                sink.write(body)
            except IntegrityError as exc:
                return Outcome(status, via_proxy=via_proxy, bad_data=True, detail=str(exc))
        return outcome

    def close(self) -> None:
        """Nothing to release."""
