"""Registry API v2 client. The values it returns (`Manifest`, `ImageConfig`, ...) and
their parsers live in `manifest.py`, shared with the local sources in `archives.py`.

`RegistryClient` (one registry, HTTP over a pooled urllib3 `PoolManager`) does `ping`,
`get_manifest` (Accept: OCI manifest/index, Docker schema-2 manifest/manifest list; an index
resolves to the platform asked for, default linux/amd64), `get_config`, `get_blob` (to a file:
streamed, digest-verified, size-limited, the partial file removed on any failure),
`open_blob` and `list_tags` (following `Link: <...>; rel="next"`).

Authentication: anonymous first. A 401 carries `WWW-Authenticate`; for `Basic` the client
retries once with the credentials it was given; for `Bearer realm=...,service=...,scope=...`
it fetches a token from the realm (with Basic credentials when it has them), caches it per
scope until it expires, and retries once. Redirects (blob storage on another host) are
followed by urllib3, which drops `Authorization` when the host changes.

Digests: a manifest pinned by digest (the reference, or an index entry) must hash to it;
a `Docker-Content-Digest` header must agree with the bytes; blobs must hash to their
digest. Mismatches raise `HashMismatchError`; HTTP trouble raises `RegistryError`.

Transport: https, except plain http for loopback registries, for `http://` references or
`insecure=True`. urllib3 exceptions are translated in one place, `_send`.

Thread-safety: a `RegistryClient` may be shared by threads (urllib3 pools are thread-safe;
the token cache is guarded by a lock). A `VerifyingReader` belongs to one thread.

Caveats: Docker schema-1 manifests are refused (see `manifest.py`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Self
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError
from urllib3.util import Retry, Timeout

from pycvmfs import __version__
from pycvmfs.errors import ImageError, RegistryError
from pycvmfs.images.manifest import (
    _DIGEST_RE,
    ACCEPT_MANIFESTS,
    BLOCK_BYTES,
    LINUX_AMD64,
    MAX_BLOB_BYTES,
    MAX_CONFIG_BYTES,
    MAX_INDEX_DEPTH,
    MAX_MANIFEST_BYTES,
    ImageConfig,
    ImageIndex,
    ImageParts,
    Manifest,
    Platform,
    VerifyingReader,
    _load_json,
    _str_tuple,
    check_digest,
    parse_config,
    parse_manifest,
    select_platform,
    verify_digest,
)
from pycvmfs.images.reference import LOCAL_HOSTS, ImageReference, parse_reference

# Limits of the API client ---------------------------------------------------------------
MAX_TAG_PAGES = 10_000  # a `Link` loop must end
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0  # per socket read, not per blob
POOL_MAXSIZE = 8  # parallel layer downloads per host
TOKEN_DEFAULT_SECONDS = 60  # the token spec's default `expires_in`
TOKEN_EARLY_SECONDS = 5  # renew a little before the registry would refuse it
USER_AGENT = f"pycvmfs/{__version__}"

# Authentication ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Challenge:
    """One `WWW-Authenticate` challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: Mapping[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s"]*)\s*(?:,|$)')


def parse_challenge(header: str) -> Challenge:
    """Parse `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`."""
    header = header.strip()
    match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)", header)
    if match is None:
        raise RegistryError(f"unparsable WWW-Authenticate header {header!r}", 401)
    scheme = match.group(1).lower()
    params: dict[str, str] = {}
    rest = header[match.end():]
    position = 0
    while position < len(rest):
        param = _PARAM_RE.match(rest, position)
        if param is None or param.end() == position:
            raise RegistryError(f"unparsable WWW-Authenticate header {header!r}", 401)
        value = param.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[param.group(1).lower()] = value
        position = param.end()
    return Challenge(scheme, MappingProxyType(params))


def repository_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


# The client -------------------------------------------------------------------------------
class RegistryClient:
    """Talks to one registry (`host[:port]`). See the module docstring for auth and
    verification. Use as a context manager or call `close()`."""

    def __init__(self, registry: str, *, username: str | None = None,
                 password: str | None = None, scheme: str | None = None,
                 insecure: bool = False, verify_tls: bool = True,
                 connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                 read_timeout: float = READ_TIMEOUT_SECONDS,
                 max_manifest_bytes: int = MAX_MANIFEST_BYTES,
                 pool_maxsize: int = POOL_MAXSIZE) -> None:
        host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else \
            registry[: registry.index("]") + 1]
        if scheme is None:
            scheme = "http" if insecure or host in LOCAL_HOSTS else "https"
        if scheme not in ("http", "https"):
            raise ImageError(f"unsupported registry scheme {scheme!r}")
        self.registry = registry
        self.base_url = f"{scheme}://{registry}"
        self.username = username
        self.password = password
        self.max_manifest_bytes = max_manifest_bytes
        self._insecure = insecure or scheme == "http"
        self._use_basic = False
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        retries = Retry(total=3, connect=3, read=2, redirect=5, status=2,
                        status_forcelist=(429, 500, 502, 503, 504), backoff_factor=0.3,
                        allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False,
                        raise_on_redirect=True)
        self._http = urllib3.PoolManager(
            num_pools=4, maxsize=pool_maxsize, block=False, retries=retries,
            timeout=Timeout(connect=connect_timeout, read=read_timeout),
            cert_reqs="CERT_REQUIRED" if verify_tls else "CERT_NONE",
            headers={"User-Agent": USER_AGENT})

    @classmethod
    def for_reference(cls, reference: ImageReference | str, *, username: str | None = None,
                      password: str | None = None, insecure: bool = False,
                      verify_tls: bool = True) -> RegistryClient:
        """A client for the registry a reference names (its `http://` scheme honoured)."""
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        if not ref.is_registry:
            raise ImageError(f"{ref} is not a registry reference")
        return cls(ref.api_host, username=username, password=password, scheme=ref.scheme,
                   insecure=insecure, verify_tls=verify_tls)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.clear()

    # -- requests ------------------------------------------------------------------------
    def _url(self, path_or_url: str) -> str:
        return urljoin(self.base_url + "/", path_or_url)

    def _send(self, url: str, headers: Mapping[str, str]) -> urllib3.BaseHTTPResponse:
        """One GET (urllib3 retries and redirects inside); the one exception edge."""
        try:
            return self._http.request("GET", url, headers=dict(headers),
                                      preload_content=False, redirect=True)
        except HTTPError as exc:
            raise RegistryError(f"GET {url}: {exc}") from exc

    def _auth_headers(self, scope: str) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope)
            if token is not None and token[1] > time.monotonic():
                return {"Authorization": f"Bearer {token[0]}"}
        if self._use_basic and self.username is not None:
            return {"Authorization": self._basic_value()}
        return {}

    def _basic_value(self) -> str:
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _get(self, path_or_url: str, *, scope: str,
             accept: str | None = None) -> urllib3.BaseHTTPResponse:
        """GET with authentication: anonymous or cached first; one retry after a 401."""
        url = self._url(path_or_url)
        headers = {"Accept": accept} if accept else {}
        response = self._send(url, {**headers, **self._auth_headers(scope)})
        if response.status == 401:
            header = response.headers.get("WWW-Authenticate", "")
            _discard(response)
            self._authenticate(header, scope, url)
            response = self._send(url, {**headers, **self._auth_headers(scope)})
            if response.status == 401:
                _discard(response)
                raise RegistryError(f"GET {url}: access denied (401) with the credentials "
                                    "given", 401)
        if response.status >= 400:
            detail = _error_detail(response)
            raise RegistryError(f"GET {url}: HTTP {response.status}{detail}", response.status)
        return response

    def _authenticate(self, header: str, scope: str, url: str) -> None:
        if not header:
            raise RegistryError(f"GET {url}: 401 without a WWW-Authenticate challenge", 401)
        challenge = parse_challenge(header)
        if challenge.scheme == "basic":
            if self.username is None:
                raise RegistryError(f"GET {url}: the registry wants credentials (Basic)", 401)
            self._use_basic = True
            return
        if challenge.scheme != "bearer":
            raise RegistryError(f"GET {url}: unsupported auth scheme {challenge.scheme!r}", 401)
        token, lifetime = self._fetch_token(challenge, scope)
        expiry = time.monotonic() + max(lifetime - TOKEN_EARLY_SECONDS, 1)
        with self._lock:
            self._tokens[scope] = (token, expiry)

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, int]:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError("Bearer challenge without a realm", 401)
        realm_parts = urlsplit(realm)
        if realm_parts.scheme not in ("http", "https") or not realm_parts.hostname:
            raise RegistryError(f"Bearer realm {realm!r} is not an http(s) URL", 401)
        if realm_parts.scheme == "http" and not self._insecure and \
                realm_parts.hostname not in LOCAL_HOSTS:
            raise RegistryError(f"refusing to fetch a token over plain http from {realm}", 401)
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        wanted_scope = challenge.params.get("scope") or scope
        if wanted_scope:
            query.append(("scope", wanted_scope))
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        headers = {"Authorization": self._basic_value()} if self.username is not None else {}
        response = self._send(url, headers)
        try:
            if response.status >= 400:
                raise RegistryError(f"token request to {realm} failed: HTTP "
                                    f"{response.status}{_error_detail(response)}",
                                    response.status)
            body = _read_limited(response, 1 << 20, f"token from {realm}")
        finally:
            _discard(response)
        document = _load_json(body, f"token response from {realm}")
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token response from {realm} holds no token", 401)
        lifetime = document.get("expires_in", TOKEN_DEFAULT_SECONDS)
        if not isinstance(lifetime, int) or lifetime <= 0:
            lifetime = TOKEN_DEFAULT_SECONDS
        return token, lifetime

    # -- API -----------------------------------------------------------------------------
    def ping(self) -> None:
        """Check that this is a registry speaking API v2 and that we may talk to it
        (authenticating if it asks); `RegistryError` otherwise."""
        response = self._get("/v2/", scope="")
        try:
            version = response.headers.get("Docker-Distribution-API-Version")
            if version is not None and not version.startswith("registry/2"):
                raise RegistryError(f"{self.base_url} speaks {version!r}, not registry/2.0")
        finally:
            _discard(response)

    def get_manifest(self, reference: ImageReference | str,
                     platform: Platform = LINUX_AMD64) -> Manifest:
        """The image manifest `reference` names; an index resolves to `platform`."""
        ref = self._own(reference)
        repository = ref.repository
        parsed = self._fetch_manifest(repository, ref.manifest_reference, ref.digest)
        index_digest = None
        for _ in range(MAX_INDEX_DEPTH):
            if isinstance(parsed, Manifest):
                return Manifest(parsed.media_type, parsed.digest, parsed.raw, parsed.config,
                                parsed.layers, index_digest, parsed.platform)
            index_digest = parsed.digest if index_digest is None else index_digest
            chosen = select_platform(parsed, platform)
            parsed = self._fetch_manifest(repository, chosen.digest, chosen.digest,
                                          chosen.platform)
        raise ImageError(f"{ref}: image indexes nested more than {MAX_INDEX_DEPTH} deep")

    def get_index_or_manifest(self, reference: ImageReference | str) -> Manifest | ImageIndex:
        """What the reference names, without resolving an index."""
        ref = self._own(reference)
        return self._fetch_manifest(ref.repository, ref.manifest_reference, ref.digest)

    def _own(self, reference: ImageReference | str) -> ImageReference:
        """The parsed reference, which must name this client's registry."""
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        if not ref.is_registry or ref.api_host != self.registry:
            raise ImageError(f"{ref} is not an image of the registry {self.registry}")
        return ref

    def _fetch_manifest(self, repository: str, reference: str, pinned: str | None,
                        platform: Platform | None = None) -> Manifest | ImageIndex:
        path = f"/v2/{repository}/manifests/{reference}"
        response = self._get(path, scope=repository_scope(repository), accept=ACCEPT_MANIFESTS)
        try:
            raw = _read_limited(response, self.max_manifest_bytes, f"manifest {path}")
            header_digest = response.headers.get("Docker-Content-Digest")
            content_type = response.headers.get("Content-Type")
        finally:
            _discard(response)
        if pinned is not None:
            verify_digest(raw, pinned, f"manifest {repository}@{pinned}")
        if header_digest and _DIGEST_RE.fullmatch(header_digest):
            verify_digest(raw, header_digest,
                          f"manifest {repository}:{reference} (Docker-Content-Digest)")
        return parse_manifest(raw, content_type, platform)

    def get_config(self, repository: str, manifest: Manifest,
                   max_bytes: int = MAX_CONFIG_BYTES) -> ImageConfig:
        """The image configuration blob of `manifest`, verified and parsed."""
        descriptor = manifest.config
        with self.open_blob(repository, descriptor.digest, size=descriptor.size,
                            max_bytes=max_bytes, what="image config") as reader:
            raw = reader.read()
        return parse_config(raw, descriptor.digest)

    def open_blob(self, repository: str, digest: str, *, size: int | None = None,
                  max_bytes: int = MAX_BLOB_BYTES, what: str = "blob") -> VerifyingReader:
        """A stream of the blob that verifies its digest (and `size`) at EOF."""
        check_digest(digest)
        if size is not None and size > max_bytes:
            raise ImageError(f"{what} {digest} is {size} bytes, over the limit of {max_bytes}")
        response = self._get(f"/v2/{repository}/blobs/{digest}",
                             scope=repository_scope(repository))
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            _discard(response)
            raise ImageError(f"{what} {digest} is {length} bytes, over the limit of "
                             f"{max_bytes}")
        try:
            return VerifyingReader(_ResponseStream(response, digest), digest, size=size,
                                   max_bytes=max_bytes, what=f"{what} {repository}",
                                   closer=lambda: _discard(response))
        except BaseException:
            _discard(response)
            raise

    def get_blob(self, repository: str, digest: str, to_file: str | os.PathLike[str], *,
                 size: int | None = None, max_bytes: int = MAX_BLOB_BYTES) -> int:
        """Stream the blob into `to_file` (written as `to_file.part`, renamed once the digest
        checks out; nothing left behind on failure). Returns its size in bytes."""
        target = Path(to_file)
        partial = target.with_name(target.name + ".part")
        try:
            with self.open_blob(repository, digest, size=size, max_bytes=max_bytes) as reader, \
                    open(partial, "wb") as out:
                while block := reader.read(BLOCK_BYTES):
                    out.write(block)
                reader.verify_rest()
            partial.replace(target)
            return reader.bytes_read
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """Every tag of `repository`, following `Link` pagination (`page_size` = `n`)."""
        path = f"/v2/{repository}/tags/list"
        if page_size is not None:
            path += f"?n={page_size}"
        tags: list[str] = []
        seen: set[str] = set()
        next_url: str | None = path
        while next_url is not None:
            if next_url in seen or len(seen) >= MAX_TAG_PAGES:
                raise RegistryError(f"tag list of {repository}: pagination does not end")
            seen.add(next_url)
            response = self._get(next_url, scope=repository_scope(repository))
            try:
                body = _read_limited(response, self.max_manifest_bytes, f"tag list {path}")
                link = response.headers.get("Link")
            finally:
                _discard(response)
            page = _load_json(body, f"tag list of {repository}").get("tags") or []
            tags.extend(_str_tuple(page, f"tag list of {repository}"))
            next_url = _next_link(link)
        return tags

    def open_image(self, reference: ImageReference | str,
                   platform: Platform = LINUX_AMD64) -> RegistryImage:
        """Manifest and config of one image, and its blobs on demand (`ImageSource`)."""
        ref = self._own(reference)
        manifest = self.get_manifest(ref, platform)
        return RegistryImage(self, ref, manifest, self.get_config(ref.repository, manifest))


class RegistryImage(ImageParts):
    """`ImageSource` for an image in a registry (the client stays owned by the caller)."""

    def __init__(self, client: RegistryClient, reference: ImageReference, manifest: Manifest,
                 config: ImageConfig) -> None:
        self.client = client
        self.reference = reference
        self._manifest = manifest
        self._config = config

    def open_blob(self, digest: str, *, max_bytes: int = MAX_BLOB_BYTES) -> VerifyingReader:
        sizes = {layer.digest: layer.size for layer in self._manifest.layers}
        sizes[self._manifest.config.digest] = self._manifest.config.size
        size = sizes.get(digest)
        return self.client.open_blob(self.reference.repository, digest, size=size,
                                     max_bytes=max_bytes)

    def close(self) -> None:
        pass


# Helpers ----------------------------------------------------------------------------------
class _ResponseStream:
    """A blob body as raw bytes (no Content-Encoding decoding: the digest is over what the
    registry stores), with urllib3's mid-stream errors translated."""

    def __init__(self, response: urllib3.BaseHTTPResponse, digest: str) -> None:
        self._response = response
        self._digest = digest

    def read(self, amt: int, /) -> bytes:
        try:
            return self._response.read(amt, decode_content=False)
        except HTTPError as exc:
            raise RegistryError(f"reading blob {self._digest}: {exc}") from exc


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back: reusable when the body was read, else closed."""
    try:
        response.close()
    finally:
        response.release_conn()


def _read_limited(response: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
    buffer = bytearray()
    try:
        for block in response.stream(BLOCK_BYTES):
            buffer += block
            if len(buffer) > limit:
                raise ImageError(f"{what} is larger than {limit} bytes")
    except HTTPError as exc:
        raise RegistryError(f"reading {what}: {exc}") from exc
    return bytes(buffer)


def _error_detail(response: urllib3.BaseHTTPResponse) -> str:
    """`: CODE message` from a registry error body, if it has one."""
    try:
        body = _read_limited(response, 64 << 10, "error body")
    except (ImageError, RegistryError):
        return ""
    finally:
        _discard(response)
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _next_link(header: str | None) -> str | None:
    """The `rel="next"` target of a `Link` header."""
    if not header:
        return None
    for part in header.split(","):
        match = re.match(r'\s*<([^>]*)>\s*(.*)', part)
        if match and re.search(r'rel="?next"?', match.group(2)):
            return match.group(1)
    return None

