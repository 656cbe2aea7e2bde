"""Repository checks: configuration, keys, each Stratum-1 and proxy, the verified trust
chain (whitelist expiry ahead) and the clock. Pure over the facts `gather_repository`
collects; times are passed in."""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.doctor.result import CheckResult, fail, ok, warn

SKEW_LIMIT_S = 300  # beyond this a clock is called wrong
WHITELIST_WARN_DAYS = 7
RESIGN_FIX = ("the repository's maintainers must re-sign the whitelist with the master key "
              "(`pycvmfs whitelist sign`, `cvmfs_server resign`)")


@dataclass(frozen=True, slots=True)
class ConfigFacts:
    """The configuration as read for one repository (or the node's defaults)."""

    fqrn: str | None
    root: Path
    root_problem: str = ""  # "" fine, "missing", or why it cannot be read
    files_read: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str = ""  # the files could not be applied at all (an untrusted file ...)
    server_urls: tuple[str, ...] = ()
    server_origin: str = "unset"
    keys: tuple[Path, ...] = ()
    keys_error: str = ""
    values_error: str = ""  # a typed value or combination refused


@dataclass(frozen=True, slots=True)
class RouteProbe:
    """One GET of `<server>/.cvmfspublished` through one proxy (or DIRECT)."""

    server: str
    proxy: str
    seconds: float | None  # None: no answer before the deadline
    problem: str = ""  # "" when a manifest came back
    date: str | None = None  # the Date header of the answer


@dataclass(frozen=True, slots=True)
class TrustFacts:
    """The trust chain as run against one route; `error` "" when it verified."""

    source: str
    error: str = ""
    expired: bool = False
    revision: int | None = None
    published: int | None = None  # manifest T, Unix seconds
    whitelist_expires: dt.datetime | None = None


def check_configuration(facts: ConfigFacts) -> CheckResult:
    name = "configuration"
    if facts.error:
        return fail(name, facts.error, "fix or remove the file named")
    if facts.root_problem == "missing":
        found = f"{facts.root} does not exist: built-in defaults only"
    elif facts.root_problem:
        return fail(name, f"{facts.root}: {facts.root_problem}",
                    f"ask the administrator to make {facts.root} readable (chmod a+rx)")
    else:
        found = f"{len(facts.files_read)} file(s) read under {facts.root}"
    if facts.warnings:
        more = f" (and {len(facts.warnings) - 1} more)" if len(facts.warnings) > 1 else ""
        return warn(name, f"{found}; {facts.warnings[0]}{more}", "fix the file and line named")
    return ok(name, found)


def check_server_url(facts: ConfigFacts) -> CheckResult:
    name = "CVMFS_SERVER_URL"
    if not facts.server_urls:
        return fail(name, f"not set for {facts.fqrn}",
                    f"set CVMFS_SERVER_URL=http://HOST/cvmfs/@fqrn@ in "
                    f"{facts.root}/config.d/{facts.fqrn}.conf (or --config FILE)")
    return ok(name, f"{len(facts.server_urls)} Stratum-1(s), set in {facts.server_origin}")


def check_keys(facts: ConfigFacts) -> CheckResult:
    name = "public keys"
    if facts.keys_error:
        return fail(name, facts.keys_error,
                    "install the repository's public key (CVMFS_KEYS_DIR or CVMFS_PUBLIC_KEY)")
    return ok(name, ", ".join(map(str, facts.keys)))


def check_values(facts: ConfigFacts) -> CheckResult | None:
    """A refused value or combination, when not already said by another check."""
    error = facts.values_error
    if not error or error == facts.keys_error or not facts.server_urls:
        return None
    return fail("settings", error, "fix the value in the file named")


def config_results(facts: ConfigFacts) -> list[CheckResult]:
    results = [check_configuration(facts)]
    if facts.fqrn is not None and not facts.error:
        results += [check_server_url(facts), check_keys(facts)]
        values = check_values(facts)
        if values is not None:
            results.append(values)
    return results


def _route_name(probe: RouteProbe) -> str:
    return f"{probe.server} via {probe.proxy}"


def route_results(probes: Sequence[RouteProbe], deadline_s: float) -> list[CheckResult]:
    """One line per route; a failing route is a warning while another works (the mount
    fails over), a failure when none does."""
    any_works = any(not p.problem and p.seconds is not None for p in probes)
    results = []
    for probe in probes:
        name = _route_name(probe)
        if probe.seconds is None:
            problem = f"no answer within {deadline_s:g} s"
        elif probe.problem:
            problem = f"{probe.problem} after {probe.seconds:.2f} s"
        else:
            results.append(ok(name, f"manifest in {probe.seconds:.2f} s"))
            continue
        if probe.proxy == "DIRECT":
            fix = (f"check that {probe.server} is up and reachable from this node (DNS, "
                   "firewall), or correct CVMFS_SERVER_URL")
        else:
            fix = (f"check the proxy {probe.proxy} and that it may reach {probe.server}, or "
                   "correct CVMFS_HTTP_PROXY")
        results.append(warn(name, problem, fix) if any_works else fail(name, problem, fix))
    return results


def check_trust(trust: TrustFacts | None) -> CheckResult:
    name = "trust chain"
    if trust is None:
        return fail(name, "not checked: no Stratum-1 answered", "make a Stratum-1 reachable "
                    "(see the lines above)")
    if trust.expired:
        return fail(name, trust.error, RESIGN_FIX)
    if trust.error:
        return fail(name, trust.error, "check that the public key is this repository's and "
                    "ask its maintainers if it is")
    return ok(name, f"revision {trust.revision} from {trust.source}: manifest, certificate "
              "and whitelist verified")


def check_whitelist(trust: TrustFacts | None, now: dt.datetime) -> CheckResult | None:
    expires = trust.whitelist_expires if trust is not None else None
    if trust is None or trust.error or expires is None:
        return None
    left = expires - now
    when = f"expires {expires:%Y-%m-%d %H:%M} UTC"
    if left < dt.timedelta(days=WHITELIST_WARN_DAYS):
        hours = max(0, int(left.total_seconds() // 3600))
        return warn("whitelist", f"{when}, in {hours} h: mounts fail after that",
                    RESIGN_FIX)
    return ok("whitelist", f"{when} ({left.days} days ahead)")


def server_skews(probes: Sequence[RouteProbe], now: dt.datetime) -> list[float]:
    """Local clock minus each server's Date header, in seconds (positive: local is ahead)."""
    skews = []
    for probe in probes:
        if probe.date is None or probe.problem:
            continue
        try:
            date = email.utils.parsedate_to_datetime(probe.date)
        except (TypeError, ValueError):
            continue
        if date.tzinfo is None:
            date = date.replace(tzinfo=dt.UTC)
        skews.append((now - date).total_seconds())
    return skews


def check_clock(probes: Sequence[RouteProbe], trust: TrustFacts | None,
                now: dt.datetime) -> CheckResult:
    """Skew against the servers' Date headers (the smallest one: a proxy may answer from
    its cache, which only makes the server look late), and a manifest published in the
    future."""
    name = "clock"
    fix = "synchronise this node's clock (NTP: chrony or systemd-timesyncd)"
    skews = server_skews(probes, now)
    parts = []
    if skews:
        skew = min(skews, key=abs)
        parts.append(f"{skew:+.0f} s against the servers' Date")
        if abs(skew) > SKEW_LIMIT_S:
            return warn(name, f"{parts[0]}: this clock is {abs(skew):.0f} s "
                        f"{'ahead' if skew > 0 else 'behind'}", fix)
    if trust is not None and trust.published is not None:
        age = now.timestamp() - trust.published
        if age < -SKEW_LIMIT_S:
            return warn(name, f"the manifest was published {-age:.0f} s in this clock's "
                        "future: this clock is behind", fix)
        parts.append(f"manifest published {_duration(age)} ago")
    if not parts:
        return ok(name, "not compared (no server answered)")
    return ok(name, "; ".join(parts))


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def network_results(probes: Sequence[RouteProbe], trust: TrustFacts | None,
                    now: dt.datetime, deadline_s: float) -> list[CheckResult]:
    results = route_results(probes, deadline_s)
    results.append(check_trust(trust))
    whitelist = check_whitelist(trust, now)
    if whitelist is not None:
        results.append(whitelist)
    results.append(check_clock(probes, trust, now))
    return results
