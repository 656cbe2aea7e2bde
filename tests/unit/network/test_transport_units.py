"""Socket-free parts of the transport: exception mapping, low-speed meter, request headers."""

from __future__ import annotations

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
from pycvmfs.network.transport import _error_kind, _SpeedMeter, request_headers


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
