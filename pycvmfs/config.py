"""CernVM-FS client configuration: the reference file hierarchy, resolved into frozen values.

What: `load_config(fqrn, ...)` reads the files the reference client reads, in its order
(fact sheet 12.1), and returns a `ClientConfig` with typed fields for everything the client
needs plus the raw merged `settings` and, for every key, where it was set (`origins`), so
error messages and a later `pycvmfs doctor` can name the file and line.

Layers, each overriding the previous ones:
 0. built-in `default.conf` values (`config_defaults.DEFAULT_CONF`; `CVMFS_KEYS_DIR` is
    `<root>/keys`; `CVMFS_CACHE_BASE` see below)
 1. `<root>/default.conf`, 2. `<root>/default.d/*.conf` (sorted), 3. `<root>/default.local`
 4. built-in `domain.d/<domain>.conf` for cern.ch, egi.eu, opensciencegrid.org (Stratum-1
    list, or the CDN list with CVMFS_USE_CDN=yes; CVMFS_KEYS_DIR=<root>/keys/<domain>;
    CVMFS_USE_GEOAPI=yes) — where the reference applies the config repository's copy
 5. `<root>/domain.d/<domain>.conf`, `.local` 6. `<root>/config.d/<fqrn>.conf`, `.local`
 7. the `--config` files (`extra_files`), in order; 8. `-o KEY=VALUE` overrides (literal).
`<root>` is `config_root`, else `$PYCVMFS_CONFIG_ROOT`, else `/etc/cvmfs`. `@fqrn@` and
`@org@` are replaced in every value after merging (fact sheet 8.1).

TODO(config repository): `CVMFS_CONFIG_REPOSITORY` layering (its default.conf after step 2,
its domain.d/config.d before ours) is not implemented; the built-in domain tables stand in.

Decisions that differ from the reference (all recorded in `origins`):
- Cache: root keeps `/var/lib/cvmfs`; any other user gets `$XDG_CACHE_HOME/pycvmfs` or
  `~/.cache/pycvmfs`, also when the only CVMFS_CACHE_BASE is the package's default.conf
  `/var/lib/cvmfs` (unwritable for them). Any other file setting it is obeyed.
- Proxy: the reference refuses to mount without CVMFS_HTTP_PROXY; `cvmfs-config.cern.ch`
  sets DIRECT when unset. A user-space client has no site squid to assume either, so an
  unset or empty CVMFS_HTTP_PROXY becomes `DIRECT` (`http_proxy_defaulted` says so).
- Keys (fact sheet 12.2): CVMFS_PUBLIC_KEY wins, else `*.pub` in CVMFS_KEYS_DIR, else in
  `<root>/keys/<domain>`, then in the user's `~/.config/pycvmfs/keys/<domain>` and
  `~/.config/pycvmfs/keys` (for machines without the cvmfs packages).

Parsing (`parse_config_text`): files are *not* run by bash. Understood: `KEY=VALUE` (several
per line), `export`/`readonly` prefixes (readonly keys then refuse changes, as in bash),
`#` comments at word start, single and double quotes, backslash escapes and line
continuations, multi-line quoted values, `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR:=word}`
from earlier settings then the environment (unset -> ""), `~` after `=` or an unquoted `:`.
A Hypothesis test checks that bash assigns the same values whenever no warning is given.
Not understood, reported as `file:line: ...` warnings and the line skipped: command
substitution (`$(...)`, backticks), `$1`/`$$`-style and `$'...'` forms, other `${...}`
operators, `${...}` spanning lines, a NUL byte in a value, `if`/`then` and other shell code
(never executed). A malformed line never raises. Conditions are not evaluated: the
assignments inside `if ... fi` all apply, in order (for the shipped files that means the
readonly defaults and the non-CDN list, which comes last). Parsing is one pass over the text
(linear in its size; an unterminated quote skips the rest of the file with one warning);
each file reports its first 100 problems one by one and sums up the rest with their line
range (`config_shell.MAX_REPORTED`).

Files are input too: every configuration file is read, and every key file checked, by
`config_files.read_trusted_bytes`, which refuses, with a ConfigError naming the file, its
owner and mode and the fix, anything not owned by root or the user running pycvmfs, writable
by others, in a directory others can write, not a regular file, or over 1 MiB. A file of the
hierarchy that exists but cannot be used (permission denied, a directory, a dangling
symlink, binary data) is skipped with a warning naming it and why; the same problems, a
missing file, or lines that are not assignments are errors in a `--config` file
(`config_files.ConfigFiles`).
An error that asks the user to set a value names no file that could not be read.

Keys (`config_keys`): an unknown `CVMFS_*`/`PYCVMFS_*` key warns at each assignment with
"did you mean"; a key the reference knows and pycvmfs ignores is a note (`config show`,
`mount --verbose`); a missing required key names a misspelled one that is set.

Values: `config_values.Typed` reads every typed key through one table (ranges, units, the
reference's meaning); a bad value of any key in it is a ConfigError naming key, value,
origin and what is allowed, also when this configuration does not use the key.
`inspect_config` gives every value with its origin and every problem without raising (for
`pycvmfs config show` and `pycvmfs doctor`); `load_config` raises the first error.

I/O: `config_files` reads files; key resolution (`config_public_keys`) globs key
directories. Everything else is pure. Thread-safety: no shared state; ClientConfig is immutable.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from pycvmfs.config_defaults import (
    DEFAULT_CONF,
    DOMAINS,
    READONLY_KEYS,
    ROOT_CACHE_BASE,
    default_cache_base,
    domain_layer,
    split_fqrn,
)
from pycvmfs.config_files import ConfigFiles, FileTrust
from pycvmfs.config_keys import BUILTIN_DEFAULTS, OVERRIDE, key_names, misspelled
from pycvmfs.config_public_keys import resolve_public_keys
from pycvmfs.config_shell import Assignment, Settings
from pycvmfs.config_shell import parse_config_text as parse_config_text  # tests, callers
from pycvmfs.config_values import (
    AUTO_MEANING,
    AUTO_PROXY,
    CPU_POLICIES,
    MAGIC_XATTRS_VISIBILITY,
    Typed,
    parse_bool,
    without_auto,
)
from pycvmfs.errors import ConfigError

DEFAULT_CONFIG_ROOT: Final = Path("/etc/cvmfs")
CONFIG_ROOT_ENV: Final = "PYCVMFS_CONFIG_ROOT"
DIRECT: Final = "DIRECT"
MAX_CATALOG_MB_DEFAULT: Final = 1024  # PYCVMFS_MAX_CATALOG_MB (README "Bounded downloads")
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")  # no "/", no ".."


class Severity(enum.StrEnum):
    """How bad a configuration problem is: an error refuses the mount, a warning is said
    at every mount, a note only by `config show` and `mount --verbose`."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One line about the configuration; `message` names the file and line."""

    severity: Severity
    message: str


class MagicXattrsVisibility(enum.StrEnum):
    """CVMFS_MAGIC_XATTRS_VISIBILITY: where listxattr shows magic names (fact sheet 11)."""

    ALWAYS = "always"
    ROOTONLY = "rootonly"
    NEVER = "never"


# --- the hierarchy --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MergedSettings:
    """Every file applied, before typing: what `pycvmfs doctor` shows."""

    fqrn: str
    config_root: Path
    values: Mapping[str, str]  # templated (@fqrn@, @org@ replaced)
    origins: Mapping[str, str]
    trace: tuple[Assignment, ...]
    warnings: tuple[str, ...]
    files_read: tuple[Path, ...]
    environ: Mapping[str, str]
    errors: tuple[str, ...] = ()  # files refused; `load_settings` raises the first
    notes: tuple[str, ...] = ()  # reference keys pycvmfs ignores
    unreadable: tuple[Path, ...] = ()  # files that exist but could not be read

    def typed(self) -> Typed:
        """Every typed key read through `config_values`' table."""
        return Typed(self.values, self.origins, self.environ)


def load_settings(
    fqrn: str,
    *,
    config_root: Path | None = None,
    extra_files: Sequence[Path] = (),
    overrides: Mapping[str, str] = _EMPTY,
    environ: Mapping[str, str] | None = None,
    is_root: bool | None = None,
    trust: FileTrust | None = None,
) -> MergedSettings:
    """Apply layers 0-8 (module docstring). ConfigError for a bad fqrn, a `--config` file
    that is missing, unreadable or not KEY=VALUE lines, a file that is not trusted
    (`config_files`; `trust` defaults to this process's user), a bad override name or a bad
    CVMFS_USE_CDN; malformed lines of other files and unknown keys warn."""
    merged = _merge(fqrn, config_root=config_root, extra_files=extra_files,
                    overrides=overrides, environ=environ, is_root=is_root, trust=trust)
    if merged.errors:
        raise ConfigError(merged.errors[0])
    return merged


def _merge(
    fqrn: str,
    *,
    config_root: Path | None,
    extra_files: Sequence[Path],
    overrides: Mapping[str, str],
    environ: Mapping[str, str] | None,
    is_root: bool | None,
    trust: FileTrust | None,
) -> MergedSettings:
    """`load_settings` that gives refused files in `errors` instead of raising."""
    if not _FQRN.fullmatch(fqrn):
        raise ConfigError(f"{fqrn!r} is not a repository name (like atlas.cern.ch)")
    env = dict(os.environ if environ is None else environ)
    root = Path(config_root or env.get(CONFIG_ROOT_ENV) or DEFAULT_CONFIG_ROOT)
    root_user = os.geteuid() == 0 if is_root is None else is_root
    org, domain = split_fqrn(fqrn)
    settings = Settings({**env, "CVMFS_FQRN": fqrn})
    settings.assign("CVMFS_FQRN", fqrn, "<the repository being mounted>")
    builtin = {**DEFAULT_CONF, "CVMFS_KEYS_DIR": str(root / "keys"),
               "CVMFS_CACHE_BASE": default_cache_base(env, root_user)}
    for key, value in builtin.items():
        settings.assign(key, value, BUILTIN_DEFAULTS)
    settings.readonly.update(READONLY_KEYS)
    files = ConfigFiles(settings, trust or FileTrust.current())
    _apply_hierarchy(files, root, fqrn, domain)
    for path in extra_files:
        files.apply(Path(path), required=True)
    for key, value in overrides.items():
        if not _NAME.fullmatch(key):
            raise ConfigError(f"-o {key}={value}: {key!r} is not a parameter name")
        settings.assign(key, value, OVERRIDE, force=True)
    _unprivileged_cache_base(settings, root, env, root_user)
    values = {k: v.replace("@fqrn@", fqrn).replace("@org@", org)
              for k, v in settings.values.items()}
    unknown, notes = key_names(settings)
    return MergedSettings(fqrn, root, MappingProxyType(values),
                          MappingProxyType(dict(settings.origins)), tuple(settings.trace),
                          (*files.warnings, *unknown), tuple(files.read), MappingProxyType(env),
                          errors=tuple(files.errors), notes=notes,
                          unreadable=tuple(files.unreadable))


def _apply_hierarchy(files: ConfigFiles, root: Path, fqrn: str, domain: str) -> None:
    """Layers 1-6 of the module docstring."""
    files.apply(root / "default.conf")
    for path in files.listed(root / "default.d", ".conf"):
        files.apply(path)
    files.apply(root / "default.local")
    if domain:
        _apply_builtin_domain(files.settings, domain, root)
        files.apply(root / "domain.d" / f"{domain}.conf")
        files.apply(root / "domain.d" / f"{domain}.local")
    files.apply(root / "config.d" / f"{fqrn}.conf")
    files.apply(root / "config.d" / f"{fqrn}.local")


def _apply_builtin_domain(settings: Settings, domain: str, root: Path) -> None:
    if domain not in DOMAINS:
        return
    key = "CVMFS_USE_CDN" if "CVMFS_USE_CDN" in settings.values else "CVMFS_USE_OPENHTC"
    use_cdn = parse_bool(key, settings.values.get(key) or "no",  # older files: USE_OPENHTC
                         settings.origins.get(key, BUILTIN_DEFAULTS))
    source = f"<built-in domain.d/{domain}.conf>"
    for key, value in domain_layer(domain, use_cdn=use_cdn, keys_root=str(root / "keys")).items():
        warning = settings.assign(key, value, source)
        assert warning is None, warning  # the domain keys are never readonly


def _unprivileged_cache_base(settings: Settings, root: Path, env: Mapping[str, str],
                             root_user: bool) -> None:
    """Replace the package default.conf's /var/lib/cvmfs for an ordinary user."""
    origin = settings.origins.get("CVMFS_CACHE_BASE", "")
    from_package = origin.rpartition(":")[0] == str(root / "default.conf")
    if (not root_user and from_package
            and settings.values["CVMFS_CACHE_BASE"].rstrip("/") == ROOT_CACHE_BASE):
        settings.assign("CVMFS_CACHE_BASE", default_cache_base(env, False),
                        f"<pycvmfs: not root, {ROOT_CACHE_BASE} of {origin} not used>")


# --- typed values (config_values) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a mount needs, typed; `settings`/`origins` keep the rest (fact sheet 12)."""

    fqrn: str
    server_urls: tuple[str, ...]  # CVMFS_SERVER_URL, templated, in ring order
    http_proxy: str  # raw CVMFS_HTTP_PROXY; `network.proxies` parses the groups
    http_proxy_defaulted: bool  # nothing configured: DIRECT was assumed
    fallback_proxy: str
    timeout_s: int
    timeout_direct_s: int
    low_speed_limit: int  # bytes/s
    max_retries: int
    backoff_init_s: int
    backoff_max_s: int
    proxy_reset_after_s: int
    host_reset_after_s: int
    use_geoapi: bool
    max_servers: int  # 0: no limit
    follow_redirects: bool
    cache_base: Path
    cache_dir: Path  # CVMFS_CACHE_DIR, else <base>/shared or <base>/<fqrn>
    shared_cache: bool
    quota_limit_mb: int  # -1: unmanaged
    alien_cache: Path | None
    public_key_files: tuple[Path, ...]
    repository_tag: str | None
    repository_date: str | None
    root_hash: str | None
    auto_update: bool
    max_ttl_minutes: int | None
    min_ttl_s: int  # PYCVMFS_MIN_TTL: floor of the repository's TTL (no reference key)
    nfiles: int  # CVMFS_NFILES: open files the serving process asks for
    kcache_timeout_s: int
    claim_ownership: bool
    world_readable: bool
    check_permissions: bool
    magic_xattrs_visibility: MagicXattrsVisibility
    strict_mount: bool
    settings: Mapping[str, str]  # every parameter as merged and templated
    origins: Mapping[str, str]  # parameter -> `file:line` (or `<built-in ...>`, `<-o>`)
    warnings: tuple[str, ...]  # malformed lines etc., for the caller to log
    files_read: tuple[Path, ...]
    blacklist_files: tuple[Path, ...] = ()  # `<root>/blacklist` (the reference's /etc/cvmfs)
    max_catalog_mb: int = MAX_CATALOG_MB_DEFAULT  # inflated size cap of catalogs, histories
    prefetch_filebundles: bool = True  # CVMFS_PREFETCH_FILEBUNDLES (reference default: off)
    bundle_pool_size: int | None = None  # CVMFS_BUNDLE_POOL_SIZE; None: bundles.default_pool_size()
    no_open: bool = True  # PYCVMFS_NO_OPEN: the kernel opens files without asking (no key
    # in the reference, which always answers OPEN)
    cpu_affinity: frozenset[int] | None = None  # CVMFS_CPU_AFFINITY: the serving CPUs
    cpu_policy: str = "adaptive"  # PYCVMFS_CPU_POLICY: without CVMFS_CPU_AFFINITY (no
    # reference key): `adaptive`, `one` or `all` (fs/limits.py, fs/cpu_policy.py)
    notes: tuple[str, ...] = ()  # reference keys pycvmfs ignores (`mount --verbose`)

    def origin(self, key: str) -> str:
        """Where `key` was set, for messages: `file:line`, `<built-in ...>` or `unset`."""
        return self.origins.get(key, "unset")


def load_config(
    fqrn: str,
    *,
    config_root: Path | None = None,
    extra_files: Sequence[Path] = (),
    overrides: Mapping[str, str] = _EMPTY,
    environ: Mapping[str, str] | None = None,
    is_root: bool | None = None,
    trust: FileTrust | None = None,
) -> ClientConfig:
    """The configuration of repository `fqrn` (module docstring for order and defaults).

    Raises ConfigError for a file or key file that is not trusted, a bad typed value, an
    impossible combination, no server URL or no public key; malformed lines only give
    `warnings`."""
    merged = load_settings(fqrn, config_root=config_root, extra_files=extra_files,
                           overrides=overrides, environ=environ, is_root=is_root, trust=trust)
    return resolve(merged, trust=trust)


def resolve(merged: MergedSettings, *, trust: FileTrust | None = None) -> ClientConfig:
    """Type the merged settings through `config_values` (every bad value is a ConfigError
    naming key, value and origin). I/O: key directories are listed and key files checked
    with `read_trusted_bytes`. The defaults in `INTEGER_KEYS`/`BOOLEAN_KEYS` are the
    reference's built-in values, used only when a file sets a key to the empty string."""
    typed = merged.typed()
    typed.check_all()
    proxy = _proxy(typed)
    fallback = typed.proxies("CVMFS_FALLBACK_PROXY")
    cache = cache_fields(merged)
    max_servers = typed.integer("CVMFS_MAX_SERVERS")
    return ClientConfig(
        fqrn=merged.fqrn,
        server_urls=_server_urls(merged, typed),
        http_proxy=proxy or DIRECT,
        http_proxy_defaulted=not proxy,
        fallback_proxy=fallback,
        timeout_s=typed.integer("CVMFS_TIMEOUT"),
        timeout_direct_s=typed.integer("CVMFS_TIMEOUT_DIRECT"),
        low_speed_limit=typed.integer("CVMFS_LOW_SPEED_LIMIT"),
        max_retries=typed.integer("CVMFS_MAX_RETRIES"),
        backoff_init_s=typed.integer("CVMFS_BACKOFF_INIT"),
        backoff_max_s=typed.integer("CVMFS_BACKOFF_MAX"),
        proxy_reset_after_s=typed.integer("CVMFS_PROXY_RESET_AFTER"),
        host_reset_after_s=typed.integer("CVMFS_HOST_RESET_AFTER"),
        use_geoapi=typed.boolean("CVMFS_USE_GEOAPI"),
        max_servers=max_servers,
        follow_redirects=typed.boolean("CVMFS_FOLLOW_REDIRECTS"),
        cache_base=cache[0], cache_dir=cache[1], shared_cache=cache[2],
        quota_limit_mb=cache[3], alien_cache=cache[4],
        public_key_files=resolve_public_keys(merged, trust=trust),
        repository_tag=typed.optional("CVMFS_REPOSITORY_TAG"),
        repository_date=typed.date("CVMFS_REPOSITORY_DATE"),
        root_hash=typed.root_hash("CVMFS_ROOT_HASH"),
        auto_update=typed.boolean("CVMFS_AUTO_UPDATE"),
        max_ttl_minutes=typed.optional_integer("CVMFS_MAX_TTL"),
        min_ttl_s=typed.integer("PYCVMFS_MIN_TTL"),
        nfiles=typed.integer("CVMFS_NFILES"),
        kcache_timeout_s=typed.integer("CVMFS_KCACHE_TIMEOUT"),
        claim_ownership=typed.boolean("CVMFS_CLAIM_OWNERSHIP"),
        world_readable=typed.boolean("CVMFS_WORLD_READABLE"),
        check_permissions=typed.boolean("CVMFS_CHECK_PERMISSIONS"),
        magic_xattrs_visibility=_visibility(typed),
        strict_mount=typed.boolean("CVMFS_STRICT_MOUNT"),
        settings=merged.values, origins=merged.origins,
        warnings=(*merged.warnings, *typed.warnings), files_read=merged.files_read,
        blacklist_files=(merged.config_root / "blacklist",),
        max_catalog_mb=typed.integer("PYCVMFS_MAX_CATALOG_MB"),
        prefetch_filebundles=typed.boolean("CVMFS_PREFETCH_FILEBUNDLES"),
        bundle_pool_size=typed.optional_integer("CVMFS_BUNDLE_POOL_SIZE"),
        no_open=typed.boolean("PYCVMFS_NO_OPEN"),
        cpu_affinity=typed.cpu_list("CVMFS_CPU_AFFINITY"),
        cpu_policy=typed.choice("PYCVMFS_CPU_POLICY", CPU_POLICIES) or CPU_POLICIES[0],
        notes=merged.notes,
    )


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What `inspect_config` found: every effective value with where it came from, and
    every problem (errors, warnings, notes); `config` is None when an error refuses it."""

    fqrn: str
    values: Mapping[str, str]  # merged and templated
    origins: Mapping[str, str]  # as `ClientConfig.origins`; `shown_origin` prints them
    problems: tuple[ConfigProblem, ...]
    files_read: tuple[Path, ...]
    config: ClientConfig | None
    config_root: Path | None = None  # None: the repository name was refused

    def of(self, severity: Severity) -> tuple[str, ...]:
        return tuple(p.message for p in self.problems if p.severity is severity)


def inspect_config(
    fqrn: str,
    *,
    config_root: Path | None = None,
    extra_files: Sequence[Path] = (),
    overrides: Mapping[str, str] = _EMPTY,
    environ: Mapping[str, str] | None = None,
    is_root: bool | None = None,
    trust: FileTrust | None = None,
) -> ConfigReport:
    """`load_config` that never raises a ConfigError: every refused file and every bad
    value is an error in `problems` (not only the first), for `pycvmfs config show` and
    `pycvmfs doctor`. Same arguments and I/O as `load_config`."""
    try:
        merged = _merge(fqrn, config_root=config_root, extra_files=extra_files,
                        overrides=overrides, environ=environ, is_root=is_root, trust=trust)
    except (ConfigError, OSError) as exc:
        return ConfigReport(fqrn, _EMPTY, _EMPTY, (ConfigProblem(Severity.ERROR, _said(exc)),),
                            (), None)
    errors = list(merged.errors)
    typed = merged.typed()
    errors += [str(exc) for exc in typed.problems()]
    config = None
    if not errors:
        try:
            _proxy(typed)
            config = resolve(merged, trust=trust)
        except (ConfigError, OSError) as exc:  # OSError: a key file that cannot be read
            errors.append(_said(exc))
    problems = [ConfigProblem(Severity.WARNING, w) for w in (*merged.warnings, *typed.warnings)]
    problems += [ConfigProblem(Severity.NOTE, n) for n in merged.notes]
    problems += [ConfigProblem(Severity.ERROR, e) for e in errors]  # last: the final word
    return ConfigReport(fqrn, merged.values, merged.origins, tuple(problems),
                        merged.files_read, config, merged.config_root)


def _said(exc: ConfigError | OSError) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    return str(exc)


def _proxy(typed: Typed) -> str:
    """CVMFS_HTTP_PROXY as the network layer gets it: without `auto` members (warned)."""
    written = typed.proxies("CVMFS_HTTP_PROXY")
    proxy, dropped = without_auto(written)
    if dropped:
        typed.warnings.append(
            f"CVMFS_HTTP_PROXY (set in {typed.origin('CVMFS_HTTP_PROXY')}): {AUTO_PROXY} "
            f"({AUTO_MEANING}) is not supported by pycvmfs; using {proxy}")
    return proxy


def _server_urls(merged: MergedSettings, typed: Typed) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in typed.text("CVMFS_SERVER_URL").split(";") if u.strip())
    if not urls:
        fqrn = merged.fqrn
        _, domain = split_fqrn(fqrn)
        hint = misspelled(merged.origins, "CVMFS_SERVER_URL")
        raise ConfigError(
            f"no CVMFS_SERVER_URL for {fqrn}{hint}: there "
            f"is no built-in Stratum-1 list for domain {domain or '(none)'!r} (built in: "
            f"{', '.join(DOMAINS)}); set it in {_where_to_set(merged)}"
            "-o CVMFS_SERVER_URL=http://host/cvmfs/@fqrn@")
    typed.servers("CVMFS_SERVER_URL")
    return urls


def _where_to_set(merged: MergedSettings) -> str:
    """`config.d/FQRN.conf, a --config file or ` - without files that could not be read,
    which are named instead."""
    fqrn, root = merged.fqrn, merged.config_root
    files = [root / "config.d" / f"{fqrn}.conf", root / "config.d" / f"{fqrn}.local"]
    usable = [path for path in files if path not in merged.unreadable]
    broken = [path for path in files if path in merged.unreadable]
    first = f"config.d/{usable[0].name}, " if usable else ""
    said = "".join(f"({path} could not be read) " for path in broken)
    return f"{first}{said}a --config file or "


_CacheFields = tuple[Path, Path, bool, int, "Path | None"]


def cache_fields(merged: MergedSettings) -> _CacheFields:
    """(base, dir, shared, quota, alien) with the reference's checks (fact sheet 9.1, 9.6);
    needs no server URL or key (`pycvmfs cache` finds a cache with it)."""
    typed, fqrn = merged.typed(), merged.fqrn
    base = typed.path("CVMFS_CACHE_BASE") or Path(ROOT_CACHE_BASE)
    shared = typed.boolean("CVMFS_SHARED_CACHE")
    quota = typed.integer("CVMFS_QUOTA_LIMIT")
    alien = typed.path("CVMFS_ALIEN_CACHE")
    if alien is not None and (quota != -1 or shared):
        raise ConfigError(
            f"CVMFS_ALIEN_CACHE (set in {typed.origin('CVMFS_ALIEN_CACHE')}) needs "
            f"CVMFS_QUOTA_LIMIT=-1 (is {quota}, set in {typed.origin('CVMFS_QUOTA_LIMIT')}) "
            f"and CVMFS_SHARED_CACHE=no (is {'yes' if shared else 'no'}, set in "
            f"{typed.origin('CVMFS_SHARED_CACHE')})")
    directory = typed.path("CVMFS_CACHE_DIR") or base / ("shared" if shared else fqrn)
    return base, directory, shared, quota, alien


def _visibility(typed: Typed) -> MagicXattrsVisibility:
    value = typed.choice("CVMFS_MAGIC_XATTRS_VISIBILITY", MAGIC_XATTRS_VISIBILITY)
    if value is not None:
        return MagicXattrsVisibility(value)
    if typed.optional("CVMFS_HIDE_MAGIC_XATTRS") is not None:
        hide = typed.boolean("CVMFS_HIDE_MAGIC_XATTRS")
        return MagicXattrsVisibility.NEVER if hide else MagicXattrsVisibility.ALWAYS
    return MagicXattrsVisibility.ROOTONLY


def symlink_environment(config: ClientConfig,
                        environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables for `$(NAME)` symlinks (fact sheet 6.10): the process environment plus every
    configuration parameter, as the reference's cvmfs2 process has them (parameters win)."""
    base = os.environ if environ is None else environ
    return {**base, **config.settings}
