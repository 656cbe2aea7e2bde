"""Re-sign `.cvmfswhitelist` with the master key (the `cvmfs_server resign` job)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pycvmfs.errors import ConfigError
from pycvmfs.format.certificates import certificate_fingerprint
from pycvmfs.format.hashes import Algorithm
from pycvmfs.format.manifest import parse_manifest
from pycvmfs.format.whitelist import make_whitelist, sign_whitelist
from pycvmfs.publisher.keys import RepositoryKeys
from pycvmfs.publisher.storage import MANIFEST_NAME, WHITELIST_NAME
from pycvmfs.publisher.storage_protocol import Storage

DEFAULT_WHITELIST_DAYS = 30  # the reference publisher's validity with a master key file


def write_whitelist(storage: Storage, fqrn: str, keys: RepositoryKeys, days: int,
                    now: datetime | None = None) -> datetime:
    """Sign a whitelist listing the signing certificate; returns its expiry (UTC)."""
    if keys.master_key is None:
        raise ConfigError(f"cannot sign the whitelist of {fqrn}: no {fqrn}.masterkey "
                          "in the keys directory")
    if days < 1:
        raise ConfigError(f"whitelist validity must be at least one day, not {days}")
    algorithm = _repository_algorithm(storage)
    whitelist = make_whitelist(
        fqrn, [certificate_fingerprint(keys.certificate, algorithm)],
        now=now or datetime.now(UTC), validity=timedelta(days=days),
    )
    storage.put_file(WHITELIST_NAME, sign_whitelist(whitelist, keys.master_key,
                                                    algorithm=algorithm))
    return whitelist.expires


def _repository_algorithm(storage: Storage) -> Algorithm:
    raw = storage.read_file(MANIFEST_NAME)
    if raw is None:
        return Algorithm.SHA1
    try:
        return parse_manifest(raw)[0].root_hash.algorithm
    except Exception:
        return Algorithm.SHA1
