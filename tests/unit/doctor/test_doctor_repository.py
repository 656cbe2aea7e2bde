"""Repository checks of `pycvmfs doctor`: pure checks over injected facts, then the network
facts through a MockTransport serving the bundled demo repository (no sockets), and the
whole runner and CLI with the node's facts handed in."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner

from pycvmfs.cli.doctor import doctor_command
from pycvmfs.doctor import runner
from pycvmfs.doctor.gather_config import read_configuration
from pycvmfs.doctor.gather_network import (
    Route,
    check_trust_chain,
    first_working,
    probe_route,
    probe_routes,
    routes_of,
)
from pycvmfs.doctor.repository import (
    ConfigFacts,
    RouteProbe,
    TrustFacts,
    check_clock,
    check_configuration,
    check_trust,
    check_whitelist,
    config_results,
    route_results,
    server_skews,
)
from pycvmfs.doctor.result import CheckResult, Level, exit_code
from pycvmfs.network.failure import ErrorKind
from pycvmfs.network.proxies import DIRECT, Proxy, ProxyChoice
from pycvmfs.network.transport import MockTransport
from tests.mounting import DEMO_FQRN, DEMO_KEY, DEMO_REPO
from tests.unit.doctor.doctor_facts import GOOD as GOOD_NODE

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
S1 = "http://s1.test/cvmfs/demo.pycvmfs.org"
S2 = "http://s2.test/cvmfs/demo.pycvmfs.org"
DATE = "Mon, 07 Dec 2026 12:00:00 GMT"


# --- pure checks ------------------------------------------------------------------------------


def test_configuration_lines() -> None:
    root = Path("/etc/cvmfs")
    assert check_configuration(ConfigFacts(None, root, "missing")).found.endswith(
        "built-in defaults only")
    warned = check_configuration(ConfigFacts(None, root, files_read=(root / "default.local",),
                                             warnings=("a:1: bad", "a:2: bad")))
    assert warned.level is Level.WARN and "a:1: bad (and 1 more)" in warned.found
    closed = check_configuration(ConfigFacts(None, root, "cannot be read by uid 1000"))
    assert closed.level is Level.FAIL and "chmod a+rx" in closed.fix
    refused = check_configuration(ConfigFacts(None, root, error="default.local is writable"))
    assert refused.level is Level.FAIL


def test_repository_configuration_lines() -> None:
    facts = ConfigFacts(DEMO_FQRN, Path("/etc/cvmfs"), keys_error="no public key found",
                        values_error="no public key found")
    names = [(r.name, r.level) for r in config_results(facts)]
    assert names == [("configuration", Level.OK), ("CVMFS_SERVER_URL", Level.FAIL),
                     ("public keys", Level.FAIL)]
    server = config_results(facts)[1]
    assert "config.d/demo.pycvmfs.org.conf" in server.fix
    bad_value = ConfigFacts(DEMO_FQRN, Path("/etc/cvmfs"), server_urls=(S1,),
                            keys=(DEMO_KEY,), values_error="CVMFS_TIMEOUT='-5': too small")
    assert [r.name for r in config_results(bad_value)][-1] == "settings"


def test_a_failing_route_is_a_warning_while_another_works() -> None:
    probes = [RouteProbe(S1, "DIRECT", 0.01), RouteProbe(S2, "DIRECT", 0.5, "host HTTP error "
                                                                           "(HTTP 404)"),
              RouteProbe(S2, "http://squid.test:3128", None)]
    results = route_results(probes, 8.0)
    assert [r.level for r in results] == [Level.OK, Level.WARN, Level.WARN]
    assert "no answer within 8 s" in results[2].found and "squid.test" in results[2].fix
    none = route_results(probes[1:], 8.0)
    assert [r.level for r in none] == [Level.FAIL, Level.FAIL]
    assert none[0].name == f"{S2} via DIRECT" and S2 in none[0].fix


def test_trust_and_whitelist_lines() -> None:
    assert check_trust(None).level is Level.FAIL
    expired = check_trust(TrustFacts(S1, "whitelist expired at ...", expired=True))
    assert expired.level is Level.FAIL and "re-sign" in expired.fix
    good = TrustFacts(S1, revision=2, published=int(NOW.timestamp()) - 3600,
                      whitelist_expires=NOW + dt.timedelta(days=30))
    assert check_trust(good).level is Level.OK
    assert check_whitelist(good, NOW) == CheckResult(
        "whitelist", Level.OK, "expires 2027-01-06 12:00 UTC (30 days ahead)")
    soon = dataclasses.replace(good, whitelist_expires=NOW + dt.timedelta(days=2))
    result = check_whitelist(soon, NOW)
    assert result is not None and result.level is Level.WARN and "in 48 h" in result.found
    assert check_whitelist(TrustFacts(S1, "x", expired=True), NOW) is None


def test_clock_skew_and_future_manifest() -> None:
    ahead = [RouteProbe(S1, "DIRECT", 0.1, date="Mon, 07 Dec 2026 11:50:00 GMT")]
    assert server_skews(ahead, NOW) == [600.0]
    result = check_clock(ahead, None, NOW)
    assert result.level is Level.WARN and "600 s ahead" in result.found
    # a proxy's cached answer makes the server look late: the smallest skew counts
    both = [*ahead, RouteProbe(S2, "DIRECT", 0.1, date=DATE)]
    assert check_clock(both, None, NOW).level is Level.OK
    future = TrustFacts(S1, revision=1, published=int(NOW.timestamp()) + 3600)
    behind = check_clock([], future, NOW)
    assert behind.level is Level.WARN and "behind" in behind.found
    assert check_clock([RouteProbe(S1, "DIRECT", 0.1, date="garbage")], None, NOW).found \
        == "not compared (no server answered)"


# --- network facts through a MockTransport ----------------------------------------------------


def demo_site(down: frozenset[str] = frozenset(),
              whitelist: bytes | None = None) -> MockTransport:
    def serve(url: str, proxy: ProxyChoice, headers: Mapping[str, str]
              ) -> tuple[int, dict[str, str], bytes]:
        if any(url.startswith(host) for host in down) or str(proxy) in down:
            raise MockTransport.Error(ErrorKind.CONNECT)
        relative = url.split("/cvmfs/demo.pycvmfs.org/", 1)[1]
        if relative == ".cvmfswhitelist" and whitelist is not None:
            return 200, {"Date": DATE}, whitelist
        path = DEMO_REPO / relative
        return (200, {"Date": DATE}, path.read_bytes()) if path.is_file() else (404, {}, b"")
    return MockTransport(serve)


def test_probe_route_times_and_reads_the_date() -> None:
    ticks = iter([1.0, 1.25])
    probe = probe_route(demo_site(), Route(S1, DIRECT), 3.0, 1024, clock=lambda: next(ticks))
    assert probe == RouteProbe(S1, "DIRECT", 0.25, "", DATE)
    down = probe_route(demo_site(frozenset({S1})), Route(S1, DIRECT), 3.0, 1024)
    assert down.problem == "host connection failed or timed out (connection failed)"
    missing = probe_route(demo_site(), Route(S1 + "/nothing", DIRECT), 3.0, 1024)
    assert "HTTP 404" in missing.problem


def test_probe_routes_every_pair_and_picks_a_working_one() -> None:
    squid = Proxy("http://squid.test:3128")
    routes = [Route(S1, squid), Route(S1, DIRECT), Route(S2, DIRECT)]
    probes = probe_routes(demo_site(frozenset({S1, str(squid)})), routes, low_speed_limit=1)
    assert [bool(p.problem) for p in probes] == [True, True, False]
    assert first_working(probes, routes) == Route(S2, DIRECT)
    assert first_working(probes[:2], routes[:2]) is None


def test_trust_chain_verifies_the_demo_repository(tmp_path: Path) -> None:
    config = read_configuration(DEMO_FQRN, environ=demo_env(tmp_path)).config
    assert config is not None
    assert routes_of(config) == [Route(S1, DIRECT), Route(S2, DIRECT)]
    trust = check_trust_chain(demo_site(), config, Route(S1, DIRECT), NOW)
    assert trust.error == "" and trust.revision == 2 and trust.whitelist_expires is not None
    later = check_trust_chain(demo_site(), config, Route(S1, DIRECT),
                              trust.whitelist_expires + dt.timedelta(hours=1))
    assert later.expired and "expired" in later.error
    forged = check_trust_chain(demo_site(whitelist=b"garbage"), config, Route(S1, DIRECT),
                               NOW)
    assert forged.error and not forged.expired


# --- the runner and the CLI -------------------------------------------------------------------


def demo_env(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "etc-cvmfs"
    (root / "config.d").mkdir(parents=True, exist_ok=True)
    (root / "config.d" / f"{DEMO_FQRN}.conf").write_text(
        f"CVMFS_SERVER_URL='{S1};{S2}'\nCVMFS_PUBLIC_KEY={DEMO_KEY}\n"
        f"CVMFS_CACHE_BASE={tmp_path / 'cache'}\n")
    return {"PYCVMFS_CONFIG_ROOT": str(root), "HOME": str(tmp_path)}


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: MockTransport,
        fqrn: str | None = DEMO_FQRN) -> list[CheckResult]:
    for key, value in demo_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return runner.run_doctor(fqrn, node=lambda: GOOD_NODE, transport_factory=lambda: transport,
                             now=lambda: NOW)


def test_runner_all_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = run(tmp_path, monkeypatch, demo_site())
    assert all(r.level is Level.OK for r in results), [r for r in results if r.level]
    names = [r.name for r in results]
    assert names[6:] == ["configuration", "CVMFS_SERVER_URL", "public keys", "cache directory",
                         "cache space", f"{S1} via DIRECT", f"{S2} via DIRECT", "trust chain",
                         "whitelist", "clock"]
    assert exit_code(results) == 0


def test_runner_with_every_stratum1_down(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    results = run(tmp_path, monkeypatch, demo_site(frozenset({S1, S2})))
    failed = [r.name for r in results if r.level is Level.FAIL]
    assert failed == [f"{S1} via DIRECT", f"{S2} via DIRECT", "trust chain"]
    assert exit_code(results) == 1


def test_runner_without_a_repository_stays_off_the_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = demo_site()
    results = run(tmp_path, monkeypatch, transport, fqrn=None)
    assert [r.name for r in results][-3:] == ["configuration", "cache directory", "cache space"]
    assert transport.requests == []


def test_cli_prints_one_line_per_check_and_exits_with_the_worst(
        monkeypatch: pytest.MonkeyPatch) -> None:
    results = [CheckResult("/dev/fuse", Level.OK, "fine"),
               CheckResult("cache space", Level.WARN, "no quota", "set CVMFS_QUOTA_LIMIT")]
    monkeypatch.setattr(runner, "run_doctor", lambda fqrn, extra_files: results)
    done = CliRunner().invoke(doctor_command, [], standalone_mode=False)
    assert done.return_value == 3
    assert done.output.splitlines() == [
        "ok    /dev/fuse    fine",
        "warn  cache space  no quota  -> fix: set CVMFS_QUOTA_LIMIT",
        "doctor: 1 ok, 1 warn, 0 fail",
    ]
    done = CliRunner().invoke(doctor_command, ["--json", "x.example.org"],
                              standalone_mode=False)
    report = json.loads(done.output)
    assert (report["fqrn"], report["result"], report["exit_code"]) == ("x.example.org",
                                                                         "warn", 3)
    assert report["checks"][1] == {"name": "cache space", "level": "warn",
                                   "found": "no quota", "fix": "set CVMFS_QUOTA_LIMIT"}


def test_runner_with_an_unreadable_configuration(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in demo_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    transport = demo_site()
    results = runner.run_doctor(DEMO_FQRN, extra_files=[tmp_path / "missing.conf"],
                                node=lambda: GOOD_NODE, transport_factory=lambda: transport,
                                now=lambda: NOW)
    assert [(r.name, r.level) for r in results[6:]] == [
        ("configuration", Level.FAIL), ("cache", Level.WARN), ("network", Level.WARN)]
    assert "missing.conf: no such file" in results[6].found
    assert transport.requests == []
