"""One row per fact-sheet 8.4 rule: Outcome facts -> Failure."""

from __future__ import annotations

import pytest

from pycvmfs.network.failure import ErrorKind, Failure, Outcome, classify

ROWS = [
    # (rule, outcome, expected)
    ("2xx is ok", Outcome(200, via_proxy=True), Failure.OK),
    ("206 is ok", Outcome(206), Failure.OK),
    ("hash/decompression mismatch is BAD_DATA", Outcome(200, bad_data=True), Failure.BAD_DATA),
    ("bad data via proxy is BAD_DATA", Outcome(200, via_proxy=True, bad_data=True),
     Failure.BAD_DATA),
    ("5xx via proxy is the host's", Outcome(500, via_proxy=True), Failure.HOST_HTTP),
    ("503 via proxy is the host's", Outcome(503, via_proxy=True), Failure.HOST_HTTP),
    ("404 via proxy is the host's", Outcome(404, via_proxy=True), Failure.HOST_HTTP),
    ("400 via proxy is the host's", Outcome(400, via_proxy=True), Failure.HOST_HTTP),
    ("redirect (not followed) is the host's", Outcome(302, via_proxy=True), Failure.HOST_HTTP),
    ("other non-2xx via proxy is the proxy's", Outcome(403, via_proxy=True), Failure.PROXY_HTTP),
    ("407 via proxy is the proxy's", Outcome(407, via_proxy=True), Failure.PROXY_HTTP),
    ("X-Squid-Error turns a host error into a proxy error",
     Outcome(503, via_proxy=True, x_squid_error="ERR_CONNECT_FAIL 111"), Failure.PROXY_HTTP),
    ("X-Squid-Error on 404", Outcome(404, via_proxy=True, x_squid_error="ERR_DNS_FAIL 0"),
     Failure.PROXY_HTTP),
    ("Proxy-Status error= turns a host error into a proxy error",
     Outcome(502, via_proxy=True, proxy_status="squid; error=connection_refused"),
     Failure.PROXY_HTTP),
    ("Proxy-Status without error= stays the host's",
     Outcome(502, via_proxy=True, proxy_status="squid; received-status=502"), Failure.HOST_HTTP),
    ("429 is a host connection error", Outcome(429, via_proxy=True), Failure.HOST_CONNECTION),
    ("429 DIRECT is a host connection error", Outcome(429), Failure.HOST_CONNECTION),
    ("DIRECT: any non-2xx is the host's", Outcome(403), Failure.HOST_HTTP),
    ("DIRECT: 404", Outcome(404), Failure.HOST_HTTP),
    ("DIRECT: X-Squid-Error is ignored", Outcome(503, x_squid_error="x"), Failure.HOST_HTTP),
    ("DIRECT: redirect", Outcome(301), Failure.HOST_HTTP),
    ("connect failure via proxy", Outcome(None, ErrorKind.CONNECT, True),
     Failure.PROXY_CONNECTION),
    ("timeout via proxy", Outcome(None, ErrorKind.TIMEOUT, True), Failure.PROXY_CONNECTION),
    ("low speed via proxy", Outcome(200, ErrorKind.LOW_SPEED, True), Failure.PROXY_CONNECTION),
    ("short read via proxy", Outcome(200, ErrorKind.SHORT_READ, True),
     Failure.PROXY_SHORT_TRANSFER),
    ("recv error via proxy", Outcome(200, ErrorKind.RECV, True), Failure.PROXY_SHORT_TRANSFER),
    ("proxy DNS failure", Outcome(None, ErrorKind.RESOLVE, True), Failure.PROXY_RESOLVE),
    ("other transport error via proxy", Outcome(None, ErrorKind.OTHER, True),
     Failure.PROXY_CONNECTION),
    ("DIRECT: connect failure is the host's", Outcome(None, ErrorKind.CONNECT),
     Failure.HOST_CONNECTION),
    ("DIRECT: timeout", Outcome(None, ErrorKind.TIMEOUT), Failure.HOST_CONNECTION),
    ("DIRECT: low speed", Outcome(200, ErrorKind.LOW_SPEED), Failure.HOST_CONNECTION),
    ("DIRECT: short read", Outcome(200, ErrorKind.SHORT_READ), Failure.HOST_SHORT_TRANSFER),
    ("DIRECT: DNS failure", Outcome(None, ErrorKind.RESOLVE), Failure.HOST_RESOLVE),
    ("no status and no error kind counts as a connection failure", Outcome(None, via_proxy=True),
     Failure.PROXY_CONNECTION),
    ("DIRECT: no status", Outcome(None), Failure.HOST_CONNECTION),
]


@pytest.mark.parametrize(("rule", "outcome", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_classify(rule: str, outcome: Outcome, expected: Failure) -> None:
    assert classify(outcome) is expected


def test_halves_are_disjoint_and_cover_all_failures() -> None:
    for failure in Failure:
        assert not (failure.is_proxy and failure.is_host)
        if failure not in (Failure.OK, Failure.BAD_DATA):
            assert failure.is_proxy or failure.is_host
    assert {f for f in Failure if f.is_transfer} == {
        Failure.PROXY_CONNECTION, Failure.PROXY_SHORT_TRANSFER,
        Failure.HOST_CONNECTION, Failure.HOST_SHORT_TRANSFER}
