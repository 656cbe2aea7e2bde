"""Geo API URL and response (fact sheet 8.6), and order_hosts over a MockTransport."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from pycvmfs.network.geo import geo_url, host_name, order_hosts, parse_geo_response, proxy_label
from pycvmfs.network.proxies import DIRECT, Proxy, ProxyChoice
from pycvmfs.network.transport import MockTransport

HOSTS = ["http://s1.cern.ch:8000/cvmfs/@fqrn@", "http://s2.fnal.gov/cvmfs/x", "s3.ral.uk"]


def test_host_name() -> None:
    assert [host_name(h) for h in HOSTS] == ["s1.cern.ch", "s2.fnal.gov", "s3.ral.uk"]


def test_url() -> None:
    assert geo_url("http://s1/cvmfs/r/", "squid.site", HOSTS) == (
        "http://s1/cvmfs/r/api/v1.0/geo/squid.site/s1.cern.ch,s2.fnal.gov,s3.ral.uk")


def test_url_with_fallback_proxies_only_without_regular_proxies() -> None:
    fb = ["http://p1:3128", "http://p2:3128"]
    assert geo_url("http://s1", "uuid", HOSTS[:2], fb, have_regular_proxies=False) == (
        "http://s1/api/v1.0/geo/uuid/s1.cern.ch,s2.fnal.gov,+PXYSEP+,p1,p2")
    assert geo_url("http://s1", "uuid", HOSTS[:2], fb).endswith("/s1.cern.ch,s2.fnal.gov")


@pytest.mark.parametrize(("body", "order"), [
    (b"2,1,3\n", [1, 0, 2]), (b"1,2,3", [0, 1, 2]), (b"3,2,1\n", [2, 1, 0])])
def test_parse(body: bytes, order: list[int]) -> None:
    assert parse_geo_response(body, 3) == order


@pytest.mark.parametrize("body", [b"1,2", b"1,2,2", b"0,1,2", b"1,2,4", b"1, 2,3", b"1,,2,3",
                                  b"a,b,c", b"", b"1,2,3\n\n", b"<html>"])
def test_parse_rejects(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_geo_response(body, 3)


def test_proxy_label() -> None:
    assert proxy_label(DIRECT, "uuid-1") == "uuid-1"
    assert proxy_label(Proxy("http://squid.site:3128"), "u") == "squid.site"
    assert proxy_label(DIRECT, "u", "tmpl") == "tmpl"


def test_order_hosts_skips_a_failing_host() -> None:
    seen: list[str] = []

    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]
                ) -> tuple[int, Mapping[str, str], bytes]:
        seen.append(url)
        return (500, {}, b"") if len(seen) == 1 else (200, {}, b"3,1,2\n")

    order = order_hosts(MockTransport(handler), HOSTS, proxy=DIRECT, proxy_name="u",
                        rng=random.Random(1))
    assert order == [2, 0, 1]
    assert len(seen) == 2 and all("/api/v1.0/geo/u/s1.cern.ch,s2.fnal.gov,s3.ral.uk" in u
                                  for u in seen)


def test_order_hosts_gives_up_and_skips_single_host() -> None:
    def handler(url: str, proxy: ProxyChoice, headers: Mapping[str, str]
                ) -> tuple[int, Mapping[str, str], bytes]:
        return 200, {}, b"garbage"

    transport = MockTransport(handler)
    assert order_hosts(transport, HOSTS, proxy=DIRECT, proxy_name="u") is None
    assert len(transport.requests) == 3
    assert order_hosts(transport, HOSTS[:1], proxy=DIRECT, proxy_name="u") is None
    assert len(transport.requests) == 3
