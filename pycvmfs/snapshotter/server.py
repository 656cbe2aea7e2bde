"""Serving the snapshotter on a unix socket, where containerd's `proxy_plugins` entry points:

    [proxy_plugins.pycvmfs]
      type = "snapshot"
      address = "/run/pycvmfs-snapshotter.sock"

containerd dials the plain socket path (no `unix://`); the snapshotter accepts either form.
Only unix sockets are served: the API mounts directories as root and has no authentication,
so the socket's permissions (0600, in a directory created 0700) are its access control.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pycvmfs.errors import ConfigError
from pycvmfs.snapshotter.api import Api, load
from pycvmfs.snapshotter.layers import RemoteLayers
from pycvmfs.snapshotter.service import SnapshotsServicer, handler
from pycvmfs.snapshotter.snapshots import Snapshotter
from pycvmfs.snapshotter.store import MetadataStore

log = logging.getLogger(__name__)
DATABASE = "metadata.db"
WORKERS = 8  # containerd unpacks layers of several images at once
STOP_GRACE_S = 5.0


def socket_path(address: str) -> Path:
    """`unix:///PATH` or `/PATH` -> PATH (ConfigError for anything else)."""
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        raise ConfigError(f"--address {address}: give an absolute unix socket path, e.g. "
                          "unix:///run/pycvmfs-snapshotter.sock (only unix sockets are served)")
    return Path(path)


def build(repository: Path, state: Path, api: Api | None = None) -> tuple[Api, SnapshotsServicer,
                                                                       MetadataStore]:
    """The API, the servicer over the snapshots in `state` and the store it writes."""
    if not repository.is_dir():
        raise ConfigError(f"--repository {repository}: not a directory; give the mountpoint "
                          "of the image repository (pycvmfs mount)")
    api = api or load()
    store = MetadataStore(state / DATABASE)
    snapshotter = Snapshotter(store, RemoteLayers(repository), state)
    return api, SnapshotsServicer(api, snapshotter), store


def start(address: Path, api: Api, servicer: SnapshotsServicer) -> Any:
    """A started grpc server on the unix socket `address` (an old socket file is replaced)."""
    import grpc

    address.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if address.is_socket():
        address.unlink()
    server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS))
    server.add_generic_rpc_handlers((handler(api, servicer),))
    try:
        server.add_insecure_port(f"unix:{address}")
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}; choose another --address") \
            from exc
    old_mask = os.umask(0o177)
    try:
        server.start()
    finally:
        os.umask(old_mask)
    os.chmod(address, 0o600)
    return server


def serve(address: Path, repository: Path, state: Path) -> None:
    """Serve until SIGTERM or SIGINT, then stop (requests in flight get STOP_GRACE_S)."""
    api, servicer, store = build(repository, state)
    server = start(address, api, servicer)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("serving containerd snapshots on %s (repository %s, state %s; Ctrl-C stops)",
             address, repository, state)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        server.stop(STOP_GRACE_S).wait()
        store.close()
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
        address.unlink(missing_ok=True)
