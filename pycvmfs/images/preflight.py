"""Checks an image command makes before it contacts a registry or downloads a byte: the
keys load and belong together, the storage is (or may become) this repository's and is
writable, the working tree is writable. Each failure names the path and the fix; all of
them would otherwise surface only at the publish, after the downloads and unpacking.
"""

from __future__ import annotations

import os
from pathlib import Path

from pycvmfs.errors import ConfigError, PublishError
from pycvmfs.format.manifest import verify_manifest
from pycvmfs.publisher.keys import RepositoryKeys, load_keys
from pycvmfs.publisher.publish import PublishOptions
from pycvmfs.publisher.storage import LOCK_NAME, MANIFEST_NAME, WHITELIST_NAME
from pycvmfs.publisher.storage_protocol import Storage

# what a first publish that failed may leave in a storage directory
FIRST_PUBLISH_LEFTOVERS = frozenset({"data", LOCK_NAME, WHITELIST_NAME})


def check_can_publish(options: PublishOptions) -> None:
    """Raise ConfigError/PublishError when a publish of `options` cannot succeed for a
    reason known now (see the module docstring)."""
    keys = load_keys(options.fqrn, options.keys_dir)
    storage = options.storage
    if not isinstance(storage, Path):
        _check_object_storage(storage, options, keys)
    elif storage.is_dir():
        _check_writable(storage, "the storage", "--storage")
        manifest = storage / MANIFEST_NAME
        if manifest.is_file():
            try:
                verify_manifest(manifest.read_bytes(), keys.certificate, fqrn=options.fqrn)
            except OSError as exc:
                raise PublishError(f"cannot read {manifest}: {exc.strerror}") from None
            except Exception as exc:
                raise PublishError(f"{storage} is not the repository {options.fqrn} signed "
                                   f"with the keys in {options.keys_dir} ({exc}): check "
                                   "--storage, --repo and --keys-dir") from None
        elif set(os.listdir(storage)) - FIRST_PUBLISH_LEFTOVERS:
            raise PublishError(f"{storage} is neither a repository (no {MANIFEST_NAME}) nor "
                               "empty: choose an empty or new --storage directory")
    elif os.path.lexists(storage):
        raise PublishError(f"{storage} is not a directory: check --storage")
    else:
        _check_writable(_existing_ancestor(storage), f"the parent of the storage {storage}",
                        "--storage")
    work = options.source
    if work.is_dir():
        _check_writable(work, "the working tree", "--work")


def _check_object_storage(storage: Storage, options: PublishOptions,
                          keys: RepositoryKeys) -> None:
    """An S3 storage: reachable, and empty or this repository's."""
    storage.prepare()
    raw = storage.read_file(MANIFEST_NAME)
    if raw is None:
        return
    try:
        verify_manifest(raw, keys.certificate, fqrn=options.fqrn)
    except Exception as exc:
        raise PublishError(f"{storage.location} is not the repository {options.fqrn} signed "
                           f"with the keys in {options.keys_dir} ({exc}): check --storage, "
                           "--repo and --keys-dir") from None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(directory: Path, what: str, option: str) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {directory} is not writable by uid {os.geteuid()}: "
                          f"fix its permissions or choose another {option}")
