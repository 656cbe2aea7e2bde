"""`pycvmfs doctor` on this machine, against a real nginx Stratum-1 (served, stopped, with an
expired or expiring whitelist), and as an ordinary user with /dev/fuse open to them or not.

The ordinary user's /dev/fuse is arranged without touching the host's: in a private mount
namespace (root's `unshare -m`) a device node 10,229 of the wanted mode, made on a fresh
tmpfs, is bind-mounted over /dev/fuse, then `setpriv` runs doctor as `nobody` there. Its
user-namespace probe inherits that view."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.publisher.keys import load_keys
from pycvmfs.publisher.storage import LocalStorage
from pycvmfs.publisher.whitelist_sign import write_whitelist
from tests.integration.test_client_unprivileged import (
    SYSTEM_PYTHON,
    ordinary_user,
    user_env,
)
from tests.mounting import DEMO_FQRN, DEMO_KEY, DEMO_REPO, User, mountinfo, pycvmfs
from tests.servers import Nginx, free_port, nginx_binary, shared_scratch

NEEDS_NGINX = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
NODE_CHECKS = ["/dev/fuse", "fusermount3", "user namespaces", "exec", "kernel", "libfuse3"]
MACHINE_CHECKS = [*NODE_CHECKS, "cache space"]  # what may warn or fail on another machine
REPOSITORY_CHECKS = ["configuration", "CVMFS_SERVER_URL", "public keys", "cache directory",
                     "cache space"]
DEMO_KEYS_DIR = DEMO_KEY.parent


def doctor(*args: str, env: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    """`pycvmfs doctor --json ARGS`: (exit code, checks by name)."""
    done = pycvmfs("doctor", "--json", *args, env=env)
    assert done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    levels = {check["level"] for check in report["checks"]}
    worst = "fail" if "fail" in levels else "warn" if "warn" in levels else "ok"
    assert (report["result"], report["exit_code"]) == (worst, done.returncode)
    assert done.returncode == {"ok": 0, "warn": 3, "fail": 1}[worst]
    return done.returncode, {check["name"]: check for check in report["checks"]}


@pytest.fixture
def area() -> Iterator[Path]:
    with shared_scratch("pycvmfs-doctortest-") as base:
        yield base


def client_env(area: Path, server_url: str | None = None) -> dict[str, str]:
    """A configuration root with config.d/<demo>.conf naming `server_url`, a private cache."""
    root = area / "etc-cvmfs"
    (root / "config.d").mkdir(parents=True, exist_ok=True)
    if server_url is not None:
        (root / "config.d" / f"{DEMO_FQRN}.conf").write_text(
            f"CVMFS_SERVER_URL={server_url}\nCVMFS_PUBLIC_KEY={DEMO_KEY}\n"
            f"CVMFS_HTTP_PROXY=DIRECT\nCVMFS_CACHE_BASE={area / 'cache'}\n")
    return dict(os.environ, PYCVMFS_CONFIG_ROOT=str(root), HOME=str(area))


def probe_mounts() -> list[str]:
    """Mount points of the probe's FUSE file system (source `pycvmfs-doctor`) seen here."""
    return [point for point, fields in mountinfo().items() if "pycvmfs-doctor" in fields]


def test_doctor_on_this_machine(area: Path) -> None:
    text = pycvmfs("doctor", env=client_env(area))
    assert text.returncode in (0, 1, 3), text.stderr
    *lines, summary = text.stdout.splitlines()
    assert [line.split()[0] in ("ok", "warn", "fail") for line in lines] == [True] * 9
    assert all(("-> fix: " in line) == (not line.startswith("ok")) for line in lines)
    assert summary.startswith("doctor: ")
    code, checks = doctor(env=client_env(area))
    assert list(checks) == [*NODE_CHECKS, "configuration", "cache directory", "cache space"]
    assert code == text.returncode
    if os.path.exists("/dev/fuse") and os.geteuid() == 0:
        assert checks["/dev/fuse"]["level"] == "ok"
        assert checks["fusermount3"]["level"] == "ok"  # root mounts without it
    unshare = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    assert (checks["user namespaces"]["level"] == "ok") == (unshare.returncode == 0)
    assert checks["configuration"]["found"].endswith("0 file(s) read under "
                                                     f"{area / 'etc-cvmfs'}")
    assert probe_mounts() == []  # the probe's FUSE mount stayed in its namespace


@NEEDS_NGINX
def test_doctor_against_a_served_stratum1(area: Path) -> None:
    with Nginx() as server:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO)
        code, checks = doctor(DEMO_FQRN, env=client_env(area, url))
    route = f"{url} via DIRECT"
    assert list(checks)[6:] == [*REPOSITORY_CHECKS, route, "trust chain", "whitelist", "clock"]
    for name in [*REPOSITORY_CHECKS[:3], route, "trust chain", "whitelist", "clock"]:
        assert checks[name]["level"] == "ok", checks[name]
    assert checks[route]["found"].startswith("manifest in ")
    assert checks["trust chain"]["found"].startswith("revision 2 from ")
    assert "against the servers' Date" in checks["clock"]["found"]
    assert code == 0 or any(checks[name]["level"] != "ok" for name in MACHINE_CHECKS)


@NEEDS_NGINX
def test_doctor_with_the_stratum1_stopped(area: Path) -> None:
    with Nginx() as server:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO)
    code, checks = doctor(DEMO_FQRN, env=client_env(area, url))
    route = checks[f"{url} via DIRECT"]
    assert route["level"] == "fail" and "connection failed" in route["found"]
    assert url in route["fix"]
    assert checks["trust chain"]["level"] == "fail"
    assert code == 1


@NEEDS_NGINX
def test_doctor_with_a_dead_proxy(area: Path) -> None:
    """The Stratum-1 through a proxy that refuses connections, and DIRECT: the proxy's
    line warns (the mount fails over to DIRECT), naming it."""
    dead = f"http://127.0.0.1:{free_port()}"
    with Nginx() as server:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO)
        env = client_env(area, url)
        config = Path(env["PYCVMFS_CONFIG_ROOT"]) / "config.d" / f"{DEMO_FQRN}.conf"
        config.write_text(config.read_text().replace(
            "CVMFS_HTTP_PROXY=DIRECT", f"CVMFS_HTTP_PROXY='{dead};DIRECT'"))
        code, checks = doctor(DEMO_FQRN, env=env)
    broken = checks[f"{url} via {dead}"]
    assert broken["level"] == "warn" and "proxy connection failed" in broken["found"]
    assert dead in broken["fix"] and "CVMFS_HTTP_PROXY" in broken["fix"]
    assert checks[f"{url} via DIRECT"]["level"] == "ok"
    assert checks["trust chain"]["level"] == "ok"
    assert code in (1, 3)  # 1 only if the node itself fails here


def resigned_copy(area: Path, created: dt.datetime) -> Path:
    """The demo repository with a 30-day whitelist signed at `created`."""
    storage = area / "repo"
    shutil.copytree(DEMO_REPO, storage)
    local = LocalStorage(storage)
    local.create_layout()
    write_whitelist(local, DEMO_FQRN, load_keys(DEMO_FQRN, DEMO_KEYS_DIR),
                    days=30, now=created)
    for path in [storage, *storage.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return storage


@NEEDS_NGINX
def test_doctor_with_an_expired_whitelist(area: Path) -> None:
    storage = resigned_copy(area, dt.datetime.now(dt.UTC) - dt.timedelta(days=40))
    with Nginx() as server:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", storage)
        code, checks = doctor(DEMO_FQRN, env=client_env(area, url))
    assert checks[f"{url} via DIRECT"]["level"] == "ok"
    trust = checks["trust chain"]
    assert trust["level"] == "fail" and "expired" in trust["found"]
    assert "re-sign" in trust["fix"]
    assert code == 1


@NEEDS_NGINX
def test_doctor_with_a_whitelist_expiring_soon(area: Path) -> None:
    storage = resigned_copy(area, dt.datetime.now(dt.UTC) - dt.timedelta(days=27))
    with Nginx() as server:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", storage)
        code, checks = doctor(DEMO_FQRN, env=client_env(area, url))
    assert checks["trust chain"]["level"] == "ok"
    whitelist = checks["whitelist"]
    assert whitelist["level"] == "warn" and "mounts fail after that" in whitelist["found"]
    assert code in (1, 3)


# --- as an ordinary user ----------------------------------------------------------------------


def doctor_as_user(user: User, area: Path, fuse_mode: int, url: str
                   ) -> tuple[int, dict[str, dict[str, str]]]:
    """Doctor as `user` with a /dev/fuse of `fuse_mode` in a private mount namespace."""
    home, private = area / "home", area / "private-dev"
    for directory in (home, private):
        directory.mkdir(exist_ok=True)
    os.chown(home, user.uid, user.gid)
    env = user_env(user, home, client_env(area, url)["PYCVMFS_CONFIG_ROOT"])
    (area / "etc-cvmfs" / "config.d" / f"{DEMO_FQRN}.conf").write_text(
        f"CVMFS_SERVER_URL={url}\nCVMFS_PUBLIC_KEY={DEMO_KEY}\nCVMFS_HTTP_PROXY=DIRECT\n")
    for path in [area / "etc-cvmfs", *(area / "etc-cvmfs").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    script = (f"mount -t tmpfs -o mode=0755 doctor-dev {private} && "
              f"mknod -m {fuse_mode:o} {private}/fuse c 10 229 && "
              f"mount --bind {private}/fuse /dev/fuse && "
              f"exec {' '.join(user.prefix)} {SYSTEM_PYTHON} -m pycvmfs doctor --json "
              f"{DEMO_FQRN}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], env=env, cwd=home, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    return done.returncode, {check["name"]: check for check in report["checks"]}


@pytest.fixture
def user() -> User:
    return ordinary_user()


@NEEDS_NGINX
@pytest.mark.skipif(os.geteuid() != 0, reason="root arranges the user's /dev/fuse")
def test_doctor_as_an_ordinary_user(user: User, area: Path) -> None:
    with Nginx() as server:
        url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO)
        closed_code, closed = doctor_as_user(user, area, 0o600, url)
        open_code, opened = doctor_as_user(user, area, 0o666, url)
    device = closed["/dev/fuse"]
    assert device["level"] == "fail" and "mode 0600" in device["found"]
    assert f"uid {user.uid}" in device["found"] and "chmod 666" in device["fix"]
    assert closed_code == 1
    assert opened["/dev/fuse"]["level"] == "ok" and "mode 0666" in opened["/dev/fuse"]["found"]
    assert opened["fusermount3"]["level"] == "ok" and "setuid root" in opened["fusermount3"][
        "found"]
    if opened["user namespaces"]["level"] == "ok":  # unshare -rm works for the user
        assert closed["exec"]["level"] == "warn" and "chmod 666" in closed["exec"]["fix"]
        assert opened["exec"]["level"] == "ok"
    cache = opened["cache directory"]
    assert cache["level"] == "ok" and str(area / "home" / ".cache" / "pycvmfs") in cache["found"]
    for name in ("public keys", f"{url} via DIRECT", "trust chain"):
        assert opened[name]["level"] == "ok", opened[name]
    assert open_code == 0 or any(opened[name]["level"] != "ok" for name in MACHINE_CHECKS)
