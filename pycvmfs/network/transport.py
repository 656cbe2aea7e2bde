"""The only code in pycvmfs that touches sockets: one GET, streamed into a sink.

`Transport.get(url, *, proxy, headers, sink, timeout, low_speed_limit) -> Outcome` reports facts
(status, three headers, an error kind, bytes received); it never raises for network trouble and
never decides blame (that is `failure.classify`). Two implementations keep the same watchdog
(connect timeout; status line and headers within one deadline; the low-speed limit; the sink's
byte budget, a Content-Length above it refused unread; error bodies read up to
ERROR_BODY_BYTES): `curl_transport.CurlTransport` (libcurl through pycurl, the default) and
`urllib3_transport.Urllib3Transport` where pycurl cannot be imported. `default_transport`
picks; this module imports neither library.

`MockTransport` serves policy tests without sockets; it is as thread-safe as its handler.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from pycvmfs import __version__
from pycvmfs.errors import IntegrityError
from pycvmfs.network.failure import ErrorKind, Outcome
from pycvmfs.network.proxies import Direct, Proxy, ProxyChoice
from pycvmfs.network.sink import Sink, over_budget

log = logging.getLogger(__name__)

USER_AGENT = f"cvmfs Fuse pycvmfs/{__version__}"
BLOCK_BYTES = 1 << 20  # one socket read at most: fewer Python round trips per verified MiB
ERROR_BODY_BYTES = 64 * 1024  # an error body longer than this closes the connection
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
        """GET `url`; body blocks go to `sink` only for a 2xx response, within its budget."""
        ...

    def close(self) -> None: ...


def uses_tls(url: str, proxy: ProxyChoice) -> bool:
    """Whether a request for `url` through `proxy` speaks TLS (to the host or the proxy):
    only then are the system CAs loaded."""
    return url[:6].lower() == "https:" or (isinstance(proxy, Proxy)
                                           and proxy.url[:6].lower() == "https:")


def refused_length(content_length: int | None, budget: int) -> str | None:
    """Why a response announcing `content_length` bytes is refused unread (None: it is not)."""
    if content_length is None or content_length <= budget:
        return None
    return f"Content-Length {content_length} refused: " + over_budget(content_length, budget)


def default_transport() -> Transport:
    """libcurl's transport where pycurl imports (a tenth of urllib3's CPU per object, the
    transfer outside the interpreter lock), else urllib3's, with one line saying why."""
    problem: str | None
    try:
        from pycvmfs.network.curl_transport import CurlTransport, unusable
    except ImportError as exc:
        problem = f"pycurl cannot be imported ({exc})"
    else:
        problem = unusable()
        if problem is None:
            return CurlTransport()
    log.info("%s: downloading through urllib3 instead", problem)
    from pycvmfs.network.urllib3_transport import Urllib3Transport
    return Urllib3Transport()


Body = bytes | Iterable[bytes]
Handler = Callable[[str, ProxyChoice, Mapping[str, str]], tuple[int, Mapping[str, str], Body]]


class MockTransport:
    """Policy tests without sockets: `handler(url, proxy, headers) -> (status, headers, body)`;
    the body is bytes or an iterable of blocks (possibly endless: it is consumed only up to
    the sink's budget). A `Content-Length` header above the budget is refused unread, as the
    real transport does. Raise `MockTransport.Error(kind)` from the handler to simulate a
    transport error."""

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
        facts = Outcome(status, via_proxy=via_proxy,
                        x_squid_error=response_headers.get("X-Squid-Error"),
                        proxy_status=response_headers.get("Proxy-Status"),
                        date=response_headers.get("Date"))
        if not 200 <= status < 300:
            return facts
        length = response_headers.get("Content-Length")
        refused = refused_length(int(length) if length is not None else None, sink.budget)
        if refused is not None:
            return dataclasses.replace(facts, bad_data=True, detail=refused)
        received = 0
        try:
            for block in [body] if isinstance(body, bytes) else body:
                received += len(block)
                sink.write(block)
        except IntegrityError as exc:
            return dataclasses.replace(facts, bytes_received=received, bad_data=True,
                                       detail=str(exc))
        return dataclasses.replace(facts, bytes_received=received)

    def close(self) -> None:
        """Nothing to release."""
