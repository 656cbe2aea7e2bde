"""libcurl's transport without sockets: what its callbacks decide (`_Exchange`) and how a
finished transfer becomes an `Outcome` (status, headers, budget, watchdog, local
exhaustion). The transfers themselves, attacks included, are in
tests/integration/test_hostile_network.py and test_network_failover.py."""

from __future__ import annotations

import errno

import pycurl
import pytest

from pycvmfs.errors import CacheFullError
from pycvmfs.network import curl_transport
from pycvmfs.network.curl_transport import (
    _STOP,
    CurlTransport,
    _Exchange,
    _local_exhaustion,
    unusable,
)
from pycvmfs.network.failure import ErrorKind
from pycvmfs.network.sink import MemorySink
from pycvmfs.network.transport import ERROR_BODY_BYTES


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def exchange(budget: int = 1000, window: float = 2.0) -> tuple[_Exchange, MemorySink, Clock]:
    sink, clock = MemorySink(budget), Clock()
    return _Exchange(sink, window, clock), sink, clock


def outcome(x: _Exchange, code: int = 0, message: str = "") -> object:
    return CurlTransport._outcome(x, False, code, message, 2.0, 1024)


def headers(x: _Exchange, *lines: bytes) -> list[int | None]:
    return [x.header(line) for line in lines]


def test_a_response_s_status_headers_and_body_reach_the_outcome() -> None:
    x, sink, _ = exchange()
    assert headers(x, b"HTTP/1.1 200 OK\r\n", b"Date: Tue, 08 Dec 2026 01:00:00 GMT\r\n",
                   b"X-Squid-Error: ERR_NONE 0\r\n", b"Content-Length: 5\r\n",
                   b"\r\n") == [None] * 5
    assert x.write(b"hello") is None
    result = outcome(x)
    assert (result.status, result.bytes_received, result.error) == (200, 5, ErrorKind.NONE)
    assert result.date == "Tue, 08 Dec 2026 01:00:00 GMT"
    assert result.x_squid_error == "ERR_NONE 0" and sink.getvalue() == b"hello"


def test_interim_responses_are_not_the_answer() -> None:
    x, _, _ = exchange()
    headers(x, b"HTTP/1.1 100 Continue\r\n", b"\r\n")
    assert not x.headers_done  # still waiting for the final status
    headers(x, b"HTTP/1.1 204 No Content\r\n", b"\r\n")
    assert x.headers_done and x.status == 204


def test_a_length_over_the_budget_is_refused_before_the_body() -> None:
    x, sink, _ = exchange(budget=10)
    assert headers(x, b"HTTP/1.1 200 OK\r\n", b"Content-Length: 11\r\n", b"\r\n")[-1] == _STOP
    result = outcome(x, pycurl.E_WRITE_ERROR, "Failed writing header")
    assert result.bad_data and "Content-Length 11 refused" in result.detail
    assert sink.getvalue() == b""


def test_no_more_than_one_byte_past_the_budget_reaches_the_sink() -> None:
    x, sink, _ = exchange(budget=10)
    headers(x, b"HTTP/1.1 200 OK\r\n", b"\r\n")  # no length: an endless body
    assert x.write(b"a" * 8) is None
    assert x.write(b"b" * 100) == _STOP  # the sink refuses its 11th byte
    result = outcome(x, pycurl.E_WRITE_ERROR, "Failure writing output")
    assert result.bad_data and result.bytes_received == 11 and "budget of 10" in result.detail
    assert sink.getvalue() == b"a" * 8  # the refused block was not kept


def test_an_error_body_is_read_up_to_its_cap_and_never_reaches_the_sink() -> None:
    x, sink, _ = exchange()
    headers(x, b"HTTP/1.1 503 Busy\r\n", b"\r\n")
    assert x.write(b"e" * ERROR_BODY_BYTES) is None  # short enough to keep the connection
    assert x.write(b"e") == _STOP  # longer: closed, not drained
    result = outcome(x, pycurl.E_WRITE_ERROR, "Failure writing output")
    assert (result.status, result.detail, sink.getvalue()) == (503, "HTTP 503", b"")


def test_a_local_failure_of_the_sink_is_kept_for_the_caller() -> None:
    class FullDisk(MemorySink):
        def write(self, data: bytes) -> None:
            raise CacheFullError("no space")

    x = _Exchange(FullDisk(100), 2.0, Clock())
    headers(x, b"HTTP/1.1 200 OK\r\n", b"\r\n")
    assert x.write(b"data") == _STOP and isinstance(x.raised, CacheFullError)


def test_status_and_headers_must_come_within_the_window_after_connecting() -> None:
    x, _, clock = exchange(window=2.0)
    clock.now += 50  # connecting has its own timeout: no deadline before it
    assert x.progress(0, 0, 0, 0) == 0
    x.ready("127.0.0.1", "127.0.0.1", 80, 4000)
    clock.now += 1.9
    headers(x, b"HTTP/1.1 200 OK\r\n")
    assert x.progress(0, 0, 0, 0) == 0
    clock.now += 0.2
    assert x.progress(0, 0, 0, 0) == 1  # a trickled header: stopped
    result = outcome(x, pycurl.E_ABORTED_BY_CALLBACK, "Callback aborted")
    assert result.error is ErrorKind.TIMEOUT and result.status is None
    assert "no complete status line and headers within 2 s" in result.detail


def test_the_body_has_no_header_deadline() -> None:
    x, _, clock = exchange(window=2.0)
    x.ready("127.0.0.1", "127.0.0.1", 80, 4000)
    headers(x, b"HTTP/1.1 200 OK\r\n", b"\r\n")
    clock.now += 60  # the low-speed limit watches the body (libcurl)
    assert x.progress(0, 0, 0, 0) == 0


@pytest.mark.parametrize(("code", "message", "kind"), [
    (pycurl.E_COULDNT_RESOLVE_HOST, "Could not resolve host: nowhere", ErrorKind.RESOLVE),
    (pycurl.E_COULDNT_RESOLVE_PROXY, "Could not resolve proxy: p", ErrorKind.RESOLVE),
    (pycurl.E_COULDNT_CONNECT, "Failed to connect", ErrorKind.CONNECT),
    (pycurl.E_OPERATION_TIMEDOUT, "Connection timed out after 2001 ms", ErrorKind.TIMEOUT),
    (pycurl.E_RECV_ERROR, "Recv failure: Connection reset by peer", ErrorKind.SHORT_READ),
    (pycurl.E_PARTIAL_FILE, "transfer closed with 5 bytes remaining", ErrorKind.SHORT_READ),
    (pycurl.E_GOT_NOTHING, "Empty reply from server", ErrorKind.SHORT_READ),
    (8, "Unsupported HTTP version", ErrorKind.OTHER),  # CURLE_WEIRD_SERVER_REPLY
])
def test_libcurl_errors_become_error_kinds(code: int, message: str, kind: ErrorKind) -> None:
    x, _, _ = exchange()
    result = outcome(x, code, message)
    assert (result.status, result.error, result.detail) == (None, kind, message)


def test_a_slow_body_is_the_low_speed_limit_and_slow_headers_the_header_deadline() -> None:
    x, _, _ = exchange()
    x.ready("127.0.0.1", "127.0.0.1", 80, 4000)
    headers(x, b"HTTP/1.1 200 OK\r\n", b"\r\n")
    slow = "Operation too slow. Less than 1024 bytes/sec transferred the last 2 seconds"
    result = outcome(x, pycurl.E_OPERATION_TIMEDOUT, slow)
    assert (result.status, result.error, result.detail) == (200, ErrorKind.LOW_SPEED,
                                                            "below 1024 B/s")
    x, _, _ = exchange()
    x.ready("127.0.0.1", "127.0.0.1", 80, 4000)  # libcurl's low-speed check, no status yet
    result = outcome(x, pycurl.E_OPERATION_TIMEDOUT, slow)
    assert result.error is ErrorKind.TIMEOUT and "headers within" in result.detail


def test_running_out_of_descriptors_or_memory_is_told_apart(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    assert _local_exhaustion(pycurl.E_COULDNT_CONNECT, errno.EMFILE) == errno.EMFILE
    assert _local_exhaustion(pycurl.E_COULDNT_CONNECT, errno.ECONNREFUSED) is None
    monkeypatch.setattr(curl_transport.os, "listdir", lambda path: ["0"] * 10)
    assert _local_exhaustion(pycurl.E_OUT_OF_MEMORY, 0) == errno.ENOMEM
    monkeypatch.setattr(curl_transport.os, "listdir", lambda path: ["0"] * 1_000_000)
    assert _local_exhaustion(pycurl.E_OUT_OF_MEMORY, 0) == errno.EMFILE


def test_this_libcurl_is_usable() -> None:
    assert unusable() is None  # the wheel's libcurl: 7.80 or newer
