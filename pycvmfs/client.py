"""The composition root of a mount, in one place and a fixed order (style guide R12):
configuration -> proxies and Stratum-1 ring -> downloader -> cache host + fetcher ->
revision source (trusted repository, `repository.revisions`) -> revision watcher -> file
bundle prefetcher (`CVMFS_PREFETCH_FILEBUNDLES`) -> filesystem core, which subscribes to the
watcher. The CLI and tests build mounts only through
`open_client`, in the process that serves the mount (the cache's lock and SQLite
connection must not cross a fork)."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.cache.fetcher import Fetcher
from pycvmfs.cache.host import CacheConfig, CacheHost, open_cache_directory
from pycvmfs.cache.identity import cache_uuid
from pycvmfs.client_notices import captured_warnings, geo_notice, mount_notices
from pycvmfs.config import ClientConfig, MergedSettings, cache_fields, symlink_environment
from pycvmfs.errors import ConfigError
from pycvmfs.format.certificates import load_public_key
from pycvmfs.fs.magic_xattrs import CacheInfo, NetworkInfo
from pycvmfs.fs.stats_document import cache_details, network_details
from pycvmfs.fs.vfs import MountOptions, RepositoryVFS
from pycvmfs.network.download import Downloader, DownloadSettings
from pycvmfs.network.failover import RouteState
from pycvmfs.network.geo import order_hosts, proxy_label
from pycvmfs.network.proxies import parse_proxies, parse_server_urls
from pycvmfs.network.transport import Transport, default_transport
from pycvmfs.repository.bundles import BundlePrefetcher, default_pool_size
from pycvmfs.repository.network_source import NetworkSource
from pycvmfs.repository.objects import cache_loader
from pycvmfs.repository.open import RevisionSelector
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.revisions import RevisionSource, RevisionWatcher

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Client:
    config: ClientConfig
    source: NetworkSource
    cache: CacheHost
    watcher: RevisionWatcher
    vfs: RepositoryVFS
    bundles: BundlePrefetcher | None = None  # None: CVMFS_PREFETCH_FILEBUNDLES=no
    notices: tuple[str, ...] = ()  # degraded at mount time (`client_notices`)

    @property
    def repository(self) -> Repository:
        """The revision being served right now."""
        return self.watcher.current

    def close(self) -> None:
        self.watcher.stop()
        if self.bundles is not None:  # before the cache closes under its downloads
            self.bundles.close()
        self.vfs.close()
        self.source.close()
        self.cache.close()


def downloader_for(config: ClientConfig, transport: Transport | None = None
                   ) -> tuple[Downloader, RouteState]:
    """Proxies and the Stratum-1 ring (sorted by the Geo API when `CVMFS_USE_GEOAPI=yes`,
    then cut to `CVMFS_MAX_SERVERS`) behind one downloader."""
    downloader, route, _ = _downloader(config, transport)
    return downloader, route


def _downloader(config: ClientConfig, transport: Transport | None
                ) -> tuple[Downloader, RouteState, list[str]]:
    """`downloader_for`, and what was degraded (the Geo API did not answer)."""
    notices = []
    transport = transport or default_transport()
    proxies = parse_proxies(config.http_proxy, config.fallback_proxy)
    hosts = parse_server_urls(";".join(config.server_urls))

    def route_for(ring: tuple[str, ...]) -> RouteState:
        return RouteState(ring, proxies, proxy_reset_after=config.proxy_reset_after_s,
                          host_reset_after=config.host_reset_after_s)

    route = route_for(hosts)
    if config.use_geoapi:
        proxy = route.current()[1]
        order = order_hosts(transport, hosts, proxy=proxy,
                            proxy_name=proxy_label(proxy, _cache_uuid(config),
                                                   config.settings.get("CVMFS_PROXY_TEMPLATE")),
                            timeout=config.timeout_s if proxies.regular else
                            config.timeout_direct_s, low_speed_limit=config.low_speed_limit)
        if order is not None:
            route.order_hosts(order)
            log.info("Geo API order of the Stratum-1s: %s", ", ".join(route.hosts))
        elif len(hosts) > 1:
            notices.append(geo_notice(config))
    if config.max_servers and len(route.hosts) > config.max_servers:
        route = route_for(route.hosts[:config.max_servers])
    settings = DownloadSettings(timeout=config.timeout_s, timeout_direct=config.timeout_direct_s,
                                low_speed_limit=config.low_speed_limit,
                                max_retries=config.max_retries,
                                backoff_init=config.backoff_init_s,
                                backoff_max=config.backoff_max_s)
    return Downloader(transport, route, settings), route, notices


def cache_config_of(config: ClientConfig) -> CacheConfig:
    """The cache a configuration names: `CVMFS_ALIEN_CACHE`, else `CVMFS_CACHE_DIR` or
    `CVMFS_CACHE_BASE/shared|FQRN`. Below `CVMFS_CACHE_BASE` (which may be a shared sticky
    directory) every component must be the user's; a directory elsewhere is checked from
    its parent (`cache.safe_dir`)."""
    return _cache_config(config.cache_base, config.cache_dir, config.shared_cache,
                         config.quota_limit_mb, config.alien_cache)


def cache_config_of_settings(merged: MergedSettings) -> CacheConfig:
    """`cache_config_of` before the whole configuration is resolved: no server URL or key
    needed (`pycvmfs cache`); a ConfigError only for a bad cache setting."""
    return _cache_config(*cache_fields(merged))


def _cache_config(cache_base: Path, cache_dir: Path, shared: bool, quota_limit_mb: int,
                  alien_cache: Path | None) -> CacheConfig:
    directory = Path(os.path.abspath(alien_cache or cache_dir))
    base = Path(os.path.abspath(cache_base))
    if alien_cache is not None or not directory.is_relative_to(base) or directory == base:
        base = directory.parent
    return CacheConfig(directory=directory, quota_limit_mb=quota_limit_mb,
                       alien=alien_cache is not None, shared=shared, base=base)


def _cache_uuid(config: ClientConfig) -> str:
    """The cache's stable random id (`<cache>/uuid`), which the Geo API gets for DIRECT
    connections instead of a proxy name; a fresh one if the cache cannot keep it. The
    directory is opened and checked as for the mount (CacheSecurityError if unsafe)."""
    try:
        directory = open_cache_directory(cache_config_of(config))
    except OSError:
        return str(uuid.uuid4())  # open_client reports why the cache cannot be used
    with directory:
        return cache_uuid(directory)


def open_client(config: ClientConfig, transport: Transport | None = None) -> Client:
    """Verify the trust chain and attach the root catalog; raises a named error if not.
    `transport` replaces the HTTP connection pool (tests without sockets)."""
    downloader, route, notices = _downloader(config, transport)
    start = route.current()
    source = NetworkSource(downloader, ";".join(config.server_urls))
    cache_config = cache_config_of(config)
    try:
        cache = CacheHost(cache_config)
    except OSError as exc:
        source.close()
        where = f" ({exc.filename})" if exc.filename else ""
        raise ConfigError(f"cannot use cache directory {cache_config.directory}: "
                          f"{exc.strerror or exc}{where}; set CVMFS_CACHE_BASE to a "
                          "directory you can write") from exc
    except BaseException:  # CacheSecurityError: refused, no fallback
        source.close()
        raise
    fetcher = Fetcher(cache, source, max_unsized_bytes=config.max_catalog_mb << 20)
    try:
        keys = [load_public_key(path.read_bytes(), what=str(path))
                for path in config.public_key_files]
        selector = RevisionSelector.of(tag=config.repository_tag, date=config.repository_date,
                                       root_hash=config.root_hash)
        loader = cache_loader(fetcher, config.fqrn, source)
        revisions = RevisionSource(source, config.fqrn, keys, selector, loader,
                                   blacklist_files=config.blacklist_files)
        with captured_warnings(RevisionSource.__module__) as offline_lines:
            repository = revisions.first()
        notices += mount_notices(config, repository, route, start, offline_lines, cache)
    except BaseException:
        source.close()
        cache.close()
        raise
    options = MountOptions(claim_ownership=config.claim_ownership,
                           world_readable=config.world_readable,
                           environment=symlink_environment(config),
                           magic_xattrs_visibility=str(config.magic_xattrs_visibility))

    def transfers() -> tuple[int, int, float]:
        s = downloader.statistics()
        return s.bytes_received, s.downloads, s.seconds

    max_ttl = config.max_ttl_minutes * 60.0 if config.max_ttl_minutes else None
    watcher = RevisionWatcher(repository, revisions.newer, revocation=revisions.revocation,
                              max_ttl_s=max_ttl, min_ttl_s=float(config.min_ttl_s),
                              auto_update=config.auto_update)
    proxies = parse_proxies(config.http_proxy, config.fallback_proxy)
    network = NetworkInfo(
        host=lambda: str(route.current()[0]), host_list=lambda: list(config.server_urls),
        proxy=lambda: str(route.current()[1]),
        proxy_list=lambda: [str(p) for group in proxies.groups for p in group] or ["DIRECT"],
        timeout_s=config.timeout_s, timeout_direct_s=config.timeout_direct_s,
        transfers=transfers, offline=lambda: (watcher.offline, watcher.last_error),
        details=lambda: network_details(downloader, proxies))
    cache_info = CacheInfo(hits_misses=lambda: (fetcher.hits, fetcher.misses),
                           open_object=cache.store.open,
                           details=lambda: cache_details(cache, config.cache_base))

    def capacity() -> tuple[int, int]:
        used, total = cache.usage()
        return (total if total > 0 else used), used

    bundles = None
    if config.prefetch_filebundles:
        # the revision the filesystem serves (`vfs`, bound once it exists: a trigger comes
        # through it)
        bundles = BundlePrefetcher(lambda path: vfs.repository.pieces(path), loader.prefetch,
                                   lambda path: vfs.repository.read(path),
                                   pool_size=config.bundle_pool_size or default_pool_size())
    vfs = RepositoryVFS(repository, options, capacity=capacity, network=network,
                        cache=cache_info, revisions=watcher,
                        bundle_trigger=bundles.triggered if bundles is not None else None)
    return Client(config, source, cache, watcher, vfs, bundles, tuple(notices))
