"""Facts about the configuration and the cache it names, for `doctor.repository` and
`doctor.cache`. Every use of the configuration API is in `read_configuration`: it never
raises for a configuration problem, it records it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pycvmfs.config import (
    CONFIG_ROOT_ENV,
    DEFAULT_CONFIG_ROOT,
    ClientConfig,
    MergedSettings,
    Severity,
    inspect_config,
    load_settings,
)
from pycvmfs.config_public_keys import resolve_public_keys
from pycvmfs.doctor.cache import CacheFacts
from pycvmfs.doctor.repository import ConfigFacts
from pycvmfs.errors import ConfigError

# Without a repository the hierarchy is read for a name no file is written for, so what
# applies is what every repository shares (default.conf, default.d, default.local).
NODE_FQRN = "pycvmfs-doctor.invalid"
SCANNED_DIRS = ("default.d", "domain.d", "config.d")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    facts: ConfigFacts
    merged: MergedSettings | None
    config: ClientConfig | None


def config_root(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(CONFIG_ROOT_ENV) or DEFAULT_CONFIG_ROOT)


def _root_problem(root: Path) -> str:
    if not root.exists():
        return "missing"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"cannot be read by uid {os.geteuid()}"
    return ""


def unreadable_files(root: Path) -> list[str]:
    """Files of the hierarchy this user cannot read (whichever repository they serve)."""
    found = []
    for name in SCANNED_DIRS:
        directory = root / name
        try:
            entries = sorted(directory.iterdir()) if directory.is_dir() else []
        except OSError as exc:
            found.append(f"{directory}: cannot be listed ({exc.strerror})")
            continue
        found += [f"{path}: cannot be read by uid {os.geteuid()}" for path in entries
                  if path.is_file() and not os.access(path, os.R_OK)]
    return found


def read_configuration(fqrn: str | None, *, extra_files: Sequence[Path] = (),
                       environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """The configuration of `fqrn` (or the node's defaults) with every problem recorded."""
    env = dict(os.environ if environ is None else environ)
    root = config_root(env)
    base = ConfigFacts(fqrn=fqrn, root=root, root_problem=_root_problem(root))
    try:
        merged = load_settings(fqrn or NODE_FQRN, extra_files=extra_files, environ=env)
    except ConfigError as exc:
        return LoadedConfig(replace(base, error=str(exc)), None, None)
    warnings = list(merged.warnings)
    if fqrn is None:
        warnings += [w for w in unreadable_files(root)
                     if not any(w.split(":")[0] in known for known in merged.warnings)]
    servers = tuple(u.strip() for u in merged.values.get("CVMFS_SERVER_URL", "").split(";")
                    if u.strip())
    facts = replace(base, files_read=merged.files_read, warnings=tuple(warnings),
                  server_urls=servers,
                  server_origin=merged.origins.get("CVMFS_SERVER_URL", "unset"))
    if fqrn is None:
        return LoadedConfig(facts, merged, None)
    keys: tuple[Path, ...] = ()
    keys_error = values_error = ""
    try:
        keys = resolve_public_keys(merged)
    except (ConfigError, OSError) as exc:
        keys_error = str(exc)
    # every refused value at once, as `config show` lists them (not only the first)
    report = inspect_config(fqrn, extra_files=extra_files, environ=env)
    values_error = "; ".join(report.of(Severity.ERROR))
    config = report.config
    facts = replace(facts, keys=keys, keys_error=keys_error, values_error=values_error)
    return LoadedConfig(facts, merged, config)


# --- the cache ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheSettings:
    base: Path
    directory: Path | None
    quota_mb: int
    alien: bool
    origin: str


def cache_settings(loaded: LoadedConfig) -> CacheSettings | str:
    """Where the cache is; a string says why that cannot be told."""
    if loaded.merged is None:
        return "configuration not read"
    if loaded.config is not None:
        from pycvmfs.client import cache_config_of

        cache = cache_config_of(loaded.config)
        return CacheSettings(loaded.config.cache_base, cache.directory,
                             cache.quota_limit_mb, cache.alien,
                             loaded.config.origin("CVMFS_CACHE_BASE"))
    merged = loaded.merged
    typed = merged.typed()
    try:
        base = typed.path("CVMFS_CACHE_BASE") or Path("/var/lib/cvmfs")
        alien = typed.path("CVMFS_ALIEN_CACHE")
        shared = typed.boolean("CVMFS_SHARED_CACHE")
        directory = alien or typed.path("CVMFS_CACHE_DIR") or (base / "shared" if shared
                                                               else None)
        quota = typed.integer("CVMFS_QUOTA_LIMIT")
    except ConfigError as exc:
        return str(exc)
    return CacheSettings(base, directory, quota, alien is not None,
                         typed.origin("CVMFS_CACHE_BASE"))


def _stat(path: Path | None) -> os.stat_result | None:
    if path is None:
        return None
    try:
        return os.stat(path)
    except OSError:
        return None


def gather_cache(loaded: LoadedConfig) -> CacheFacts:
    euid = os.geteuid()
    settings = cache_settings(loaded)
    if isinstance(settings, str):
        return CacheFacts(euid, Path("?"), None, -1, False, "unknown", error=settings)
    target = settings.directory or settings.base
    nearest = Path(os.path.abspath(target))
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    try:
        info = os.statvfs(nearest)
        free: int | None = info.f_bavail * info.f_frsize
    except OSError:
        free = None
    return CacheFacts(euid, settings.base, settings.directory, settings.quota_mb,
                      settings.alien, settings.origin, base_stat=_stat(settings.base),
                      directory_stat=_stat(settings.directory), nearest=nearest,
                      nearest_writable=os.access(nearest, os.W_OK | os.X_OK),
                      free_bytes=free)
