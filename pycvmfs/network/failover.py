"""Failover policy: shared route state plus a pure per-request plan (fact sheet 8.3, 8.4).

`RouteState` holds what cvmfs keeps globally: the current Stratum-1 in the host ring, the
current proxy group, the proxies burned in it, the chosen proxy, and when the last switch
happened (for `CVMFS_PROXY_RESET_AFTER` / `CVMFS_HOST_RESET_AFTER`). `plan()` is a generator
that yields `Attempt`s and receives `Failure`s; it decides, it never sleeps and never does I/O.
The download loop drives it. Time (`now`) and randomness (`rng`) are injected.

Caveats: no `CVMFS_FAILOVER_INDEFINITELY`, no proxy sharding, no redirects.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from pycvmfs.network.failure import Failure
from pycvmfs.network.proxies import DIRECT, ProxyChoice, ProxyConfig


@dataclass(frozen=True, slots=True)
class Route:
    """A consistent snapshot of the shared state; generations detect concurrent switches."""

    host_index: int
    host: str
    host_generation: int
    proxy: ProxyChoice
    proxy_generation: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request to make: sleep `delay` seconds first, then GET `url` through `proxy`."""

    url: str
    proxy: ProxyChoice
    no_cache: bool = False
    delay: float = 0.0
    route: Route | None = field(default=None, compare=False, repr=False)


class RouteState:
    """Current host and proxy shared by every download of one mount.

    Thread-safety: all methods take one internal lock. A failure report carries the generation
    of the route it was made on; a switch happens only if that generation is still current, so
    N threads failing on the same proxy at once switch it once, not N times.
    """

    def __init__(self, hosts: Sequence[str], proxies: ProxyConfig, *,
                 proxy_reset_after: float = 0.0, host_reset_after: float = 0.0,
                 rng: random.Random | None = None) -> None:
        if not hosts:
            raise ValueError("at least one host is needed")
        self._lock = threading.Lock()
        self._hosts = tuple(hosts)
        self._groups = proxies.groups if proxies.groups else ((DIRECT,),)
        self._proxy_reset_after = proxy_reset_after
        self._host_reset_after = host_reset_after
        self._rng = rng or random.Random()
        self._host_index = 0
        self._host_generation = 0
        self._host_switched_at: float | None = None
        self._group_index = 0
        self._burned: set[ProxyChoice] = set()
        self._proxy_generation = 0
        self._proxy_switched_at: float | None = None
        self._proxy = self._pick(self._groups[0])

    @property
    def hosts(self) -> tuple[str, ...]:
        return self._hosts

    @property
    def total_proxies(self) -> int:
        return sum(len(g) for g in self._groups)

    def _pick(self, group: Sequence[ProxyChoice]) -> ProxyChoice:
        live = [p for p in group if p not in self._burned]
        return self._rng.choice(live or list(group))

    def _apply_resets(self, now: float) -> None:
        if (self._proxy_switched_at is not None and self._proxy_reset_after > 0
                and now - self._proxy_switched_at >= self._proxy_reset_after):
            self._reset_proxies_locked(None)
        if (self._host_switched_at is not None and self._host_reset_after > 0
                and now - self._host_switched_at >= self._host_reset_after):
            self._host_index = 0
            self._host_generation += 1
            self._host_switched_at = None

    def route(self, now: float) -> Route:
        with self._lock:
            self._apply_resets(now)
            return Route(self._host_index, self._hosts[self._host_index],
                         self._host_generation, self._proxy, self._proxy_generation)

    def current(self) -> tuple[str, ProxyChoice]:
        """Current host and proxy without applying reset timers (for the magic xattrs)."""
        with self._lock:
            return self._hosts[self._host_index], self._proxy

    def fail_proxy(self, seen: Route, now: float) -> None:
        """Burn the proxy of `seen`; pick another live one of the group, else the next group."""
        with self._lock:
            if seen.proxy_generation != self._proxy_generation:
                return  # someone already switched away from it
            self._burned.add(seen.proxy)
            group = self._groups[self._group_index]
            if all(p in self._burned for p in group):
                self._group_index = (self._group_index + 1) % len(self._groups)
                group = self._groups[self._group_index]
                self._burned.difference_update(group)
            self._proxy = self._pick(group)
            self._proxy_generation += 1
            self._proxy_switched_at = now if self._group_index or self._burned else None

    def fail_host(self, seen: Route, now: float) -> None:
        """Move to the next host of the ring, unless another thread already did."""
        with self._lock:
            if seen.host_generation != self._host_generation:
                return
            self._host_index = (self._host_index + 1) % len(self._hosts)
            self._host_generation += 1
            self._host_switched_at = now if self._host_index else None

    def reset_proxies(self, seen: Route) -> None:
        """Back to group 0 with nothing burned (a proxy failure converted to a host failover)."""
        with self._lock:
            self._reset_proxies_locked(seen)

    def _reset_proxies_locked(self, seen: Route | None) -> None:
        if seen is not None and seen.proxy_generation != self._proxy_generation:
            return
        self._group_index = 0
        self._burned.clear()
        self._proxy = self._pick(self._groups[0])
        self._proxy_generation += 1
        self._proxy_switched_at = None

    def order_hosts(self, order: Sequence[int]) -> None:
        """Reorder the ring (Geo API result: 0-based permutation) and go back to host 0."""
        with self._lock:
            if sorted(order) != list(range(len(self._hosts))):
                raise ValueError(f"not a permutation of {len(self._hosts)} hosts: {order}")
            self._hosts = tuple(self._hosts[i] for i in order)
            self._host_index = 0
            self._host_generation += 1
            self._host_switched_at = None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Same-URL retry delays: first random in [0, init], then doubling, capped at max."""

    init: float = 2.0
    max: float = 10.0

    def next(self, previous: float, rng: random.Random) -> float:
        if previous <= 0:
            return rng.uniform(0.0, self.init)
        return min(previous * 2, self.max)


Plan = Generator[Attempt, Failure, None]


def _attempt(route: Route, path: str, no_cache: bool, delay: float = 0.0) -> Attempt:
    return Attempt(f"{route.host}/{path.lstrip('/')}", route.proxy, no_cache, delay, route)


def plan(state: RouteState, path: str, *, now: Callable[[], float], max_retries: int = 1,
         backoff: Backoff | None = None, rng: random.Random | None = None) -> Plan:
    """Attempts for one object; `send` each attempt's Failure; StopIteration = give up.

    Sending `Failure.OK` also ends the plan. Retries are counted per route (host + proxy).
    The budget is this request's, but the route is shared, so it is counted against what
    the request actually met: every host change it sees (its own switch, or another
    thread's) counts as one host tried, and proxy failures blame the host only once every
    proxy failed this request *on the current host* (distinct proxies, counted afresh on
    each host). Otherwise a request that met a dead proxy on a host another thread had
    just given up would blame the next, healthy host and turn the ring back to the dead
    one. A cap on the number of failures guarantees the plan ends whatever other threads
    do to the shared state."""
    backoff = backoff or Backoff()
    rng = rng or random.Random()
    route = state.route(now())
    hosts_tried, retries, delay, no_cache = 1, 0, 0.0, False
    failed_proxies: set[ProxyChoice] = set()  # distinct proxies that failed on this host
    failures_left = _failure_cap(state, max_retries)
    failure = yield _attempt(route, path, no_cache)
    while failure is not Failure.OK:
        failures_left -= 1
        if failures_left <= 0:
            return
        if failure is Failure.BAD_DATA and not no_cache:
            no_cache = True
            failure = yield _attempt(route, path, no_cache)
            continue
        if failure.is_transfer and retries < max_retries:
            retries += 1
            delay = backoff.next(delay, rng)
            failure = yield _attempt(route, path, no_cache, delay)
            continue
        if failure.is_proxy:
            failed_proxies.add(route.proxy)
        if failure.is_proxy and len(failed_proxies) < state.total_proxies:
            state.fail_proxy(route, now())
        elif hosts_tried < len(state.hosts):
            if failure.is_proxy:  # every proxy failed: blame the host, start proxies afresh
                state.reset_proxies(route)
            state.fail_host(route, now())
        else:
            return
        retries, delay = 0, 0.0
        previous, route = route, state.route(now())
        if route.host_generation != previous.host_generation:  # on another host now
            hosts_tried += 1
            failed_proxies.clear()
        failure = yield _attempt(route, path, no_cache)


def _failure_cap(state: RouteState, max_retries: int) -> int:
    """Twice what one request can meet without interference: on each host, every proxy
    with its retries, plus the no-cache retry."""
    per_host = state.total_proxies * (max(max_retries, 0) + 1) + 1
    return 2 * len(state.hosts) * per_host + 1
