"""The `--storage DIR|s3://BUCKET[/PREFIX]`, `--s3-endpoint` and `--s3-config` options that
`publish`, `ingest` (and the other image commands), `whitelist sign` and `gc` share; the
command receives one `StorageArg` and opens it through publisher.storage_factory."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from pycvmfs.publisher.s3_settings import is_s3
from pycvmfs.publisher.storage_factory import S3Options, open_storage
from pycvmfs.publisher.storage_protocol import Storage

F = TypeVar("F", bound=Callable[..., Any])
STORAGE_HELP = ("Repository directory as a web server serves it, or an S3 bucket "
                "s3://BUCKET[/PREFIX] (its HTTP endpoint then serves it).")


@dataclass(frozen=True, slots=True)
class StorageArg:
    """What the options said: a directory (`path`) or an S3 URL (`url`), and S3 options."""

    value: str
    s3: S3Options

    @property
    def is_s3(self) -> bool:
        return is_s3(self.value)

    @property
    def path(self) -> Path:
        """The directory of a local storage (not for S3)."""
        return Path(self.value)

    def for_publish(self) -> Path | Storage:
        """What PublishOptions.storage takes: the directory, or an opened S3 storage."""
        return self.open() if self.is_s3 else self.path

    def open(self) -> Storage:
        return open_storage(self.value if self.is_s3 else self.path, self.s3)


def storage_options(*, must_exist: bool = False,
                    help_text: str = STORAGE_HELP) -> Callable[[F], F]:
    """Add --storage, --s3-endpoint and --s3-config; the command gets `storage: StorageArg`."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def command(**kwargs: Any) -> Any:
            value = kwargs.pop("storage")
            s3 = S3Options(kwargs.pop("s3_endpoint"), kwargs.pop("s3_config"))
            if not is_s3(value):
                if s3.given:
                    raise click.BadParameter(
                        f"{value!r} is a directory: --s3-endpoint and --s3-config are for an "
                        "s3://BUCKET[/PREFIX] storage", param_hint="'--storage'")
                _check_directory(value, must_exist)
            return function(storage=StorageArg(value, s3), **kwargs)

        options = [
            click.option("--storage", required=True, metavar="DIR|s3://BUCKET[/PREFIX]",
                         help=help_text),
            click.option("--s3-endpoint", default=None, metavar="URL",
                         help="S3 server for an s3:// --storage, e.g. http://127.0.0.1:8333 "
                         "(credentials: the AWS environment variables or ~/.aws) "
                         "[default: AWS, or the --s3-config host]."),
            click.option("--s3-config", default=None, metavar="FILE",
                         type=click.Path(dir_okay=False, path_type=Path),
                         help="The reference publisher's S3 settings file (CVMFS_S3_HOST, "
                         "CVMFS_S3_PORT, CVMFS_S3_BUCKET, CVMFS_S3_ACCESS_KEY, "
                         "CVMFS_S3_SECRET_KEY, ...) for an s3:// --storage."),
        ]
        wrapped: Callable[..., Any] = command
        for option in reversed(options):
            wrapped = option(wrapped)
        return cast(F, wrapped)

    return decorate


def _check_directory(value: str, must_exist: bool) -> None:
    """What click.Path(file_okay=False) checked when --storage was only a directory."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"Directory {value!r} is a file.", param_hint="'--storage'")
    if must_exist and not path.exists():
        raise click.BadParameter(f"Directory {value!r} does not exist.",
                                 param_hint="'--storage'")
