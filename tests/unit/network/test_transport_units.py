"""Parts of the transport testable without a network: exception mapping, low-speed meter,
request headers, Content-Length refusal, the header deadline (over a local socket pair)."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator

import pytest
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

from pycvmfs.network.failure import ErrorKind
from pycvmfs.network.transport import refused_length, request_headers
from pycvmfs.network.urllib3_transport import (
    _DeadlineSocket,
    _error_kind,
    _header_deadline,
    _SpeedMeter,
    receive_timeout,
)


@pytest.mark.parametrize(("exc", "kind"), [
    (NameResolutionError("h", None, OSError("x")), ErrorKind.RESOLVE),  # type: ignore[arg-type]
    (NewConnectionError(None, "refused"), ErrorKind.CONNECT),  # type: ignore[arg-type]
    (ConnectTimeoutError("t"), ErrorKind.TIMEOUT),
    (ReadTimeoutError(None, "u", "t"), ErrorKind.TIMEOUT),  # type: ignore[arg-type]
    (ProtocolError("reset"), ErrorKind.SHORT_READ),
    (IncompleteRead(5, 10), ErrorKind.SHORT_READ),
    (ConnectionResetError(), ErrorKind.SHORT_READ),
    (ProxyError("p", NewConnectionError(None, "refused")),  # type: ignore[arg-type]
     ErrorKind.CONNECT),
    (ProxyError("p", ConnectTimeoutError("t")), ErrorKind.TIMEOUT),
    (ProxyError("p", "no exception"), ErrorKind.CONNECT),
    (HTTPError("other"), ErrorKind.OTHER),
])
def test_error_kind(exc: BaseException, kind: ErrorKind) -> None:
    assert _error_kind(exc) is kind


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_speed_meter() -> None:
    clock = Clock()
    meter = _SpeedMeter(1000, 2.0, clock)
    clock.t = 1.0
    assert not meter.too_slow(10)  # window not over yet
    clock.t = 2.0
    assert not meter.too_slow(3000)  # 3010 B in 2 s: fast enough, new window starts
    clock.t = 3.9
    assert not meter.too_slow(100)
    clock.t = 4.1
    assert meter.too_slow(100)  # 200 B in 2.1 s


def test_request_headers() -> None:
    normal = request_headers()
    assert normal["Pragma"] == "" and normal["Connection"] == "Keep-Alive"
    assert "Cache-Control" not in normal
    assert request_headers(no_cache=True)["Cache-Control"] == "no-cache"
    assert request_headers(no_cache=True)["Pragma"] == "no-cache"


def test_refused_length() -> None:
    assert refused_length(None, 10) is None and refused_length(10, 10) is None
    reason = refused_length(11, 10)
    assert reason is not None and "Content-Length 11 refused" in reason
    assert "budget of 10 bytes" in reason


def test_receive_timeout() -> None:
    assert receive_timeout(5.0, None, 100.0) == 5.0  # no header phase: the socket's own
    assert receive_timeout(None, None, 100.0) is None
    assert receive_timeout(5.0, 102.0, 100.0) == 2.0  # shortened to the deadline
    assert receive_timeout(1.0, 102.0, 100.0) == 1.0  # already shorter
    assert receive_timeout(None, 102.0, 100.0) == 2.0
    with pytest.raises(TimeoutError):
        receive_timeout(5.0, 100.0, 100.0)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A local socket pair (no network): the client end adopted as a deadline socket."""
    client, server = socket.socketpair()
    client.settimeout(5.0)
    watched = _DeadlineSocket.adopt(client)
    try:
        yield watched, server
    finally:
        watched.close()
        server.close()


def test_adopted_socket_keeps_its_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    watched, server = pair
    assert watched.gettimeout() == 5.0
    server.sendall(b"ok")
    assert watched.recv(10) == b"ok"


def test_trickled_status_line_ends_at_the_header_deadline(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A byte every 0.05 s keeps every single receive short of its 5 s timeout; the
    deadline still ends the whole header phase after 0.3 s."""
    watched, server = pair
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.05):
                server.sendall(b"H")

    thread = threading.Thread(target=trickle)
    thread.start()
    reader = watched.makefile("rb")
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError), _header_deadline(0.3):
            reader.readline()  # never ends: no newline ever comes
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert 0.25 <= time.monotonic() - start < 2.0
    assert watched.gettimeout() == 5.0  # restored for the body phase


def test_no_deadline_outside_the_header_phase(pair: tuple[socket.socket, socket.socket]) -> None:
    watched, server = pair
    with _header_deadline(0.2):
        server.sendall(b"a")
        assert watched.recv(1) == b"a"
    time.sleep(0.3)  # past the old deadline: no longer armed
    server.sendall(b"b")
    assert watched.recv(1) == b"b"
    buffer = bytearray(1)
    server.sendall(b"c")
    assert watched.recv_into(buffer) == 1 and buffer == b"c"


def _no_descriptors(*args: object, **kwargs: object) -> socket.socket:
    raise OSError(errno.EMFILE, "Too many open files")


def test_running_out_of_descriptors_is_raised_not_blamed_on_the_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pycvmfs.network.download import Downloader
    from pycvmfs.network.failover import RouteState
    from pycvmfs.network.proxies import DIRECT, ProxyConfig
    from pycvmfs.network.sink import MemorySink
    from pycvmfs.network.urllib3_transport import Urllib3Transport

    monkeypatch.setattr(socket, "socket", _no_descriptors)
    route = RouteState(["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"],
                       ProxyConfig(((DIRECT,),), 1))
    downloader = Downloader(Urllib3Transport(), route)
    with pytest.raises(OSError) as info:
        downloader.download("/.cvmfspublished", MemorySink(100))
    assert info.value.errno == errno.EMFILE
    assert route.current()[0] == "http://127.0.0.1:9/a"  # nothing was marked broken
    assert downloader.statistics().errors == 0


def test_local_exhaustion_is_found_behind_urllib3_wrappers() -> None:
    from pycvmfs.network.urllib3_transport import local_exhaustion

    cause = OSError(errno.ENFILE, "Too many open files in system")
    try:
        try:
            raise cause
        except OSError as exc:
            raise NewConnectionError(None, "failed") from exc  # type: ignore[arg-type]
    except NewConnectionError as wrapped:
        assert local_exhaustion(wrapped) is cause
    assert local_exhaustion(NewConnectionError(None, "refused")) is None  # type: ignore[arg-type]
    assert local_exhaustion(OSError(errno.ECONNREFUSED, "refused")) is None


def _refused(*args: object, **kwargs: object) -> socket.socket:
    raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


def test_only_a_tls_request_loads_the_system_certificates(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Loading the system CAs takes 40 ms of every mount: plain-HTTP routes never do it,
    and the first HTTPS request does it once for the transport."""
    from pycvmfs.network import urllib3_transport as module
    from pycvmfs.network.proxies import DIRECT
    from pycvmfs.network.sink import MemorySink

    built: list[int] = []
    real = module._watched_tls_context
    monkeypatch.setattr(module, "_watched_tls_context", lambda: built.append(1) or real())
    monkeypatch.setattr(socket, "socket", _refused)
    transport = module.Urllib3Transport()

    def get(url: str) -> ErrorKind | None:
        return transport.get(url, proxy=DIRECT, headers=request_headers(),
                             sink=MemorySink(10), timeout=1.0, low_speed_limit=1).error

    try:
        assert {get("http://127.0.0.1:9/a"), get("http://127.0.0.1:9/b")} == {ErrorKind.CONNECT}
        assert built == []
        assert {get("https://127.0.0.1:9/a"), get("HTTPS://127.0.0.1:9/b")} == {ErrorKind.CONNECT}
        assert built == [1]
    finally:
        transport.close()
