"""Gather the facts and run every check, in report order: the node, the configuration,
the cache, then (with a repository) its Stratum-1s and proxies, trust chain and clock.

The gatherers are parameters so callers (and tests) can hand in facts; the defaults read
this node and use the real network."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pycvmfs.doctor import gather_config, gather_network, gather_node
from pycvmfs.doctor.cache import cache_results
from pycvmfs.doctor.node import NodeFacts, node_results
from pycvmfs.doctor.repository import config_results, network_results
from pycvmfs.doctor.result import CheckResult, warn
from pycvmfs.network.transport import Transport, default_transport


def repository_network(loaded: gather_config.LoadedConfig, transport: Transport,
                       now: Callable[[], dt.datetime]) -> list[CheckResult]:
    config = loaded.config
    if config is None:
        return [warn("network", "not checked: the configuration is incomplete",
                     "fix the configuration lines above, then run doctor again")]
    start = time.monotonic()
    routes = gather_network.routes_of(config)
    probes = gather_network.probe_routes(transport, routes,
                                         low_speed_limit=config.low_speed_limit)
    best = gather_network.first_working(probes, routes)
    left = max(gather_network.TRUST_MIN_S,
               gather_network.NETWORK_DEADLINE_S - (time.monotonic() - start))
    trust = None if best is None else gather_network.trust_within(
        transport, config, best, now(), left)
    return network_results(probes, trust, now(), gather_network.ROUTES_DEADLINE_S)


def run_doctor(fqrn: str | None, *, extra_files: Sequence[Path] = (),
               node: Callable[[], NodeFacts] = gather_node.gather,
               transport_factory: Callable[[], Transport] = default_transport,
               now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
               ) -> list[CheckResult]:
    results = node_results(node())
    loaded = gather_config.read_configuration(fqrn, extra_files=extra_files)
    results += config_results(loaded.facts)
    if loaded.merged is None:
        results.append(warn("cache", "not checked: the configuration could not be read",
                            "fix the configuration line above, then run doctor again"))
    else:
        results += cache_results(gather_config.gather_cache(loaded))
    if fqrn is not None:
        transport = transport_factory()
        try:
            results += repository_network(loaded, transport, now)
        finally:
            transport.close()
    return results
