"""One place that turns a `--storage` value (a directory, or s3://BUCKET[/PREFIX] with the
S3 options) into a storage (publisher.storage_protocol)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ConfigError
from pycvmfs.publisher.s3_settings import is_s3, s3_settings
from pycvmfs.publisher.storage import LocalStorage
from pycvmfs.publisher.storage_protocol import Storage


@dataclass(frozen=True, slots=True)
class S3Options:
    """`--s3-endpoint` and `--s3-config`, for an s3:// storage only."""

    endpoint: str | None = None
    config_file: Path | None = None

    @property
    def given(self) -> bool:
        return self.endpoint is not None or self.config_file is not None


def open_storage(spec: str | Path, s3: S3Options | None = None) -> Storage:
    """The storage `spec` names; S3 storages need boto3 (the `s3` extra)."""
    s3 = s3 or S3Options()
    text = str(spec)
    if isinstance(spec, str) and is_s3(text):
        from pycvmfs.publisher.storage_s3 import S3Storage

        return S3Storage(s3_settings(text, s3.endpoint, s3.config_file))
    if s3.given:
        raise ConfigError(f"--s3-endpoint and --s3-config are for an s3:// --storage, not "
                          f"the directory {text}")
    return LocalStorage(Path(spec))


def as_storage(value: Storage | Path | str) -> Storage:
    """A storage given as one, or as its directory or s3:// URL."""
    if isinstance(value, Path | str):
        return open_storage(value)
    return value
