"""The client against a hostile Stratum-1 (`tests/hostile_http.py`), in process: every attack on
every kind of object ends in a named error or a failover to a good host within a few
timeouts, and no download takes more than its byte budget.

The no-cache reader (`Repository.open` over a `NetworkSource`) reads a freshly published
repository through the rig. Each case uses a fresh source, so the route state starts on the
first host: `[hostile]` alone must fail with a FetchError naming the object, the host and (for
byte attacks) the budget; `[hostile, good]` must give the right bytes. A counting transport
records what the client itself read per attempt (at most the budget plus one byte); the rig
records what it sent (at most that plus the kernel's socket buffers).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from pycvmfs.errors import CacheFullError, FetchError, LetterError
from pycvmfs.format.certificates import load_public_key
from pycvmfs.format.compression import Compression, stored_size_bound
from pycvmfs.format.hashes import Suffix
from pycvmfs.network.curl_transport import CurlTransport
from pycvmfs.network.download import Downloader, DownloadSettings
from pycvmfs.network.failover import RouteState
from pycvmfs.network.failure import ErrorKind, Outcome
from pycvmfs.network.proxies import DIRECT, ProxyChoice, parse_proxies
from pycvmfs.network.sink import MemorySink, Sink
from pycvmfs.network.transport import ERROR_BODY_BYTES, Transport, request_headers
from pycvmfs.network.urllib3_transport import Urllib3Transport
from pycvmfs.repository.network_source import NetworkSource
from pycvmfs.repository.open import RevisionSelector, open_repository
from pycvmfs.repository.source import LocalSource
from pycvmfs.repository.trust import (
    CERTIFICATE_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    WHITELIST_MAX_BYTES,
)
from tests.hostile_http import SEND_BUFFER_BYTES, HostileServer
from tests.publish_helpers import SMALL_CHUNKS, Keys, pseudo_random, run_publish

TIMEOUT = 1.0
FAST = DownloadSettings(timeout=TIMEOUT, timeout_direct=TIMEOUT, low_speed_limit=1024,
                        max_retries=1, backoff_init=0.0, backoff_max=0.0)
CATALOG_CAP = 8 << 20  # the reader's catalog cap here (the default, 1 GiB, takes seconds)
SMALL = pseudo_random(7, 93).hex().encode()  # 186 bytes, as in the issue
CHUNKED = pseudo_random(8, 300_000)
TAG = "v1"
# One attempt on one host: the header window or the low-speed window, once, plus a retry.
FAIL_FAST_S = 3 * TIMEOUT + 2.0
KINDS = ("manifest", "whitelist", "certificate", "catalog", "history", "file", "chunk")


def kernel_slack() -> int:
    """Bytes the kernel may hold between the rig's send and the client's read on loopback."""
    rmem_max = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    return rmem_max + 4 * SEND_BUFFER_BYTES


@dataclass
class Published:
    keys: Keys
    storage: Path
    paths: dict[str, str]  # kind -> object path relative to the repository base
    budgets: dict[str, int]  # kind -> bytes its download may bring


@pytest.fixture(scope="module")
def published(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Published:
    base = tmp_path_factory.mktemp("hostile-repo")
    tree, storage = base / "tree", base / "storage"
    tree.mkdir()
    (tree / "small.txt").write_bytes(SMALL)
    (tree / "chunked.bin").write_bytes(CHUNKED)
    run_publish(tree, storage, keys, tag=TAG, chunking=SMALL_CHUNKS)
    public = load_public_key(keys.public_key_file.read_bytes())
    with open_repository(LocalSource(storage), keys.fqrn, [public]) as repo:
        assert repo.trusted is not None and repo.trusted.history is not None
        certificate = repo.trusted.manifest.certificate
        assert certificate is not None
        small, (file_piece,) = repo.pieces("/small.txt")
        chunked, chunks = repo.pieces("/chunked.bin")
        paths = {
            "manifest": ".cvmfspublished", "whitelist": ".cvmfswhitelist",
            "certificate": certificate.object_path(Suffix.CERTIFICATE),
            "catalog": repo.root_hash.object_path(Suffix.CATALOG),
            "history": repo.trusted.history.object_path(Suffix.HISTORY),
            "file": file_piece.hash.object_path(file_piece.suffix),
            "chunk": chunks[0].hash.object_path(chunks[0].suffix),
        }
        catalog_budget = stored_size_bound(CATALOG_CAP, Compression.ZLIB)
        budgets = {
            "manifest": MANIFEST_MAX_BYTES, "whitelist": WHITELIST_MAX_BYTES,
            "certificate": stored_size_bound(CERTIFICATE_MAX_BYTES, Compression.ZLIB),
            "catalog": catalog_budget, "history": catalog_budget,
            "file": stored_size_bound(len(SMALL), small.compression),
            "chunk": stored_size_bound(chunks[0].size, chunked.compression),
        }
    return Published(keys, storage, paths, budgets)


@pytest.fixture(scope="module")
def hostile(published: Published) -> Iterator[HostileServer]:
    with HostileServer({published.keys.fqrn: published.storage}, max_seconds=20) as server:
        yield server


@pytest.fixture(scope="module", params=[CurlTransport, Urllib3Transport],
                ids=["curl", "urllib3"])
def make_transport(request: pytest.FixtureRequest) -> Callable[[], Transport]:
    """Both transports face every attack: libcurl's (the default) and urllib3's (where
    pycurl is missing)."""
    return request.param  # type: ignore[no-any-return]


@dataclass
class CountingTransport:
    """A transport that remembers how many body bytes the client read per URL."""

    inner: Transport
    received: dict[str, list[int]] = field(default_factory=dict)

    def get(self, url: str, *, proxy: ProxyChoice, headers: Mapping[str, str], sink: Sink,
            timeout: float, low_speed_limit: int) -> Outcome:
        outcome = self.inner.get(url, proxy=proxy, headers=headers, sink=sink, timeout=timeout,
                                 low_speed_limit=low_speed_limit)
        self.received.setdefault(url, []).append(outcome.bytes_received)
        return outcome

    def close(self) -> None:
        self.inner.close()


def read_through(published: Published, hosts: list[str], kind: str,
                 transport: CountingTransport) -> bytes:
    """Open the repository through `hosts` and read what makes the client fetch `kind`."""
    route = RouteState(hosts, parse_proxies("DIRECT", ""))
    source = NetworkSource(Downloader(transport, route, FAST), ";".join(hosts))
    public = load_public_key(published.keys.public_key_file.read_bytes())
    try:
        with open_repository(source, published.keys.fqrn, [public],
                             RevisionSelector.of(tag=TAG if kind == "history" else None),
                             max_catalog_bytes=CATALOG_CAP) as repo:
            if kind == "chunk":
                return b"".join(repo.iter_read("/chunked.bin", 1 << 16))
            return repo.read("/small.txt")
    finally:
        source.close()


def expect_failure(published: Published, hostile: HostileServer, attack: str, kind: str,
                   make: Callable[[], Transport], *,
                   letter_ok: bool = False) -> tuple[str, CountingTransport]:
    """The hostile host alone: a FetchError within FAIL_FAST_S naming object and host (or,
    with `letter_ok`, the LetterError of a manifest that arrived but is not one)."""
    host = hostile.url(attack, kind)
    transport = CountingTransport(make())
    start = time.monotonic()
    with pytest.raises((FetchError, LetterError) if letter_ok else FetchError) as info:
        read_through(published, [host], kind, transport)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"/{attack}.{kind}/" in message, message
    assert isinstance(info.value, LetterError) or published.paths[kind] in message, message
    assert elapsed < FAIL_FAST_S, f"{attack} on the {kind} took {elapsed:.1f} s"
    return message, transport


def expect_failover(published: Published, hostile: HostileServer, attack: str,
                    kind: str, make: Callable[[], Transport]) -> None:
    """Hostile host first, good host second: the right bytes within FAIL_FAST_S."""
    hosts = [hostile.url(attack, kind), hostile.url("ok")]
    start = time.monotonic()
    data = read_through(published, hosts, kind, CountingTransport(make()))
    elapsed = time.monotonic() - start
    assert data == (CHUNKED if kind == "chunk" else SMALL)
    assert elapsed < FAIL_FAST_S, f"{attack} on the {kind} took {elapsed:.1f} s to fail over"


def attacked_responses(hostile: HostileServer, attack: str, kind: str, path: str) -> list[int]:
    hostile.wait_idle(15)
    return [s.sent for s in hostile.served_for(f"/{attack}.{kind}/") if s.path.endswith(path)]


# --- bytes: every download within its budget ------------------------------------------------

BYTE_ATTACKS = ("endless", "endless-chunked", "length-huge", "bomb", "bomb-nolength")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attack", BYTE_ATTACKS)
def test_byte_attacks_stay_within_the_budget(published: Published, hostile: HostileServer,
                                             make_transport: Callable[[], Transport],
                                             attack: str, kind: str) -> None:
    message, transport = expect_failure(published, hostile, attack, kind, make_transport)
    budget, path = published.budgets[kind], published.paths[kind]
    read = [n for url, counts in transport.received.items() if url.endswith(path)
            for n in counts]
    assert read and max(read) <= budget + 1, (read, budget)
    bomb_fits = attack.startswith("bomb") and budget > 2 << 20  # a catalog may be 1 MB
    if bomb_fits:
        assert "content hashes to" in message  # spooled, never inflated: the hash decides
    else:
        assert f"budget of {budget} bytes" in message, message
    sent = attacked_responses(hostile, attack, kind, path)
    assert sent and max(sent) <= budget + kernel_slack(), (sent, budget)


@pytest.mark.parametrize("kind", KINDS)
def test_byte_attacks_fail_over_to_a_good_host(published: Published, hostile: HostileServer,
                                               make_transport: Callable[[], Transport],
                                               kind: str) -> None:
    for attack in ("endless", "length-huge", "bomb"):
        expect_failover(published, hostile, attack, kind, make_transport)


# --- time: the watchdog covers status line, headers, interim responses and body -------------

TIME_ATTACKS = ("trickle-status", "trickle-headers", "continue-flood", "stall", "trickle-body",
                "error-trickle")


@pytest.mark.parametrize("attack", TIME_ATTACKS)
def test_slow_responses_end_within_a_few_timeouts(published: Published,
                                                  hostile: HostileServer,
                                                  make_transport: Callable[[], Transport],
                                                  attack: str) -> None:
    message, _ = expect_failure(published, hostile, attack, "manifest", make_transport)
    if attack in ("trickle-status", "trickle-headers", "continue-flood", "stall"):
        assert f"no complete status line and headers within {TIMEOUT:g} s" in message


@pytest.mark.parametrize("attack", ["trickle-status", "continue-flood", "trickle-body"])
def test_slow_data_fails_over_to_a_good_host(published: Published, hostile: HostileServer,
                                             make_transport: Callable[[], Transport],
                                             attack: str) -> None:
    expect_failover(published, hostile, attack, "chunk", make_transport)


# --- protocol: statuses, lying lengths, redirects, error bodies ------------------------------

PROTOCOL_ATTACKS = ("bad-status", "header-flood", "empty", "length-short", "length-long",
                    "status-500", "status-404", "status-204", "status-302", "redirect-other",
                    "redirect-loop", "error-endless", "error-huge")


@pytest.mark.parametrize("kind", ["manifest", "catalog", "file"])
@pytest.mark.parametrize("attack", PROTOCOL_ATTACKS)
def test_protocol_attacks_end_in_a_named_error(published: Published, hostile: HostileServer,
                                               make_transport: Callable[[], Transport],
                                               attack: str, kind: str) -> None:
    before = len(hostile.served_for("/ok."))
    expect_failure(published, hostile, attack, kind, make_transport,
                   letter_ok=kind == "manifest")
    assert len(hostile.served_for("/ok.")) == before  # redirects are never followed
    if attack.startswith("error-"):  # an endless error body is not drained
        sent = attacked_responses(hostile, attack, kind, published.paths[kind])
        assert sent and max(sent) <= ERROR_BODY_BYTES + kernel_slack()


@pytest.mark.parametrize("attack", ["bad-status", "length-short", "redirect-other",
                                    "error-endless", "status-500"])
def test_protocol_attacks_fail_over_to_a_good_host(published: Published,
                                                   hostile: HostileServer,
                                                   make_transport: Callable[[], Transport],
                                                   attack: str) -> None:
    expect_failover(published, hostile, attack, "file", make_transport)


# --- TLS: the same watchdog on https connections ----------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[tuple[int, dict[str, str]]]:
    """A one-thread HTTPS server on 127.0.0.1 with a self-signed certificate the client trusts
    (SSL_CERT_FILE); `mode["m"]` is `ok` (a 5-byte body) or `trickle` (a status line that
    never ends, one byte per 0.2 s, 50 bytes at most)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop, mode = threading.Event(), {"m": "ok"}

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True) as tls:
                tls.recv(4096)
                if mode["m"] == "ok":
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    continue
                tls.sendall(b"HTTP/1.1 200 OK")
                for _ in range(50):
                    if stop.wait(0.2):
                        break
                    tls.sendall(b"K")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield listener.getsockname()[1], mode
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_header_watchdog_covers_tls(tls_server: tuple[int, dict[str, str]],
                                    make_transport: Callable[[], Transport]) -> None:
    port, mode = tls_server
    transport = make_transport()
    try:
        body = MemorySink(100)
        outcome = transport.get(f"https://localhost:{port}/a", proxy=DIRECT,
                                headers=request_headers(), sink=body, timeout=TIMEOUT,
                                low_speed_limit=1)
        assert outcome.status == 200 and body.getvalue() == b"hello"  # verified TLS works
        mode["m"] = "trickle"
        start = time.monotonic()
        outcome = transport.get(f"https://localhost:{port}/b", proxy=DIRECT,
                                headers=request_headers(), sink=MemorySink(100),
                                timeout=TIMEOUT, low_speed_limit=1)
        assert outcome.error is ErrorKind.TIMEOUT and "headers within" in outcome.detail
        assert time.monotonic() - start < TIMEOUT + 1.0
    finally:
        transport.close()


def test_a_local_sink_failure_is_raised_by_the_real_transport(
        hostile: HostileServer, make_transport: Callable[[], Transport]) -> None:
    """A full local disk while streaming is not the host's fault: it is raised, not turned
    into a transport error that would fail over."""

    class FullDisk(MemorySink):
        def write(self, data: bytes) -> None:
            raise CacheFullError("no space for the cache")

    transport = make_transport()
    try:
        with pytest.raises(CacheFullError):
            transport.get(hostile.url("ok") + "/.cvmfspublished", proxy=DIRECT,
                          headers=request_headers(), sink=FullDisk(100_000), timeout=TIMEOUT,
                          low_speed_limit=1)
    finally:
        transport.close()


def test_running_out_of_descriptors_is_raised_by_the_real_transport(
        hostile: HostileServer, make_transport: Callable[[], Transport]) -> None:
    """No descriptor left for a socket is this machine's limit, not the host's fault: the
    OSError is raised (named EMFILE), never turned into a failover."""
    transport = make_transport()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    opened: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        with contextlib.suppress(OSError):
            while len(opened) < 64:
                opened.append(os.open("/dev/null", os.O_RDONLY))
        with pytest.raises(OSError) as info:
            transport.get(hostile.url("ok") + "/.cvmfspublished", proxy=DIRECT,
                          headers=request_headers(), sink=MemorySink(100_000), timeout=TIMEOUT,
                          low_speed_limit=1)
        assert info.value.errno == errno.EMFILE, info.value
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        transport.close()
