"""Loopback failure rig shared by the failover tests: a stdlib fault server, two nginx
Stratum-1s and two Squids.

`FaultServer` plays several misbehaving Stratum-1s by path prefix:
`/<mode>/cvmfs/<fqrn>/<file of the repository>` with mode

- `ok`: the file as stored;
- a status code (`500`, `404`, `429`, ...): that status, a short body;
- `corrupt`: the last byte flipped (same length);
- `short`: the full Content-Length, half the body, then the connection closes;
- `slow`: 50 bytes every 0.25 s (200 B/s, below a 1024 B/s low-speed limit, never a stall);
- `stall`: headers, then 3 s of silence (a read timeout must fire);
- `throttle`: 16 KiB every 0.05 s (~320 KiB/s: slow enough to interrupt, far above any
  low-speed limit).

A mode ending in `.files` (e.g. `corrupt.files`, `404.files`) applies the fault only to the
objects holding file contents (`data/` without suffix, or `P` chunks); the manifest, the
whitelist, catalogs, certificates and histories are then served as stored, so a client can
mount through the faulty host and meets the fault only when it reads a file.

    with FaultServer({"test.repo": storage}) as fault:
        url = fault.url("corrupt.files")     # http://127.0.0.1:PORT/corrupt.files/cvmfs/test.repo

`loopback_sites({fqrn: storage})` starts the whole rig (fault server, nginx x2, squid x2) and
stops exactly what it started; `stop_in_parallel` stops several servers at once (a Squid takes
~2 s to shut down).
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import Nginx, ServerContext, ThreadedHTTPServer
from tests.squid import Squid

SLOW_STEP_BYTES = 50  # per 0.25 s
THROTTLE_STEP_BYTES = 16 * 1024  # per THROTTLE_INTERVAL_S
THROTTLE_INTERVAL_S = 0.05
STALL_SECONDS = 3.0
FILES_SCOPE = ".files"


def is_file_object(relative: str) -> bool:
    """`data/xx/rest` (whole file) or `data/xx/restP` (chunk): contents of regular files."""
    parts = relative.split("/")
    if len(parts) != 3 or parts[0] != "data" or len(parts[1]) != 2:
        return False
    last = parts[2][-1]
    return last in "0123456789abcdef" or last == "P"


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.server.requests.append((self.path, dict(self.headers), self.client_address[1]))
        mode, _, rest = self.path.lstrip("/").partition("/")
        top, _, after = rest.partition("/")
        fqrn, _, relative = after.partition("/")
        repo = self.server.repos.get(fqrn) if top == "cvmfs" else None
        file = repo / relative if repo is not None and relative else None
        if mode.endswith(FILES_SCOPE):
            mode = mode.removesuffix(FILES_SCOPE)
            if not is_file_object(relative):
                mode = "ok"
        if mode.isdigit() or file is None or not file.is_file():
            self._reply(int(mode) if mode.isdigit() else 404, b"no\n")
            return
        body = file.read_bytes()
        if mode == "corrupt":
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        if mode == "short":
            self.close_connection = True
            self._reply(200, body[: len(body) // 2], length=len(body))
            return
        if mode == "slow":
            self._trickle(body, SLOW_STEP_BYTES, 0.25)
            return
        if mode == "stall":
            self._trickle(body, 0, STALL_SECONDS)
            return
        if mode == "throttle":
            self._trickle(body, THROTTLE_STEP_BYTES, THROTTLE_INTERVAL_S)
            return
        self._reply(200, body)

    def _reply(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Cache-Control", "max-age=3600")
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, body: bytes, step: int, interval: float) -> None:
        """`step` bytes every `interval` s; step 0: headers, then silence for `interval` s."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        if step == 0:
            self.server.stopping.wait(interval)
            self.close_connection = True
            return
        try:
            for i in range(0, len(body), step):
                if self.server.stopping.wait(interval):
                    self.close_connection = True
                    return
                self.wfile.write(body[i : i + step])
                self.wfile.flush()
        except OSError:
            self.close_connection = True
            return

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet."""


class FaultServer(ThreadedHTTPServer):
    """The fault server on a free loopback port; `with` starts and stops its thread."""

    def __init__(self, repos: Mapping[str, Path]) -> None:
        super().__init__(_FaultHandler)
        self.repos = dict(repos)
        self.requests: list[tuple[str, dict[str, str], int]] = []  # path, headers, client port

    def url(self, mode: str, fqrn: str | None = None) -> str:
        if fqrn is None:
            (fqrn,) = self.repos
        return f"http://127.0.0.1:{self.server_address[1]}/{mode}/cvmfs/{fqrn}"

    def requests_for(self, needle: str) -> list[tuple[str, dict[str, str], int]]:
        return [r for r in list(self.requests) if needle in r[0]]


def stop_in_parallel(*servers: ServerContext) -> None:
    """Stop several servers at once: each Squid SIGINT shutdown takes ~2 s."""
    threads = [threading.Thread(target=s.stop) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def make_world_readable(root: Path) -> None:
    """nginx workers run as nobody: every directory o+rx, every file o+r."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


@dataclass(frozen=True)
class Sites:
    """Two Stratum-1s, two Squids (one load-balance group) and the fault server."""

    s1: Nginx
    s2: Nginx
    squids: tuple[Squid, Squid]
    fault: FaultServer

    @staticmethod
    def host(server: Nginx, fqrn: str) -> str:
        return f"{server.url}/cvmfs/{fqrn}"

    @property
    def proxy_group(self) -> str:
        return "|".join(s.url for s in self.squids)


@contextmanager
def loopback_sites(repos: Mapping[str, Path]) -> Iterator[Sites]:
    """Start the rig serving each `fqrn -> storage` (world-readable) at /cvmfs/<fqrn>."""
    reason = Squid.available()
    if reason is not None:
        raise RuntimeError(reason)
    for storage in repos.values():
        if os.geteuid() == 0 and not os.stat(storage).st_mode & 0o001:
            raise RuntimeError(f"{storage} must be world-traversable for nginx")
    with ExitStack() as stack:
        fault = stack.enter_context(FaultServer(repos))
        s1 = stack.enter_context(Nginx())
        s2 = stack.enter_context(Nginx())
        q1 = stack.enter_context(Squid())
        q2 = stack.enter_context(Squid())
        for fqrn, storage in repos.items():
            s1.publish(f"cvmfs/{fqrn}", storage)
            s2.publish(f"cvmfs/{fqrn}", storage)
        try:
            yield Sites(s1, s2, (q1, q2), fault)
        finally:
            stop_in_parallel(q1, q2)  # the ExitStack then finds them stopped
