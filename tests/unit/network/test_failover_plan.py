"""Scripted failure sequences through the pure failover plan; no sockets, fake clock."""

from __future__ import annotations

import random
import threading

import pytest

from pycvmfs.network.failover import Attempt, Backoff, RouteState, plan
from pycvmfs.network.failure import Failure
from pycvmfs.network.proxies import DIRECT, Proxy, ProxyChoice, parse_proxies

H1, H2, H3 = "http://s1/cvmfs/r", "http://s2/cvmfs/r", "http://s3/cvmfs/r"
P1, P2, P3 = Proxy("http://p1:3128"), Proxy("http://p2:3128"), Proxy("http://p3:3128")
PATH = "data/ab/cdef"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_state(hosts: list[str], proxies: str, **kw: float) -> RouteState:
    return RouteState(hosts, parse_proxies(proxies), rng=random.Random(7), **kw)


def drive(state: RouteState, script: list[Failure], clock: Clock | None = None,
          max_retries: int = 1) -> tuple[list[Attempt], bool]:
    """Attempts produced for the script; second value: whether the plan gave up."""
    steps = plan(state, PATH, now=clock or Clock(), max_retries=max_retries,
                 backoff=Backoff(2.0, 5.0), rng=random.Random(3))
    attempts = [next(steps)]
    for failure in script:
        try:
            attempts.append(steps.send(failure))
        except StopIteration:
            return attempts, True
    return attempts, False


def where(attempts: list[Attempt]) -> list[tuple[str, ProxyChoice, bool]]:
    return [(a.url.split("/cvmfs")[0], a.proxy, a.no_cache) for a in attempts]


def test_ok_first_time() -> None:
    attempts, gave_up = drive(make_state([H1], "DIRECT"), [Failure.OK])
    assert gave_up and [a.url for a in attempts] == [f"{H1}/{PATH}"]
    assert attempts[0].proxy is DIRECT and attempts[0].delay == 0


def test_transfer_error_retried_same_url_with_backoff_then_host_switch() -> None:
    state = make_state([H1, H2], "DIRECT")
    attempts, gave_up = drive(state, [Failure.HOST_CONNECTION] * 4, max_retries=2)
    assert where(attempts) == [("http://s1", DIRECT, False)] * 3 + [
        ("http://s2", DIRECT, False)] * 2
    assert not gave_up
    delays = [a.delay for a in attempts]
    assert delays[0] == 0 and 0 <= delays[1] <= 2.0 and delays[2] == min(2 * delays[1], 5.0)
    assert delays[3] == 0 and 0 <= delays[4] <= 2.0


def test_backoff_is_capped() -> None:
    backoff, rng = Backoff(2.0, 5.0), random.Random(0)
    first = backoff.next(0, rng)
    assert 0 <= first <= 2.0
    assert backoff.next(4.0, rng) == 5.0 and backoff.next(1.0, rng) == 2.0


def test_http_error_is_not_retried_on_same_url() -> None:
    attempts, _ = drive(make_state([H1, H2], "DIRECT"), [Failure.HOST_HTTP])
    assert where(attempts) == [("http://s1", DIRECT, False), ("http://s2", DIRECT, False)]


def test_bad_data_gets_one_no_cache_retry_then_next_host() -> None:
    state = make_state([H1, H2], f"{P1.url}")
    attempts, gave_up = drive(state, [Failure.BAD_DATA, Failure.BAD_DATA, Failure.BAD_DATA])
    assert where(attempts) == [("http://s1", P1, False), ("http://s1", P1, True),
                               ("http://s2", P1, True)]
    assert gave_up  # second host also bad: every host tried once


def test_bad_data_then_ok_after_no_cache() -> None:
    attempts, gave_up = drive(make_state([H1], "DIRECT"), [Failure.BAD_DATA, Failure.OK])
    assert where(attempts)[1] == ("http://s1", DIRECT, True) and gave_up


def test_proxy_switch_within_group_then_next_group() -> None:
    state = make_state([H1], f"{P1.url}|{P2.url};{P3.url}")
    attempts, gave_up = drive(state, [Failure.PROXY_HTTP] * 3)
    proxies = [a.proxy for a in attempts]
    assert set(proxies[:2]) == {P1, P2} and proxies[2] == P3
    assert gave_up  # all three proxies tried, no other host


def test_all_proxies_failed_converts_to_host_failover_and_resets_groups() -> None:
    state = make_state([H1, H2], f"{P1.url}|{P2.url};{P3.url}")
    script = [Failure.PROXY_HTTP] * 3
    attempts, gave_up = drive(state, script)
    assert not gave_up
    assert [a.url.split("/cvmfs")[0] for a in attempts] == ["http://s1"] * 3 + ["http://s2"]
    assert attempts[3].proxy in (P1, P2)  # back in group 0, nothing burned
    assert state.current()[0] == H2


def test_proxy_connection_errors_retry_then_switch_proxy() -> None:
    state = make_state([H1], f"{P1.url}|{P2.url}")
    attempts, _ = drive(state, [Failure.PROXY_CONNECTION] * 2)
    assert attempts[0].proxy == attempts[1].proxy and attempts[1].delay > 0
    assert attempts[2].proxy != attempts[0].proxy and attempts[2].delay == 0


def test_host_ring_tried_once_each() -> None:
    attempts, gave_up = drive(make_state([H1, H2, H3], "DIRECT"), [Failure.HOST_HTTP] * 3)
    assert gave_up and [a.url.split("/cvmfs")[0] for a in attempts] == [
        "http://s1", "http://s2", "http://s3"]


def test_host_ring_wraps_from_the_current_host() -> None:
    state = make_state([H1, H2, H3], "DIRECT")
    drive(state, [Failure.HOST_HTTP, Failure.HOST_HTTP, Failure.OK])  # now at s3
    attempts, gave_up = drive(state, [Failure.HOST_HTTP] * 3)
    assert gave_up and [a.url.split("/cvmfs")[0] for a in attempts] == [
        "http://s3", "http://s1", "http://s2"]


def test_switches_are_global() -> None:
    state = make_state([H1, H2], f"{P1.url}|{P2.url}")
    first, _ = drive(state, [Failure.PROXY_HTTP, Failure.OK])
    later, _ = drive(state, [Failure.OK])
    assert later[0].proxy == first[1].proxy != first[0].proxy


def test_proxy_reset_timer() -> None:
    clock = Clock()
    state = make_state([H1], f"{P1.url};{P2.url}", proxy_reset_after=300)
    attempts, _ = drive(state, [Failure.PROXY_HTTP, Failure.OK], clock)
    assert attempts[1].proxy == P2
    clock.t += 299
    assert state.route(clock()).proxy == P2
    clock.t += 1
    assert state.route(clock()).proxy == P1


def test_host_reset_timer_and_disabled_timers() -> None:
    clock = Clock()
    state = make_state([H1, H2], "DIRECT", host_reset_after=1800)
    drive(state, [Failure.HOST_HTTP, Failure.OK], clock)
    clock.t += 1799
    assert state.route(clock()).host == H2
    clock.t += 1
    assert state.route(clock()).host == H1
    never = make_state([H1, H2], f"{P1.url};{P2.url}")
    drive(never, [Failure.HOST_HTTP, Failure.OK], clock)
    drive(never, [Failure.PROXY_HTTP, Failure.OK], clock)
    clock.t += 10**6
    route = never.route(clock())
    assert route.host == H2 and route.proxy == P2


def test_concurrent_failures_switch_once() -> None:
    state = make_state([H1, H2, H3], f"{P1.url}|{P2.url}|{P3.url}")
    seen = state.route(0)
    barrier = threading.Barrier(8)

    def fail() -> None:
        barrier.wait()
        state.fail_host(seen, 0)
        state.fail_proxy(seen, 0)

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    route = state.route(0)
    assert route.host == H2  # one switch, not eight
    assert route.proxy != seen.proxy and route.proxy_generation == seen.proxy_generation + 1


def test_order_hosts() -> None:
    state = make_state([H1, H2, H3], "DIRECT")
    state.order_hosts([2, 0, 1])
    assert state.hosts == (H3, H1, H2) and state.route(0).host == H3
    with pytest.raises(ValueError):
        state.order_hosts([0, 0, 1])
    with pytest.raises(ValueError):
        RouteState([], parse_proxies("DIRECT"))


def test_stale_reset_is_ignored() -> None:
    state = make_state([H1], f"{P1.url};{P2.url}")
    stale = state.route(0)
    state.fail_proxy(stale, 0)
    state.reset_proxies(stale)  # another thread already moved on: no double switch
    assert state.route(0).proxy == P2
    state.reset_proxies(state.route(0))
    assert state.route(0).proxy == P1


def test_a_host_switched_by_another_request_gets_a_fresh_proxy_budget() -> None:
    """Two concurrent requests, the first Stratum-1 and then one proxy dead: B's late
    failure on H1 finds the ring already moved to H2 by A; on H2, B meets the dead proxy
    and must try the other proxy there, not blame the healthy H2 and turn the ring back
    to the dead H1 (seen through a FUSE mount in test_client_faults)."""
    state = make_state([H1, H2], f"{P1.url}|{P2.url}")
    clock = Clock()
    a = plan(state, PATH, now=clock, backoff=Backoff(0, 0))
    b = plan(state, PATH, now=clock, backoff=Backoff(0, 0))
    assert next(a).url.startswith(H1) and next(b).url.startswith(H1)
    a.send(Failure.PROXY_HTTP)  # the proxy cannot reach H1 (X-Squid-Error)
    assert a.send(Failure.PROXY_HTTP).url.startswith(H2)  # neither can the other: H2
    on_h2 = b.send(Failure.PROXY_HTTP)  # B's answer from H1 arrives late
    assert on_h2.url.startswith(H2)
    assert b.send(Failure.PROXY_CONNECTION).proxy == on_h2.proxy  # the retry
    other = b.send(Failure.PROXY_CONNECTION)  # that proxy is dead
    assert other.url.startswith(H2) and other.proxy in (P1, P2) and other.proxy != on_h2.proxy
    assert state.current()[0] == H2
