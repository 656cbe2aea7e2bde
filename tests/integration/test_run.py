"""`pycvmfs run` end to end: a Debian image with python3 ingested from a real registry,
served by nginx, run straight from the mount (bubblewrap here), exit codes passed through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ingested import IngestedImages
from tests.integration.test_client_unprivileged import (  # noqa: F401 - fixtures
    SYSTEM_PYTHON,
    area,
    as_user,
    fuse_open_to_all,
    user,
    user_env,
)
from tests.mounting import User, force_unmount, is_mounted, mountinfo
from tests.publish_helpers import Keys
from tests.registry import NEEDS_REGISTRY_TOOLS, needs_tools
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX, NEEDS_REGISTRY_TOOLS, needs_tools("bwrap"),
              pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROBE = 'cat /etc/os-release; python3 -c "import json, sqlite3"; echo "FOO=$FOO"; pwd'


@dataclass
class Served:
    fqrn: str
    image: str  # FQRN/IMAGE-PATH
    options: str  # -o for mounting
    mnt: Path


@pytest.fixture(scope="module")
def served(keys: Keys, ingested_images: IngestedImages) -> Iterator[Served]:
    with shared_scratch("pycvmfs-run-") as base, Nginx() as server:
        url = server.publish(f"cvmfs/{keys.fqrn}", ingested_images.storage)
        options = ",".join([f"CVMFS_SERVER_URL={url}", "CVMFS_HTTP_PROXY=DIRECT",
                            f"CVMFS_PUBLIC_KEY={keys.public_key_file}",
                            f"CVMFS_CACHE_BASE={base / 'cache'}"])
        mnt = base / "cache" / "mnt" / keys.fqrn
        try:
            yield Served(keys.fqrn, f"{keys.fqrn}/{ingested_images.name('python')}",
                         options, mnt)
        finally:
            if is_mounted(mnt):
                subprocess.run([sys.executable, "-m", "pycvmfs", "umount", str(mnt)],
                               capture_output=True, cwd=ROOT)
            force_unmount(mnt)


def _run(served: Served, *command: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT="/nonexistent")
    return subprocess.run([sys.executable, "-m", "pycvmfs", "run", "-o", served.options,
                           "--runner", "bwrap", served.image, "--", *command],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_run_mounts_and_runs_the_image(served: Served) -> None:
    done = _run(served, "/bin/sh", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    assert "Debian GNU/Linux 12" in done.stdout
    assert "FOO=bar" in done.stdout  # the image's Env
    assert done.stdout.rstrip().endswith("/opt")  # its WorkingDir
    assert is_mounted(served.mnt)  # left mounted for the next run
    again = _run(served, "/bin/sh", "-c", "exit 7")  # reuses the mount
    assert again.returncode == 7, again.stderr


def test_run_refuses_a_missing_image(served: Served) -> None:
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT="/nonexistent")
    done = subprocess.run([sys.executable, "-m", "pycvmfs", "run", "-o", served.options,
                           f"{served.fqrn}/no/such:image", "--", "true"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1 and "no image there" in done.stderr


@pytest.mark.usefixtures("fuse_open_to_all")
def test_an_ordinary_user_runs_the_image(served: Served, keys: Keys, user: User,  # noqa: F811
                                         area: Path) -> None:  # noqa: F811
    home = area / "home"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    key = area / f"{keys.fqrn}.pub"
    shutil.copy(keys.public_key_file, key)
    key.chmod(0o644)
    options = ",".join(o for o in served.options.split(",")
                       if not o.startswith(("CVMFS_PUBLIC_KEY=", "CVMFS_CACHE_BASE=")))
    env = user_env(user, home, area / "no-etc")
    done = as_user(user, env, home, SYSTEM_PYTHON, "-m", "pycvmfs", "run",
                   "-o", f"{options},CVMFS_PUBLIC_KEY={key}", "--runner", "bwrap",
                   served.image, "--", "/bin/sh", "-c", PROBE)
    mnt = home / ".cache" / "pycvmfs" / "mnt" / served.fqrn  # the user's own cache base
    try:
        if done.returncode != 0 and "user namespace" in done.stderr.lower():
            pytest.skip(f"bubblewrap cannot run unprivileged here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        assert "Debian GNU/Linux 12" in done.stdout and "FOO=bar" in done.stdout
        assert f"user_id={user.uid}" in mountinfo()[str(mnt)][-1]  # the user's mount
    finally:
        as_user(user, env, home, SYSTEM_PYTHON, "-m", "pycvmfs", "umount", str(mnt))
        force_unmount(mnt)
