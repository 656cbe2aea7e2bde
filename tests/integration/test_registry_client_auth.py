"""Registry client against a tiny stdlib fake on loopback: the Bearer token flow (with and
without credentials, cached per scope, one retry), Basic auth, digest checks on manifests and
blobs, `Link` pagination (the parsers: tests/unit/images/test_registry_auth.py)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pycvmfs.errors import HashMismatchError, ImageError, RegistryError, SizeMismatchError
from pycvmfs.images.manifest import (
    OCI_MANIFEST,
)
from pycvmfs.images.registry import RegistryClient
from tests.registry_samples import LAYER, MANIFEST, sha

Reply = tuple[int, dict[str, str], bytes]




@dataclass
class Fake:
    """Routes by path; records requests; `guard` decides 401s."""

    routes: dict[str, Callable[[str, dict[str, str]], Reply]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, prefix: str) -> int:
        return sum(1 for path, _ in self.requests if path.startswith(prefix))


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.requests.append((self.path, headers))
            route = urlsplit(self.path).path
            handler = state.routes.get(route)
            status, reply_headers, body = (404, {}, b"{}") if handler is None \
                else handler(self.path, headers)
            self.send_response(status)
            for key, value in reply_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def bearer_guard(fake: Fake, reply: Reply, *, token: str = "tok-1",
                 scope: str | None = "repository:ns/name:pull"
                 ) -> Callable[[str, dict[str, str]], Reply]:
    def handler(path: str, headers: dict[str, str]) -> Reply:
        if headers.get("authorization") == f"Bearer {token}":
            return reply
        challenge = f'Bearer realm="http://{fake.host}/token",service="fake registry"'
        if scope is not None:
            challenge += f',scope="{scope}"'
        return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
    return handler


def token_endpoint(*, token: str = "tok-1", creds: tuple[str, str] | None = None,
                   key: str = "token") -> Callable[[str, dict[str, str]], Reply]:
    def handler(path: str, headers: dict[str, str]) -> Reply:
        if creds is not None:
            wanted = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            if headers.get("authorization") != wanted:
                return 401, {}, b'{"details":"bad credentials"}'
        return 200, {"Content-Type": "application/json"}, \
            json.dumps({key: token, "expires_in": 300}).encode()
    return handler


MANIFEST_REPLY: Reply = (200, {"Content-Type": OCI_MANIFEST,
                               "Docker-Content-Digest": sha(MANIFEST)}, MANIFEST)


# -- token flow ---------------------------------------------------------------------------
def test_anonymous_bearer_token_cached_per_scope(fake: Fake) -> None:
    fake.routes["/v2/ns/name/manifests/t"] = bearer_guard(fake, MANIFEST_REPLY)
    fake.routes["/v2/ns/other/manifests/t"] = bearer_guard(
        fake, MANIFEST_REPLY, token="tok-2", scope=None)
    fake.routes["/token"] = token_endpoint()
    with RegistryClient(fake.host) as client:
        manifest = client.get_manifest(f"docker://{fake.host}/ns/name:t")
        assert manifest.digest == sha(MANIFEST) and manifest.raw == MANIFEST
        client.get_manifest(f"docker://{fake.host}/ns/name:t")
        assert fake.count("/token") == 1  # cached for the scope
        token_request = next(p for p, _ in fake.requests if p.startswith("/token"))
        query = parse_qs(urlsplit(token_request).query)
        assert query == {"service": ["fake registry"], "scope": ["repository:ns/name:pull"]}
        assert "authorization" not in next(h for p, h in fake.requests if p.startswith("/token"))
        # another repository is another scope; the challenge names none, so ours is used
        fake.routes["/token"] = token_endpoint(token="tok-2", key="access_token")
        client.get_manifest(f"docker://{fake.host}/ns/other:t")
        assert fake.count("/token") == 2
        last = [p for p, _ in fake.requests if p.startswith("/token")][-1]
        assert parse_qs(urlsplit(last).query)["scope"] == ["repository:ns/other:pull"]
    # one 401 and one retry per fresh scope, none once cached
    assert fake.count("/v2/ns/name/manifests/t") == 3


def test_bearer_token_with_credentials(fake: Fake) -> None:
    fake.routes["/v2/ns/name/manifests/t"] = bearer_guard(fake, MANIFEST_REPLY)
    fake.routes["/token"] = token_endpoint(creds=("alice", "s3cret"))
    with RegistryClient(fake.host, username="alice", password="s3cret") as client:
        assert client.get_manifest(f"{fake.host}/ns/name:t").digest == sha(MANIFEST)
    with RegistryClient(fake.host, username="alice", password="wrong") as client, \
            pytest.raises(RegistryError, match="token request") as caught:
        client.get_manifest(f"{fake.host}/ns/name:t")
    assert caught.value.status == 401
    with RegistryClient(fake.host) as client, pytest.raises(RegistryError):
        client.get_manifest(f"{fake.host}/ns/name:t")


def test_token_that_does_not_work_is_retried_once_only(fake: Fake) -> None:
    fake.routes["/v2/ns/name/manifests/t"] = bearer_guard(fake, MANIFEST_REPLY, token="real")
    fake.routes["/token"] = token_endpoint(token="useless")
    with RegistryClient(fake.host) as client, pytest.raises(RegistryError, match="401"):
        client.get_manifest(f"{fake.host}/ns/name:t")
    assert fake.count("/v2/ns/name/manifests/t") == 2 and fake.count("/token") == 1


def test_basic_auth(fake: Fake) -> None:
    good = "Basic " + base64.b64encode(b"bob:pw").decode()

    def guarded(path: str, headers: dict[str, str]) -> Reply:
        if headers.get("authorization") == good:
            return MANIFEST_REPLY
        return 401, {"WWW-Authenticate": 'Basic realm="fake"'}, b""

    fake.routes["/v2/ns/name/manifests/t"] = guarded
    fake.routes["/v2/"] = guarded
    with RegistryClient(fake.host) as client, pytest.raises(RegistryError, match="credentials"):
        client.get_manifest(f"{fake.host}/ns/name:t")
    with RegistryClient(fake.host, username="bob", password="pw") as client:
        client.ping()
        client.get_manifest(f"{fake.host}/ns/name:t")
        # once Basic is known, it is sent up front
        assert fake.requests[-1][1].get("authorization") == good
    with RegistryClient(fake.host, username="bob", password="no") as client, \
            pytest.raises(RegistryError, match="401"):
        client.get_manifest(f"{fake.host}/ns/name:t")


def test_ping_and_http_errors(fake: Fake) -> None:
    fake.routes["/v2/"] = lambda p, h: (200, {"Docker-Distribution-API-Version":
                                              "registry/2.0"}, b"{}")
    with RegistryClient(fake.host) as client:
        client.ping()
        with pytest.raises(RegistryError, match="HTTP 404") as caught:
            client.get_manifest(f"{fake.host}/ns/missing:t")
        assert caught.value.status == 404
    with RegistryClient(f"127.0.0.1:{fake.port}", scheme="https",
                        connect_timeout=1, read_timeout=1) as client, \
            pytest.raises(RegistryError):
        client.ping()  # https to a plain-http server fails cleanly


# -- digests --------------------------------------------------------------------------------
def test_manifest_digest_checks(fake: Fake) -> None:
    tampered = MANIFEST.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    fake.routes["/v2/ns/name/manifests/t"] = lambda p, h: (
        200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha(MANIFEST)}, tampered)
    fake.routes[f"/v2/ns/name/manifests/{sha(MANIFEST)}"] = lambda p, h: (
        200, {"Content-Type": OCI_MANIFEST}, tampered)
    with RegistryClient(fake.host) as client:
        with pytest.raises(HashMismatchError, match="Docker-Content-Digest"):
            client.get_manifest(f"{fake.host}/ns/name:t")
        with pytest.raises(HashMismatchError):
            client.get_manifest(f"{fake.host}/ns/name@{sha(MANIFEST)}")


def test_blob_download_verifies_and_cleans_up(fake: Fake, tmp_path: Path) -> None:
    fake.routes[f"/v2/ns/name/blobs/{sha(LAYER)}"] = lambda p, h: (200, {}, LAYER)
    bad = sha(b"something else")
    fake.routes[f"/v2/ns/name/blobs/{bad}"] = lambda p, h: (200, {}, LAYER)
    target = tmp_path / "layer"
    with RegistryClient(fake.host) as client:
        assert client.get_blob("ns/name", sha(LAYER), target, size=len(LAYER)) == len(LAYER)
        assert target.read_bytes() == LAYER
        with pytest.raises(HashMismatchError):
            client.get_blob("ns/name", bad, tmp_path / "bad")
        with pytest.raises(SizeMismatchError):
            client.get_blob("ns/name", sha(LAYER), tmp_path / "short", size=10)
        with pytest.raises(ImageError, match="over the limit"):
            client.get_blob("ns/name", sha(LAYER), tmp_path / "big", max_bytes=100)
        with pytest.raises(ImageError, match="over the limit"):  # declared size refused early
            client.get_blob("ns/name", sha(LAYER), tmp_path / "big", size=10**12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer"]  # no partial files


def test_tag_pagination(fake: Fake) -> None:
    tags = ["a", "b", "c", "d", "e"]

    def page(path: str, headers: dict[str, str]) -> Reply:
        query = parse_qs(urlsplit(path).query)
        n = int(query.get("n", ["100"])[0])
        last = query.get("last", [""])[0]
        rest = [t for t in tags if t > last]
        body = json.dumps({"name": "ns/name", "tags": rest[:n]}).encode()
        reply_headers = {}
        if len(rest) > n:
            reply_headers["Link"] = f'</v2/ns/name/tags/list?last={rest[n - 1]}&n={n}>; ' \
                                    'rel="next"'
        return 200, reply_headers, body

    fake.routes["/v2/ns/name/tags/list"] = page
    with RegistryClient(fake.host) as client:
        assert client.list_tags("ns/name", page_size=2) == tags
        assert fake.count("/v2/ns/name/tags/list") == 3
        assert client.list_tags("ns/name") == tags


def test_tag_pagination_loop_is_refused(fake: Fake) -> None:
    fake.routes["/v2/ns/name/tags/list"] = lambda p, h: (
        200, {"Link": '</v2/ns/name/tags/list?n=1>; rel="next"'}, b'{"tags":["x"]}')
    with RegistryClient(fake.host) as client, pytest.raises(RegistryError, match="does not end"):
        client.list_tags("ns/name", page_size=1)
