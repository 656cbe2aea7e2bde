"""A hostile Stratum-1 on 127.0.0.1 for tests: serves a real repository's files as stored and
attacks only where a test points it.

One server plays many hosts by path prefix, like `tests/fault_server.py`:
`/<attack>.<scope>/cvmfs/<fqrn>/<file of the repository>`. Requests outside `scope` get the
file as stored, so a client gets through the trust chain and meets the attack where
intended. Scopes (`object_kind`): `all`, `manifest`, `whitelist`, `certificate`, `catalog`,
`history`, `file` (whole-file data objects), `chunk`, `data` (file or chunk).

Attacks (`ATTACKS`):
- `ok`: the file as stored; `status-NNN`: that status and a short body; `bad-status`: a
  status line that is not HTTP; `empty`: 200 without a body;
- lying Content-Length: `length-short` (one byte less than sent), `length-long` (1000 more
  than sent, then close), `length-huge` (10^15, then an endless body);
- `endless`: the file, then zeros without end (no Content-Length, `Connection: close`);
  `endless-chunked`: the same as chunked transfer coding;
- `trickle-body`: correct headers, then one byte every `TRICKLE_S`;
  `trickle-status`: `HTTP/1.1 200 OK` and a reason phrase that never ends, one byte every
  `TRICKLE_S`; `trickle-headers`: a status line, then a header line that never ends, the
  same way; `stall`: the request is read, nothing is ever answered;
- `continue-flood`: `100 Continue` interim responses without end, one every millisecond;
  `header-flood`: a status line, then header lines without end, as fast as the client reads;
- `bomb`: a valid zlib stream inflating to 1 GiB (1 MB, with Content-Length);
  `bomb-nolength`: the same without Content-Length;
- `redirect-other`: 302 to the same file on the `ok` prefix (a good copy: only a client
  that follows redirects gets it); `redirect-loop`: 302 to itself;
- `error-endless`: 500 and an endless body; `error-huge`: 500 with Content-Length 10^12 and
  an endless body; `error-trickle`: 500 with a 1000-byte body sent one byte per `TRICKLE_S`.

Every endless or trickled response is capped inside the rig: it ends after `max_seconds`
(default 30 s) or `max_bytes` (default 4 GiB), whichever comes first, when the client
disconnects, and when the server stops. Each response is recorded in `served` (`Served`:
path, attack, kind, bytes sent including headers, seconds, how it ended); the socket send
buffer is kept small (`SEND_BUFFER_BYTES`) so bytes sent track bytes the client read.

    with HostileServer({"test.repo": storage}) as hostile:
        url = hostile.url("endless.manifest")   # http://127.0.0.1:PORT/endless.manifest/cvmfs/..
        ...
        hostile.served_for(".cvmfspublished")    # what the rig sent for it
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.fault_server import is_file_object
from tests.servers import ThreadedHTTPServer
from tests.zlib_bomb import zlib_bomb

TRICKLE_S = 0.2
CONTINUE_INTERVAL_S = 0.001
MAX_SECONDS = 30.0
MAX_BYTES = 4 << 30
ENDLESS_BLOCK = b"\0" * (64 * 1024)
SEND_BUFFER_BYTES = 64 * 1024
SEND_POLL_S = 1.0  # a send blocked by a client that reads nothing checks the caps this often
IDLE_TIMEOUT_S = 60.0  # a kept-alive connection without a new request is closed
BOMB_MIB = 1024
HUGE_LENGTH = 10**15
ERROR_HUGE_LENGTH = 10**12
SCOPES = ("all", "manifest", "whitelist", "certificate", "catalog", "history", "file", "chunk",
          "data")
ATTACKS = ("ok", "bad-status", "empty", "length-short", "length-long", "length-huge",
           "endless", "endless-chunked", "trickle-body", "trickle-status", "trickle-headers",
           "stall", "continue-flood", "header-flood", "bomb", "bomb-nolength",
           "redirect-other", "redirect-loop", "error-endless", "error-huge", "error-trickle")


def object_kind(relative: str) -> str:
    """The scope a repository path belongs to (`other` for anything else)."""
    if relative == ".cvmfspublished":
        return "manifest"
    if relative == ".cvmfswhitelist":
        return "whitelist"
    if is_file_object(relative):
        return "chunk" if relative.endswith("P") else "file"
    if relative.startswith("data/"):
        return {"X": "certificate", "C": "catalog", "H": "history"}.get(relative[-1], "other")
    return "other"


def in_scope(scope: str, kind: str) -> bool:
    return scope == "all" or scope == kind or (scope == "data" and kind in ("file", "chunk"))


@dataclass(frozen=True)
class Served:
    path: str  # the request path as received
    attack: str  # what was done ("ok" when out of scope)
    kind: str
    sent: int  # bytes written to the socket, status line and headers included
    seconds: float
    ended: str  # "complete", "client closed", "capped", "stopped"


class _StopResponseError(Exception):
    """The response stops here (client gone, cap reached, server stopping)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    server: HostileServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    # --- plumbing ---------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        """Send all of `data` unless a cap, the client or the server ends the response."""
        view = memoryview(data)
        while True:
            if self.server.stopping.is_set():
                raise _StopResponseError("stopped")
            left = self._deadline - time.monotonic()
            if left <= 0 or self._sent >= self.server.max_bytes:
                raise _StopResponseError("capped")
            if not view:
                return
            self.connection.settimeout(min(SEND_POLL_S, left))  # a blocked send ends too
            try:
                done = self.connection.send(view[:SEND_BUFFER_BYTES])
            except TimeoutError:
                continue  # the cap or the client's silence decides above
            except OSError:
                raise _StopResponseError("client closed") from None
            self._sent += done
            view = view[done:]

    def _pause(self, seconds: float) -> None:
        if self.server.stopping.wait(seconds):
            raise _StopResponseError("stopped")

    def _head(self, status: str, headers: Iterable[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _client_closed(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        try:
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _forever(self, block: bytes = ENDLESS_BLOCK, interval: float = 0.0) -> None:
        while True:
            if interval:
                self._pause(interval)
            self._send(block)

    # --- the request ------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.server.begin()
        self._sent, started = 0, time.monotonic()
        self._deadline = started + self.server.max_seconds
        prefix, _, rest = self.path.lstrip("/").partition("/")
        attack, _, scope = prefix.partition(".")
        top, _, after = rest.partition("/")
        fqrn, _, relative = after.partition("/")
        storage = self.server.repos.get(fqrn) if top == "cvmfs" else None
        file = storage / relative if storage is not None and relative else None
        kind = object_kind(relative)
        if not in_scope(scope or "all", kind):
            attack = "ok"
        exists = file is not None and file.is_file()
        ended = "failed"
        try:
            if not exists and attack in ("ok", "length-short", "length-long", "endless",
                                         "endless-chunked", "trickle-body"):
                self._reply("404 Not Found", b"no such file\n")
            elif attack == "ok":
                assert file is not None
                self._send_file(file)
            else:
                body = file.read_bytes() if file is not None and exists else b""
                self._attack(attack, body, f"/ok.{scope or 'all'}/{rest}")
            ended = "complete"
        except _StopResponseError as end:
            ended = end.how
            self.close_connection = True
        finally:
            with contextlib.suppress(OSError):
                self.connection.settimeout(IDLE_TIMEOUT_S)  # wait for the next request
            self.server.record(Served(self.path, attack, kind, self._sent,
                                      time.monotonic() - started, ended))

    def _reply(self, status: str, body: bytes, *, length: int | None = None,
               close: bool = False) -> None:
        headers = [("Content-Length", str(len(body) if length is None else length))]
        if close:
            headers.append(("Connection", "close"))
            self.close_connection = True
        self._head(status, headers)
        self._send(body)

    def _send_file(self, file: Path) -> None:
        """The file as stored, streamed (big objects are not read into memory)."""
        with open(file, "rb") as fh:
            self._head("200 OK", [("Content-Length", str(os.fstat(fh.fileno()).st_size))])
            while block := fh.read(1 << 20):
                self._send(block)

    def _attack(self, attack: str, body: bytes, good_path: str) -> None:  # noqa: C901 - a table
        close = [("Connection", "close")]
        if attack.startswith("status-"):
            self._reply(f"{attack.removeprefix('status-')} Hostile", b"hostile status\n",
                        close=True)
        elif attack == "bad-status":
            self._send(b"HTTP/1.1 2OO FINE\r\nContent-Length: 0\r\n\r\n")
            self.close_connection = True
        elif attack == "empty":
            self._reply("200 OK", b"")
        elif attack == "length-short":
            self._reply("200 OK", body, length=max(len(body) - 1, 0), close=True)
        elif attack == "length-long":
            self._reply("200 OK", body, length=len(body) + 1000, close=True)
        elif attack == "length-huge":
            self._head("200 OK", [("Content-Length", str(HUGE_LENGTH)), *close])
            self._send(body)
            self._forever()
        elif attack == "endless":
            self._head("200 OK", close)
            self._send(body)
            self._forever()
        elif attack == "endless-chunked":
            self._head("200 OK", [("Transfer-Encoding", "chunked")])
            self._send(b"%x\r\n%s\r\n" % (len(body), body) if body else b"")
            self._forever(b"%x\r\n%s\r\n" % (len(ENDLESS_BLOCK), ENDLESS_BLOCK))
        elif attack == "trickle-body":
            self._head("200 OK", [("Content-Length", str(len(body)))])
            for i in range(len(body)):
                self._pause(TRICKLE_S)
                self._send(body[i:i + 1])
        elif attack == "trickle-status":
            self._send(b"HTTP/1.1 200 OK")
            self._forever(b"K", TRICKLE_S)
        elif attack == "trickle-headers":
            self._send(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._forever(b"s", TRICKLE_S)
        elif attack == "stall":
            while not self._client_closed():
                self._pause(TRICKLE_S)
                self._send(b"")  # nothing, but the caps apply
            raise _StopResponseError("client closed")
        elif attack == "continue-flood":
            self._forever(b"HTTP/1.1 100 Continue\r\n\r\n", CONTINUE_INTERVAL_S)
        elif attack == "header-flood":
            self._send(b"HTTP/1.1 200 OK\r\n")
            for n in itertools.count():
                self._send(b"X-Flood-%d: yes\r\n" % n)
        elif attack in ("bomb", "bomb-nolength"):
            bomb = zlib_bomb(BOMB_MIB)
            if attack == "bomb":
                self._reply("200 OK", bomb)
            else:
                self._head("200 OK", close)
                self._send(bomb)
                self.close_connection = True
        elif attack in ("redirect-other", "redirect-loop"):
            target = good_path if attack == "redirect-other" else self.path
            self._head("302 Found", [("Location", f"http://127.0.0.1:{self.server.port}{target}"),
                                     ("Content-Length", "0")])
        elif attack == "error-endless":
            self._head("500 Hostile", close)
            self._forever()
        elif attack == "error-huge":
            self._head("500 Hostile", [("Content-Length", str(ERROR_HUGE_LENGTH))])
            self._forever()
        elif attack == "error-trickle":
            self._head("500 Hostile", [("Content-Length", "1000")])
            self._forever(b"e", TRICKLE_S)
        else:
            raise ValueError(f"unknown attack {attack!r} (one of {', '.join(ATTACKS)})")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet."""


class HostileServer(ThreadedHTTPServer):
    """The hostile server on a free loopback port; `with` starts and stops its thread."""

    def __init__(self, repos: Mapping[str, Path], *, max_seconds: float = MAX_SECONDS,
                 max_bytes: int = MAX_BYTES) -> None:
        super().__init__(_HostileHandler)
        self.repos = dict(repos)
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._served: list[Served] = []
        self._active = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, attack: str, scope: str = "all", fqrn: str | None = None) -> str:
        """Base URL of a host that plays `attack` on objects of `scope`."""
        if attack not in ATTACKS and not attack.startswith("status-"):
            raise ValueError(f"unknown attack {attack!r}")
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        if fqrn is None:
            (fqrn,) = self.repos
        return f"http://127.0.0.1:{self.port}/{attack}.{scope}/cvmfs/{fqrn}"

    def begin(self) -> None:
        with self._lock:
            self._active += 1

    def record(self, served: Served) -> None:
        with self._lock:
            self._served.append(served)
            self._active -= 1

    @property
    def active(self) -> int:
        """Responses under way: started, their record unwritten."""
        with self._lock:
            return self._active

    @property
    def served(self) -> list[Served]:
        with self._lock:
            return list(self._served)

    def served_for(self, needle: str) -> list[Served]:
        return [s for s in self.served if needle in s.path]

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every response started so far has ended (its record is written)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._active == 0:
                    return True
            time.sleep(0.02)
        return False

