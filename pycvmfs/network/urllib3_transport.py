"""One GET through urllib3, streamed into a sink: the transport where pycurl is missing
(`transport.default_transport`).

`Urllib3Transport` keeps one connection pool per proxy (keep-alive) and streams in blocks.
urllib3 exceptions are mapped to `ErrorKind` in one place, `_error_kind`.

The watchdog covers the whole response, from the first byte of the request to the last byte
of the body:
- connect: urllib3's connect timeout (`timeout`);
- status line, headers and any interim (1xx) responses: one deadline, `timeout` seconds after
  the connection is ready (after the request starts on a kept-alive connection).
  urllib3/http.client time out per socket operation only, so the pools make their
  connections with `_DeadlineSocket` (`_DeadlineSSLSocket` for TLS), whose receives never
  wait past the deadline armed for the calling thread (`_header_deadline`); a trickled
  status line or an endless `100 Continue` fails there;
- body: the low-speed limit, measured per `timeout` window (`_SpeedMeter`), with the read
  timeout as the floor for a fully stalled link, and the sink's byte budget: a Content-Length
  above it is refused before the body is read, and no more than one byte past it is read;
- error bodies (non-2xx) are read only up to `ERROR_BODY_BYTES`, under the same meter, else
  the connection is closed instead of drained.

Thread-safety: `Urllib3Transport` may be used by many threads at once (urllib3 pools are
thread-safe; the pool table is guarded by a lock; header deadlines are per thread).
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
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
from urllib3.util.ssl_ import create_urllib3_context

from pycvmfs.errors import LOCAL_RESOURCE_ERRNOS, IntegrityError
from pycvmfs.network.failure import ErrorKind, Outcome
from pycvmfs.network.proxies import Direct, Proxy, ProxyChoice
from pycvmfs.network.sink import Sink
from pycvmfs.network.transport import (
    BLOCK_BYTES,
    ERROR_BODY_BYTES,
    refused_length,
    uses_tls,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_T = TypeVar("_T")

POOL_MAXSIZE = 16  # kept-alive connections per proxy (or direct host); reader threads + prefetch
# what urllib3 builds from `retries=False, redirect=False` on every request, built once
NO_RETRIES = urllib3.Retry(total=False, redirect=False)


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


def local_exhaustion(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` if it says this process or machine ran out of descriptors or
    memory (a socket could not even be made): raised to the caller as it is, never blamed on
    a host or proxy, which would mark a healthy route broken."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in LOCAL_RESOURCE_ERRNOS:
            return current
        inner = getattr(current, "original_error", None) or getattr(current, "reason", None)
        current = inner if isinstance(inner, BaseException) else \
            (current.__cause__ or current.__context__)
    return None


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


# --- the header watchdog: receives that never wait past a per-thread deadline --------------


class _HeaderWindow(threading.local):
    """The response-header deadline of the request the current thread is making (None: no
    request in its header phase). `window` restarts it once a new connection is ready."""

    window: float | None = None
    deadline: float | None = None


_HEADERS = _HeaderWindow()


@contextmanager
def _header_deadline(window: float) -> Iterator[None]:
    """Within the block, this thread's receives on pool sockets end by `window` s from now
    (from when a new connection is ready, if one is made: `_restart_header_window`)."""
    _HEADERS.window, _HEADERS.deadline = window, time.monotonic() + window
    try:
        yield
    finally:
        _HEADERS.window = _HEADERS.deadline = None


def _restart_header_window() -> None:
    """Connecting has its own timeout: the header window counts from the ready connection."""
    if _HEADERS.window is not None:
        _HEADERS.deadline = time.monotonic() + _HEADERS.window


def receive_timeout(current: float | None, deadline: float | None, now: float) -> float | None:
    """The socket timeout for one receive: `current`, shortened to reach no further than
    `deadline`; TimeoutError when the deadline has passed."""
    if deadline is None:
        return current
    remaining = deadline - now
    if remaining <= 0:
        raise TimeoutError("no complete response status line and headers in time")
    return remaining if current is None or remaining < current else current


def _within_deadline(sock: socket.socket, receive: Callable[[], _T]) -> _T:
    """Run one receive of `sock` with its timeout shortened to the thread's header
    deadline (restored afterwards: the body phase has the plain read timeout)."""
    saved = sock.gettimeout()
    bounded = receive_timeout(saved, _HEADERS.deadline, time.monotonic())
    if bounded == saved:
        return receive()
    sock.settimeout(bounded)
    try:
        return receive()
    finally:
        sock.settimeout(saved)


class _DeadlineSocket(socket.socket):
    """A plain TCP socket whose receives honour the thread's header deadline."""

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        return _within_deadline(self, functools.partial(super().recv_into, buffer, nbytes,
                                                        flags))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return _within_deadline(self, functools.partial(super().recv, bufsize, flags))

    @classmethod
    def adopt(cls, sock: socket.socket) -> _DeadlineSocket:
        """The same connection (file descriptor, options, timeout) as a `_DeadlineSocket`."""
        timeout = sock.gettimeout()
        watched = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        watched.settimeout(timeout)
        return watched


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart (`SSLContext.sslsocket_class`): same rule for decrypted reads."""

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None,
                  flags: int = 0) -> int:
        return _within_deadline(self, functools.partial(super().recv_into, buffer, nbytes,
                                                        flags))


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = _DeadlineSocket.adopt(super()._new_conn())
        _restart_header_window()
        return sock


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = _DeadlineSocket.adopt(super()._new_conn())
        _restart_header_window()
        return sock


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _watched_tls_context() -> ssl.SSLContext:
    """urllib3's default context (system CAs, verified), making `_DeadlineSSLSocket`s."""
    context = create_urllib3_context()
    context.load_default_certs()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


def _watched(pool: urllib3.PoolManager) -> urllib3.PoolManager:
    pool.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
    return pool


# --- the transport ---------------------------------------------------------------------------


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
        self._tls: ssl.SSLContext | None = None

    def _pool(self, proxy: ProxyChoice, tls: bool) -> urllib3.PoolManager:
        """The manager of `proxy`; with `tls`, one that verifies TLS with the system CAs,
        which take 40 ms to load: a mount of plain-HTTP Stratum-1s never pays for them."""
        with self._lock:
            pool = self._pools.get(proxy)
            if pool is None:
                if isinstance(proxy, Proxy):
                    pool = urllib3.ProxyManager(proxy.url, maxsize=POOL_MAXSIZE, block=False)
                else:
                    pool = urllib3.PoolManager(maxsize=POOL_MAXSIZE, block=False)
                self._pools[proxy] = _watched(pool)
            if tls and "ssl_context" not in pool.connection_pool_kw:  # read at pool creation
                if self._tls is None:
                    self._tls = _watched_tls_context()
                pool.connection_pool_kw["ssl_context"] = self._tls
            return pool

    def get(self, url: str, *, proxy: ProxyChoice, headers: Mapping[str, str], sink: Sink,
            timeout: float, low_speed_limit: int) -> Outcome:
        via_proxy = not isinstance(proxy, Direct)
        try:
            with _header_deadline(timeout):
                tls = uses_tls(url, proxy)
                response = self._pool(proxy, tls).request(
                    "GET", url, headers=dict(headers), preload_content=False,
                    decode_content=False, retries=NO_RETRIES, redirect=False,
                    timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except HTTPError as exc:
            local = local_exhaustion(exc)
            if local is not None:  # this machine's limit, not the route's fault: no failover
                raise local from exc
            detail = str(exc)
            if isinstance(exc, ReadTimeoutError):
                detail = f"no complete status line and headers within {timeout:g} s"
            return Outcome(None, _error_kind(exc), via_proxy, detail=detail)
        status = response.status
        facts = Outcome(status, via_proxy=via_proxy,
                        x_squid_error=response.headers.get("X-Squid-Error"),
                        proxy_status=response.headers.get("Proxy-Status"),
                        date=response.headers.get("Date"))
        if not 200 <= status < 300:
            self._discard(response, timeout, low_speed_limit)
            return dataclasses.replace(facts, detail=f"HTTP {status}")
        refused = refused_length(response.length_remaining, sink.budget)
        if refused is not None:
            response.close()
            response.release_conn()
            return dataclasses.replace(facts, bad_data=True, detail=refused)
        error, received, detail = self._stream(response, sink, timeout, low_speed_limit)
        return dataclasses.replace(facts, error=error, bytes_received=received,
                                   bad_data=error is ErrorKind.NONE and detail != "",
                                   detail=detail)

    def _stream(self, response: urllib3.BaseHTTPResponse, sink: Sink, timeout: float,
                low_speed_limit: int) -> tuple[ErrorKind, int, str]:
        """Body -> sink; (error kind, bytes received, detail). Reads at most one byte past the
        sink's budget. Closes the connection on error. Only receiving is the network's
        fault: an error of the sink other than IntegrityError (a full local disk) is raised."""
        meter = _SpeedMeter(low_speed_limit, timeout, self._clock)
        received, budget = 0, sink.budget
        try:
            while True:
                try:
                    block = response.read1(min(self._block, budget - received + 1))
                except (HTTPError, OSError) as exc:
                    response.close()
                    return _error_kind(exc), received, str(exc)
                if not block:
                    return ErrorKind.NONE, received, ""
                received += len(block)
                try:
                    sink.write(block)
                except IntegrityError as exc:
                    response.close()
                    return ErrorKind.NONE, received, str(exc)
                except BaseException:
                    response.close()
                    raise
                if meter.too_slow(len(block)):
                    response.close()
                    return ErrorKind.LOW_SPEED, received, f"below {low_speed_limit} B/s"
        finally:
            response.release_conn()

    def _discard(self, response: urllib3.BaseHTTPResponse, timeout: float,
                 low_speed_limit: int) -> None:
        """Read a short error body so the connection can be kept; a long, endless or slow
        one closes the connection instead of being drained."""
        meter = _SpeedMeter(low_speed_limit, timeout, self._clock)
        seen = 0
        try:
            while seen <= ERROR_BODY_BYTES:
                block = response.read1(ERROR_BODY_BYTES + 1 - seen)
                if not block:
                    response.release_conn()
                    return
                seen += len(block)
                if meter.too_slow(len(block)):
                    break
        except (HTTPError, OSError):
            pass
        response.close()
        response.release_conn()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.clear()
