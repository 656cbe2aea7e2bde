"""Where an S3 storage is and how to talk to it: `--storage s3://BUCKET[/PREFIX]`,
`--s3-endpoint URL`, and the reference publisher's S3 settings file (`--s3-config FILE`,
as `cvmfs_server mkfs -s FILE` reads it).

Settings file keys (cvmfs upload_s3.cc and doc-cvmfs): CVMFS_S3_HOST, CVMFS_S3_PORT
(default 80, 443 with CVMFS_S3_USE_HTTPS=true), CVMFS_S3_BUCKET, CVMFS_S3_ACCESS_KEY,
CVMFS_S3_SECRET_KEY, CVMFS_S3_REGION, CVMFS_S3_DNS_BUCKETS (virtual-host style bucket
URLs; on unless the literal `false`), CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS,
CVMFS_S3_X_AMZ_ACL (default public-read). Without the file, credentials come from the
standard AWS chain (environment, ~/.aws/credentials and config) through boto3, and a given
--s3-endpoint is addressed path-style (bucket in the path, as SeaweedFS and MinIO serve).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.config_shell import Settings, parse_config
from pycvmfs.errors import ConfigError

SCHEME = "s3://"
DEFAULT_PARALLEL_CONNECTIONS = 16
MAX_PARALLEL_CONNECTIONS = 256
DEFAULT_ACL = "public-read"  # objects readable anonymously: the bucket is a Stratum-1 URL
ACLS = frozenset({"private", "public-read", "public-read-write", "authenticated-read",
                  "aws-exec-read", "bucket-owner-read", "bucket-owner-full-control"})
MAX_CONFIG_BYTES = 64 << 10
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


@dataclass(frozen=True, slots=True)
class S3Settings:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)
    endpoint_url: str | None  # None: AWS's own endpoints
    access_key: str | None = None  # None: boto3's credential chain
    secret_key: str | None = None
    region: str | None = None
    path_style: bool = True
    parallel: int = DEFAULT_PARALLEL_CONNECTIONS
    acl: str = DEFAULT_ACL

    @property
    def location(self) -> str:
        return f"{SCHEME}{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative


def is_s3(spec: str) -> bool:
    return spec.startswith(SCHEME)


def s3_settings(spec: str, endpoint: str | None, config_file: Path | None) -> S3Settings:
    """Settings for `--storage spec` (an s3:// URL) with the S3 options."""
    bucket, _, prefix = spec[len(SCHEME):].partition("/")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError(f"--storage {spec}: the prefix must be plain path components "
                          "(no //, . or ..)")
    values = read_s3_config(config_file) if config_file is not None else {}
    configured = values.get("CVMFS_S3_BUCKET", "")
    if not bucket:
        bucket = configured
        if not bucket:
            raise ConfigError(f"--storage {spec} names no bucket: use s3://BUCKET[/PREFIX] "
                              "(or set CVMFS_S3_BUCKET in the --s3-config file)")
    elif configured and configured != bucket:
        raise ConfigError(f"--storage {spec} names bucket {bucket!r} but {config_file} sets "
                          f"CVMFS_S3_BUCKET={configured}: make them agree (or write s3:///"
                          "PREFIX to take the file's bucket)")
    _check_bucket(bucket, spec)
    if config_file is None:
        return S3Settings(bucket, prefix, _checked_endpoint(endpoint) if endpoint else None,
                          path_style=endpoint is not None)
    return _from_file(values, config_file, bucket, prefix, endpoint)


def read_s3_config(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an S3 settings file, parsed as the configuration files are."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the --s3-config file {path}: "
                          f"{exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--s3-config file {path} is larger than {MAX_CONFIG_BYTES} bytes: "
                          "is it the right file?")
    settings = Settings()
    result = parse_config(data.decode("utf-8", errors="replace"), source=str(path),
                          settings=settings)
    if result.malformed:
        raise ConfigError(f"--s3-config file {path}: {result.warnings[0]}")
    return dict(settings.values)


def _from_file(values: dict[str, str], path: Path, bucket: str, prefix: str,
               endpoint: str | None) -> S3Settings:
    def need(key: str) -> str:
        value = values.get(key, "").strip()
        if not value:
            raise ConfigError(f"--s3-config file {path} sets no {key}: add {key}=... to it")
        return value

    https = values.get("CVMFS_S3_USE_HTTPS", "").strip().lower() in ("true", "yes", "on", "1")
    if endpoint is None:
        host = need("CVMFS_S3_HOST")
        port = _number(values.get("CVMFS_S3_PORT", "443" if https else "80"), "CVMFS_S3_PORT",
                       path, 1, 65535)
        endpoint = f"{'https' if https else 'http'}://{host}:{port}"
    parallel = _number(values.get("CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS",
                                  str(DEFAULT_PARALLEL_CONNECTIONS)),
                       "CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS", path, 1,
                       MAX_PARALLEL_CONNECTIONS)
    acl = values.get("CVMFS_S3_X_AMZ_ACL", DEFAULT_ACL).strip() or DEFAULT_ACL
    if acl not in ACLS:
        raise ConfigError(f"--s3-config file {path}: CVMFS_S3_X_AMZ_ACL={acl} is not a canned "
                          f"ACL ({', '.join(sorted(ACLS))})")
    return S3Settings(
        bucket, prefix, _checked_endpoint(endpoint),
        access_key=need("CVMFS_S3_ACCESS_KEY"), secret_key=need("CVMFS_S3_SECRET_KEY"),
        region=values.get("CVMFS_S3_REGION", "").strip() or None,
        path_style=values.get("CVMFS_S3_DNS_BUCKETS", "").strip() == "false",
        parallel=parallel, acl=acl)


def _number(text: str, key: str, path: Path, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"--s3-config file {path}: {key}={text} is not a number from "
                          f"{low} to {high}")
    return value


def _checked_endpoint(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        raise ConfigError(f"S3 endpoint {url!r} is not an http:// or https:// URL: check "
                          "--s3-endpoint (or CVMFS_S3_HOST and CVMFS_S3_PORT)")
    return url.rstrip("/")


def _check_bucket(bucket: str, spec: str) -> None:
    if not _BUCKET.match(bucket):
        raise ConfigError(f"--storage {spec}: {bucket!r} is not an S3 bucket name (3 to 63 "
                          "lower-case letters, digits, dots and hyphens)")
