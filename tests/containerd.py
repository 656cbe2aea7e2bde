"""A private containerd and a pycvmfs snapshotter for integration tests, both started here
and stopped by pid.

`PrivateContainerd(base, snapshotter_socket)` writes its own config (root, state, sockets
and the opt directory under `base`; the CRI plugin off; the snapshotter as the proxy plugin
`pycvmfs`), starts `containerd` in the foreground and waits for its socket. `Snapshotter`
runs `pycvmfs snapshotter serve` on a unix socket. `SnapshotsClient` calls containerd's own
Snapshots service (in a namespace) with the message classes of pycvmfs/snapshotter/api.py,
which is how a test passes the labels `ctr snapshots` cannot.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerContext, stop_process

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 20.0
PULL_TIMEOUT_S = 60.0
PLUGIN = "pycvmfs"

_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[proxy_plugins.{plugin}]
  type = "snapshot"
  address = "{snapshotter}"
"""


def missing_requirement() -> str | None:
    """Why containerd tests cannot run here, or None."""
    import os

    if os.geteuid() != 0:
        return "containerd runs as root"
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (Debian: apt-get install containerd)"
    try:
        import grpc  # noqa: F401

        from pycvmfs.snapshotter.api import DESCRIPTOR_SET
    except ImportError:
        return "grpcio is not installed (pip install -e '.[test]')"
    if not DESCRIPTOR_SET.is_file():
        return "containerd's API is not compiled (make grpc-stubs says why)"
    return None


def _wait_for_socket(path: Path, process: subprocess.Popen[bytes], what: str,
                     log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        if path.is_socket():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not create {path} within {START_TIMEOUT_S} s")


class Snapshotter(ServerContext):
    """`pycvmfs snapshotter serve` on `socket`, over `repository`, with `state`."""

    def __init__(self, socket: Path, repository: Path, state: Path) -> None:
        self.socket, self.repository, self.state = socket, repository, state
        self.log = state.parent / f"{state.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pycvmfs", "snapshotter", "serve",
                 "--address", f"unix://{self.socket}", "--repository", str(self.repository),
                 "--state", str(self.state)], stdout=log, stderr=subprocess.STDOUT)
        _wait_for_socket(self.socket, self._process, "pycvmfs snapshotter", self.log)

    def stop(self) -> None:
        stop_process(self._process, signal.SIGTERM, STOP_TIMEOUT_S)
        self._process = None


class PrivateContainerd(ServerContext):
    """containerd with everything under `base`, using the snapshotter at `snapshotter`."""

    def __init__(self, base: Path, snapshotter: Path) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.config = base / "config.toml"
        self.log = base / "containerd.log"
        self.config.write_text(_CONFIG.format(base=base, plugin=PLUGIN,
                                              snapshotter=snapshotter))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(["containerd", "--config", str(self.config)],
                                             stdout=log, stderr=subprocess.STDOUT)
        _wait_for_socket(self.socket, self._process, "containerd", self.log)

    def stop(self) -> None:
        stop_process(self._process, signal.SIGTERM, STOP_TIMEOUT_S)
        self._process = None

    def ctr(self, *args: str, timeout: float = 60.0) -> str:
        """`ctr -a SOCKET ARGS...`'s output (the test fails on a non-zero exit)."""
        done = subprocess.run(["ctr", "-a", str(self.socket), *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            pytest.fail(f"ctr {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout


def snapshotter_pull(image: str, daemon: PrivateContainerd,
                     repository: Path) -> subprocess.CompletedProcess[str]:
    """`pycvmfs snapshotter pull IMAGE` into `daemon` from a plain-HTTP registry."""
    return subprocess.run(
        [sys.executable, "-m", "pycvmfs", "snapshotter", "pull", image, "--containerd",
         f"unix://{daemon.socket}", "--repository", str(repository), "--plain-http"],
        capture_output=True, text=True, timeout=PULL_TIMEOUT_S, check=False)


class SnapshotsClient:
    """containerd's Snapshots service on `socket`, in `namespace`."""

    def __init__(self, socket: Path, namespace: str = "default") -> None:
        import grpc

        from pycvmfs.snapshotter.api import load

        self.api = load()
        self._channel = grpc.insecure_channel(f"unix:{socket}")
        self._metadata = (("containerd-namespace", namespace),)

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, **fields: Any) -> Any:
        """One unary call; grpc.RpcError as containerd answers it."""
        rpc = self.api.methods[method]
        stub = self._channel.unary_unary(self.api.path(method),
                                         request_serializer=rpc.request.SerializeToString,
                                         response_deserializer=rpc.response.FromString)
        return stub(rpc.request(snapshotter=PLUGIN, **fields), metadata=self._metadata,
                    timeout=CALL_TIMEOUT_S)
