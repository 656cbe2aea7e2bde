"""Typed configuration values: what each key the client reads may hold, in one table, and
the one layer (`Typed`) that reads merged settings through it.

Why: a bad value (`CVMFS_TIMEOUT=0`, a proxy `http://[::1`) must end as one line naming the
key, the value and the `file:line` it was set in, never as a traceback from the network
code that would have used it. Every accessor of `Typed` turns every problem into such a
ConfigError; `parsed` does it for the parsers of `network.proxies` as well. A key must be in
`INTEGER_KEYS` / `BOOLEAN_KEYS` to be read as a number or a boolean, so the tables are the
complete list (tests iterate them); `CHECKS` adds the keys with a syntax of their own (server
URLs, proxy groups, dates, root hashes, choices). `Typed.problems` checks all of them at once
and each error says what is allowed. In proxy groups `auto` (proxies from PAC files) is
accepted and `without_auto` removes it: pycvmfs reads no PAC files, `config` warns.

Ranges follow the reference's meaning of each key (`mountpoint.cc`, `network/download.cc`,
which parse every number with `sscanf("%llu")`: anything unparsable is 0, a negative number
wraps around). Where we are stricter, `note` says so:
- numbers must be plain decimal integers (the reference reads `5s` as 5 and `x` as 0);
- `CVMFS_TIMEOUT`/`CVMFS_TIMEOUT_DIRECT` 0 is refused: the reference hands 0 to libcurl,
  which then waits 300 s to connect and never aborts a stalled transfer;
- upper bounds on retries and backoff keep one request's worst case finite;
- booleans must be yes/no, on/off, true/false or 1/0 (the reference takes anything else
  as "off").
`CVMFS_KCACHE_TIMEOUT` below 0 is taken as 0 as the reference does, with a warning.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar
from urllib.parse import urlsplit

from pycvmfs.config_defaults import home_dir
from pycvmfs.errors import ConfigError

_T = TypeVar("_T")
_TRUE: Final = frozenset({"yes", "on", "1", "true"})
_FALSE: Final = frozenset({"no", "off", "0", "false"})
_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,30}")
_UINT32: Final = 2**32 - 1  # the reference keeps these in `unsigned`
DATE_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"  # CVMFS_REPOSITORY_DATE


@dataclass(frozen=True, slots=True)
class IntegerKey:
    """A numeric key: `default` when set to the empty string, the accepted range, and what
    a value means (said in every error)."""

    default: int | None
    minimum: int
    maximum: int
    unit: str
    note: str = ""  # why the range is what it is, where we differ from the reference
    also: frozenset[int] = frozenset()  # accepted outside the range (-1: unmanaged quota)
    clamp_below: bool = False  # below `minimum`: use `minimum` with a warning (reference)

    def allowed(self) -> str:
        """What a value may be, for messages: `-1 or 1 to 1000 MB`."""
        also = "".join(f"{extra} or " for extra in sorted(self.also))
        return f"{also}{self.minimum} to {self.maximum} {self.unit}"


INTEGER_KEYS: Final = MappingProxyType({
    "CVMFS_TIMEOUT": IntegerKey(
        5, 1, 3600, "seconds", "0 would mean no timeout at all (the reference passes it to "
        "libcurl: 300 s to connect, stalled transfers never aborted)"),
    "CVMFS_TIMEOUT_DIRECT": IntegerKey(
        5, 1, 3600, "seconds", "0 would mean no timeout at all (the reference passes it to "
        "libcurl: 300 s to connect, stalled transfers never aborted)"),
    "CVMFS_LOW_SPEED_LIMIT": IntegerKey(1024, 0, _UINT32, "bytes/s",
                                        "0 turns the low-speed abort off"),
    "CVMFS_MAX_RETRIES": IntegerKey(1, 0, 20, "retries",
                                    "more would let one request run for hours"),
    "CVMFS_BACKOFF_INIT": IntegerKey(2, 0, 600, "seconds"),
    "CVMFS_BACKOFF_MAX": IntegerKey(10, 0, 600, "seconds"),
    "CVMFS_PROXY_RESET_AFTER": IntegerKey(0, 0, _UINT32, "seconds", "0: never go back"),
    "CVMFS_HOST_RESET_AFTER": IntegerKey(0, 0, _UINT32, "seconds", "0: never go back"),
    "CVMFS_MAX_SERVERS": IntegerKey(0, 0, _UINT32, "servers", "0: no limit"),
    "CVMFS_KCACHE_TIMEOUT": IntegerKey(60, 0, 2**31 - 1, "seconds", clamp_below=True),
    "CVMFS_MAX_TTL": IntegerKey(None, 0, _UINT32 // 60, "minutes", "0: no limit"),
    "PYCVMFS_MIN_TTL": IntegerKey(
        60, 1, 86400, "seconds", "the floor of the repository's TTL: 0 would let a repository "
        "with TTL 0 make every client fetch its manifest in a loop"),
    "CVMFS_NFILES": IntegerKey(131072, 64, 2**30, "open files"),
    "PYCVMFS_MAX_CATALOG_MB": IntegerKey(
        1024, 1, 1 << 40, "MiB", "the largest catalog or history database accepted "
        "(inflated); the reference has no such limit"),
    "CVMFS_QUOTA_LIMIT": IntegerKey(1024, 1, (2**63 - 1) >> 20, "MB", "-1: unmanaged",
                                    also=frozenset({-1})),
    "CVMFS_BUNDLE_POOL_SIZE": IntegerKey(
        None, 1, 256, "threads", "file bundle prefetch threads; unset: the reference's 8, "
        "at most one per usable CPU (the reference ignores 0 or an unparsable value and "
        "keeps 8)"),
})

BOOLEAN_KEYS: Final = MappingProxyType({
    "CVMFS_USE_GEOAPI": False,
    "CVMFS_FOLLOW_REDIRECTS": False,
    "CVMFS_SHARED_CACHE": True,
    "CVMFS_AUTO_UPDATE": True,
    "CVMFS_CLAIM_OWNERSHIP": True,
    "CVMFS_WORLD_READABLE": False,
    "CVMFS_CHECK_PERMISSIONS": True,
    "CVMFS_STRICT_MOUNT": False,
    "CVMFS_HIDE_MAGIC_XATTRS": False,
    "CVMFS_USE_CDN": False,
    "CVMFS_USE_OPENHTC": False,  # the older name of CVMFS_USE_CDN
    "CVMFS_PREFETCH_FILEBUNDLES": True,  # the reference's default is off (2.14)
    "PYCVMFS_NO_OPEN": True,  # FUSE no-open (the lowlevel backend); no reference key
})


def shown(value: str, limit: int = 120) -> str:
    """`value` quoted for a one-line message, shortened when long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def value_error(key: str, value: str, origin: str, why: str) -> ConfigError:
    return ConfigError(f"{key}={shown(value)} (set in {origin}): {why}")


def parse_bool(key: str, value: str, origin: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise value_error(key, value, origin,
                      "not a boolean (use yes/no, on/off, true/false or 1/0)")


def check_url(url: str, what: str) -> str:
    """`url` if it is an http(s) URL with a host (and a valid port); ConfigError naming
    `what` otherwise. Spaces and control characters are refused: `urlsplit` would drop
    some of them silently, and they have no place in a URL."""
    if not url.isprintable() or any(c.isspace() for c in url):
        raise ConfigError(f"{what} {shown(url)} contains a space or control character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError as exc:
        raise ConfigError(f"{what} {shown(url)} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{what} {shown(url)} is not an http(s) URL")
    if not parts.hostname:
        raise ConfigError(f"{what} {shown(url)} has no host name")
    return url


def proxy_groups(text: str) -> tuple[tuple[str, ...], ...]:
    """The syntax of CVMFS_HTTP_PROXY / CVMFS_FALLBACK_PROXY (fact sheet 8.1): `a|b;c;DIRECT`
    -> (("http://a", "http://b"), ("http://c",), ("DIRECT",)); empty members and groups are
    dropped, a scheme-less proxy gets `http://`. `network.proxies` types the members."""
    groups = []
    for group_text in text.split(";"):
        members = tuple(_proxy_member(m.strip()) for m in group_text.split("|") if m.strip())
        if members:
            groups.append(members)
    return tuple(groups)


def _proxy_member(text: str) -> str:
    if text.upper() == "DIRECT":
        return "DIRECT"
    if text == AUTO_PROXY:
        raise ConfigError(f"{AUTO_PROXY} ({AUTO_MEANING}) is not supported yet")
    return check_url(text if "://" in text else f"http://{text}", "proxy")


PROXY_SYNTAX: Final = ("allowed: proxies separated by | within a group and ; between "
                       "groups, each http://host:port, DIRECT or auto")
AUTO_PROXY: Final = "auto"
AUTO_MEANING: Final = "proxies discovered from the PAC files of CVMFS_PAC_URLS"


def without_auto(text: str) -> tuple[str, bool]:
    """CVMFS_HTTP_PROXY without its `auto` members (pycvmfs reads no PAC files), and
    whether there were any: `auto;DIRECT` -> (`DIRECT`, True)."""
    groups = [[m.strip() for m in group.split("|") if m.strip()] for group in text.split(";")]
    kept = [[m for m in group if m != AUTO_PROXY] for group in groups]
    dropped = sum(map(len, groups)) != sum(map(len, kept))
    return ";".join("|".join(group) for group in kept if group), dropped


def server_urls(text: str) -> tuple[str, ...]:
    """CVMFS_SERVER_URL: `;`-separated http(s) base URLs, trailing slashes removed."""
    hosts = tuple(u.strip().rstrip("/") for u in text.split(";") if u.strip())
    for url in hosts:
        check_url(url, "server URL")
    return hosts


class Typed:
    """Typed reads of merged settings; every error names key, value and origin. Values
    that are used after a correction (a clamp) add a line to `warnings`."""

    def __init__(self, values: Mapping[str, str], origins: Mapping[str, str],
                 environ: Mapping[str, str]) -> None:
        self._values = values
        self._origins = origins
        self.home = home_dir(environ)
        self.warnings: list[str] = []

    def origin(self, key: str) -> str:
        return self._origins.get(key, "unset")

    def error(self, key: str, why: str) -> ConfigError:
        return value_error(key, self._values.get(key, ""), self.origin(key), why)

    def check_all(self) -> None:
        """Raise the first of `problems()`."""
        problems = self.problems()
        if problems:
            raise problems[0]

    def problems(self) -> list[ConfigError]:
        """Every bad value of a typed key (`INTEGER_KEYS`, `BOOLEAN_KEYS`, `CHECKS`), used
        by this configuration or not: a bad value is an error even where it happens to have
        no effect. One error per key, in key order."""
        found = []
        for key in (*INTEGER_KEYS, *BOOLEAN_KEYS, *CHECKS):
            try:
                if key in INTEGER_KEYS:
                    self.optional_integer(key)
                elif key in BOOLEAN_KEYS:
                    self.boolean(key)
                else:
                    CHECKS[key](self, key)
            except ConfigError as exc:
                found.append(exc)
        return found

    def text(self, key: str, default: str = "") -> str:
        return self._values.get(key, default)

    def optional(self, key: str) -> str | None:
        value = self._values.get(key, "").strip()
        return value or None

    def integer(self, key: str) -> int:
        """`INTEGER_KEYS[key]`'s number; its default when unset or empty (a key with no
        default is `optional_integer`'s)."""
        spec = INTEGER_KEYS[key]
        number = self.optional_integer(key)
        if number is None:
            assert spec.default is not None, key
            return spec.default
        return number

    def optional_integer(self, key: str) -> int | None:
        spec = INTEGER_KEYS[key]
        word = self.optional(key)
        if word is None:
            return None
        note = f"; {spec.note}" if spec.note else ""
        if not _INTEGER.fullmatch(word):
            raise self.error(key, f"not an integer (allowed: {spec.allowed()})")
        number = int(word, 10)
        if spec.minimum <= number <= spec.maximum or number in spec.also:
            return number
        if number < spec.minimum and spec.clamp_below:
            warning = (f"{key}={shown(self.text(key))} (set in {self.origin(key)}): below "
                       f"{spec.minimum}, {spec.minimum} {spec.unit} used (as the reference does)")
            if warning not in self.warnings:
                self.warnings.append(warning)
            return spec.minimum
        also = "".join(f"{extra} or " for extra in sorted(spec.also))
        span = (f"at least {spec.minimum}" if number < spec.minimum
                else f"at most {spec.maximum}")
        raise self.error(key, f"must be {also}{span} {spec.unit} (allowed: {spec.allowed()})"
                         f"{note}")

    def root_hash(self, key: str) -> str | None:
        value = self.optional(key)
        if value is not None and not ROOT_HASH.fullmatch(value):
            raise self.error(key, "not a CernVM-FS hash (40 lowercase hex digits, or 32 for "
                             "MD5, then -rmd160 or -shake128 for those algorithms)")
        return value

    def proxies(self, key: str) -> str:
        """A proxy list as written (stripped), its syntax checked (`proxy_groups`; `auto`
        members are accepted here and dropped by `without_auto`)."""
        written = self.text(key).strip()
        text, dropped = without_auto(written)
        try:
            groups = proxy_groups(text)
        except (ConfigError, ValueError) as exc:
            raise self.error(key, f"{exc} ({PROXY_SYNTAX})") from None
        if written and not groups:
            why = (f"{AUTO_PROXY} ({AUTO_MEANING}) is not supported by pycvmfs and nothing "
                   "else is in it" if dropped else "no proxy in it (DIRECT: none)")
            raise self.error(key, f"{why} ({PROXY_SYNTAX})")
        return written

    def servers(self, key: str) -> tuple[str, ...]:
        try:
            return server_urls(self.text(key))
        except (ConfigError, ValueError) as exc:
            raise self.error(key, f"{exc} (allowed: http(s) URLs separated by ;, "
                             "@fqrn@ and @org@ stand for the repository name and its first "
                             "label)") from None

    def boolean(self, key: str) -> bool:
        default = BOOLEAN_KEYS[key]
        value = self._values.get(key)
        if value is None or not value.strip():
            return default
        return parse_bool(key, value, self.origin(key))

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        """One of `choices` (case-insensitive), None when unset."""
        value = self.optional(key)
        if value is None:
            return None
        if value.lower() not in choices:
            raise self.error(key, f"use {', '.join(choices[:-1])} or {choices[-1]}")
        return value.lower()

    def parsed(self, key: str, parse: Callable[[str], _T]) -> _T:
        """`parse(value)`, whose ConfigError/ValueError becomes one naming key and origin."""
        try:
            return parse(self.text(key))
        except (ConfigError, ValueError) as exc:
            raise self.error(key, str(exc)) from None

    def date(self, key: str) -> str | None:
        value = self.optional(key)
        if value is not None:
            try:
                dt.datetime.strptime(value, DATE_FORMAT)
            except ValueError:
                raise self.error(key, "expected YYYY-MM-DDTHH:MM:SSZ (UTC)") from None
        return value

    def cpu_list(self, key: str) -> frozenset[int] | None:
        """CPU numbers separated by commas, as the reference reads CVMFS_CPU_AFFINITY
        (no ranges: the reference would read `0-3` as CPU 0); None when unset."""
        value = self.optional(key)
        if value is None:
            return None
        words = [word.strip() for word in value.split(",")]
        if not all(word.isascii() and word.isdigit() and len(word) <= 6 for word in words):
            raise self.error(key, "expected CPU numbers separated by commas, such as 0,1 "
                             "(list a range CPU by CPU)")
        return frozenset(int(word) for word in words)

    def path(self, key: str) -> Path | None:
        value = self.optional(key)
        return None if value is None else self.expand_home(value)

    def expand_home(self, value: str) -> Path:
        return Path(self.home + value[1:] if value == "~" or value.startswith("~/") else value)


ROOT_HASH: Final = re.compile(r"[0-9a-f]{32}|[0-9a-f]{40}(?:-rmd160|-shake128)?")
MAGIC_XATTRS_VISIBILITY: Final = ("always", "rootonly", "never")
CPU_POLICIES: Final = ("adaptive", "one", "all")  # PYCVMFS_CPU_POLICY, the first the default

# Keys checked by `Typed.problems` besides the number and boolean tables: key -> check.
CHECKS: Final[Mapping[str, Callable[[Typed, str], object]]] = MappingProxyType({
    "CVMFS_SERVER_URL": Typed.servers,
    "CVMFS_HTTP_PROXY": Typed.proxies,
    "CVMFS_FALLBACK_PROXY": Typed.proxies,
    "CVMFS_REPOSITORY_DATE": Typed.date,
    "CVMFS_ROOT_HASH": Typed.root_hash,
    "CVMFS_CPU_AFFINITY": Typed.cpu_list,
    "CVMFS_MAGIC_XATTRS_VISIBILITY":
        lambda typed, key: typed.choice(key, MAGIC_XATTRS_VISIBILITY),
    "PYCVMFS_CPU_POLICY": lambda typed, key: typed.choice(key, CPU_POLICIES),
})
