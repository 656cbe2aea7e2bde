"""CVMFS_HTTP_PROXY / CVMFS_FALLBACK_PROXY / CVMFS_SERVER_URL parsing (fact sheet 8.1, 8.2)."""

from __future__ import annotations

import pytest

from pycvmfs.errors import ConfigError
from pycvmfs.network.proxies import (
    DIRECT,
    Proxy,
    expand_templates,
    parse_proxies,
    parse_proxy_groups,
    parse_server_urls,
)

A, B, C = Proxy("http://a:3128"), Proxy("http://b:3128"), Proxy("http://c:8080")


@pytest.mark.parametrize(("text", "groups"), [
    ("DIRECT", ((DIRECT,),)),
    ("direct", ((DIRECT,),)),
    ("http://a:3128", ((A,),)),
    ("a:3128", ((A,),)),
    ("http://a:3128|http://b:3128", ((A, B),)),
    ("http://a:3128|http://b:3128;http://c:8080;DIRECT", ((A, B), (C,), (DIRECT,))),
    ("http://a:3128|DIRECT", ((A, DIRECT),)),
    (" http://a:3128 ; ; | http://c:8080 ;", ((A,), (C,))),
    ("", ()),
])
def test_groups(text: str, groups: tuple[object, ...]) -> None:
    assert parse_proxy_groups(text) == groups


def test_auto_is_not_supported_yet() -> None:
    with pytest.raises(ConfigError, match="not supported yet"):
        parse_proxy_groups("auto;DIRECT")


def test_bad_proxy() -> None:
    with pytest.raises(ConfigError):
        parse_proxy_groups("http://:3128")


def test_no_fallback_keeps_direct() -> None:
    config = parse_proxies("http://a:3128;DIRECT")
    assert config.groups == ((A,), (DIRECT,))
    assert config.fallback_start == 2 and config.fallback == ()


def test_fallback_appended_and_direct_removed_from_both() -> None:
    config = parse_proxies("http://a:3128|DIRECT;DIRECT", "http://c:8080|DIRECT")
    assert config.groups == ((A,), (C,))
    assert config.regular == ((A,),)
    assert config.fallback == ((C,),)


def test_fallback_only() -> None:
    config = parse_proxies("DIRECT", "http://c:8080")
    assert config.groups == ((C,),) and config.fallback_start == 0


def test_empty_proxy_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match="empty"):
        parse_proxies("")


def test_direct_is_typed() -> None:
    assert str(DIRECT) == "DIRECT"
    assert DIRECT != Proxy("DIRECT")
    assert A.host == "a" and str(A) == "http://a:3128"


def test_templates() -> None:
    text = "http://s1/cvmfs/@fqrn@;http://s2/@org@/@x@"
    assert expand_templates(text, "atlas.cern.ch") == (
        "http://s1/cvmfs/atlas.cern.ch;http://s2/atlas/@x@")


def test_server_urls() -> None:
    assert parse_server_urls("http://a/cvmfs/r/; https://b/cvmfs/r;") == (
        "http://a/cvmfs/r", "https://b/cvmfs/r")
    assert parse_server_urls("http://a;http://b;http://c", max_servers=2) == (
        "http://a", "http://b")
    with pytest.raises(ConfigError):
        parse_server_urls("ftp://a")
    with pytest.raises(ConfigError):
        parse_server_urls(" ; ")
