"""A real Squid proxy for integration tests, on a free loopback port, always stopped.

Configuration from `shared/docs/machine-notes.md`: its own RUN directory (cache, logs, pid),
`chown -R proxy:proxy RUN` (squid drops to `proxy`), `squid -z -N -f CONF` to create the cache,
then `squid -N -f CONF` in the foreground; ready when the port answers. `stop()` sends SIGINT to
exactly the process it started and waits. Use `Squid.available()` to skip when squid is
absent or the tests do not run as root.

    with Squid() as proxy:
        proxy.url          # http://127.0.0.1:PORT
        proxy.cache_hits() # TCP_HIT / TCP_MEM_HIT lines of access.log
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import ServerContext, free_port, stop_process, wait_for_port

SQUID_START_TIMEOUT_SECONDS = 15.0  # measured ready time ~0.35 s
SQUID_STOP_TIMEOUT_SECONDS = 10.0  # SIGINT + shutdown_lifetime 1 s: ~2 s measured
START_ATTEMPTS = 3

_CONFIG = """\
http_port 127.0.0.1:{port}
pid_filename {run}/squid.pid
cache_effective_user proxy
cache_dir ufs {run}/cache 64 16 256
cache_mem 16 MB
maximum_object_size 1 GB
maximum_object_size_in_memory 8 MB
access_log stdio:{run}/access.log squid
cache_log {run}/cache.log
cache_store_log none
coredump_dir {run}
http_access allow localhost
http_access deny all
refresh_pattern . 0 20% 4320
shutdown_lifetime 1 seconds
connect_timeout 2 seconds
"""


def squid_binary() -> str | None:
    return shutil.which("squid")


class Squid(ServerContext):
    """One `squid -N` process listening on 127.0.0.1:`self.port`."""

    @staticmethod
    def available() -> str | None:
        """None when usable, else the reason to skip."""
        if squid_binary() is None:
            return "squid is not installed"
        if os.geteuid() != 0:
            return "squid tests need root (cache_effective_user proxy)"
        return None

    def __init__(self) -> None:
        reason = self.available()
        if reason is not None:
            raise RuntimeError(reason)
        self.binary = squid_binary() or "squid"
        self.run = Path(tempfile.mkdtemp(prefix="pycvmfs-squid-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> Path:
        config = self.run / "squid.conf"
        config.write_text(_CONFIG.format(port=self.port, run=self.run))
        subprocess.run(["chown", "-R", "proxy:proxy", str(self.run)], check=True)
        subprocess.run([self.binary, "-z", "-N", "-f", str(config)], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        return config

    def start(self) -> None:
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            config = self._prepare()
            self.process = subprocess.Popen(
                [self.binary, "-N", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if wait_for_port(self.port, SQUID_START_TIMEOUT_SECONDS, self.process):
                return
            self.kill()
        raise RuntimeError(f"squid did not start: {self.cache_log()}")

    def cache_log(self) -> str:
        log = self.run / "cache.log"
        return log.read_text(errors="replace") if log.exists() else "(no cache log)"

    def access_log(self) -> list[str]:
        """access.log lines (squid writes them unbuffered enough for tests; polled briefly)."""
        log = self.run / "access.log"
        return log.read_text(errors="replace").splitlines() if log.exists() else []

    def cache_hits(self, needle: str = "") -> list[str]:
        return [line for line in self.access_log()
                if ("TCP_HIT" in line or "TCP_MEM_HIT" in line) and needle in line]

    def wait_for_log(self, needle: str, count: int = 1, timeout: float = 3.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.access_log() if needle in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def kill(self) -> None:
        """Stop the one process this object started: SIGINT, wait, SIGKILL as a last resort."""
        process, self.process = self.process, None
        stop_process(process, signal.SIGINT, SQUID_STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.run, ignore_errors=True)
