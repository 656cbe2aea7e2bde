"""What went wrong with one HTTP attempt, and whose fault it was (fact sheet 8.4).

Pure: `classify(Outcome) -> Failure`. The transport reports facts (status, three headers, a
transport error kind, whether a proxy was used); the download loop adds whether the bytes
verified. Blame is split into proxy and host halves, as cvmfs `network_errors.h` does, because
the failover plan reacts differently: a proxy failure switches proxy, a host failure switches
Stratum-1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    """Transport-level error of one attempt (no HTTP status was obtained, or it was cut)."""

    NONE = "none"
    RESOLVE = "name resolution failed"
    CONNECT = "connection failed"
    TIMEOUT = "timed out"
    LOW_SPEED = "transfer slower than the low-speed limit"
    SHORT_READ = "connection closed before the full body"
    RECV = "receive error"
    OTHER = "transport error"


class Failure(enum.Enum):
    """Result of one attempt; values are the human-readable reasons used in logs and errors."""

    OK = "ok"
    PROXY_RESOLVE = "proxy name resolution failed"
    PROXY_CONNECTION = "proxy connection failed or timed out"
    PROXY_SHORT_TRANSFER = "proxy transfer cut short"
    PROXY_HTTP = "proxy HTTP error"
    HOST_RESOLVE = "host name resolution failed"
    HOST_CONNECTION = "host connection failed or timed out"
    HOST_SHORT_TRANSFER = "host transfer cut short"
    HOST_HTTP = "host HTTP error"
    BAD_DATA = "corrupted data (hash, size, decompression or byte budget)"

    @property
    def is_proxy(self) -> bool:
        return self in _PROXY

    @property
    def is_host(self) -> bool:
        return self in _HOST

    @property
    def is_transfer(self) -> bool:
        """Retried on the same URL (up to max_retries) before switching."""
        return self in _TRANSFER


_PROXY = frozenset({Failure.PROXY_RESOLVE, Failure.PROXY_CONNECTION,
                    Failure.PROXY_SHORT_TRANSFER, Failure.PROXY_HTTP})
_HOST = frozenset({Failure.HOST_RESOLVE, Failure.HOST_CONNECTION,
                   Failure.HOST_SHORT_TRANSFER, Failure.HOST_HTTP})
_TRANSFER = frozenset({Failure.PROXY_CONNECTION, Failure.PROXY_SHORT_TRANSFER,
                       Failure.HOST_CONNECTION, Failure.HOST_SHORT_TRANSFER})

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HOST_STATUSES_VIA_PROXY = frozenset({400, 404})  # plus every 5xx (fact sheet 8.4)
TOO_MANY_REQUESTS = 429


@dataclass(frozen=True, slots=True)
class Outcome:
    """Facts about one attempt. `x_squid_error`/`proxy_status` are the raw header values
    (None when absent); `bad_data` is set by the download loop after verifying the sink;
    `date` is the raw Date header (`pycvmfs doctor` compares it with the local clock)."""

    status: int | None
    error: ErrorKind = ErrorKind.NONE
    via_proxy: bool = False
    x_squid_error: str | None = None
    proxy_status: str | None = None
    bytes_received: int = 0
    bad_data: bool = False
    detail: str = ""
    date: str | None = None


_TRANSFER_ERRORS: dict[ErrorKind, tuple[Failure, Failure]] = {
    # kind: (through a proxy, DIRECT)
    ErrorKind.RESOLVE: (Failure.PROXY_RESOLVE, Failure.HOST_RESOLVE),
    ErrorKind.CONNECT: (Failure.PROXY_CONNECTION, Failure.HOST_CONNECTION),
    ErrorKind.TIMEOUT: (Failure.PROXY_CONNECTION, Failure.HOST_CONNECTION),
    ErrorKind.LOW_SPEED: (Failure.PROXY_CONNECTION, Failure.HOST_CONNECTION),
    ErrorKind.OTHER: (Failure.PROXY_CONNECTION, Failure.HOST_CONNECTION),
    ErrorKind.SHORT_READ: (Failure.PROXY_SHORT_TRANSFER, Failure.HOST_SHORT_TRANSFER),
    ErrorKind.RECV: (Failure.PROXY_SHORT_TRANSFER, Failure.HOST_SHORT_TRANSFER),
}


def _proxy_flagged(outcome: Outcome) -> bool:
    """Squid says the error is its own: `X-Squid-Error` or `Proxy-Status: ...; error=...`."""
    if outcome.x_squid_error is not None:
        return True
    return outcome.proxy_status is not None and "error=" in outcome.proxy_status


def _classify_status(status: int, outcome: Outcome) -> Failure:
    if status == TOO_MANY_REQUESTS:
        return Failure.HOST_CONNECTION
    if not outcome.via_proxy:
        return Failure.HOST_HTTP  # DIRECT: every non-2xx is the host's (redirects included)
    if status in REDIRECT_STATUSES or status in HOST_STATUSES_VIA_PROXY or status >= 500:
        return Failure.PROXY_HTTP if _proxy_flagged(outcome) else Failure.HOST_HTTP
    return Failure.PROXY_HTTP


def classify(outcome: Outcome) -> Failure:
    """The fact-sheet 8.4 rules. Redirects are never followed (`CVMFS_FOLLOW_REDIRECTS=no`)."""
    if outcome.error is not ErrorKind.NONE:
        via_proxy, direct = _TRANSFER_ERRORS[outcome.error]
        return via_proxy if outcome.via_proxy else direct
    if outcome.status is None:
        return Failure.PROXY_CONNECTION if outcome.via_proxy else Failure.HOST_CONNECTION
    if 200 <= outcome.status < 300:
        return Failure.BAD_DATA if outcome.bad_data else Failure.OK
    return _classify_status(outcome.status, outcome)
