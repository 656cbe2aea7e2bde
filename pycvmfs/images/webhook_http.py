"""The webhook's HTTP front: http.server made strict and bounded for the open network.

The standard library parses the request line and the header fields; on top of it:
- framing (`request_body_length`, RFC 9112 section 6): Content-Length must be 1*DIGIT,
  given once or repeated with identical values (else 400: `+14`, `1_4`, `1e3`, two
  different lengths are request-smuggling ground); a request with Transfer-Encoding gets
  400 with Content-Length too or when chunked is not the final coding, 501 for other
  codings, and 411 for plain chunked (we want the length up front); POST without a length
  gets 411; a body over `max_body_bytes` gets 413 without being read;
- header fields (`check_header_fields`): a malformed line (e.g. whitespace before the
  colon), an obs-fold continuation, control characters, a field name that is not a token,
  a missing or repeated Host in HTTP/1.1: 400 (RFC 9112 sections 3.2, 5);
- time: the request head (the keep-alive wait included) must arrive within
  `header_seconds`, the body within `body_seconds`, each a total deadline however the
  bytes trickle (the connection is closed; a late body gets 408); answers are written
  with a `write_seconds` timeout;
- threads: at most `max_connections` connections at once, `max_connections_per_peer`
  from one address; beyond that a connection gets 503 (Retry-After) and is closed
  without being read, so slow clients cannot take every thread;
- `Expect: 100-continue` is answered only once the token and the length are accepted.

Requests: GET /healthz or /status -> `on_status()`; POST (any path) with `Authorization:
Bearer TOKEN` (constant-time check) -> `on_post(body)` -> (status, JSON object). nginx's
defaults were the model (client_header_timeout, client_body_timeout, limit_conn); the
limits here are stricter because a registry's webhook request is small and quick.
"""

from __future__ import annotations

import hmac
import http.server
import io
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING, Any

from pycvmfs.errors import ConfigError, ImageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20
_DIGITS_RE = re.compile(r"[0-9]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB; CR/LF: obs-fold
_MAX_LENGTH_DIGITS = 18  # longer is over any limit (and int() of it stays cheap)
_OVER_ANY_LIMIT: int = 10 ** _MAX_LENGTH_DIGITS

PostHandler = Callable[[bytes], tuple[int, Mapping[str, Any]]]
StatusHandler = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one caller can make the server hold (module docstring)."""

    header_seconds: float = 10.0
    body_seconds: float = 10.0
    write_seconds: float = 10.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_connections: int = 64
    max_connections_per_peer: int = 16


class FramingError(ImageError):
    """A request whose framing or header fields we refuse; `status` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_header_fields(headers: Message, request_version: str) -> None:
    """Refuse (FramingError 400) header fields the lenient email parser let through."""
    if headers.defects:
        raise FramingError(400, "malformed header section (a line without a colon, or "
                           "whitespace between a field name and its colon)")
    for name, value in headers.items():
        if not _TOKEN_RE.fullmatch(name):
            raise FramingError(400, f"header field name {name[:64]!r} is not a token")
        if "\r" in value or "\n" in value:
            raise FramingError(400, f"header field {name!r} is folded over lines (obs-fold)")
        if _BAD_VALUE_RE.search(value):
            raise FramingError(400, f"header field {name!r} holds control characters")
    if request_version == "HTTP/1.1" and len(headers.get_all("Host") or []) != 1:
        raise FramingError(400, "an HTTP/1.1 request needs exactly one Host header field")


def request_body_length(headers: Message) -> int | None:
    """The body's length from Content-Length (None when the request has none), or
    FramingError with the status RFC 9112 asks for (module docstring)."""
    codings = [part.strip().lower() for value in headers.get_all("Transfer-Encoding") or []
               for part in value.split(",")]
    lengths = [part.strip(" \t") for value in headers.get_all("Content-Length") or []
               for part in value.split(",")]
    if codings:
        if lengths:
            raise FramingError(400, "both Transfer-Encoding and Content-Length: refused")
        if codings[-1] != "chunked":
            raise FramingError(400, f"Transfer-Encoding {', '.join(codings)!r}: chunked is "
                               "not the final coding, the body length is unknown")
        if any(coding != "chunked" for coding in codings):
            raise FramingError(501, f"Transfer-Encoding {', '.join(codings)!r} is not "
                               "supported")
        raise FramingError(411, "chunked bodies are not accepted: send Content-Length")
    if not lengths:
        return None
    if any(not _DIGITS_RE.fullmatch(length) for length in lengths):
        shown = ", ".join(lengths)[:64]
        raise FramingError(400, f"Content-Length {shown!r} is not a decimal number")
    if len(set(lengths)) != 1:
        raise FramingError(400, f"Content-Length given with different values "
                           f"({', '.join(lengths)[:64]})")
    text = lengths[0]
    if len(text.lstrip("0")) > _MAX_LENGTH_DIGITS:
        return _OVER_ANY_LIMIT
    return int(text)


class _DeadlineReader(io.RawIOBase):
    """The socket's input with a total deadline over every read until the next `start`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = time.monotonic()
        self._what = "request"

    def start(self, seconds: float, what: str) -> None:
        self._deadline = time.monotonic() + seconds
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the {self._what} did not arrive in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WebhookHTTPServer
    server_version = "pycvmfs-webhook"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's reader: replaced by one with deadlines
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._body_length: int | None = None
        self._expect_continue = False

    def handle_one_request(self) -> None:
        self._reader.start(self.server.limits.header_seconds, "request head")
        self._body_length = None
        self._expect_continue = False
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        self._expect_continue = True  # answered in do_POST once the request is acceptable
        return True

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        try:
            check_header_fields(self.headers, self.request_version)
            self._body_length = request_body_length(self.headers)
        except FramingError as exc:
            self._refuse(exc.status, str(exc))
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("webhook: %s: %s", self.address_string(), format % args)

    def _answer(self, status: int, document: Mapping[str, Any]) -> None:
        body = (json.dumps(document, sort_keys=True) + "\n").encode()
        self.connection.settimeout(self.server.limits.write_seconds)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="pycvmfs-webhook"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, message: str) -> None:
        """Answer an error and close: the rest of what the client sent is not read."""
        self.close_connection = True
        log.info("webhook: %s: %d %s", self.address_string(), status, message)
        self._answer(status, {"error": message})

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "").strip().encode("utf-8", "replace")
        expected = f"Bearer {self.server.token}".encode()
        return hmac.compare_digest(given, expected)

    def do_GET(self) -> None:  # noqa: N802
        if self._body_length:  # a GET with a body we will not read
            self.close_connection = True
        if self.path.rstrip("/") in ("/healthz", "/status"):
            self._answer(200, {"status": "ok", **self.server.on_status()})
        else:
            self._answer(404, {"error": "POST events to /"})

    def do_POST(self) -> None:  # noqa: N802
        limits = self.server.limits
        if not self._authorized():
            self._refuse(401, "missing or wrong token")
            return
        length = self._body_length
        if length is None:
            self._refuse(411, "Content-Length required")
            return
        if length > limits.max_body_bytes:
            self._refuse(413, f"body of {length} bytes: at most {limits.max_body_bytes}")
            return
        if self._expect_continue:
            self.send_response_only(100)
            self.end_headers()
        self._reader.start(limits.body_seconds, "request body")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self._refuse(408, f"the body did not arrive within {limits.body_seconds:g} s")
            return
        if len(body) != length:
            self.close_connection = True  # the client closed its side
            return
        status, document = self.server.on_post(body)
        self._answer(status, document)


class WebhookHTTPServer(http.server.ThreadingHTTPServer):
    """One thread per connection, at most `limits.max_connections` of them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str, on_post: PostHandler,
                 on_status: StatusHandler, limits: HttpLimits | None = None) -> None:
        if not token:
            raise ConfigError("the webhook needs a non-empty token (--token or "
                              "PYCVMFS_WEBHOOK_TOKEN)")
        self.token = token
        self.on_post = on_post
        self.on_status = on_status
        self.limits = limits or HttpLimits()
        self._slots = threading.Lock()
        self._open: dict[str, int] = {}
        self._refused = 0
        self._refusal_logged = 0.0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def open_connections(self) -> int:
        with self._slots:
            return sum(self._open.values())

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._slots:
            total = sum(self._open.values())
            admitted = (total < self.limits.max_connections
                        and self._open.get(peer, 0) < self.limits.max_connections_per_peer)
            if admitted:
                self._open[peer] = self._open.get(peer, 0) + 1
        if not admitted:
            self._turn_away(request, peer, total)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(peer)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(str(client_address[0]))

    def _release(self, peer: str) -> None:
        with self._slots:
            left = self._open.get(peer, 0) - 1
            if left > 0:
                self._open[peer] = left
            else:
                self._open.pop(peer, None)

    def _turn_away(self, request: socket.socket, peer: str, total: int) -> None:
        body = json.dumps({"error": "too many connections; try again later"}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n")
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
        except OSError:
            pass
        now = time.monotonic()
        with self._slots:
            self._refused += 1
            if now - self._refusal_logged < 10:
                return
            refused, self._refused, self._refusal_logged = self._refused, 0, now
        log.warning("webhook: turned away %d connection(s) (latest from %s): %d open, limits "
                    "%d in all and %d per address", refused, peer, total,
                    self.limits.max_connections, self.limits.max_connections_per_peer)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up is routine (registries keep connections alive); anything
        else is logged with its traceback instead of printed to stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("webhook: connection from %s ended: %s", client_address, error)
        else:
            log.exception("webhook: error handling a request from %s", client_address)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)
