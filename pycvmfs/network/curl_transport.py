"""One GET through libcurl (pycurl), streamed into a sink: the default transport.

Why: per object, urllib3 spends about 0.3 ms of CPU in Python on a kept-alive connection
(request building, header dicts, pool bookkeeping, a receive per block); libcurl spends
0.03 ms, and the whole transfer runs with the interpreter lock released except for the
callbacks below. It is also what the reference client uses, with the same knobs: connect
timeout, low-speed limit and time, no redirects, HTTP and HTTPS only.

Each thread has its own easy handle (libcurl handles are single-threaded), which keeps its
connections alive between requests. Facts reported are those of `Urllib3Transport`
(`transport.Transport`): status, three headers, an error kind, bytes received. The
watchdog is the same, built from libcurl's pieces:
- connect: CONNECTTIMEOUT (`timeout`);
- status line, headers and interim (1xx) responses: one deadline, `timeout` after the
  connection is ready (`_Exchange.ready`, which libcurl calls right before it sends the
  request, on a new connection or a kept-alive one), checked by the progress callback
  (`_Exchange.progress`), which libcurl calls several times a second and after every
  block;
- body: LOW_SPEED_LIMIT over LOW_SPEED_TIME=`timeout`, and the sink's byte budget: a
  Content-Length above it is refused at the end of the headers, unread, and no more than
  one byte past it reaches the sink;
- error bodies (non-2xx) are read only up to `ERROR_BODY_BYTES`, else the connection is
  closed instead of drained.
A callback stops a transfer by returning a count other than the one it was given (or a
non-zero progress value); what stopped it is kept in `_Exchange`, never guessed from
libcurl's error code.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping

import pycurl

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

# libcurl's receive buffer, one per thread's handle and kept with it (touched: resident):
# a 1 GiB read of an empty cache ran at the same speed with 64 KiB, 128 KiB and 512 KiB
BUFFER_BYTES = 128 * 1024
_STOP = -1  # from a header or write callback: not the count given, so libcurl stops

# libcurl error codes -> ErrorKind (CURLE_*); what is not here is OTHER
_KINDS = {
    pycurl.E_COULDNT_RESOLVE_PROXY: ErrorKind.RESOLVE,
    pycurl.E_COULDNT_RESOLVE_HOST: ErrorKind.RESOLVE,
    pycurl.E_COULDNT_CONNECT: ErrorKind.CONNECT,
    pycurl.E_OPERATION_TIMEDOUT: ErrorKind.TIMEOUT,
    pycurl.E_PARTIAL_FILE: ErrorKind.SHORT_READ,
    pycurl.E_GOT_NOTHING: ErrorKind.SHORT_READ,
    pycurl.E_RECV_ERROR: ErrorKind.SHORT_READ,
    pycurl.E_SEND_ERROR: ErrorKind.SHORT_READ,
}


OLDEST_LIBCURL = 0x075000  # 7.80: PREREQFUNCTION, and every option and code used


def unusable() -> str | None:
    """Why this pycurl's libcurl cannot serve (too old for an option used), or None."""
    version = pycurl.version_info()
    if version[2] < OLDEST_LIBCURL:
        return f"libcurl {version[1]} is older than 7.80"
    if not hasattr(pycurl, "PREREQFUNCTION"):
        return f"pycurl {pycurl.version.split()[0]} lacks PREREQFUNCTION (7.45 or newer has it)"
    return None


class _Exchange:
    """One request's state, fed by libcurl's callbacks on the calling thread."""

    __slots__ = ("sink", "budget", "window", "clock", "deadline", "status", "headers",
                 "headers_done", "received", "error_body", "stop_kind", "detail", "bad_data",
                 "raised")

    def __init__(self, sink: Sink, window: float, clock: Callable[[], float]) -> None:
        self.sink, self.budget = sink, sink.budget
        self.window, self.clock = window, clock
        self.deadline: float | None = None  # for status and headers, once connected
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.received = 0
        self.error_body = 0  # bytes of a non-2xx body seen
        self.stop_kind: ErrorKind | None = None  # why a callback stopped the transfer
        self.detail = ""
        self.bad_data = False
        self.raised: BaseException | None = None  # a local failure of the sink

    def header(self, line: bytes) -> int | None:
        if line.startswith(b"HTTP/"):  # a (new, after an interim 1xx) response begins
            parts = line.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            self.headers, self.headers_done = {}, False
            return None
        name, colon, value = line.partition(b":")
        if colon:
            key = name.strip().lower().decode("latin-1")
            if key in ("x-squid-error", "proxy-status", "date", "content-length"):
                self.headers[key] = value.strip().decode("latin-1")
            return None
        if line.strip() or self.status is None or 100 <= self.status < 200:
            return None
        self.headers_done = True  # the blank line after a final response's headers
        if 200 <= self.status < 300:
            length = self.headers.get("content-length")
            refused = refused_length(int(length) if length and length.isdigit() else None,
                                     self.budget)
            if refused is not None:
                self.bad_data, self.detail = True, refused
                return _STOP
        return None

    def write(self, block: bytes) -> int | None:
        status = self.status
        if status is None or not 200 <= status < 300:
            self.error_body += len(block)
            return _STOP if self.error_body > ERROR_BODY_BYTES else None
        room = self.budget + 1 - self.received  # one byte past the budget, no more
        if len(block) > room:
            block = block[:room]
        self.received += len(block)
        try:
            self.sink.write(block)
        except IntegrityError as exc:
            self.bad_data, self.detail = True, str(exc)
            return _STOP
        except BaseException as exc:
            self.raised = exc
            return _STOP
        return None

    def ready(self, _peer: str, _local: str, _peer_port: int, _local_port: int) -> int:
        """The connection is ready (connecting has its own timeout, CONNECTTIMEOUT)."""
        self.deadline = self.clock() + self.window
        return pycurl.PREREQFUNC_OK

    def progress(self, _dl_total: int, _dl_now: int, _ul_total: int, _ul_now: int) -> int:
        deadline = self.deadline
        if self.headers_done or deadline is None or self.clock() < deadline:
            return 0
        self.stop_kind = ErrorKind.TIMEOUT
        return 1


def _local_exhaustion(code: int, os_errno: int) -> int | None:
    """The errno of a transfer that failed for want of descriptors or memory on this
    machine: libcurl says "out of memory" when it cannot even make its internal socket
    pair, so the descriptor count tells which of the two ran out."""
    if os_errno in LOCAL_RESOURCE_ERRNOS:
        return os_errno
    if code != pycurl.E_OUT_OF_MEMORY:
        return None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        near_limit = soft != resource.RLIM_INFINITY and len(os.listdir("/proc/self/fd")) >= soft - 8
    except OSError as exc:  # /proc/self/fd could not be listed: a descriptor is missing too
        near_limit = exc.errno in (errno.EMFILE, errno.ENFILE)
    return errno.EMFILE if near_limit else errno.ENOMEM


class _Finished:
    """What an exchange writes to once its transfer is over: nothing may arrive."""

    budget = 0

    def write(self, data: bytes) -> None:
        raise RuntimeError("a block after the end of its transfer")

    def reset(self) -> None:
        pass


_DONE = _Finished()


class CurlTransport:
    """Pooled HTTP/1.1 through libcurl, one easy handle per thread (see the module
    docstring). Thread-safe; `close()` once at the end closes every handle."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 block_bytes: int = BLOCK_BYTES) -> None:
        self._clock = clock
        self._buffer = max(16 * 1024, min(block_bytes, BUFFER_BYTES))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: weakref.WeakSet[pycurl.Curl] = weakref.WeakSet()  # a thread's goes with it
        self._ca: tuple[str | None, str | None] | None = None

    def _handle(self) -> pycurl.Curl:
        handle: pycurl.Curl | None = getattr(self._local, "handle", None)
        if handle is None:
            handle = pycurl.Curl()
            for option, value in ((pycurl.NOSIGNAL, 1), (pycurl.FOLLOWLOCATION, 0),
                                  (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
                                  (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
                                  (pycurl.BUFFERSIZE, self._buffer), (pycurl.NOPROGRESS, 0),
                                  (pycurl.MAXCONNECTS, 4)):
                handle.setopt(option, value)
            self._local.handle = handle
            with self._lock:
                self._handles.add(handle)
        return handle

    def _trust_system_cas(self, handle: pycurl.Curl) -> None:
        """The system CAs, as Python finds them (the wheel's libcurl may look elsewhere);
        looked up at the first HTTPS request only."""
        if self._ca is None:
            import ssl  # loads OpenSSL's bindings: only for HTTPS

            paths = ssl.get_default_verify_paths()
            self._ca = (paths.cafile, paths.capath)
        cafile, capath = self._ca
        if cafile:
            handle.setopt(pycurl.CAINFO, cafile)
        if capath:
            handle.setopt(pycurl.CAPATH, capath)

    def get(self, url: str, *, proxy: ProxyChoice, headers: Mapping[str, str], sink: Sink,
            timeout: float, low_speed_limit: int) -> Outcome:
        via_proxy = not isinstance(proxy, Direct)
        handle = self._handle()
        if uses_tls(url, proxy):
            self._trust_system_cas(handle)
        exchange = _Exchange(sink, timeout, self._clock)
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.PROXY, proxy.url if isinstance(proxy, Proxy) else "")
        handle.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" if value else f"{name};"
                                          for name, value in headers.items()])
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(timeout * 1000)))
        handle.setopt(pycurl.LOW_SPEED_LIMIT, max(1, low_speed_limit))
        handle.setopt(pycurl.LOW_SPEED_TIME, max(1, round(timeout)))
        handle.setopt(pycurl.HEADERFUNCTION, exchange.header)
        handle.setopt(pycurl.WRITEFUNCTION, exchange.write)
        handle.setopt(pycurl.PREREQFUNCTION, exchange.ready)
        handle.setopt(pycurl.XFERINFOFUNCTION, exchange.progress)
        code, message = 0, ""
        try:
            handle.perform()
        except pycurl.error as exc:
            code, message = int(exc.args[0]), str(exc.args[1]) if len(exc.args) > 1 else ""
        finally:  # the handle keeps its callbacks until the next request: not the sink
            exchange.sink = _DONE
        if exchange.raised is not None:
            raise exchange.raised
        if code:
            local = _local_exhaustion(code, int(handle.getinfo(pycurl.OS_ERRNO)))
            if local is not None:  # this machine's limit, not the route's fault: no failover
                raise OSError(local, f"{os.strerror(local)} (libcurl: {message}) while "
                              f"opening a connection for {url}")
        return self._outcome(exchange, via_proxy, code, message, timeout, low_speed_limit)

    @staticmethod
    def _outcome(exchange: _Exchange, via_proxy: bool, code: int, message: str,
                 timeout: float, low_speed_limit: int) -> Outcome:
        headers = exchange.headers
        status = exchange.status if exchange.headers_done else None
        facts = Outcome(status, via_proxy=via_proxy,
                        x_squid_error=headers.get("x-squid-error"),
                        proxy_status=headers.get("proxy-status"), date=headers.get("date"))
        if status is not None and not 200 <= status < 300:
            return dataclasses.replace(facts, detail=f"HTTP {status}")
        if exchange.bad_data:
            return dataclasses.replace(facts, bytes_received=exchange.received, bad_data=True,
                                       detail=exchange.detail)
        in_headers = exchange.deadline is not None and not exchange.headers_done
        if exchange.stop_kind is ErrorKind.TIMEOUT or (
                in_headers and code == pycurl.E_OPERATION_TIMEDOUT):  # low speed: no body yet
            return Outcome(None, ErrorKind.TIMEOUT, via_proxy,
                           detail=f"no complete status line and headers within {timeout:g} s")
        if code == 0:
            return dataclasses.replace(facts, bytes_received=exchange.received)
        kind = _KINDS.get(code, ErrorKind.OTHER)
        if code == pycurl.E_OPERATION_TIMEDOUT and "too slow" in message.lower():
            kind, message = ErrorKind.LOW_SPEED, f"below {low_speed_limit} B/s"
        if status is None:
            return Outcome(None, kind, via_proxy, bytes_received=exchange.received,
                           detail=message)
        return dataclasses.replace(facts, error=kind, bytes_received=exchange.received,
                                   detail=message)

    def close(self) -> None:
        with self._lock:
            handles, self._handles = list(self._handles), weakref.WeakSet()
        for handle in handles:
            handle.close()


