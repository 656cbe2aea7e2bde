"""Built-in configuration tables of the CernVM-FS client (fact sheet 12.3, 12.4).

These are the values the reference client gets from the files its packages install:
`/etc/cvmfs/default.conf` (package `cvmfs`) and the `domain.d/<domain>.conf` files of
`cvmfs-config-default` / the `cvmfs-config.cern.ch` repository. pycvmfs carries them so that
`pycvmfs mount unpacked.cern.ch DIR` works on a machine where neither is installed; only the
public keys must be provided (key material is deliberately not embedded).

`config.py` applies `DEFAULT_CONF` as the first layer (before `/etc/cvmfs/default.conf`) and
`domain_layer(...)` at the place of the shipped `domain.d/<domain>.conf`, so any real file
overrides them exactly as it would override the packaged ones.

Also here: what pycvmfs assumes where the reference assumes root — the cache base of an
ordinary user and the user's key directory — and the advice given when no key is found.

Pure data and functions of their arguments; no I/O (`Path.home()` only without `$HOME`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

ROOT_CACHE_BASE: Final = "/var/lib/cvmfs"  # CVMFS_CACHE_BASE of the reference default.conf
KEYS_HELP_URL: Final = "https://github.com/cvmfs/cvmfs/tree/devel/mount/keys"

# default.conf of the reference client (fact sheet 12.4 and 8.3). CVMFS_CACHE_BASE is not
# here: it depends on the user (see `config.default_cache_base`). CVMFS_KEYS_DIR neither:
# it is `<config root>/keys`.
DEFAULT_CONF: Final = MappingProxyType({
    "CVMFS_MOUNT_DIR": "/cvmfs",
    "CVMFS_USER": "cvmfs",
    "CVMFS_QUOTA_LIMIT": "4000",
    "CVMFS_TIMEOUT": "5",
    "CVMFS_TIMEOUT_DIRECT": "10",
    "CVMFS_STRICT_MOUNT": "no",
    "CVMFS_NFILES": "131072",
    "CVMFS_SHARED_CACHE": "yes",
    "CVMFS_CHECK_PERMISSIONS": "yes",
    "CVMFS_CLAIM_OWNERSHIP": "yes",
    "CVMFS_PROXY_RESET_AFTER": "300",
    "CVMFS_HOST_RESET_AFTER": "1800",
    "CVMFS_MAX_RETRIES": "1",
    "CVMFS_BACKOFF_INIT": "2",
    "CVMFS_BACKOFF_MAX": "10",
    "CVMFS_SEND_INFO_HEADER": "no",
    "CVMFS_USE_GEOAPI": "no",
    "CVMFS_LOW_SPEED_LIMIT": "1024",
    # not in default.conf: the reference's built-in values, listed so `settings` shows them
    "CVMFS_KCACHE_TIMEOUT": "60",
    "CVMFS_AUTO_UPDATE": "yes",
    "CVMFS_FOLLOW_REDIRECTS": "no",
    "CVMFS_MAX_SERVERS": "0",
})

# default.conf declares these `readonly`: later files cannot change them (a warning is given).
READONLY_KEYS: Final = frozenset({"CVMFS_MOUNT_DIR", "CVMFS_USER"})


@dataclass(frozen=True, slots=True)
class DomainDefaults:
    """What the shipped `domain.d/<domain>.conf` sets for one domain."""

    server_urls: tuple[str, ...]
    cdn_server_urls: tuple[str, ...]  # used instead when CVMFS_USE_CDN=yes
    key_files: tuple[str, ...]  # names inside `<keys dir>/<domain>/`
    use_geoapi: bool = True


def _s1(*hosts: str) -> tuple[str, ...]:
    return tuple(f"http://{host}/cvmfs/@fqrn@" for host in hosts)


def _cdn(*names: str) -> tuple[str, ...]:
    return _s1(*(f"{name}-cvmfs.openhtc.io" for name in names))


DOMAINS: Final = MappingProxyType({
    "cern.ch": DomainDefaults(
        server_urls=_s1(
            "cvmfs-stratum-one.cern.ch",
            "cernvmfs.gridpp.rl.ac.uk",
            "cvmfs-s1bnl.opensciencegrid.org",
            "cvmfs-s1fnal.opensciencegrid.org",
        ),
        cdn_server_urls=_cdn("s1cern", "s1ral", "s1bnl", "s1fnal"),
        key_files=("cern-it1.cern.ch.pub", "cern-it4.cern.ch.pub", "cern-it5.cern.ch.pub"),
    ),
    "egi.eu": DomainDefaults(
        server_urls=_s1(
            "cvmfs-egi.gridpp.rl.ac.uk:8000",
            "klei.nikhef.nl:8000",
            "cvmfsrepo.lcg.triumf.ca:8000",
            "cvmfs-stratum-one.ihep.ac.cn:8000",
        ),
        cdn_server_urls=(
            *_cdn("s1ral", "s1nikhef"),
            *_s1("s1triumf-cvmfs.openhtc.io:8080"),
            *_cdn("s1ihep"),
        ),
        key_files=("egi.eu.pub",),
    ),
    "opensciencegrid.org": DomainDefaults(
        server_urls=_s1(
            "cvmfs-egi.gridpp.rl.ac.uk:8000",
            "klei.nikhef.nl:8000",
            "cvmfs-s1bnl.opensciencegrid.org:8000",
            "cvmfs-s1fnal.opensciencegrid.org:8000",
            "cvmfs-stratum-one.ihep.ac.cn:8000",
        ),
        cdn_server_urls=_cdn("s1ral", "s1nikhef", "s1bnl", "s1fnal", "s1ihep"),
        key_files=("opensciencegrid.org.pub",),
    ),
})


def split_fqrn(fqrn: str) -> tuple[str, str]:
    """(org, domain): `atlas.cern.ch` -> (`atlas`, `cern.ch`); no dot -> (fqrn, "")."""
    org, _, domain = fqrn.partition(".")
    return org, domain


def domain_layer(domain: str, *, use_cdn: bool, keys_root: str) -> dict[str, str]:
    """The settings the shipped `domain.d/<domain>.conf` makes ({} for unknown domains)."""
    defaults = DOMAINS.get(domain)
    if defaults is None:
        return {}
    urls = defaults.cdn_server_urls if use_cdn else defaults.server_urls
    return {
        "CVMFS_SERVER_URL": ";".join(urls),
        "CVMFS_KEYS_DIR": f"{keys_root.rstrip('/')}/{domain}",
        "CVMFS_USE_GEOAPI": "yes" if defaults.use_geoapi else "no",
    }


def home_dir(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or str(Path.home())


def default_cache_base(environ: Mapping[str, str], is_root: bool) -> str:
    """`/var/lib/cvmfs` for root, else `$XDG_CACHE_HOME/pycvmfs` or `~/.cache/pycvmfs`:
    an ordinary user cannot write the reference's directory."""
    if is_root:
        return ROOT_CACHE_BASE
    xdg = environ.get("XDG_CACHE_HOME")
    if xdg:
        return f"{xdg.rstrip('/')}/pycvmfs"
    return f"{home_dir(environ)}/.cache/pycvmfs"


def user_keys_dir(environ: Mapping[str, str]) -> Path:
    """`$XDG_CONFIG_HOME/pycvmfs/keys`, else `~/.config/pycvmfs/keys`."""
    xdg = environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path(home_dir(environ)) / ".config"
    return base / "pycvmfs" / "keys"


def no_keys_message(fqrn: str, domain: str, looked: Sequence[Path], user_dir: Path) -> str:
    """The ConfigError text when no key is found: every place looked at, and the remedy."""
    known = DOMAINS.get(domain)
    wanted = (f"the {domain} domain keys ({', '.join(known.key_files)})" if known
              else f"{fqrn}.pub (from the repository's maintainers)")
    target = user_dir / domain if known else user_dir
    return (
        f"no public key for {fqrn}: CVMFS_PUBLIC_KEY is not set and no *.pub file is in "
        f"{', '.join(str(d) for d in looked)}. Copy {wanted} into {target}, or pass "
        f"-o CVMFS_PUBLIC_KEY=/path/to/key.pub (several: colon-separated). The keys of the "
        f"public domains come with the cvmfs-config-default package and are at {KEYS_HELP_URL}."
    )
