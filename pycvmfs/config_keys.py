"""Which configuration keys exist: those pycvmfs reads, those only the reference client
reads, and a "did you mean" for the rest.

Why: a misspelled key (`CVMFS_SERVR_URL`) used to pass without a word, and the mount then
failed for the key it did not find. Every `CVMFS_*` / `PYCVMFS_*` key a file or `-o` sets
is checked against these tables: unknown keys warn (one line each, naming `file:line`,
with the closest known name from `difflib`); keys the reference knows but pycvmfs does not
use are not unknown, they are listed as ignored by `pycvmfs config show` and
`pycvmfs mount --verbose` only.

The reference's names are its client parameter list (doc-cvmfs `apx-parameters.rst`,
`cpt-configure.rst`), the keys its client and `cvmfs_config` read (`mountpoint.cc`,
`cvmfs.cc`, `options.cc`, `cvmfs_config`) and those its packaged files set
(`mount/default.conf`, `default.d/`, `domain.d/`), plus the per-instance cache keys
`CVMFS_CACHE_<instance>_<PARAMETER>` of tiered and plugin caches.

Also here: how an origin is shown (`shown_origin`: `file:line`, `default`, `-o option`).

Pure data and functions of their arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from pycvmfs.config_shell import Settings

BUILTIN_DEFAULTS: Final = "<built-in default.conf>"  # origins of values no file set
OVERRIDE: Final = "<-o>"

# Keys pycvmfs reads (config.py, cli/mount.py, client.py); a change there belongs here too.
USED_KEYS: Final = frozenset({
    "CVMFS_ALIEN_CACHE", "CVMFS_AUTO_UPDATE", "CVMFS_BACKOFF_INIT", "CVMFS_BACKOFF_MAX",
    "CVMFS_BUNDLE_POOL_SIZE", "CVMFS_CACHE_BASE", "CVMFS_CACHE_DIR",
    "CVMFS_CHECK_PERMISSIONS", "CVMFS_CLAIM_OWNERSHIP", "CVMFS_CPU_AFFINITY", "CVMFS_DEBUGLOG",
    "CVMFS_FALLBACK_PROXY", "CVMFS_FOLLOW_REDIRECTS", "CVMFS_FQRN", "CVMFS_HIDE_MAGIC_XATTRS",
    "CVMFS_HOST_RESET_AFTER", "CVMFS_HTTP_PROXY", "CVMFS_KCACHE_TIMEOUT", "CVMFS_KEYS_DIR",
    "CVMFS_LOW_SPEED_LIMIT", "CVMFS_MAGIC_XATTRS_VISIBILITY", "CVMFS_MAX_RETRIES",
    "CVMFS_MAX_SERVERS", "CVMFS_MAX_TTL", "CVMFS_NFILES", "CVMFS_PREFETCH_FILEBUNDLES",
    "CVMFS_PROXY_RESET_AFTER", "CVMFS_PROXY_TEMPLATE", "CVMFS_PUBLIC_KEY",
    "CVMFS_QUOTA_LIMIT", "CVMFS_REPOSITORY_DATE", "CVMFS_REPOSITORY_TAG", "CVMFS_ROOT_HASH",
    "CVMFS_SERVER_URL", "CVMFS_SHARED_CACHE", "CVMFS_TIMEOUT", "CVMFS_TIMEOUT_DIRECT",
    "CVMFS_USE_CDN", "CVMFS_USE_GEOAPI", "CVMFS_USE_OPENHTC", "CVMFS_USYSLOG",
    "CVMFS_WORLD_READABLE",
    "PYCVMFS_CPU_POLICY", "PYCVMFS_MAX_CATALOG_MB", "PYCVMFS_MIN_TTL", "PYCVMFS_NO_OPEN",
})

# Client keys of the reference that pycvmfs accepts and does not act on.
REFERENCE_ONLY_KEYS: Final = frozenset({
    "CVMFS_ALT_ROOT_PATH", "CVMFS_AUTHZ_HELPER", "CVMFS_BASE_ENV", "CVMFS_AUTHZ_SEARCH_PATH",
    "CVMFS_BLACKLIST", "CVMFS_CACHE_PRIMARY", "CVMFS_CACHE_SYMLINKS", "CVMFS_CACHE_REFCOUNT",
    "CVMFS_CACHE_LOWER_READONLY", "CVMFS_CACHE_PLUGIN_DEBUGLOG", "CVMFS_CACHE_PLUGIN_LOCATOR",
    "CVMFS_CACHE_PLUGIN_SIZE", "CVMFS_CATALOG_WATERMARK", "CVMFS_CLIENT_PROFILE",
    "CVMFS_CONFIG_REPOSITORY", "CVMFS_CONFIG_REPO_DEFAULT_ENV", "CVMFS_CONFIG_REPO_REQUIRED",
    "CVMFS_CWD_CACHE", "CVMFS_DEFAULT_DOMAIN", "CVMFS_DNS_MAX_TTL",
    "CVMFS_DNS_MIN_TTL", "CVMFS_DNS_RETRIES", "CVMFS_DNS_ROAMING", "CVMFS_DNS_SERVER",
    "CVMFS_DNS_TIMEOUT", "CVMFS_ENABLE_FUSE3_CACHE_READDIR", "CVMFS_ENABLE_FUSE3_LOOP_CONFIG",
    "CVMFS_ENFORCE_ACLS", "CVMFS_EXTERNAL_FALLBACK_PROXY", "CVMFS_EXTERNAL_HTTP_PROXY",
    "CVMFS_EXTERNAL_MAX_SERVERS", "CVMFS_EXTERNAL_SERVER_URL", "CVMFS_EXTERNAL_TIMEOUT",
    "CVMFS_EXTERNAL_TIMEOUT_DIRECT", "CVMFS_EXTERNAL_URL", "CVMFS_FAILOVER_INDEFINITELY",
    "CVMFS_FUSE3_IDLE_THREADS", "CVMFS_FUSE3_MAX_THREADS", "CVMFS_FUSE_NOTIFY_INVALIDATION",
    "CVMFS_GID_MAP", "CVMFS_HTTP_TRACING", "CVMFS_HTTP_TRACING_HEADERS",
    "CVMFS_IGNORE_SIGNATURE", "CVMFS_INFLUX_EXTRA_FIELDS", "CVMFS_INFLUX_EXTRA_TAGS",
    "CVMFS_INFLUX_HOST", "CVMFS_INFLUX_METRIC_NAME", "CVMFS_INFLUX_PORT",
    "CVMFS_INITIAL_GENERATION", "CVMFS_INSTRUMENT_FUSE", "CVMFS_IPFAMILY_PREFER",
    "CVMFS_IPV4_ONLY", "CVMFS_LIBRARY_PATH", "CVMFS_MAX_EXTERNAL_SERVERS",
    "CVMFS_MAX_IPADDR_PER_PROXY", "CVMFS_MEMCACHE_SIZE", "CVMFS_MOUNT_DIR", "CVMFS_MOUNT_RW",
    "CVMFS_NFS_INTERLEAVED_INODES", "CVMFS_NFS_SHARED", "CVMFS_NFS_SOURCE",
    "CVMFS_NOTIFICATION_SERVER", "CVMFS_OOM_SCORE_ADJ", "CVMFS_PAC_URLS", "CVMFS_PROXY_SHARD",
    "CVMFS_PROXY_SHARDING_POLICY", "CVMFS_RELOAD_SOCKETS", "CVMFS_REPOSITORIES",
    "CVMFS_REPOSITORY_NAME", "CVMFS_SEND_INFO_HEADER", "CVMFS_SERVER_CACHE_MODE",
    "CVMFS_STATFS_CACHE_TIMEOUT", "CVMFS_STREAMING_CACHE", "CVMFS_STRICT_MOUNT", "CVMFS_SUID",
    "CVMFS_SYSLOG_FACILITY", "CVMFS_SYSLOG_LEVEL", "CVMFS_SYSLOG_PREFIX",
    "CVMFS_SYSTEMD_NOKILL", "CVMFS_TALK_OWNER", "CVMFS_TALK_SOCKET", "CVMFS_TELEMETRY_RATE",
    "CVMFS_TELEMETRY_SEND", "CVMFS_TRACEBUFFER", "CVMFS_TRACEBUFFER_THRESHOLD",
    "CVMFS_TRACEFILE", "CVMFS_TRUSTED_CERTS", "CVMFS_UID_MAP", "CVMFS_USER",
    "CVMFS_USE_SSL_SYSTEM_CA", "CVMFS_WORKSPACE", "CVMFS_XATTR_PRIVILEGED_GIDS",
    "CVMFS_XATTR_PROTECTED_XATTRS",
})

KNOWN_KEYS: Final = USED_KEYS | REFERENCE_ONLY_KEYS

# CVMFS_CACHE_<instance>_<PARAMETER> (tiered caches, cache plugins; mountpoint.cc)
_CACHE_INSTANCE: Final = re.compile(
    r"CVMFS_CACHE_[A-Za-z0-9]+_(?:TYPE|BASE|DIR|SHARED|QUOTA_LIMIT|ALIEN|UPPER|LOWER|"
    r"LOWER_READONLY|CMDLINE|LOCATOR|WORKSPACE|REFCOUNT|STREAMING|MALLOC|SIZE)")
_CHECKED: Final = ("CVMFS_", "PYCVMFS_")


def is_checked(key: str) -> bool:
    """Keys whose names are checked: helper variables of a file (`SITE=...`) are not."""
    return key.startswith(_CHECKED)


def is_known(key: str) -> bool:
    return key in KNOWN_KEYS or bool(_CACHE_INSTANCE.fullmatch(key))


def is_ignored(key: str) -> bool:
    """Known to the reference, not acted on by pycvmfs."""
    return is_checked(key) and is_known(key) and key not in USED_KEYS


def close_matches(key: str, candidates: Iterable[str] = KNOWN_KEYS) -> list[str]:
    """Up to three known names close to `key`, the closest first."""
    import difflib  # an error path's: not imported by every mount

    return difflib.get_close_matches(key, sorted(candidates), n=3, cutoff=0.8)


def did_you_mean(key: str) -> str:
    """`" (did you mean CVMFS_SERVER_URL?)"` (the closest known name), or "" without one."""
    matches = close_matches(key)
    return f" (did you mean {matches[0]}?)" if matches else ""


def unknown_key_warning(key: str, source: str) -> str | None:
    """The warning for `key` set at `source` (`file:line`, `-o`), None if it is known."""
    if not is_checked(key) or is_known(key):
        return None
    return f"{source}: unknown parameter {key}{did_you_mean(key)}"  # symlinks still see it


def shown_origin(origin: str) -> str:
    """An origin as `config show` prints it: `file:line`, `default`, `-o option`..."""
    if origin == BUILTIN_DEFAULTS:
        return "default"
    if origin == OVERRIDE:
        return "-o option"
    if origin.startswith("<built-in "):
        return f"default ({origin.removeprefix('<built-in ').removesuffix('>')})"
    if origin.startswith("<") and origin.endswith(">"):  # a choice pycvmfs made
        return f"default ({origin[1:-1]})"
    return origin


def key_names(settings: Settings) -> tuple[list[str], tuple[str, ...]]:
    """Warnings for unknown keys (every assignment of one), notes for keys pycvmfs
    ignores (where each is set now)."""
    unknown = []
    for assignment in settings.trace:
        if assignment.source.startswith("<") and assignment.source != OVERRIDE:
            continue
        where = "-o" if assignment.source == OVERRIDE else assignment.source
        warning = unknown_key_warning(assignment.key, where)
        if warning is not None:
            unknown.append(warning)
    notes = tuple(f"{shown_origin(origin)}: {key} is a CernVM-FS parameter pycvmfs does not "
                  "use; ignored" for key, origin in sorted(settings.origins.items())
                  if is_ignored(key) and not origin.startswith("<"))
    return unknown, notes


def misspelled(origins: Mapping[str, str], key: str) -> str:
    """A hint for a missing `key` that a file set under a similar, unknown name:
    ` (CVMFS_SERVR_URL is set in FILE:2: did you mean CVMFS_SERVER_URL?)`, or ""."""
    near = [f"{name} is set in {shown_origin(origin)}"
            for name, origin in sorted(origins.items())
            if is_checked(name) and not is_known(name) and key in close_matches(name)]
    return f" ({'; '.join(near)}: did you mean {key}?)" if near else ""
