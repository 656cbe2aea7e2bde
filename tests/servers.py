"""Real servers for integration tests, started on a free loopback port and always stopped.

`Nginx` serves a document root like a Stratum-1 (the configuration from
`shared/docs/machine-notes.md`). It writes its configuration, logs and document root into a
fresh world-traversable temporary directory (workers run as `nobody` when the tests run as
root), starts `nginx` in the foreground with `subprocess.Popen`, waits until the port
answers, and on exit terminates exactly the process it started.

    with Nginx() as server:
        server.publish("cvmfs/oracle.local", ORACLE_REPO)   # symlink into the docroot
        url = server.url + "/cvmfs/oracle.local"
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

NGINX_START_TIMEOUT_SECONDS = 10.0  # measured ready time is ~0.12 s; generous for busy CI
NGINX_STOP_TIMEOUT_SECONDS = 5.0
START_ATTEMPTS = 3  # a free port can be taken between probing and nginx binding it
MIME_TYPES = Path("/etc/nginx/mime.types")

_CONFIG = """\
daemon off;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 256; }}
http {{
  {mime}
  default_type application/octet-stream;
  access_log {run}/access.log;
  sendfile on;
  client_body_temp_path {run}/tmp/body;
  proxy_temp_path {run}/tmp/proxy;
  fastcgi_temp_path {run}/tmp/fastcgi;
  uwsgi_temp_path {run}/tmp/uwsgi;
  scgi_temp_path {run}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {docroot};
    location /cvmfs/ {{ expires 3d; }}
    location ~ /\\.cvmfs(published|whitelist)$ {{ expires {manifest_expires}; }}
  }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx")


# Tests that mount through a configured client served by a local nginx.
NEEDS_FUSE_AND_NGINX = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                       reason="needs /dev/fuse and root"),
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed"),
]


@contextmanager
def shared_scratch(prefix: str) -> Iterator[Path]:
    """A fresh directory that other users may traverse (nginx workers run as nobody;
    pytest's tmp_path is 0700 root), removed on exit."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, alive: subprocess.Popen[bytes]) -> bool:
    """True once 127.0.0.1:port accepts connections; False if `alive` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def stop_process(process: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Stop one process this harness started: `sig`, then SIGKILL after `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ServerContext:
    """`with Server() as s:` starts it and always stops it (also when start fails)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class ThreadedHTTPServer(ServerContext, http.server.ThreadingHTTPServer):
    """A stdlib HTTP server of the tests on a free loopback port, served by a thread that
    `with` starts and stops (ServerContext first: its `__enter__` starts, socketserver's
    would only close). Handlers that wait should wait on `stopping`, so a stop never waits
    for a trickling response."""

    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends waiting handlers, stops serving, closes the socket (idempotent)."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            self.shutdown()
            thread.join()
        self.server_close()


class Nginx(ServerContext):
    """One nginx master process serving `self.docroot` on 127.0.0.1:`self.port`."""

    def __init__(self, manifest_expires: str = "61s") -> None:
        """`manifest_expires`: how long proxies may keep .cvmfspublished and
        .cvmfswhitelist (a Stratum-1's 61 s, or a test site's second)."""
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.binary = binary
        self.base = Path(tempfile.mkdtemp(prefix="pycvmfs-nginx-"))
        self.base.chmod(0o755)  # workers (nobody) must traverse to the docroot
        self.run = self.base / "run"
        self.docroot = self.base / "docroot"
        for directory in (self.run / "tmp", self.docroot):
            directory.mkdir(parents=True)
            directory.chmod(0o755)
        self.manifest_expires = manifest_expires
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, relative: str, target: Path) -> str:
        """Symlink DOCROOT/relative -> target; returns the URL that serves it."""
        link = self.docroot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        for parent in [link.parent, *link.parent.parents]:
            if parent == self.docroot.parent:
                break
            parent.chmod(0o755)
        target = Path(target).resolve()
        if os.geteuid() == 0 and not world_readable(target):
            raise RuntimeError(f"nginx workers run as nobody and cannot reach {target}: make "
                               "every directory on the way world-traversable (o+x)")
        link.symlink_to(target)
        return f"{self.url}/{relative}"

    def _write_config(self) -> Path:
        mime = f"include {MIME_TYPES};" if MIME_TYPES.is_file() else ""
        config = self.run / "nginx.conf"
        config.write_text(_CONFIG.format(run=self.run, mime=mime, port=self.port,
                                         docroot=self.docroot,
                                         manifest_expires=self.manifest_expires))
        return config

    def _launch(self) -> bool:
        """Start nginx on `self.port`; True once the port answers."""
        config = self._write_config()
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config), "-e", str(self.run / "error.log"),
             "-p", str(self.run)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if wait_for_port(self.port, NGINX_START_TIMEOUT_SECONDS, self.process):
            return True
        self._terminate()
        return False

    def start(self) -> None:
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            if self._launch():
                return
        raise RuntimeError(f"nginx did not start: {self.error_log()}")

    def pause(self) -> None:
        """Stop serving but keep the configuration: `resume` comes back on the same port
        (a Stratum-1 that goes away and returns)."""
        self._terminate()

    def resume(self) -> None:
        if not self._launch():
            raise RuntimeError(f"nginx did not come back on port {self.port}: "
                               f"{self.error_log()}")

    def access_log(self) -> str:
        """What nginx has logged of the requests so far (flushed per request)."""
        log = self.run / "access.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def error_log(self) -> str:
        log = self.run / "error.log"
        return log.read_text(errors="replace") if log.exists() else "(no error log)"

    def _terminate(self) -> None:
        """Stop the one master process this object started (its workers follow it)."""
        process, self.process = self.process, None
        stop_process(process, signal.SIGTERM, NGINX_STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.base, ignore_errors=True)


def world_readable(path: Path) -> bool:
    """Whether every directory from / to `path` can be traversed by others."""
    path = path.resolve()
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents] if p.is_dir())
