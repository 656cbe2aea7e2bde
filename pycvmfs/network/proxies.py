"""Parse `CVMFS_HTTP_PROXY`, `CVMFS_FALLBACK_PROXY` and `CVMFS_SERVER_URL` (fact sheet 8.1, 8.2).

Pure: strings in, frozen values out. The syntax and its checks (an http(s) URL with a host
and a valid port, no spaces) are `config_values`', which `config` applies with the key and
where it was set; here the same functions name only the entry.
A proxy is typed `Proxy(url)` or `DIRECT`, so no other
module ever compares a string to "DIRECT".

Caveats: `auto` (WPAD/PAC) is not supported yet; proxy host names are not expanded into one
proxy per IP address (`CVMFS_MAX_IPADDR_PER_PROXY`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

from pycvmfs.config_values import proxy_groups, server_urls
from pycvmfs.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy, e.g. `http://squid.example.org:3128`."""

    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or self.url

    def __str__(self) -> str:
        return self.url


class Direct(enum.Enum):
    """No proxy: the request goes straight to the Stratum-1."""

    DIRECT = "DIRECT"

    def __str__(self) -> str:
        return "DIRECT"


DIRECT = Direct.DIRECT
ProxyChoice = Proxy | Direct
ProxyGroup = tuple[ProxyChoice, ...]


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Load-balance groups in priority order; `fallback_start` is the index of the first
    fallback group (== len(groups) when there is none)."""

    groups: tuple[ProxyGroup, ...]
    fallback_start: int

    @property
    def regular(self) -> tuple[ProxyGroup, ...]:
        return self.groups[: self.fallback_start]

    @property
    def fallback(self) -> tuple[ProxyGroup, ...]:
        return self.groups[self.fallback_start :]


def parse_proxy_groups(text: str) -> tuple[ProxyGroup, ...]:
    """`a|b;c;DIRECT` -> ((a, b), (c,), (DIRECT,)); empty members and groups are dropped.
    The syntax (and every check of a member) is `config_values.proxy_groups`'."""
    return tuple(tuple(DIRECT if member == "DIRECT" else Proxy(member) for member in group)
                 for group in proxy_groups(text))


def _without_direct(groups: tuple[ProxyGroup, ...]) -> tuple[ProxyGroup, ...]:
    kept = (tuple(m for m in g if m is not DIRECT) for g in groups)
    return tuple(g for g in kept if g)


def parse_proxies(http_proxy: str, fallback_proxy: str = "") -> ProxyConfig:
    """Both settings combined (fact sheet 8.2): fallback groups go after the regular ones and,
    when any fallback proxy is set, DIRECT is removed from both lists."""
    regular = parse_proxy_groups(http_proxy)
    fallback = parse_proxy_groups(fallback_proxy)
    if fallback:
        regular, fallback = _without_direct(regular), _without_direct(fallback)
    if not regular and not fallback:
        raise ConfigError("CVMFS_HTTP_PROXY is empty: set it to a proxy list or DIRECT")
    return ProxyConfig(regular + fallback, len(regular))


def expand_templates(text: str, fqrn: str) -> str:
    """`@fqrn@` -> fqrn, `@org@` -> first label of fqrn; unknown `@x@` stay as they are."""
    return text.replace("@fqrn@", fqrn).replace("@org@", fqrn.split(".", 1)[0])


def parse_server_urls(text: str, max_servers: int = 0) -> tuple[str, ...]:
    """`CVMFS_SERVER_URL`: `;`-separated ring of base URLs, trailing slashes removed
    (`config_values.server_urls` checks each); `max_servers` > 0 truncates
    (`CVMFS_MAX_SERVERS`; callers truncate again after geo)."""
    hosts = server_urls(text)
    if not hosts:
        raise ConfigError("CVMFS_SERVER_URL is empty")
    return hosts[:max_servers] if max_servers > 0 else hosts
