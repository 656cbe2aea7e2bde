"""The composition root of a mount, in one place and a fixed order (style guide R12):
configuration -> proxies and Stratum-1 ring -> downloader -> cache host + fetcher ->
trusted repository -> filesystem core. The CLI and tests build mounts only through
`open_client`, in the process that serves the mount (the cache's lock and SQLite
connection must not cross a fork)."""

from __future__ import annotations

from dataclasses import dataclass

from pycvmfs.cache.fetcher import Fetcher
from pycvmfs.cache.host import CacheConfig, CacheHost
from pycvmfs.config import ClientConfig, symlink_environment
from pycvmfs.errors import ConfigError
from pycvmfs.format.certificates import load_public_key
from pycvmfs.fs.magic_xattrs import NetworkInfo
from pycvmfs.fs.vfs import MountOptions, RepositoryVFS
from pycvmfs.network.download import Downloader, DownloadSettings
from pycvmfs.network.failover import RouteState
from pycvmfs.network.proxies import parse_proxies, parse_server_urls
from pycvmfs.network.transport import Urllib3Transport
from pycvmfs.repository.network_source import NetworkSource
from pycvmfs.repository.repository import Repository


@dataclass(slots=True)
class Client:
    config: ClientConfig
    source: NetworkSource
    cache: CacheHost
    repository: Repository
    vfs: RepositoryVFS

    def close(self) -> None:
        self.repository.close()
        self.source.close()
        self.cache.close()


def downloader_for(config: ClientConfig) -> tuple[Downloader, RouteState]:
    hosts = parse_server_urls(";".join(config.server_urls), config.max_servers)
    route = RouteState(hosts, parse_proxies(config.http_proxy, config.fallback_proxy),
                       proxy_reset_after=config.proxy_reset_after_s,
                       host_reset_after=config.host_reset_after_s)
    settings = DownloadSettings(timeout=config.timeout_s, timeout_direct=config.timeout_direct_s,
                                low_speed_limit=config.low_speed_limit,
                                max_retries=config.max_retries,
                                backoff_init=config.backoff_init_s,
                                backoff_max=config.backoff_max_s)
    return Downloader(Urllib3Transport(), route, settings), route


def open_client(config: ClientConfig) -> Client:
    """Verify the trust chain and attach the root catalog; raises a named error if not."""
    downloader, route = downloader_for(config)
    source = NetworkSource(downloader, ";".join(config.server_urls))
    directory = config.alien_cache or config.cache_dir
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        cache = CacheHost(CacheConfig(directory=directory, quota_limit_mb=config.quota_limit_mb,
                                      alien=config.alien_cache is not None,
                                      shared=config.shared_cache))
    except OSError as exc:
        source.close()
        raise ConfigError(f"cannot use cache directory {directory}: "
                          f"{exc.strerror or exc}") from exc
    fetcher = Fetcher(cache, downloader)
    try:
        keys = [load_public_key(path.read_bytes(), what=str(path))
                for path in config.public_key_files]
        repository = Repository.open(source, config.fqrn, keys, tag=config.repository_tag,
                                     fetcher=fetcher)
    except BaseException:
        source.close()
        cache.close()
        raise
    options = MountOptions(claim_ownership=config.claim_ownership,
                           world_readable=config.world_readable,
                           environment=symlink_environment(config),
                           magic_xattrs_visibility=str(config.magic_xattrs_visibility))
    network = NetworkInfo(
        host=lambda: str(route.current()[0]), host_list=lambda: list(config.server_urls),
        proxy=lambda: str(route.current()[1]),
        timeout_s=config.timeout_s, timeout_direct_s=config.timeout_direct_s)
    def capacity() -> tuple[int, int]:
        used, total = cache.usage()
        return (total if total > 0 else used), used

    vfs = RepositoryVFS(repository, options, capacity=capacity, network=network)
    return Client(config, source, cache, repository, vfs)
