"""Facts from the network for `doctor.repository`, through the client's own network layer
(`network.transport`, `network.download`) and trust code (`repository.trust`).

Routes: one GET of `<server>/.cvmfspublished` (no-cache, so a proxy asks the Stratum-1)
for every Stratum-1 and proxy pair, at most `MAX_ROUTES`, all at once in daemon threads,
each bounded by the transport's watchdog (`ROUTE_TIMEOUT_S`: connect, headers, low speed),
all together by `ROUTES_DEADLINE_S`. Then the whole trust chain once, through the fastest
route that answered, with no retries: it is what a mount would believe, verified. Both
together take at most about `NETWORK_DEADLINE_S`."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pycvmfs.config import ClientConfig
from pycvmfs.doctor.repository import RouteProbe, TrustFacts
from pycvmfs.errors import PycvmfsError, WhitelistExpiredError
from pycvmfs.format.manifest import parse_manifest
from pycvmfs.network.download import Downloader, DownloadSettings
from pycvmfs.network.failover import RouteState
from pycvmfs.network.failure import ErrorKind, Failure, Outcome, classify
from pycvmfs.network.proxies import ProxyChoice, ProxyConfig, parse_proxies
from pycvmfs.network.sink import MemorySink
from pycvmfs.network.transport import Transport, request_headers
from pycvmfs.repository.network_source import NetworkSource
from pycvmfs.repository.trust import (
    MANIFEST_MAX_BYTES,
    MANIFEST_PATH,
    establish_trust,
    load_blacklist,
    load_public_keys,
)

ROUTE_TIMEOUT_S = 3.0
ROUTES_DEADLINE_S = 8.0
NETWORK_DEADLINE_S = 10.0  # routes and trust chain together
TRUST_MIN_S = 2.0  # the trust chain's share even when the routes took their whole deadline
MAX_ROUTES = 32
DETAIL_CHARS = 160
_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^)\"']+)")


@dataclass(frozen=True, slots=True)
class Route:
    server: str
    proxy: ProxyChoice


def routes_of(config: ClientConfig) -> list[Route]:
    """Every Stratum-1 with every proxy (regular and fallback groups), ring order first."""
    proxies = parse_proxies(config.http_proxy, config.fallback_proxy)
    members = list(dict.fromkeys(p for group in proxies.groups for p in group))
    servers = [url.rstrip("/") for url in config.server_urls]
    return [Route(s, p) for s in servers for p in members][:MAX_ROUTES]


def probe_route(transport: Transport, route: Route, timeout: float, low_speed_limit: int,
                clock: Callable[[], float] = time.monotonic) -> RouteProbe:
    sink = MemorySink(MANIFEST_MAX_BYTES)
    start = clock()
    outcome = transport.get(f"{route.server}/{MANIFEST_PATH}", proxy=route.proxy,
                            headers=request_headers(no_cache=True), sink=sink,
                            timeout=timeout, low_speed_limit=low_speed_limit)
    seconds = clock() - start
    failure = classify(outcome)
    problem = ""
    if failure is not Failure.OK:
        problem = f"{failure.value} ({short_reason(outcome)})"
    else:
        try:
            parse_manifest(sink.getvalue())
        except PycvmfsError as exc:
            problem = f"the answer is not a manifest: {exc}"
    return RouteProbe(route.server, str(route.proxy), seconds, problem, outcome.date)


def short_reason(outcome: Outcome) -> str:
    """The transport's facts in a few words: the error kind and the system's reason
    (`Connection refused`), or the HTTP status."""
    if outcome.error is not ErrorKind.NONE:
        errno_text = _ERRNO_TEXT.search(outcome.detail)
        reason = errno_text.group(1).strip() if errno_text else ""
        return f"{outcome.error.value}: {reason}" if reason else outcome.error.value
    if outcome.status is not None and not 200 <= outcome.status < 300:
        return f"HTTP {outcome.status}"
    return outcome.detail[:DETAIL_CHARS] or "no detail"


def probe_routes(transport: Transport, routes: Sequence[Route], *, low_speed_limit: int,
                 timeout: float = ROUTE_TIMEOUT_S,
                 deadline_s: float = ROUTES_DEADLINE_S) -> list[RouteProbe]:
    """All routes at once; one that has not answered by the deadline has `seconds` None
    (its thread ends within the transport's own bounds, a daemon meanwhile)."""
    found: list[RouteProbe | None] = [None] * len(routes)

    def run(index: int) -> None:
        try:
            found[index] = probe_route(transport, routes[index], timeout, low_speed_limit)
        except OSError as exc:  # this machine's limits (descriptors, memory)
            found[index] = RouteProbe(routes[index].server, str(routes[index].proxy), 0.0,
                                      f"local error: {exc.strerror or exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True,
                                name=f"doctor-route-{i}") for i in range(len(routes))]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return [probe or RouteProbe(route.server, str(route.proxy), None)
            for probe, route in zip(found, routes, strict=True)]


def check_trust_chain(transport: Transport, config: ClientConfig, route: Route,
                      now: dt.datetime, timeout: float = ROUTE_TIMEOUT_S) -> TrustFacts:
    """The reference's trust chain through `route` only, no retries."""
    state = RouteState([route.server], ProxyConfig(((route.proxy,),), 1))
    settings = DownloadSettings(timeout=timeout, timeout_direct=timeout,
                                low_speed_limit=config.low_speed_limit, max_retries=0,
                                backoff_init=0.0, backoff_max=0.0)
    source = NetworkSource(Downloader(transport, state, settings),
                           f"{route.server} via {route.proxy}")
    try:
        keys = load_public_keys(config.public_key_files)
        blacklist = load_blacklist(config.blacklist_files)
        trusted = establish_trust(source, config.fqrn, keys, now=now, blacklist=blacklist)
    except WhitelistExpiredError as exc:
        return TrustFacts(source.describe(), error=str(exc), expired=True)
    except (PycvmfsError, OSError) as exc:
        return TrustFacts(source.describe(), error=str(exc))
    return TrustFacts(source.describe(), revision=trusted.revision,
                      published=trusted.timestamp,
                      whitelist_expires=trusted.whitelist.expiry_hour)


def trust_within(transport: Transport, config: ClientConfig, route: Route,
                 now: dt.datetime, seconds: float) -> TrustFacts:
    """`check_trust_chain` in a daemon thread, given up after `seconds` (its downloads end
    within the transport's bounds meanwhile)."""
    found: list[TrustFacts] = []
    thread = threading.Thread(target=lambda: found.append(
        check_trust_chain(transport, config, route, now)), daemon=True, name="doctor-trust")
    thread.start()
    thread.join(seconds)
    if found:
        return found[0]
    return TrustFacts(f"{route.server} via {route.proxy}",
                      error=f"no complete answer within {seconds:.0f} s")


def first_working(probes: Sequence[RouteProbe], routes: Sequence[Route]) -> Route | None:
    """The fastest route that brought a manifest."""
    working = [(p.seconds, i) for i, p in enumerate(probes)
               if not p.problem and p.seconds is not None]
    return routes[min(working)[1]] if working else None
