"""The containerd rows of bench/images.py: a container start through containerd with the
pycvmfs snapshotter against containerd on its own, same image, same registry, one run.

    "ctr image pull + ctr run": a private containerd (its own overlayfs snapshotter, fresh
    root every round) pulls the image from the local docker-registry (`ctr image pull
    --plain-http`: every layer downloaded and unpacked), then `ctr run --rm IMAGE ID
    python3 -c pass`.
    "containerd + pycvmfs snapshotter, cold": the repository is mounted with an empty cache
    (`pycvmfs mount`, timed in), `pycvmfs snapshotter serve` and a private containerd using
    it are running (not timed: daemons a site keeps up), then `pycvmfs snapshotter pull`
    (manifest and config from the registry, layers adopted from the repository) and
    `ctr run --snapshotter pycvmfs` of the same command.
    Bytes: what the registry sent (its access log) plus, for the snapshotter, what nginx
    sent for the repository, during the timed steps.

Needs containerd, ctr, runc, grpcio and containerd's compiled API (tests/containerd.py says
what is missing); without them bench/images.py prints one line instead of these rows.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.client_mounts import Env, Mount, unmount_below
from bench.common import AccessLog
from tests.containerd import (
    PLUGIN,
    PrivateContainerd,
    Snapshotter,
    missing_requirement,
    snapshotter_pull,
)
from tests.registry import DockerRegistry
from tests.servers import Nginx

COMMAND = ("python3", "-c", "pass")
RUN_TIMEOUT_S = 300.0
QUOTA_MB = 4096


def containerd_missing() -> str | None:
    """Why the containerd rows cannot be measured here, or None."""
    return missing_requirement()


def _ctr(daemon: PrivateContainerd, *args: str) -> None:
    daemon.ctr(*args, timeout=RUN_TIMEOUT_S)


def containerd_round(fqrn: str, public_key: Path, image: str, registry: DockerRegistry,
                     server: Nginx, scratch: Path) -> dict[str, float]:
    """One round of both: seconds and bytes fetched of each (keys `ctr_*`, `snap_*`)."""
    registry_log = AccessLog(registry.base / "registry.log")
    nginx_log = AccessLog(server.run / "access.log")
    plain = scratch / "plain"
    plain.mkdir()
    with PrivateContainerd(plain, plain / "no-snapshotter.sock") as daemon:
        registry_log.skip()
        t0 = time.perf_counter()
        _ctr(daemon, "image", "pull", "--plain-http", image)
        _ctr(daemon, "run", "--rm", image, "bench-plain", *COMMAND)
        ctr_seconds = time.perf_counter() - t0
        ctr_bytes, _ = registry_log.take()
    lazy = scratch / "lazy"
    lazy.mkdir()
    env = Env(base=lazy, run=lazy, url=server.url, backend=None, quota_mb=QUOTA_MB,
              read_ahead_kb=None, fqrn=fqrn, public_key=public_key)
    env.mnt.mkdir()
    (lazy / "etc").mkdir()
    socket = lazy / "snapshotter.sock"
    nginx_log.skip()
    registry_log.skip()
    t0 = time.perf_counter()
    with Mount(env) as mount:
        mounted = time.perf_counter()
        with Snapshotter(socket, mount.mnt, lazy / "snapshotter"), \
                PrivateContainerd(lazy, socket) as daemon:
            started = time.perf_counter()
            pulled = snapshotter_pull(image, daemon, mount.mnt)
            if pulled.returncode != 0:
                raise RuntimeError(f"pycvmfs snapshotter pull failed: {pulled.stderr}")
            _ctr(daemon, "run", "--rm", "--snapshotter", PLUGIN, image, "bench-lazy",
                 *COMMAND)
            snap_seconds = (mounted - t0) + (time.perf_counter() - started)
            nginx_log.settle()
            repository_bytes, _ = nginx_log.take()
            registry_bytes, _ = registry_log.take()
    unmount_below(scratch)  # anything a runtime left mounted
    return {"ctr_seconds": ctr_seconds, "ctr_bytes": float(ctr_bytes),
            "snap_seconds": snap_seconds, "snap_mount_seconds": mounted - t0,
            "snap_registry_bytes": float(registry_bytes),
            "snap_repository_bytes": float(repository_bytes)}
