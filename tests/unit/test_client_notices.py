"""The degraded states a mount says at start (`client_notices`): offline from the cache,
a Stratum-1 or proxy that failed while mounting, a quota pressed by pinned catalogs."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pycvmfs.client_notices import captured_warnings, mount_notices
from pycvmfs.network.failover import RouteState
from pycvmfs.network.proxies import parse_proxies
from tests.publish_helpers import Keys
from tests.unit.test_client_core import T1, URL, Site

HOSTS = ("http://s1/cvmfs/a.org", "http://s2/cvmfs/a.org")


def _config(quota_mb: int = 1000) -> Any:
    return SimpleNamespace(quota_limit_mb=quota_mb, origin=lambda key: "/etc/cvmfs/x.conf:1")


def _cache(pressed: bool = False) -> Any:
    quota = SimpleNamespace(pin_pressure=lambda: pressed, pinned_size=lambda: 300 << 20,
                            capacity=lambda: 400 << 20)
    return SimpleNamespace(quota=quota)


def _route() -> RouteState:
    return RouteState(HOSTS, parse_proxies("http://p1:3128;http://p2:3128"))


def test_nothing_degraded_says_nothing() -> None:
    route = _route()
    trusted = SimpleNamespace(trusted=object())
    assert mount_notices(_config(), trusted, route, route.current(), [], _cache()) == []


def test_failovers_while_mounting() -> None:
    route = _route()
    start = route.current()
    seen = route.route(0.0)
    route.fail_host(seen, 0.0)
    route.fail_proxy(seen, 0.0)
    notices = mount_notices(_config(), SimpleNamespace(trusted=object()), route, start, [],
                            _cache())
    assert notices == [f"Stratum-1 {HOSTS[0]} failed while mounting; using {HOSTS[1]}",
                       "proxy http://p1:3128 failed while mounting; using http://p2:3128"]


def test_offline_says_why_and_not_the_failovers() -> None:
    route = _route()
    start = route.current()
    route.fail_host(route.route(0.0), 0.0)
    why = ["a.org: all 2 attempts failed; mounting revision 3 from the cache (offline)"]
    notices = mount_notices(_config(), SimpleNamespace(trusted=None), route, start, why,
                            _cache())
    assert notices == [f"serving offline from the cache: {why[0]}; the mount switches to the "
                       "servers when they answer"]


def test_a_quota_pressed_by_pinned_catalogs() -> None:
    route = _route()
    (notice,) = mount_notices(_config(400), SimpleNamespace(trusted=object()), route,
                              route.current(), [], _cache(pressed=True))
    assert notice.startswith("CVMFS_QUOTA_LIMIT=400 MB (set in /etc/cvmfs/x.conf:1) is small: "
                             "the catalogs pinned at mount already take 300.0 MB of the 200 MB")
    assert mount_notices(_config(-1), SimpleNamespace(trusted=object()), route,
                         route.current(), [], _cache(pressed=True)) == []


def test_captured_warnings_are_one_line_each_and_only_inside() -> None:
    log = logging.getLogger("pycvmfs.test_notices")
    with captured_warnings("pycvmfs.test_notices") as lines:
        log.warning("a\nb: %s", "c")
        log.info("not a warning")
    log.warning("after")
    assert lines == ["a b: c"]


# --- through open_client (no sockets: tests.unit.test_client_core's MockTransport site) ----


def test_open_client_says_offline_starts_and_geo_failures(tmp_path: Path, keys: Keys) -> None:
    site = Site(tmp_path, keys)
    site.publish({"a.txt": b"one"}, T1)
    with contextlib.closing(site.client()) as online:
        assert online.notices == ()
    other = URL.replace("stratum1.test", "other.test")
    with contextlib.closing(site.client(CVMFS_USE_GEOAPI="yes",
                                        CVMFS_SERVER_URL=f"{URL};{other}")) as geo:
        assert geo.notices == (
            "CVMFS_USE_GEOAPI=yes, but no Stratum-1 answered the Geo API: the Stratum-1s are "
            f"tried in the configured order ({URL}, {other})",)
    site.online = False
    with contextlib.closing(site.client()) as offline:
        (notice,) = offline.notices
        assert notice.startswith(f"serving offline from the cache: {keys.fqrn}: ")
        assert "mounting revision 1 from the cache (offline); the mount switches" in notice
