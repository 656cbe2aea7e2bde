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
operators, `if`/`then` and other shell code (never executed). A malformed line never
raises. Conditions are not evaluated: the assignments inside `if ... fi` all apply, in order
(for the shipped files that means the readonly defaults and the non-CDN list, which comes
last). Bad values of keys the client uses raise ConfigError naming key, value and origin.

I/O: `_read_text` reads files; key resolution globs key directories. Everything else is pure.
Thread-safety: no shared state; ClientConfig is immutable.
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
    home_dir,
    no_keys_message,
    user_keys_dir,
)
from pycvmfs.config_shell import Assignment, Settings, parse_config_text
from pycvmfs.errors import ConfigError

DEFAULT_CONFIG_ROOT: Final = Path("/etc/cvmfs")
CONFIG_ROOT_ENV: Final = "PYCVMFS_CONFIG_ROOT"
DIRECT: Final = "DIRECT"
MAX_CONTINUATION_LINES: Final = 200  # an unterminated quote gives up after this many lines
MAX_CATALOG_MB_DEFAULT: Final = 1024  # PYCVMFS_MAX_CATALOG_MB (README "Bounded downloads")
BUILTIN_DEFAULTS: Final = "<built-in default.conf>"
OVERRIDE: Final = "<-o>"
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")  # no "/", no ".."
_TRUE = frozenset({"yes", "on", "1", "true"})
_FALSE = frozenset({"no", "off", "0", "false"})


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


def _read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist; the only config file reads.
    Other OSErrors propagate."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def split_fqrn(fqrn: str) -> tuple[str, str]:
    """(org, domain): `atlas.cern.ch` -> (`atlas`, `cern.ch`); no dot -> (fqrn, "")."""
    org, _, domain = fqrn.partition(".")
    return org, domain


class _Files:
    """Reads config files into `settings`, collecting warnings and the files read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.warnings: list[str] = []
        self.read: list[Path] = []

    def apply(self, path: Path, *, required: bool = False) -> None:
        """Parse `path` if it exists; `required` (a --config file) makes problems errors."""
        try:
            text = _read_text(path)
        except OSError as exc:
            if required:
                raise ConfigError(f"configuration file {path}: {exc.strerror or exc}") from exc
            self.warnings.append(f"{path}: cannot be read ({exc.strerror or exc}); ignored")
            return
        if text is None:
            if required:
                raise ConfigError(f"configuration file {path}: no such file")
            return
        self.read.append(path)
        self.warnings += parse_config_text(text, source=str(path), settings=self.settings)


def load_settings(
    fqrn: str,
    *,
    config_root: Path | None = None,
    extra_files: Sequence[Path] = (),
    overrides: Mapping[str, str] = _EMPTY,
    environ: Mapping[str, str] | None = None,
    is_root: bool | None = None,
) -> MergedSettings:
    """Apply layers 0-8 (module docstring). ConfigError only for a bad fqrn, a missing
    `--config` file, a bad override name or a bad CVMFS_USE_CDN; malformed lines warn."""
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
    files = _Files(settings)
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
    return MergedSettings(fqrn, root, MappingProxyType(values),
                          MappingProxyType(dict(settings.origins)), tuple(settings.trace),
                          tuple(files.warnings), tuple(files.read), MappingProxyType(env))


def _apply_hierarchy(files: _Files, root: Path, fqrn: str, domain: str) -> None:
    """Layers 1-6 of the module docstring."""
    files.apply(root / "default.conf")
    for path in sorted((root / "default.d").glob("*.conf")):
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
    use_cdn = _parse_bool(key, settings.values.get(key) or "no",  # older files: USE_OPENHTC
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


# --- typed values ---------------------------------------------------------------------------


def _parse_bool(key: str, value: str, origin: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{key}={value!r} (set in {origin}): not a boolean "
                      "(use yes/no, on/off, true/false or 1/0)")


class _Typed:
    """Typed reads of merged settings; every error names key, value and origin."""

    def __init__(self, merged: MergedSettings) -> None:
        self._values = merged.values
        self._origins = merged.origins
        self.home = home_dir(merged.environ)

    def origin(self, key: str) -> str:
        return self._origins.get(key, "unset")

    def text(self, key: str, default: str = "") -> str:
        return self._values.get(key, default)

    def optional(self, key: str) -> str | None:
        value = self._values.get(key, "").strip()
        return value or None

    def integer(self, key: str, default: int) -> int:
        value = self._values.get(key)
        if value is None or not value.strip():
            return default
        try:
            return int(value.strip(), 10)
        except ValueError:
            raise ConfigError(f"{key}={value!r} (set in {self.origin(key)}): "
                              "not an integer") from None

    def optional_integer(self, key: str) -> int | None:
        return self.integer(key, 0) if self.optional(key) is not None else None

    def boolean(self, key: str, default: bool) -> bool:
        value = self._values.get(key)
        if value is None or not value.strip():
            return default
        return _parse_bool(key, value, self.origin(key))

    def path(self, key: str) -> Path | None:
        value = self.optional(key)
        return None if value is None else self.expand_home(value)

    def expand_home(self, value: str) -> Path:
        return Path(self.home + value[1:] if value == "~" or value.startswith("~/") else value)


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
) -> ClientConfig:
    """The configuration of repository `fqrn` (module docstring for order and defaults).

    Raises ConfigError for a bad typed value, an impossible combination, no server URL or
    no public key; malformed lines only give `warnings`."""
    merged = load_settings(fqrn, config_root=config_root, extra_files=extra_files,
                           overrides=overrides, environ=environ, is_root=is_root)
    return resolve(merged)


def resolve(merged: MergedSettings) -> ClientConfig:
    """Type the merged settings (I/O: key directories are listed). The defaults below are
    the reference's built-in values, used only when a file sets a key to the empty string."""
    typed = _Typed(merged)
    proxy = typed.text("CVMFS_HTTP_PROXY").strip()
    cache = _cache_fields(merged.fqrn, typed)
    return ClientConfig(
        fqrn=merged.fqrn,
        server_urls=_server_urls(merged.fqrn, typed),
        http_proxy=proxy or DIRECT,
        http_proxy_defaulted=not proxy,
        fallback_proxy=typed.text("CVMFS_FALLBACK_PROXY").strip(),
        timeout_s=typed.integer("CVMFS_TIMEOUT", 5),
        timeout_direct_s=typed.integer("CVMFS_TIMEOUT_DIRECT", 5),
        low_speed_limit=typed.integer("CVMFS_LOW_SPEED_LIMIT", 1024),
        max_retries=typed.integer("CVMFS_MAX_RETRIES", 1),
        backoff_init_s=typed.integer("CVMFS_BACKOFF_INIT", 2),
        backoff_max_s=typed.integer("CVMFS_BACKOFF_MAX", 10),
        proxy_reset_after_s=typed.integer("CVMFS_PROXY_RESET_AFTER", 0),
        host_reset_after_s=typed.integer("CVMFS_HOST_RESET_AFTER", 0),
        use_geoapi=typed.boolean("CVMFS_USE_GEOAPI", False),
        max_servers=typed.integer("CVMFS_MAX_SERVERS", 0),
        follow_redirects=typed.boolean("CVMFS_FOLLOW_REDIRECTS", False),
        cache_base=cache[0], cache_dir=cache[1], shared_cache=cache[2],
        quota_limit_mb=cache[3], alien_cache=cache[4],
        public_key_files=resolve_public_keys(merged),
        repository_tag=typed.optional("CVMFS_REPOSITORY_TAG"),
        repository_date=typed.optional("CVMFS_REPOSITORY_DATE"),
        root_hash=typed.optional("CVMFS_ROOT_HASH"),
        auto_update=typed.boolean("CVMFS_AUTO_UPDATE", True),
        max_ttl_minutes=typed.optional_integer("CVMFS_MAX_TTL"),
        kcache_timeout_s=typed.integer("CVMFS_KCACHE_TIMEOUT", 60),
        claim_ownership=typed.boolean("CVMFS_CLAIM_OWNERSHIP", True),
        world_readable=typed.boolean("CVMFS_WORLD_READABLE", False),
        check_permissions=typed.boolean("CVMFS_CHECK_PERMISSIONS", True),
        magic_xattrs_visibility=_visibility(typed),
        strict_mount=typed.boolean("CVMFS_STRICT_MOUNT", False),
        settings=merged.values, origins=merged.origins,
        warnings=merged.warnings, files_read=merged.files_read,
        blacklist_files=(merged.config_root / "blacklist",),
        max_catalog_mb=_max_catalog_mb(typed),
    )


def _max_catalog_mb(typed: _Typed) -> int:
    """PYCVMFS_MAX_CATALOG_MB: a pycvmfs setting (the reference has no such limit)."""
    key = "PYCVMFS_MAX_CATALOG_MB"
    value = typed.integer(key, MAX_CATALOG_MB_DEFAULT)
    if value <= 0:
        raise ConfigError(f"{key}={typed.text(key)!r} (set in {typed.origin(key)}): must be "
                          "a positive number of MiB (the largest catalog or history database "
                          "to accept)")
    return value


def _server_urls(fqrn: str, typed: _Typed) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in typed.text("CVMFS_SERVER_URL").split(";") if u.strip())
    if not urls:
        _, domain = split_fqrn(fqrn)
        raise ConfigError(
            f"no CVMFS_SERVER_URL for {fqrn}: there is no built-in Stratum-1 list for "
            f"domain {domain or '(none)'!r} (built in: {', '.join(DOMAINS)}); set it in "
            f"config.d/{fqrn}.conf, a --config file or -o CVMFS_SERVER_URL=http://host/cvmfs/@fqrn@"
        )
    return urls


_CacheFields = tuple[Path, Path, bool, int, "Path | None"]


def _cache_fields(fqrn: str, typed: _Typed) -> _CacheFields:
    """(base, dir, shared, quota, alien) with the reference's checks (fact sheet 9.1, 9.6)."""
    base = typed.path("CVMFS_CACHE_BASE") or Path(ROOT_CACHE_BASE)
    shared = typed.boolean("CVMFS_SHARED_CACHE", True)
    quota = typed.integer("CVMFS_QUOTA_LIMIT", 1024)
    alien = typed.path("CVMFS_ALIEN_CACHE")
    if quota == 0 or quota < -1:
        raise ConfigError(f"CVMFS_QUOTA_LIMIT={quota} (set in "
                          f"{typed.origin('CVMFS_QUOTA_LIMIT')}): must be -1 or positive (MB)")
    if alien is not None and (quota != -1 or shared):
        raise ConfigError(
            f"CVMFS_ALIEN_CACHE (set in {typed.origin('CVMFS_ALIEN_CACHE')}) needs "
            f"CVMFS_QUOTA_LIMIT=-1 (is {quota}, set in {typed.origin('CVMFS_QUOTA_LIMIT')}) "
            f"and CVMFS_SHARED_CACHE=no (is {'yes' if shared else 'no'}, set in "
            f"{typed.origin('CVMFS_SHARED_CACHE')})")
    directory = typed.path("CVMFS_CACHE_DIR") or base / ("shared" if shared else fqrn)
    return base, directory, shared, quota, alien


def _visibility(typed: _Typed) -> MagicXattrsVisibility:
    value = typed.optional("CVMFS_MAGIC_XATTRS_VISIBILITY")
    if value is not None:
        try:
            return MagicXattrsVisibility(value.lower())
        except ValueError:
            raise ConfigError(
                f"CVMFS_MAGIC_XATTRS_VISIBILITY={value!r} (set in "
                f"{typed.origin('CVMFS_MAGIC_XATTRS_VISIBILITY')}): "
                "use rootonly, never or always") from None
    if typed.optional("CVMFS_HIDE_MAGIC_XATTRS") is not None:
        hide = typed.boolean("CVMFS_HIDE_MAGIC_XATTRS", False)
        return MagicXattrsVisibility.NEVER if hide else MagicXattrsVisibility.ALWAYS
    return MagicXattrsVisibility.ROOTONLY


# --- public keys (fact sheet 12.2) ----------------------------------------------------------


def key_search_dirs(merged: MergedSettings) -> list[Path]:
    """Where `*.pub` files are looked for when CVMFS_PUBLIC_KEY is unset, in order."""
    typed = _Typed(merged)
    _, domain = split_fqrn(merged.fqrn)
    user = user_keys_dir(merged.environ)
    dirs = [typed.path("CVMFS_KEYS_DIR") or merged.config_root / "keys"]
    if domain:
        dirs += [merged.config_root / "keys" / domain, user / domain]
    dirs.append(user)
    return list(dict.fromkeys(dirs))


def resolve_public_keys(merged: MergedSettings) -> tuple[Path, ...]:
    """The key files: CVMFS_PUBLIC_KEY wins, else the first search dir holding `*.pub`."""
    typed = _Typed(merged)
    explicit = typed.optional("CVMFS_PUBLIC_KEY")
    if explicit is not None:
        return _explicit_keys(explicit, typed.origin("CVMFS_PUBLIC_KEY"), typed)
    dirs = key_search_dirs(merged)
    for directory in dirs:
        found = sorted(directory.glob("*.pub")) if directory.is_dir() else []
        if found:
            return tuple(found)
    raise ConfigError(no_keys_message(merged.fqrn, split_fqrn(merged.fqrn)[1], dirs,
                                      user_keys_dir(merged.environ)))


def _explicit_keys(value: str, origin: str, typed: _Typed) -> tuple[Path, ...]:
    files: list[Path] = []
    for part in (p.strip() for p in value.split(":")):
        if not part:
            continue
        path = typed.expand_home(part)
        if path.is_dir():
            files += sorted(path.glob("*.pub"))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"CVMFS_PUBLIC_KEY (set in {origin}) names {path}: "
                              "no such file or directory")
    if not files:
        raise ConfigError(f"CVMFS_PUBLIC_KEY={value!r} (set in {origin}): no key files")
    return tuple(files)


def symlink_environment(config: ClientConfig,
                        environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables for `$(NAME)` symlinks (fact sheet 6.10): the process environment plus every
    configuration parameter, as the reference's cvmfs2 process has them (parameters win)."""
    base = os.environ if environ is None else environ
    return {**base, **config.settings}
