"""Geo API: ask a Stratum-1 to sort the Stratum-1s (and fallback proxies) by distance (8.6).

`geo_url` and `parse_geo_response` are pure; `order_hosts` does the requests through a
`Transport` (up to 3 random hosts tried) and returns the 0-based permutation, or None when
every host failed or geo ordering does not apply (fewer than two hosts and fallback groups).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from pycvmfs.network.failure import ErrorKind
from pycvmfs.network.proxies import Direct, ProxyChoice
from pycvmfs.network.sink import MemorySink
from pycvmfs.network.transport import Transport, request_headers

GEO_TRIES = 3  # the reference client tries up to 3 random hosts
GEO_MAX_BYTES = 64 * 1024  # a permutation of a few dozen indices is tiny
PROXY_SEPARATOR = "+PXYSEP+"
_RESPONSE = re.compile(r"[0-9,]+\n?")


def host_name(url: str) -> str:
    """Host name only: no scheme, port or path (`http://a.b:8000/cvmfs/x` -> `a.b`)."""
    return urlsplit(url if "://" in url else f"http://{url}").hostname or url


def geo_url(base: str, proxy_name: str, hosts: Sequence[str],
            fallback_proxies: Sequence[str] = (), have_regular_proxies: bool = True) -> str:
    """`<base>/api/v1.0/geo/<proxy>/<n1>,<n2>[,+PXYSEP+,<f1>...]`.

    `fallback_proxies` are the first host of each fallback group; they are only appended when
    there are no regular proxies."""
    names = [host_name(h) for h in hosts]
    if fallback_proxies and not have_regular_proxies:
        names.append(PROXY_SEPARATOR)
        names.extend(host_name(p) for p in fallback_proxies)
    return f"{base.rstrip('/')}/api/v1.0/geo/{proxy_name}/{','.join(names)}"


def parse_geo_response(body: bytes, count: int) -> list[int]:
    """A 1-based permutation of 1..count -> 0-based list; ValueError for anything else."""
    text = body.decode("ascii", errors="replace")
    if not _RESPONSE.fullmatch(text):
        raise ValueError(f"geo API answer is not a list of indices: {text[:80]!r}")
    try:
        order = [int(x) - 1 for x in text.strip().split(",")]
    except ValueError:
        raise ValueError(f"geo API answer has an empty index: {text[:80]!r}") from None
    if sorted(order) != list(range(count)):
        raise ValueError(f"geo API answer is not a permutation of 1..{count}: {text[:80]!r}")
    return order


def proxy_label(proxy: ProxyChoice, uuid: str, template: str | None = None) -> str:
    """What to put in the `<proxy>` slot: template, the proxy's host name, or the cache UUID."""
    if template:
        return template
    return uuid if isinstance(proxy, Direct) else host_name(proxy.url)


def order_hosts(transport: Transport, hosts: Sequence[str], *, proxy: ProxyChoice,
                proxy_name: str, fallback_proxies: Sequence[str] = (),
                have_regular_proxies: bool = True, rng: random.Random | None = None,
                timeout: float = 5.0, low_speed_limit: int = 1024) -> list[int] | None:
    """0-based order for `hosts` (+ fallback proxies) from the first host that answers."""
    if len(hosts) < 2 and len(fallback_proxies) < 2:
        return None
    rng = rng or random.Random()
    count = len(hosts) + (len(fallback_proxies) if not have_regular_proxies else 0)
    for base in rng.sample(list(hosts), min(GEO_TRIES, len(hosts))):
        url = geo_url(base, proxy_name, hosts, fallback_proxies, have_regular_proxies)
        sink = MemorySink(GEO_MAX_BYTES)
        outcome = transport.get(url, proxy=proxy, headers=request_headers(), sink=sink,
                                timeout=timeout, low_speed_limit=low_speed_limit)
        if outcome.status != 200 or outcome.bad_data or outcome.error is not ErrorKind.NONE:
            continue
        try:
            return parse_geo_response(sink.getvalue(), count)
        except ValueError:
            continue
    return None
